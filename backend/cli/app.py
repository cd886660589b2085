"""The ``samx`` group and what its commands share: settings, the database, running a job here
or queueing it, torchrun."""
from __future__ import annotations

import logging
import os
import sys

import click

from backend.config import Settings
from backend.database.schema import JobKind
from backend.database.session import Database
from backend.jobs.params import JobParams


def _setup_logging(settings: Settings) -> None:
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(settings.logs_dir / "samx.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(process)d: %(message)s"))
    root = logging.getLogger()
    if not any(isinstance(h, logging.FileHandler) for h in root.handlers):
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def open_db(settings: Settings) -> Database:
    """Every command that needs the database gets an up-to-date schema first (idempotent)."""
    settings.ensure_dirs()
    _setup_logging(settings)
    db = Database(settings)
    db.upgrade()
    db.seed_vocabulary()
    return db


@click.group()
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="SAMX_DATA_DIR",
              help="Where samx keeps its database, images and models (default ./samx-data).")
@click.pass_context
def main(ctx: click.Context, data_dir: str | None) -> None:
    """samx: human-in-the-loop labeling for musculoskeletal radiographs."""
    ctx.obj = Settings.from_env(data_dir)
    if under_torchrun():
        _join_torchrun(ctx)


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1  # what torchrun sets; read without importing torch


#: What runs on several GPUs under torchrun: DeepCluster (`samx cluster`), the sorter and the lesion
#: detector (`samx train sorter`, `samx train detector`).
TORCHRUN_COMMANDS = ("cluster", "train")


def _join_torchrun(ctx: click.Context) -> None:
    """Started by torchrun: rank 0 runs the command as usual, and every other rank trains
    alongside it (training.distributed) and exits when it is done. The followers never open
    the database: rank 0 alone migrates, reads and writes it."""
    if ctx.invoked_subcommand not in TORCHRUN_COMMANDS:
        raise click.UsageError("under torchrun samx runs `samx cluster`, `samx train sorter` and "
                               f"`samx train detector`; run `samx {ctx.invoked_subcommand}` as one process")
    from training import distributed

    _setup_logging(ctx.obj)
    distributed.start()
    if not distributed.is_leader():
        distributed.follow()
        distributed.stop()
        ctx.exit(0)
    ctx.call_on_close(distributed.stop)


pass_settings = click.make_pass_decorator(Settings)


def safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def run_job(db: Database, kind: JobKind, params: JobParams, background: bool, unit: str) -> dict | None:
    """Queue the job for `samx worker` (None), or run it here with a progress bar: its result's
    JSON (the kind's result class reads it), or a clear error."""
    from backend.jobs import enqueue, execute
    from backend.jobs.progress_bar import progress_bar
    from backend.database.schema import JobStatus

    if background and under_torchrun():
        raise click.UsageError("--background queues the job for `samx worker`; under torchrun every process trains here")
    job = enqueue(db, kind, params, send=background)
    if background:
        click.echo(f"queued job {job.id}; run `samx worker` to process it, `samx jobs show {job.id}` to follow it")
        return None
    with progress_bar(kind, unit) as on_progress:
        finished = execute(db, job.id, on_progress=on_progress)
    if finished is None or finished.status != JobStatus.succeeded:
        raise click.ClickException(f"{kind} failed: {finished.error if finished else 'job could not start'}")
    return finished.result


def csv_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def run() -> None:
    """The ``samx`` script and ``python -m backend.cli``. Under torchrun a process leaves with
    ``os._exit`` once its command is done and its output flushed: after DDP has used the gloo
    group, torch keeps its threads alive past ``destroy_process_group``, and tearing them down
    with the interpreter now and then aborts a process whose work had finished (SIGABRT,
    "terminate called without an active exception"), which torchrun reports as a failure."""
    if not under_torchrun():
        main()
        return
    try:
        main()
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
