"""The sorter in the web app: the review queue, label corrections, the model versions page,
Grad-CAM overlays and similar cases.

Pages only read; a correction goes through :func:`backend.sorter.review.correct_label` (JSON POST with
the weak label the page showed), and each successful one may queue a retrain
(:func:`backend.sorter.retrain.maybe_retrain`), so corrections flow back into the model."""
from __future__ import annotations

from functools import lru_cache

import cv2
from flask import Blueprint, Response, abort, flash, jsonify, redirect, render_template, request, send_file, url_for
from flask_login import current_user
from sqlalchemy import select

from backend.sorter import review
from backend.clusters.decisions import NotFound
from backend.jobs.context import JobFailed
from backend.jobs.params import TrainSorterParams
from backend.jobs.runner import enqueue
from backend.database.schema import Image, Job, JobKind, ModelKind, ModelVersion
from backend.sorter.retrain import changed_labels, maybe_retrain
from backend.sorter.store import active_version, version_dir
from backend.web import queries
from backend.web.auth import requires
from backend.web.common import get_db, get_settings, int_arg, json_body

bp = Blueprint("sorter", __name__)

PER_PAGE = 50
OVERLAY_SIZE = 256


# --------------------------------------------------------------------------------------------
# the review queue


@bp.route("/review")
@requires("view")
def review_page():
    kind = request.args.get("kind", "disagree")
    if kind not in review.KINDS:
        kind = "disagree"
    page = int_arg("page", 0, lo=0)
    only = request.args.get("image", type=int)
    with get_db().session() as s:
        mv = active_version(s)
        items, total = review.review_queue(s, limit=PER_PAGE, offset=page * PER_PAGE, kind=kind, image_id=only)
        counts = {k: review.review_queue(s, limit=0, kind=k)[1] for k in review.KINDS}
        labels = [(lab.id, lab.name) for lab in queries.region_labels(s)]
    return render_template("review.html", items=items, total=total, kind=kind, page=page, per_page=PER_PAGE,
                           counts=counts, labels=labels, mv=mv, only=only, can_decide=current_user.can("decide"))


@bp.route("/api/images/<int:image_id>/label", methods=["POST"])
@requires("decide")
def set_label(image_id: int):
    body = json_body()
    if "seen_label_id" not in body:
        abort(400, description="send 'seen_label_id': the id of the weak label you are looking at")
    if "label_id" not in body:
        abort(400, description="choose a label: 'label_id' is missing (null discards the image as non-MSK)")
    db = get_db()
    with db.session() as s:
        result = review.correct_label(s, current_user, image_id, label_id=body["label_id"],
                                      seen_label_id=body["seen_label_id"],
                                      accept_prediction=body.get("accept_prediction", False))
    job = maybe_retrain(db)
    return jsonify({"ok": True, **result, "retrain_job": job.id if job else None})


# --------------------------------------------------------------------------------------------
# model versions


@bp.route("/models")
@requires("view")
def models_page():
    settings = get_settings()
    with get_db().session() as s:
        versions = s.scalars(select(ModelVersion).where(ModelVersion.kind == ModelKind.sorter)
                             .order_by(ModelVersion.id.desc()).limit(200)).all()
        changed = changed_labels(s)
        jobs = s.scalars(select(Job).where(Job.kind == JobKind.train_sorter).order_by(Job.id.desc()).limit(10)).all()
        reports = {mv.id for mv in versions if (version_dir(settings, mv.version) / "report.html").is_file()}
    return render_template("models.html", versions=versions, changed=changed, threshold=settings.sorter_retrain_after,
                           jobs=jobs, reports=reports, can_retrain=current_user.can("decide"))


@bp.route("/models/retrain", methods=["POST"])
@requires("decide")
def retrain():
    try:
        job = enqueue(get_db(), JobKind.train_sorter,
                      TrainSorterParams(reason=f"retrain requested by {current_user.username}"))
    except JobFailed as exc:
        flash(f"Could not start training: {exc}", "error")
        return redirect(url_for("sorter.models_page"), code=303)
    flash(f"Sorter training job {job.id} queued; a `samx worker` runs it.", "info")
    return redirect(url_for("sorter.models_page"), code=303)


@bp.route("/models/<int:mv_id>/report")
@requires("view")
def report(mv_id: int):
    """The version's own report; the path comes from the database row, never from the request."""
    with get_db().session() as s:
        mv = s.get(ModelVersion, mv_id)
        if mv is None or mv.kind != ModelKind.sorter:
            abort(404, description=f"there is no sorter version {mv_id}")
        path = version_dir(get_settings(), mv.version) / "report.html"
    if not path.is_file():
        abort(404, description=f"sorter version {mv.version} has no report on disk")
    return send_file(path, mimetype="text/html", max_age=0)


# --------------------------------------------------------------------------------------------
# explanations: Grad-CAM and similar cases


@lru_cache(maxsize=64)
def _overlay_png(settings, mv_id: int, mv_path: str, image_id: int, target: str | None) -> tuple[bytes, str]:
    """PNG bytes and class of one overlay; keyed by version path so a new model never serves an old map."""
    from clustering.sorter.gradcam import gradcam, overlay

    with get_db().session() as s:
        mv, img = s.get(ModelVersion, mv_id), s.get(Image, image_id)

        def draw(model, x):
            cls = model.classes.index(target) if target is not None else int(model.predict_proba(x[None])[0].argmax())
            heat = gradcam(model.net_, x[None], [cls])
            return overlay(x, heat[0], size=OVERLAY_SIZE), model.classes[cls]

        picture, name = review.network_input(settings, mv, img, draw)
    ok, buf = cv2.imencode(".png", picture)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes(), name


@bp.route("/images/<int:image_id>/gradcam.png")
@requires("view")
def gradcam_png(image_id: int):
    """Where the active sorter looked for its predicted class (or ``?class=<name>``), drawn on
    the network's own input: the body crop, letterboxed and enhanced."""
    settings = get_settings()
    target = request.args.get("class") or None
    with get_db().session() as s:
        mv = active_version(s)
        if mv is None:
            abort(404, description="there is no active sorter yet")
        if s.get(Image, image_id) is None:
            abort(404, description=f"there is no image {image_id}")
        classes = (mv.metrics or {}).get("classes")
        if target is not None and classes and target not in classes:
            abort(400, description=f"the sorter knows no class {target!r}; it knows {', '.join(classes)}")
        key = (mv.id, mv.path)
    try:
        data, name = _overlay_png(settings, *key, image_id, target)
    except NotFound as exc:
        abort(404, description=str(exc))
    except ValueError as exc:  # a class the stored model does not have
        abort(400, description=str(exc))
    resp = Response(data, mimetype="image/png")
    resp.headers["X-Sorter-Class"] = name
    resp.headers["Cache-Control"] = "private, max-age=600"
    return resp


@bp.route("/api/images/<int:image_id>/similar")
@requires("view")
def similar(image_id: int):
    k = int_arg("k", 5, lo=1, hi=review.MAX_K)
    with get_db().session() as s:
        result = review.similar_cases(get_settings(), s, image_id, k)
    for n in result["neighbours"]:
        n["thumbnail"] = url_for("images.thumbnail", image_id=n["image_id"])
        n["url"] = url_for("images.image_page", image_id=n["image_id"])
    return jsonify(result)
