"""The application behind ``samx ml-backend``: what ml_backend/server.py asks of it.

Predictions come from the active detector version (hot-swapped by ml_backend.model_slot once a
new one is complete and passes a smoke prediction), fused with the image-level classifier, plus
the body region from the sorter's stored prediction. Images are read from samx's own store by
the task's ``samx_image_id`` (or a /data/local-files/ URL of the files samx gives Label Studio);
a URL anywhere else is refused, never fetched. Webhook events are queued and applied by one
thread, so Label Studio gets its answer at once and events apply in order.

Everything that lives in samx's database and files comes through a :class:`Store`
(backend.detector.serving implements it), so this package sits below the application."""
from __future__ import annotations

import logging
import queue
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image as PILImage

from imaging.reader import MAX_PIXELS, read_radiograph
from ml_backend.labeling_config import LOCAL_FILES_URL
from ml_backend.model_slot import ModelSlot
from ml_backend.models.boxes import scale_of
from ml_backend.models.bundle import DetectorVersion
from ml_backend.models.fusion import offered_boxes
from ml_backend.protocol import TaskError
from ml_backend.results import prediction_result

log = logging.getLogger("samx.ml_backend")

NO_MODEL = "samx-no-detector-yet"  # stable and non-empty, as Label Studio's /setup needs


@dataclass(frozen=True)
class StoredImage:
    """An image of samx's store as the service sees it: its size, a cache key, its pixels."""

    id: int | None  # None: a file outside the store
    width: int
    height: int
    key: str  # the content hash; for a file outside the store its path, mtime and size
    load: Callable[[], np.ndarray]  # the stored [0, 1] float pixels


class Store(Protocol):
    """What the service reads and writes in samx's database and files."""

    min_score: float  # offered boxes score at least this

    def image(self, image_id: int) -> StoredImage | None:
        """An imported image by id; None when there is no such image in the store."""

    def image_of_file(self, path: Path) -> StoredImage | None:
        """The stored image a display rendition (named by content hash) was made from."""

    def local_file(self, url: str) -> Path:
        """The file behind a local-files URL, below Label Studio's files root; ValueError if not."""

    def model_input(self, image: StoredImage, model: DetectorVersion) -> np.ndarray:
        """The detector's input for a stored image (from the disk cache when it is there)."""

    def region(self, image_id: int) -> tuple[str, float] | None:
        """The active sorter's (region, confidence), when it placed the image."""

    def latest_version(self) -> str | None:
        """The active detector version whose files are complete."""

    def load_version(self, version: str) -> DetectorVersion: ...

    def versions(self) -> list[dict[str, Any]]:
        """Every detector version, newest first (version, status, created_at, metrics)."""

    def is_event(self, action: str) -> bool:
        """Whether a webhook action changes samx's data (annotations, START_TRAINING)."""

    def apply_event(self, action: str, payload: dict[str, Any]) -> None:
        """Apply one webhook event, queueing whatever retraining it calls for."""


class SamxBackend:
    def __init__(self, store: Store, *, cache_images: int = 64):
        self.store = store
        self.slot = ModelSlot(store.latest_version, store.load_version, self._smoke)
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
        return self.store.versions()

    def on_event(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        if self.store.is_event(action):
            self._events.put((action, payload))
            return {"status": "accepted", "action": action}
        return {"status": "ignored", "action": action}

    def predict_task(self, task: dict[str, Any]) -> dict[str, Any]:
        cur = self.slot.current  # read once: a swap mid-request does not change this request's model
        image = self._resolve(task)
        det, p, threshold, score = None, None, 0.5, 0.0
        if cur is not None:
            model: DetectorVersion = cur.model
            x = self._input(image, model)
            if model.classifier is not None:
                p, threshold = float(model.classifier.predict_proba([x])[0]), model.threshold
            det = offered_boxes(model.detector.predict([x])[0], scale_of(image.width, image.height, x), p, threshold,
                                self.store.min_score)
            score = p if p is not None else float(det.scores.max(initial=0.0))
        region = self.store.region(image.id) if image.id is not None else None
        result = prediction_result(det, image.width, image.height, p_abnormal=p, threshold=threshold, region=region)
        return {"result": result, "score": round(float(score), 4), "model_version": cur.version if cur else NO_MODEL}

    # -- images ------------------------------------------------------------------------------
    def _resolve(self, task: dict[str, Any]) -> StoredImage:
        """The image a task names (a StoredImage; id None for a file outside the store), or TaskError."""
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        task_id = task.get("id")
        raw = data.get("samx_image_id")
        if raw is not None:
            try:
                image_id = int(raw)
            except (TypeError, ValueError):
                raise TaskError(400, f"samx_image_id must be an integer, got {raw!r}", task_id) from None
            image = self.store.image(image_id)
            if image is None:
                raise TaskError(404, f"image {image_id} is not in this samx store", task_id)
            self._check_size(image.width, image.height, task_id)
            return image
        url = data.get("image")
        if not isinstance(url, str) or not url:
            raise TaskError(404, "the task names no samx image (data.samx_image_id) and no image URL", task_id)
        path = self._local_file(url, task_id)
        image = self.store.image_of_file(path)  # one of our display renditions: predict on the stored original
        if image is not None:
            self._check_size(image.width, image.height, task_id)
            return image
        try:
            with warnings.catch_warnings():  # PIL warns above 89 MP; our own limit answers below
                warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
                with PILImage.open(path) as im:  # the header only: a decompression bomb is refused before decoding
                    width, height = im.width, im.height
        except PILImage.DecompressionBombError as exc:  # PIL refuses far beyond our limit before we ask
            raise TaskError(413, f"image is over the {MAX_PIXELS // 1_000_000} megapixel limit ({exc})", task_id) from None
        except Exception:
            raise TaskError(400, f"{path.name} is not an image", task_id) from None
        self._check_size(width, height, task_id)
        stat = path.stat()
        return StoredImage(None, width, height, f"file:{path}:{stat.st_mtime_ns}:{stat.st_size}",
                           lambda: read_radiograph(path).pixels)

    def _local_file(self, url: str, task_id) -> Path:
        """Only Label Studio's local-files URLs of our own files root are read; nothing is fetched."""
        if not url.startswith(LOCAL_FILES_URL):  # no scheme, no host: nothing is fetched from anywhere
            raise TaskError(400, f"image URL {url[:200]!r} is outside the samx store: only {LOCAL_FILES_URL}... "
                                 "URLs of samx's Label Studio files are read", task_id)
        try:
            path = self.store.local_file(url)
        except ValueError as exc:
            raise TaskError(400, str(exc), task_id) from None
        if not path.is_file():
            raise TaskError(404, f"{url[:200]!r}: no such file in the samx store", task_id)
        return path

    @staticmethod
    def _check_size(width: int | None, height: int | None, task_id) -> None:
        w, h = int(width or 0), int(height or 0)
        if w * h > MAX_PIXELS:
            raise TaskError(413, f"image is {w} x {h} pixels; the limit is {MAX_PIXELS // 1_000_000} megapixels",
                            task_id)
        if w <= 0 or h <= 0:
            raise TaskError(400, "image has no size on record", task_id)

    def _input(self, image: StoredImage, model: DetectorVersion) -> np.ndarray:
        recipe = model.detector.config.input_recipe
        lru_key = f"{image.key}@{recipe.name}"
        with self._inputs_lock:
            if lru_key in self._inputs:
                self._inputs.move_to_end(lru_key)
                return self._inputs[lru_key]
        if image.id is None:  # a file outside the store: prepared here, not cached on disk
            x = recipe.prepare(image.load()).astype(np.float32)
        else:
            x = np.asarray(self.store.model_input(image, model), dtype=np.float32)
        with self._inputs_lock:
            self._inputs[lru_key] = x
            while len(self._inputs) > self._cache_images:
                self._inputs.popitem(last=False)
        return x

    # -- models ------------------------------------------------------------------------------
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
                self.store.apply_event(action, payload)
            except Exception:  # one bad event must not stop the ones behind it
                log.exception("webhook %s failed", action)
