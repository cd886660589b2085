"""The overview of a run, the cluster page, and the JSON endpoints of the decisions.

Pages only read; every change goes through :mod:`backend.clusters.decisions` via
``POST /api/clusters/<id>/<action>`` with the cluster ``version`` the page was rendered with."""
from __future__ import annotations

from flask import Blueprint, abort, jsonify, redirect, render_template, request, send_file, url_for
from flask_login import current_user

from backend.clusters import decisions
from backend.database.schema import Cluster, ClusterRun, ClusterStatus, DecisionAction
from backend.web import queries
from backend.web.auth import requires
from backend.web.common import get_db, get_settings, int_arg, json_body
from backend.web.montage import montage_path

bp = Blueprint("clusters", __name__)

PER_PAGE = 200


@bp.route("/")
@requires("view")
def home():
    with get_db().session() as s:
        run_id = queries.latest_run_id(s)
    if run_id is None:
        return redirect(url_for("runs.runs_page"))
    return redirect(url_for("clusters.overview", run_id=run_id))


@bp.route("/runs/<int:run_id>")
@requires("view")
def overview(run_id: int):
    sort = request.args.get("sort", "unnamed")
    if sort not in queries.SORTS:
        sort = "unnamed"
    with get_db().session() as s:
        run = s.get(ClusterRun, run_id)
        if run is None:
            abort(404, description=f"there is no clustering run {run_id}")
        cards = queries.overview_cards(s, run_id, sort)
        summary = queries.run_summary(s, run_id)
    return render_template("overview.html", run=run, cards=cards, summary=summary, sort=sort, sorts=queries.SORTS)


@bp.route("/api/runs/<int:run_id>/umap")
@requires("view")
def umap(run_id: int):
    with get_db().session() as s:
        if s.get(ClusterRun, run_id) is None:
            abort(404, description=f"there is no clustering run {run_id}")
        try:
            data = queries.umap_points(get_settings(), s, run_id)
        except FileNotFoundError:
            abort(404, description=f"run {run_id} has no map on disk (its arrays are missing)")
    resp = jsonify(data)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _cluster_or_404(s, cluster_id: int) -> Cluster:
    c = s.get(Cluster, cluster_id)
    if c is None:
        abort(404, description=f"there is no cluster {cluster_id}")
    return c


@bp.route("/clusters/<int:cluster_id>")
@requires("view")
def cluster_page(cluster_id: int):
    page = int_arg("page", 1, lo=1) - 1
    with get_db().session() as s:
        c = _cluster_or_404(s, cluster_id)
        members, total = queries.cluster_members(s, c.id, page, PER_PAGE)
        pages = max(1, -(-total // PER_PAGE))
        if page >= pages:
            return redirect(url_for("clusters.cluster_page", cluster_id=cluster_id, page=pages))
        state = decisions.cluster_state(s, c)
        merged_into = None
        if c.status == ClusterStatus.merged and (c.stats or {}).get("merged_into"):
            target = s.get(Cluster, c.stats["merged_into"])
            merged_into = {"id": target.id, "index": target.index} if target else None
        parent = c.parent
        return render_template(
            "cluster.html", cluster=state, members=members, total=total, page=page + 1, pages=pages,
            per_page=PER_PAGE, labels=[{"id": lab.id, "name": lab.name} for lab in queries.region_labels(s)],
            others=queries.run_clusters(s, c.run_id, exclude=c.id), children=queries.children_of(s, c.id),
            history=decisions.history(s, c.id), merged_into=merged_into,
            parent={"id": parent.id, "index": parent.index} if parent else None,
            uncertainty=(c.stats or {}).get("uncertainty"),
            can_decide=current_user.can("decide"))


@bp.route("/clusters/<int:cluster_id>/montage.webp")
@requires("view")
def montage(cluster_id: int):
    with get_db().session() as s:
        path = montage_path(get_settings(), s, _cluster_or_404(s, cluster_id))
    return send_file(path, mimetype="image/webp", max_age=300, conditional=True)


@bp.route("/api/clusters/<int:cluster_id>")
@requires("view")
def cluster_json(cluster_id: int):
    with get_db().session() as s:
        return jsonify(decisions.cluster_state(s, _cluster_or_404(s, cluster_id)))


def _version(body: dict):
    if "version" not in body:
        abort(400, description="send the cluster 'version' you are looking at")
    return body["version"]


def _args(action: str, body: dict) -> dict:
    """JSON body -> keyword arguments of the decision (the service validates the values)."""
    args = {"version": _version(body)}
    if action == DecisionAction.name:
        if "label_id" not in body:
            abort(400, description="choose a label: 'label_id' is missing")
        args["label_id"] = body["label_id"]
    elif action == DecisionAction.merge:
        args["sources"] = body.get("sources")
        versions = body.get("source_versions") or {}
        if not isinstance(versions, dict):
            abort(400, description="'source_versions' must be an object {cluster id: version}")
        args["source_versions"] = versions
    elif action == DecisionAction.split:
        if "k" not in body:
            abort(400, description="how many sub-clusters? 'k' is missing")
        args["k"] = body["k"]
    elif action == DecisionAction.move:
        if "target" not in body:
            abort(400, description="move where? 'target' is missing (a label id, 'unlabeled' or 'discarded')")
        args["image_ids"] = body.get("image_ids")
        args["target"] = body["target"]
    return args


@bp.route("/api/clusters/<int:cluster_id>/<action>", methods=["POST"])
@requires("decide")
def act(cluster_id: int, action: str):
    if action not in decisions.ACTIONS:
        abort(404, description=f"unknown action {action!r}; choose from {', '.join(decisions.ACTIONS)}")
    result = decisions.decide(get_db(), action, cluster_id, current_user, **_args(action, json_body()))
    return jsonify({"ok": True, **result})
