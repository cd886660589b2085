"""Train/val/test splits by patient and study: no patient or study in two splits."""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Hashable, Iterable, Mapping


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
