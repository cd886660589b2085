"""What a job handler gets and may raise: a leaf module, so handlers import nothing else of the
job machinery (the runner finds them through backend.jobs.registry)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import select, update

from backend.config import Settings
from backend.database.schema import Job, JobStatus, utcnow
from backend.database.session import Database

Progress = Callable[[int, "int | None", "str | None"], None]
Handler = Callable[["JobContext"], "dict[str, Any] | None"]


class JobFailed(Exception):
    """A handler's way to fail with a message a person can act on (no traceback shown)."""


class JobCancelled(Exception):
    pass


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
