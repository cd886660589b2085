"""A trained detector version as it is served: the detector, the image-level classifier beside
it (when the training data had normal and abnormal images) and their fusion threshold."""
from __future__ import annotations

from dataclasses import dataclass

from ml_backend.models.abnormality import AbnormalityClassifier
from ml_backend.models.detector import LesionDetector


@dataclass(frozen=True)
class DetectorVersion:
    version: str
    detector: LesionDetector
    classifier: AbnormalityClassifier | None
    threshold: float  # decision fusion: c* by Youden's J on the validation split
    meta: dict
