"""What the Label Studio ML-backend protocol needs from the application behind it.

The server (ml_backend/server.py) speaks HTTP to Label Studio; everything that knows about our
database, model store and job queue lives behind this interface in backend/, so the layers
stay as DESIGN.md draws them."""
from __future__ import annotations

from typing import Any, Protocol


class TaskError(Exception):
    """A task that cannot be predicted, with the HTTP status that says why (404 unknown task,
    400 an image outside our store, 413 an image too large to decode)."""

    def __init__(self, status: int, message: str, task_id: Any = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.task_id = task_id


class Backend(Protocol):
    def model_version(self) -> str:
        """Cheap and stable: Label Studio asks on every /setup, many times a minute."""

    def versions(self) -> list[dict[str, Any]]:
        """The model versions there are, newest first."""

    def predict_task(self, task: dict[str, Any]) -> dict[str, Any]:
        """One Label Studio prediction ({"result": [...], "score", "model_version"}) or TaskError."""

    def on_event(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A webhook event; must return at once (Label Studio waits 1 s): heavy work is queued."""
