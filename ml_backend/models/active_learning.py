"""Which unlabeled images a radiologist should label next.

Uncertainty alone picks batches of near-duplicates (fifty views of the one confusing implant);
diversity alone ignores what the detector already knows. So, batch by batch:

1. Candidates: the ``pool_factor`` x ``batch_size`` x ``n_batches`` most uncertain images.
2. Greedy farthest-point selection (the k-center greedy of Sener & Savarese 2018, "Active
   learning for convolutional neural networks: a core-set approach") over L2-normalised
   embeddings: each step takes the candidate with the largest

       u ** (1 - diversity) * d ** diversity

   where u is its uncertainty divided by the largest in the pool and d its cosine distance
   ((1 - cos) / 2, in [0, 1]) to the nearest image already ranked or already labeled
   (d = 1 while there is none). A near-duplicate of a chosen image has d ~ 0 and waits;
   ``diversity=0`` is plain uncertainty order, ``diversity=1`` plain k-center.
3. ``batch_size`` x ``n_batches`` images are picked so (a later batch is diverse with respect
   to all before it too); the remaining images follow in order of uncertainty.

Ties go to the lower index, so the ranking is deterministic."""
from __future__ import annotations

import numpy as np

from training.embeddings import FlatIndex, l2_normalize


def _nearest_distance(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Cosine distance ((1 - cos) / 2) from each point to its nearest centre; faiss, because the
    labeled set can be large."""
    if len(centres) == 0:
        return np.ones(len(points), np.float32)
    sims, _ = FlatIndex(centres, inner_product=True).search(points, 1)
    return np.clip((1.0 - sims[:, 0]) / 2.0, 0.0, 1.0)


def rank(uncertainty, embeddings, batch_size: int, *, diversity: float = 0.5, pool_factor: int = 5,
         n_batches: int = 1, labeled=None) -> np.ndarray:
    """All indices of the unlabeled images, the one to label first first. ``labeled``: the
    embeddings of images already labeled (new picks keep away from them too)."""
    u = np.asarray(uncertainty, np.float64).reshape(-1)
    emb = l2_normalize(embeddings)
    if len(emb) != len(u):
        raise ValueError(f"{len(u)} uncertainties but {len(emb)} embeddings")
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity must be in [0, 1], not {diversity}")
    if not np.isfinite(u).all() or (u < 0).any():
        raise ValueError("uncertainties must be finite and not negative")
    if batch_size < 1 or pool_factor < 1:
        raise ValueError("batch_size and pool_factor must be at least 1")
    by_uncertainty = np.argsort(-u, kind="stable")
    centres = l2_normalize(labeled) if labeled is not None and len(labeled) else np.zeros((0, emb.shape[1]), np.float32)
    n_pick = batch_size * n_batches
    pool = by_uncertainty[: pool_factor * n_pick]
    d = _nearest_distance(emb[pool], centres)
    top = u[pool].max() if len(pool) else 0.0
    un = u[pool] / top if top > 0 else np.ones(len(pool))
    free = np.ones(len(pool), bool)
    chosen: list[int] = []
    for _ in range(min(n_pick, len(pool))):
        score = np.where(free, un ** (1.0 - diversity) * d ** diversity, -1.0)
        k = int(np.argmax(score))  # first maximum: the more uncertain of equals (the pool is in that order)
        free[k] = False
        chosen.append(int(pool[k]))
        d = np.minimum(d, np.clip((1.0 - emb[pool] @ emb[pool[k]]) / 2.0, 0.0, 1.0))
    taken = np.zeros(len(u), bool)
    taken[chosen] = True
    rest = by_uncertainty[~taken[by_uncertainty]]
    return np.concatenate([np.array(chosen, np.int64), rest.astype(np.int64)])


def priority_scores(uncertainty, embeddings, batch_size: int, **kwargs) -> np.ndarray:
    """(n,) floats in (0, 1] whose descending order is ``rank``'s order (Label Studio sorts tasks
    by such a number): the k-th of n ranked gets (n - k) / n."""
    order = rank(uncertainty, embeddings, batch_size, **kwargs)
    n = len(order)
    scores = np.empty(n, np.float64)
    scores[order] = (n - np.arange(n)) / max(n, 1)
    return scores
