"""Background jobs: state in the database (``Job`` rows), transport in Huey (SQLite or Redis)."""
from backend.jobs.runner import JobContext, JobFailed, cancel, enqueue, execute, job_kind, reap_stale, retry

__all__ = ["JobContext", "JobFailed", "cancel", "enqueue", "execute", "job_kind", "reap_stale", "retry"]
