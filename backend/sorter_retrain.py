"""The sorter's retrain loop: once enough weak labels changed since the active version was
trained, a "train_sorter" job is queued; the job itself promotes the new version only if it
is at least as good on the fixed validation split (backend.sorter_job)."""
from __future__ import annotations

from sqlalchemy import func, select

from backend.db import Database
from backend.jobs.runner import enqueue
from backend.models import Job, JobStatus, LabelSource, WeakLabel
from backend.sorter_store import active_version

JOB_KIND = "train_sorter"


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
            Job.kind == JOB_KIND, Job.status.in_([JobStatus.queued, JobStatus.running])))
        if pending:
            return None
    return enqueue(db, JOB_KIND, {"reason": f"retrain: {changed} labels changed since the active version"},
                   send=send)
