"""Where the body part is: a boolean mask that tells the histogram which pixels matter.

An ROI masker is any callable ``(img float32 [0, 1], 2-D) -> bool array of the same shape``
that never returns an empty mask. ``ClassicRoi`` is the one this project has; it works
everywhere without weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
from scipy import ndimage as ndi
from scipy.stats import theilslopes
from skimage.filters import threshold_otsu

from imaging.resize import resize_long_side


class RoiMasker(Protocol):
    def __call__(self, img: np.ndarray) -> np.ndarray: ...


def check_image(img: np.ndarray) -> np.ndarray:
    """2-D float32 in [0, 1]; NaN/inf from a bad decode become 0/1 rather than poison
    every histogram downstream."""
    img = np.asarray(img)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {img.shape}")
    img = np.nan_to_num(img.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(img, 0.0, 1.0)


#: Below one 16-bit grey level: what resampling leaves on a flat image is rounding noise, and
#: a histogram over such a range cannot have finite-width bins.
FLAT_RANGE = 1.0 / 65536


def is_flat(values: np.ndarray) -> bool:
    """One grey level (up to float rounding): nothing to threshold or equalise."""
    return values.size == 0 or float(np.ptp(values)) < FLAT_RANGE


def _upsample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    # Linear interpolation of the 0/1 mask and a 0.5 cut gives smooth edges instead of blocks.
    up = cv2.resize(mask.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) > 0.5
    if not up.any():  # a sliver thinner than one output pixel: keep it rather than go empty
        up = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    return up if up.any() else central_region(shape)


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _morph(mask: np.ndarray, op: int, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    return cv2.morphologyEx(mask.astype(np.uint8), op, _disk(radius)).astype(bool)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component, holes filled: the body part is one solid piece."""
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return ndi.binary_fill_holes(labels == (np.argmax(sizes) + 1))


def large_components(mask: np.ndarray, fraction: float) -> np.ndarray:
    """Every 8-connected component at least ``fraction`` of the largest, holes filled: a spine
    whose vertebrae threshold apart, or both bones of a forearm, stay whole."""
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= fraction * sizes.max()) + 1
    return ndi.binary_fill_holes(np.isin(labels, keep))


def central_region(shape: tuple[int, int], fraction: float = 0.5) -> np.ndarray:
    """Fallback ROI: the radiographer centres the body part, so the middle is the least-wrong
    guess, and downstream histograms need a non-empty pixel set."""
    h, w = shape
    mask = np.zeros(shape, dtype=bool)
    mh, mw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - mh) // 2, (w - mw) // 2
    mask[top : top + mh, left : left + mw] = True
    return mask


def _local_std(img: np.ndarray, size: int) -> np.ndarray:
    mean = cv2.blur(img, (size, size), borderType=cv2.BORDER_REFLECT)
    sq = cv2.blur(img * img, (size, size), borderType=cv2.BORDER_REFLECT)
    return np.sqrt(np.maximum(sq - mean * mean, 0))


def _noise_sigma(img: np.ndarray) -> float:
    # Robust (MAD) noise from neighbour differences: flat regions dominate the median.
    d = np.diff(img, axis=1).ravel()
    if d.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2))


def _edge_lines(shape: tuple[int, int]):
    h, w = shape
    return (
        ("top", np.s_[0, :], w),
        ("bottom", np.s_[h - 1, :], w),
        ("left", np.s_[:, 0], h),
        ("right", np.s_[:, w - 1], h),
    )


def _to_top(mask: np.ndarray, edge: str) -> np.ndarray:
    """View of ``mask`` with ``edge`` as row 0."""
    return {"top": mask, "bottom": mask[::-1], "left": mask.T, "right": mask.T[::-1]}[edge]


def _straight_edged(band: np.ndarray, max_residual: float = 2.0) -> bool:
    """Whether a band hanging from row 0 ends on a straight (possibly tilted) line, as
    collimator blades and shutters do; body outlines do not."""
    rows = band.shape[0]
    depth = np.where(band.all(0), rows, np.argmin(band, axis=0))
    # Columns fully covered belong to a perpendicular band; empty ones to none.
    cols = np.flatnonzero((depth > 0) & (depth < rows // 2))
    if cols.size < max(3, band.shape[1] // 4):
        return False
    # A robust (Theil-Sen) line: a burned-in marker box on the blade's edge (seen: an "L" in a
    # corner) must not bend a straight blade, so most columns, not all, must lie on it.
    slope, intercept, _, _ = theilslopes(depth[cols], cols)
    residual = np.abs(depth[cols] - (slope * cols + intercept))
    return float(np.median(residual)) <= max_residual and (residual <= 3 * max_residual).mean() >= 0.7


@dataclass(frozen=True)
class ClassicRoi:
    """Body mask without a model: drop collimation/shutter bands, Otsu the rest, clean up.

    Collimation (unexposed, so BRIGHT when bright = dense) and electronic shutters (often
    exactly constant, sometimes black) are flat regions touching the image edge; left in,
    they are a third histogram mode that pulls Otsu's threshold away from body/background.
    Burned-in text and markers are thin, so the opening and the largest-component step drop
    them unless they are thicker than ``open_radius`` and touch the body.

    Radii are in pixels of the working image (long side ``work_size``).
    """

    work_size: int = 256
    smooth_sigma: float = 1.0
    flat_tol: float = 0.015  # max local std for a pixel to count as part of a flat band
    band_tol: float = 0.05  # max distance from the band's edge value
    min_edge_contact: float = 0.25  # fraction of an edge a band must cover
    min_band_area: float = 0.01  # fraction of the image a band must cover
    dark_margin: float = 0.02  # a black shutter must be this much darker than all else
    # A bright band may be this much under the rest's 95th percentile: after the display curve,
    # collimation can be no brighter than dense bone (seen on phantoms).
    bright_margin: float = 0.05
    open_radius: int = 2
    close_radius: int = 3
    min_area: float = 0.005  # smaller masks are noise: fall back to the centre
    keep_components: float = 0.0  # 0: the largest component only; f > 0: every one >= f x the largest
    max_background_spread: float = 0.12  # see has_background

    def __call__(self, img: np.ndarray) -> np.ndarray:
        img = check_image(img)
        # Shrunk to the working size, never enlarged.
        small = img if max(img.shape) <= self.work_size else resize_long_side(img, self.work_size)
        smooth = self._smooth(small)
        border = self.borders(small, smooth)
        body = self._threshold(smooth, border)
        if not self.has_background(small, body, border):
            # The body part fills the open field: all of it is body, less a rim that callers
            # dilating the mask (imaging.body_crop) would otherwise take the blade's edge back with.
            body = _morph(~border, cv2.MORPH_ERODE, 3)
        body = _morph(body, cv2.MORPH_OPEN, self.open_radius)
        body = _morph(body, cv2.MORPH_CLOSE, self.close_radius) & ~border
        body = large_components(body, self.keep_components) if self.keep_components else largest_component(body)
        if body.sum() < self.min_area * body.size:
            body = central_region(body.shape)
        return _upsample_mask(body, img.shape)

    def borders(self, small: np.ndarray, smooth: np.ndarray | None = None) -> np.ndarray:
        """Collimation/shutter bands of the working image (True = not body)."""
        smooth = self._smooth(small) if smooth is None else smooth
        border = np.zeros(small.shape, dtype=bool)
        if min(small.shape) < 8 or is_flat(smooth):
            return border
        flat = _local_std(smooth, 5) < self.flat_tol
        quiet = _local_std(small, 3) <= max(0.25 * _noise_sigma(small), 1e-4)
        split = threshold_otsu(smooth.astype(np.float64))  # float64: narrow ranges (imaging.enhance)
        for edge, line, length in _edge_lines(small.shape):
            value = float(np.median(smooth[line]))
            bright = value > split
            candidate = flat & (np.abs(smooth - value) < self.band_tol)
            if not bright:
                # Direct-exposure background is dark and flat too, but it has quantum noise;
                # an electronic shutter is noise-free.
                if quiet[line].mean() <= 0.5:
                    continue
                candidate &= quiet
            band = self._touching(candidate, line, length)
            if band is None:
                continue
            if not _straight_edged(_to_top(band, edge)):
                continue  # follows a body outline (dense tissue, saturated background)
            if bright:
                rest = smooth[~(band | border)]
                # Collimation is unexposed, so about as bright as the densest body part; a
                # flat bright region well under that is soft tissue or bone.
                if rest.size == 0 or value < np.percentile(rest, 95) - self.bright_margin:
                    continue
            else:
                # Skip the blurred step around the shutter: it is darker than anything real.
                rest = smooth[~_morph(candidate | border, cv2.MORPH_DILATE, 3)]
                if rest.size == 0 or value > np.percentile(rest, 1) - self.dark_margin:
                    continue  # as dark as the background: removing it would not help Otsu
            border |= band
        # Cover the blurred rim of each band so it does not survive as a bright sliver.
        return _morph(border, cv2.MORPH_DILATE, 2)

    def has_background(self, small: np.ndarray, body: np.ndarray, border: np.ndarray) -> bool:
        """Whether the pixels under the threshold are direct-exposure background.

        Background is flat apart from noise; when a body part fills the whole field (a zoomed
        skull, a chest or pelvis wider than the detector) there is none, Otsu splits bone from
        soft tissue instead, and the mask shrinks to a few bones (seen on 4 % of phantoms: a
        chest cropped to its spine). Soft tissue varies with thickness, so the spread of the
        dark side, smoothed past the noise, measured against the dark-to-bright gap, tells them
        apart. On 400 phantoms the crop lost bone (under 60 % kept) on 4.8 % of images without
        this test and on 0.5 % with it; the body part filled the field on a third of them.
        """
        dark = _morph(~body & ~border, cv2.MORPH_ERODE, 4)  # away from the blurred body edge
        if dark.sum() < 0.02 * dark.size:
            return False
        if not body.any():
            return True
        heavy = cv2.GaussianBlur(small, (0, 0), 3)
        low, high = np.percentile(heavy[dark], [10, 90])
        gap = float(np.median(small[body]) - np.median(small[dark]))
        return gap > 0 and (high - low) <= self.max_background_spread * gap

    def _smooth(self, small: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(small, (0, 0), self.smooth_sigma) if self.smooth_sigma > 0 else small

    def _touching(self, candidate: np.ndarray, line, length: int) -> np.ndarray | None:
        labels, n = ndi.label(candidate)
        if n == 0:
            return None
        on_edge = labels[line]
        ids, contact = np.unique(on_edge[on_edge > 0], return_counts=True)
        ids = ids[contact >= self.min_edge_contact * length]
        if ids.size == 0:
            return None
        band = np.isin(labels, ids)
        return band if band.sum() >= self.min_band_area * band.size else None

    def _threshold(self, smooth: np.ndarray, border: np.ndarray) -> np.ndarray:
        rest = smooth[~border]
        if is_flat(rest):
            return np.zeros(smooth.shape, dtype=bool)
        return (smooth > threshold_otsu(rest.astype(np.float64))) & ~border


def make_roi(spec: str | None = None) -> RoiMasker:
    """``None``/``"classic"`` -> ClassicRoi, the only ROI method; anything else is a ValueError."""
    if spec is None or spec == "classic":
        return ClassicRoi()
    raise ValueError(f"unknown ROI spec {spec!r}: the only ROI method is 'classic'")
