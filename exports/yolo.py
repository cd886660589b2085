"""YOLO (Ultralytics layout): normalised "class cx cy w h" per line, classes.txt, data.yaml.

Coordinates are written with repr(): the shortest text that reads back as the same float, so
converting back reproduces the database's boxes to rounding error, tiny boxes included."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import yaml

from exports.images import IMAGE_FORMATS
from exports.records import BoxRecord, Category, ImageRecord


def encode_box(box: BoxRecord, width: int, height: int) -> tuple[float, float, float, float]:
    return ((box.x + box.w / 2) / width, (box.y + box.h / 2) / height, box.w / width, box.h / height)


def decode_box(cx: float, cy: float, w: float, h: float, width: int, height: int) -> tuple[float, float, float, float]:
    """Normalised centre/size -> float pixel [x, y, w, h]."""
    return (cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height


class YoloWriter:
    """OUT/images/<split>/<stem>.<ext>, OUT/labels/<split>/<stem>.txt (empty for an image without
    boxes: a known negative), OUT/classes.txt and OUT/data.yaml. Class index = COCO id - 1."""

    format = "yolo"

    def __init__(self, out: Path, categories: list[Category], splits: Iterable[str], image_format: str = "png16"):
        self.out, self.categories, self.splits = Path(out), categories, list(splits)
        self.ext = IMAGE_FORMATS[image_format]
        if [c.id for c in categories] != list(range(1, len(categories) + 1)):
            raise ValueError("YOLO class indices need category ids 1..N without gaps")

    def image_relpath(self, image: ImageRecord) -> str:
        return f"images/{image.split}/{image.stem}{self.ext}"

    def add(self, image: ImageRecord) -> None:
        lines = []
        for box in sorted(image.boxes, key=BoxRecord.sort_key):
            values = " ".join(repr(v) for v in encode_box(box, image.width, image.height))
            lines.append(f"{box.category_id - 1} {values}\n")
        path = self.out / "labels" / image.split / f"{image.stem}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(lines), encoding="utf-8")

    def close(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "classes.txt").write_text("".join(c.name + "\n" for c in self.categories), encoding="utf-8")
        # No "path:" key: Ultralytics then resolves the split folders against this file's folder.
        data = {**{s: f"images/{s}" for s in self.splits}, "nc": len(self.categories),
                "names": {c.id - 1: c.name for c in self.categories}}
        text = "# samx export; train with: yolo detect train data=data.yaml\n" + yaml.safe_dump(
            data, sort_keys=False, allow_unicode=True)
        (self.out / "data.yaml").write_text(text, encoding="utf-8")
