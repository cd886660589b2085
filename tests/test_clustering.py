"""clustering/: k-means, the uniform sampler, whitening, statistics and the DeepCluster loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from clustering.augment import BurnInPatch, training_transform
from clustering.deepcluster import DeepCluster, DeepClusterConfig
from clustering.embedding_map import umap_2d
from clustering.features import Whitening
from training.embeddings import FlatIndex, l2_normalize
from clustering.kmeans import kmeans, predict
from training.backbone import Backbone
from clustering.sampler import UniformClusterSampler
from clustering.stats import cluster_stats, nmi, weighted_purity


def blobs(n_per=50, k=4, d=16, seed=0, spread=0.05):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    x = np.concatenate([c + spread * rng.normal(size=(n_per, d)) for c in centres])
    return l2_normalize(x), np.repeat(np.arange(k), n_per)


# -- k-means ------------------------------------------------------------------------------------
def test_kmeans_recovers_separated_blobs():
    x, y = blobs()
    r = kmeans(x, 4, seed=1, nredo=5)  # one random start can merge two blobs; best of five cannot
    assert nmi(r.assignments, y) == pytest.approx(1.0)
    assert r.centroids.shape == (4, 16) and r.distances.shape == (200,)
    assert np.array_equal(predict(x, r.centroids)[0], r.assignments)


def test_kmeans_leaves_no_cluster_empty_even_with_duplicates():
    # 30 copies of two points: k-means alone must leave clusters empty; they get re-seeded.
    x = np.repeat(np.eye(2, 8, dtype=np.float32), 15, axis=0)
    r = kmeans(x, 5, seed=0)
    assert np.all(np.bincount(r.assignments, minlength=5) >= 1)


def test_kmeans_rejects_k_outside_range():
    with pytest.raises(ValueError, match="between 1 and"):
        kmeans(np.zeros((3, 2), np.float32), 4)


# -- the sampler --------------------------------------------------------------------------------
def test_sampler_is_uniform_over_clusters_not_over_images():
    # Heavily imbalanced clusters, members deliberately NOT sorted by cluster: the reference
    # sampler's bug (positions in a sorted list applied to the unsorted dataset) shows up here.
    rng = np.random.default_rng(0)
    assign = rng.permutation(np.repeat([0, 1, 2, 3], [2000, 300, 40, 5]))
    s = UniformClusterSampler(assign, 8000, seed=3)
    idx = s.indices()
    assert len(idx) == len(s) == 8000
    counts = np.bincount(assign[idx], minlength=4)
    assert chisquare(counts).pvalue > 0.01, counts
    assert counts.min() > 1900
    # Within a cluster every member can be drawn.
    assert set(idx[assign[idx] == 3]) == set(np.flatnonzero(assign == 3))


def test_sampler_changes_with_epoch_and_is_reproducible():
    assign = np.repeat([0, 1], [10, 90])
    a = UniformClusterSampler(assign, 100, seed=1)
    first = a.indices()
    a.set_epoch(1)
    assert not np.array_equal(first, a.indices())
    b = UniformClusterSampler(assign, 100, seed=1)
    assert np.array_equal(first, b.indices())


# -- features -----------------------------------------------------------------------------------
def test_whitening_gives_unit_rows_and_round_trips_its_state():
    x = np.random.default_rng(0).normal(size=(300, 40)) * np.linspace(0.1, 10, 40)
    w = Whitening.fit(x, dim=16)
    e = w.transform(x)
    assert e.shape == (300, 16)
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert np.allclose(Whitening(**w.state()).transform(x), e)
    assert Whitening.fit(x[:5], dim=256).components.shape[0] == 4  # never more dims than data allows


def test_backbone_width_and_sobel():
    b = Backbone("resnet18", width=8)
    assert b.out_dim == 64
    assert b(torch.rand(2, 1, 64, 64)).shape == (2, 64)
    # Sobel: a constant image has no edges, so brightness alone cannot separate two images.
    s = b.sobel(torch.full((1, 1, 16, 16), 0.7))
    assert s[..., 1:-1, 1:-1].abs().max() < 1e-6, "inner pixels of a flat image"
    with pytest.raises(ValueError, match="unknown arch"):
        Backbone("vgg16")


def test_augmentation_keeps_laterality_by_default():
    t = training_transform(32)
    assert not any("Flip" in type(s).__name__ for s in t.transforms)
    assert any("Flip" in type(s).__name__ for s in training_transform(32, hflip=True).transforms)
    torch.manual_seed(0)
    out = BurnInPatch(p=1.0)(torch.full((1, 32, 32), 0.5))
    assert ((out == 0) | (out == 1)).any() and (out == 0.5).any()


def test_quarter_turns_show_every_orientation_of_the_same_pixels():
    from clustering.augment import QuarterTurn

    torch.manual_seed(0)
    x = torch.arange(16.0).reshape(1, 4, 4)
    seen = {tuple(QuarterTurn()(x).flatten().tolist()) for _ in range(64)}
    assert seen == {tuple(torch.rot90(x, k, dims=(-2, -1)).flatten().tolist()) for k in range(4)}
    assert not any(isinstance(s, QuarterTurn) for s in training_transform(32).transforms)  # off by default
    turned = training_transform(32, quarter_turns=True, crop_scale=0.3, rotation=0)
    assert any(isinstance(s, QuarterTurn) for s in turned.transforms)
    assert turned.transforms[0].scale == (0.3, 1.0)


# -- statistics ---------------------------------------------------------------------------------
def test_purity_and_stats():
    truth = np.array(["knee"] * 6 + ["hand"] * 4)
    assign = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    assert weighted_purity(assign, truth) == pytest.approx(0.9)
    x, _ = blobs(n_per=5, k=2, d=4)
    r = kmeans(x, 2, seed=0)
    st = cluster_stats(x, r.assignments, r.centroids, truth=np.repeat(["a", "b"], 5), n_representatives=3, n_outliers=2)
    assert [s["size"] for s in st] == [5, 5]
    for s in st:
        rows = set(np.flatnonzero(r.assignments == s["index"]))
        assert set(s["representatives"]) <= rows and set(s["outliers"]) <= rows
        assert s["purity"] == 1.0 and 0 <= s["uncertainty"] < 0.5
        d = np.sum((x - r.centroids[s["index"]]) ** 2, axis=1)
        assert d[s["representatives"][0]] <= d[s["outliers"][0]]


def test_umap_map_and_neighbours():
    x, y = blobs(n_per=30, k=3)
    m = umap_2d(x, seed=0)
    assert m.shape == (90, 2) and m.min() >= 0 and m.max() <= 1
    assert umap_2d(x[:2]).shape == (2, 2)
    sims, rows = FlatIndex(x, inner_product=True).search(x[:3], k=5)  # cosine on L2-normalised rows
    assert list(rows[:, 0]) == [0, 1, 2] and np.all(y[rows] == y[:3, None])


# -- DeepCluster --------------------------------------------------------------------------------
def shapes_dataset(n_per=24, size=32, seed=0):
    """Three shape classes drawn at random places and scales, on noisy backgrounds."""
    import cv2

    rng = np.random.default_rng(seed)
    imgs, ys = [], []
    for cls in range(3):
        for _ in range(n_per):
            img = rng.uniform(0, 0.15, (size, size)).astype(np.float32)
            c = rng.integers(10, size - 10, 2)
            r = int(rng.integers(5, 9))
            if cls == 0:
                cv2.circle(img, (int(c[0]), int(c[1])), r, 1.0, -1)
            elif cls == 1:
                cv2.rectangle(img, (int(c[0] - r), int(c[1] - 2)), (int(c[0] + r), int(c[1] + 2)), 1.0, -1)
            else:
                cv2.rectangle(img, (int(c[0] - 2), int(c[1] - r)), (int(c[0] + 2), int(c[1] + r)), 1.0, -1)
            imgs.append(img)
            ys.append(cls)
    return np.stack(imgs), np.array(ys)


TINY = DeepClusterConfig(k=6, epochs=3, width=8, pca_dim=8, batch_size=16, lr=0.1, epoch_samples=256, seed=0)


@pytest.mark.slow
def test_deepcluster_fits_logs_and_embeds(tmp_path):
    images, y = shapes_dataset()
    dc = DeepCluster(TINY, epochs=5).fit(images, truth=y)
    assert len(dc.history_) == 5
    assert dc.history_[0].nmi_prev is None and all(0 <= h.nmi_prev <= 1 for h in dc.history_[1:])
    assert all(np.isfinite(h.loss) and h.loss > 0 for h in dc.history_)
    assert "nmi_truth" in dc.history_[0].extra
    assert dc.labels_.shape == (len(images),) and len(np.unique(dc.labels_)) == 6
    assert np.allclose(np.linalg.norm(dc.embeddings_, axis=1), 1, atol=1e-4)
    losses = [h.loss for h in dc.history_]
    assert min(losses[-2:]) < losses[0] - 0.1, f"the network learns its pseudo-labels: {losses}"
    assert weighted_purity(dc.labels_, y) > 0.5  # chance is 1/3; quality is measured by bench/
    path = dc.save(tmp_path / "dc.pt")
    again = DeepCluster.load(path)
    assert np.allclose(again.transform(images), dc.embeddings_, atol=1e-4)
    assert np.array_equal(again.predict(images), predict(dc.embeddings_, dc.centroids_)[0])


@pytest.mark.slow
def test_deepcluster_resumes_from_its_last_checkpoint(tmp_path):
    images, _ = shapes_dataset(n_per=12)
    full = DeepCluster(TINY).fit(images, checkpoint_dir=tmp_path / "a")

    # "Kill" the same run when epoch 2 starts, after epochs 0 and 1 were checkpointed.
    class Killed(Exception):
        pass

    def die_at_epoch_2(epoch, epochs, message):
        if epoch == 2:
            raise Killed()

    with pytest.raises(Killed):
        DeepCluster(TINY).fit(images, checkpoint_dir=tmp_path / "b", progress=die_at_epoch_2)
    epochs_seen = []
    resumed = DeepCluster(TINY).fit(images, checkpoint_dir=tmp_path / "b",
                                    progress=lambda e, n, m: epochs_seen.append(e))
    assert min(epochs_seen) == 2, "epochs 0 and 1 came from the checkpoint"
    assert [h.epoch for h in resumed.history_] == [0, 1, 2]
    assert [h.loss for h in resumed.history_[:2]] == [h.loss for h in full.history_[:2]]
    assert np.allclose(resumed.history_[2].loss, full.history_[2].loss, rtol=0.05)


def test_deepcluster_refuses_a_foreign_checkpoint_and_too_large_k(tmp_path):
    images, _ = shapes_dataset(n_per=4)
    DeepCluster(TINY, epochs=1).fit(images, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="another run"):
        DeepCluster(TINY, epochs=1, k=5).fit(images, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="larger than the number of images"):
        DeepCluster(TINY, k=100).fit(images)


def test_learning_rate_schedules():
    cos = DeepCluster(TINY, epochs=10)
    rates = [cos._lr(e) for e in range(10)]
    assert rates[0] == pytest.approx(TINY.lr) and all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[-1] >= 0.1 * TINY.lr
    assert DeepCluster(TINY, lr_schedule="constant")._lr(7) == TINY.lr
    with pytest.raises(ValueError, match="lr_schedule"):
        DeepCluster(TINY, lr_schedule="step")
