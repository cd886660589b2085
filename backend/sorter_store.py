"""Sorter versions in the model store: ``models/sorter/<version>/`` holds ``model.pt``,
``metadata.json`` (training data hash, metrics, config), ``report.html`` and ``embeddings.npz``
(the sorter's embedding of every image it predicted, for similar cases).

A version folder is built under a temporary name and renamed into place, and its database row
is written after that: a crash never leaves a half-written model for anyone to load."""
from __future__ import annotations

import json
import os
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.models import ModelVersion
from clustering.sorter import Sorter

KIND = "sorter"
ACTIVE, REJECTED, RETIRED = "active", "rejected", "retired"


def version_dir(settings: Settings, version: str) -> Path:
    return settings.models_dir / KIND / version


def active_version(s: Session) -> ModelVersion | None:
    """The sorter that predicts and that the web UI shows: the newest promoted version."""
    return s.scalar(select(ModelVersion).where(ModelVersion.kind == KIND, ModelVersion.status == ACTIVE)
                    .order_by(ModelVersion.id.desc()).limit(1))


def find_version(s: Session, version: str | None) -> ModelVersion | None:
    """A version by name (any status), or the active one when ``version`` is None."""
    if version is None:
        return active_version(s)
    return s.scalar(select(ModelVersion).where(ModelVersion.kind == KIND, ModelVersion.version == version))


def write_version(settings: Settings, version: str, model: Sorter, metadata: dict, report_html: str,
                  image_ids: np.ndarray, embeddings: np.ndarray) -> Path:
    """Build the version folder next to its final place, then rename it in (atomic on one file system)."""
    final = version_dir(settings, version)
    tmp = final.with_name(f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save(tmp / "model.pt")
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=1, allow_nan=False, default=_json_default))
        (tmp / "report.html").write_text(report_html, encoding="utf-8")
        np.savez(tmp / "embeddings.npz", image_ids=np.asarray(image_ids, np.int64),
                 embeddings=np.asarray(embeddings, np.float32))
        if final.exists():
            _replace_dir(tmp, final)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / "model.pt"


def _replace_dir(tmp: Path, final: Path) -> None:
    # Only a retried job writes a version name twice; its earlier folder has no database row.
    shutil.rmtree(final)
    os.replace(tmp, final)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> Sorter:
    return Sorter.load(path)


def load_sorter(settings: Settings, mv: ModelVersion) -> Sorter:
    """The version's model, cached per process (the web app asks for it on every image page)."""
    path = settings.data_dir / mv.path
    return _load(str(path), path.stat().st_mtime)


@lru_cache(maxsize=4)
def _embeddings(path: str, mtime: float) -> tuple[dict[int, int], np.ndarray]:
    with np.load(path) as z:
        ids, emb = z["image_ids"], z["embeddings"]
    return {int(i): r for r, i in enumerate(ids)}, emb


def stored_embeddings(settings: Settings, mv: ModelVersion) -> tuple[dict[int, int], np.ndarray]:
    """(image id -> row, embeddings) of every image the version predicted when it was trained."""
    path = settings.data_dir / Path(mv.path).parent / "embeddings.npz"
    if not path.is_file():
        return {}, np.zeros((0, 0), np.float32)
    return _embeddings(str(path), path.stat().st_mtime)
