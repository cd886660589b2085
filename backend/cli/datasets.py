"""`samx export` and `samx import`: datasets out and in."""
from __future__ import annotations

from pathlib import Path

import click

from backend.config import Settings
from backend.cli.app import csv_list, main, open_db, pass_settings, run_job
from backend.database.schema import JobKind
from backend.jobs.params import ExportParams, ExportResult, ImportParams, ImportResult
from exports.images import PNG16_READERS


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
@click.option("--image-format", type=click.Choice(["png8", "jpg", "png16"]),
              help="png8 (default for COCO and YOLO) and jpg (VOC's only one): the display rendering the "
                   "radiologist labelled, 8 bits, read right by every loader. png16: the stored 16-bit pixels "
                   f"(VOI applied, not equalised), lossless: {PNG16_READERS}.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--background", is_flag=True, help="Queue a job for `samx worker` instead of running here.")
@pass_settings
def export(settings: Settings, fmt: str, out: str, sources: str, min_score: float, regions: str | None,
           run_id: int | None, model_version: str | None, split: str, seed: int, images_mode: str,
           image_format: str | None, force: bool, background: bool) -> None:
    """Write a COCO, Pascal VOC or YOLO dataset of the labelled images to OUT.

    Boxes are in pixels of the original image; image-level labels go to samx/image_labels.csv;
    samx/manifest.json and samx/SHA256SUMS describe and check the result. Same data, same bytes."""
    db = open_db(settings)
    params = ExportParams(format=fmt, out=str(Path(out).resolve()), sources=tuple(csv_list(sources)),
                          min_score=min_score, regions=tuple(csv_list(regions)), run_id=run_id,
                          model_version=model_version, split=split, seed=seed, images=images_mode,
                          image_format=image_format, force=force)
    done = run_job(db, JobKind.export, params, background, unit="image")
    if done is None:
        return
    r = ExportResult.from_json(done)
    click.echo(f"{r.format}: {r.images} images, {r.boxes} boxes ({r.images_without_boxes} images without boxes) "
               f"-> {r.out}")
    for name, c in r.splits.items():
        click.echo(f"  {name:<5} {c['images']:>7} images {c['boxes']:>7} boxes {c['groups']:>6} patients/studies")
    if r.clipped_boxes or r.dropped_boxes:
        click.echo(f"  {r.clipped_boxes} boxes clipped to the image, {r.dropped_boxes} outside it left out")
    if r.discarded_images_left_out:
        click.echo(f"  {r.discarded_images_left_out} discarded (not MSK) images left out")
    click.echo(f"checksum {r.checksum} (verify: cd {r.out} && sha256sum -c samx/SHA256SUMS)")


@main.command("import")
@click.argument("fmt", metavar="FORMAT", type=click.Choice(["coco", "voc", "yolo"]))
@click.argument("path", type=click.Path(exists=True))
@click.option("--images", "image_dir", type=click.Path(exists=True, file_okay=False),
              help="COCO: the folder the file_name entries are relative to (default: beside the JSON, "
                   "or images/<split> in a samx export).")
@click.option("--background", is_flag=True, help="Queue a job for `samx worker` instead of running here.")
@pass_settings
def import_(settings: Settings, fmt: str, path: str, image_dir: str | None, background: bool) -> None:
    """Import a COCO, Pascal VOC or YOLO (Ultralytics: PATH is data.yaml or its folder) dataset: its
    images, boxes and image labels (samx/image_labels.csv).

    Images are ingested like any other (de-identified, deduplicated); an image file a samx export
    wrote maps back to its image. Boxes are stored with source "imported" and seed the detector.
    Importing the same dataset twice adds nothing; what is skipped is listed with its reason."""
    db = open_db(settings)
    params = ImportParams(format=fmt, path=str(Path(path).resolve()),
                          image_dir=str(Path(image_dir).resolve()) if image_dir else None)
    done = run_job(db, JobKind.import_, params, background, unit="image")
    if done is None:
        return
    r = ImportResult.from_json(done)
    click.echo(f"{r.images} images ({r.matched} already in samx, {r.ingested} ingested, "
               f"{r.failed} failed): {r.boxes_added} boxes added, {r.boxes_present} already present; "
               f"{r.labels_added} image labels added")
    for problem in r.problems[:20]:
        click.echo(f"  {problem}")
    if len(r.problems) > 20:
        click.echo(f"  ... {len(r.problems) - 20} more in `samx jobs show {r.job_id}`")
