"""Region registry and patient pose (canonical frame -> pixel frame)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import axial, limbs
from .shapes import Anatomy

BUILDERS: dict[str, Callable[[np.random.Generator], Anatomy]] = {
    "hand": limbs.hand,
    "wrist": limbs.wrist,
    "knee": limbs.knee,
    "foot": limbs.foot,
    "pelvis": axial.pelvis,
    "chest": axial.chest,
    "spine": axial.spine,
    "skull": axial.skull,
}
REGIONS: tuple[str, ...] = tuple(BUILDERS)

# BodyPartExamined values (DICOM PS3.16 CID 4031 code meanings, upper-cased as scanners write them)
BODY_PART = {"hand": "HAND", "wrist": "WRIST", "knee": "KNEE", "foot": "FOOT", "pelvis": "PELVIS",
             "chest": "CHEST", "spine": "LSPINE", "skull": "SKULL"}


@dataclass
class Pose:
    """Affine map from canonical anatomy coordinates to pixel coordinates."""

    matrix: np.ndarray  # 2x3
    mirrored: bool
    angle: float
    scale: float

    @property
    def px_per_unit(self) -> float:
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    def apply(self, pts: np.ndarray) -> np.ndarray:
        return pts @ self.matrix[:, :2].T + self.matrix[:, 2]


def random_pose(rng: np.random.Generator, height: int, width: int, mirror: bool) -> Pose:
    """Rotation +-20 deg, scale 0.7-1.3, a shift of up to 15% of the field: enough for
    anatomy to leave the image at the edges, never enough to lose the region entirely."""
    angle = rng.uniform(-20, 20)
    scale = rng.uniform(0.7, 1.3)
    unit = scale * min(height, width) / 2.0
    a = np.deg2rad(angle)
    lin = unit * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    if mirror:
        lin = lin @ np.diag([-1.0, 1.0])
    t = np.array([width / 2 + rng.uniform(-0.15, 0.15) * width, height / 2 + rng.uniform(-0.15, 0.15) * height])
    return Pose(np.hstack([lin, t[:, None]]), mirror, angle, scale)


def build(region: str, rng: np.random.Generator) -> Anatomy:
    if region not in BUILDERS:
        raise ValueError(f"unknown region {region!r}; expected one of {', '.join(REGIONS)}")
    return BUILDERS[region](rng)
