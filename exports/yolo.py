"""YOLO (Ultralytics layout): normalised "class cx cy w h" per line, classes.txt, data.yaml;
written for export, read back for import.

Coordinates are written with repr(): the shortest text that reads back as the same float, so
converting back reproduces the database's boxes to rounding error, tiny boxes included."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import yaml
from PIL import Image

from exports.images import IMAGE_FORMATS
from exports.records import BoxRecord, Category, DatasetError, ImageRecord, ReadImage

#: What Ultralytics takes for an image in a split folder (its IMG_FORMATS, less the exotic ones).
IMAGE_SUFFIXES = {".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}


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


def _names(data: dict, where: Path) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):  # {0: name, 1: name, ...}
        return [str(names[k]) for k in sorted(names, key=int)]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise DatasetError(f"{where}: no class names (expected names: {{0: name, ...}} or a list)")


def _split_images(entry, base: Path) -> Iterator[Path]:
    """A split as data.yaml gives it: a folder, a .txt list of images, or a list of either."""
    for item in entry if isinstance(entry, list) else [entry]:
        p = base / str(item)
        if p.suffix == ".txt" and p.is_file():
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
            yield from (p.parent / ln for ln in lines if ln)
        elif p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield p  # one image, or nothing there: the importer reports a missing file


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last /images/ of the path becomes /labels/, the suffix .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(sb.join(str(image).rsplit(sa, 1))).with_suffix(".txt")


def read_yolo(path: Path) -> Iterator[ReadImage]:
    """Images of an Ultralytics dataset (``path``: its data.yaml or the folder holding it) with
    their boxes in float pixels. An empty label file is a known negative (Ultralytics trains on it
    as background); an image without one is not labelled (nothing says it was read)."""
    path = Path(path)
    yaml_file = path if path.is_file() else path / "data.yaml"
    try:
        data = yaml.safe_load(yaml_file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DatasetError(f"{yaml_file}: not an Ultralytics data.yaml ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{yaml_file}: not an Ultralytics data.yaml (no mapping)")
    names = _names(data, yaml_file)
    base = yaml_file.parent / str(data.get("path") or "")
    seen: set[Path] = set()
    for split in ("train", "val", "test"):
        for image in _split_images(data.get(split) or [], base):
            if image in seen:
                continue
            seen.add(image)
            yield _read_labels(image, names, base)


def _read_labels(image: Path, names: list[str], base: Path) -> ReadImage:
    rel = image.relative_to(base).as_posix() if image.is_relative_to(base) else image.name
    rec = ReadImage(path=str(image), file_name=rel, width=None, height=None)
    labels = label_path(image)
    if not labels.is_file():
        return rec
    try:
        with Image.open(image) as im:  # reads the header only
            rec.width, rec.height = im.size
    except OSError as exc:
        rec.problems.append(f"{rel}: cannot read the image size ({exc}); its boxes were not imported")
        return rec
    for n, line in enumerate(labels.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            cls, *vals = line.split()
            if len(vals) != 4:
                raise ValueError(f"{len(vals)} values, not cx cy w h (segments are not boxes)")
            if not 0 <= int(cls) < len(names):
                raise ValueError(f"class {cls} is not in data.yaml's {len(names)} names")
            rec.boxes.append((names[int(cls)], *decode_box(*map(float, vals), rec.width, rec.height)))
        except ValueError as exc:
            rec.problems.append(f"{labels.name} line {n}: skipped ({exc})")
    rec.normal = True if not rec.boxes and not rec.problems else None
    return rec
