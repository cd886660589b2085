"""The cluster-naming web app (Flask application factory).

One app per Settings: it opens its own :class:`~backend.database.session.Database`, signs sessions with a key
derived from the installation secret (so restarts keep people logged in and two installations
never accept each other's cookies), and protects every form and JSON POST with CSRF tokens
(JS sends them in ``X-CSRFToken``). It assumes the schema is current: ``samx serve`` runs the
migrations first."""
from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import timedelta

from flask import Flask, render_template
from flask_wtf.csrf import CSRFProtect
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge

from backend.config import Settings
from backend.database.schema import DECIDABLE_CLUSTER_STATUSES, ClusterStatus, LabelSource, ModelStatus
from backend.database.session import Database
from backend.clusters.decisions import DecisionError
from backend.web.common import json_error, wants_json

log = logging.getLogger("samx.web")
csrf = CSRFProtect()


def session_key(settings: Settings) -> str:
    """A key for this purpose only: the installation secret itself also keys pseudonyms."""
    return hmac.new(settings.secret(), b"samx web session cookies v1", hashlib.sha256).hexdigest()


def create_app(settings: Settings, *, testing: bool = False) -> Flask:
    from backend.web import auth, clusters, images, runs, sorter, vocabulary

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=session_key(settings),
        TESTING=testing,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,  # a token lives as long as the session: naming takes hours
        # Sessions are permanent (set at login) and refreshed on every request, so this is an
        # idle timeout: Flask refuses a signed cookie older than the lifetime.
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.session_hours),
        SESSION_REFRESH_EACH_REQUEST=True,
        MAX_CONTENT_LENGTH=4 * 1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    settings.ensure_dirs()
    db = Database(settings)
    app.extensions["samx.settings"] = settings
    app.extensions["samx.db"] = db

    csrf.init_app(app)
    auth.login_manager.init_app(app)
    auth.login_manager.login_view = "auth.login"
    app.before_request(auth.require_login_everywhere)
    for module in (auth, clusters, images, runs, sorter, vocabulary):
        app.register_blueprint(module.bp)
    # Templates compare statuses with the schema's enums, not with string literals of their own.
    app.jinja_env.globals.update(ClusterStatus=ClusterStatus, DECIDABLE_CLUSTER_STATUSES=DECIDABLE_CLUSTER_STATUSES,
                                 LabelSource=LabelSource, ModelStatus=ModelStatus)
    _register_errors(app)

    @app.context_processor
    def _globals():
        from flask_login import current_user

        return {"user": current_user}

    return app


def _register_errors(app: Flask) -> None:
    @app.errorhandler(DecisionError)
    def _decision_error(exc: DecisionError):
        if wants_json():
            return json_error(exc.status, str(exc))
        return render_template("error.html", code=exc.status, message=str(exc)), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if isinstance(exc, InternalServerError):
            log.error("unhandled error", exc_info=exc.original_exception)
            message = "internal error; the details are in the server log"
        elif isinstance(exc, RequestEntityTooLarge):
            message = f"request body too large: the limit is {app.config['MAX_CONTENT_LENGTH'] // 2**20} MiB"
        else:
            message = exc.description or exc.name
        if wants_json():
            return json_error(exc.code or 500, message)
        return render_template("error.html", code=exc.code, message=message), exc.code
