"""Which images a sorter trains, validates and is tested on: never one patient or study in two.

``cv_folds`` gives the 6-2-2 cross-validation of SAM-X (five stratified group folds; fold i tests
on part i, validates on part i+1, trains on the other three). ``holdout`` is the fixed
validation split that model versions are compared on: a group's side is a hash of its key, so
it stays put when images are added or labels corrected, and no version ever trains on it."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


@dataclass
class Fold:
    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def cv_folds(y: np.ndarray, groups: Sequence[str], n_folds: int = 5, seed: int = 0) -> Iterator[Fold]:
    if n_folds < 3:
        raise ValueError(f"cross-validation needs at least 3 folds (train/val/test), got {n_folds}")
    y = np.asarray(y)
    n_groups = len(set(groups))
    if n_groups < n_folds:
        raise ValueError(f"{n_folds} folds need at least {n_folds} patients/studies; there are {n_groups}")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    parts = [test for _, test in splitter.split(np.zeros(len(y)), y, np.asarray(groups))]
    for i in range(n_folds):
        val = parts[(i + 1) % n_folds]
        train = np.sort(np.concatenate([parts[j] for j in range(n_folds) if j not in (i, (i + 1) % n_folds)]))
        yield Fold(i, train, np.sort(val), np.sort(parts[i]))


def holdout(groups: Sequence[str], share: float = 0.2) -> np.ndarray:
    """Boolean mask: True for the images of the fixed validation split."""
    cut = int(share * 2**32)
    return np.array([int.from_bytes(hashlib.sha256(f"samx-holdout:{g}".encode()).digest()[:4], "big") < cut
                     for g in groups], dtype=bool)
