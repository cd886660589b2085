"""Training tiles: lesion-centred crops of the network's input, for small lesions.

A lesion of 10 px covers a few thousandths of a 512 px radiograph, so whole-image batches
spend nearly all their compute on background, and from scratch the detector settles on "no
lesion anywhere" (ml_backend.models.detector's note). Crops at the same resolution, most of them
around a lesion, give the network many more lesion pixels per step for the same compute; the
network is fully convolutional, so it still predicts whole images."""
from __future__ import annotations

import numpy as np
import torch

MIN_VISIBLE = 0.5  # a box cut to less than this share of its area is dropped from the tile


def random_tile(img: np.ndarray, boxes_xyxy: np.ndarray, labels: np.ndarray, tile: int, focus: float,
                gen: torch.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ``tile`` x ``tile`` crop of ``img`` (zero-padded where the image is smaller) and the
    boxes in it, cut to the crop. With probability ``focus`` (when the image has a box) the crop
    holds a random box somewhere in its middle two thirds; otherwise it is anywhere.

    Torch's random numbers (``gen`` or the global generator): seeded training stays repeatable,
    and DataLoader workers get their own streams."""
    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=gen))

    h, w = img.shape
    if len(boxes_xyxy) and float(torch.rand((), generator=gen)) < focus:
        x0, y0, x1, y1 = boxes_xyxy[int(torch.randint(len(boxes_xyxy), (), generator=gen))]
        cx = (x0 + x1) / 2 + uniform(-tile / 3, tile / 3)
        cy = (y0 + y1) / 2 + uniform(-tile / 3, tile / 3)
    else:
        cx, cy = uniform(0, w), uniform(0, h)
    left = int(np.clip(round(cx - tile / 2), 0, max(w - tile, 0)))
    top = int(np.clip(round(cy - tile / 2), 0, max(h - tile, 0)))
    out = np.zeros((tile, tile), np.float32)
    part = img[top : top + tile, left : left + tile]
    out[: part.shape[0], : part.shape[1]] = part
    if not len(boxes_xyxy):
        return out, boxes_xyxy.reshape(0, 4), labels[:0]
    cut = boxes_xyxy - np.array([left, top, left, top], np.float32)
    cut = np.clip(cut, 0, [min(tile, w - left), min(tile, h - top)] * 2)
    keep = _area(cut) >= MIN_VISIBLE * _area(boxes_xyxy)
    keep &= (cut[:, 2] > cut[:, 0]) & (cut[:, 3] > cut[:, 1])
    return out, cut[keep].astype(np.float32), labels[keep]


def _area(b: np.ndarray) -> np.ndarray:
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
