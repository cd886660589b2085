"""Sampling uniformly over pseudo-labels, so big clusters cannot swamp an epoch."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class UniformClusterSampler(Sampler[int]):
    """Each draw picks a non-empty cluster uniformly, then a member of it.

    Yields indices into the ORIGINAL dataset order (the reference UnifLabelSampler yields
    positions in a cluster-sorted list that it then applies to the unsorted dataset, so its
    draws are not uniform over clusters). Small clusters are drawn with replacement.

    Under torchrun, rank ``rank`` of ``world`` takes every world-th draw of the same sequence,
    so the ranks share one epoch; the draws are padded to a multiple of ``world`` (all ranks
    must take the same number of steps)."""

    def __init__(self, assignments: np.ndarray, num_samples: int | None = None, seed: int = 0,
                 rank: int = 0, world: int = 1):
        self.assignments = np.asarray(assignments, dtype=np.int64)
        self.num_samples = int(num_samples if num_samples is not None else len(self.assignments))
        self.seed = seed
        self.epoch = 0
        self.rank, self.world = rank, world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = np.argsort(self.assignments, kind="stable")
        labels, starts, counts = np.unique(self.assignments[order], return_index=True, return_counts=True)
        total = len(self) * self.world
        per = -(-total // len(labels))  # ceil: every cluster gets the same share
        picks = [order[s + rng.choice(c, per, replace=c < per)] for s, c in zip(starts, counts)]
        out = np.concatenate(picks)
        rng.shuffle(out)
        return out[:total][self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return -(-self.num_samples // self.world)
