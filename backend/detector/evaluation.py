"""Judging a detector version the way the papers report it (ml_backend.models.metrics.evaluate) on
labelled images from our database: the training job on its fixed validation split, ``samx
eval`` on that split or on every labelled image.

Boxes are scored after decision fusion (what the radiologist is shown); the image-level
scores are the classifier's p(abnormal) when the version has one, else the best box score, and
the detector's best box score beside it in any case ("best_box")."""
from __future__ import annotations

import hashlib
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
from ml_backend.models.fusion import fuse_one, youden_threshold
from ml_backend.models.metrics import evaluate


def validation_mask(rows: Sequence[LabelledImage]) -> np.ndarray:
    """The fixed validation split: a hash of each patient/study group (the sorter's), so no
    patient is on both sides and the split does not move as annotations arrive. Empty when
    there are too few groups to split."""
    groups = group_images((r.image_id, r.patient, r.study) for r in rows)
    held = holdout([groups[r.image_id] for r in rows])
    return np.zeros(len(rows), bool) if held.all() or not held.any() else held


def crossfit_folds(rows: Sequence[LabelledImage], y: np.ndarray) -> np.ndarray | None:
    """Fold 0 or 1 of each image, by patient/study group, or None when a fold would lack a class.
    Groups alternate between the folds in a hash order, normal-only groups first, then those with
    an abnormal image, so both folds get both classes whenever there are two groups of each."""
    groups = group_images((r.image_id, r.patient, r.study) for r in rows)
    keys = [groups[r.image_id] for r in rows]
    abnormal = {k for k, a in zip(keys, y) if a}
    order = sorted(set(keys), key=lambda k: (k in abnormal, hashlib.sha256(f"samx-crossfit:{k}".encode()).digest()))
    fold_of = {k: i % 2 for i, k in enumerate(order)}
    fold = np.array([fold_of[k] for k in keys], int)
    ok = all(set(y[fold == f].tolist()) == {0, 1} for f in (0, 1))
    return fold if ok else None


def judge(rows: Sequence[LabelledImage], inputs: Sequence[np.ndarray], detector: LesionDetector,
          classifier: AbnormalityClassifier | None, *, threshold: float | None = None,
          box_score: float = 0.5, roc_path: str | Path | None = None) -> tuple[dict, float]:
    """(metrics, fusion threshold). ``threshold`` None (the training job, on its validation
    split): the threshold returned for serving is Youden's J on all these images, but the boxes
    are judged cross-fitted: each of two patient folds fused with the c* chosen on the other, as
    a c* chosen on the images it is judged on flatters the fusion. A stored version passes its own
    threshold, the one it serves with, so ``samx eval`` judges what is served: on the validation
    split that c* was chosen on these same images at training time (the version's stored metrics
    hold the cross-fitted figures); on images added since, it was not. "threshold_selection" says
    which of these the metrics are."""
    y = np.array([int(r.abnormal) for r in rows])
    both = len(set(y.tolist())) == 2
    raw = [to_original(d, scale_of(r.width, r.height, x)) for d, r, x in zip(detector.predict(inputs), rows, inputs)]
    p = classifier.predict_proba(inputs) if classifier is not None else None
    fold = fold_thresholds = None
    if p is None:
        selection = "no classifier: no fusion"
    elif threshold is not None:
        selection = "given: the version's own, chosen at training time"
    elif not both:
        threshold, selection = 0.5, "default 0.5 (one class only)"
    else:
        threshold, fold = youden_threshold(y, p), crossfit_folds(rows, y)
        selection = "same images (too few to split)" if fold is None else "2-fold cross-fit by patient"
    if fold is not None:  # fold f's c* is chosen on the other fold
        fold_thresholds = [float(youden_threshold(y[fold != f], p[fold != f])) for f in (0, 1)]
    shown = raw
    if p is not None:
        per_image = np.full(len(rows), threshold) if fold is None else np.array(fold_thresholds)[fold]
        shown = [fuse_one(d, float(q), float(c), box_score) for d, q, c in zip(raw, p, per_image)]
    threshold = 0.5 if threshold is None else threshold
    gt = [Detections(r.boxes, None, r.labels) for r in rows]
    metrics = evaluate(gt, shown, detector.classes, y_abnormal=y, p_abnormal=p, raw=raw, box_score=box_score,
                       roc_path=roc_path if both else None)
    metrics |= {"threshold_selection": selection, "fold_thresholds": fold_thresholds}
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
