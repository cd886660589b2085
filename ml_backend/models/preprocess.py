"""Bring a radiograph of any size to the network's input size, and back.

Inputs are 2-D float32 [0, 1] arrays (the foreground-equalised radiographs); nothing is
quantised to 8 bits on the way."""
from __future__ import annotations

import cv2
import numpy as np

from imaging import resize as imaging_resize


def check_image(img, index: int | None = None) -> np.ndarray:
    """A 2-D float32 view of ``img`` (a singleton channel axis is dropped), or a ValueError that
    names the image."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    elif img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    where = f"image {index}: " if index is not None else ""
    if img.ndim != 2 or min(img.shape) < 1:
        raise ValueError(f"{where}expected a 2-D grayscale array, got shape {img.shape}")
    img = img.astype(np.float32, copy=False)
    if not np.isfinite(img).all():
        raise ValueError(f"{where}pixels must be finite")
    return img


def resize_long_side(img: np.ndarray, size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize so the long side is ``size``, keeping the aspect ratio (bilinear when enlarging).
    Returns the image and the (x, y) scale factors actually applied (rounding makes them differ
    slightly)."""
    h, w = img.shape
    out = imaging_resize.resize_long_side(img, size, enlarge=cv2.INTER_LINEAR)
    return np.ascontiguousarray(out, np.float32), (out.shape[1] / w, out.shape[0] / h)


def letterbox(img: np.ndarray, size: int) -> np.ndarray:
    """A ``size`` x ``size`` square: long side resized to ``size``, the rest padded with black
    (a stretched hand is not a hand any more)."""
    return imaging_resize.letterbox(img, size, enlarge=cv2.INTER_LINEAR)
