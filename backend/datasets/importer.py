"""The "import" job: a COCO or Pascal VOC dataset's images, boxes and image labels into samx.

Images go through the normal ingest (de-identified, deduplicated by content). An export of this
installation is recognised by its manifest and mapped back to the images it came from, so an
export edited in another tool comes back onto the same images. Importing never deletes or
overwrites: boxes already present (equal in the dataset's own coordinates) are not added again,
and a radiologist's manual label is never replaced, which makes a re-import a no-op and
export -> import -> export byte-identical."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.database.session import current_label, label_id, supersede_label
from backend.datasets.installation import installation_id
from backend.images.ingest import ingest_paths
from backend.jobs.context import JobContext, JobFailed
from backend.jobs.params import ImportParams, ImportResult
from backend.database.schema import Box, BoxSource, Image, ImageStatus, LabelKind, LabelSource, WeakLabel
from exports import voc
from exports.coco import read_coco
from exports.image_labels import FILE_NAME as LABELS_CSV
from exports.image_labels import read_image_labels
from exports.manifest import read_manifest
from exports.records import BoxRecord, DatasetError, ReadImage, clip_box

MAX_PROBLEMS = 1000


@dataclass
class ImportSummary:
    images: int = 0
    matched: int = 0
    ingested: int = 0
    failed: int = 0
    boxes_added: int = 0
    boxes_present: int = 0
    labels_added: int = 0
    labels_present: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)


def _coco_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    for folder in (path / "annotations", path):
        found = sorted(folder.glob("instances_*.json")) or sorted(folder.glob("*.json"))
        if found:
            return found
    return []


def read_dataset(fmt: str, path: Path, image_dir: Path | None) -> tuple[Path, list[ReadImage]]:
    """The dataset's root folder, and every image with its boxes and (from image_labels.csv) labels."""
    path = Path(path)
    root = path if path.is_dir() else path.parent
    if fmt == "voc":
        images = list(voc.read_voc(path))
    elif fmt == "coco":
        files = _coco_files(path)
        if not files:
            raise DatasetError(f"{path}: no COCO JSON (expected annotations/instances_<split>.json)")
        if path.is_file() and path.parent.name == "annotations":
            root = path.parent.parent
        images = []
        for f in files:
            split = f.stem.removeprefix("instances_")
            # samx's layout (images/<split>), COCO 2017's (<split>2017 beside annotations/), or flat
            folder = image_dir or next((d for d in (root / "images" / split, root / split, root / "images", f.parent)
                                        if d.is_dir()), f.parent)
            images.extend(read_coco(f, folder)[1])
    else:
        raise DatasetError(f"cannot import {fmt!r}; use coco or voc")
    labels_csv = root / LABELS_CSV
    if labels_csv.is_file():
        by_name = {Path(r.get("file") or "").name: r for r in read_image_labels(labels_csv)}
        for im in images:
            row = by_name.get(Path(im.file_name).name)
            if row and row.get("region"):
                im.labels["region"] = row["region"]
    return root, images


def _own_export_ids(ctx: JobContext, root: Path, images: list[ReadImage]) -> dict[str, int]:
    """file path -> image id, for an export this installation wrote (file stems are image ids)."""
    manifest = read_manifest(root)
    if not manifest or manifest.get("installation") != installation_id(ctx.settings):
        return {}
    out = {}
    for im in images:
        stem = Path(im.file_name).stem
        if stem.isdigit():
            out[im.path] = int(stem)
    return out


def _box_key(fmt: str, label_id: int, x: float, y: float, w: float, h: float, width: int, height: int):
    """A box as the dataset's format writes it: two boxes are the same if they export the same."""
    box = clip_box(BoxRecord(label_id, x, y, w, h), width, height)
    if box is None:
        return None
    if fmt == "voc":
        return (label_id, *voc.encode_box(box, width, height))
    return (label_id, box.x, box.y, box.w, box.h)


def _store_image(s: Session, fmt: str, image: Image, rec: ReadImage, labels: dict, summary: ImportSummary) -> None:
    existing = {_box_key(fmt, b.label_id, b.x, b.y, b.width, b.height, image.columns, image.rows)
                for b in s.scalars(select(Box).where(Box.image_id == image.id))}
    for name, x, y, w, h in rec.boxes:
        key = _box_key(fmt, label_id(s, LabelKind.lesion, name, labels), x, y, w, h, image.columns, image.rows)
        if key is None:
            summary.problem(f"{rec.file_name}: box {name} [{x}, {y}, {w}, {h}] lies outside the "
                            f"{image.columns}x{image.rows} image; skipped")
            continue
        if key in existing:
            summary.boxes_present += 1
            continue
        existing.add(key)
        bx, by, bw, bh = voc.decode_box(*key[1:]) if fmt == "voc" else key[1:]
        s.add(Box(image_id=image.id, label_id=key[0], x=bx, y=by, width=bw, height=bh, source=BoxSource.imported))
        summary.boxes_added += 1
    region = rec.labels.get("region")
    if region:
        region_id = label_id(s, LabelKind.region, region, labels)
        current = current_label(s, image.id)
        if current is not None and current.label_id == region_id:
            summary.labels_present += 1
        elif current is not None and current.source == LabelSource.manual:
            summary.problem(f"{rec.file_name}: region {region!r} not imported; a radiologist set it to another label")
        else:
            supersede_label(s, current, WeakLabel(image_id=image.id, label_id=region_id, source=LabelSource.imported))
            summary.labels_added += 1


def import_dataset(ctx: JobContext, fmt: str, path: Path, image_dir: Path | None,
                   progress: Callable[[int, int, str], None] | None = None,
                   workers: int | None = None) -> ImportSummary:
    try:
        root, images = read_dataset(fmt, path, image_dir)
    except DatasetError as exc:
        raise JobFailed(str(exc)) from None
    summary = ImportSummary(images=len(images))
    known = _own_export_ids(ctx, root, images)
    unknown = [im.path for im in images if im.path not in known and Path(im.path).is_file()]
    new_ids: set[int] = set()
    total = len(unknown) + len(images)  # progress: ingesting the new files, then storing every image
    report = progress or (lambda done, n, message: None)
    if unknown:
        with ctx.db.session() as s:
            last_id = s.scalar(select(func.max(Image.id))) or 0
        ingest = ingest_paths(ctx.db, unknown, workers=workers,
                              progress=lambda d, n, m: report(d, total, f"ingesting {d}/{n}"))
        known.update(ingest.image_ids)
        new_ids = {i for i in ingest.image_ids.values() if i > last_id}  # the rest were in samx already
    labels: dict = {}
    for done, rec in enumerate(images, 1):
        for text in rec.problems:
            summary.problem(text)
        image_id = known.get(rec.path)
        with ctx.db.session() as s:  # one image, one transaction: a kill loses at most the image in flight
            image = s.get(Image, image_id) if image_id is not None else None
            if image is None or image.status != ImageStatus.imported:
                why = "file missing" if not Path(rec.path).is_file() else "could not be ingested (see `samx images --rejected`)"
                summary.problem(f"{rec.file_name}: {why}; its {len(rec.boxes)} boxes were not imported")
                summary.failed += 1
                continue
            if rec.width and rec.height and (rec.width, rec.height) != (image.columns, image.rows):
                summary.problem(f"{rec.file_name}: the dataset says {rec.width}x{rec.height} but the image is "
                                f"{image.columns}x{image.rows}; its boxes were not imported")
                summary.failed += 1
                continue
            if image.id in new_ids:
                summary.ingested += 1
            else:
                summary.matched += 1
            _store_image(s, fmt, image, rec, labels, summary)
        report(len(unknown) + done, total, f"{done}/{len(images)} images")
    return summary


def run_import_job(ctx: JobContext) -> dict:
    p = ImportParams.from_json(ctx.params)
    summary = import_dataset(ctx, p.format, Path(p.path), Path(p.image_dir) if p.image_dir else None,
                             progress=lambda d, n, m: ctx.progress(d, n, m), workers=p.workers)
    return ImportResult(**asdict(summary), job_id=ctx.job_id).to_json()

