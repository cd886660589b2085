"""`samx jobs` and `samx worker`: background jobs."""
from __future__ import annotations

import json

import click

from backend.config import Settings
from backend.cli.app import main, open_db, pass_settings


@main.group(invoke_without_command=True)
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]))
@click.option("--limit", type=int, default=20, show_default=True)
@click.pass_context
def jobs(ctx: click.Context, status: str | None, limit: int) -> None:
    """List background jobs (subcommands: show, retry, cancel)."""
    if ctx.invoked_subcommand is not None:
        return
    from sqlalchemy import select

    from backend.jobs import reap_stale
    from backend.database.schema import Job

    db = open_db(ctx.obj)
    reap_stale(db)
    with db.session() as s:
        q = select(Job).order_by(Job.id.desc()).limit(limit)
        if status:
            q = q.where(Job.status == status)
        rows = s.scalars(q).all()
    if not rows:
        click.echo("no jobs")
    from backend.jobs.shards import shard_ids, shard_summary

    for j in rows:
        ids = shard_ids(j)
        click.echo(_job_line(j, shard_summary(db, ids) if ids else None))


def _job_line(j, shards: dict | None = None) -> str:
    progress = f"{j.done}/{j.total}" if j.total else str(j.done or "")
    if shards is not None:  # a split job: its shards' progress
        states = ", ".join(f"{n} {state}" for state, n in sorted(shards["status"].items()))
        return (f"{j.id:>5}  {j.kind:<10} {j.status.value:<10} {shards['done']:>5}/{shards['total']:<6}  "
                f"{j.created_at:%Y-%m-%d %H:%M}  {shards['shards']} shards: {states}")
    return f"{j.id:>5}  {j.kind:<10} {j.status.value:<10} {progress:>12}  {j.created_at:%Y-%m-%d %H:%M}  {j.error or j.message or ''}"


@jobs.command("show")
@click.argument("job_id", type=int)
@pass_settings
def jobs_show(settings: Settings, job_id: int) -> None:
    """One job with its parameters, progress and result."""
    from backend.database.schema import Job

    db = open_db(settings)
    with db.session() as s:
        j = s.get(Job, job_id)
    if j is None:
        raise click.ClickException(f"no job {job_id}")
    from backend.jobs.shards import shard_ids, shard_summary

    ids = shard_ids(j)
    shards = shard_summary(db, ids) if ids else None
    click.echo(_job_line(j, shards))
    shown = {"params": j.params, "result": j.result, "attempts": j.attempts, "worker": j.worker,
             "progress": j.progress, "error": j.error}
    if shards is not None:
        shown["shards"] = shards
    click.echo(json.dumps(shown, indent=2, default=str))


@jobs.command("retry")
@click.argument("job_id", type=int)
@pass_settings
def jobs_retry(settings: Settings, job_id: int) -> None:
    """Queue a failed or cancelled job again (it resumes: finished work is not repeated)."""
    from backend.jobs import JobFailed, retry

    try:
        retry(open_db(settings), job_id)
    except JobFailed as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"job {job_id} queued again; `samx worker` runs it")


@jobs.command("cancel")
@click.argument("job_id", type=int)
@pass_settings
def jobs_cancel(settings: Settings, job_id: int) -> None:
    from backend.jobs import JobFailed, cancel

    try:
        j = cancel(open_db(settings), job_id)
    except JobFailed as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(_job_line(j))


@main.command()
@click.option("--workers", type=int, default=1, show_default=True, help="Processes in this worker.")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@pass_settings
def worker(settings: Settings, workers: int, burst: bool) -> None:
    """Run queued jobs (embedded SQLite queue by default; Redis with SAMX_QUEUE=redis://...)."""
    from backend.jobs import reap_stale
    from backend.jobs.worker import run_worker

    db = open_db(settings)
    reaped = reap_stale(db)
    if reaped:
        click.echo(f"found jobs of a dead worker: {reaped}")
    db.dispose()
    click.echo(f"worker on {settings.queue_url if settings.queue_url != 'sqlite' else settings.queue_file}", err=True)
    run_worker(settings, workers, burst=burst)
