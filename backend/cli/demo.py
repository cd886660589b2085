"""`samx demo` (`make demo`): the whole loop on phantoms or your radiographs."""
from __future__ import annotations

from pathlib import Path

import click

from backend.config import Settings
from backend.cli.app import main, open_db, pass_settings


@main.command()
@click.option("--data", "data", type=click.Path(exists=True, file_okay=False), envvar="SAMX_DATA",
              help="Your radiographs instead of phantoms (no simulated naming or first models then).")
@click.option("--n", "n", type=int, default=240, show_default=True, help="Phantoms to generate.")
@click.option("--cluster-epochs", type=int, default=20, show_default=True)
@click.option("--sorter-epochs", type=int, default=8, show_default=True, help="The first sorter's.")
@click.option("--detector-epochs", type=int, default=6, show_default=True, help="The first detector's.")
@click.option("--web-port", type=int, default=5000, show_default=True)
@click.option("--ml-port", type=int, default=9090, show_default=True)
@click.option("--no-label-studio", is_flag=True, help="Do not start Label Studio.")
@pass_settings
def demo(settings: Settings, data: str | None, n: int, cluster_epochs: int, sorter_epochs: int, detector_epochs: int,
         web_port: int, ml_port: int, no_label_studio: bool) -> None:
    """The whole loop on this machine: ingest, cluster, first sorter and detector, then the
    worker, ML backend, web app and Label Studio until Ctrl-C. A second run reuses everything."""
    from backend.demo.pipeline import DemoOptions, prepare, serve
    from backend.database.users import first_admin

    db = open_db(settings)
    first_admin(settings, db)
    opts = DemoOptions(data=Path(data).resolve() if data else None, n=n, cluster_epochs=cluster_epochs,
                       sorter_epochs=sorter_epochs, detector_epochs=detector_epochs, web_port=web_port,
                       ml_port=ml_port, label_studio=not no_label_studio)
    try:
        prepare(settings, db, opts, click.echo)
        serve(settings, db, opts, click.echo)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
