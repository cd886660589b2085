"""`samx synth`, `samx ingest`, `samx images`: radiographs in."""
from __future__ import annotations

import json
from collections import Counter
import os
from pathlib import Path

import click
from tqdm import tqdm

from backend.config import Settings
from backend.cli.app import main, open_db, pass_settings, run_job
from backend.database.schema import JobKind
from backend.jobs.params import IngestParams, IngestResult


@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--n", "n", type=int, default=200, show_default=True, help="Number of phantoms.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["mixed", "dcm", "png"]), default="mixed", show_default=True)
@click.option("--size", type=int, default=512, show_default=True, help="Long side in pixels (about).")
@click.option("--lesion-rate", type=float, default=0.3, show_default=True)
@click.option("--implant-rate", type=float, default=0.1, show_default=True)
@click.option("--workers", type=int, default=os.cpu_count() or 1, show_default=True)
def synth(out: str, n: int, seed: int, fmt: str, size: int, lesion_rate: float, implant_rate: float, workers: int) -> None:
    """Draw synthetic radiographs (phantoms) of 8+ body regions with lesions and fake PHI."""
    from imaging.phantoms import generate_phantoms

    with tqdm(total=n, desc="phantoms", unit="img", disable=None) as bar:
        truth = generate_phantoms(out, n, seed=seed, fmt=fmt, size=size, lesion_rate=lesion_rate,
                                  implant_rate=implant_rate, workers=workers,
                                  progress=lambda k: bar.update(k - bar.n))
    images = truth["images"]
    regions = Counter(im["region"] for im in images)
    lesions = sum(len(im["lesions"]) for im in images)
    click.echo(f"wrote {len(images)} phantoms to {Path(out).resolve()} "
               f"({', '.join(f'{k} {v}' for k, v in sorted(regions.items()))}; {lesions} lesions)")
    click.echo(f"images:       {Path(out).resolve() / 'images'}   (samx ingest this folder)")
    click.echo(f"ground truth: {Path(out).resolve() / 'truth.json'}")


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--report", type=click.Path(dir_okay=False), help="Write one JSON record per file here.")
@click.option("--voi", type=click.Choice(["auto", "lut", "window", "none"]), default="auto", show_default=True,
              help="DICOM intensity transform: VOI LUT, window center/width, or the full range.")
@click.option("--workers", type=int, default=None, help="Decoding processes (default: all cores).")
@click.option("--background", is_flag=True, help="Queue a job for `samx worker` instead of running here.")
@click.option("--shard-size", type=click.IntRange(min=1),
              help="With --background: split the files into jobs of this many, which several `samx worker` "
                   "processes (any machine, with Redis) share.")
@click.option("--dicomweb", "dicomweb", is_flag=True,
              help="PATHS is an http(s):// DICOMweb service URL (a dicomweb:// URL needs no flag).")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d", "%Y%m%d"]),
              help="DICOMweb: studies on or after this date.")
@click.option("--modality", help="DICOMweb: only series of these modalities, comma-separated (e.g. CR,DX).")
@click.option("--body-part", help="DICOMweb: only series with these BodyPartExamined values, comma-separated.")
@click.option("--dicomweb-user", help="DICOMweb basic auth (default: SAMX_DICOMWEB_USER).")
@click.option("--dicomweb-password",
              help="DICOMweb basic auth (default: SAMX_DICOMWEB_PASSWORD, which keeps it off the process list).")
@pass_settings
def ingest(settings: Settings, paths: tuple[str, ...], report: str | None, voi: str, workers: int | None,
           background: bool, shard_size: int | None, dicomweb: bool, since, modality: str | None, body_part: str | None,
           dicomweb_user: str | None, dicomweb_password: str | None) -> None:
    """Import radiographs (DICOM, PNG, JPEG, TIFF) from files and folders, or pull them from a
    PACS: `samx ingest dicomweb://HOST[:PORT]/PATH [--since DATE] [--modality CR,DX]`.

    Exact duplicates (by content) are skipped; unreadable files are recorded with a reason;
    an interrupted run can simply be started again.
    """
    from backend.pacs.dicomweb import is_url

    if dicomweb or any(is_url(p) for p in paths):
        if shard_size is not None:
            raise click.UsageError("--shard-size is for files and folders, not a DICOMweb pull")
        from backend.cli.pacs import pull_dicomweb

        if len(paths) != 1 or report:
            raise click.UsageError("a DICOMweb pull takes one URL, without files, folders or --report")
        pull_dicomweb(settings, paths[0], plain_http=dicomweb, since=since, modality=modality, body_part=body_part,
                      user=dicomweb_user, password=dicomweb_password, voi=voi, workers=workers, background=background)
        return
    if shard_size is not None and (not background or report):
        raise click.UsageError("--shard-size queues shard jobs for `samx worker`: it needs --background, and takes no --report")
    if since or modality or body_part or dicomweb_user or dicomweb_password:
        raise click.UsageError("--since, --modality, --body-part and --dicomweb-* are for a DICOMweb URL")
    for p in paths:
        click.Path(exists=True).convert(p, None, click.get_current_context())
    db = open_db(settings)
    params = IngestParams(paths=tuple(str(Path(p).resolve()) for p in paths), voi=voi, workers=workers,
                          report=str(Path(report).resolve()) if report else None, shard_size=shard_size)
    out = run_job(db, JobKind.ingest, params, background, unit="file")
    if out is None:
        return
    r = IngestResult.from_json(out)
    click.echo(f"{r.files} files in {r.seconds:.1f} s ({r.files_per_second:.1f}/s): "
               f"{r.imported} imported, {r.duplicate} duplicates, {r.rejected} rejected")
    for code, count in sorted(r.rejected_by_reason.items(), key=lambda kv: -kv[1]):
        click.echo(f"  rejected {count:>6}  {code}")
    if r.rejected:
        click.echo("  (`samx images --rejected` lists them with reasons)")
    if r.sorter_predictions:
        click.echo(f"the active sorter predicted the region of {r.sorter_predictions} new images")
    click.echo(f"data directory: {settings.data_dir}")
    if report:
        click.echo(f"report: {Path(report).resolve()}")


@main.command()
@click.option("--rejected", is_flag=True, help="Only files that could not be imported, with the reason.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def images(settings: Settings, rejected: bool, limit: int, as_json: bool) -> None:
    """List ingested images (or rejected files)."""
    from sqlalchemy import func, select

    from backend.database.schema import Image, ImageStatus

    db = open_db(settings)
    status = ImageStatus.rejected if rejected else ImageStatus.imported
    with db.session() as s:
        total = s.scalar(select(func.count()).select_from(Image).where(Image.status == status))
        rows = s.scalars(select(Image).where(Image.status == status).order_by(Image.id).limit(limit)).all()
    if as_json:
        click.echo(json.dumps([{"id": r.id, "path": r.source_path, "status": r.status.value,
                                "reason": r.reason, "code": r.reason_code, "rows": r.rows, "columns": r.columns}
                               for r in rows], indent=1))
        return
    for r in rows:
        if rejected:
            click.echo(f"{r.id:>7}  {r.reason_code:<28} {r.source_path}\n         {r.reason}")
        else:
            click.echo(f"{r.id:>7}  {r.format or '':<6} {r.columns}x{r.rows} {r.bits_stored}-bit "
                       f"{r.modality or '-':<4} {r.body_part or '-':<12} {r.source_path}")
    click.echo(f"{len(rows)} of {total} {status.value}")
