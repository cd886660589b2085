"""`samx labelstudio`: the Label Studio server samx runs, and its project."""
from __future__ import annotations

import sys

import click
from tqdm import tqdm

from backend.config import Settings
from backend.cli.app import main, open_db, pass_settings


@main.group()
def labelstudio() -> None:
    """Label Studio for lesion boxes: up, down, status, sync."""


@labelstudio.command("up")
@click.option("--timeout", type=float, default=300, show_default=True,
              help="Seconds to wait for it to answer (the first start creates its database).")
@pass_settings
def labelstudio_up(settings: Settings, timeout: float) -> None:
    """Start Label Studio in the background (its data in DATA_DIR/labelstudio, its own SQLite
    database, log in DATA_DIR/logs/labelstudio.log) and wait until it answers. Running
    already: nothing happens. The admin account is generated once (DATA_DIR/labelstudio/
    credentials.json) unless SAMX_LABEL_STUDIO_USERNAME/PASSWORD/TOKEN are set."""
    from backend.labelstudio.process import LabelStudioError, credentials_file, up

    settings.ensure_dirs()
    try:
        r = up(settings, timeout=timeout, echo=lambda msg: click.echo(msg, err=True))
    except LabelStudioError as exc:
        raise click.ClickException(str(exc)) from None
    if r.started:
        click.echo(f"Label Studio is up on {r.url} (pid {r.pid}, ready in {r.seconds:.0f} s)")
    else:
        click.echo(f"Label Studio is already running on {r.url}" + (f" (pid {r.pid})" if r.pid else ""))
    if r.username and not settings.label_studio_password:
        click.echo(f"log in as {r.username}; password and API token in {credentials_file(settings)}")
    click.echo("next: `samx labelstudio sync` creates the lesion project and imports the images")


@labelstudio.command("down")
@pass_settings
def labelstudio_down(settings: Settings) -> None:
    """Stop the Label Studio that `samx labelstudio up` started."""
    from backend.labelstudio.process import down

    pid = down(settings)
    click.echo(f"Label Studio (pid {pid}) stopped" if pid else "Label Studio was not running")


@labelstudio.command("status")
@pass_settings
def labelstudio_status(settings: Settings) -> None:
    """Whether Label Studio runs, where, and the lesion project samx synced last."""
    from backend.labelstudio.process import log_file, status
    from backend.labelstudio.sync import load_state

    st = status(settings)
    if st.external:
        click.echo(f"external Label Studio {st.url}: {'up' if st.healthy else 'NOT answering'}")
    elif st.pid is None:
        click.echo(f"Label Studio is not running (start it with `samx labelstudio up`); log: {log_file(settings)}")
    else:
        click.echo(f"Label Studio pid {st.pid} on {st.url}: {'healthy' if st.healthy else 'NOT answering /health'}")
    state = load_state(settings)
    if state.get("project_id"):
        click.echo(f"project {state['project_id']} ({state.get('title')}): {len(state.get('tasks', {}))} samx images "
                   f"as tasks at the last sync; {state.get('url')}/projects/{state['project_id']}/data")
    if not st.running:
        sys.exit(1)


@labelstudio.command("sync")
@click.option("--classes", help="Lesion classes, comma-separated, or a preset: vindr-spinexr, bone-tumour "
                                "(default: SAMX_LESION_CLASSES, else the vocabulary's lesion labels).")
@click.option("--ml-backend-url", envvar="SAMX_ML_BACKEND_URL",
              help="Connect this ML backend (e.g. http://127.0.0.1:9090) and its /webhook to the project.")
@click.option("--ml-backend-user", envvar="SAMX_ML_BACKEND_USER",
              help="Basic-auth user of the ML backend (default: the pair it generated in DATA_DIR/ml-backend).")
@click.option("--ml-backend-password", envvar="SAMX_ML_BACKEND_PASSWORD", help="Its password.")
@click.option("--title", default=None, help="Project title (default: samx lesions).")
@click.option("--batch-size", type=int, default=500, show_default=True, help="Tasks per import request.")
@click.option("--workers", type=int, default=None, help="Threads that write the display images.")
@pass_settings
def labelstudio_sync(settings: Settings, classes: str | None, ml_backend_url: str | None,
                     ml_backend_user: str | None, ml_backend_password: str | None, title: str | None,
                     batch_size: int, workers: int | None) -> None:
    """Create or update the lesion project in Label Studio and import every image not yet there
    as a task (display rendition: 8-bit, foreground-equalised, full resolution). Re-running adds
    only what is missing."""
    from ml_backend.labeling_config import PROJECT_TITLE
    from backend.labelstudio.process import LabelStudioError
    from backend.labelstudio.sync import sync

    db = open_db(settings)
    with tqdm(desc="tasks", unit="img", disable=None) as bar:
        def on_progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            auth = (ml_backend_user, ml_backend_password) if ml_backend_user and ml_backend_password else None
            r = sync(db, classes=classes, ml_backend_url=ml_backend_url, ml_backend_auth=auth, title=title or PROJECT_TITLE,
                     batch_size=batch_size, workers=workers, progress=on_progress)
        except (LabelStudioError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"project {r.project_id} '{r.title}' ({'created' if r.created_project else 'config updated' if r.config_updated else 'unchanged'}): "
               f"{r.project_url}")
    click.echo(f"lesion classes: {', '.join(r.lesion_classes)}")
    click.echo(f"{r.images} images: {r.imported} imported as tasks, {r.skipped} already there"
               + (f"; {r.discarded} discarded (not MSK) left out" if r.discarded else "")
               + f"; {r.tasks_in_project} tasks in the project ({r.seconds:.1f} s)")
    if r.ml_backend_url:
        if r.ml_error:
            raise click.ClickException(f"ML backend not connected: {r.ml_error}")
        click.echo(f"ML backend {r.ml_backend_url} (id {r.ml_backend_id}) {'connected' if r.ml_backend_created else 'already connected'}"
                   + ("; webhook added" if r.webhook_created else ""))
