"""Hot-swapping the serving model.

A request reads ``slot.current`` once and predicts with that object to the end, so requests in
flight finish on the old model while the new one is swapped in. A new version is loaded only
once the store says it is complete (``latest()`` returns it), and it serves only after a smoke
prediction passed; a version that fails either step is logged, remembered and not retried, and
the old model keeps serving."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("samx.ml_backend")


@dataclass(frozen=True)
class Loaded:
    version: str
    model: Any


class ModelSlot:
    def __init__(self, latest: Callable[[], str | None], load: Callable[[str], Any],
                 smoke: Callable[[Any], None] | None = None):
        self._latest, self._load, self._smoke = latest, load, smoke
        self._lock = threading.Lock()  # one loader at a time; readers never wait on it
        self._failed: dict[str, str] = {}
        self.current: Loaded | None = None

    @property
    def failed(self) -> dict[str, str]:
        """Versions that did not load or failed the smoke prediction, and why."""
        return dict(self._failed)

    def refresh(self) -> bool:
        """Swap in the newest complete version if it is new; True when the model changed."""
        with self._lock:
            try:
                version = self._latest()
            except Exception as exc:  # the store is briefly unreadable: keep serving what we have
                log.warning("model slot: cannot read the latest version: %s", exc)
                return False
            if version is None or version in self._failed or (self.current and self.current.version == version):
                return False
            try:
                model = self._load(version)
                if self._smoke is not None:
                    self._smoke(model)
            except Exception as exc:
                self._failed[version] = f"{type(exc).__name__}: {exc}"
                log.error("model slot: version %s not served: %s", version, self._failed[version])
                return False
            old = self.current
            self.current = Loaded(version, model)  # one reference assignment: readers see old or new
            log.info("model slot: now serving %s (was %s)", version, old.version if old else "nothing")
            return True

    def watch(self, every: float, stop: threading.Event) -> threading.Thread:
        """Refresh every ``every`` seconds in a daemon thread until ``stop`` is set."""
        def loop() -> None:
            while not stop.wait(every):
                self.refresh()

        thread = threading.Thread(target=loop, name="model-slot-watch", daemon=True)
        thread.start()
        return thread
