"""Sorter versions in the model store (backend/database/model_versions.py): ``models/sorter/<version>/``
holds ``model.pt``, ``metadata.json`` (training data hash, metrics, config), ``report.html`` and
``embeddings.npz`` (the sorter's embedding of every image it predicted, for similar cases)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from backend.database import model_versions as model_store
from backend.config import Settings
from backend.database.schema import ModelKind, ModelVersion
from clustering.sorter.model import Sorter


def version_dir(settings: Settings, version: str) -> Path:
    return model_store.version_dir(settings, ModelKind.sorter, version)


def active_version(s: Session) -> ModelVersion | None:
    """The sorter that predicts and that the web UI shows: the newest promoted version."""
    return model_store.active_version(s, ModelKind.sorter)


def find_version(s: Session, version: str | None) -> ModelVersion | None:
    """A version by name (any status), or the active one when ``version`` is None."""
    return model_store.find_version(s, ModelKind.sorter, version)


def write_version(settings: Settings, version: str, model: Sorter, metadata: dict, report_html: str,
                  image_ids: np.ndarray, embeddings: np.ndarray) -> Path:
    def fill(tmp: Path) -> None:
        model.save(tmp / "model.pt")
        model_store.write_json(tmp / "metadata.json", metadata)
        (tmp / "report.html").write_text(report_html, encoding="utf-8")
        np.savez(tmp / "embeddings.npz", image_ids=np.asarray(image_ids, np.int64),
                 embeddings=np.asarray(embeddings, np.float32))

    return model_store.write_version_dir(settings, ModelKind.sorter, version, fill) / "model.pt"


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
