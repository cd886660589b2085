"""The database schema (SQLAlchemy 2 typed models). Only ``backend/`` touches these.

Nothing here may hold PHI: image metadata is stored as the de-identifier left it.
"""
from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

JSONType = JSON().with_variant(JSONB(), "postgresql")

# Named constraints so Alembic migrations are identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSONType, list[Any]: JSONType}


def _enum(cls: type[enum.Enum], length: int = 32) -> Enum:
    # Stored as plain strings (VARCHAR(length), no CHECK constraint): adding a member needs no
    # migration, and an ALTER TYPE on PostgreSQL never.
    return Enum(cls, native_enum=False, length=length, values_callable=lambda e: [m.value for m in e],
                validate_strings=True)


class Role(str, enum.Enum):
    admin = "admin"
    radiologist = "radiologist"
    viewer = "viewer"


class ImageStatus(str, enum.Enum):
    imported = "imported"
    rejected = "rejected"


class JobStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class LabelSource(str, enum.Enum):
    cluster = "cluster"  # a cluster decision on the naming page
    manual = "manual"  # a radiologist on one image (outlier move, review queue)
    sorter = "sorter"  # a model prediction accepted as a label
    imported = "imported"  # from an imported COCO/VOC dataset


# The enums below are ``enum.StrEnum`` (str + Enum whose str() and format() are the value): rows
# loaded from the database carry members, and code, templates and f-strings that print or
# compare them as the plain strings they replaced keep working unchanged.


class LabelKind(enum.StrEnum):
    """What a vocabulary entry names."""

    region = "region"  # body region of a whole image: cluster names, sorter classes
    lesion = "lesion"  # class of a lesion box
    finding = "finding"


class ModelKind(enum.StrEnum):
    """Which model a ModelVersion is (also its folder under ``models/``)."""

    deepcluster = "deepcluster"
    sorter = "sorter"
    detector = "detector"


class ModelStatus(enum.StrEnum):
    training = "training"  # the column default; no job writes a row before its file is complete
    ready = "ready"  # a DeepCluster model (the sorter's initialisation): never promoted or retired
    active = "active"  # promoted: predicts, and is what the web UI shows
    rejected = "rejected"  # trained, but not better than the active version
    retired = "retired"  # was active until a newer version was promoted


class ClusterRunStatus(enum.StrEnum):
    running = "running"
    done = "done"  # what the cluster job writes when it finishes
    # A finished run as the rows-only fixtures write it (tests/factories.py, bench/overview.py):
    # databases built by them hold it, so it must load.
    succeeded = "succeeded"


class ClusterStatus(enum.StrEnum):
    open = "open"
    named = "named"
    discarded = "discarded"
    merged = "merged"  # history: its members moved to ``stats["merged_into"]``
    split = "split"  # history: its members moved to its sub-clusters


#: Cluster statuses a radiologist can still act on (``merged`` and ``split`` clusters are history).
DECIDABLE_CLUSTER_STATUSES = (ClusterStatus.open, ClusterStatus.named, ClusterStatus.discarded)
#: Statuses of clusters that are history, not cards.
HIDDEN_CLUSTER_STATUSES = (ClusterStatus.merged, ClusterStatus.split)


class DecisionAction(enum.StrEnum):
    name = "name"
    discard = "discard"
    merge = "merge"
    split = "split"
    move = "move"
    undo = "undo"


class AnnotationSource(enum.StrEnum):
    labelstudio = "labelstudio"


class BoxSource(enum.StrEnum):
    annotation = "annotation"  # drawn by a person (a Label Studio annotation)
    prediction = "prediction"  # a detector's prediction
    imported = "imported"  # from an imported COCO/VOC dataset


class JobKind(enum.StrEnum):
    """Every job kind there is; backend/cli/job_kinds.py registers a handler for each."""

    ingest = "ingest"
    cluster = "cluster"
    export = "export"
    import_ = "import"
    train_sorter = "train_sorter"
    predict = "predict"
    train_detector = "train_detector"
    pull_dicomweb = "pull_dicomweb"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(_enum(Role), default=Role.viewer)
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Image(Base):
    """One distinct file content (by SHA-256). Rejected files are rows too, with the reason,
    so a re-run knows them and a report can list them."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[ImageStatus] = mapped_column(_enum(ImageStatus), index=True)
    reason_code: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    source_path: Mapped[str] = mapped_column(Text)
    file_size: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str | None] = mapped_column(String(16))
    rows: Mapped[int | None]
    columns: Mapped[int | None]
    bits_stored: Mapped[int | None]
    photometric: Mapped[str | None] = mapped_column(String(32))
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(16))
    laterality: Mapped[str | None] = mapped_column(String(8))
    manufacturer: Mapped[str | None] = mapped_column(String(128))
    patient_pseudonym: Mapped[str | None] = mapped_column(String(64), index=True)
    study_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    series_uid: Mapped[str | None] = mapped_column(String(64))
    sop_uid: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(8))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    store_path: Mapped[str | None] = mapped_column(Text)  # relative to the data dir
    thumbnail_path: Mapped[str | None] = mapped_column(Text)
    ingest_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    weak_labels: Mapped[list["WeakLabel"]] = relationship(back_populates="image", passive_deletes=True)
    boxes: Mapped[list["Box"]] = relationship(back_populates="image", passive_deletes=True)


class PacsInstance(Base):
    """A DICOM instance samx has had from a PACS (pulled over DICOMweb or pushed to `samx listen`),
    keyed by its SOP Instance UID as the de-identifier replaces it (the value ``images.sop_uid``
    gets): the ledger that lets a pull skip what it has, without keeping the original UID."""

    __tablename__ = "pacs_instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(Text)  # the DICOMweb URL (no credentials) or dicom://AET
    outcome: Mapped[str] = mapped_column(String(16))  # imported, duplicate or rejected
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Label(Base):
    """The vocabulary: body regions (the 28 SAM-X regions by default), lesion classes, etc."""

    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("kind", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[LabelKind] = mapped_column(_enum(LabelKind))
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str | None] = mapped_column(Text)
    sort_order: Mapped[int] = mapped_column(default=0)
    is_active: Mapped[bool] = mapped_column(default=True)


class ModelVersion(Base):
    """A trained artifact in the model store; ``path`` is only set once the file is complete."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("kind", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[ModelKind] = mapped_column(_enum(ModelKind))
    version: Mapped[str] = mapped_column(String(64))
    status: Mapped[ModelStatus] = mapped_column(_enum(ModelStatus), default=ModelStatus.training)
    path: Mapped[str | None] = mapped_column(Text)
    data_hash: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ClusterRun(Base):
    __tablename__ = "cluster_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[ClusterRunStatus] = mapped_column(_enum(ClusterRunStatus), default=ClusterRunStatus.running)
    k: Mapped[int]
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    clusters: Mapped[list["Cluster"]] = relationship(back_populates="run", passive_deletes=True)


class Cluster(Base):
    """``version`` is SQLAlchemy's optimistic lock: two radiologists saving the same cluster
    at once, the second gets a StaleDataError instead of silently overwriting."""

    __tablename__ = "clusters"
    __table_args__ = (UniqueConstraint("run_id", "index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("cluster_runs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int]
    status: Mapped[ClusterStatus] = mapped_column(_enum(ClusterStatus), default=ClusterStatus.open)
    label_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id", ondelete="SET NULL"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("clusters.id", ondelete="SET NULL"))
    size: Mapped[int] = mapped_column(default=0)
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    version: Mapped[int] = mapped_column(default=1)

    run: Mapped[ClusterRun] = relationship(back_populates="clusters")
    label: Mapped[Label | None] = relationship()
    parent: Mapped[Cluster | None] = relationship(remote_side=[id])
    __mapper_args__ = {"version_id_col": version}


class ClusterMembership(Base):
    __tablename__ = "cluster_memberships"
    __table_args__ = (UniqueConstraint("run_id", "image_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("cluster_runs.id", ondelete="CASCADE"))
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    distance: Mapped[float | None] = mapped_column(Float)


class ClusterDecision(Base):
    """What a radiologist did to a cluster; weak labels point back here (provenance)."""

    __tablename__ = "cluster_decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    action: Mapped[DecisionAction] = mapped_column(_enum(DecisionAction))
    label_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id", ondelete="SET NULL"))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    undone_by_id: Mapped[int | None] = mapped_column(ForeignKey("cluster_decisions.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    cluster: Mapped[Cluster] = relationship()
    user: Mapped[User | None] = relationship()
    label: Mapped[Label | None] = relationship()


class WeakLabel(Base):
    """Labels are never overwritten: a new one supersedes the old, so history and provenance
    (who, when, which decision) survive every correction. At most one current label per image."""

    __tablename__ = "weak_labels"
    __table_args__ = (
        Index(
            "uq_weak_labels_current",
            "image_id",
            unique=True,
            sqlite_where=text("superseded_at IS NULL"),
            postgresql_where=text("superseded_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    label_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id", ondelete="RESTRICT"))  # None: discarded
    source: Mapped[LabelSource] = mapped_column(_enum(LabelSource))
    decision_id: Mapped[int | None] = mapped_column(ForeignKey("cluster_decisions.id", ondelete="SET NULL"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    # The Label Studio annotation whose body-region choice set it (its annotator is the who).
    annotation_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id", ondelete="SET NULL"), index=True)
    confidence: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    superseded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    image: Mapped[Image] = relationship(back_populates="weak_labels")
    label: Mapped[Label | None] = relationship()
    user: Mapped[User | None] = relationship()
    decision: Mapped[ClusterDecision | None] = relationship()


class SorterPrediction(Base):
    """What one sorter version said about one image. Kept apart from weak labels: a prediction
    labels nothing until a radiologist accepts it (then it becomes a WeakLabel, source sorter)."""

    __tablename__ = "sorter_predictions"
    __table_args__ = (UniqueConstraint("model_version_id", "image_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    label_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id", ondelete="RESTRICT"))  # None: unsure
    confidence: Mapped[float] = mapped_column(Float)  # probability of the best class
    second_label_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id", ondelete="RESTRICT"))
    second_confidence: Mapped[float | None] = mapped_column(Float)
    ood_score: Mapped[float] = mapped_column(Float)  # above the model's threshold: unsure
    # the version's cross-validation confidently contradicted the image's weak label (confident
    # learning), so the version did not train on it: the "doubted" review queue
    label_doubted: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Annotation(Base):
    """One annotation of one image in Label Studio, as its last webhook described it: the
    image-level answers here, its boxes as Box rows pointing back. A deleted or skipped
    annotation stays, marked, so a late duplicate event cannot bring it back; an image with a
    live annotation and no boxes is a labelled normal image, which detector training needs."""

    __tablename__ = "annotations"
    __table_args__ = (UniqueConstraint("source", "external_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    source: Mapped[AnnotationSource] = mapped_column(_enum(AnnotationSource), default=AnnotationSource.labelstudio)
    external_id: Mapped[str] = mapped_column(String(128))  # Label Studio annotation id
    task_external_id: Mapped[str | None] = mapped_column(String(128))
    annotator: Mapped[str | None] = mapped_column(String(255))  # Label Studio's completed_by
    abnormal: Mapped[bool | None]  # the image-level choice; None: not answered
    region_label_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id", ondelete="RESTRICT"))
    cancelled: Mapped[bool] = mapped_column(default=False)  # skipped in Label Studio
    external_updated_at: Mapped[str | None] = mapped_column(String(64))  # orders late events
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    boxes: Mapped[list["Box"]] = relationship(back_populates="annotation", passive_deletes=True)


class Box(Base):
    """A lesion box in float pixels of the original image, top-left origin, [x, y, w, h]."""

    __tablename__ = "boxes"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    label_id: Mapped[int] = mapped_column(ForeignKey("labels.id", ondelete="RESTRICT"))
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    width: Mapped[float] = mapped_column(Float)
    height: Mapped[float] = mapped_column(Float)
    source: Mapped[BoxSource] = mapped_column(_enum(BoxSource))
    score: Mapped[float | None] = mapped_column(Float)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    external_id: Mapped[str | None] = mapped_column(String(128), index=True)  # e.g. Label Studio result id
    annotation_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    image: Mapped[Image] = relationship(back_populates="boxes")
    annotation: Mapped[Annotation | None] = relationship(back_populates="boxes")


class Job(Base):
    """A unit of background work. The queue only carries the job id; state lives here, so the
    web UI and CLI read progress from one place whichever queue ran it."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind, length=64), index=True)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus), default=JobStatus.queued, index=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    done: Mapped[int] = mapped_column(default=0)
    total: Mapped[int | None]
    message: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    worker: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    @property
    def progress(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)
