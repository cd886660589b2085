"""The detector's retrain loop: Label Studio's START_TRAINING, or N annotations synced since the
last training was queued, queue one "train_detector" job. Debounced: while one is queued or
running, nothing more is queued, and the count starts again from the newest one. The job
continues the active version (``follow_active``): its architecture, tile and size, and its
weights unless ``settings.detector_warm_start`` is off."""
from __future__ import annotations

from sqlalchemy import func, select

from backend.database.session import Database
from backend.jobs.params import TrainDetectorParams
from backend.jobs.runner import enqueue
from backend.database.schema import Annotation, Job, JobKind, JobStatus


def annotations_since_last_training(s) -> int:
    last = s.scalar(select(func.max(Job.created_at)).where(Job.kind == JobKind.train_detector, Job.status != JobStatus.failed))
    q = select(func.count()).select_from(Annotation).where(Annotation.deleted_at.is_(None))
    return s.scalar(q if last is None else q.where(Annotation.updated_at > last))


def maybe_retrain(db: Database, *, force_reason: str | None = None, send: bool = True) -> Job | None:
    """Queue a training when ``settings.detector_retrain_after`` annotations arrived since the
    last one (0 turns the count off), or at once with ``force_reason`` (START_TRAINING); never
    while one is already queued or running."""
    with db.session() as s:
        pending = s.scalar(select(func.count()).select_from(Job).where(
            Job.kind == JobKind.train_detector, Job.status.in_([JobStatus.queued, JobStatus.running])))
        if pending:
            return None
        if force_reason is None:
            threshold = db.settings.detector_retrain_after
            new = annotations_since_last_training(s)
            if threshold <= 0 or new < threshold:
                return None
            force_reason = f"{new} annotations since the last training"
    return enqueue(db, JobKind.train_detector, TrainDetectorParams(reason=force_reason, follow_active=True), send=send)
