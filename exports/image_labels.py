"""image_labels.csv: the image-level labels beside the boxes, one row per exported image."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

COLUMNS = ("file", "image_id", "split", "region", "region_source", "region_confidence", "lesion_boxes", "abnormal")
FILE_NAME = "image_labels.csv"


class ImageLabelsWriter:
    def __init__(self, out: Path):
        self._f = open(Path(out) / FILE_NAME, "w", encoding="utf-8", newline="")
        self._w = csv.writer(self._f, lineterminator="\n")
        self._w.writerow(COLUMNS)

    def add(self, row: dict) -> None:
        self._w.writerow(["" if row.get(c) is None else row[c] for c in COLUMNS])

    def close(self) -> None:
        self._f.close()


def read_image_labels(path: Path) -> Iterator[dict[str, str]]:
    """Rows of an image_labels.csv (ours or one made to match), keyed by column name."""
    with open(path, encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f)
