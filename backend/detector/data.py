"""What the detector trains and predicts on, read from our database and store.

A labelled image is one with a live Label Studio annotation (the newest per image wins; an
annotation without boxes makes a labelled normal image) or with boxes imported from a COCO/VOC
dataset. The network input is what the detector's input recipe says (DetectorConfig.input_recipe: the
foreground-aware-equalised whole image, long side at the detector's size), made and cached by
backend.images.tensors; boxes scale between it and the original by one factor per axis
(ml_backend.models.boxes)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.database.schema import Annotation, Box, BoxSource, Image, ImageStatus, Label, WeakLabel
from backend.datasets.installation import NORMAL


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
    imported = set(s.scalars(select(Box.image_id).where(Box.source == BoxSource.imported).distinct()))
    # an imported dataset's known negatives: read and found normal, so they teach "no lesion here"
    imported |= {i for i, normal in s.execute(select(Image.id, Image.meta[NORMAL]).where(Image.meta[NORMAL].is_not(None)))
                 if normal}
    ids = sorted(set(latest) | imported)
    if not ids:
        return []
    names = dict(s.execute(select(Label.id, Label.name)).all())
    boxes: dict[int, list[Box]] = {}
    keep_ann = {a.id for a in latest.values()}
    for box in s.scalars(select(Box).where(Box.image_id.in_(ids))):
        if (box.annotation_id in keep_ann) or (box.source == BoxSource.imported and box.image_id not in latest):
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
    imported = select(Box.image_id).where(Box.source == BoxSource.imported)
    discarded = select(WeakLabel.image_id).where(WeakLabel.superseded_at.is_(None), WeakLabel.label_id.is_(None))
    rows = s.execute(select(Image.id, Image.content_hash, Image.store_path, Image.columns, Image.rows, Image.meta[NORMAL])
                     .where(Image.status == ImageStatus.imported, Image.id.not_in(annotated), Image.id.not_in(imported),
                            Image.id.not_in(discarded))
                     .order_by(Image.id)).all()
    return [tuple(r[:5]) for r in rows if not r[5]]  # a known negative is labelled already
