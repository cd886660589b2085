"""Which function runs each job kind. The entry points fill it (backend.cli.job_kinds), so the
job machinery never imports the capabilities whose jobs it runs."""
from __future__ import annotations

from collections.abc import Callable

from backend.jobs.context import Handler, JobFailed

_KINDS: dict[str, Handler] = {}


def job_kind(name: str) -> Callable[[Handler], Handler]:
    """Register a handler for jobs of ``kind == name``."""

    def register(fn: Handler) -> Handler:
        _KINDS[name] = fn
        return fn

    return register


def handler(kind: str) -> Handler:
    try:
        return _KINDS[kind]
    except KeyError:
        raise JobFailed(f"unknown job kind {kind!r}") from None
