"""The region vocabulary: everyone may read it, only admins edit it.

Labels are never deleted (weak labels reference them and history must stay readable): an admin
renames, reorders, or retires a label; a retired label is no longer offered for new decisions."""
from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select

from backend.database.schema import Label, LabelKind, WeakLabel
from backend.web import queries
from backend.web.auth import requires
from backend.web.common import get_db

bp = Blueprint("vocabulary", __name__)

MAX_NAME = 128


def _clean_name(raw: str | None) -> str:
    name = " ".join((raw or "").split()).lower()
    if not name:
        raise ValueError("a label needs a name")
    if len(name) > MAX_NAME:
        raise ValueError(f"a label name has at most {MAX_NAME} characters")
    return name


@bp.route("/vocabulary")
@requires("view")
def vocabulary_page():
    with get_db().session() as s:
        labels = queries.region_labels(s, active_only=False)
        usage = dict(s.execute(select(WeakLabel.label_id, func.count()).where(WeakLabel.superseded_at.is_(None))
                               .group_by(WeakLabel.label_id)).all())
    return render_template("vocabulary.html", labels=labels, usage=usage, can_edit=current_user.can("admin"))


def _taken(s, name: str, except_id: int | None = None) -> bool:
    q = select(Label.id).where(Label.kind == LabelKind.region, Label.name == name)
    if except_id is not None:
        q = q.where(Label.id != except_id)
    return s.scalar(q) is not None


@bp.route("/vocabulary", methods=["POST"])
@requires("admin")
def add_label():
    try:
        name = _clean_name(request.form.get("name"))
    except ValueError as exc:
        flash(str(exc), "error")
        return redirect(url_for("vocabulary.vocabulary_page"), code=303)
    with get_db().session() as s:
        if _taken(s, name):
            flash(f"'{name}' is already in the vocabulary", "error")
            return redirect(url_for("vocabulary.vocabulary_page"), code=303)
        order = (s.scalar(select(func.max(Label.sort_order)).where(Label.kind == LabelKind.region)) or 0) + 1
        s.add(Label(kind=LabelKind.region, name=name, description=(request.form.get("description") or "").strip() or None,
                    sort_order=order))
    flash(f"Added '{name}'.", "info")
    return redirect(url_for("vocabulary.vocabulary_page"), code=303)


@bp.route("/vocabulary/<int:label_id>", methods=["POST"])
@requires("admin")
def edit_label(label_id: int):
    with get_db().session() as s:
        label = s.get(Label, label_id)
        if label is None or label.kind != LabelKind.region:
            abort(404, description=f"there is no region label {label_id}")
        try:
            name = _clean_name(request.form.get("name", label.name))
            order = int(request.form.get("sort_order", label.sort_order))
        except ValueError as exc:
            flash(str(exc) if "label" in str(exc) else "the order must be a whole number", "error")
            return redirect(url_for("vocabulary.vocabulary_page"), code=303)
        if _taken(s, name, except_id=label.id):
            flash(f"'{name}' is already in the vocabulary", "error")
            return redirect(url_for("vocabulary.vocabulary_page"), code=303)
        old = label.name
        label.name, label.sort_order = name, order
        if "description" in request.form:
            label.description = request.form["description"].strip() or None
        label.is_active = request.form.get("is_active") == "on"
    flash(f"Saved '{name}'" + (f" (was '{old}')" if old != name else "") + ".", "info")
    return redirect(url_for("vocabulary.vocabulary_page"), code=303)
