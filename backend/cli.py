"""The ``samx`` command line."""
from __future__ import annotations

import json
import logging
from collections import Counter
import os
import sys
from pathlib import Path

import click
from tqdm import tqdm

from backend.config import Settings
from backend.db import Database


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
    if _under_torchrun():
        _join_torchrun(ctx)


def _under_torchrun() -> bool:
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


@main.command()
@click.option("--admin-user", default="admin", show_default=True)
@click.option("--admin-password", envvar="SAMX_ADMIN_PASSWORD", help="Default: generated and printed once.")
@pass_settings
def init(settings: Settings, admin_user: str, admin_password: str | None) -> None:
    """Create the data directory, database schema, vocabulary and first admin account."""
    from backend.users import first_admin, initial_password_file

    db = open_db(settings)
    made = first_admin(settings, db, admin_user, admin_password)
    click.echo(f"data directory: {settings.data_dir}")
    click.echo(f"database:       {_safe_url(settings.database_url)}")
    click.echo(f"job queue:      {settings.queue_url if settings.queue_url != 'sqlite' else settings.queue_file}")
    if made:
        click.echo(f"admin account:  {made[0]} / {made[1]}  (also in {initial_password_file(settings)})")




def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


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
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--report", type=click.Path(dir_okay=False), help="Write one JSON record per file here.")
@click.option("--voi", type=click.Choice(["auto", "lut", "window", "none"]), default="auto", show_default=True,
              help="DICOM intensity transform: VOI LUT, window center/width, or the full range.")
@click.option("--workers", type=int, default=None, help="Decoding processes (default: all cores).")
@click.option("--background", is_flag=True, help="Queue a job for `samx worker` instead of running here.")
@pass_settings
def ingest(settings: Settings, paths: tuple[str, ...], report: str | None, voi: str, workers: int | None,
           background: bool) -> None:
    """Import radiographs (DICOM, PNG, JPEG, TIFF) from files and folders.

    Exact duplicates (by content) are skipped; unreadable files are recorded with a reason;
    an interrupted run can simply be started again.
    """
    db = open_db(settings)
    params = {"paths": [str(Path(p).resolve()) for p in paths], "voi": voi, "workers": workers,
              "report": str(Path(report).resolve()) if report else None}
    r = _run_job(db, "ingest", params, background, unit="file")
    if r is None:
        return
    click.echo(f"{r['files']} files in {r['seconds']:.1f} s ({r['files_per_second']:.1f}/s): "
               f"{r['imported']} imported, {r['duplicate']} duplicates, {r['rejected']} rejected")
    for code, count in sorted(r["rejected_by_reason"].items(), key=lambda kv: -kv[1]):
        click.echo(f"  rejected {count:>6}  {code}")
    if r["rejected"]:
        click.echo("  (`samx images --rejected` lists them with reasons)")
    if r.get("sorter_predictions"):
        click.echo(f"the active sorter predicted the region of {r['sorter_predictions']} new images")
    click.echo(f"data directory: {settings.data_dir}")
    if report:
        click.echo(f"report: {Path(report).resolve()}")


def _run_job(db: Database, kind: str, params: dict, background: bool, unit: str) -> dict | None:
    """Queue the job for `samx worker` (None), or run it here with a progress bar: its result,
    or a clear error."""
    from backend.jobs import enqueue, execute
    from backend.jobs.progress_bar import progress_bar
    from backend.models import JobStatus

    if background and _under_torchrun():
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


@main.command()
@click.option("--k", type=int, help="Number of clusters (default: about 40 images a cluster).")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--size", type=int, default=64, show_default=True, help="Input resolution in pixels.")
@click.option("--width", type=int, default=32, show_default=True, help="ResNet width (64 = torchvision's).")
@click.option("--arch", type=click.Choice(["resnet18", "resnet34", "resnet50"]), default="resnet18", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--background", is_flag=True, help="Queue a job for `samx worker` instead of running here.")
@pass_settings
def cluster(settings: Settings, k: int | None, epochs: int, size: int, width: int, arch: str, seed: int,
            background: bool) -> None:
    """Group all imported radiographs with DeepCluster, for naming in the web app.

    Checkpoints every epoch: `samx jobs retry ID` on a killed run resumes where it stopped."""
    db = open_db(settings)
    params = {"k": k, "epochs": epochs, "size": size, "width": width, "arch": arch, "seed": seed}
    r = _run_job(db, "cluster", params, background, unit="%")
    if r is None:
        return
    click.echo(f"run {r['run_id']}: {r['images']} images in {r['k']} clusters, {r['seconds']:.0f} s; "
               f"NMI between the last two epochs {r['nmi_consecutive'] or 0:.3f}")
    click.echo("name the clusters in the browser: `samx serve`")


@main.command()
@click.option("--rejected", is_flag=True, help="Only files that could not be imported, with the reason.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def images(settings: Settings, rejected: bool, limit: int, as_json: bool) -> None:
    """List ingested images (or rejected files)."""
    from sqlalchemy import func, select

    from backend.models import Image, ImageStatus

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
    from backend.models import Job

    db = open_db(ctx.obj)
    reap_stale(db)
    with db.session() as s:
        q = select(Job).order_by(Job.id.desc()).limit(limit)
        if status:
            q = q.where(Job.status == status)
        rows = s.scalars(q).all()
    if not rows:
        click.echo("no jobs")
    for j in rows:
        click.echo(_job_line(j))


def _job_line(j) -> str:
    progress = f"{j.done}/{j.total}" if j.total else str(j.done or "")
    return f"{j.id:>5}  {j.kind:<10} {j.status.value:<10} {progress:>12}  {j.created_at:%Y-%m-%d %H:%M}  {j.error or j.message or ''}"


@jobs.command("show")
@click.argument("job_id", type=int)
@pass_settings
def jobs_show(settings: Settings, job_id: int) -> None:
    """One job with its parameters, progress and result."""
    from backend.models import Job

    db = open_db(settings)
    with db.session() as s:
        j = s.get(Job, job_id)
    if j is None:
        raise click.ClickException(f"no job {job_id}")
    click.echo(_job_line(j))
    click.echo(json.dumps({"params": j.params, "result": j.result, "attempts": j.attempts, "worker": j.worker,
                           "progress": j.progress, "error": j.error}, indent=2, default=str))


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
    from backend.jobs.queue import run_worker

    db = open_db(settings)
    reaped = reap_stale(db)
    if reaped:
        click.echo(f"found jobs of a dead worker: {reaped}")
    db.dispose()
    click.echo(f"worker on {settings.queue_url if settings.queue_url != 'sqlite' else settings.queue_file}", err=True)
    run_worker(settings, workers, burst=burst)


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
        from backend.production_server import run_gunicorn

        run_gunicorn(lambda: create_app(settings), host, port, workers=workers, threads=threads)
    else:
        create_app(settings).run(host=host, port=port, threaded=True, use_reloader=False)


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@main.command()
@click.argument("fmt", metavar="FORMAT", type=click.Choice(["coco", "voc", "yolo"]))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--source", "sources", default="weak,corrected,imported", show_default=True,
              help="Labels to include: weak (cluster names), corrected (radiologists), imported, predicted "
                   "(model output at or above --min-score).")
@click.option("--min-score", type=float, default=0.5, show_default=True, help="Threshold for predicted labels/boxes.")
@click.option("--region", "regions", help="Only these body regions, comma-separated (e.g. knee,hand).")
@click.option("--run", "run_id", type=int, help="Only images of this clustering run.")
@click.option("--model-version", help="Predicted labels/boxes only from this model version (version, kind:version or id).")
@click.option("--split", default="0.8,0.1,0.1", show_default=True,
              help="train,val,test fractions; a patient or study never spans two splits.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split assignment.")
@click.option("--images", "images_mode", type=click.Choice(["copy", "link", "none"]), default="copy", show_default=True,
              help="Copy the images, hard-link them (16-bit PNG only; saves disk) or write annotations only.")
@click.option("--image-format", type=click.Choice(["png16", "png8", "jpg"]),
              help="Default: png16 (lossless) for COCO and YOLO; VOC is always jpg.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--background", is_flag=True, help="Queue a job for `samx worker` instead of running here.")
@pass_settings
def export(settings: Settings, fmt: str, out: str, sources: str, min_score: float, regions: str | None,
           run_id: int | None, model_version: str | None, split: str, seed: int, images_mode: str,
           image_format: str | None, force: bool, background: bool) -> None:
    """Write a COCO, Pascal VOC or YOLO dataset of the labelled images to OUT.

    Boxes are in pixels of the original image; image-level labels go to image_labels.csv;
    manifest.json and SHA256SUMS describe and check the result. Same data, same bytes."""
    db = open_db(settings)
    params = {"format": fmt, "out": str(Path(out).resolve()), "sources": _csv(sources), "min_score": min_score,
              "regions": _csv(regions), "run_id": run_id, "model_version": model_version, "split": split,
              "seed": seed, "images": images_mode, "image_format": image_format, "force": force}
    r = _run_job(db, "export", params, background, unit="image")
    if r is None:
        return
    click.echo(f"{r['format']}: {r['images']} images, {r['boxes']} boxes "
               f"({r['images_without_boxes']} images without boxes) -> {r['out']}")
    for name, c in r["splits"].items():
        click.echo(f"  {name:<5} {c['images']:>7} images {c['boxes']:>7} boxes {c['groups']:>6} patients/studies")
    if r["clipped_boxes"] or r["dropped_boxes"]:
        click.echo(f"  {r['clipped_boxes']} boxes clipped to the image, {r['dropped_boxes']} outside it left out")
    if r["discarded_images_left_out"]:
        click.echo(f"  {r['discarded_images_left_out']} discarded (not MSK) images left out")
    click.echo(f"checksum {r['checksum']} (verify: cd {r['out']} && sha256sum -c SHA256SUMS)")


@main.command("import")
@click.argument("fmt", metavar="FORMAT", type=click.Choice(["coco", "voc"]))
@click.argument("path", type=click.Path(exists=True))
@click.option("--images", "image_dir", type=click.Path(exists=True, file_okay=False),
              help="COCO: the folder the file_name entries are relative to (default: beside the JSON, "
                   "or images/<split> in a samx export).")
@click.option("--background", is_flag=True, help="Queue a job for `samx worker` instead of running here.")
@pass_settings
def import_(settings: Settings, fmt: str, path: str, image_dir: str | None, background: bool) -> None:
    """Import a COCO or Pascal VOC dataset: its images, boxes and image labels (image_labels.csv).

    Images are ingested like any other (de-identified, deduplicated); boxes are stored with
    source "imported" and seed the detector. Importing the same dataset twice adds nothing."""
    db = open_db(settings)
    params = {"format": fmt, "path": str(Path(path).resolve()),
              "image_dir": str(Path(image_dir).resolve()) if image_dir else None}
    r = _run_job(db, "import", params, background, unit="image")
    if r is None:
        return
    click.echo(f"{r['images']} images ({r['matched']} already in samx, {r['ingested']} ingested, "
               f"{r['failed']} failed): {r['boxes_added']} boxes added, {r['boxes_present']} already present; "
               f"{r['labels_added']} image labels added")
    for problem in r["problems"][:20]:
        click.echo(f"  {problem}")
    if len(r["problems"]) > 20:
        click.echo(f"  ... {len(r['problems']) - 20} more in `samx jobs show {r['job_id']}`")


@main.group()
def train() -> None:
    """Train the models that label for you."""


@train.command("sorter")
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--folds", type=int, default=5, show_default=True,
              help="Cross-validation folds for the report (6-2-2 at 5); 0 skips cross-validation.")
@click.option("--min-per-class", type=int, default=5, show_default=True,
              help="Regions with fewer labelled images are left out of the sorter.")
@click.option("--init", type=click.Choice(["deepcluster", "none"]), default="deepcluster", show_default=True,
              help="Start from the latest DeepCluster network (SAM-X) or from random weights.")
@click.option("--coverage", type=float, default=0.99, show_default=True,
              help="Share of validation images the sorter must accept; the rest of the world is 'unsure'.")
@click.option("--clean/--no-clean", default=True, show_default=True,
              help="Leave out of the version's training the weak labels that cross-validation confidently "
                   "contradicts (confident learning); they wait in the review queue. Needs --folds.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Make the new version active even if it is worse than the active one.")
@click.option("--background", is_flag=True, help="Queue a job for `samx worker` instead of running here.")
@pass_settings
def train_sorter(settings: Settings, epochs: int, folds: int, min_per_class: int, init: str, coverage: float,
                 clean: bool, seed: int, force: bool, background: bool) -> None:
    """Train the SAM-X sorter on the current region weak labels.

    Cross-validates (top-1/top-2 per fold, confusion matrix), trains the version on everything
    outside the fixed validation split but the labels cross-validation doubts, and makes it
    active if it is at least as good there as the active version. Writes an HTML report into
    the model store."""
    if not 0 < coverage <= 1:
        raise click.BadParameter("must be in (0, 1]", param_hint="--coverage")
    db = open_db(settings)
    params = {"epochs": epochs, "folds": folds, "min_per_class": min_per_class, "init": init,
              "coverage": coverage, "seed": seed, "force": force, "clean": clean}
    r = _run_job(db, "train_sorter", params, background, unit="%")
    if r is None:
        return
    cv = f"; cross-validation top-1 {r['cv_top1']['mean']:.3f} ± {r['cv_top1']['sd']:.3f}, " \
         f"top-2 {r['cv_top2']['mean']:.3f} ± {r['cv_top2']['sd']:.3f}" if r.get("cv_top1") else ""
    click.echo(f"sorter {r['version']} on {r['images']} images, {len(r['classes'])} regions: validation top-1 "
               f"{r['holdout_top1']:.3f}, top-2 {r['holdout_top2']:.3f}{cv}")
    if r.get("left_out"):
        click.echo(f"{r['left_out']} weak labels that cross-validation confidently contradicts were left out of "
                   "training; see the review queue")
    click.echo(f"{'active' if r['promoted'] else 'not activated'}: {r['reason']}")
    click.echo(f"report: {settings.models_dir / 'sorter' / r['version'] / 'report.html'}")


@train.command("detector")
@click.option("--epochs", type=int, help="Default: SAMX_DETECTOR_EPOCHS (20).")
@click.option("--size", type=int, help="Long side the network sees, a multiple of 32. Default: SAMX_DETECTOR_SIZE (512).")
@click.option("--arch", type=click.Choice(["mobilenet_v3", "mobilenet_v3_320", "resnet18_fpn", "resnet50_fpn",
                                          "resnet50_fpn_v2"]), default="mobilenet_v3", show_default=True,
              help="Faster R-CNN backbone; resnet18_fpn (with --tile) for small lesions; the ResNet-50 ones want a GPU.")
@click.option("--tile", type=int, help="Train on lesion-centred tiles of this many input pixels (a multiple of 32, "
              "e.g. 128); predictions still see whole images. Default: whole images.")
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--lr", type=float, help="Peak learning rate. Default: 0.02, or 0.3 of it with --warm-start.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--warm-start", is_flag=True, help="Fine-tune the active version (same --arch) instead of training "
              "from scratch: a few epochs per labeling round, at a lower learning rate.")
@click.option("--background", is_flag=True, help="Queue a job for `samx worker` instead of running here.")
@pass_settings
def train_detector(settings: Settings, epochs: int | None, size: int | None, arch: str, tile: int | None,
                   batch_size: int, lr: float | None, seed: int, warm_start: bool, background: bool) -> None:
    """Train the lesion detector and the normal/abnormal classifier on the annotated images.

    Judged on the fixed validation split (mAP@0.5, AUROC; the decision-fusion threshold is
    Youden's J there), stored as the active version; the ML backend swaps to it, and the
    unlabelled images are ranked for labeling (pushed to Label Studio when synced)."""
    db = open_db(settings)
    params = {"epochs": epochs, "size": size, "arch": arch, "tile": tile, "batch_size": batch_size, "lr": lr,
              "seed": seed, "warm_start": warm_start, "reason": "samx train detector"}
    r = _run_job(db, "train_detector", params, background, unit="%")
    if r is None:
        return
    m = "n/a (no validation images yet)" if r.get("map50") is None else f"{r['map50']:.3f}"
    start = f" (fine-tuned from {r['warm_start']})" if r.get("warm_start") else ""
    click.echo(f"detector {r['version']}{start} on {r['images']} images ({r['validation_images']} for validation): "
               f"mAP@0.5 {m}, fusion threshold {r['fusion_threshold']:.3f}; {r['ranked']} unlabelled images ranked")


@main.command("eval")
@click.option("--version", help="A detector version (default: the active one).")
@click.option("--split", type=click.Choice(["validation", "all"]), default="validation", show_default=True,
              help="The fixed validation split (never trained on) or every labelled image.")
@click.option("--out", type=click.Path(file_okay=False), help="Write metrics.json and roc.png here.")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def eval_(settings: Settings, version: str | None, split: str, out: str | None, as_json: bool) -> None:
    """Detection and image-level metrics of a detector version, as the papers report them."""
    from backend.detector_eval import evaluate_version

    try:
        r = evaluate_version(settings, open_db(settings), version, split=split, out=out)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(r, indent=1))
        return
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    auc, sens, box = r["auroc"], r["sensitivity_at_fpr"], r["box_accuracy"]
    click.echo(f"detector {r['version']} on {r['n_images']} {split} images ({r['n_abnormal']} abnormal)")
    click.echo(f"  mAP@0.5 (COCO 101-point): {fmt(r['map50'])}   " + "   ".join(
        f"AP {c}: {fmt(v)}" for c, v in r["ap50"].items()))
    click.echo(f"  boxes found at IoU > 0.5: {fmt(box.get('accuracy'))}, mean IoU {fmt(box.get('mean_iou'))}")
    click.echo(f"  AUROC {fmt(auc.get('auroc'))} (95% CI {_ci(auc.get('ci95'))}); sensitivity at "
               f"{100 * sens.get('fpr', 0.015):.1f}% FPR {fmt(sens.get('sensitivity'))} (95% CI {_ci(sens.get('ci95'))})")
    if out:
        click.echo(f"  written: {Path(out) / 'metrics.json'}" + (f", {r['roc_png']}" if r.get("roc_png") else ""))


def _ci(ci) -> str:
    return "n/a" if not ci or ci[0] is None else f"{ci[0]:.3f}-{ci[1]:.3f}"


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
    from backend.ml_backend_auth import credentials
    from backend.ml_service import serve

    open_db(settings)
    user, _ = credentials(settings)
    click.echo(f"ML backend on http://{host}:{port} (basic auth user {user!r}); connect it with "
               f"`samx labelstudio sync --ml-backend-url http://{host}:{port}`", err=True)
    serve(settings, host, port, server=server, threads=threads)


@main.command()
@click.option("--background", is_flag=True, help="Queue a job for `samx worker` instead of running here.")
@pass_settings
def predict(settings: Settings, background: bool) -> None:
    """Sorter predictions for the imported images the active sorter has not seen yet."""
    r = _run_job(open_db(settings), "predict", {}, background, unit="%")
    if r is not None:
        click.echo(f"{r['predicted']} images predicted")


@main.command("sort")
@click.argument("src", metavar="IN", type=click.Path(exists=True, file_okay=False))
@click.argument("out", metavar="OUT", type=click.Path(file_okay=False))
@click.option("--model", "version", help="Sorter version (default: the active one).")
@click.option("--link", is_flag=True, help="Hard-link instead of copying (same file system).")
@click.option("--force", is_flag=True, help="Write into a non-empty OUT.")
@click.option("--workers", type=int, default=None, help="Decoding processes (default: all cores).")
@pass_settings
def sort_cmd(settings: Settings, src: str, out: str, version: str | None, link: bool, force: bool,
             workers: int | None) -> None:
    """Copy every file under IN to OUT/<region>/, OUT/unsure/ or OUT/unreadable/, with
    OUT/predictions.csv (region, confidence, runner-up, out-of-distribution score, reason).

    The originals stay as they are; nothing is added to the database."""
    from backend.sort_folder import SortError, sort_folder
    from backend.sorter_store import find_version, load_sorter

    db = open_db(settings)
    with db.session() as s:
        mv = find_version(s, version)
        if mv is None or not mv.path:
            raise click.ClickException(f"no sorter version {version!r}" if version else
                                       "there is no active sorter yet: run `samx train sorter` first")
        model, cfg, name = load_sorter(settings, mv), dict(mv.config), mv.version
    with tqdm(desc="sort", unit="file", disable=None) as bar:
        def on_progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            r = sort_folder(model, src, out, size=int(cfg.get("size", 64)), method=cfg.get("method", "fhe"),
                            link=link, force=force, workers=workers, progress=on_progress)
        except SortError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"sorter {name}: {r.files} files -> " + ", ".join(f"{k} {v}" for k, v in sorted(r.by_folder.items())))
    click.echo(f"predictions: {r.csv}")


@main.command()
@pass_settings
def models(settings: Settings) -> None:
    """Sorter versions with their metrics (the active one marked *)."""
    from sqlalchemy import select

    from backend.models import ModelVersion

    with open_db(settings).session() as s:
        rows = s.scalars(select(ModelVersion).where(ModelVersion.kind == "sorter").order_by(ModelVersion.id)).all()
        for mv in rows:
            m = mv.metrics or {}
            top1 = m.get("holdout_top1")
            click.echo(f"{'*' if mv.status == 'active' else ' '} {mv.version}  {mv.status:<8} "
                       f"{mv.created_at:%Y-%m-%d %H:%M}  {m.get('n_images', '?')} images  validation top-1 "
                       f"{'-' if top1 is None else f'{top1:.3f}'}  {m.get('reason', '')}")
        if not rows:
            click.echo("no sorter trained yet: `samx train sorter`")


@main.group()
def users() -> None:
    """Manage accounts (roles: admin, radiologist, viewer)."""


@users.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(["admin", "radiologist", "viewer"]), default="radiologist", show_default=True)
@click.password_option()
@pass_settings
def users_add(settings: Settings, username: str, role: str, password: str) -> None:
    from backend.users import create_user

    try:
        create_user(open_db(settings), username, password, role)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"user {username} ({role}) created")


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
    from backend.labelstudio.server import LabelStudioError, credentials_file, up

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
    from backend.labelstudio.server import down

    pid = down(settings)
    click.echo(f"Label Studio (pid {pid}) stopped" if pid else "Label Studio was not running")


@labelstudio.command("status")
@pass_settings
def labelstudio_status(settings: Settings) -> None:
    """Whether Label Studio runs, where, and the lesion project samx synced last."""
    from backend.labelstudio.server import log_file, status
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
    from backend.labelstudio.config import PROJECT_TITLE
    from backend.labelstudio.server import LabelStudioError
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
    from backend.demo import DemoOptions, prepare, serve
    from backend.users import first_admin

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


def run() -> None:
    """The ``samx`` script and ``python -m backend.cli``. Under torchrun a process leaves with
    ``os._exit`` once its command is done and its output flushed: after DDP has used the gloo
    group, torch keeps its threads alive past ``destroy_process_group``, and tearing them down
    with the interpreter now and then aborts a process whose work had finished (SIGABRT,
    "terminate called without an active exception"), which torchrun reports as a failure."""
    if not _under_torchrun():
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


if __name__ == "__main__":  # pragma: no cover
    run()
