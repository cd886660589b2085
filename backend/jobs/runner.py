"""Running a job: claim it, heartbeat, report progress, record the outcome.

A worker killed with ``kill -9`` stops heart-beating; :func:`reap_stale` then marks its job
failed (or queues it again). Job handlers commit their own data in small atomic units, so a
killed job leaves complete rows or none, and a retry picks up where it stopped.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from sqlalchemy import select, update

from backend.config import Settings
from backend.database.session import Database
from backend.jobs.context import JobCancelled, JobContext, JobFailed
from backend.jobs.params import JobParams
from backend.jobs.queue import send as send_to_queue
from backend.jobs.registry import handler
from backend.jobs.shards import cancel_shards
from backend.database.schema import Job, JobKind, JobStatus, utcnow

log = logging.getLogger("samx.jobs")

HEARTBEAT_SECONDS = 5.0
#: A running job whose heartbeat is older than this is considered dead.
STALE_AFTER = timedelta(seconds=60)
MAX_ATTEMPTS = 3


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def enqueue(db: Database, kind: JobKind | str, params: JobParams | dict[str, Any], *, send: bool = True) -> Job:
    """Create the job row, then hand its id to the queue (row first: a worker never sees an id
    without a row). ``params``: the kind's parameters (backend.jobs.params), or their JSON as is
    (the job checks it when it runs)."""
    handler(kind)
    try:
        kind = JobKind(kind)
    except ValueError:  # a handler registered for a kind the schema does not know
        raise JobFailed(f"job kind {kind!r} is not one of {', '.join(JobKind)}") from None
    if isinstance(params, JobParams):
        if params.kind != kind:
            raise TypeError(f"{type(params).__name__} are the parameters of {params.kind} jobs, not of {kind}")
        params = params.to_json()
    with db.session() as s:
        job = Job(kind=kind, params=params, status=JobStatus.queued)
        s.add(job)
    if send:
        send_to_queue(db.settings, job.id)
    return job


def _claim(db: Database, job_id: int) -> Job | None:
    """Atomically move queued -> running; a second worker given the same id gets None."""
    now = utcnow()
    with db.session() as s:
        claimed = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued)
            .values(status=JobStatus.running, started_at=now, heartbeat_at=now, worker=worker_name(),
                    attempts=Job.attempts + 1, error=None, finished_at=None)
        ).rowcount
        if not claimed:
            return None
        return s.get(Job, job_id)


def _heartbeat(db: Database, job_id: int, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        try:
            with db.session() as s:
                s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.running).values(heartbeat_at=utcnow()))
        except Exception:  # a missed beat is harmless; the next one retries
            log.warning("heartbeat for job %s failed", job_id, exc_info=True)


def execute(db: Database, job_id: int, on_progress: Callable | None = None) -> Job | None:
    """Run one queued job in this process. Returns the finished row (None if not claimable)."""
    job = _claim(db, job_id)
    if job is None:
        log.info("job %s is not queued any more; skipped", job_id)
        return None
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(db, job_id, stop), daemon=True)
    beat.start()
    ctx = JobContext(settings=db.settings, db=db, job_id=job_id, params=dict(job.params or {}), on_progress=on_progress)
    status, result, error = JobStatus.succeeded, {}, None
    try:
        result = handler(job.kind)(ctx) or {}
    except JobCancelled:
        status, error = JobStatus.cancelled, "cancelled"
    except JobFailed as exc:
        status, error = JobStatus.failed, str(exc)
    except Exception as exc:
        status, error = JobStatus.failed, f"{type(exc).__name__}: {exc}"
        log.error("job %s (%s) failed\n%s", job_id, job.kind, traceback.format_exc())
    finally:
        stop.set()
        beat.join()
    with db.session() as s:
        values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
        if status == JobStatus.succeeded:
            values["result"] = result
        s.execute(update(Job).where(Job.id == job_id, Job.status != JobStatus.cancelled).values(**values))
        return s.get(Job, job_id)


def execute_in_worker(settings: Settings, job_id: int) -> None:
    db = Database(settings)
    try:
        execute(db, job_id)
    finally:
        db.dispose()


def reap_stale(db: Database, *, stale_after: timedelta = STALE_AFTER, requeue: bool = True) -> list[int]:
    """Find running jobs whose worker died; queue them again (up to MAX_ATTEMPTS) or fail them."""
    cutoff = datetime.now(timezone.utc) - stale_after
    reaped: list[int] = []
    requeued: list[int] = []
    with db.session() as s:
        stale = s.scalars(select(Job).where(Job.status == JobStatus.running, Job.heartbeat_at < cutoff)).all()
        for job in stale:
            note = f"worker {job.worker} stopped without finishing (no heartbeat since {job.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC)"
            if requeue and job.attempts < MAX_ATTEMPTS:
                job.status, job.message = JobStatus.queued, note + "; queued again"
                requeued.append(job.id)
            else:
                job.status, job.error, job.finished_at = JobStatus.failed, note, utcnow()
            reaped.append(job.id)
    if requeued:
        for job_id in requeued:
            send_to_queue(db.settings, job_id)
    return reaped


def retry(db: Database, job_id: int, *, send: bool = True) -> Job:
    """Queue a failed or cancelled job again with the same parameters."""
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise JobFailed(f"no job {job_id}")
        if job.status in (JobStatus.queued, JobStatus.running):
            raise JobFailed(f"job {job_id} is {job.status.value}; only failed, cancelled or finished jobs can be retried")
        job.status, job.error, job.finished_at, job.message = JobStatus.queued, None, None, "retry requested"
    if send:
        send_to_queue(db.settings, job_id)
    return job


def cancel(db: Database, job_id: int) -> Job:
    """Queued jobs never start; running ones stop at their next progress report."""
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise JobFailed(f"no job {job_id}")
        if job.status in (JobStatus.queued, JobStatus.running):
            job.status, job.finished_at, job.error = JobStatus.cancelled, utcnow(), "cancelled"
    cancel_shards(db, job)  # a split job's shards go with it
    return job
