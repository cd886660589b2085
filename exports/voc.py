"""Pascal VOC: one XML per image, 1-based integer pixel coordinates as the VOC devkit.

A float box [x, y, w, h] covers the pixels floor(x) .. ceil(x + w) - 1 (0-based); VOC names
them 1-based and inclusive, so xmin = floor(x) + 1 and xmax = ceil(x + w). Rounding outwards,
never inwards, is what keeps boxes from shrinking by a pixel per export/import (truncation
drift), and decoding then re-encoding gives the same integers."""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable, Iterator

from exports.records import BoxRecord, Category, DatasetError, ImageRecord, ReadImage

#: torchvision's VOCDetection accepts a "test" image set only for the 2007 layout.
DEVKIT = Path("VOCdevkit") / "VOC2007"


def encode_box(box: BoxRecord, width: int, height: int) -> tuple[int, int, int, int]:
    xmin = max(1, math.floor(box.x) + 1)
    ymin = max(1, math.floor(box.y) + 1)
    xmax = min(width, max(xmin, math.ceil(box.x + box.w)))
    ymax = min(height, max(ymin, math.ceil(box.y + box.h)))
    return xmin, ymin, xmax, ymax


def decode_box(xmin: float, ymin: float, xmax: float, ymax: float) -> tuple[float, float, float, float]:
    """VOC (1-based, inclusive) -> float [x, y, w, h]."""
    return xmin - 1.0, ymin - 1.0, xmax - xmin + 1.0, ymax - ymin + 1.0


def _sub(parent: ET.Element, tag: str, text=None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = str(text)
    return el


def annotation_xml(image: ImageRecord, file_name: str, names: dict[int, str]) -> bytes:
    root = ET.Element("annotation")
    _sub(root, "folder", DEVKIT.name)
    _sub(root, "filename", file_name)
    source = _sub(root, "source")
    _sub(source, "database", "samx")
    _sub(source, "image_id", image.id)
    size = _sub(root, "size")
    _sub(size, "width", image.width)
    _sub(size, "height", image.height)
    _sub(size, "depth", 1)
    _sub(root, "segmented", 0)
    for box in sorted(image.boxes, key=BoxRecord.sort_key):
        xmin, ymin, xmax, ymax = encode_box(box, image.width, image.height)
        obj = _sub(root, "object")
        _sub(obj, "name", names[box.category_id])
        _sub(obj, "pose", "Unspecified")
        touches = xmin == 1 or ymin == 1 or xmax == image.width or ymax == image.height
        _sub(obj, "truncated", int(touches))
        _sub(obj, "difficult", 0)
        bb = _sub(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (xmin, ymin, xmax, ymax)):
            _sub(bb, tag, v)
    ET.indent(root, space="  ")
    # encoding="unicode" then one encode: ElementTree's own UTF-8 path re-encodes every write (2x slower).
    return ("<?xml version='1.0' encoding='utf-8'?>\n" + ET.tostring(root, encoding="unicode") + "\n").encode()


def palette(index: int) -> tuple[int, int, int]:
    """The VOC devkit's colour of class ``index`` (bit-interleaved; 0 is black, the background)."""
    rgb = [0, 0, 0]
    for bit in range(7, -1, -1):
        for c in range(3):
            rgb[c] |= ((index >> c) & 1) << bit
        index >>= 3
    return tuple(rgb)


def labelmap(names: Iterable[str]) -> str:
    """labelmap.txt, CVAT's and datumaro's list of a VOC dataset's classes (datumaro refuses an
    object whose class is not declared): ``label:color_rgb:parts:actions``, background first."""
    lines = [f"{name}:{','.join(map(str, palette(i)))}::\n" for i, name in enumerate(["background", *names])]
    return "# label:color_rgb:parts:actions\n" + "".join(lines)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "class"


class VocWriter:
    """OUT/VOCdevkit/VOC2007/{Annotations, JPEGImages, ImageSets/Main, labelmap.txt}: what
    ``torchvision.datasets.VOCDetection(OUT, year="2007", image_set=split)`` and datumaro read as it
    is. ImageSets/Main also gets trainval.txt and the devkit's per-class <class>_<split>.txt files."""

    format = "voc"

    def __init__(self, out: Path, categories: list[Category], splits: Iterable[str], image_format: str = "jpg"):
        if image_format != "jpg":
            raise ValueError("Pascal VOC images are JPEG (JPEGImages/<id>.jpg); use COCO or YOLO for 16-bit PNG")
        self.out, self.root = Path(out), Path(out) / DEVKIT
        self.categories, self.splits = categories, list(splits)
        self.names = {c.id: c.name for c in categories}
        (self.root / "Annotations").mkdir(parents=True, exist_ok=True)
        main = self.root / "ImageSets" / "Main"
        main.mkdir(parents=True, exist_ok=True)
        sets = [*self.splits, *(["trainval"] if {"train", "val"} <= set(self.splits) else [])]
        self._lists = {s: open(main / f"{s}.txt", "w", encoding="utf-8") for s in sets}
        self._class_lists = {(c.id, s): open(main / f"{_safe(c.name)}_{s}.txt", "w", encoding="utf-8")
                             for c in categories for s in sets}

    def image_relpath(self, image: ImageRecord) -> str:
        return f"{DEVKIT.as_posix()}/JPEGImages/{image.stem}.jpg"

    def add(self, image: ImageRecord) -> None:
        xml = annotation_xml(image, f"{image.stem}.jpg", self.names)
        (self.root / "Annotations" / f"{image.stem}.xml").write_bytes(xml)
        present = {b.category_id for b in image.boxes}
        for s in (image.split, "trainval") if image.split in ("train", "val") else (image.split,):
            if s in self._lists:
                self._lists[s].write(image.stem + "\n")
                for c in self.categories:
                    self._class_lists[c.id, s].write(f"{image.stem} {1 if c.id in present else -1:>2}\n")

    def close(self) -> None:
        for f in [*self._lists.values(), *self._class_lists.values()]:
            f.close()
        (self.root / "labelmap.txt").write_text(labelmap(c.name for c in self.categories), encoding="utf-8")


def _voc_root(path: Path) -> Path:
    path = Path(path)
    for candidate in (path / DEVKIT, path):
        if any((candidate / d).is_dir() for d in ("Annotations", "JPEGImages", "ImageSets")):
            return candidate
    raise DatasetError(f"{path}: no Annotations/, JPEGImages/ or ImageSets/ folder "
                       "(expected a VOC dataset or a VOCdevkit/VOC2007 tree)")


def _read_xml(xml_path: Path, root: Path) -> ReadImage:
    try:
        tree = ET.parse(xml_path).getroot()
        file_name = (tree.findtext("filename") or f"{xml_path.stem}.jpg").strip()
        w, h = tree.findtext("size/width"), tree.findtext("size/height")
        rec = ReadImage(path=str(root / "JPEGImages" / file_name), file_name=file_name,
                        width=int(float(w)) if w else None, height=int(float(h)) if h else None)
    except (ET.ParseError, ValueError) as exc:
        return ReadImage(path=str(xml_path), file_name=xml_path.name, width=None, height=None,
                         problems=[f"{xml_path.name}: unreadable annotation ({exc})"])
    for i, obj in enumerate(tree.iter("object")):
        try:
            name = (obj.findtext("name") or "").strip()
            coords = [float(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]
            if not name:
                raise ValueError("no name")
        except (TypeError, ValueError) as exc:
            rec.problems.append(f"{xml_path.name}: object {i + 1} has no valid name/bndbox ({exc})")
            continue
        rec.boxes.append((name, *decode_box(*coords)))
    rec.normal = True if not rec.boxes and not rec.problems else None
    return rec


def read_voc(path: Path) -> Iterator[ReadImage]:
    """Every image of a VOC tree with its boxes (float [x, y, w, h], decoded from 1-based pixels):
    those an XML describes, those ImageSets/Main lists and those JPEGImages holds, since datumaro
    and others write XML only for annotated images. An image with an XML or in an image set but
    without objects is a known negative; one JPEGImages merely holds is not (nothing says it was read)."""
    root = _voc_root(path)
    listed = {line.split()[0] for f in sorted((root / "ImageSets" / "Main").glob("*.txt"))
              for line in f.read_text(encoding="utf-8").splitlines() if line.strip()}
    held: dict[str, Path] = {}
    for p in sorted((root / "JPEGImages").glob("*")):
        if not p.name.startswith("."):
            held.setdefault(p.stem, p)
    records = {p.stem: _read_xml(p, root) for p in sorted((root / "Annotations").glob("*.xml"))}
    described = {Path(r.path).stem for r in records.values() if not r.problems}
    for stem in (listed | set(held)) - set(records) - described:
        image = held.get(stem) or root / "JPEGImages" / f"{stem}.jpg"  # missing: the importer reports it
        records[stem] = ReadImage(path=str(image), file_name=image.name, width=None, height=None,
                                  normal=True if stem in listed else None)
    for stem in sorted(records):
        yield records[stem]
