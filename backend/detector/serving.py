"""What the ML backend (ml_backend.service) reads and writes in samx's database and files."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from backend.config import Settings
from backend.database.schema import Image, ImageStatus, ModelKind, ModelVersion
from backend.database.session import Database
from backend.detector.retrain import maybe_retrain
from backend.detector.store import active_version, load_version
from backend.images.store import load_pixels
from backend.images.tensors import tensor_cache
from backend.labelstudio.annotations import DELETE_ACTIONS, UPSERT_ACTIONS, apply_event
from backend.labelstudio.sync import local_path
from backend.sorter.predictions import predicted_regions
from backend.sorter.retrain import maybe_retrain as maybe_retrain_sorter
from ml_backend.models.bundle import DetectorVersion
from ml_backend.service import SamxBackend, StoredImage

log = logging.getLogger("samx.ml_backend")

START_TRAINING = "START_TRAINING"


class DatabaseStore:
    """ml_backend.service.Store over samx's database, image store and Label Studio files."""

    def __init__(self, settings: Settings, db: Database):
        self.settings, self.db = settings, db
        self.min_score = settings.detector_min_score

    def _stored(self, img: Image | None) -> StoredImage | None:
        """The image if it is imported with its pixels in the store, else None."""
        if img is None or img.status != ImageStatus.imported or not img.store_path:
            return None
        store_path = img.store_path
        return StoredImage(img.id, int(img.columns or 0), int(img.rows or 0), img.content_hash,
                           lambda: load_pixels(self.settings, store_path))

    def image(self, image_id: int) -> StoredImage | None:
        with self.db.session() as s:
            return self._stored(s.get(Image, image_id))

    def image_of_file(self, path: Path) -> StoredImage | None:
        with self.db.session() as s:  # display renditions are named by the content hash
            return self._stored(s.scalar(select(Image).where(Image.content_hash == path.stem,
                                                             Image.status == ImageStatus.imported)))

    def local_file(self, url: str) -> Path:
        return local_path(self.settings, url)

    def model_input(self, image: StoredImage, model: DetectorVersion) -> np.ndarray:
        return tensor_cache(self.settings, model.detector.config.input_recipe).get(image.key, image.load)

    def region(self, image_id: int) -> tuple[str, float] | None:
        with self.db.session() as s:
            return predicted_regions(s, [image_id]).get(image_id)

    def latest_version(self) -> str | None:
        with self.db.session() as s:
            mv = active_version(s)
            return mv.version if mv is not None and mv.path else None

    def load_version(self, version: str) -> DetectorVersion:
        return load_version(self.settings, version)

    def versions(self) -> list[dict[str, Any]]:
        with self.db.session() as s:
            rows = s.scalars(select(ModelVersion).where(ModelVersion.kind == ModelKind.detector).order_by(ModelVersion.id.desc()))
            return [{"version": mv.version, "status": mv.status, "created_at": mv.created_at.isoformat(),
                     "metrics": mv.metrics} for mv in rows]

    def is_event(self, action: str) -> bool:
        return action in UPSERT_ACTIONS or action in DELETE_ACTIONS or action == START_TRAINING

    def apply_event(self, action: str, payload: dict[str, Any]) -> None:
        if action == START_TRAINING:
            job = maybe_retrain(self.db, force_reason="Label Studio: START_TRAINING")
        else:
            res = apply_event(self.db, action, payload)
            for err in res.errors:
                log.warning("webhook %s: %s", action, err)
            job = maybe_retrain(self.db) if res.upserted or res.deleted else None
            sorter_job = maybe_retrain_sorter(self.db) if res.labels else None
            if sorter_job is not None:
                log.info("webhook %s: region choices changed labels, queued sorter training, job %d",
                         action, sorter_job.id)
        if job is not None:
            log.info("webhook %s: queued detector training, job %d", action, job.id)


def ml_backend_service(settings: Settings, db: Database, *, cache_images: int = 64) -> SamxBackend:
    """The ML backend's application over this installation's data (not started)."""
    return SamxBackend(DatabaseStore(settings, db), cache_images=cache_images)
