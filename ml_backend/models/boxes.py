"""Detections as plain data, and the box conversions around them.

Everything outside the detector speaks [x, y, w, h] in pixels of the original image, top-left
origin (what COCO and Label Studio speak); torchvision speaks [x1, y1, x2, y2]."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.ops import box_convert


@dataclass
class Detections:
    """One image's boxes, row-aligned with ``scores`` and ``labels`` (class names). Ground truth
    uses the same type, with scores of 1."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # (n, 4) xywh
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    labels: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.scores = (np.ones(len(self.boxes), np.float32) if self.scores is None
                       else np.asarray(self.scores, np.float32).reshape(-1))
        self.labels = [str(x) for x in self.labels]
        if not len(self.boxes) == len(self.scores) == len(self.labels):
            raise ValueError(f"{len(self.boxes)} boxes, {len(self.scores)} scores, {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, keep) -> "Detections":
        keep = np.flatnonzero(np.asarray(keep).reshape(-1)) if np.asarray(keep).dtype == bool else np.asarray(keep, int)
        return Detections(self.boxes[keep], self.scores[keep], [self.labels[i] for i in keep])

    def to_dict(self) -> dict:
        """JSON-ready."""
        return {"boxes": self.boxes.round(2).tolist(), "scores": self.scores.round(4).tolist(),
                "labels": list(self.labels)}


def as_detections(item) -> Detections:
    """Accept a Detections, a mapping with boxes / labels (/ scores), or a (boxes, labels[, scores])
    tuple, so metrics can take ground truth straight from JSON."""
    if isinstance(item, Detections):
        return item
    if isinstance(item, Mapping):
        return Detections(item.get("boxes", np.zeros((0, 4))), item.get("scores"), item.get("labels", []))
    if isinstance(item, Sequence) and len(item) in (2, 3):
        return Detections(item[0], item[2] if len(item) == 3 else None, item[1])
    raise TypeError(f"cannot read detections from {type(item).__name__}")


def xywh_to_xyxy(boxes) -> np.ndarray:
    return box_convert(torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)), "xywh", "xyxy").numpy()


def xyxy_to_xywh(boxes) -> np.ndarray:
    return box_convert(torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)), "xyxy", "xywh").numpy()


# Boxes between the original image and the network input: one scale factor per axis.


def scale_of(width: int, height: int, prepared: np.ndarray) -> tuple[float, float]:
    """(sx, sy): input pixels per original pixel."""
    h, w = prepared.shape[:2]
    return w / float(width), h / float(height)


def to_input(boxes: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    return np.asarray(boxes, np.float32).reshape(-1, 4) * np.array([scale[0], scale[1], scale[0], scale[1]], np.float32)


def to_original(det: Detections, scale: tuple[float, float]) -> Detections:
    inv = np.array([1 / scale[0], 1 / scale[1], 1 / scale[0], 1 / scale[1]], np.float32)
    return Detections(det.boxes * inv, det.scores, det.labels)
