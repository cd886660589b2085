"""What every blueprint shares: the app's database, JSON errors, and request parsing.

Kept apart from ``backend.web.__init__`` so blueprints import it without importing the app
factory (no import cycles)."""
from __future__ import annotations

from typing import Any

from flask import Response, current_app, jsonify, request
from werkzeug.exceptions import BadRequest

from backend.config import Settings
from backend.database.session import Database


def get_db() -> Database:
    return current_app.extensions["samx.db"]


def get_settings() -> Settings:
    return current_app.extensions["samx.settings"]


def wants_json() -> bool:
    """API calls (and anything that is not a browser asking for a page) get JSON errors;
    pages get HTML and redirects."""
    if request.path.startswith("/api/") or request.is_json:
        return True
    accept = request.accept_mimetypes
    return accept["application/json"] > accept["text/html"]


def json_error(status: int, message: str, **extra: Any) -> Response:
    resp = jsonify({"error": message, "status": status, **extra})
    resp.status_code = status
    return resp


def json_body() -> dict:
    """The request's JSON object, or a 400 that says what was wrong with it."""
    data = request.get_json(silent=True)
    if data is None:
        raise BadRequest("the request body must be JSON (Content-Type: application/json)")
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def int_arg(name: str, default: int, *, lo: int | None = None, hi: int | None = None) -> int:
    """An integer query parameter, clamped; a non-number is a 400, not a 500."""
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be an integer, got {raw!r}") from None
    if lo is not None:
        value = max(lo, value)
    if hi is not None:
        value = min(hi, value)
    return value


def float_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise BadRequest(f"query parameter {name!r} must be finite")
    return value
