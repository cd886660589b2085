"""Geometric primitives for phantom anatomy.

Anatomy is described in a canonical frame (x right, y down, one unit = half the short
side of the image at scale 1) as polygons and thick polylines, so that pose changes
are a single affine map applied to points before rasterising: no image warping, and
lesion boxes stay exact.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np


@dataclass
class Shape:
    """One structure. ``layer`` decides how it attenuates:

    - ``bone``: ``density`` on a cortical rim ``cortex`` thick, ``core`` inside
      (negative densities carve holes such as sinuses or foramina);
    - ``soft``: uniform ``density``; shapes sharing a ``group`` are unioned so an
      envelope made of several pieces does not double up where pieces overlap;
    - ``metal``: uniform, very dense.
    """

    contours: list[np.ndarray]
    layer: str = "bone"
    density: float = 1.0
    core: float | None = None
    cortex: float = 0.018
    width: float = 0.0  # > 0: stroke the contours with this canonical width
    closed: bool = True
    group: int | None = None
    lesionable: bool = True

    def transformed(self, fn: Callable[[np.ndarray], np.ndarray]) -> "Shape":
        """Copy with every contour mapped through ``fn`` (used for zoomed views)."""
        return Shape(**{**self.__dict__, "contours": [fn(c) for c in self.contours]})


@dataclass
class Anatomy:
    """A region drawn in canonical coordinates plus where hardware could go.

    ``plate_sites``: (p0, p1, half width) bone axes a plate can be fixed along.
    ``prosthesis``: builds metal shapes of a joint replacement for this region, if any.
    """

    shapes: list[Shape]
    plate_sites: list[tuple[np.ndarray, np.ndarray, float]] = field(default_factory=list)
    prosthesis: Callable[[np.random.Generator], list[Shape]] | None = None
    view: str = "AP"
    paired: bool = True  # has a laterality (limbs); axial regions do not


class Jitter:
    """Anatomical variation: every measurement goes through here so the spread is one knob."""

    def __init__(self, rng: np.random.Generator, pct: float = 0.10):
        self.rng = rng
        self.pct = pct

    def __call__(self, x: float, pct: float | None = None) -> float:
        p = self.pct if pct is None else pct
        return float(x) * (1.0 + self.rng.uniform(-p, p))

    def add(self, x: float, amount: float) -> float:
        return float(x) + self.rng.uniform(-amount, amount)

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)


def P(x: float, y: float) -> np.ndarray:
    return np.array([x, y], dtype=np.float64)


@lru_cache(maxsize=32)
def _circle(n: int) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def ellipse(c, ax: float, ay: float, angle_deg: float = 0.0, n: int = 36) -> np.ndarray:
    pts = _circle(n) * (ax, ay)
    return (rotate(pts, angle_deg) if angle_deg else pts) + np.asarray(c, dtype=np.float64)


def arc(c, rx: float, ry: float, a0_deg: float, a1_deg: float, n: int = 24) -> np.ndarray:
    t = np.deg2rad(np.linspace(a0_deg, a1_deg, n))
    return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1) + np.asarray(c, dtype=np.float64)


def rotate(pts: np.ndarray, angle_deg: float, about=(0.0, 0.0)) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    about = np.asarray(about, dtype=np.float64)
    return (np.asarray(pts, dtype=np.float64) - about) @ r.T + about


def smooth(pts, iters: int = 2, closed: bool = True) -> np.ndarray:
    """Chaikin corner cutting: lets outlines be typed as a few landmarks."""
    p = np.asarray(pts, dtype=np.float64)
    for _ in range(iters):
        q = np.roll(p, -1, axis=0) if closed else p[1:]
        a = p if closed else p[:-1]
        new = np.empty((2 * len(a), 2))
        new[0::2] = 0.75 * a + 0.25 * q
        new[1::2] = 0.25 * a + 0.75 * q
        p = new if closed else np.vstack([p[:1], new, p[-1:]])
    return p


def bezier(p0, p1, p2, n: int = 20) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2 = (np.asarray(v, dtype=np.float64) for v in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


@lru_cache(maxsize=8)
def _profile(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    t = np.linspace(0, 1, n)
    k = 0.22
    a = np.linspace(0, np.pi, 9)[1:-1, None]
    return t, np.exp(-((t / k) ** 2)), np.exp(-(((1 - t) / k) ** 2)), np.hstack([np.cos(a), 0.6 * np.sin(a)])


def long_bone(p0, p1, h0: float, hm: float, h1: float, n: int = 14) -> np.ndarray:
    """Tubular bone from ``p0`` to ``p1``: flared ends (half widths h0, h1), waisted
    shaft (hm), rounded caps, so phalanges and metacarpals read as bones, not sticks."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    u = d / (float(np.hypot(*d)) or 1e-6)
    nrm = np.array([-u[1], u[0]])
    t, e0, e1, cap = _profile(n)
    h = hm + (h0 - hm) * e0 + (h1 - hm) * e1
    axis = p0 + t[:, None] * d
    side = h[:, None] * nrm
    basis = np.stack([nrm, u])  # cap points: cos * nrm + 0.6 sin * u
    return np.vstack([axis + side, p1 + h1 * (cap @ basis), (axis - side)[::-1], p0 - h0 * (cap @ basis)])


def capsule(p0, p1, r: float, n: int = 10) -> np.ndarray:
    return long_bone(p0, p1, r, r, r, n=n)


_QUARTER = np.stack([np.cos(np.linspace(0, np.pi / 2, 5)), np.sin(np.linspace(0, np.pi / 2, 5))], axis=1)
_CORNERS = [(np.array(sign, float), q) for sign, q in zip(
    ((1, 1), (-1, 1), (-1, -1), (1, -1)),
    (_QUARTER, _QUARTER[:, ::-1] * (-1, 1), _QUARTER * (-1, -1), _QUARTER[:, ::-1] * (1, -1)))]


def rounded_rect(c, hw: float, hh: float, r: float, angle_deg: float = 0.0) -> np.ndarray:
    pts = np.vstack([s * (hw - r, hh - r) + r * q for s, q in _CORNERS])
    return (rotate(pts, angle_deg) if angle_deg else pts) + np.asarray(c, float)


def direction(angle_deg: float) -> np.ndarray:
    """Unit vector pointing 'up' the image tilted by angle (positive = toward image right)."""
    a = np.deg2rad(angle_deg)
    return np.array([np.sin(a), -np.cos(a)])


def bone(pts, density: float = 1.0, core: float = 0.5, cortex: float = 0.018, lesionable: bool = True) -> Shape:
    return Shape([np.asarray(pts, float)], "bone", density, core, cortex, lesionable=lesionable)


def bone_stroke(pts, width: float, density: float = 1.0, core: float = 0.5, cortex: float = 0.012,
                closed: bool = False, lesionable: bool = True) -> Shape:
    return Shape([np.asarray(pts, float)], "bone", density, core, cortex, width=width, closed=closed,
                 lesionable=lesionable)


def hole(pts, density: float = -0.35) -> Shape:
    """Air or fat inside bone (sinuses, foramina): subtracts from the bone layer."""
    return Shape([np.asarray(pts, float)], "bone", density, None, 0.0, lesionable=False)


def soft(pts, density: float = 0.3, group: int | None = 0, width: float = 0.0, closed: bool = True) -> Shape:
    return Shape([np.asarray(pts, float)], "soft", density, None, 0.0, width=width, closed=closed, group=group,
                 lesionable=False)


def metal(pts, density: float = 4.0, width: float = 0.0, closed: bool = True) -> Shape:
    return Shape([np.asarray(pts, float)], "metal", density, None, 0.0, width=width, closed=closed,
                 lesionable=False)


def zoom(a: Anatomy, k: float, centre=(0.0, 0.0)) -> Anatomy:
    """The same anatomy magnified ``k`` times about ``centre`` (stroke widths, cortices
    and hardware included): how a region drawn too large or too small is refitted."""
    c0 = np.asarray(centre, float)

    def scale(shapes: list[Shape]) -> list[Shape]:
        out = [s.transformed(lambda c: (c - c0) * k) for s in shapes]
        for s in out:
            s.width *= k
            s.cortex *= k
        return out

    sites = [((p0 - c0) * k, (p1 - c0) * k, hw * k) for p0, p1, hw in a.plate_sites]
    build = a.prosthesis
    prosthesis = None if build is None else (lambda rng: scale(build(rng)))
    return Anatomy(scale(a.shapes), sites, prosthesis, a.view, a.paired)


def mirror_x(shapes: list[Shape]) -> list[Shape]:
    """Left-right copy of a half-body (pelvis, chest) about x = 0."""
    return [s.transformed(lambda c: c * np.array([-1.0, 1.0])) for s in shapes]
