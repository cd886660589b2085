"""ml_backend.models.active_learning and ml_backend.models.uncertainty: uncertain and diverse, deterministic."""
from __future__ import annotations

import numpy as np
import pytest

from ml_backend.models.active_learning import priority_scores, rank
from ml_backend.models.boxes import Detections
from ml_backend.models.uncertainty import detection_uncertainty, entropy_sum, mirror


def groups(n_groups=10, per_group=8, dim=32, seed=0):
    """``n_groups`` clusters of near-duplicates in random directions; the most uncertain images
    all sit in the first three groups."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_groups, dim))
    group = np.repeat(np.arange(n_groups), per_group)
    emb = centres[group] + 0.01 * rng.normal(size=(len(group), dim))
    u = rng.uniform(0.1, 0.4, len(group))
    u[group < 3] = rng.uniform(0.8, 0.9, (group < 3).sum())
    perm = rng.permutation(len(group))  # the input order must not matter
    return emb[perm].astype(np.float32), u[perm], group[perm]


def test_batch_covers_distinct_groups_not_duplicates():
    emb, u, group = groups()
    order = rank(u, emb, batch_size=6)
    assert sorted(order.tolist()) == list(range(len(u)))
    batch = order[:6]
    assert len(set(group[batch])) == 6  # six groups, no near-duplicates
    assert {0, 1, 2} <= set(group[batch])  # ...and every uncertain group is in
    # plain uncertainty order would have taken duplicates of the uncertain groups only
    assert set(group[rank(u, emb, batch_size=6, diversity=0.0)[:6]]) <= {0, 1, 2}


def test_top_ranks_are_uncertain():
    emb, u, group = groups()
    order = rank(u, emb, batch_size=6)
    assert order[0] == int(np.argmax(u))
    pool = np.argsort(-u, kind="stable")[: 5 * 6]
    assert set(order[:6]) <= set(pool)
    rest = order[6:]
    assert np.all(np.diff(u[rest]) <= 0)  # after the batch: by uncertainty


def test_several_batches_stay_diverse_and_respect_labeled_images():
    emb, u, group = groups()
    order = rank(u, emb, batch_size=4, n_batches=2)
    assert len(set(group[order[:8]])) == 8
    # groups 0 and 1 are labeled already: the batch goes elsewhere (the pool reaches beyond the
    # 24 uncertain images, so there is somewhere else to go)
    labeled = np.stack([emb[group == 0][0], emb[group == 1][0]])
    first = rank(u, emb, batch_size=4, pool_factor=8, labeled=labeled)[:4]
    assert group[first[0]] == 2 and not {0, 1} & set(group[first])
    assert {0, 1} & set(group[rank(u, emb, batch_size=4, pool_factor=8)[:4]])


def test_ranking_is_deterministic_and_priorities_follow_it():
    emb, u, _ = groups()
    a = rank(u, emb, batch_size=6)
    assert np.array_equal(a, rank(u.copy(), emb.copy(), batch_size=6))
    scores = priority_scores(u, emb, batch_size=6)
    assert np.array_equal(np.argsort(-scores, kind="stable"), a)
    assert scores.max() == 1.0 and scores.min() > 0 and len(np.unique(scores)) == len(u)


def test_ties_and_degenerate_inputs():
    emb = np.eye(4, dtype=np.float32)
    assert rank(np.zeros(4), emb, batch_size=2).tolist() == [0, 1, 2, 3]
    assert rank(np.zeros(0), np.zeros((0, 8)), batch_size=3).tolist() == []
    with pytest.raises(ValueError):
        rank(np.ones(3), emb, batch_size=2)
    with pytest.raises(ValueError):
        rank(np.ones(4), emb, batch_size=2, diversity=2.0)


# -- uncertainty from detections ------------------------------------------------------------------------
def d(boxes, labels, scores):
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), scores, labels)


def test_mirror_is_its_own_inverse():
    a = d([[10, 20, 30, 5]], ["benign"], [0.9])
    m = mirror(a, 100)
    assert m.boxes.tolist() == [[60, 20, 30, 5]]
    assert mirror(m, 100).boxes.tolist() == a.boxes.tolist()


def test_uncertainty_sums_the_doubtful_boxes_of_both_views():
    sure = d([[10, 10, 20, 20]], ["benign"], [0.99])
    maybe = d([[10, 10, 20, 20]], ["benign"], [0.5])
    assert entropy_sum(maybe) == pytest.approx(1.0)  # a box at 0.5 is one bit
    assert entropy_sum(d([], [], [])) == 0.0
    assert 0 < entropy_sum(sure) < 0.1
    two = d([[10, 10, 20, 20], [60, 60, 10, 10]], ["benign", "malignant"], [0.5, 0.5])
    assert entropy_sum(two) == pytest.approx(2.0)  # two doubts teach more than one
    assert detection_uncertainty(maybe, d([], [], [])) == pytest.approx(0.5)  # the views are averaged
    assert detection_uncertainty(d([], [], []), d([], [], [])) == 0.0
    assert detection_uncertainty(sure, sure) < detection_uncertainty(maybe, maybe) < detection_uncertainty(two, two)
