"""The transport: which Huey a Settings means, and the one task it carries (a job id).

Carrying only the id keeps every job's state in our database, so SQLite-embedded and Redis
deployments run the same task code and show progress the same way.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import lru_cache

from huey import Huey, RedisHuey, SqliteHuey
from huey.api import TaskWrapper

from backend.config import Settings

TASK_NAME = "samx.run_job"
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
        from backend.jobs.runner import execute_in_worker

        execute_in_worker(settings, job_id)

    return Transport(huey, huey.task(name=TASK_NAME, retries=0)(run_job))


def send(settings: Settings, job_id: int) -> None:
    get_transport(settings).run_job(job_id)


def pending_count(settings: Settings) -> int:
    return get_transport(settings).huey.pending_count()


def run_worker(settings: Settings, workers: int = 1, *, burst: bool = False) -> None:
    """Block consuming jobs. ``burst``: stop once the queue is empty (tests, ``make demo``)."""
    from huey.consumer import Consumer

    huey = get_transport(settings).huey
    if burst:
        while True:
            task = huey.dequeue()
            if task is None:
                return
            huey.execute(task)
    stop = threading.Event()
    threading.Thread(target=_reap_forever, args=(settings, stop), daemon=True).start()
    try:
        Consumer(huey, workers=workers, worker_type="process" if workers > 1 else "thread",
                 periodic=False, check_worker_health=True).run()
    finally:
        stop.set()


def _reap_forever(settings: Settings, stop: threading.Event, every: float = 30.0) -> None:
    """Live workers pick up the jobs of a dead one (another machine's, too)."""
    from backend.db import Database
    from backend.jobs.runner import reap_stale

    db = Database(settings)
    while not stop.wait(every):
        try:
            reap_stale(db)
        except Exception:  # the database being briefly away must not kill the worker
            log.warning("reaping stale jobs failed", exc_info=True)
