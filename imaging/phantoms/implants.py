"""Orthopaedic hardware: a plate with screws along a bone, or the region's joint replacement."""
from __future__ import annotations

import numpy as np

from .shapes import Anatomy, Shape, ellipse, metal


def plate(p0: np.ndarray, p1: np.ndarray, half_width: float, rng: np.random.Generator) -> list[Shape]:
    """Plate on one side of the bone axis, screws crossing the bone perpendicular to it."""
    d = p1 - p0
    length = float(np.hypot(*d))
    u = d / length
    n = np.array([-u[1], u[0]]) * (1 if rng.random() < 0.5 else -1)
    pw = 0.28 * half_width
    off = n * half_width * rng.uniform(0.5, 0.9)
    a, b = p0 + off, p1 + off
    shapes = [metal(np.array([a + n * pw, b + n * pw, b - n * pw, a - n * pw]), 4.0)]
    count = int(rng.integers(3, 8))
    for t in np.linspace(0.1, 0.9, count):
        c = a + t * d
        tip = c - n * half_width * rng.uniform(1.6, 2.1)
        sw = 0.1 * half_width
        shapes.append(metal(np.array([c + u * sw, tip + u * sw * 0.6, tip - u * sw * 0.6, c - u * sw]), 5.0))
        shapes.append(metal(ellipse(c, 1.5 * sw, 1.5 * sw, 0, 12), 5.0))
    return shapes


def choose(anatomy: Anatomy, rng: np.random.Generator) -> tuple[str, list[Shape]] | None:
    """Pick hardware this region can carry; ``None`` when it has no site for any."""
    if anatomy.prosthesis is not None and (not anatomy.plate_sites or rng.random() < 0.5):
        return "prosthesis", anatomy.prosthesis(rng)
    if anatomy.plate_sites:
        p0, p1, hw = anatomy.plate_sites[int(rng.integers(len(anatomy.plate_sites)))]
        return "plate", plate(np.asarray(p0, float), np.asarray(p1, float), hw, rng)
    return None
