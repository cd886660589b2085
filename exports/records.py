"""The plain records every writer takes and every reader returns."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Category:
    """``id`` is 1-based and stable: the position in the vocabulary's order, not a row id."""

    id: int
    name: str
    supercategory: str = "lesion"


@dataclass(frozen=True)
class BoxRecord:
    """Float pixels of the original image, top-left origin (COCO's convention)."""

    category_id: int
    x: float
    y: float
    w: float
    h: float
    score: float | None = None

    @property
    def area(self) -> float:
        return self.w * self.h

    def sort_key(self) -> tuple:
        return (self.category_id, self.x, self.y, self.w, self.h)


@dataclass
class ImageRecord:
    """One exported image. ``stem`` names its files in every format; ``labels`` are the
    image-level labels (body region, ...) written to image_labels.csv."""

    id: int
    stem: str
    width: int
    height: int
    split: str
    boxes: list[BoxRecord] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class ReadImage:
    """An image as a reader found it in someone's dataset: the file and its boxes by label name."""

    path: str  # the image file, absolute
    file_name: str  # as the dataset names it
    width: int | None
    height: int | None
    boxes: list[tuple[str, float, float, float, float]] = field(default_factory=list)  # (label, x, y, w, h)
    labels: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: True where the format says the image was read and has no findings (a known negative, e.g. an
    #: empty YOLO label file); None where it only holds the image (no annotation file at all).
    normal: bool | None = None


def clip_box(box: BoxRecord, width: int, height: int) -> BoxRecord | None:
    """The part of ``box`` inside the image (the box itself if it fits); None if nothing is left."""
    if not all(math.isfinite(v) for v in (box.x, box.y, box.w, box.h)):
        return None
    if box.x >= 0 and box.y >= 0 and box.x + box.w <= width and box.y + box.h <= height and box.w > 0 and box.h > 0:
        return box  # untouched: recomputing w from x1 - x0 would change it by float rounding
    x0, y0 = min(max(box.x, 0.0), width), min(max(box.y, 0.0), height)
    x1, y1 = min(max(box.x + box.w, 0.0), width), min(max(box.y + box.h, 0.0), height)
    if x1 <= x0 or y1 <= y0:
        return None
    return BoxRecord(box.category_id, x0, y0, x1 - x0, y1 - y0, box.score)
