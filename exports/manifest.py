"""samx's own files in a dataset, under samx/ so no format's layout sees them (datumaro took a
root-level CSV for a "tabular" dataset): manifest.json (counts, filters, checksum), SHA256SUMS
(``sha256sum -c samx/SHA256SUMS`` from the dataset's folder) and image_labels.csv."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

SAMX_DIR = "samx"
MANIFEST = f"{SAMX_DIR}/manifest.json"
SUMS = f"{SAMX_DIR}/SHA256SUMS"
OLD_MANIFEST = "manifest.json"  # where exports before the samx/ folder had it


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def dataset_files(out: Path) -> list[str]:
    """Every file of the dataset, relative, sorted by bytes (locale-independent)."""
    out = Path(out)
    files = []
    for dirpath, _dirs, names in os.walk(out):
        for name in names:
            rel = (Path(dirpath) / name).relative_to(out).as_posix()
            if rel not in (MANIFEST, SUMS):
                files.append(rel)
    return sorted(files, key=lambda s: s.encode())


def write_manifest(out: Path, manifest: dict, known: dict[str, str] | None = None) -> dict:
    """Hash every file into SHA256SUMS (``known``: relative path -> hash already computed); the
    manifest's checksum is the hash of that list, so one value says whether two exports are identical."""
    out, known = Path(out), known or {}
    lines = "".join(f"{known.get(rel) or sha256_file(out / rel)}  {rel}\n" for rel in dataset_files(out))
    (out / SUMS).parent.mkdir(parents=True, exist_ok=True)
    (out / SUMS).write_text(lines, encoding="utf-8")
    manifest = {**manifest, "checksum": hashlib.sha256(lines.encode()).hexdigest()}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False, sort_keys=True) + "\n",
                                encoding="utf-8")
    return manifest


def read_manifest(path: Path) -> dict | None:
    for rel in (MANIFEST, OLD_MANIFEST):
        try:
            return json.loads((Path(path) / rel).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return None
