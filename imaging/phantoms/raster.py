"""Rasterise shapes into attenuation layers.

Each shape is drawn only inside its own bounding box (clipped to the image), so cost
scales with the drawn area, not with image size times shape count.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from .anatomy import Pose
from .shapes import Shape

SHIFT = 4  # sub-pixel bits for cv2 drawing
ONE = 1 << SHIFT


@dataclass
class Layers:
    """Attenuation (line integrals) per material; summed later, kept apart so lesions
    touch only bone and blur can differ per material."""

    soft: np.ndarray
    bone: np.ndarray
    metal: np.ndarray
    lesionable: np.ndarray  # uint8 mask of bone a lesion may be placed on


@lru_cache(maxsize=64)
def disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _roi(contours: list[np.ndarray], pad: float, height: int, width: int):
    pts = contours[0] if len(contours) == 1 else np.vstack(contours)
    (xmin, ymin), (xmax, ymax) = pts.min(axis=0), pts.max(axis=0)
    x0 = max(int(xmin - pad) - 2, 0)
    y0 = max(int(ymin - pad) - 2, 0)
    x1 = min(int(xmax + pad) + 3, width)
    y1 = min(int(ymax + pad) + 3, height)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _mask(shape: Shape, contours: list[np.ndarray], box, width_px: float) -> np.ndarray:
    x0, y0, x1, y1 = box
    m = np.zeros((y1 - y0, x1 - x0), np.uint8)
    pts = [np.round((c - (x0, y0)) * ONE).astype(np.int32) for c in contours]
    if shape.width > 0:
        cv2.polylines(m, pts, shape.closed, 1, thickness=max(1, int(round(width_px))), lineType=cv2.LINE_8,
                      shift=SHIFT)
    else:
        cv2.fillPoly(m, pts, 1, lineType=cv2.LINE_8, shift=SHIFT)
    return m


def rasterise(shapes: list[Shape], pose: Pose, height: int, width: int, texture: np.ndarray) -> Layers:
    """``texture``: multiplicative trabecular pattern (~1), applied to bone interiors only."""
    ppu = pose.px_per_unit
    soft = np.zeros((height, width), np.float32)
    bone = np.zeros((height, width), np.float32)
    metal = np.zeros((height, width), np.float32)
    lesionable = np.zeros((height, width), np.uint8)
    groups: dict[int, tuple[np.ndarray, float]] = {}
    for shape in shapes:
        contours = [pose.apply(c) for c in shape.contours]
        width_px = shape.width * ppu
        box = _roi(contours, width_px / 2 + 1, height, width)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        m = _mask(shape, contours, box, width_px)
        if shape.layer == "soft":
            if shape.group is None:
                soft[y0:y1, x0:x1] += shape.density * m
            else:
                g = groups.setdefault(shape.group, (np.zeros((height, width), np.uint8), shape.density))[0]
                np.maximum(g[y0:y1, x0:x1], m, out=g[y0:y1, x0:x1])
        elif shape.layer == "metal":
            np.maximum(metal[y0:y1, x0:x1], shape.density * m, out=metal[y0:y1, x0:x1])
        else:
            roi = bone[y0:y1, x0:x1]
            if shape.core is None or shape.cortex <= 0:
                roi += shape.density * m
            else:
                k = max(1, int(round(shape.cortex * ppu)))
                inner = cv2.erode(m, disk(k), borderType=cv2.BORDER_REPLICATE)
                roi += shape.density * m + inner * (shape.core * texture[y0:y1, x0:x1] - shape.density)
            if shape.lesionable and shape.density > 0:
                np.maximum(lesionable[y0:y1, x0:x1], m, out=lesionable[y0:y1, x0:x1])
    for g, dens in groups.values():
        soft += dens * g
    np.maximum(bone, 0, out=bone)
    lesionable &= (bone > 0.3).astype(np.uint8)
    return Layers(soft, bone, metal, lesionable)
