"""The "export" job: the database's images, boxes and image labels as a COCO, VOC or YOLO dataset.

Streams: images are read from the database in batches with their boxes, and each is written
before the next batch is read, so memory does not grow with the dataset (only the split
assignment, a few bytes an image, is held). The dataset is built in a sibling folder and
renamed into place when complete, so OUT is never half-written. Each image file's SHA-256 is
kept with its image (backend.datasets.installation), so the file maps back to its image when it
returns without the manifest, whatever tool rewrote the annotations around it."""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from sqlalchemy import and_, false, select
from sqlalchemy.orm import Session

from backend.datasets.installation import NORMAL, installation_id, record_exported
from backend.images.store import load_pixels, render_display
from backend.jobs.context import JobContext, JobFailed
from backend.jobs.params import ExportParams, ExportResult
from backend.database.schema import (Box, BoxSource, ClusterMembership, Image, ImageStatus, Label, LabelKind, LabelSource,
                                     ModelKind, ModelVersion, WeakLabel)
from exports.coco import CocoWriter
from exports.image_labels import ImageLabelsWriter
from exports.images import IMAGE_FORMATS, write_image
from exports.manifest import write_manifest
from exports.records import SPLITS, BoxRecord, Category, ImageRecord, clip_box
from training.splits import assign_splits, group_images, parse_fractions
from exports.voc import VocWriter
from exports.yolo import YoloWriter

WRITERS = {"coco": CocoWriter, "voc": VocWriter, "yolo": YoloWriter}
#: 8-bit display rendering by default: what mainstream loaders read right (exports.images).
DEFAULT_IMAGE_FORMAT = {"coco": "png8", "voc": "jpg", "yolo": "png8"}

#: What a user calls a label source -> where it lives: weak labels' source, boxes' source.
SOURCES = {
    "weak": ({LabelSource.cluster}, set()),
    "corrected": ({LabelSource.manual}, {BoxSource.annotation}),
    "predicted": ({LabelSource.sorter}, {BoxSource.prediction}),
    "imported": ({LabelSource.imported}, {BoxSource.imported}),
}
DEFAULT_SOURCES = ("weak", "corrected", "imported")
BATCH = 500


def stem(image_id: int) -> str:
    """File names come from our image ids: unique, stable, and free of anything from the source."""
    return f"{image_id:08d}"


@dataclass
class ExportFilter:
    sources: tuple[str, ...] = DEFAULT_SOURCES
    min_score: float = 0.5
    regions: tuple[str, ...] = ()
    run_id: int | None = None
    model_version: str | None = None
    model_version_ids: set[int] = field(default_factory=set)

    @classmethod
    def from_params(cls, p: ExportParams) -> "ExportFilter":
        sources = tuple(p.sources or DEFAULT_SOURCES)
        unknown = set(sources) - set(SOURCES)
        if unknown:
            raise JobFailed(f"unknown label source(s) {', '.join(sorted(unknown))}; use {', '.join(SOURCES)}")
        score = float(p.min_score)
        if not 0.0 <= score <= 1.0:
            raise JobFailed(f"min_score must be within [0, 1], not {score}")
        # Canonical order: the same choice always gives the same manifest, byte for byte.
        return cls(sources=tuple(s for s in SOURCES if s in sources), min_score=score,
                   regions=tuple(sorted(set(p.regions or ()))), run_id=p.run_id, model_version=p.model_version)

    def label_sources(self) -> set[LabelSource]:
        return set().union(*(SOURCES[s][0] for s in self.sources))

    def box_sources(self) -> set[str]:
        return set().union(*(SOURCES[s][1] for s in self.sources))

    def accepts_prediction(self, score: float | None, model_version_id: int | None) -> bool:
        if score is None or score < self.min_score:
            return False
        return self.model_version is None or model_version_id in self.model_version_ids


def _resolve_model_version(s: Session, f: ExportFilter) -> None:
    if f.model_version is None:
        return
    text = str(f.model_version)
    kind, _, version = text.rpartition(":")
    q = select(ModelVersion.id).where(ModelVersion.version == version)
    if kind:
        try:
            q = q.where(ModelVersion.kind == ModelKind(kind))
        except ValueError:  # no such kind: no such version
            q = q.where(false())
    f.model_version_ids = set(s.scalars(q))
    if text.isdigit():
        f.model_version_ids |= set(s.scalars(select(ModelVersion.id).where(ModelVersion.id == int(text))))
    if not f.model_version_ids:
        raise JobFailed(f"no model version {text!r} (give the version, kind:version or its id)")


def categories(s: Session) -> tuple[list[Category], dict[int, int]]:
    """Every lesion label (active or not, so ids never shift with filters or retired labels),
    then any other label a box uses, in vocabulary order: ids 1..N. Also label id -> category id."""
    used = select(Box.label_id).distinct()
    rows = s.execute(select(Label.id, Label.name, Label.kind)
                     .where((Label.kind == LabelKind.lesion) | Label.id.in_(used))
                     .order_by(Label.kind != LabelKind.lesion, Label.sort_order, Label.id)).all()
    cats = [Category(i, name, kind.value) for i, (_, name, kind) in enumerate(rows, 1)]
    return cats, {label_id: c.id for (label_id, _, _), c in zip(rows, cats)}


@dataclass
class _Selected:
    image_id: int
    patient: str | None
    study: str | None
    region: str | None = None
    region_source: str | None = None
    confidence: float | None = None


def _source_name(source: LabelSource) -> str:
    return next(name for name, (labels, _) in SOURCES.items() if source in labels)


def select_images(s: Session, f: ExportFilter) -> tuple[list[_Selected], int]:
    """The images to export with their accepted region label, and how many were left out as
    discarded (not MSK) by an accepted label."""
    current = and_(WeakLabel.image_id == Image.id, WeakLabel.superseded_at.is_(None))
    q = (select(Image.id, Image.patient_pseudonym, Image.study_uid, WeakLabel.source, WeakLabel.label_id,
                WeakLabel.confidence, WeakLabel.model_version_id, Label.name)
         .outerjoin(WeakLabel, current).outerjoin(Label, Label.id == WeakLabel.label_id)
         .where(Image.status == ImageStatus.imported, Image.store_path.is_not(None)).order_by(Image.id))
    if f.run_id is not None:
        q = q.where(Image.id.in_(select(ClusterMembership.image_id).where(ClusterMembership.run_id == f.run_id)))
    accepted, discarded, selected = f.label_sources(), 0, []
    for image_id, patient, study, source, label_id, conf, mv, name in s.execute(q):
        item = _Selected(image_id, patient, study)
        ok = source in accepted and (source != LabelSource.sorter or f.accepts_prediction(conf, mv))
        if ok and label_id is None:
            discarded += 1
            continue
        if ok:
            item.region, item.region_source, item.confidence = name, _source_name(source), conf
        if f.regions and item.region not in f.regions:
            continue
        selected.append(item)
    return selected, discarded


def _boxes(s: Session, image_ids: Sequence[int], f: ExportFilter, cat_of: dict[int, int]) -> dict[int, list[BoxRecord]]:
    out: dict[int, list[BoxRecord]] = {i: [] for i in image_ids}
    q = (select(Box.image_id, Box.label_id, Box.x, Box.y, Box.width, Box.height, Box.source, Box.score,
                Box.model_version_id)
         .where(Box.image_id.in_(image_ids), Box.source.in_(f.box_sources())))
    for image_id, label_id, x, y, w, h, source, score, mv in s.execute(q):
        if source == BoxSource.prediction and not f.accepts_prediction(score, mv):
            continue
        out[image_id].append(BoxRecord(cat_of[label_id], x, y, w, h, score if source == BoxSource.prediction else None))
    return out


def _staging(out: Path) -> Path:
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _refuse_taken(out: Path, force: bool) -> None:
    """An empty OUT may be used; a non-empty one only replaced with force."""
    if not force and out.is_dir() and any(out.iterdir()):
        raise JobFailed(f"{out} exists and is not empty; choose another folder or pass --force to replace it")


def _publish(tmp: Path, out: Path, force: bool) -> None:
    _refuse_taken(out, force)  # again: another export may have written OUT meanwhile
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


def _chunks(items: Sequence, n: int) -> Iterator[Sequence]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def run_export_job(ctx: JobContext) -> dict:
    p = ExportParams.from_json(ctx.params)
    fmt = p.format
    if fmt not in WRITERS:
        raise JobFailed(f"format must be one of {', '.join(WRITERS)}, not {fmt!r}")
    out = Path(p.out).resolve()
    _refuse_taken(out, bool(p.force))
    image_format = p.image_format or DEFAULT_IMAGE_FORMAT[fmt]
    if image_format not in IMAGE_FORMATS:
        raise JobFailed(f"image format must be one of {', '.join(IMAGE_FORMATS)}, not {image_format!r}")
    images_mode = p.images
    if images_mode not in ("copy", "link", "none"):
        raise JobFailed(f"images must be copy, link or none, not {images_mode!r}")
    try:
        fractions = parse_fractions(p.split)
    except ValueError as exc:
        raise JobFailed(str(exc)) from None
    if fmt == "voc" and image_format != "jpg":
        raise JobFailed("Pascal VOC images are JPEG (JPEGImages/<id>.jpg); use COCO or YOLO for 16-bit PNG")
    f = ExportFilter.from_params(p)
    seed = int(p.seed)

    with ctx.db.session() as s:
        _resolve_model_version(s, f)
        cats, cat_of = categories(s)
        selected, discarded = select_images(s, f)
    if not selected:
        raise JobFailed("no images match the filters; nothing to export")
    groups = group_images((i.image_id, i.patient, i.study) for i in selected)
    split_of = assign_splits(groups, fractions, seed)
    splits = [name for name in SPLITS if fractions[name] > 0]
    per_split = {name: {"images": 0, "boxes": 0, "groups": 0} for name in splits}
    for group, name in {g: split_of[i] for i, g in groups.items()}.items():
        per_split[name]["groups"] += 1
    counts = {"images": 0, "boxes": 0, "clipped_boxes": 0, "dropped_boxes": 0, "images_without_boxes": 0}
    total = len(selected)

    tmp = _staging(out)
    try:
        writer = WRITERS[fmt](tmp, cats, splits, image_format)
        file_hashes: dict[str, str] = {}
        labels = ImageLabelsWriter(tmp)
        for batch in _chunks(selected, BATCH):
            ids = [x.image_id for x in batch]
            with ctx.db.session() as s:
                rows = {r.id: r for r in s.execute(select(Image.id, Image.rows, Image.columns, Image.store_path,
                                                          Image.meta[NORMAL].label("normal"))
                                                   .where(Image.id.in_(ids)))}
                boxes = _boxes(s, ids, f, cat_of)
            hashes = {}
            for item in batch:
                row = rows[item.image_id]
                if not row.rows or not row.columns:
                    raise JobFailed(f"image {item.image_id} has no recorded size; re-ingest it")
                kept = []
                for b in boxes[item.image_id]:
                    c = clip_box(b, row.columns, row.rows)
                    if c is None:
                        counts["dropped_boxes"] += 1  # entirely outside the image
                        continue
                    counts["clipped_boxes"] += c is not b
                    kept.append(c)
                image = ImageRecord(item.image_id, stem(item.image_id), row.columns, row.rows, split_of[item.image_id],
                                    kept)
                writer.add(image)
                relpath = writer.image_relpath(image)
                if images_mode != "none":
                    hashes[item.image_id] = write_image(
                        ctx.settings.data_dir / row.store_path, tmp / relpath, image_format,
                        lambda: render_display(load_pixels(ctx.settings, row.store_path)), link=images_mode == "link")
                    file_hashes[relpath] = hashes[item.image_id]
                normal = bool(row.normal) and "imported" in f.sources  # an imported known negative
                labels.add({"file": relpath, "image_id": item.image_id, "split": image.split, "region": item.region,
                            "region_source": item.region_source,
                            "region_confidence": None if item.confidence is None else repr(item.confidence),
                            "lesion_boxes": len(kept), "abnormal": 1 if kept else 0 if normal else None})
                counts["images"] += 1
                counts["boxes"] += len(kept)
                counts["images_without_boxes"] += not kept
                per_split[image.split]["images"] += 1
                per_split[image.split]["boxes"] += len(kept)
            if hashes:
                with ctx.db.session() as s:
                    record_exported(s, hashes)
            ctx.progress(counts["images"], total, f"{counts['images']}/{total} images")
        writer.close()
        labels.close()
        ctx.progress(total, total, "checksums")
        manifest = write_manifest(tmp, {
            "format": fmt, "image_format": image_format if images_mode != "none" else None,
            "images_included": images_mode != "none", "installation": installation_id(ctx.settings),
            "filters": {"sources": list(f.sources), "min_score": f.min_score, "regions": list(f.regions),
                        "run_id": f.run_id, "model_version": f.model_version},
            "split": {"fractions": fractions, "seed": seed, "grouped_by": "patient and study"},
            "categories": [{"id": c.id, "name": c.name} for c in cats],
            "counts": {**counts, "discarded_images_left_out": discarded}, "splits": per_split,
        }, known=file_hashes)
        _publish(tmp, out, bool(p.force))
    except BaseException:  # a failed or cancelled export leaves nothing behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out=str(out), format=fmt, checksum=manifest["checksum"], **manifest["counts"],
                        splits=per_split).to_json()
