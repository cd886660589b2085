"""Background jobs: state in the database (``Job`` rows), transport in Huey (SQLite or Redis)."""
from backend.jobs.context import JobContext, JobFailed
from backend.jobs.registry import job_kind
from backend.jobs.runner import cancel, enqueue, execute, reap_stale, retry

__all__ = ["JobContext", "JobFailed", "cancel", "enqueue", "execute", "job_kind", "reap_stale", "retry"]
