"""COCO instances JSON: written in one streaming pass, read back for import.

The known defects of other exporters are what this avoids: one image entry per image (not per
annotation), 1-based stable category ids, float pixel boxes (no rounding), images without boxes
kept, and annotation ids in a deterministic order."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from exports.images import IMAGE_FORMATS
from exports.records import BoxRecord, Category, DatasetError, ImageRecord, ReadImage

INFO = {"description": "samx export", "contributor": "samx", "version": "1.0"}


def _dump(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class CocoWriter:
    """OUT/annotations/instances_<split>.json and OUT/images/<split>/<stem>.<ext>, the layout
    ``torchvision.datasets.CocoDetection(OUT/images/<split>, OUT/annotations/instances_<split>.json)``
    reads as it is."""

    format = "coco"

    def __init__(self, out: Path, categories: list[Category], splits: Iterable[str], image_format: str = "png16"):
        self.out, self.categories, self.ext = Path(out), categories, IMAGE_FORMATS[image_format]
        self.splits = list(splits)
        # Two spools per split, images and annotations, joined on close: one pass, constant memory.
        self._spool = {s: (tempfile.TemporaryFile("w+", encoding="utf-8"), tempfile.TemporaryFile("w+", encoding="utf-8"))
                       for s in self.splits}
        self._counts = {s: [0, 0] for s in self.splits}

    def image_relpath(self, image: ImageRecord) -> str:
        return f"images/{image.split}/{image.stem}{self.ext}"

    def annotation_file(self, split: str) -> Path:
        return self.out / "annotations" / f"instances_{split}.json"

    def add(self, image: ImageRecord) -> None:
        images, anns = self._spool[image.split]
        counts = self._counts[image.split]
        images.write(("," if counts[0] else "") + "\n" + _dump(
            {"id": image.id, "file_name": f"{image.stem}{self.ext}", "width": image.width, "height": image.height}))
        counts[0] += 1
        for box in sorted(image.boxes, key=BoxRecord.sort_key):
            counts[1] += 1
            ann = {"id": counts[1], "image_id": image.id, "category_id": box.category_id,
                   "bbox": [box.x, box.y, box.w, box.h], "area": box.area, "iscrowd": 0,
                   "segmentation": []}  # boxes only: no mask (datumaro warns when the key is missing)
            if box.score is not None:
                ann["score"] = box.score
            anns.write(("," if counts[1] > 1 else "") + "\n" + _dump(ann))

    def close(self) -> None:
        cats = [{"id": c.id, "name": c.name, "supercategory": c.supercategory} for c in self.categories]
        for split, (images, anns) in self._spool.items():
            path = self.annotation_file(split)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write('{"info":' + _dump(INFO) + ',"licenses":[],\n"categories":' + _dump(cats) + ',\n"images":[')
                for part, tail in ((images, '\n],\n"annotations":['), (anns, "\n]}\n")):
                    part.seek(0)
                    while chunk := part.read(1 << 20):
                        f.write(chunk)
                    f.write(tail)
                    part.close()


def read_coco(annotation_file: Path, image_dir: Path) -> tuple[list[Category], Iterator[ReadImage]]:
    """Categories and images (with boxes by category name) of one COCO instances file."""
    try:
        data = json.loads(Path(annotation_file).read_text(encoding="utf-8"))
        cats = [Category(int(c["id"]), str(c["name"]), str(c.get("supercategory") or "lesion"))
                for c in data.get("categories", [])]
        images = data["images"]
        anns = data.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{annotation_file}: not a COCO instances file ({type(exc).__name__}: {exc})") from None
    names = {c.id: c.name for c in cats}
    by_image: dict = {}
    for a in anns:
        by_image.setdefault(a.get("image_id"), []).append(a)

    def generate() -> Iterator[ReadImage]:
        for im in images:
            rec = ReadImage(path=str(Path(image_dir) / str(im.get("file_name", ""))), file_name=str(im.get("file_name", "")),
                            width=im.get("width"), height=im.get("height"))
            for a in by_image.get(im.get("id"), []):
                try:
                    x, y, w, h = (float(v) for v in a["bbox"])
                    name = names[a["category_id"]]
                except (KeyError, TypeError, ValueError):
                    rec.problems.append(f"annotation {a.get('id')}: no valid bbox/category_id")
                    continue
                if a.get("iscrowd"):
                    rec.problems.append(f"annotation {a.get('id')}: iscrowd regions are not boxes; skipped")
                    continue
                rec.boxes.append((name, x, y, w, h))
            if im.get("id") not in by_image:
                rec.normal = True  # an image listed without annotations is a negative (COCOeval's reading)
            yield rec

    return cats, generate()
