"""`samx ingest dicomweb://...` (called by `samx ingest`) and `samx listen`: radiographs from a PACS."""
from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
from datetime import datetime

import click

from backend.cli.app import csv_list, main, open_db, pass_settings, run_job
from backend.config import Settings
from backend.database.schema import JobKind
from backend.jobs.params import PullParams, PullResult


def pull_dicomweb(settings: Settings, url: str, *, plain_http: bool, since: datetime | None, modality: str | None,
                  body_part: str | None, user: str | None, password: str | None, voi: str, workers: int | None,
                  background: bool) -> None:
    from backend.pacs.dicomweb import service_url

    if plain_http != url.lower().startswith(("http://", "https://")):
        raise click.UsageError(f"{url}: give dicomweb://HOST[:PORT]/PATH, or an http(s):// URL with --dicomweb")
    try:
        http_url = service_url(url)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if password:
        settings = dataclasses.replace(settings, dicomweb_password=password)  # this process only, never the job row
    params = PullParams(url=http_url, since=since.strftime("%Y%m%d") if since else None,
                        modalities=tuple(m.upper() for m in csv_list(modality)), body_parts=tuple(csv_list(body_part)),
                        user=user, voi=voi, workers=workers)
    db = open_db(settings)
    if background and (user or settings.dicomweb_user) and password:
        click.echo("note: the worker reads the password from its own SAMX_DICOMWEB_PASSWORD", err=True)
    out = run_job(db, JobKind.pull_dicomweb, params, background, unit="instance")
    if out is None:
        return
    r = PullResult.from_json(out)
    click.echo(f"{r.url}: {r.studies} studies, {r.series} series, {r.instances} instances in {r.seconds:.1f} s "
               f"({r.studies_per_second:.2f} studies/s)")
    click.echo(f"  {r.retrieved} retrieved, {r.already_had} already had, {r.failed} failed to retrieve"
               + (f", {r.failed_studies} studies could not be listed" if r.failed_studies else ""))
    click.echo(f"  {r.imported} imported, {r.duplicate} duplicates, {r.rejected} rejected")
    for code, count in sorted(r.rejected_by_reason.items(), key=lambda kv: -kv[1]):
        click.echo(f"  rejected {count:>6}  {code}")
    if r.failed or r.failed_studies:
        click.echo("  (DATA_DIR/logs/samx.log names what the server did not deliver; the next pull asks again)")
    if r.sorter_predictions:
        click.echo(f"the active sorter predicted the region of {r.sorter_predictions} new images")


@main.command()
@click.option("--port", type=int, default=11112, show_default=True, envvar="SAMX_LISTEN_PORT")
@click.option("--host", default="0.0.0.0", show_default=True, envvar="SAMX_LISTEN_HOST",
              help="Interface to listen on.")
@click.option("--ae-title", default="SAMX", show_default=True, envvar="SAMX_LISTEN_AE_TITLE",
              help="This listener's AE title: senders must call it.")
@click.option("--allow-aet", envvar="SAMX_LISTEN_ALLOW_AET",
              help="Calling AE titles accepted, comma-separated (default: any).")
@click.option("--voi", type=click.Choice(["auto", "lut", "window", "none"]), default="auto", show_default=True)
@pass_settings
def listen(settings: Settings, port: int, host: str, ae_title: str, allow_aet: str | None, voi: str) -> None:
    """Receive radiographs a PACS or modality pushes (DICOM C-STORE; C-ECHO answered) and ingest
    each as it arrives. Runs until Ctrl-C or SIGTERM."""
    from backend.pacs.listener import Listener

    db = open_db(settings)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("samx.pacs").addHandler(console)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO is a line per PDU
    allowed = tuple(csv_list(allow_aet))
    try:
        listener = Listener(db, ae_title=ae_title, host=host, port=port, allowed=allowed, voi=voi).start()
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot listen on {host}:{port} as {ae_title}: {exc}") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"listening on {host}:{listener.port} as AE title {ae_title}; calling AE titles accepted: "
               f"{', '.join(allowed) if allowed else 'any (--allow-aet limits them)'}", err=True)
    while not stop.wait(1.0):
        pass
    listener.stop()
    counts = listener.counts
    click.echo(f"stopped: {counts['imported']} imported, {counts['duplicate']} duplicates, "
               f"{counts['rejected']} refused, {counts['associations_rejected']} associations rejected", err=True)
