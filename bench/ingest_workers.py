"""Sharded ingest (`samx ingest --background --shard-size N`) with 1, 2 and 4 `samx worker`
processes on Redis and PostgreSQL: files/s from queuing the parent job until every shard is done
(the workers are started and idle before). Each run gets a fresh database and Redis db index.

    python bench/ingest_workers.py [--n 120] [--size 256] [--shard-size 10] [--workers 1,2,4]

Needs PostgreSQL (SAMX_BENCH_POSTGRES_URL, default postgresql+psycopg://postgres@127.0.0.1:5432/postgres)
and Redis (SAMX_BENCH_REDIS_URL, default redis://127.0.0.1:6379/13, flushed).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cached_phantoms import cached_phantoms  # noqa: E402
from tests.factories import stop_workers  # noqa: E402

PG = os.environ.get("SAMX_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("SAMX_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
SAMX = [sys.executable, "-m", "backend.cli"]


def one_run(folder: Path, n_workers: int, shard_size: int) -> float:
    import redis
    from sqlalchemy import create_engine, select, text
    from sqlalchemy.engine import make_url

    import backend.cli.job_kinds  # noqa: F401
    from backend.config import Settings
    from backend.database.schema import Job, JobStatus
    from backend.database.session import Database
    from backend.jobs import enqueue
    from backend.jobs.params import IngestParams

    name = f"samx_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    client = redis.Redis.from_url(REDIS)
    client.flushdb()
    workers: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        url = make_url(PG).set(database=name).render_as_string(hide_password=False)
        settings = Settings(data_dir=Path(tmp).resolve(), database_url=url, queue_url=REDIS)
        db = Database(settings)
        db.upgrade()
        env = dict(os.environ, SAMX_DATA_DIR=tmp, DATABASE_URL=url, SAMX_QUEUE=REDIS)
        try:
            workers = [subprocess.Popen(SAMX + ["worker"], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True) for _ in range(n_workers)]
            time.sleep(4)  # let them start and wait on the queue
            t = time.perf_counter()
            parent = enqueue(db, "ingest", IngestParams(paths=(str(folder),), workers=1, shard_size=shard_size))
            while True:
                with db.session() as s:
                    jobs = s.scalars(select(Job)).all()
                if len(jobs) > 1 and all(j.status in (JobStatus.succeeded, JobStatus.failed) for j in jobs):
                    break
                time.sleep(0.1)
            seconds = time.perf_counter() - t
            with db.session() as s:
                files = s.get(Job, parent.id).result["files"]
                assert all(j.status == JobStatus.succeeded for j in s.scalars(select(Job))), "a job failed"
        finally:
            stop_workers(workers)
            db.dispose()
            client.flushdb()
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    return files / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--shard-size", type=int, default=10)
    ap.add_argument("--workers", default="1,2,4")
    a = ap.parse_args()
    folder = cached_phantoms(f"phantoms-dcm-{a.n}-{a.size}", a.n, seed=1, fmt="dcm", size=a.size) / "images"
    counts = [int(w) for w in a.workers.split(",")]
    rates = {}
    for n in counts:
        rates[n] = one_run(folder, n, a.shard_size)
        print(f"{n} worker(s): {rates[n]:.1f} files/s  ({a.n} files, shards of {a.shard_size}, {os.cpu_count()} cores)",
              flush=True)
    print("RESULT " + " ".join(f"workers_{n}={rates[n]:.1f}" for n in counts))


if __name__ == "__main__":
    main()
