"""Detector versions in the model store (backend/database/model_versions.py): ``models/detector/<version>/``
holds ``detector.pt``, ``classifier.pt`` (the image-level normal/abnormal classifier, when the
training data had both), ``metadata.json`` (classes, config, fusion threshold, metrics, data
hash), ``roc.png`` and ``ranking.json`` (the active-learning order it left behind)."""
from __future__ import annotations

import json

from sqlalchemy.orm import Session

from backend.database import model_versions as model_store
from backend.config import Settings
from backend.database.schema import ModelKind, ModelVersion
from ml_backend.models.abnormality import AbnormalityClassifier
from ml_backend.models.bundle import DetectorVersion
from ml_backend.models.detector import LesionDetector

def active_version(s: Session) -> ModelVersion | None:
    return model_store.active_version(s, ModelKind.detector)


def find_version(s: Session, version: str | None) -> ModelVersion | None:
    """A version by name (any status), or the active one when ``version`` is None."""
    return model_store.find_version(s, ModelKind.detector, version)


def load_version(settings: Settings, version: str) -> DetectorVersion:
    folder = model_store.version_dir(settings, ModelKind.detector, version)
    meta = json.loads((folder / "metadata.json").read_text())
    clf = folder / "classifier.pt"
    return DetectorVersion(version, LesionDetector.load(folder / "detector.pt"),
                           AbnormalityClassifier.load(clf) if clf.is_file() else None,
                           float(meta.get("fusion_threshold", 0.5)), meta)
