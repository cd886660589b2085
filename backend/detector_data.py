"""What the detector trains and predicts on, read from our database and store.

A labelled image is one with a live Label Studio annotation (the newest per image wins; an
annotation without boxes makes a labelled normal image) or with boxes imported from a COCO/VOC
dataset. The network input is the foreground-aware-equalised image with its long side at the
detector's size, cached by content hash (the same enhancement the sorter uses, whole image);
boxes scale between it and the original by one factor per axis."""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.image_store import load_pixels
from backend.models import Annotation, Box, Image, ImageStatus, Label, WeakLabel
from imaging.tensor_cache import TensorCache
from ml_backend.boxes import Detections
from ml_backend.fusion import fuse


@dataclass
class LabelledImage:
    image_id: int
    content_hash: str
    store_path: str
    width: int
    height: int
    patient: str | None
    study: str | None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # xywh, original px
    labels: list[str] = field(default_factory=list)
    abnormal: bool = False  # the radiologist's image-level answer, else "has a box"


def labelled_images(s: Session) -> list[LabelledImage]:
    latest: dict[int, Annotation] = {}
    for ann in s.scalars(select(Annotation).where(Annotation.deleted_at.is_(None), Annotation.cancelled.is_(False))
                         .order_by(Annotation.updated_at, Annotation.id)):
        latest[ann.image_id] = ann  # ascending: the newest overwrites
    imported = set(s.scalars(select(Box.image_id).where(Box.source == "imported").distinct()))
    ids = sorted(set(latest) | imported)
    if not ids:
        return []
    names = dict(s.execute(select(Label.id, Label.name)).all())
    boxes: dict[int, list[Box]] = {}
    keep_ann = {a.id for a in latest.values()}
    for box in s.scalars(select(Box).where(Box.image_id.in_(ids))):
        if (box.annotation_id in keep_ann) or (box.source == "imported" and box.image_id not in latest):
            boxes.setdefault(box.image_id, []).append(box)
    out = []
    for img in s.scalars(select(Image).where(Image.id.in_(ids), Image.status == ImageStatus.imported)
                         .order_by(Image.id)):
        bs = boxes.get(img.id, [])
        ann = latest.get(img.id)
        abnormal = bool(bs) if ann is None or ann.abnormal is None else bool(ann.abnormal)
        out.append(LabelledImage(img.id, img.content_hash, img.store_path, int(img.columns), int(img.rows),
                                 img.patient_pseudonym, img.study_uid,
                                 np.array([[b.x, b.y, b.width, b.height] for b in bs], np.float32).reshape(-1, 4),
                                 [names[b.label_id] for b in bs], abnormal or bool(bs)))
    return out


def unlabelled_images(s: Session) -> list[tuple[int, str, str, int, int]]:
    """(image id, content hash, store path, width, height) of imported images nobody annotated
    (nor discarded as not MSK: nobody should box those)."""
    annotated = select(Annotation.image_id).where(Annotation.deleted_at.is_(None))
    imported = select(Box.image_id).where(Box.source == "imported")
    discarded = select(WeakLabel.image_id).where(WeakLabel.superseded_at.is_(None), WeakLabel.label_id.is_(None))
    rows = s.execute(select(Image.id, Image.content_hash, Image.store_path, Image.columns, Image.rows)
                     .where(Image.status == ImageStatus.imported, Image.id.not_in(annotated), Image.id.not_in(imported),
                            Image.id.not_in(discarded))
                     .order_by(Image.id)).all()
    return [tuple(r) for r in rows]


def input_cache(settings: Settings, size: int) -> TensorCache:
    return TensorCache(settings.cache_dir / "tensors", size=size, method="fhe", crop_to_body=False, square=False)


def _one(settings: Settings, size: int, item: tuple[str, str]) -> np.ndarray:
    content_hash, store_path = item
    return np.asarray(input_cache(settings, size).get(content_hash, lambda: load_pixels(settings, store_path)),
                      dtype=np.float32)


def detector_inputs(settings: Settings, items: Sequence[tuple[str, str]], size: int,
                    workers: int | None = None) -> list[np.ndarray]:
    """(content hash, store path) pairs -> float32 inputs, long side ``size``; misses are
    enhanced in a process pool (tens of ms each at full resolution)."""
    fn = partial(_one, settings, size)
    workers = min(workers or os.cpu_count() or 1, len(items))
    cache = input_cache(settings, size)
    if workers <= 1 or sum(not cache.has(h) for h, _ in items) < 16:
        return [fn(it) for it in items]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.map(fn, items, chunksize=4)


def scale_of(width: int, height: int, prepared: np.ndarray) -> tuple[float, float]:
    """(sx, sy): input pixels per original pixel."""
    h, w = prepared.shape[:2]
    return w / float(width), h / float(height)


def to_input(boxes: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    return np.asarray(boxes, np.float32).reshape(-1, 4) * np.array([scale[0], scale[1], scale[0], scale[1]], np.float32)


def to_original(det: Detections, scale: tuple[float, float]) -> Detections:
    inv = np.array([1 / scale[0], 1 / scale[1], 1 / scale[0], 1 / scale[1]], np.float32)
    return Detections(det.boxes * inv, det.scores, det.labels)


def offered_boxes(det: Detections, scale: tuple[float, float], p_abnormal: float | None, threshold: float,
                  min_score: float) -> Detections:
    """What a radiologist is offered: input-pixel detections in original pixels, fused with the
    image-level classifier when there is one (VinDr-SpineXR), none under ``min_score``."""
    det = to_original(det, scale)
    if p_abnormal is not None:
        det = fuse([det], [p_abnormal], threshold)[0]
    return det.select(det.scores >= min_score)
