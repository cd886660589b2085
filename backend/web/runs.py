"""Clustering runs: the list, a form that queues a clustering job, and the job's progress.

The page only enqueues (a cluster job with its k and epochs); a ``samx worker`` runs the job and
reports progress in the Job row, which the page polls as JSON."""
from __future__ import annotations

from flask import Blueprint, abort, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select

from backend.jobs.context import JobFailed
from backend.jobs.params import ClusterParams
from backend.jobs.runner import enqueue
from backend.database.schema import HIDDEN_CLUSTER_STATUSES, Cluster, ClusterRun, ClusterStatus, Job, JobKind
from backend.web.auth import requires
from backend.web.common import get_db

bp = Blueprint("runs", __name__)

K_RANGE = (2, 100_000)
EPOCHS_RANGE = (1, 1000)


def job_json(job: Job) -> dict:
    return {"id": job.id, "kind": job.kind, "status": job.status.value, "done": job.done, "total": job.total,
            "progress": job.progress, "message": job.message, "error": job.error, "params": job.params,
            "result": job.result, "created_at": job.created_at.isoformat() if job.created_at else None,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None}


@bp.route("/runs")
@requires("view")
def runs_page():
    with get_db().session() as s:
        runs = s.scalars(select(ClusterRun).order_by(ClusterRun.id.desc()).limit(100)).all()
        counts = dict(s.execute(select(Cluster.run_id, func.count()).where(Cluster.status.not_in(HIDDEN_CLUSTER_STATUSES))
                                .group_by(Cluster.run_id)).all())
        named = dict(s.execute(select(Cluster.run_id, func.count()).where(Cluster.status.in_((ClusterStatus.named, ClusterStatus.discarded)))
                               .group_by(Cluster.run_id)).all())
        jobs = s.scalars(select(Job).where(Job.kind == JobKind.cluster).order_by(Job.id.desc()).limit(20)).all()
    return render_template("runs.html", runs=runs, counts=counts, named=named, jobs=jobs,
                           watch=request.args.get("job", type=int), can_start=current_user.can("decide"),
                           k_range=K_RANGE, epochs_range=EPOCHS_RANGE)


def _form_int(name: str, lo: int, hi: int, default: int | None = None, *, optional: bool = False) -> int | None:
    raw = (request.form.get(name) or "").strip()
    if not raw and (default is not None or optional):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


@bp.route("/runs", methods=["POST"])
@requires("decide")
def start_run():
    try:
        k = _form_int("k", *K_RANGE, optional=True)  # empty: about 40 images a cluster
        epochs = _form_int("epochs", *EPOCHS_RANGE, default=30)
    except ValueError as exc:
        flash(str(exc), "error")
        return redirect(url_for("runs.runs_page"), code=303)
    try:
        job = enqueue(get_db(), JobKind.cluster, ClusterParams(config={"k": k, "epochs": epochs}))
    except JobFailed as exc:  # e.g. no handler for "cluster" installed in this version
        flash(f"Could not start clustering: {exc}", "error")
        return redirect(url_for("runs.runs_page"), code=303)
    flash(f"Clustering job {job.id} queued (k={k or 'automatic'}, {epochs} epochs); "
          "a `samx worker` runs it.", "info")
    return redirect(url_for("runs.runs_page", job=job.id), code=303)


@bp.route("/api/jobs/<int:job_id>")
@requires("view")
def job_status(job_id: int):
    with get_db().session() as s:
        job = s.get(Job, job_id)
        if job is None:
            abort(404, description=f"there is no job {job_id}")
        return jsonify(job_json(job))
