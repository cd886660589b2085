"""Read-side queries of the web pages, each a fixed small number of statements.

The overview of 1,000 clusters must render in well under a second (``bench/overview.py``
measures it), so nothing here runs a query per cluster: one query for the cards (clusters
joined to their label names) and one grouped query for the summary."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.database.schema import (HIDDEN_CLUSTER_STATUSES, Cluster, ClusterMembership, ClusterRun, ClusterStatus, Image, Label,
                                     LabelKind, ModelVersion, User, WeakLabel)

HIDDEN = HIDDEN_CLUSTER_STATUSES  # history, not cards
SORTS = ("unnamed", "size", "uncertainty", "index")


@dataclass
class Card:
    id: int
    index: int
    status: ClusterStatus
    label: str | None
    size: int
    version: int
    uncertainty: float | None


def latest_run_id(s: Session) -> int | None:
    return s.scalar(select(ClusterRun.id).order_by(ClusterRun.created_at.desc(), ClusterRun.id.desc()).limit(1))


def overview_cards(s: Session, run_id: int, sort: str = "unnamed") -> list[Card]:
    rows = s.execute(
        select(Cluster.id, Cluster.index, Cluster.status, Label.name, Cluster.size, Cluster.version, Cluster.stats)
        .outerjoin(Label, Label.id == Cluster.label_id)
        .where(Cluster.run_id == run_id, Cluster.status.not_in(HIDDEN)))
    cards = []
    for cid, index, status, label, size, version, stats in rows:
        unc = (stats or {}).get("uncertainty")
        cards.append(Card(cid, index, status, label, size, version, float(unc) if unc is not None else None))
    return sort_cards(cards, sort)


def sort_cards(cards: list[Card], sort: str) -> list[Card]:
    """In place, and returned: the order of the overview for one of :data:`SORTS`."""
    if sort == "size":
        cards.sort(key=lambda c: (-c.size, c.index))
    elif sort == "uncertainty":  # most mixed first; clusters without a score last
        cards.sort(key=lambda c: (c.uncertainty is None, -(c.uncertainty or 0.0), c.index))
    elif sort == "index":
        cards.sort(key=lambda c: c.index)
    else:  # unnamed first, biggest first: the most labels per click
        cards.sort(key=lambda c: (c.status != ClusterStatus.open, -c.size, c.index))
    return cards


def run_summary(s: Session, run_id: int) -> dict[str, Any]:
    """Clusters and images per status, in one grouped query."""
    by_status = {status: (n, images or 0) for status, n, images in s.execute(
        select(Cluster.status, func.count(), func.sum(Cluster.size))
        .where(Cluster.run_id == run_id).group_by(Cluster.status))}
    visible = {k: v for k, v in by_status.items() if k not in HIDDEN}
    return {"clusters": sum(n for n, _ in visible.values()),
            "images": sum(i for _, i in visible.values()),
            "by_status": {k: {"clusters": n, "images": i} for k, (n, i) in sorted(visible.items())}}


@dataclass
class Member:
    image_id: int
    distance: float | None
    label: str | None
    label_source: str | None
    has_label: bool


def cluster_members(s: Session, cluster_id: int, page: int, per_page: int) -> tuple[list[Member], int]:
    """One page of members (nearest the centre first) with each image's current label."""
    total = s.scalar(select(func.count()).select_from(ClusterMembership)
                     .where(ClusterMembership.cluster_id == cluster_id)) or 0
    rows = s.execute(
        select(ClusterMembership.image_id, ClusterMembership.distance, Label.name, WeakLabel.source, WeakLabel.id)
        .outerjoin(WeakLabel, and_(WeakLabel.image_id == ClusterMembership.image_id, WeakLabel.superseded_at.is_(None)))
        .outerjoin(Label, Label.id == WeakLabel.label_id)
        .where(ClusterMembership.cluster_id == cluster_id)
        .order_by(ClusterMembership.distance.asc().nulls_last(), ClusterMembership.image_id)
        .offset(page * per_page).limit(per_page))
    members = [Member(img, dist, name, getattr(src, "value", src), wid is not None)
               for img, dist, name, src, wid in rows]
    return members, total


def run_clusters(s: Session, run_id: int, exclude: int | None = None) -> list[dict]:
    """Active clusters of the run for the merge picker (id, index, name, size, version)."""
    rows = s.execute(select(Cluster.id, Cluster.index, Cluster.status, Label.name, Cluster.size, Cluster.version)
                     .outerjoin(Label, Label.id == Cluster.label_id)
                     .where(Cluster.run_id == run_id, Cluster.status.not_in(HIDDEN))
                     .order_by(Cluster.index))
    return [{"id": cid, "index": index, "status": status, "label": name, "size": size, "version": version}
            for cid, index, status, name, size, version in rows if cid != exclude]


def children_of(s: Session, cluster_id: int) -> list[dict]:
    rows = s.execute(select(Cluster.id, Cluster.index, Cluster.status, Label.name, Cluster.size)
                     .outerjoin(Label, Label.id == Cluster.label_id)
                     .where(Cluster.parent_id == cluster_id, Cluster.status != ClusterStatus.merged).order_by(Cluster.index))
    return [{"id": cid, "index": index, "status": status, "label": name, "size": size}
            for cid, index, status, name, size in rows]


def region_labels(s: Session, active_only: bool = True) -> list[Label]:
    q = select(Label).where(Label.kind == LabelKind.region)
    if active_only:
        q = q.where(Label.is_active.is_(True))
    return list(s.scalars(q.order_by(Label.sort_order, Label.name)))


def umap_points(settings: Settings, s: Session, run_id: int) -> dict[str, Any]:
    """The run's 2-D map, compact: coordinates scaled to integers 0..4095, the position of each
    point's CURRENT cluster in ``clusters`` (merges and splits recolour the map), image ids."""
    from backend.clusters.arrays import run_dir

    with np.load(run_dir(settings, run_id) / "arrays.npz") as z:  # only these two members are read
        image_ids, xy = z["image_ids"], z["umap"].astype(np.float64)
    current = dict(s.execute(select(ClusterMembership.image_id, ClusterMembership.cluster_id)
                             .where(ClusterMembership.run_id == run_id)).all())
    clusters = s.execute(select(Cluster.id, Cluster.index, Cluster.status, Label.name)
                         .outerjoin(Label, Label.id == Cluster.label_id)
                         .where(Cluster.run_id == run_id, Cluster.status.not_in(HIDDEN)).order_by(Cluster.index)).all()
    pos = {cid: i for i, (cid, *_rest) in enumerate(clusters)}
    if len(xy):
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        scaled = np.rint((xy - lo) / np.maximum(hi - lo, 1e-12) * 4095).astype(np.int64)
    else:
        scaled = np.zeros((0, 2), np.int64)
    return {
        "run_id": run_id,
        "n": int(len(image_ids)),
        "x": scaled[:, 0].tolist(),
        "y": scaled[:, 1].tolist(),
        "c": [pos.get(current.get(int(i)), -1) for i in image_ids.tolist()],
        "ids": image_ids.tolist(),
        "clusters": [[cid, index, status, name] for cid, index, status, name in clusters],
    }


def image_provenance(s: Session, image_id: int) -> list[dict]:
    """Every weak label the image ever had, newest first: what, from where (for an accepted
    prediction: which sorter version, how confident), by whom, when."""
    rows = s.execute(select(WeakLabel, Label.name, User.username, ModelVersion.version)
                     .outerjoin(Label, Label.id == WeakLabel.label_id)
                     .outerjoin(User, User.id == WeakLabel.user_id)
                     .outerjoin(ModelVersion, ModelVersion.id == WeakLabel.model_version_id)
                     .where(WeakLabel.image_id == image_id).order_by(WeakLabel.id.desc()))
    return [{"label": name if w.label_id is not None else "discarded (non-MSK)", "source": getattr(w.source, "value", w.source),
             "user": username, "decision_id": w.decision_id, "created_at": w.created_at,
             "superseded_at": w.superseded_at, "current": w.superseded_at is None,
             "model_version": version, "confidence": w.confidence}
            for w, name, username, version in rows]


def image_clusters(s: Session, image_id: int) -> list[dict]:
    rows = s.execute(select(ClusterMembership.run_id, Cluster.id, Cluster.index, Cluster.status, Label.name)
                     .join(Cluster, Cluster.id == ClusterMembership.cluster_id)
                     .outerjoin(Label, Label.id == Cluster.label_id)
                     .where(ClusterMembership.image_id == image_id).order_by(ClusterMembership.run_id.desc()))
    return [{"run_id": r, "id": cid, "index": index, "status": status, "label": name} for r, cid, index, status, name in rows]


def get_image(s: Session, image_id: int) -> Image | None:
    return s.get(Image, image_id)
