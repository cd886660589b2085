"""The ``samx`` command line: one module per command group; importing this package registers
them all, and every job kind's handler."""
from backend.cli import (  # noqa: F401  # each module adds its commands to ``main``
    datasets,
    demo,
    images,
    jobs,
    job_kinds,
    labelstudio,
    models,
    pacs,
    servers,
    setup,
)
from backend.cli.app import main, run

__all__ = ["main", "run"]
