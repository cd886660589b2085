"""Serve a Flask app with gunicorn (the production WSGI server) from inside ``samx``.

gunicorn's own command line cannot take our Settings object, so this is its documented
"custom application": the app is built by ``factory`` in each worker process after the fork
(no database connection or background thread crosses a fork), ``on_exit`` runs in the worker
when it stops."""
from __future__ import annotations

from collections.abc import Callable

from flask import Flask
from gunicorn.app.base import BaseApplication


class _Gunicorn(BaseApplication):
    def __init__(self, factory: Callable[[], Flask], options: dict):
        self.factory, self.options = factory, options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.factory()


def run_gunicorn(factory: Callable[[], Flask], host: str, port: int, *, workers: int = 2, threads: int = 4,
                 timeout: int = 120, on_exit: Callable[[], None] | None = None) -> None:
    """Blocks until SIGTERM/SIGINT. ``timeout``: seconds a request may take before its worker is
    replaced (the ML backend's /predict on a large image takes seconds, not minutes)."""
    options = {"bind": f"{host}:{port}", "workers": workers, "threads": threads, "worker_class": "gthread",
               "timeout": timeout, "graceful_timeout": 30, "accesslog": "-", "errorlog": "-", "proc_name": "samx"}
    if on_exit is not None:
        options["worker_exit"] = lambda _server, _worker: on_exit()
    _Gunicorn(factory, options).run()
