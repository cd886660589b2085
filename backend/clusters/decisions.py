"""The decision service: what a radiologist's action on the cluster page does to the database.

Plain functions over a SQLAlchemy ``Session`` (no Flask), so the web app, the CLI and the tests
share one implementation. Every decision

- checks the cluster ``version`` the client saw and bumps the version of every cluster it
  touches, so a second radiologist acting on an out-of-date page gets a :class:`Conflict`
  (naming who changed the cluster and when) instead of silently overwriting the first decision;
- writes one ``ClusterDecision`` whose ``payload`` records exactly what changed (weak labels
  superseded and created, memberships moved, the clusters' state before), so :func:`undo_last`
  restores the previous state without guessing;
- never overwrites a ``WeakLabel``: a new label supersedes the current one (history and
  provenance survive every correction). Cluster-level decisions leave images whose current label
  came from a manual move alone: a radiologist's judgement on one image beats one on its cluster.

What a decision records is typed in :mod:`backend.clusters.payloads`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

import numpy as np
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from backend.database.schema import (
    DECIDABLE_CLUSTER_STATUSES,
    Cluster,
    ClusterDecision,
    ClusterMembership,
    ClusterStatus,
    DecisionAction,
    Label,
    LabelKind,
    LabelSource,
    Role,
    User,
    WeakLabel,
    utcnow,
)

from backend.clusters.payloads import (
    ClusterState,
    LabelChange,
    LabelPayload,
    MergePayload,
    MovedMembership,
    MovePayload,
    SplitPayload,
    UndoPayload,
    payload_of,
)

log = logging.getLogger("samx.decisions")

DECIDING_ROLES = (Role.admin, Role.radiologist)
#: Largest IN (...) list sent in one statement (SQLite and psycopg cap bound parameters).
CHUNK = 5000
MAX_SPLIT_K = 50


class DecisionError(Exception):
    """A request that cannot be carried out as asked; ``status`` is the HTTP code to answer."""

    status = 400


class NotFound(DecisionError):
    status = 404


class Forbidden(DecisionError):
    status = 403


class Conflict(DecisionError):
    """Someone else changed the cluster since the client loaded it; their decision stands."""

    status = 409


@dataclass(frozen=True)
class Actor:
    """Who decides: anything with ``id``, ``username`` and ``role`` works (ORM row, web user)."""

    id: int
    username: str
    role: Role

    @classmethod
    def of(cls, user: Any) -> "Actor":
        return cls(int(user.id), str(user.username), Role(user.role))


# --------------------------------------------------------------------------------------------
# small helpers


def _chunks(seq: Sequence, n: int = CHUNK) -> Iterable[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _require_decider(user: Actor) -> None:
    if user.role not in DECIDING_ROLES:
        raise Forbidden(f"{user.username} is a {user.role.value}; only radiologists and admins decide on clusters")


def _load_cluster(s: Session, cluster_id: Any) -> Cluster:
    try:
        cid = int(cluster_id)
    except (TypeError, ValueError):
        raise DecisionError(f"cluster id must be an integer, got {cluster_id!r}") from None
    cluster = s.get(Cluster, cid)
    if cluster is None:
        raise NotFound(f"there is no cluster {cid}")
    return cluster


def _require_active(s: Session, c: Cluster) -> None:
    if c.status == ClusterStatus.merged:
        into = s.get(Cluster, (c.stats or {}).get("merged_into") or -1)
        where = f"cluster #{into.index}" if into else "another cluster"
        raise DecisionError(f"cluster #{c.index} was merged into {where}; act on that one (or undo the merge there)")
    if c.status == ClusterStatus.split:
        raise DecisionError(f"cluster #{c.index} was split into sub-clusters; act on those (or undo the split here)")
    if c.status not in DECIDABLE_CLUSTER_STATUSES:
        raise DecisionError(f"cluster #{c.index} has status {c.status!r}; nothing can be decided on it")


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DecisionError(f"{what} must be an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise DecisionError(f"{what} must be an integer, got {value!r}") from None


def _check_version(s: Session, c: Cluster, seen: Any, page_id: int | None = None) -> None:
    """``seen`` is the version the client rendered; None skips the check (CLI, scripts)."""
    if seen is None:
        return
    if _as_int(seen, "version") != c.version:
        raise Conflict(conflict_message(s, [c.id], page_id))


def _open_for_decision(s: Session, user: Any, cluster_id: Any, version: Any) -> tuple[Actor, Cluster]:
    """Who may decide, on which live cluster, seen at which version: every decision starts here."""
    user = Actor.of(user)
    _require_decider(user)
    c = _load_cluster(s, cluster_id)
    _require_active(s, c)
    _check_version(s, c, version)
    return user, c


def _region_label(s: Session, label_id: Any) -> Label:
    lid = _as_int(label_id, "label_id")
    label = s.get(Label, lid)
    if label is None or label.kind != LabelKind.region:
        raise DecisionError(f"label {lid} is not a region label of the vocabulary")
    if not label.is_active:
        raise DecisionError(f"label {label.name!r} has been retired from the vocabulary; choose an active one")
    return label


def _new_decision(s: Session, c: Cluster, user: Actor, action: DecisionAction,
                  label_id: int | None = None) -> ClusterDecision:
    d = ClusterDecision(cluster_id=c.id, user_id=user.id, action=action, label_id=label_id, payload={},
                        created_at=utcnow())
    s.add(d)
    s.flush()  # the id is needed by the weak labels and by the clusters' last_decision_id
    return d


def _touch(s: Session, clusters: Iterable[Cluster], d: ClusterDecision) -> None:
    """Record the decision on every involved cluster and flush at once.

    Writing ``stats`` guarantees an UPDATE, hence a version bump, even when nothing else about
    the cluster changed (moves, merge sources). The UPDATE carries ``WHERE version = <read>``:
    a concurrent decision that committed first makes it match no row and SQLAlchemy raises
    StaleDataError here, before any label is written. Sorted by id: no deadlocks on PostgreSQL."""
    for c in sorted(clusters, key=lambda c: c.id):
        c.stats = {**(c.stats or {}), "last_decision_id": d.id}
    s.flush()


def _member_ids(s: Session, cluster_id: int) -> list[int]:
    return list(s.scalars(select(ClusterMembership.image_id).where(ClusterMembership.cluster_id == cluster_id)
                          .order_by(ClusterMembership.image_id)))


def _current_labels(s: Session, image_ids: Sequence[int]) -> dict[int, tuple[int, LabelSource, int | None]]:
    """image_id -> (weak label id, source, label_id) of its current label."""
    out: dict[int, tuple[int, LabelSource, int | None]] = {}
    for chunk in _chunks(list(image_ids)):
        rows = s.execute(select(WeakLabel.image_id, WeakLabel.id, WeakLabel.source, WeakLabel.label_id)
                         .where(WeakLabel.superseded_at.is_(None), WeakLabel.image_id.in_(chunk)))
        for image_id, wid, source, label_id in rows:
            out[image_id] = (wid, LabelSource(source), label_id)
    return out


def _set_superseded(s: Session, label_ids: Sequence[int], when: datetime | None) -> int:
    """Supersede (``when``) or reinstate (None) weak labels; returns rows changed."""
    changed = 0
    for chunk in _chunks(list(label_ids)):
        cond = WeakLabel.superseded_at.is_(None) if when is not None else WeakLabel.superseded_at.is_not(None)
        changed += s.execute(update(WeakLabel).where(WeakLabel.id.in_(chunk), cond).values(superseded_at=when)
                             .execution_options(synchronize_session=False)).rowcount
    return changed


def _relabel(s: Session, d: ClusterDecision, user: Actor, image_ids: Sequence[int], label_id: int | None, *,
             source: LabelSource, create: bool = True, keep_manual: bool = True) -> tuple[list[LabelChange], int]:
    """Give ``image_ids`` a new current weak label (or, ``create=False``, none at all).

    Returns (the label changes, number of manual labels kept)."""
    now = utcnow()
    current = _current_labels(s, image_ids)
    targets: list[tuple[int, int | None]] = []
    kept = 0
    for img in image_ids:
        cur = current.get(img)
        if keep_manual and cur is not None and cur[1] == LabelSource.manual:
            kept += 1
            continue
        targets.append((img, cur[0] if cur else None))
    old = [o for _, o in targets if o is not None]
    if _set_superseded(s, old, now) != len(old):
        raise Conflict("the labels of some of these images were changed by someone else at the same moment "
                       "— reload to see them")
    created: dict[int, int] = {}
    if create and targets:
        rows = [{"image_id": img, "label_id": label_id, "source": source, "decision_id": d.id,
                 "user_id": user.id, "created_at": now} for img, _ in targets]
        for chunk in _chunks(rows):
            result = s.execute(insert(WeakLabel).returning(WeakLabel.image_id, WeakLabel.id,
                                                           sort_by_parameter_order=True), list(chunk))
            created.update({img: wid for img, wid in result})
    return [LabelChange(img, o, created.get(img)) for img, o in targets], kept


def cluster_state(s: Session, c: Cluster) -> dict:
    """What the page needs to show a cluster after a decision (and the version to send next)."""
    return {"id": c.id, "index": c.index, "run_id": c.run_id, "status": c.status, "label_id": c.label_id,
            "label": c.label.name if c.label else None, "size": c.size, "version": c.version}


def _result(s: Session, d: ClusterDecision, c: Cluster, message: str, **extra) -> dict:
    return {"decision_id": d.id, "action": d.action, "cluster": cluster_state(s, c), "message": message, **extra}


def _labelled_note(entries: list[LabelChange], kept: int) -> str:
    n = sum(1 for e in entries if e.new_weak_label_id is not None)
    note = f"{n} image{'s' if n != 1 else ''} labelled"
    if kept:
        note += f", {kept} manual label{'s' if kept != 1 else ''} kept"
    return note


# --------------------------------------------------------------------------------------------
# the decisions


def name_cluster(s: Session, user: Any, cluster_id: Any, *, label_id: Any, version: Any = None) -> dict:
    """Name a cluster with a region of the active vocabulary: every member gets that label."""
    user, c = _open_for_decision(s, user, cluster_id, version)
    label = _region_label(s, label_id)
    d = _new_decision(s, c, user, DecisionAction.name, label.id)
    before = {c.id: ClusterState.of(c)}
    c.status, c.label = ClusterStatus.named, label
    _touch(s, [c], d)
    entries, kept = _relabel(s, d, user, _member_ids(s, c.id), label.id, source=LabelSource.cluster)
    d.payload = LabelPayload(before, entries, kept_manual=kept).to_json()
    s.flush()
    return _result(s, d, c, f"Named cluster #{c.index} '{label.name}': {_labelled_note(entries, kept)}.")


def discard_cluster(s: Session, user: Any, cluster_id: Any, *, version: Any = None) -> dict:
    """Non-MSK (mammography, barium swallow, ...): members get a label with label_id None."""
    user, c = _open_for_decision(s, user, cluster_id, version)
    d = _new_decision(s, c, user, DecisionAction.discard)
    before = {c.id: ClusterState.of(c)}
    c.status, c.label = ClusterStatus.discarded, None
    _touch(s, [c], d)
    entries, kept = _relabel(s, d, user, _member_ids(s, c.id), None, source=LabelSource.cluster)
    d.payload = LabelPayload(before, entries, kept_manual=kept).to_json()
    s.flush()
    return _result(s, d, c, f"Discarded cluster #{c.index} as non-MSK: {_labelled_note(entries, kept).replace('labelled', 'discarded')}.")


def merge_clusters(s: Session, user: Any, cluster_id: Any, *, sources: Any, version: Any = None,
                   source_versions: dict | None = None) -> dict:
    """Merge ``sources`` into ``cluster_id`` (the survivor keeps its status and name).

    Sources become ``merged`` (``stats["merged_into"]``), their memberships move to the
    survivor. If the survivor is named or discarded, the moved images get its label (manual
    labels kept); into an open survivor they keep their labels until it is named."""
    user, target = _open_for_decision(s, user, cluster_id, version)
    if not isinstance(sources, list) or not sources:
        raise DecisionError("choose at least one other cluster to merge into this one")
    ids = sorted({_as_int(x, "cluster id") for x in sources})
    if target.id in ids:
        raise DecisionError("a cluster cannot be merged with itself")
    found = {c.id: c for c in s.scalars(select(Cluster).where(Cluster.id.in_(ids)))}
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFound(f"there is no cluster {missing[0]}")
    seen = {str(k): v for k, v in (source_versions or {}).items()}
    for src in found.values():
        if src.run_id != target.run_id:
            raise DecisionError(f"cluster {src.id} belongs to run {src.run_id}, not run {target.run_id}: "
                                "merges stay within one clustering run")
        _require_active(s, src)
        _check_version(s, src, seen.get(str(src.id)), target.id)
    srcs = [found[i] for i in ids]
    d = _new_decision(s, target, user, DecisionAction.merge, target.label_id)
    before = {c.id: ClusterState.of(c) for c in [target, *srcs]}
    moved = {src.id: _member_ids(s, src.id) for src in srcs}
    n_moved = sum(len(v) for v in moved.values())
    target.size = target.size + n_moved
    for src in srcs:
        src.status, src.size = ClusterStatus.merged, 0
        src.stats = {**(src.stats or {}), "merged_into": target.id}
    _touch(s, [target, *srcs], d)
    s.execute(update(ClusterMembership).where(ClusterMembership.cluster_id.in_(ids))
              .values(cluster_id=target.id).execution_options(synchronize_session=False))
    entries: list[LabelChange] = []
    kept = 0
    if target.status in (ClusterStatus.named, ClusterStatus.discarded):
        images = sorted(i for v in moved.values() for i in v)
        entries, kept = _relabel(s, d, user, images, target.label_id, source=LabelSource.cluster)
    d.payload = MergePayload(before, entries, kept_manual=kept, moved=moved, sources=ids).to_json()
    s.flush()
    names = ", ".join(f"#{c.index}" for c in srcs)
    note = f"; {_labelled_note(entries, kept)}" if target.status != ClusterStatus.open else ""
    return _result(s, d, target, f"Merged {names} into cluster #{target.index} ({n_moved} images moved{note}).")


def split_cluster(s: Session, user: Any, cluster_id: Any, *, k: Any, settings, version: Any = None,
                  seed: int | None = None) -> dict:
    """Re-cluster the members' embeddings (from the run's arrays) into ``k`` open sub-clusters.

    Children are new rows with ``parent_id`` = this cluster and the next free indices of the run;
    the parent becomes ``split`` with size 0. Weak labels are left as they are: the children
    are named (or not) one by one."""
    from backend.clusters.arrays import load_arrays
    from clustering.kmeans import kmeans
    from clustering.stats import cluster_stats

    user, c = _open_for_decision(s, user, cluster_id, version)
    k = _as_int(k, "k")
    members = s.execute(select(ClusterMembership.id, ClusterMembership.image_id, ClusterMembership.distance)
                        .where(ClusterMembership.cluster_id == c.id).order_by(ClusterMembership.image_id)).all()
    n = len(members)
    if k < 2:
        raise DecisionError(f"k must be at least 2 to split, got {k}")
    if k > n:
        raise DecisionError(f"cannot split {n} images into {k} sub-clusters: k must be at most the cluster size")
    if k > MAX_SPLIT_K:
        raise DecisionError(f"k must be at most {MAX_SPLIT_K}")
    try:
        arrays = load_arrays(settings, c.run_id)
        rows = arrays.rows_of([m.image_id for m in members])
    except FileNotFoundError:
        raise DecisionError(f"the embeddings of run {c.run_id} are missing on disk; cannot split") from None
    except KeyError as exc:
        raise DecisionError(f"image {exc.args[0]} has no embedding in run {c.run_id}; cannot split") from None
    x = arrays.embeddings[rows]
    result = kmeans(x, k, seed=c.id if seed is None else seed)
    stats = cluster_stats(x, result.assignments, result.centroids)
    ids = np.array([m.image_id for m in members], dtype=np.int64)

    next_index = (s.scalar(select(func.max(Cluster.index)).where(Cluster.run_id == c.run_id)) or 0) + 1
    d = _new_decision(s, c, user, DecisionAction.split)
    before = {c.id: ClusterState.of(c)}
    c.status, c.size = ClusterStatus.split, 0
    _touch(s, [c], d)
    children = []
    for j, st in enumerate(stats):
        children.append(Cluster(run_id=c.run_id, index=next_index + j, status=ClusterStatus.open, parent_id=c.id,
                                size=st["size"], stats={
                                    "representatives": [int(ids[r]) for r in st["representatives"]],
                                    "outliers": [int(ids[r]) for r in st["outliers"]],
                                    "uncertainty": st["uncertainty"], "mean_distance": st["mean_distance"],
                                    "split_from": c.id, "last_decision_id": d.id}))
    s.add_all(children)
    s.flush()
    s.execute(update(ClusterMembership), [
        {"id": m.id, "cluster_id": children[int(a)].id, "distance": float(dist)}
        for m, a, dist in zip(members, result.assignments, result.distances)])
    d.payload = SplitPayload(before, k=k, seed=c.id if seed is None else seed, children=[ch.id for ch in children],
                             members=[MovedMembership(m.id, m.image_id, m.distance) for m in members]).to_json()
    s.flush()
    sizes = ", ".join(f"#{ch.index} ({ch.size})" for ch in children)
    return _result(s, d, c, f"Split cluster #{c.index} into {k} sub-clusters: {sizes}.",
                   children=[cluster_state(s, ch) for ch in children])


MOVE_TARGETS = ("unlabeled", "discarded")


def move_images(s: Session, user: Any, cluster_id: Any, *, image_ids: Any, target: Any, version: Any = None) -> dict:
    """Label single images by hand (source ``manual``): to a region label, to ``"discarded"``
    (label_id None), or back to ``"unlabeled"`` (the current label is superseded, none added).

    Memberships do not change: the image stays in its cluster, only its label differs, and
    later cluster-level decisions keep manual labels."""
    user, c = _open_for_decision(s, user, cluster_id, version)
    if not isinstance(image_ids, list) or not image_ids:
        raise DecisionError("select at least one image to move")
    images = sorted({_as_int(i, "image id") for i in image_ids})
    members = set()
    for chunk in _chunks(images):
        members.update(s.scalars(select(ClusterMembership.image_id).where(
            ClusterMembership.cluster_id == c.id, ClusterMembership.image_id.in_(chunk))))
    strangers = [i for i in images if i not in members]
    if strangers:
        raise DecisionError(f"image {strangers[0]} is not in cluster #{c.index}"
                            + (f" (nor are {len(strangers) - 1} more)" if len(strangers) > 1 else ""))
    if target in MOVE_TARGETS:
        label_id, what = None, target
    elif isinstance(target, str) and not target.strip().isdigit():
        raise DecisionError(f"move target must be a region label id, 'unlabeled' or 'discarded', got {target!r}")
    else:
        label = _region_label(s, target)
        label_id, what = label.id, f"'{label.name}'"
    d = _new_decision(s, c, user, DecisionAction.move, label_id)
    before = {c.id: ClusterState.of(c)}
    _touch(s, [c], d)
    entries, _ = _relabel(s, d, user, images, label_id, source=LabelSource.manual,
                          create=target != "unlabeled", keep_manual=False)
    d.payload = MovePayload(before, entries, target=target if target in MOVE_TARGETS else label_id).to_json()
    s.flush()
    n = len(images)
    return _result(s, d, c, f"Moved {n} image{'s' if n != 1 else ''} of cluster #{c.index} to {what}.")


# --------------------------------------------------------------------------------------------
# undo


def _restorable(s: Session, image_id: int, label_id: int | None) -> int | None:
    """The label to reinstate for an image: ``label_id`` unless the decision that made it has
    been undone meanwhile (a later decision elsewhere was undone out of order), in which case
    whatever that decision had superseded, and so on down the chain."""
    seen = 0
    while label_id is not None and seen < 1000:
        seen += 1
        wl = s.get(WeakLabel, label_id)
        if wl is None or wl.decision is None:
            return label_id
        dec = wl.decision
        if dec.undone_by_id is None:
            return label_id
        prior = next((e for e in payload_of(dec).labels if e.image_id == image_id), None)
        label_id = prior.old_weak_label_id if prior else None
    return label_id


def _undo_labels(s: Session, entries: list[LabelChange]) -> list[int]:
    """Reverse the label changes; images whose label has changed since (a later decision, e.g.
    in another run) are left alone and returned."""
    if not entries:
        return []
    now = utcnow()
    current = _current_labels(s, [e.image_id for e in entries])
    drop, reinstate, skipped = [], [], []
    for img, old, new in ((e.image_id, e.old_weak_label_id, e.new_weak_label_id) for e in entries):
        cur = current.get(img)
        if (cur[0] if cur else None) != new:
            skipped.append(img)
            continue
        if new is not None:
            drop.append(new)
        if old is not None:
            reinstate.append((img, old))
    if _set_superseded(s, drop, now) != len(drop):
        raise Conflict("the labels of some of these images were changed by someone else at the same moment "
                       "— reload to see them")
    # Almost always the superseded label itself; only labels of undone decisions need a walk.
    olds = [o for _, o in reinstate]
    undone = set()
    for chunk in _chunks(olds):
        undone.update(s.scalars(select(WeakLabel.id).join(ClusterDecision, WeakLabel.decision_id == ClusterDecision.id)
                                .where(WeakLabel.id.in_(chunk), ClusterDecision.undone_by_id.is_not(None))))
    back = [(_restorable(s, img, o) if o in undone else o) for img, o in reinstate]
    _set_superseded(s, [b for b in back if b is not None], None)
    return skipped


def undo_last(s: Session, user: Any, cluster_id: Any, *, version: Any = None) -> dict:
    """Undo the latest not-yet-undone decision on this cluster, restoring exactly the state
    before it: labels, memberships, cluster status/label/size (and sub-clusters of a split)."""
    user = Actor.of(user)
    _require_decider(user)
    c = _load_cluster(s, cluster_id)
    if c.status == ClusterStatus.merged:
        _require_active(s, c)  # raises with "merged into #x"
    _check_version(s, c, version)
    last = s.scalars(select(ClusterDecision).where(ClusterDecision.cluster_id == c.id,
                                                   ClusterDecision.action != DecisionAction.undo,
                                                   ClusterDecision.undone_by_id.is_(None))
                     .order_by(ClusterDecision.id.desc()).limit(1)).first()
    if last is None:
        raise DecisionError(f"there is nothing to undo on cluster #{c.index}")
    p = payload_of(last)
    involved: dict[int, Cluster] = {c.id: c}
    for cid in p.before:
        involved.setdefault(cid, s.get(Cluster, cid))
    retire: list[Cluster] = []
    if isinstance(p, SplitPayload):
        children = [s.get(Cluster, i) for i in p.children]
        children = [ch for ch in children if ch is not None]
        for ch in children:
            active = s.scalar(select(func.count()).select_from(ClusterDecision).where(
                ClusterDecision.cluster_id == ch.id, ClusterDecision.action != DecisionAction.undo,
                ClusterDecision.undone_by_id.is_(None)))
            if ch.status != ClusterStatus.open or active:
                raise DecisionError(f"sub-cluster #{ch.index} has decisions of its own ({ch.status}); "
                                    "undo those first, then the split")
        retire = children
    if isinstance(p, MergePayload):
        for src_id in p.moved:
            src = involved[src_id]
            if src is None or src.status != ClusterStatus.merged:
                raise DecisionError(f"cluster {src_id} is no longer merged here; cannot undo the merge")

    u = _new_decision(s, c, user, DecisionAction.undo, last.label_id)
    for cid, state in p.before.items():
        cl = involved.get(cid)
        if cl is not None:
            state.restore(s, cl)
            if "merged_into" in (cl.stats or {}):
                cl.stats = {k: v for k, v in cl.stats.items() if k != "merged_into"}
    for ch in retire:
        ch.size = 0
    _touch(s, [cl for cl in involved.values() if cl is not None] + retire, u)

    if isinstance(p, MergePayload):
        for src_id, images in p.moved.items():
            for chunk in _chunks(images):
                s.execute(update(ClusterMembership).where(ClusterMembership.run_id == c.run_id,
                                                          ClusterMembership.image_id.in_(chunk))
                          .values(cluster_id=src_id).execution_options(synchronize_session=False))
    if isinstance(p, SplitPayload):
        if p.members:
            s.execute(update(ClusterMembership), [{"id": m.membership_id, "cluster_id": c.id, "distance": m.distance}
                                                  for m in p.members])
        for ch in retire:
            has_history = s.scalar(select(func.count()).select_from(ClusterDecision)
                                   .where(ClusterDecision.cluster_id == ch.id))
            if has_history:  # keep the row so the undone decisions' provenance survives
                ch.status = ClusterStatus.merged
                ch.stats = {**(ch.stats or {}), "merged_into": c.id}
            else:
                s.delete(ch)
    skipped = _undo_labels(s, p.labels)
    last.undone_by_id = u.id
    u.payload = UndoPayload(undid=last.id, action=DecisionAction(last.action), skipped_images=skipped).to_json()
    s.flush()
    msg = f"Undid the {last.action} of cluster #{c.index}"
    msg += f" ({len(skipped)} images kept their newer labels)." if skipped else "."
    return _result(s, u, c, msg, undid=last.id)


# --------------------------------------------------------------------------------------------
# conflicts


def _describe(s: Session, d: ClusterDecision, changed: Cluster, page_id: int) -> str:
    """What ``d`` did, worded from the page of cluster ``page_id`` ("this cluster")."""
    def ref(cid: int) -> str:
        if cid == page_id:
            return "this cluster"
        other = s.get(Cluster, cid)
        return f"cluster #{other.index}" if other else f"cluster {cid}"

    p = payload_of(d)
    if d.action == DecisionAction.name:
        return f"named {ref(d.cluster_id)} '{d.label.name if d.label else None}'"
    if d.action == DecisionAction.discard:
        return f"discarded {ref(d.cluster_id)}"
    if isinstance(p, MergePayload):
        if changed.id != d.cluster_id:
            return f"merged {ref(changed.id)} into {ref(d.cluster_id)}"
        what = ref(p.sources[0]) if len(p.sources) == 1 else f"{len(p.sources)} clusters"
        return f"merged {what} into {ref(d.cluster_id)}"
    if isinstance(p, SplitPayload):
        return f"split {ref(d.cluster_id)} into {p.k if p.k is not None else 'several'} sub-clusters"
    if isinstance(p, MovePayload):
        n = len(p.labels)
        return f"moved {n} image{'s' if n != 1 else ''} of {ref(d.cluster_id)}"
    if isinstance(p, UndoPayload):
        return f"undid the last {p.action or 'decision'} on {ref(d.cluster_id)}"
    return f"changed {ref(changed.id)}"


def _hhmm(when: datetime) -> str:
    if when.tzinfo is None:  # SQLite hands back naive datetimes; we always store UTC
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%H:%M UTC")


def conflict_message(s: Session, cluster_ids: Sequence[int], page_id: int | None = None) -> str:
    """'rad2 named this cluster 'knee' at 10:42 UTC — reload to see it', from the most recent
    decision recorded on any of the clusters; worded for the page of ``page_id`` (default: the
    first id)."""
    latest: tuple[ClusterDecision, Cluster] | None = None
    for cid in cluster_ids:
        c = s.get(Cluster, cid)
        if c is None:
            continue
        dec_id = (c.stats or {}).get("last_decision_id")
        d = s.get(ClusterDecision, dec_id) if dec_id else None
        if d is not None and (latest is None or d.id > latest[0].id):
            latest = (d, c)
    if latest is None:
        return "This cluster was changed by someone else since you loaded it — reload to see it."
    d, c = latest
    who = d.user.username if d.user else "Someone"
    return f"{who} {_describe(s, d, c, int(page_id if page_id is not None else cluster_ids[0]))} at {_hhmm(d.created_at)} — reload to see it."


# --------------------------------------------------------------------------------------------
# the entry point for callers that own no session


ACTIONS = {
    DecisionAction.name: name_cluster,
    DecisionAction.discard: discard_cluster,
    DecisionAction.merge: merge_clusters,
    DecisionAction.split: split_cluster,
    DecisionAction.move: move_images,
    DecisionAction.undo: undo_last,
}


def decide(db, action: DecisionAction | str, cluster_id: Any, user: Any, **kwargs) -> dict:
    """Run one decision in its own transaction. A concurrent decision that won the race
    (StaleDataError on the version check, or the unique current-label index) becomes a
    :class:`Conflict` naming who made it; the first decision stands, this one leaves nothing."""
    try:
        fn = ACTIONS[action]
    except KeyError:
        raise DecisionError(f"unknown action {action!r}; choose from {', '.join(ACTIONS)}") from None
    if action == DecisionAction.split:
        kwargs.setdefault("settings", db.settings)
    try:
        with db.session() as s:
            return fn(s, user, cluster_id, **kwargs)
    except StaleDataError as exc:  # a cluster's version moved on between our read and our write
        log.info("decision %s on cluster %s lost a race: %s", action, cluster_id, exc)
        involved = [cluster_id]
        if action == DecisionAction.merge and isinstance(kwargs.get("sources"), list):
            involved += kwargs["sources"]
        with db.session() as s:
            ids = [int(i) for i in involved if str(i).lstrip("-").isdigit()]
            raise Conflict(conflict_message(s, ids)) from exc
    except IntegrityError as exc:  # the current-label index, or a sub-cluster index taken by a parallel split
        log.warning("decision %s on cluster %s collided with a parallel one: %s", action, cluster_id, exc)
        raise Conflict("Another decision on these images or in this run was saved at the same moment; "
                       "nothing of yours was changed — reload and try again.") from exc


def history(s: Session, cluster_id: int, limit: int = 50) -> list[dict]:
    """Decisions on a cluster, newest first, for the page's provenance list."""
    rows = s.execute(select(ClusterDecision, User.username, Label.name)
                     .outerjoin(User, User.id == ClusterDecision.user_id)
                     .outerjoin(Label, Label.id == ClusterDecision.label_id)
                     .where(ClusterDecision.cluster_id == cluster_id)
                     .order_by(ClusterDecision.id.desc()).limit(limit)).all()
    return [{"id": d.id, "action": d.action, "user": username, "label": label, "at": d.created_at,
             "undone": d.undone_by_id is not None,
             "undid": payload_of(d).undid if d.action == DecisionAction.undo else None}  # undo payloads are small
            for d, username, label in rows]
