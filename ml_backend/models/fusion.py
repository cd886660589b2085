"""Decision fusion of VinDr-SpineXR (Nguyen et al. 2021): an image-level classifier vetoes the
detector's weak boxes on images it calls normal.

If p(abnormal) >= c*, every box is kept; otherwise only boxes scoring above 0.5. c* maximises
Youden's J = sensitivity + specificity - 1 on validation images."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_curve

from .boxes import Detections, to_original


def youden_threshold(y_true, p) -> float:
    """c* = the score threshold at argmax(TPR - FPR); ties go to the higher threshold. roc_curve's
    first threshold is +inf (nothing called abnormal): should that win (a useless classifier),
    1.0 is returned, so p >= c* still means something."""
    y_true, p = np.asarray(y_true).astype(int).reshape(-1), np.asarray(p, np.float64).reshape(-1)
    if len(y_true) == 0 or y_true.min() == y_true.max():
        raise ValueError("Youden's J needs normal and abnormal images")
    fpr, tpr, thr = roc_curve(y_true, p)
    best = float(thr[int(np.argmax(tpr - fpr))])
    return min(best, 1.0)


def fuse_one(det: Detections, p_abnormal: float, threshold: float, box_score: float = 0.5) -> Detections:
    if p_abnormal >= threshold:
        return det
    return det.select(det.scores > box_score)


def fuse(detections: Detections | Sequence[Detections], p_abnormal, threshold: float,
         box_score: float = 0.5) -> Detections | list[Detections]:
    """One image (a Detections and a float) or many (row-aligned sequences)."""
    if isinstance(detections, Detections):
        return fuse_one(detections, float(p_abnormal), threshold, box_score)
    p = np.asarray(p_abnormal, np.float64).reshape(-1)
    if len(p) != len(detections):
        raise ValueError(f"{len(detections)} images but {len(p)} abnormality scores")
    return [fuse_one(d, float(q), threshold, box_score) for d, q in zip(detections, p)]


def offered_boxes(det: Detections, scale: tuple[float, float], p_abnormal: float | None, threshold: float,
                  min_score: float) -> Detections:
    """What a radiologist is offered: input-pixel detections in original pixels, fused with the
    image-level classifier when there is one (VinDr-SpineXR), none under ``min_score``."""
    det = to_original(det, scale)
    if p_abnormal is not None:
        det = fuse([det], [p_abnormal], threshold)[0]
    return det.select(det.scores >= min_score)
