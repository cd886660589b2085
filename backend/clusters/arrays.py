"""The arrays a clustering run leaves on disk, next to its rows in the database.

``runs/<run_id>/arrays.npz`` holds, row-aligned: ``image_ids`` (int64), ``embeddings``
(float32, L2-normalised, what the network saw), ``umap`` (float32 n x 2), ``assignments``
(int64, the run's original cluster index per image) and ``centroids`` (float32 k x d). Splits
re-cluster members from these embeddings; the overview draws the UMAP map from them."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.config import Settings
from imaging.files import write_atomic


@dataclass
class RunArrays:
    image_ids: np.ndarray
    embeddings: np.ndarray
    umap: np.ndarray
    assignments: np.ndarray
    centroids: np.ndarray

    def rows_of(self, image_ids) -> np.ndarray:
        """Row positions of the given image ids (KeyError for an id not in the run)."""
        pos = {int(i): r for r, i in enumerate(self.image_ids)}
        return np.array([pos[int(i)] for i in image_ids], dtype=np.int64)


def run_dir(settings: Settings, run_id: int) -> Path:
    return settings.data_dir / "runs" / str(int(run_id))


def save_arrays(settings: Settings, run_id: int, arrays: RunArrays) -> Path:
    buf = io.BytesIO()
    np.savez(buf, image_ids=arrays.image_ids.astype(np.int64), embeddings=arrays.embeddings.astype(np.float32),
             umap=arrays.umap.astype(np.float32), assignments=arrays.assignments.astype(np.int64),
             centroids=arrays.centroids.astype(np.float32))
    return write_atomic(run_dir(settings, run_id) / "arrays.npz", buf.getvalue())


def load_arrays(settings: Settings, run_id: int) -> RunArrays:
    with np.load(run_dir(settings, run_id) / "arrays.npz") as z:
        return RunArrays(**{k: z[k] for k in ("image_ids", "embeddings", "umap", "assignments", "centroids")})
