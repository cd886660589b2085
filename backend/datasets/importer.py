"""The "import" job: a COCO, Pascal VOC or YOLO dataset's images, boxes and image labels into samx.

Images go through the normal ingest (de-identified, deduplicated by content). An export of this
installation is recognised by its manifest, or without it by the SHA-256 of each image file it
wrote, and mapped back to the images it came from, so an export edited in another tool comes
back onto the same images. Importing never deletes or overwrites: boxes already present (equal
in the dataset's own coordinates, to rounding) are not added again, and a radiologist's manual
label is never replaced, which makes a re-import a no-op and export -> import -> export
byte-identical.

An image the dataset lists without boxes is stored as a known negative (images.meta
"imported_normal") only where the format says it was read: an image entry without annotations
(COCO), an XML without objects or an image-set entry without XML (VOC), an empty label file
(YOLO); samx/image_labels.csv, where present, has the last word (abnormal 0 / empty)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.database.session import current_label, label_id, supersede_label
from backend.datasets.installation import NORMAL, exported_images, installation_id
from backend.images.ingest import ingest_paths
from backend.jobs.context import JobContext, JobFailed
from backend.jobs.params import ImportParams, ImportResult
from backend.database.schema import Box, BoxSource, Image, ImageStatus, LabelKind, LabelSource, WeakLabel
from exports import voc
from exports.coco import read_coco
from exports.image_labels import find_image_labels, read_image_labels
from exports.manifest import read_manifest, sha256_file
from exports.records import BoxRecord, DatasetError, ReadImage, clip_box
from exports.yolo import read_yolo

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
    elif fmt == "yolo":
        images = list(read_yolo(path))
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
        raise DatasetError(f"cannot import {fmt!r}; use coco, voc or yolo")
    labels_csv = find_image_labels(root)
    if labels_csv:
        by_name = {Path(r.get("file") or "").name: r for r in read_image_labels(labels_csv)}
        for im in images:
            row = by_name.get(Path(im.file_name).name) or {}
            if row.get("region"):
                im.labels["region"] = row["region"]
            if row.get("abnormal") is not None:  # samx's own word: 1, 0, or empty (nobody said)
                im.labels["abnormal"] = row["abnormal"].strip()
    return root, images


def _own_export_ids(ctx: JobContext, root: Path, images: list[ReadImage]) -> dict[str, int]:
    """file path -> image id, for the files this installation exported: all of them when the
    manifest is ours (file stems are image ids), else each whose bytes hash to a file an export wrote."""
    out = {}
    manifest = read_manifest(root)
    if manifest and manifest.get("installation") == installation_id(ctx.settings):
        out = {im.path: int(Path(im.file_name).stem) for im in images if Path(im.file_name).stem.isdigit()}
    rest = [im.path for im in images if im.path not in out and Path(im.path).is_file()]
    if rest:
        with ctx.db.session() as s:
            exported = exported_images(s)
        for p in rest if exported else ():
            image_id = exported.get(sha256_file(Path(p)))
            if image_id is not None:
                out[p] = image_id
    return out


def _box_key(fmt: str, label_id: int, x: float, y: float, w: float, h: float, width: int, height: int):
    """A box as the dataset's format writes it: two boxes are the same if they export the same."""
    box = clip_box(BoxRecord(label_id, x, y, w, h), width, height)
    if box is None:
        return None
    if fmt == "voc":
        return (label_id, *voc.encode_box(box, width, height))
    return (label_id, box.x, box.y, box.w, box.h)


def _same(a: tuple, b: tuple, tol: float) -> bool:
    """Equal to rounding: normalised coordinates (YOLO; datumaro writes 6 decimals) decode to the pixel
    box only within a millionth of the image side."""
    return a[0] == b[0] and all(abs(p - q) <= tol for p, q in zip(a[1:], b[1:]))


def _store_image(s: Session, fmt: str, image: Image, rec: ReadImage, labels: dict, summary: ImportSummary,
                 own: bool) -> None:
    boxes = s.scalars(select(Box).where(Box.image_id == image.id)).all()
    existing = [_box_key(fmt, b.label_id, b.x, b.y, b.width, b.height, image.columns, image.rows) for b in boxes]
    for name, x, y, w, h in rec.boxes:
        key = _box_key(fmt, label_id(s, LabelKind.lesion, name, labels), x, y, w, h, image.columns, image.rows)
        if key is None:
            summary.problem(f"{rec.file_name}: box {name} [{x}, {y}, {w}, {h}] lies outside the "
                            f"{image.columns}x{image.rows} image; skipped")
            continue
        # datumaro and CVAT write VOC corners 0-based: the devkit's box, its top-left a pixel further out
        variants = [key, (key[0], key[1] + 1, key[2] + 1, *key[3:])] if fmt == "voc" else [key]
        tol = 1e-6 * max(image.columns, image.rows)
        if any(e is not None and _same(v, e, tol) for v in variants for e in existing):
            summary.boxes_present += 1
            continue
        existing.append(key)
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
    # Our own export lists every image, read or not: only its image_labels.csv tells a negative.
    said = rec.labels.get("abnormal")
    if not rec.boxes and (said == "0" if said is not None else rec.normal and not own):
        if (image.meta or {}).get(NORMAL):
            summary.labels_present += 1
        elif any(b.source != BoxSource.prediction for b in boxes):
            summary.problem(f"{rec.file_name}: the dataset shows no findings but samx has boxes on it; "
                            "not marked normal")
        else:
            image.meta = {**(image.meta or {}), NORMAL: True}
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
    own = set(known)
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
            _store_image(s, fmt, image, rec, labels, summary, rec.path in own)
        report(len(unknown) + done, total, f"{done}/{len(images)} images")
    return summary


def run_import_job(ctx: JobContext) -> dict:
    p = ImportParams.from_json(ctx.params)
    summary = import_dataset(ctx, p.format, Path(p.path), Path(p.image_dir) if p.image_dir else None,
                             progress=lambda d, n, m: ctx.progress(d, n, m), workers=p.workers)
    return ImportResult(**asdict(summary), job_id=ctx.job_id).to_json()

