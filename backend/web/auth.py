"""Login, logout and who may do what.

Roles: a viewer may look, a radiologist (or admin) may decide on clusters and start clustering
jobs, only an admin may edit the vocabulary. Login is enforced for every endpoint by
:func:`require_login_everywhere` (so a new view cannot forget it); views state the role they
need with :func:`requires`."""
from __future__ import annotations

from dataclasses import dataclass
from functools import wraps
from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from werkzeug.exceptions import Forbidden

from backend.database.schema import Role, User
from backend.database.users import authenticate
from backend.web.common import get_db, json_error, wants_json

bp = Blueprint("auth", __name__)
login_manager = LoginManager()

#: permission -> roles that have it
PERMISSIONS = {
    "view": {Role.viewer, Role.radiologist, Role.admin},
    "decide": {Role.radiologist, Role.admin},
    "admin": {Role.admin},
}
PUBLIC_ENDPOINTS = {"auth.login", "static"}


@dataclass
class WebUser(UserMixin):
    """A detached copy of the user row: safe to keep past the database session."""

    id: int
    username: str
    role: Role

    def get_id(self) -> str:
        return str(self.id)

    def can(self, permission: str) -> bool:
        return self.role in PERMISSIONS[permission]

    @classmethod
    def of(cls, row: User) -> "WebUser":
        return cls(row.id, row.username, Role(row.role))


@login_manager.user_loader
def _load_user(user_id: str) -> WebUser | None:
    try:
        uid = int(user_id)
    except ValueError:
        return None
    with get_db().session() as s:
        row = s.get(User, uid)
        return WebUser.of(row) if row is not None and row.is_active else None


@login_manager.unauthorized_handler
def _unauthorized():
    if wants_json():
        return json_error(401, "log in first")
    return redirect(url_for("auth.login", next=_safe_next(request.full_path)))


def require_login_everywhere():
    """``before_request`` hook: nothing but the login page and static files without a login."""
    if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        return None
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    return None


def requires(permission: str):
    """Decorator: 401 without a login, 403 (JSON for the API) without the permission."""
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")

    def decorate(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            if not current_user.can(permission):
                need = {"decide": "a radiologist or admin", "admin": "an admin", "view": "a user"}[permission]
                raise Forbidden(f"{current_user.username} is a {current_user.role.value}; this needs {need}")
            return view(*args, **kwargs)

        wrapped.permission = permission
        return wrapped

    return decorate


def _safe_next(target: str | None) -> str:
    """Only same-site paths: a login link must not redirect anywhere else (open redirect)."""
    if not target:
        return url_for("clusters.home")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("clusters.home")
    return target.rstrip("?") or url_for("clusters.home")


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "POST":
        username = (request.form.get("username") or "").strip()
        password = request.form.get("password") or ""
        row = authenticate(get_db(), username, password) if username and password else None
        if row is None:
            flash("Unknown user or wrong password.", "error")
            return render_template("login.html", username=username, next=request.form.get("next", "")), 401
        session.permanent = True  # expires after Settings.session_hours without a request
        login_user(WebUser.of(row))
        return redirect(_safe_next(request.form.get("next")))
    if current_user.is_authenticated:
        return redirect(_safe_next(request.args.get("next")))
    return render_template("login.html", username="", next=request.args.get("next", ""))


@bp.route("/logout", methods=["POST"])
def logout():
    logout_user()
    flash("Logged out.", "info")
    return redirect(url_for("auth.login"))
