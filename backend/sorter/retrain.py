"""The sorter's retrain loop: once enough weak labels changed since the active version was
trained, a "train_sorter" job is queued; the job itself promotes the new version only if it
is at least as good on the fixed validation split (backend.sorter.job)."""
from __future__ import annotations

from sqlalchemy import func, select

from backend.database.session import Database
from backend.jobs.params import TrainSorterParams
from backend.jobs.runner import enqueue
from backend.database.schema import Job, JobKind, JobStatus, LabelSource, WeakLabel
from backend.sorter.store import active_version


def changed_labels(s) -> int | None:
    """Weak labels written by people (cluster decisions, corrections) since the active version
    was trained; None without an active version."""
    mv = active_version(s)
    if mv is None:
        return None
    return s.scalar(select(func.count()).select_from(WeakLabel).where(
        WeakLabel.created_at > mv.created_at, WeakLabel.source.in_([LabelSource.cluster, LabelSource.manual,
                                                                    LabelSource.sorter])))


def maybe_retrain(db: Database, *, send: bool = True) -> Job | None:
    """Queue a retrain when ``settings.sorter_retrain_after`` labels changed and none is pending."""
    threshold = db.settings.sorter_retrain_after
    if threshold <= 0:
        return None
    with db.session() as s:
        changed = changed_labels(s)
        if changed is None or changed < threshold:
            return None
        pending = s.scalar(select(func.count()).select_from(Job).where(
            Job.kind == JobKind.train_sorter, Job.status.in_([JobStatus.queued, JobStatus.running])))
        if pending:
            return None
    return enqueue(db, JobKind.train_sorter,
                   TrainSorterParams(reason=f"retrain: {changed} labels changed since the active version"), send=send)
