"""Label Studio's ML-backend protocol as a Flask application factory.

Label Studio 1.23 calls GET /health (1 s timeout), POST /setup (3 s, very often: must stay
cheap and return the same non-empty model_version), POST /predict (one result per task, in
order), POST /webhook (1 s for project events: answer at once) and GET /versions. Every route,
/health included, checks HTTP basic auth when credentials are configured (``samx ml-backend``
always configures them). Bad requests get a JSON 4xx naming the problem; a batch with some bad
tasks still answers for the good ones (an empty result for each bad one, reasons under
"errors"), so one missing file does not block pre-annotation of a whole project."""
from __future__ import annotations

import hmac
import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from ml_backend.protocol import Backend, TaskError

log = logging.getLogger("samx.ml_backend")

MAX_TASKS = 1000  # Label Studio batches far fewer; more is a malformed or hostile request
MAX_BODY = 32 * 1024 * 1024  # task JSON only: images are read from our store, never uploaded


def create_app(backend: Backend, *, basic_auth: tuple[str, str] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY, JSON_SORT_KEYS=False)
    app.extensions["samx.ml_backend"] = backend

    @app.before_request
    def _authenticate():
        if basic_auth is None:
            return None
        auth = request.authorization
        ok = (auth is not None and auth.type == "basic"
              and hmac.compare_digest((auth.username or "").encode(), basic_auth[0].encode())
              and hmac.compare_digest((auth.password or "").encode(), basic_auth[1].encode()))
        if ok:
            return None
        resp = jsonify(error="authentication required")
        resp.status_code = 401
        resp.headers["WWW-Authenticate"] = 'Basic realm="samx ml backend"'
        return resp

    @app.get("/")
    @app.get("/health")
    def health():
        return jsonify(status="UP", model_version=backend.model_version())

    @app.post("/setup")
    def setup():
        _json_object()  # Label Studio sends project, schema, hostname, access_token: none needed
        return jsonify(model_version=backend.model_version())

    @app.post("/predict")
    def predict():
        body = _json_object()
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            return _error(400, '"tasks" must be a non-empty list of task objects')
        if len(tasks) > MAX_TASKS:
            return _error(413, f"{len(tasks)} tasks in one request; at most {MAX_TASKS}")
        if not all(isinstance(t, dict) for t in tasks):
            return _error(400, "every task must be a JSON object")
        results, errors = [], []
        for task in tasks:
            try:
                results.append(backend.predict_task(task))
            except TaskError as exc:
                errors.append(exc)
                results.append({"result": [], "score": 0.0, "model_version": backend.model_version()})
        if errors and len(errors) == len(tasks):
            first = errors[0]
            return _error(first.status, first.message, task=first.task_id,
                          errors=[_describe(e) for e in errors[1:]] or None)
        for exc in errors:
            log.warning("predict: task %s: %s", exc.task_id, exc.message)
        out: dict[str, Any] = {"results": results, "model_version": backend.model_version()}
        if errors:
            out["errors"] = [_describe(e) for e in errors]
        return jsonify(out)

    @app.post("/webhook")
    def webhook():
        body = _json_object()
        action = body.get("action")
        if not isinstance(action, str) or not action:
            return _error(400, 'a webhook event needs an "action" string')
        return jsonify(backend.on_event(action, body))

    @app.get("/versions")
    def versions():
        return jsonify(versions=backend.versions(), model_version=backend.model_version())

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("ml backend: unexpected error on %s %s", request.method, request.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the ml backend log")

    return app


class _BadRequest(HTTPException):
    code = 400


def _json_object() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise _BadRequest("the body must be a JSON object (Content-Type: application/json)")
    return body


def _describe(exc: TaskError) -> dict[str, Any]:
    return {"task": exc.task_id, "status": exc.status, "error": exc.message}


def _error(status: int, message: str, **extra: Any) -> Response:
    resp = jsonify(error=message, **{k: v for k, v in extra.items() if v is not None})
    resp.status_code = status
    return resp
