"""Judging a detector version the way the papers report it (ml_backend.models.metrics.evaluate) on
labelled images from our database: the training job on its fixed validation split, ``samx
eval`` on that split or on every labelled image.

Boxes are scored after decision fusion (what the radiologist is shown); the image-level
scores are the classifier's p(abnormal) when the version has one, else the best box score."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from backend.detector.data import LabelledImage, labelled_images
from backend.images.tensors import load_inputs
from ml_backend.models.boxes import scale_of, to_original
from backend.detector.store import find_version, load_version
from backend.database.model_versions import write_json
from training.splits import holdout
from training.splits import group_images
from ml_backend.models.abnormality import AbnormalityClassifier
from ml_backend.models.boxes import Detections
from ml_backend.models.detector import LesionDetector
from ml_backend.models.fusion import fuse, youden_threshold
from ml_backend.models.metrics import evaluate


def validation_mask(rows: Sequence[LabelledImage]) -> np.ndarray:
    """The fixed validation split: a hash of each patient/study group (the sorter's), so no
    patient is on both sides and the split does not move as annotations arrive. Empty when
    there are too few groups to split."""
    groups = group_images((r.image_id, r.patient, r.study) for r in rows)
    held = holdout([groups[r.image_id] for r in rows])
    return np.zeros(len(rows), bool) if held.all() or not held.any() else held


def judge(rows: Sequence[LabelledImage], inputs: Sequence[np.ndarray], detector: LesionDetector,
          classifier: AbnormalityClassifier | None, *, threshold: float | None = None,
          roc_path: str | Path | None = None) -> tuple[dict, float]:
    """(metrics, fusion threshold). ``threshold`` None: Youden's J on these images (the
    training job, on its validation split); a stored version passes its own."""
    y = np.array([int(r.abnormal) for r in rows])
    both = len(set(y.tolist())) == 2
    raw = [to_original(d, scale_of(r.width, r.height, x)) for d, r, x in zip(detector.predict(inputs), rows, inputs)]
    p = classifier.predict_proba(inputs) if classifier is not None else None
    if threshold is None:
        threshold = youden_threshold(y, p) if p is not None and both else 0.5
    shown = fuse(raw, p, threshold) if p is not None else raw
    gt = [Detections(r.boxes, None, r.labels) for r in rows]
    metrics = evaluate(gt, shown, detector.classes, y_abnormal=y, p_abnormal=p,
                       roc_path=roc_path if both else None)
    return metrics, float(threshold)


def evaluate_version(settings, db, version: str | None = None, *, split: str = "validation",
                     out: str | Path | None = None) -> dict:
    """``samx eval``: a stored version (default: the active one) on the fixed validation split
    (images it never trained on) or on ``split="all"`` labelled images (optimistic: it trained
    on most of them). Writes roc.png and metrics.json to ``out`` when given."""
    if split not in ("validation", "all"):
        raise ValueError(f"split must be 'validation' or 'all', not {split!r}")
    with db.session() as s:
        mv = find_version(s, version)
        if mv is None:
            raise LookupError(f"no detector version {version!r}" if version else
                              "no detector trained yet: `samx train detector` (or Label Studio's Start training)")
        name = mv.version
        rows = labelled_images(s)
    if split == "validation":
        rows = [r for r, keep in zip(rows, validation_mask(rows)) if keep]
    if not rows:
        raise LookupError(f"no labelled images in the {split} split to evaluate on")
    dv = load_version(settings, name)
    inputs = load_inputs(settings, [(r.content_hash, r.store_path) for r in rows], dv.detector.config.input_recipe)
    out = Path(out) if out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    metrics, threshold = judge(rows, inputs, dv.detector, dv.classifier, threshold=dv.threshold,
                               roc_path=out / "roc.png" if out else None)
    report = {"version": name, "split": split, "fusion_threshold": threshold, **metrics}
    if out:
        write_json(out / "metrics.json", report)
    return report
