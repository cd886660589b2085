"""Bone lesions drawn into the bone layer, with exact boxes.

A lesion's box is the bounding box of the pixels whose bone attenuation it changed
(periosteal reaction included) that remain visible inside the collimated field, in
final image coordinates: pose is applied before drawing, so no box is ever warped.
"""
from __future__ import annotations

import cv2
import numpy as np

from .raster import disk

KINDS = (("benign", "lytic"), ("benign", "sclerotic"), ("malignant", "permeative"))
MIN_PIXELS = 6


def _grid(box, centre, angle: float):
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - centre[0], yy - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c


def _benign_lytic(rng, roi, bm, u, v, dc):
    a = max(2.0, dc * rng.uniform(0.55, 0.95))
    b = a * rng.uniform(0.6, 1.0)
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    inner = (rho <= 1).astype(np.float32)
    rim = ((rho > 1) & (rho <= 1 + max(1.2, 0.3 * a) / b)).astype(np.float32)
    roi *= 1 - rng.uniform(0.55, 0.85) * inner
    roi += rng.uniform(0.5, 0.9) * rim * bm


def _benign_sclerotic(rng, roi, bm, u, v, dc):
    a = max(1.6, dc * rng.uniform(0.35, 0.75))
    theta = np.arctan2(v, u)
    wobble = 1 + 0.12 * np.sin(3 * theta + rng.uniform(0, 6.3)) + 0.06 * np.sin(5 * theta + rng.uniform(0, 6.3))
    rho = np.sqrt(u**2 + (v / rng.uniform(0.65, 1.0)) ** 2) / (a * wobble)
    roi += rng.uniform(0.7, 1.3) * (rho <= 1).astype(np.float32) * bm


def _malignant(rng, roi, bm, u, v, dc):
    """Moth-eaten lysis that breaks through the cortex, fading out with no margin,
    plus periosteal new bone (sunburst spicules or onion-skin layers) just off the cortex."""
    r = max(3.0, dc * rng.uniform(1.15, 1.7))
    rho = np.sqrt(u**2 + (v / rng.uniform(0.6, 1.0)) ** 2) / r
    noise = cv2.GaussianBlur(rng.standard_normal(roi.shape).astype(np.float32), (0, 0), max(0.7, r / 6))
    noise /= noise.std() + 1e-6
    falloff = 1.0 - rho**2
    holes = 0.5 + 0.5 * np.tanh((1.4 * noise + 2.0 * falloff - 1.2) / 0.6)
    holes *= np.clip((1.35 - rho) / 0.35, 0, 1)
    roi *= 1 - rng.uniform(0.6, 0.9) * holes.astype(np.float32)

    bm8 = bm.astype(np.uint8)
    edge = (bm8 > 0) & (cv2.erode(bm8, disk(1)) == 0) & (rho < 1.25)
    ys, xs = np.nonzero(edge)
    if len(ys) == 0:
        return
    dens = rng.uniform(0.45, 0.8)
    outside = 1.0 - bm
    if rng.random() < 0.5:  # spiculated: thin lines perpendicular to the cortex
        g = cv2.GaussianBlur(bm.astype(np.float32), (0, 0), 1.5)
        gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
        spic = np.zeros(roi.shape, np.uint8)
        pick = rng.choice(len(ys), size=min(len(ys), int(rng.integers(15, 36))), replace=False)
        for i in pick:
            y, x = ys[i], xs[i]
            n = -np.array([gx[y, x], gy[y, x]])
            n /= np.hypot(*n) + 1e-6
            length = rng.uniform(0.4, 0.9) * r + 2
            end = (int(round(x + n[0] * length)), int(round(y + n[1] * length)))
            cv2.line(spic, (int(x), int(y)), end, 1, 1, cv2.LINE_8)
        roi += dens * spic * outside
    else:  # layered: shells parallel to the cortex
        gap = max(2, int(round(r / 4)))
        near = (rho < 1.4).astype(np.float32)
        for k in range(1, int(rng.integers(2, 4)) + 1):
            shell = cv2.dilate(bm8, disk(k * gap)) - cv2.dilate(bm8, disk(k * gap - 1))
            roi += dens * shell * near * outside


DRAW = {"lytic": _benign_lytic, "sclerotic": _benign_sclerotic, "permeative": _malignant}


def place_lesions(bone: np.ndarray, lesionable: np.ndarray, allowed: np.ndarray, rng: np.random.Generator,
                  count: int, px_per_unit: float) -> tuple[np.ndarray, list[dict]]:
    """Draw up to ``count`` lesions on lesionable bone whose centre lies in ``allowed``.

    Returns the lesion map (0 = none, k = k-th returned lesion) and the lesion records.
    Fewer lesions are returned when the visible bone is too thin or too scarce.
    """
    h, w = bone.shape
    lesion_map = np.zeros((h, w), np.uint8)
    records: list[dict] = []
    dist = cv2.distanceTransform(lesionable, cv2.DIST_L2, 3)
    dmin = max(2.0, 0.012 * px_per_unit)
    bmf = lesionable.astype(np.float32)
    for _ in range(count):
        label, kind = KINDS[int(rng.integers(len(KINDS)))]
        free = allowed & (cv2.dilate(lesion_map, disk(6)) == 0)
        cand = np.flatnonzero((dist >= dmin) & free)
        if len(cand) == 0:
            break
        wts = dist.ravel()[cand].astype(np.float64) ** 1.5
        idx = int(cand[rng.choice(len(cand), p=wts / wts.sum())])
        cy, cx = divmod(idx, w)
        dc = float(min(dist[cy, cx], 0.1 * px_per_unit))
        ext = int(np.ceil(dc * 3.8 + 8))  # room for periosteal spicules
        box = (max(cx - ext, 0), max(cy - ext, 0), min(cx + ext + 1, w), min(cy + ext + 1, h))
        x0, y0, x1, y1 = box
        roi = bone[y0:y1, x0:x1]
        before = roi.copy()
        u, v = _grid(box, (cx, cy), rng.uniform(0, np.pi))
        DRAW[kind](rng, roi, bmf[y0:y1, x0:x1], u, v, dc)
        drawn = (np.abs(roi - before) > 0.05) & allowed[y0:y1, x0:x1] & (lesion_map[y0:y1, x0:x1] == 0)
        if drawn.sum() < MIN_PIXELS:
            roi[...] = before
            continue
        lesion_map[y0:y1, x0:x1][drawn] = len(records) + 1
        ys, xs = np.nonzero(drawn)
        records.append({"label": label, "kind": kind,
                        "box": [float(x0 + xs.min()), float(y0 + ys.min()), float(x0 + xs.max() + 1),
                                float(y0 + ys.max() + 1)]})
    return lesion_map, records
