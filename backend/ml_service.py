"""The application behind ``samx ml-backend``: what ml_backend/server.py asks of it.

Predictions come from the active detector version in the model store (hot-swapped by
ml_backend.model_slot once a new one is complete and passes a smoke prediction), fused with the
image-level classifier, plus the body region from the sorter's stored prediction. Images are
read from our own store by the task's ``samx_image_id`` (or a /data/local-files/ URL of the
files samx gives Label Studio); a URL anywhere else is refused, never fetched. Webhook events are queued and
applied by one thread, so Label Studio gets its answer at once and events apply in order."""
from __future__ import annotations

import logging
import queue
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select

from backend.config import Settings
from backend.db import Database
from backend.detector_data import input_cache, offered_boxes, scale_of
from backend.detector_retrain import maybe_retrain
from backend.detector_store import KIND as DETECTOR
from backend.detector_store import DetectorVersion, active_version, load_version
from backend.image_store import load_pixels
from backend.labelstudio.annotations import DELETE_ACTIONS, UPSERT_ACTIONS, apply_event
from backend.labelstudio.results import prediction_result
from backend.labelstudio.sync import LOCAL_FILES_URL, local_path
from backend.ml_backend_auth import credentials
from backend.models import Image, ImageStatus, ModelVersion
from backend.sorter_job import predicted_regions
from backend.sorter_retrain import maybe_retrain as maybe_retrain_sorter
from imaging.reader import read_radiograph
from imaging.tensor_cache import prepare_tensor
from ml_backend.model_slot import ModelSlot
from ml_backend.protocol import TaskError

log = logging.getLogger("samx.ml_backend")

NO_MODEL = "samx-no-detector-yet"  # stable and non-empty, as Label Studio's /setup needs
MAX_PIXELS = 120_000_000  # the ingest limit: nothing larger is decoded


class SamxBackend:
    def __init__(self, settings: Settings, db: Database, *, cache_images: int = 64):
        self.settings, self.db = settings, db
        self.slot = ModelSlot(self._latest, self._load, self._smoke)
        self._inputs: OrderedDict[str, np.ndarray] = OrderedDict()  # in-memory LRU in front of the disk cache
        self._inputs_lock = threading.Lock()
        self._cache_images = cache_images
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, watch_every: float = 2.0) -> "SamxBackend":
        self.slot.refresh()
        self.slot.watch(watch_every, self._stop)
        threading.Thread(target=self._apply_events, name="webhook-events", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._events.put(None)

    def wait_events(self, timeout: float = 30.0) -> None:
        """Block until every queued event is applied (tests, graceful shutdown)."""
        done = threading.Event()
        self._events.put(done)
        done.wait(timeout)

    # -- the protocol ------------------------------------------------------------------------
    def model_version(self) -> str:
        cur = self.slot.current
        return cur.version if cur else NO_MODEL

    def versions(self) -> list[dict[str, Any]]:
        with self.db.session() as s:
            rows = s.scalars(select(ModelVersion).where(ModelVersion.kind == DETECTOR).order_by(ModelVersion.id.desc()))
            return [{"version": mv.version, "status": mv.status, "created_at": mv.created_at.isoformat(),
                     "metrics": mv.metrics} for mv in rows]

    def on_event(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        if action in UPSERT_ACTIONS or action in DELETE_ACTIONS or action == "START_TRAINING":
            self._events.put((action, payload))
            return {"status": "accepted", "action": action}
        return {"status": "ignored", "action": action}

    def predict_task(self, task: dict[str, Any]) -> dict[str, Any]:
        cur = self.slot.current  # read once: a swap mid-request does not change this request's model
        image, key, load = self._resolve(task)
        width, height = int(image["width"]), int(image["height"])
        det, p, threshold, score = None, None, 0.5, 0.0
        if cur is not None:
            model: DetectorVersion = cur.model
            x = self._input(key, load, model.detector.config.size)
            if model.classifier is not None:
                p, threshold = float(model.classifier.predict_proba([x])[0]), model.threshold
            det = offered_boxes(model.detector.predict([x])[0], scale_of(width, height, x), p, threshold,
                                self.settings.detector_min_score)
            score = p if p is not None else float(det.scores.max(initial=0.0))
        result = prediction_result(det, width, height, p_abnormal=p, threshold=threshold,
                                   region=self._region(image.get("id")))
        return {"result": result, "score": round(float(score), 4), "model_version": cur.version if cur else NO_MODEL}

    # -- images ------------------------------------------------------------------------------
    def _resolve(self, task: dict[str, Any]):
        """(image facts, cache key, pixel loader) for a task, or TaskError."""
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        task_id = task.get("id")
        raw = data.get("samx_image_id")
        if raw is not None:
            try:
                image_id = int(raw)
            except (TypeError, ValueError):
                raise TaskError(400, f"samx_image_id must be an integer, got {raw!r}", task_id) from None
            with self.db.session() as s:
                img = s.get(Image, image_id)
                if img is None or img.status != ImageStatus.imported or not img.store_path:
                    raise TaskError(404, f"image {image_id} is not in this samx store", task_id)
                facts = {"id": img.id, "width": img.columns, "height": img.rows}
                key, store_path = img.content_hash, img.store_path
            self._check_size(facts, task_id)
            return facts, key, lambda: load_pixels(self.settings, store_path)
        url = data.get("image")
        if not isinstance(url, str) or not url:
            raise TaskError(404, "the task names no samx image (data.samx_image_id) and no image URL", task_id)
        path = self._local_file(url, task_id)
        with self.db.session() as s:  # one of our display renditions: predict on the stored original
            img = s.scalar(select(Image).where(Image.content_hash == path.stem, Image.status == ImageStatus.imported))
            if img is not None and img.store_path:
                return self._resolve({"id": task_id, "data": {"samx_image_id": img.id}})
        try:
            with warnings.catch_warnings():  # PIL warns above 89 MP; our own limit answers below
                warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
                with PILImage.open(path) as im:  # the header only: a decompression bomb is refused before decoding
                    facts = {"id": None, "width": im.width, "height": im.height}
        except PILImage.DecompressionBombError as exc:  # PIL refuses far beyond our limit before we ask
            raise TaskError(413, f"image is over the {MAX_PIXELS // 1_000_000} megapixel limit ({exc})", task_id) from None
        except Exception:
            raise TaskError(400, f"{path.name} is not an image", task_id) from None
        self._check_size(facts, task_id)
        stat = path.stat()
        return facts, f"file:{path}:{stat.st_mtime_ns}:{stat.st_size}", lambda: read_radiograph(path).pixels

    def _local_file(self, url: str, task_id) -> Path:
        """Only Label Studio's local-files URLs of our own files root are read; nothing is fetched."""
        if not url.startswith(LOCAL_FILES_URL):  # no scheme, no host: nothing is fetched from anywhere
            raise TaskError(400, f"image URL {url[:200]!r} is outside the samx store: only {LOCAL_FILES_URL}... "
                                 "URLs of samx's Label Studio files are read", task_id)
        try:
            path = local_path(self.settings, url)
        except ValueError as exc:
            raise TaskError(400, str(exc), task_id) from None
        if not path.is_file():
            raise TaskError(404, f"{url[:200]!r}: no such file in the samx store", task_id)
        return path

    @staticmethod
    def _check_size(facts: dict, task_id) -> None:
        w, h = int(facts.get("width") or 0), int(facts.get("height") or 0)
        if w * h > MAX_PIXELS:
            raise TaskError(413, f"image is {w} x {h} pixels; the limit is {MAX_PIXELS // 1_000_000} megapixels",
                            task_id)
        if w <= 0 or h <= 0:
            raise TaskError(400, "image has no size on record", task_id)

    def _input(self, key: str, load, size: int) -> np.ndarray:
        lru_key = f"{key}@{size}"
        with self._inputs_lock:
            if lru_key in self._inputs:
                self._inputs.move_to_end(lru_key)
                return self._inputs[lru_key]
        if key.startswith("file:"):
            x = prepare_tensor(load(), size, "fhe", crop_to_body=False, square=False).astype(np.float32)
        else:
            x = np.asarray(input_cache(self.settings, size).get(key, load), dtype=np.float32)
        with self._inputs_lock:
            self._inputs[lru_key] = x
            while len(self._inputs) > self._cache_images:
                self._inputs.popitem(last=False)
        return x

    def _region(self, image_id: int | None) -> tuple[str, float] | None:
        if image_id is None:
            return None
        with self.db.session() as s:
            return predicted_regions(s, [image_id]).get(image_id)

    # -- models ------------------------------------------------------------------------------
    def _latest(self) -> str | None:
        with self.db.session() as s:
            mv = active_version(s)
            return mv.version if mv is not None and mv.path else None

    def _load(self, version: str) -> DetectorVersion:
        return load_version(self.settings, version)

    @staticmethod
    def _smoke(model: DetectorVersion) -> None:
        x = np.zeros((model.detector.config.size, model.detector.config.size), np.float32)
        x[64:128, 64:128] = 1.0
        det = model.detector.predict([x])[0]
        if not np.isfinite(det.scores).all() or not np.isfinite(det.boxes).all():
            raise ValueError("smoke prediction gave non-finite boxes or scores")
        if model.classifier is not None and not np.isfinite(model.classifier.predict_proba([x])).all():
            raise ValueError("smoke prediction of the classifier is not finite")

    # -- webhook events ----------------------------------------------------------------------
    def _apply_events(self) -> None:
        while True:
            item = self._events.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            action, payload = item
            try:
                if action == "START_TRAINING":
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
            except Exception:  # one bad event must not stop the ones behind it
                log.exception("webhook %s failed", action)



def serve(settings: Settings, host: str = "127.0.0.1", port: int = 9090, *, watch_every: float = 2.0,
          server: str = "werkzeug", threads: int = 8) -> None:
    """``samx ml-backend`` until Ctrl-C/SIGTERM. One process either way: the model slot, its
    watcher and the webhook debounce live in it (``threads`` serve requests; gunicorn's gthread
    worker in production)."""
    from ml_backend.server import create_app

    running: list[SamxBackend] = []

    def build():
        backend = SamxBackend(settings, Database(settings)).start(watch_every)
        running.append(backend)
        log.info("ml backend on http://%s:%d serving %s", host, port, backend.model_version())
        return create_app(backend, basic_auth=credentials(settings))

    def stop():
        while running:
            running.pop().stop()

    if server == "gunicorn":
        from backend.production_server import run_gunicorn

        run_gunicorn(build, host, port, workers=1, threads=threads, on_exit=stop)
        return
    from werkzeug.serving import run_simple

    try:
        run_simple(host, port, build(), threaded=True, use_reloader=False, use_debugger=False)
    finally:
        stop()
