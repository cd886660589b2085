"""Resizing with the aspect ratio kept: the one implementation in imaging (thumbnails, the ROI's
working image, network inputs)."""

from __future__ import annotations

import cv2
import numpy as np


def resize_long_side(img: np.ndarray, size: int, enlarge: int = cv2.INTER_AREA) -> np.ndarray:
    """Resize so the long side is ``size``, aspect kept. Shrinking uses area interpolation (plain
    bilinear aliases fine trabecular texture away); ``enlarge`` is the interpolation upwards."""
    h, w = img.shape[:2]
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, new, interpolation=cv2.INTER_AREA if scale < 1 else enlarge)


def letterbox(img: np.ndarray, size: int, enlarge: int = cv2.INTER_AREA) -> np.ndarray:
    """Long side = ``size``, aspect kept, centred on a zero (black) square."""
    small = resize_long_side(img.astype(np.float32, copy=False), size, enlarge)
    out = np.zeros((size, size), dtype=np.float32)
    h, w = small.shape
    top, left = (size - h) // 2, (size - w) // 2
    out[top : top + h, left : left + w] = small
    return out
