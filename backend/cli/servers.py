"""`samx serve` (the web app) and `samx ml-backend` (Label Studio's ML backend)."""
from __future__ import annotations

import logging

import click

from backend.config import Settings
from backend.cli.app import main, open_db, pass_settings
from backend.cli.wsgi_server import run_gunicorn
from backend.database.session import Database

log = logging.getLogger("samx.ml_backend")

SERVER = click.option("--server", type=click.Choice(["werkzeug", "gunicorn"]), default="werkzeug", show_default=True,
                      help="werkzeug: one threaded process, for one machine; gunicorn: the production WSGI server.")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--port", type=int, default=5000, show_default=True)
@SERVER
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="gunicorn worker processes.")
@click.option("--threads", type=click.IntRange(1), default=4, show_default=True, help="Threads per gunicorn worker.")
@pass_settings
def serve(settings: Settings, host: str, port: int, server: str, workers: int, threads: int) -> None:
    """Run the cluster-naming web app (put a proxy in front for TLS)."""
    from backend.web import create_app

    open_db(settings).dispose()  # schema and vocabulary up to date before the first request
    click.echo(f"samx web app on http://{host}:{port}/  ({server}; data directory {settings.data_dir})", err=True)
    if server == "gunicorn":
        run_gunicorn(lambda: create_app(settings), host, port, workers=workers, threads=threads)
    else:
        create_app(settings).run(host=host, port=port, threaded=True, use_reloader=False)


@main.command("ml-backend")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=9090, show_default=True)
@SERVER
@click.option("--threads", type=click.IntRange(1), default=8, show_default=True,
              help="gunicorn request threads (one process: the model lives in it).")
@pass_settings
def ml_backend(settings: Settings, host: str, port: int, server: str, threads: int) -> None:
    """Serve Label Studio's ML-backend protocol: pre-annotations from the active detector
    (swapped in when a new version is complete), webhook events into the database, retrains
    queued for `samx worker`. Basic auth: the pair in DATA_DIR/ml-backend/credentials.json
    (or SAMX_ML_BACKEND_USER / SAMX_ML_BACKEND_PASSWORD)."""
    from ml_backend.auth import credentials

    open_db(settings)
    user, _ = credentials(settings)
    click.echo(f"ML backend on http://{host}:{port} (basic auth user {user!r}); connect it with "
               f"`samx labelstudio sync --ml-backend-url http://{host}:{port}`", err=True)
    _serve_ml_backend(settings, host, port, server=server, threads=threads)


def _serve_ml_backend(settings: Settings, host: str = "127.0.0.1", port: int = 9090, *, watch_every: float = 2.0,
                      server: str = "werkzeug", threads: int = 8) -> None:
    """``samx ml-backend`` until Ctrl-C/SIGTERM. One process either way: the model slot, its
    watcher and the webhook debounce live in it (``threads`` serve requests; gunicorn's gthread
    worker in production)."""
    from backend.detector.serving import ml_backend_service
    from ml_backend.auth import credentials
    from ml_backend.server import create_app
    from ml_backend.service import SamxBackend

    running: list[SamxBackend] = []

    def build():
        backend = ml_backend_service(settings, Database(settings)).start(watch_every)
        running.append(backend)
        log.info("ml backend on http://%s:%d serving %s", host, port, backend.model_version())
        return create_app(backend, basic_auth=credentials(settings))

    def stop():
        while running:
            running.pop().stop()

    if server == "gunicorn":
        run_gunicorn(build, host, port, workers=1, threads=threads, on_exit=stop)
        return
    from werkzeug.serving import run_simple

    try:
        run_simple(host, port, build(), threaded=True, use_reloader=False, use_debugger=False)
    finally:
        stop()
