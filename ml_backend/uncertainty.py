"""How unsure the detector is about one image, for active learning.

Two signals, each in [0, 1], averaged:

* score entropy: the largest binary entropy (bits) of any detection's score. A box at 0.5 is
  the detector saying "maybe"; boxes near 0 or 1 are decisions.
* flip disagreement: the image is also predicted mirrored, the boxes are mirrored back and
  paired with the original ones (same class, Hungarian matching on IoU). Agreement is the
  score-weighted IoU of the pairs, sum((s_a + s_b) * IoU) / (sum of all scores in both views),
  so a confident box the other view does not see costs much and a faint one little.
  Disagreement = 1 - agreement; 0 when neither view finds anything.

An image with no detection in either view scores 0: the ranking then leans on diversity."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou

from .boxes import Detections, xywh_to_xyxy


def mirror(det: Detections, width: float) -> Detections:
    """Boxes of the horizontally flipped image, in the unflipped image's pixels (and back)."""
    b = det.boxes.copy()
    b[:, 0] = width - det.boxes[:, 0] - det.boxes[:, 2]
    return Detections(b, det.scores.copy(), list(det.labels))


def score_entropy(*views: Detections) -> float:
    s = np.clip(np.concatenate([v.scores for v in views] + [np.zeros(0, np.float32)]), 1e-6, 1 - 1e-6)
    if len(s) == 0:
        return 0.0
    h = -(s * np.log2(s) + (1 - s) * np.log2(1 - s))
    return float(h.max())


def flip_disagreement(a: Detections, b: Detections) -> float:
    total = float(a.scores.sum() + b.scores.sum())
    if total <= 0:
        return 0.0
    if len(a) == 0 or len(b) == 0:
        return 1.0
    iou = box_iou(torch.from_numpy(xywh_to_xyxy(a.boxes)), torch.from_numpy(xywh_to_xyxy(b.boxes))).numpy()
    iou *= np.equal.outer(np.array(a.labels), np.array(b.labels))  # a benign box never pairs a malignant one
    rows, cols = linear_sum_assignment(iou, maximize=True)
    agreement = float(((a.scores[rows] + b.scores[cols]) * iou[rows, cols]).sum()) / total
    return float(np.clip(1.0 - agreement, 0.0, 1.0))


def detection_uncertainty(original: Detections, flipped_back: Detections) -> float:
    """``flipped_back``: the predictions on the mirrored image, mirrored back (``mirror``)."""
    return 0.5 * (score_entropy(original, flipped_back) + flip_disagreement(original, flipped_back))
