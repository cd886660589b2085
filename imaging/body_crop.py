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

_ROI = ClassicRoi(keep_components=0.05)  # the largest piece alone cut spines down to one vertebra


def body_box(mask: np.ndarray, margin: float = 0.04) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the mask plus ``margin`` of the long side, inside the image."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    m = int(round(margin * max(h, w)))
    return max(0, ys.min() - m), min(h, ys.max() + 1 + m), max(0, xs.min() - m), min(w, xs.max() + 1 + m)


def body_mask(img: np.ndarray, roi: RoiMasker | None = None, dilate: float = 0.01) -> np.ndarray:
    """The ROI mask, dilated by ``dilate`` of the long side so the body's own edge stays in."""
    mask = (roi or _ROI)(img)
    r = max(1, int(round(dilate * max(img.shape))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def body_crop(img: np.ndarray, method: str = "fhe", roi: RoiMasker | None = None, margin: float = 0.04) -> np.ndarray:
    """Enhanced image, zero outside the body mask, cropped to the mask's box."""
    img = check_image(img)
    keep = body_mask(img, roi)
    out = foreground_he(img, mask=keep) if method == "fhe" else enhance(img, method)
    out = np.where(keep, out, 0.0).astype(np.float32)
    top, bottom, left, right = body_box(keep, margin)
    return out[top:bottom, left:right]
