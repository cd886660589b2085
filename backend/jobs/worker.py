"""The worker: consumes job ids from the queue and runs them (``samx worker``), and reaps the
jobs of workers that died."""
from __future__ import annotations

import logging
import threading

from backend.config import Settings
from backend.database.session import Database
from backend.jobs.queue import get_transport, set_executor
from backend.jobs.runner import execute_in_worker, reap_stale

log = logging.getLogger("samx.jobs")


def run_worker(settings: Settings, workers: int = 1, *, burst: bool = False) -> None:
    """Block consuming jobs. ``burst``: stop once the queue is empty (tests, ``make demo``)."""
    from huey.consumer import Consumer

    set_executor(execute_in_worker)
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
    db = Database(settings)
    while not stop.wait(every):
        try:
            reap_stale(db)
        except Exception:  # the database being briefly away must not kill the worker
            log.warning("reaping stale jobs failed", exc_info=True)
