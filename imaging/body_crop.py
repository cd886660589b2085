"""The network input: the enhanced body part alone, cropped to its bounding box.

Collimation frames are bright, flat and straight-edged: left in, a clustering network happily
groups radiographs by their shutters instead of their anatomy (seen on the phantoms: whole
clusters of "bright frame" images of mixed regions). Blanking everything outside the (slightly
dilated) body mask removes shutters, burned-in markers off the body and the background, and
cropping to the body's box makes the anatomy fill the input whatever the field size."""
from __future__ import annotations

import cv2
import numpy as np

from imaging.enhance import enhance, foreground_he
from imaging.roi import ClassicRoi, RoiMasker, check_image

_ROI = ClassicRoi()


def body_crop(img: np.ndarray, method: str = "fhe", roi: RoiMasker | None = None,
              margin: float = 0.04, dilate: float = 0.01) -> np.ndarray:
    """Enhanced image, zero outside the body mask, cropped to the mask's box plus ``margin``
    (a fraction of the long side). ``dilate`` keeps the body's own edge in."""
    img = check_image(img)
    mask = (roi or _ROI)(img)
    out = foreground_he(img, mask=mask) if method == "fhe" else enhance(img, method)
    h, w = img.shape
    r = max(1, int(round(dilate * max(h, w))))
    keep = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))) > 0
    out = np.where(keep, out, 0.0).astype(np.float32)
    ys, xs = np.nonzero(keep)
    m = int(round(margin * max(h, w)))
    top, bottom = max(0, ys.min() - m), min(h, ys.max() + 1 + m)
    left, right = max(0, xs.min() - m), min(w, xs.max() + 1 + m)
    return out[top:bottom, left:right]
