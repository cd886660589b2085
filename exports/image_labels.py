"""image_labels.csv: the image-level labels beside the boxes, one row per exported image."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

from exports.manifest import SAMX_DIR

COLUMNS = ("file", "image_id", "split", "region", "region_source", "region_confidence", "lesion_boxes", "abnormal")
FILE_NAME = f"{SAMX_DIR}/image_labels.csv"
OLD_FILE_NAME = "image_labels.csv"  # at the root, before the samx/ folder


class ImageLabelsWriter:
    def __init__(self, out: Path):
        path = Path(out) / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "w", encoding="utf-8", newline="")
        self._w = csv.writer(self._f, lineterminator="\n")
        self._w.writerow(COLUMNS)

    def add(self, row: dict) -> None:
        self._w.writerow(["" if row.get(c) is None else row[c] for c in COLUMNS])

    def close(self) -> None:
        self._f.close()


def find_image_labels(root: Path) -> Path | None:
    """A dataset's image_labels.csv: samx/ first, then the root (older exports, or one made to match)."""
    return next((p for p in (Path(root) / FILE_NAME, Path(root) / OLD_FILE_NAME) if p.is_file()), None)


def read_image_labels(path: Path) -> Iterator[dict[str, str]]:
    """Rows of an image_labels.csv (ours or one made to match), keyed by column name."""
    with open(path, encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f)
