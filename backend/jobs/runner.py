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
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from sqlalchemy import select, update

from backend.config import Settings
from backend.db import Database
from backend.models import Job, JobStatus, utcnow

log = logging.getLogger("samx.jobs")

HEARTBEAT_SECONDS = 5.0
#: A running job whose heartbeat is older than this is considered dead.
STALE_AFTER = timedelta(seconds=60)
MAX_ATTEMPTS = 3

Handler = Callable[["JobContext"], dict[str, Any] | None]
_KINDS: dict[str, Handler] = {}


class JobFailed(Exception):
    """A handler's way to fail with a message a person can act on (no traceback shown)."""


class JobCancelled(Exception):
    pass


def job_kind(name: str) -> Callable[[Handler], Handler]:
    """Register a handler for jobs of ``kind == name``."""

    def register(fn: Handler) -> Handler:
        _KINDS[name] = fn
        return fn

    return register


def _handler(kind: str) -> Handler:
    import backend.tasks  # noqa: F401  # registers the handlers

    try:
        return _KINDS[kind]
    except KeyError:
        raise JobFailed(f"unknown job kind {kind!r}") from None


@dataclass
class JobContext:
    """What a handler gets: its parameters, the database, and a progress callback."""

    settings: Settings
    db: Database
    job_id: int
    params: dict[str, Any]
    on_progress: Callable[[int, int | None, str | None], None] | None = None  # e.g. a terminal bar
    _last_write: float = field(default=0.0, repr=False)

    def progress(self, done: int, total: int | None = None, message: str | None = None, *, force: bool = False) -> None:
        """Throttled to ~2 writes/s; raises JobCancelled when someone cancelled the job."""
        if self.on_progress is not None:
            self.on_progress(done, total, message)
        now = time.monotonic()
        if not force and now - self._last_write < 0.5:
            return
        self._last_write = now
        values: dict[str, Any] = {"done": done, "heartbeat_at": utcnow()}
        if total is not None:
            values["total"] = total
        if message is not None:
            values["message"] = message[:500]
        with self.db.session() as s:
            s.execute(update(Job).where(Job.id == self.job_id).values(**values))
            status = s.scalar(select(Job.status).where(Job.id == self.job_id))
        if status == JobStatus.cancelled:
            raise JobCancelled()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def enqueue(db: Database, kind: str, params: dict[str, Any], *, send: bool = True) -> Job:
    """Create the job row, then hand its id to the queue (row first: a worker never sees an id
    without a row)."""
    _handler(kind)
    with db.session() as s:
        job = Job(kind=kind, params=params, status=JobStatus.queued)
        s.add(job)
    if send:
        from backend.jobs.queue import send as send_to_queue

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
        result = _handler(job.kind)(ctx) or {}
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
        from backend.jobs.queue import send as send_to_queue

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
        from backend.jobs.queue import send as send_to_queue

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
        return job
