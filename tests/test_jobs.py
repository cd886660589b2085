"""The job queue: embedded (SQLite) and Redis run the same jobs; a killed worker loses nothing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from backend.database.session import Database
from backend.jobs import enqueue, reap_stale, retry
from backend.database.schema import Image, ImageStatus, Job, JobStatus
from tests.conftest import make_settings
from tests.factories import body_like, dicom_bytes, stop_workers

SAMX = [sys.executable, "-m", "backend.cli"]


def _folder(root: Path, n: int, seed: int = 0, shape=(96, 80)) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"f{i:04d}.dcm").write_bytes(dicom_bytes(body_like(seed + i, shape)))
    return root


def _env(settings, **extra) -> dict:
    env = dict(os.environ, SAMX_DATA_DIR=str(settings.data_dir), DATABASE_URL=settings.database_url,
               SAMX_QUEUE=settings.queue_url, **extra)
    return env


def _wait(db: Database, job_ids: list[int], timeout: float = 120) -> list[Job]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.session() as s:
            jobs = [s.get(Job, j) for j in job_ids]
        if all(j.status in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled) for j in jobs):
            return jobs
        time.sleep(0.3)
    raise AssertionError(f"jobs did not finish: {[(j.id, j.status, j.done) for j in jobs]}")


def test_embedded_queue_runs_a_background_ingest(tmp_path: Path, sqlite_db: Database):
    db = sqlite_db
    folder = _folder(tmp_path / "in", 5)
    job = enqueue(db, "ingest", {"paths": [str(folder)], "workers": 1})
    with db.session() as s:
        assert s.get(Job, job.id).status == JobStatus.queued
    out = subprocess.run(SAMX + ["worker", "--burst"], env=_env(db.settings), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (done,) = _wait(db, [job.id], timeout=5)
    assert done.status == JobStatus.succeeded, done.error
    assert done.result["imported"] == 5 and done.done == done.total == 5 and done.progress == 1.0
    assert done.attempts == 1 and done.started_at and done.finished_at


def test_redis_queue_with_two_workers(tmp_path: Path, postgres_url: str, redis_url: str):
    settings = make_settings(tmp_path / "data", postgres_url, queue_url=redis_url)
    db = Database(settings)
    db.upgrade()
    folders = [_folder(tmp_path / f"in{k}", 4, seed=100 * k) for k in range(3)]
    folders.insert(1, folders[0])  # two workers race over the same files at once
    jobs = [enqueue(db, "ingest", {"paths": [str(f)], "workers": 1}) for f in folders]
    workers = [subprocess.Popen(SAMX + ["worker"], env=_env(settings), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True) for _ in range(2)]
    try:
        finished = _wait(db, [j.id for j in jobs], timeout=240)
    finally:
        stop_workers(workers)
    assert [j.status for j in finished] == [JobStatus.succeeded] * 4, [j.error for j in finished]
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 12
    assert sum(j.result["imported"] for j in finished) == 12
    assert all(j.result["imported"] + j.result["duplicate"] == 4 for j in finished)
    db.dispose()


def test_killed_worker_leaves_consistent_rows_and_the_retry_finishes(tmp_path: Path, sqlite_db: Database):
    db = sqlite_db
    n = 120
    folder = _folder(tmp_path / "in", n, shape=(600, 500))
    job = enqueue(db, "ingest", {"paths": [str(folder)], "workers": 1})
    worker = subprocess.Popen(SAMX + ["worker"], env=_env(db.settings), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with db.session() as s:
                imported = s.scalar(select(func.count()).select_from(Image))
            if imported >= 10:
                break
            time.sleep(0.1)
        os.killpg(worker.pid, signal.SIGKILL)  # kill -9, mid-ingest
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    with db.session() as s:
        killed = s.get(Job, job.id)
        rows = s.scalars(select(Image)).all()
    assert killed.status == JobStatus.running and 10 <= len(rows) < n, (killed.status, len(rows))
    for img in rows:  # every committed row is whole: its files are on disk and decode
        assert img.status == ImageStatus.imported
        assert (db.settings.data_dir / img.store_path).stat().st_size > 0
        assert (db.settings.data_dir / img.thumbnail_path).stat().st_size > 0

    assert reap_stale(db, stale_after=timedelta(hours=1)) == []  # a fresh heartbeat is not stale
    assert reap_stale(db, stale_after=timedelta(0), requeue=False) == [job.id]
    with db.session() as s:
        failed = s.get(Job, job.id)
    assert failed.status == JobStatus.failed and "stopped without finishing" in failed.error

    retry(db, job.id)
    out = subprocess.run(SAMX + ["worker", "--burst"], env=_env(db.settings), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    with db.session() as s:
        done = s.get(Job, job.id)
        assert s.scalar(select(func.count()).select_from(Image)) == n
        assert s.scalar(select(func.count(func.distinct(Image.content_hash)))) == n
    assert done.status == JobStatus.succeeded and done.attempts == 2
    assert done.result["duplicate"] == len(rows) and done.result["imported"] == n - len(rows)


def test_unknown_job_kind_is_refused(sqlite_db: Database):
    from backend.jobs import JobFailed

    with pytest.raises(JobFailed):
        enqueue(sqlite_db, "no-such-kind", {}, send=False)


def test_cancelled_queued_job_never_runs(sqlite_db: Database, tmp_path: Path):
    from backend.jobs import cancel, execute

    job = enqueue(sqlite_db, "ingest", {"paths": [str(_folder(tmp_path / "in", 2))]}, send=False)
    cancel(sqlite_db, job.id)
    assert execute(sqlite_db, job.id) is None
    with sqlite_db.session() as s:
        assert s.get(Job, job.id).status == JobStatus.cancelled
        assert s.scalar(select(func.count()).select_from(Image)) == 0
