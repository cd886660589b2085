"""What a cluster decision records (``ClusterDecision.payload``), typed: one class per action,
built and read through ``to_json``/``from_json``/:func:`payload_of`. In the database it is JSON,
in the layout every version of samx has written (so undo works on decisions recorded by older
versions)::

    before:   {cluster_id: {"status", "label_id", "size"}}   state of every touched cluster
    labels:   [[image_id, superseded_weak_label_id | None, created_weak_label_id | None], ...]
    moved:    {source_cluster_id: [image_id, ...]}            merge: memberships moved
    members:  [[membership_id, image_id, old_distance], ...]  split: memberships moved
    children: [cluster_id, ...]                               split: the new sub-clusters
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from sqlalchemy.orm import Session

from backend.database.schema import Cluster, ClusterDecision, ClusterStatus, DecisionAction, Label


@dataclass(frozen=True)
class ClusterState:
    """A cluster's state before a decision: ``before[cluster id]``, ``{"status", "label_id", "size"}``."""

    status: ClusterStatus
    label_id: int | None
    size: int

    @classmethod
    def of(cls, c: Cluster) -> "ClusterState":
        return cls(ClusterStatus(c.status), c.label_id, c.size)

    def to_json(self) -> dict:
        return {"status": self.status.value, "label_id": self.label_id, "size": self.size}

    @classmethod
    def from_json(cls, raw: dict) -> "ClusterState":
        return cls(ClusterStatus(raw["status"]), raw.get("label_id"), int(raw.get("size") or 0))

    def restore(self, s: Session, c: Cluster) -> None:
        with s.no_autoflush:  # loading the label must not flush this cluster (one version bump per decision)
            c.label = s.get(Label, self.label_id) if self.label_id is not None else None
        c.status, c.size = self.status, self.size


@dataclass(frozen=True)
class LabelChange:
    """One image's label change: the weak label the decision superseded and the one it created
    (ids of WeakLabel rows; None: the image had none / got none). JSON ``[image, old, new]``."""

    image_id: int
    old_weak_label_id: int | None
    new_weak_label_id: int | None

    def to_json(self) -> list:
        return [self.image_id, self.old_weak_label_id, self.new_weak_label_id]

    @classmethod
    def from_json(cls, raw: Sequence) -> "LabelChange":
        image_id, old, new = raw
        return cls(int(image_id), old, new)


@dataclass(frozen=True)
class MovedMembership:
    """A membership a split moved to a sub-cluster, with its distance before. JSON ``[id, image, distance]``."""

    membership_id: int
    image_id: int
    distance: float | None

    def to_json(self) -> list:
        return [self.membership_id, self.image_id, self.distance]

    @classmethod
    def from_json(cls, raw: Sequence) -> "MovedMembership":
        membership_id, image_id, distance = raw
        return cls(int(membership_id), int(image_id), distance)


def _ids(raw: Iterable) -> list[int]:
    return [int(i) for i in raw]


@dataclass
class DecisionPayload:
    """What a decision changed, enough for :func:`undo_last` to restore the state before it:
    every touched cluster's state (``before``) and the label changes (``labels``)."""

    before: dict[int, ClusterState] = field(default_factory=dict)
    labels: list[LabelChange] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"before": self._before_json(), "labels": [e.to_json() for e in self.labels]}

    def _before_json(self) -> dict:
        return {str(cid): state.to_json() for cid, state in self.before.items()}

    @classmethod
    def _common(cls, raw: dict) -> dict:
        return {"before": {int(cid): ClusterState.from_json(st) for cid, st in (raw.get("before") or {}).items()},
                "labels": [LabelChange.from_json(e) for e in raw.get("labels") or []]}

    @classmethod
    def from_json(cls, raw: dict | None) -> "DecisionPayload":
        return cls(**cls._common(raw or {}))


@dataclass
class LabelPayload(DecisionPayload):
    """name, discard: every member relabelled, except ``kept_manual`` images labelled by hand."""

    kept_manual: int = 0

    def to_json(self) -> dict:
        return {**super().to_json(), "kept_manual": self.kept_manual}

    @classmethod
    def from_json(cls, raw: dict | None) -> "LabelPayload":
        raw = raw or {}
        return cls(**cls._common(raw), kept_manual=int(raw.get("kept_manual") or 0))


@dataclass
class MergePayload(LabelPayload):
    """merge: ``sources`` merged into the decision's cluster, ``moved`` their members (by source)."""

    moved: dict[int, list[int]] = field(default_factory=dict)
    sources: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"before": self._before_json(), "moved": {str(src): list(images) for src, images in self.moved.items()},
                "labels": [e.to_json() for e in self.labels], "kept_manual": self.kept_manual,
                "sources": list(self.sources)}

    @classmethod
    def from_json(cls, raw: dict | None) -> "MergePayload":
        raw = raw or {}
        return cls(**cls._common(raw), kept_manual=int(raw.get("kept_manual") or 0),
                   moved={int(src): _ids(images) for src, images in (raw.get("moved") or {}).items()},
                   sources=_ids(raw.get("sources") or []))


@dataclass
class SplitPayload(DecisionPayload):
    """split: the members re-clustered (k-means with ``k``, ``seed``) into ``children``; no labels change."""

    k: int | None = None
    seed: int | None = None
    children: list[int] = field(default_factory=list)
    members: list[MovedMembership] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"before": self._before_json(), "k": self.k, "seed": self.seed, "children": list(self.children),
                "members": [m.to_json() for m in self.members]}

    @classmethod
    def from_json(cls, raw: dict | None) -> "SplitPayload":
        raw = raw or {}
        return cls(**cls._common(raw), k=raw.get("k"), seed=raw.get("seed"), children=_ids(raw.get("children") or []),
                   members=[MovedMembership.from_json(m) for m in raw.get("members") or []])


@dataclass
class MovePayload(DecisionPayload):
    """move: single images labelled by hand; ``target`` a label id, ``"unlabeled"`` or ``"discarded"``."""

    target: int | str | None = None

    def to_json(self) -> dict:
        return {**super().to_json(), "target": self.target}

    @classmethod
    def from_json(cls, raw: dict | None) -> "MovePayload":
        raw = raw or {}
        return cls(**cls._common(raw), target=raw.get("target"))


@dataclass
class UndoPayload(DecisionPayload):
    """undo: which decision (``undid``, its ``action``) was undone; images whose label was newer
    than that decision's kept it (``skipped_images``). Restores state, records none of its own."""

    undid: int | None = None
    action: DecisionAction | None = None
    skipped_images: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"undid": self.undid, "action": self.action.value if self.action else None,
                "skipped_images": list(self.skipped_images)}

    @classmethod
    def from_json(cls, raw: dict | None) -> "UndoPayload":
        raw = raw or {}
        action = raw.get("action")
        return cls(undid=raw.get("undid"), action=DecisionAction(action) if action else None,
                   skipped_images=_ids(raw.get("skipped_images") or []))


PAYLOADS: dict[DecisionAction, type[DecisionPayload]] = {
    DecisionAction.name: LabelPayload,
    DecisionAction.discard: LabelPayload,
    DecisionAction.merge: MergePayload,
    DecisionAction.split: SplitPayload,
    DecisionAction.move: MovePayload,
    DecisionAction.undo: UndoPayload,
}


def payload_of(d: ClusterDecision) -> DecisionPayload:
    """The decision's payload, typed by its action."""
    return PAYLOADS[DecisionAction(d.action)].from_json(d.payload)
