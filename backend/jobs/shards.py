"""One job split into shard jobs that every worker on the queue shares.

The parent creates its shards' rows and records their ids in its own row in one transaction, then
hands the ids to the queue. A parent run again (its worker died: :func:`reap_stale` queued it
again) finds the ids it recorded and only sends those still queued once more; a second message
for a queued id is harmless, since one claim wins. A shard whose worker dies is an ordinary
running job without a heartbeat: the same reaping queues it again.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import select, update

from backend.database.schema import Job, JobStatus, utcnow
from backend.database.session import Database
from backend.jobs.params import JobParams
from backend.jobs.queue import send as send_to_queue

#: The key of a parent's ``result`` (while it runs and once it is done) listing its shard jobs.
SHARDS_KEY = "shard_jobs"


def spawn_shards(db: Database, parent_id: int, make: Callable[[], Sequence[JobParams]]) -> list[int]:
    """Queue the shard jobs ``make()`` describes, once per parent: their ids, in order."""
    with db.session() as s:
        parent = s.get(Job, parent_id)
        ids = [int(i) for i in (parent.result or {}).get(SHARDS_KEY) or []]
        if not ids:
            rows = [Job(kind=p.kind, params=p.to_json(), status=JobStatus.queued) for p in make()]
            s.add_all(rows)
            s.flush()
            ids = [r.id for r in rows]
            parent.result = {**(parent.result or {}), SHARDS_KEY: ids}
    with db.session() as s:
        queued = set(s.scalars(select(Job.id).where(Job.id.in_(ids), Job.status == JobStatus.queued)))
    for job_id in ids:
        if job_id in queued:
            send_to_queue(db.settings, job_id)
    return ids


def shard_ids(job: Job) -> list[int]:
    return [int(i) for i in (job.result or {}).get(SHARDS_KEY) or []]


def shard_summary(db: Database, ids: Sequence[int]) -> dict[str, Any]:
    """The shards' states, progress and their results' counts added up (the integer fields the
    finished ones share: files, imported, duplicate, ...)."""
    with db.session() as s:
        rows = s.scalars(select(Job).where(Job.id.in_(list(ids)))).all()
    status = Counter(r.status.value for r in rows)
    totals: Counter = Counter()
    by_reason: Counter = Counter()
    for r in rows:
        if r.status != JobStatus.succeeded:
            continue
        for key, value in (r.result or {}).items():
            if isinstance(value, int) and not isinstance(value, bool):
                totals[key] += value
            elif isinstance(value, dict) and key.endswith("_by_reason"):
                by_reason.update({k: v for k, v in value.items() if isinstance(v, int)})
    return {"shards": len(rows), "status": dict(status),
            "done": sum(r.done or 0 for r in rows),
            # a shard not started yet: its own list of items (an ingest shard's files)
            "total": sum(r.total or len((r.params or {}).get("paths") or []) for r in rows),
            "attempts": sum(r.attempts for r in rows),
            "result": dict(totals), "rejected_by_reason": dict(by_reason)}


def cancel_shards(db: Database, parent: Job) -> int:
    """Cancel the parent's shards that have not finished; how many."""
    ids = shard_ids(parent)
    if not ids:
        return 0
    with db.session() as s:
        return s.execute(update(Job).where(Job.id.in_(ids), Job.status.in_([JobStatus.queued, JobStatus.running]))
                         .values(status=JobStatus.cancelled, finished_at=utcnow(), error="cancelled")).rowcount
