"""Similar cases (the recommender of Hinterwimmer et al.): the k labelled radiographs nearest to
an image in the sorter's embedding space, and the majority vote of their labels."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from training.embeddings import FlatIndex


@dataclass
class Neighbours:
    ids: np.ndarray  # (n, k) ids of the labelled images, nearest first
    labels: np.ndarray  # (n, k) their labels
    similarity: np.ndarray  # (n, k) cosine similarity


class SimilarCases:
    """``fit(embeddings, labels, ids)`` on L2-normalised embeddings; exact inner-product search
    (a flat index answers 100,000 images in milliseconds; an IVF index pays off beyond that)."""

    def fit(self, embeddings: np.ndarray, labels, ids) -> "SimilarCases":
        self.index_ = FlatIndex(embeddings, inner_product=True)
        self.labels_ = np.asarray(labels, dtype=object)
        self.ids_ = np.asarray(ids, dtype=np.int64)
        return self

    def kneighbors(self, queries: np.ndarray, k: int = 5, exclude_ids=None) -> Neighbours:
        """``exclude_ids`` (one per query, e.g. the query's own id): never returned as its own neighbour."""
        q = np.atleast_2d(queries)
        k = min(k, len(self.ids_))
        extra = 1 if exclude_ids is not None else 0
        sim, pos = self.index_.search(q, k + extra)
        ids, labels, sims = [], [], []
        for row in range(len(q)):
            keep = [j for j in range(pos.shape[1]) if pos[row, j] >= 0
                    and (exclude_ids is None or self.ids_[pos[row, j]] != exclude_ids[row])][:k]
            ids.append(self.ids_[pos[row, keep]])
            labels.append(self.labels_[pos[row, keep]])
            sims.append(sim[row, keep])
        return Neighbours(np.array(ids), np.array(labels, dtype=object), np.array(sims, dtype=np.float32))


def majority_vote(labels) -> tuple[object, float]:
    """(label, share of the neighbours that carry it); ties go to the nearer neighbour."""
    labels = list(labels)
    if not labels:
        return None, 0.0
    counts = Counter(labels)
    best = max(counts.values())
    winner = next(lab for lab in labels if counts[lab] == best)  # labels are nearest first
    return winner, best / len(labels)
