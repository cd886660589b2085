"""Label Studio webhook events -> our database: annotations, their boxes, the image-level answers.

Label Studio sends ANNOTATION_CREATED / ANNOTATION_UPDATED with the annotation and its task,
ANNOTATIONS_CREATED with lists of both (bulk import), ANNOTATIONS_DELETED with ids only. Events
can arrive twice or late, so each annotation is an upsert keyed by its Label Studio id, an event
older than what we hold is ignored, and a deleted annotation stays deleted. Boxes arrive in
percent of the image (top-left origin, maybe rotated); we store float pixels of the original.
The annotator's body-region choice is a person's label for that one image: it supersedes the
image's weak label (a cluster name, say) with provenance pointing back to the annotation."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.database.session import Database, current_label, label_id, supersede_label
from ml_backend.labeling_config import ABNORMAL, ABNORMAL_FROM_NAME, LESION_FROM_NAME, REGION_FROM_NAME
from backend.database.schema import (Annotation, AnnotationSource, Box, BoxSource, Image, LabelKind, LabelSource, WeakLabel,
                                     utcnow)

UPSERT_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"}
DELETE_ACTIONS = {"ANNOTATIONS_DELETED", "ANNOTATION_DELETED"}


class SyncError(ValueError):
    """An event we cannot apply (no samx image behind the task, a malformed annotation)."""


@dataclass
class SyncResult:
    upserted: list[int] = field(default_factory=list)  # our annotation ids
    deleted: int = 0
    stale: int = 0
    boxes: int = 0
    labels: int = 0  # weak labels a region choice set or confirmed
    errors: list[str] = field(default_factory=list)


def apply_event(db: Database, action: str, payload: dict[str, Any]) -> SyncResult:
    """Apply one webhook event; other actions (project, tasks) are ignored."""
    result = SyncResult()
    if action in UPSERT_ACTIONS:
        anns, tasks = payload.get("annotation"), payload.get("task")
        pairs = list(zip(anns, tasks)) if isinstance(anns, list) and isinstance(tasks, list) else [(anns, tasks)]
        for ann, task in pairs:
            try:
                with db.session() as s:
                    upsert_annotation(s, ann, task, result)
            except SyncError as exc:
                result.errors.append(str(exc))
            except IntegrityError:  # the one-current-label index: a correction in samx won the race
                result.errors.append(f"annotation {ann.get('id') if isinstance(ann, dict) else '?'}: the image's "
                                     "label changed at the same moment; update the annotation to apply it again")
    elif action in DELETE_ACTIONS:
        ids = [str(a.get("id")) for a in payload.get("annotations") or [payload.get("annotation") or {}]
               if isinstance(a, dict) and a.get("id") is not None]
        with db.session() as s:
            for ann in s.scalars(select(Annotation).where(Annotation.source == AnnotationSource.labelstudio,
                                                          Annotation.external_id.in_(ids))):
                if ann.deleted_at is None:
                    ann.deleted_at = utcnow()
                    s.execute(delete(Box).where(Box.annotation_id == ann.id))
                    result.deleted += 1
    return result


def upsert_annotation(s: Session, ann: Any, task: Any, result: SyncResult) -> None:
    if not isinstance(ann, dict) or ann.get("id") is None or not isinstance(ann.get("result", []), list):
        raise SyncError(f"malformed annotation in event: {str(ann)[:200]}")
    image = _image_of(s, task)
    external_id = str(ann["id"])
    updated = str(ann.get("updated_at") or ann.get("created_at") or "")
    row = s.scalar(select(Annotation).where(Annotation.source == AnnotationSource.labelstudio, Annotation.external_id == external_id))
    if row is not None and (row.deleted_at is not None or (row.external_updated_at and updated
                                                           and updated < row.external_updated_at)):
        result.stale += 1
        return
    if row is None:
        row = Annotation(source=AnnotationSource.labelstudio, external_id=external_id, image_id=image.id)
        s.add(row)
    row.image_id = image.id
    row.task_external_id = str(task.get("id")) if isinstance(task, dict) and task.get("id") is not None else None
    row.annotator = _annotator(ann.get("completed_by"))
    row.cancelled = bool(ann.get("was_cancelled"))
    row.external_updated_at = updated or None
    row.abnormal, region = None, None
    boxes: list[Box] = []
    for item in ann.get("result") or []:
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            continue
        value, name = item["value"], item.get("from_name")
        if name == LESION_FROM_NAME and item.get("type") == "rectanglelabels":
            box = _box(value, image)
            names = value.get("rectanglelabels") or []
            if box is not None and names:
                x, y, w, h = box
                boxes.append(Box(image_id=image.id, label_id=label_id(s, LabelKind.lesion, str(names[0])[:128]), x=x, y=y,
                                 width=w, height=h, source=BoxSource.annotation,
                                 external_id=f"{external_id}:{item.get('id', '')}"))
        elif name == ABNORMAL_FROM_NAME and value.get("choices"):
            row.abnormal = value["choices"][0] == ABNORMAL
        elif name == REGION_FROM_NAME and value.get("choices"):
            region = label_id(s, LabelKind.region, str(value["choices"][0])[:128])
    row.region_label_id = region
    s.flush()
    s.execute(delete(Box).where(Box.annotation_id == row.id))
    for box in boxes:
        box.annotation_id = row.id
        s.add(box)
    if region is not None and not row.cancelled and _label_region(s, image.id, region, row.id):
        result.labels += 1
    result.upserted.append(row.id)
    result.boxes += len(boxes)


def _label_region(s: Session, image_id: int, region_id: int, annotation_id: int) -> bool:
    """Supersede the image's weak label with the annotator's region, unless a person's label
    (this annotation's or another) already says the same."""
    current = current_label(s, image_id)
    if current is not None and current.label_id == region_id and current.source == LabelSource.manual:
        return False
    supersede_label(s, current, WeakLabel(image_id=image_id, label_id=region_id, source=LabelSource.manual,
                                          annotation_id=annotation_id))
    return True


def _image_of(s: Session, task: Any) -> Image:
    data = task.get("data") if isinstance(task, dict) else None
    raw = data.get("samx_image_id") if isinstance(data, dict) else None
    try:
        image_id = int(raw)
    except (TypeError, ValueError):
        raise SyncError(f"task {task.get('id') if isinstance(task, dict) else '?'} has no samx_image_id: "
                        "not a task samx imported") from None
    image = s.get(Image, image_id)
    if image is None:
        raise SyncError(f"task {task.get('id')}: image {image_id} is not in this samx database")
    return image


def _annotator(completed_by: Any) -> str | None:
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("email") or completed_by.get("id")
    return None if completed_by is None else str(completed_by)[:255]


def _box(value: dict, image: Image) -> tuple[float, float, float, float] | None:
    """Percent (maybe rotated about its top-left corner) -> axis-aligned float pixels, clipped."""
    try:
        x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
    except (KeyError, TypeError, ValueError):
        return None
    W, H = float(image.columns or 0), float(image.rows or 0)
    x, y, w, h = x * W / 100, y * H / 100, w * W / 100, h * H / 100
    angle = math.radians(float(value.get("rotation") or 0.0))
    if angle:
        c, si = math.cos(angle), math.sin(angle)
        xs = [x, x + w * c, x + w * c - h * si, x - h * si]
        ys = [y, y + w * si, y + w * si + h * c, y + h * c]
        x, y, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(W, x + w), min(H, y + h)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return x0, y0, x1 - x0, y1 - y0
