"""The one split policy: which images train, validate and test, never one patient or study in two.

Exports assign named splits by fraction (``group_images`` + ``assign_splits``); the sorter
cross-validates with ``cv_folds`` (the 6-2-2 scheme of SAM-X: five stratified group folds; fold
i tests on part i, validates on part i+1, trains on the other three); every model version is
compared on ``holdout``, the fixed validation split: a group's side is a hash of its key, so it
stays put when images are added or labels corrected, and no version ever trains on it."""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Hashable, Iterable, Mapping

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


def parse_fractions(text: str, names: tuple[str, ...] = ("train", "val", "test")) -> dict[str, float]:
    """"0.8,0.1,0.1" -> {"train": 0.8, "val": 0.1, "test": 0.1}; they must sum to 1."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"split fractions must be numbers like 0.8,0.1,0.1, not {text!r}") from None
    if len(values) != len(names) or any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"give {len(names)} non-negative fractions for {'/'.join(names)} that sum to 1, "
                         f"not {text!r}")
    return dict(zip(names, values))


class _UnionFind:
    # scipy's connected_components would need the keys numbered first; this is shorter.
    def __init__(self) -> None:
        self.parent: dict[Hashable, Hashable] = {}

    def find(self, a: Hashable) -> Hashable:
        self.parent.setdefault(a, a)
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: Hashable, b: Hashable) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb, key=repr)] = min(ra, rb, key=repr)


def group_images(rows: Iterable[tuple[int, str | None, str | None]]) -> dict[int, str]:
    """(image id, patient pseudonym, study uid) -> image id: group key. Images sharing a patient
    or a study end in one group; an image with neither is a group of its own."""
    uf = _UnionFind()
    image_keys: dict[int, str] = {}
    for image_id, patient, study in rows:
        keys = [f"p:{patient}" if patient else None, f"s:{study}" if study else None]
        keys = [k for k in keys if k] or [f"i:{image_id}"]
        for k in keys[1:]:
            uf.union(keys[0], k)
        image_keys[image_id] = keys[0]
    return {i: uf.find(k) for i, k in image_keys.items()}


def assign_splits(groups: Mapping[int, str], fractions: Mapping[str, float], seed: int = 0) -> dict[int, str]:
    """image id -> split. Groups are visited in a seeded hash order and each goes to the split
    furthest below its share of images: deterministic, and close to the fractions even when a
    few patients own many images."""
    sizes = Counter(groups.values())
    total = sum(sizes.values())
    targets = {name: f * total for name, f in fractions.items() if f > 0}
    filled = dict.fromkeys(targets, 0)

    def order(key: str) -> bytes:
        return hashlib.sha256(f"{seed}:{key}".encode()).digest()

    chosen: dict[str, str] = {}
    for key in sorted(sizes, key=order):
        name = max(targets, key=lambda n: ((targets[n] - filled[n]) / targets[n], -list(targets).index(n)))
        chosen[key] = name
        filled[name] += sizes[key]
    return {image_id: chosen[key] for image_id, key in groups.items()}



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
