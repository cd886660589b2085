"""The "cluster" job: DeepCluster over every imported radiograph, stored as a ClusterRun.

Resumable: the run row and its checkpoint folder are created first, so a retried job (after a
worker died) continues from the last finished epoch instead of starting over."""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict

import numpy as np
from sqlalchemy import select

from backend.config import Settings
from backend.database import model_versions as model_store
from backend.jobs.context import JobContext, JobFailed
from backend.jobs.params import ClusterParams, ClusterResult
from backend.database.schema import (Cluster, ClusterMembership, ClusterRun, ClusterRunStatus, Image, ImageStatus, Label,
                                     ModelKind, ModelStatus, ModelVersion, WeakLabel)
from backend.clusters.arrays import RunArrays, run_dir, save_arrays
from backend.images.tensors import load_tensors
from clustering.deepcluster import DeepCluster, DeepClusterConfig
from clustering.embedding_map import umap_2d
from clustering.stats import cluster_stats, nmi, weighted_purity
from training import distributed

#: What a run does where its parameters name nothing (k: default_k).
DEFAULTS = ClusterParams(size=64, method="fhe")


def default_k(n_images: int) -> int:
    """About 40 images a cluster (SAM-X: 42,608 images, 1000 clusters), at most 1000, and at
    least 10 (or one per image): too few clusters mix regions, and merging is one decision."""
    return int(min(1000, max(min(10, n_images), round(n_images / 40))))


def cluster_config(overrides: dict, n_images: int) -> DeepClusterConfig:
    """``overrides``: DeepClusterConfig fields (ClusterParams.config; None: the default)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    given.setdefault("k", default_k(n_images))
    if not 2 <= int(given["k"]) <= n_images:
        raise JobFailed(f"k={given['k']} needs at least that many images; there are {n_images}")
    return DeepClusterConfig(**given)


def _start_run(ctx: JobContext, config: DeepClusterConfig, size: int, method: str) -> int:
    """The job's run: the one a previous attempt of this job started, or a new one."""
    with ctx.db.session() as s:
        run = s.scalar(select(ClusterRun).where(ClusterRun.job_id == ctx.job_id, ClusterRun.status == ClusterRunStatus.running))
        if run is None:
            run = ClusterRun(k=config.k, status=ClusterRunStatus.running, job_id=ctx.job_id,
                             params={**asdict(config), "size": size, "method": method})
            s.add(run)
            s.flush()
        return run.id


def run_cluster_job(ctx: JobContext) -> dict:
    settings: Settings = ctx.settings
    p = ClusterParams.from_json(ctx.params).over(DEFAULTS)
    size, method, workers = int(p.size), p.method, p.workers
    with ctx.db.session() as s:
        rows = s.execute(select(Image.id, Image.content_hash, Image.store_path)
                         .where(Image.status == ImageStatus.imported, Image.store_path.is_not(None))
                         .order_by(Image.id)).all()
    if len(rows) < 2:
        raise JobFailed(f"clustering needs at least 2 imported images; there are {len(rows)}")
    config = cluster_config(p.config, len(rows))
    run_id = _start_run(ctx, config, size, method)
    t0 = time.perf_counter()

    # Progress: 10% preparing images, 80% training, 10% map + statistics.
    images = load_tensors(settings, [(r.content_hash, r.store_path) for r in rows], size=size, method=method,
                          workers=workers,
                          progress=lambda d, n: ctx.progress(int(10 * d / n), 100, f"preparing images {d}/{n}"))
    image_ids = np.array([r.id for r in rows], dtype=np.int64)

    def on_epoch(epoch: int, epochs: int, message: str) -> None:
        ctx.progress(10 + int(80 * epoch / max(epochs, 1)), 100, message)

    model = DeepCluster(config).fit(images, checkpoint_dir=run_dir(settings, run_id) / "checkpoint", progress=on_epoch)
    ctx.progress(90, 100, "drawing the map", force=True)
    umap = umap_2d(model.embeddings_, seed=config.seed)
    known = _known_labels(ctx, image_ids)
    stats = cluster_stats(model.embeddings_, model.labels_, model.centroids_, truth=known)
    save_arrays(settings, run_id, RunArrays(image_ids, model.embeddings_, umap, model.labels_, model.centroids_))
    metrics = _metrics(model, known)
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    _store(ctx, run_id, model, image_ids, stats, metrics, settings)
    ctx.progress(100, 100, "done", force=True)
    return ClusterResult(run_id=run_id, images=len(rows), k=config.k, processes=distributed.world_size(),
                         **{k: v for k, v in metrics.items() if k != "history"}).to_json()


def _known_labels(ctx: JobContext, image_ids: np.ndarray) -> np.ndarray | None:
    """Current weak labels as strings ("" where unknown), when any exist: cluster purity against them."""
    with ctx.db.session() as s:
        pairs = dict(s.execute(select(WeakLabel.image_id, Label.name).join(Label, Label.id == WeakLabel.label_id)
                               .where(WeakLabel.superseded_at.is_(None))).all())
    if not pairs:
        return None
    return np.array([pairs.get(int(i), "") for i in image_ids])


def _metrics(model: DeepCluster, known: np.ndarray | None) -> dict:
    hist = [asdict(h) for h in model.history_]
    out = {"history": hist, "nmi_consecutive": hist[-1]["nmi_prev"] if hist else None,
           "final_loss": hist[-1]["loss"] if hist else None}
    if known is not None:
        has = known != ""
        out["labelled_images"] = int(has.sum())
        if has.any():
            out["purity_vs_labels"] = weighted_purity(model.labels_[has], known[has])
            out["nmi_vs_labels"] = nmi(model.labels_[has], known[has])
    return out


def _store(ctx: JobContext, run_id: int, model: DeepCluster, image_ids: np.ndarray, stats: list[dict],
           metrics: dict, settings: Settings) -> None:
    version = hashlib.sha1(f"{run_id}:{ctx.job_id}:{time.time_ns()}".encode()).hexdigest()[:12]
    path = settings.models_dir / ModelKind.deepcluster / f"{version}.pt"
    model.save(path)
    with ctx.db.session() as s:
        mv = ModelVersion(kind=ModelKind.deepcluster, version=version, status=ModelStatus.ready,
                          path=str(path.relative_to(settings.data_dir)), config=ctx.params,
                          metrics={**{k: v for k, v in metrics.items() if k != "history"},
                                   "backbone": model_store.lineage(model.config.weights, model.init_report_)},
                          job_id=ctx.job_id)
        s.add(mv)
        s.flush()
        clusters = []
        for st in stats:
            st = dict(st)
            for key in ("representatives", "outliers"):
                st[key] = [int(image_ids[r]) for r in st[key]]
            clusters.append(Cluster(run_id=run_id, index=st.pop("index"), size=st["size"], stats=st))
        s.add_all(clusters)
        s.flush()
        cluster_id = {c.index: c.id for c in clusters}
        s.execute(ClusterMembership.__table__.insert(), [
            {"run_id": run_id, "cluster_id": cluster_id[int(c)], "image_id": int(i), "distance": float(d)}
            for i, c, d in zip(image_ids, model.labels_, model.distances_)])
        run = s.get(ClusterRun, run_id)
        run.status, run.metrics, run.model_version_id = ClusterRunStatus.done, metrics, mv.id
