"""The transport: which Huey a Settings means, and the one task it carries (a job id).

Carrying only the id keeps every job's state in our database, so SQLite-embedded and Redis
deployments run the same task code and show progress the same way.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from huey import Huey, RedisHuey, SqliteHuey
from huey.api import TaskWrapper

from backend.config import Settings

TASK_NAME = "samx.run_job"
Executor = Callable[[Settings, int], None]
# Set by the worker (backend.jobs.worker) before it consumes: the transport carries ids and
# knows nothing of how a job runs.
_executor: Executor | None = None
log = logging.getLogger("samx.jobs")


@dataclass(frozen=True)
class Transport:
    huey: Huey
    run_job: TaskWrapper  # calling it enqueues


@lru_cache(maxsize=8)
def get_transport(settings: Settings) -> Transport:
    if settings.queue_url.startswith(("redis://", "rediss://", "unix://")):
        huey: Huey = RedisHuey("samx", url=settings.queue_url, results=False)
    else:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        huey = SqliteHuey("samx", filename=str(settings.queue_file), results=False, timeout=30)

    def run_job(job_id: int) -> None:
        if _executor is None:
            raise RuntimeError("this process runs no jobs: start a worker with `samx worker`")
        _executor(settings, job_id)

    return Transport(huey, huey.task(name=TASK_NAME, retries=0)(run_job))


def send(settings: Settings, job_id: int) -> None:
    get_transport(settings).run_job(job_id)


def pending_count(settings: Settings) -> int:
    return get_transport(settings).huey.pending_count()


def set_executor(executor: Executor) -> None:
    global _executor
    _executor = executor
