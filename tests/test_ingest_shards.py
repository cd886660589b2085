"""One ingest split into shard jobs that several `samx worker` processes share over Redis: a
worker killed with ``kill -9`` mid-shard loses and doubles nothing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from backend.database.schema import Image, ImageStatus, Job, JobStatus
from backend.database.session import Database
from backend.jobs import enqueue, reap_stale
from backend.jobs.params import IngestParams
from tests.conftest import make_settings
from tests.factories import stop_workers

SAMX = [sys.executable, "-m", "backend.cli"]
FILES, SHARD = 40, 5
FINISHED = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


def _env(settings) -> dict:
    return dict(os.environ, SAMX_DATA_DIR=str(settings.data_dir), DATABASE_URL=settings.database_url,
                SAMX_QUEUE=settings.queue_url)


def _start_worker(settings, log: Path) -> subprocess.Popen:
    return subprocess.Popen(SAMX + ["worker"], env=_env(settings), stdout=subprocess.DEVNULL,
                            stderr=log.open("ab"), start_new_session=True)


def _jobs(db: Database) -> list[Job]:
    with db.session() as s:
        return list(s.scalars(select(Job).order_by(Job.id)))


def _until(what: str, check, timeout: float, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_shards_shared_by_two_workers_survive_a_killed_worker(tmp_path: Path, postgres_url: str, redis_url: str):
    from imaging.phantoms import generate_phantoms

    generate_phantoms(tmp_path / "ph", FILES, seed=3, fmt="dcm", size=384, workers=1)
    folder = tmp_path / "ph" / "images"
    assert len(list(folder.rglob("*.dcm"))) == FILES
    settings = make_settings(tmp_path / "data", postgres_url, queue_url=redis_url)  # redis_url: its own db index, flushed
    db = Database(settings)
    db.upgrade()
    parent = enqueue(db, "ingest", IngestParams(paths=(str(folder),), workers=1, shard_size=SHARD))
    log = tmp_path / "workers.log"
    workers = [_start_worker(settings, log) for _ in range(2)]
    try:
        def running_shard():
            for j in _jobs(db):
                if j.params.get("parent") == parent.id and j.status == JobStatus.running and j.worker:
                    return j
            return None

        victim = _until("a worker to start a shard", running_shard, timeout=180, every=0.02)
        pid = int(victim.worker.split(":")[1])
        (dead,) = [w for w in workers if w.pid == pid]
        os.killpg(dead.pid, signal.SIGKILL)  # kill -9, mid-shard
        dead.wait(timeout=10)
        with db.session() as s:
            killed = s.get(Job, victim.id)
        assert killed.status == JobStatus.running, "the shard finished before the kill"

        # The other worker finishes every other shard; the dead one's stays running, heartbeat frozen.
        def others_done():
            jobs = _jobs(db)
            return all(j.status in FINISHED for j in jobs if j.id != victim.id) and len(jobs) == 1 + FILES // SHARD
        _until("the other shards", others_done, timeout=240, every=0.3)
        workers.append(_start_worker(settings, log))  # a replacement for the dead worker

        # The product's reaping (every live worker runs it each 30 s, with a 60 s cut-off) queues the
        # silent shard again; called here with a shorter cut-off that no live job's heartbeat exceeds.
        def frozen():
            with db.session() as s:
                j = s.get(Job, victim.id)
            return j.status != JobStatus.running or j.heartbeat_at < datetime.now(timezone.utc) - timedelta(seconds=15)
        _until("the dead worker's heartbeat to go stale", frozen, timeout=60, every=0.5)
        reaped = reap_stale(db, stale_after=timedelta(seconds=15))
        assert reaped in ([victim.id], [])  # [] only if a worker's own reaping came first

        _until("every job to finish", lambda: all(j.status in FINISHED for j in _jobs(db)), timeout=180, every=0.3)
        out = subprocess.run(SAMX + ["jobs", "show", str(parent.id)], env=_env(settings), capture_output=True,
                             text=True, timeout=120)
    finally:
        stop_workers(workers)

    jobs = {j.id: j for j in _jobs(db)}
    assert [j.status for j in jobs.values()] == [JobStatus.succeeded] * len(jobs), \
        [(j.id, j.status, j.error) for j in jobs.values()]
    top = jobs[parent.id]
    assert top.result["files"] == FILES and top.result["shards"] == FILES // SHARD
    shards = [jobs[i] for i in top.result["shard_jobs"]]
    assert sorted(j.id for j in shards) == sorted(i for i in jobs if i != parent.id)
    assert all(len(j.params["paths"]) == SHARD and j.params["parent"] == parent.id for j in shards)
    assert len({p for j in shards for p in j.params["paths"]}) == FILES  # every file in exactly one shard
    assert jobs[victim.id].attempts == 2 and all(j.attempts == 1 for j in shards if j.id != victim.id)
    # Every file imported exactly once: what the killed attempt committed, the retry found as duplicates.
    assert sum(j.result["files"] for j in shards) == FILES
    assert sum(j.result["imported"] + j.result["duplicate"] for j in shards) == FILES
    assert sum(j.result["rejected"] for j in shards) == 0
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == FILES
        assert s.scalar(select(func.count(func.distinct(Image.content_hash)))) == FILES
        assert s.scalar(select(func.count()).select_from(Image).where(Image.status != ImageStatus.imported)) == 0
        assert set(s.scalars(select(Image.ingest_job_id))) <= {j.id for j in shards}

    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout.split("\n", 1)[1])
    assert shown["shards"]["status"] == {"succeeded": FILES // SHARD}
    assert shown["shards"]["result"]["files"] == FILES and shown["shards"]["done"] == FILES
    db.dispose()


def test_a_parent_run_again_queues_its_shards_once(tmp_path: Path, sqlite_db: Database):
    """A worker killed while splitting: the parent, queued again, sends the shards it recorded
    instead of making a second set."""
    from backend.jobs import execute

    db = sqlite_db
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(7):
        (folder / f"f{i}.bin").write_bytes(b"x" * i)
    parent = enqueue(db, "ingest", IngestParams(paths=(str(folder),), workers=1, shard_size=3), send=False)
    first = execute(db, parent.id)
    assert first.status == JobStatus.succeeded, first.error
    assert first.result["shards"] == 3 and first.result["files"] == 7
    with db.session() as s:  # as reap_stale does for a dead worker's job
        s.get(Job, parent.id).status = JobStatus.queued
    again = execute(db, parent.id)
    assert again.result["shard_jobs"] == first.result["shard_jobs"] and again.result["files"] == 7
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1 + 3
        sizes = [len(p["paths"]) for p in s.scalars(select(Job.params).where(Job.id != parent.id).order_by(Job.id))]
    assert sizes == [3, 3, 1]

    from backend.jobs import cancel

    cancel(db, parent.id)  # cancelling the parent cancels its unfinished shards
    with db.session() as s:
        assert {j.status for j in s.scalars(select(Job).where(Job.id != parent.id))} == {JobStatus.cancelled}


def test_shard_size_needs_background(tmp_path: Path):
    from click.testing import CliRunner

    from backend.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    result = CliRunner().invoke(main, ["ingest", str(folder), "--shard-size", "5"],
                                env={"SAMX_DATA_DIR": str(tmp_path / "data")})
    assert result.exit_code != 0 and "--background" in result.output
