"""manifest.json (counts, filters, checksum) and SHA256SUMS (``sha256sum -c SHA256SUMS``)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"


def _sha256(path: Path) -> str:
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


def write_manifest(out: Path, manifest: dict) -> dict:
    """Hash every file into SHA256SUMS; the manifest's checksum is the hash of that list, so one
    value says whether two exports are identical."""
    out = Path(out)
    lines = "".join(f"{_sha256(out / rel)}  {rel}\n" for rel in dataset_files(out))
    (out / SUMS).write_text(lines, encoding="utf-8")
    manifest = {**manifest, "checksum": hashlib.sha256(lines.encode()).hexdigest()}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False, sort_keys=True) + "\n",
                                encoding="utf-8")
    return manifest


def read_manifest(path: Path) -> dict | None:
    p = Path(path) / MANIFEST
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
