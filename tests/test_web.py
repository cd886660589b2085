"""The cluster-naming web app through Flask's test client: login, roles, CSRF, the decision API,
overview, montages, the map, image windowing, runs and vocabulary."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from sqlalchemy import event, func, select

from backend.images.store import load_pixels
from backend.database.schema import Cluster, ClusterMembership, Image, Job, Label, LabelSource, WeakLabel
from backend.web import create_app
from backend.web.images import auto_window, window_to_uint8
from tests.conftest import make_settings
from tests.factories import TEST_PASSWORD, make_big_run, make_user

CSRF = re.compile(r'name="csrf-token" content="([^"]+)"')


class Browser:
    """A test client that logs in and sends the CSRF token like the page's JS does."""

    def __init__(self, app, username: str | None = None):
        self.client = app.test_client()
        self.token = None
        if username:
            self.login(username)

    def login(self, username: str, password: str = TEST_PASSWORD, **extra):
        page = self.client.get("/login")
        token = CSRF.search(page.text).group(1)
        resp = self.client.post("/login", data={"username": username, "password": password, "csrf_token": token, **extra})
        home = self.client.get("/runs", headers={"Accept": "text/html"})
        m = CSRF.search(home.text)
        self.token = m.group(1) if m else None
        return resp

    def get(self, url, **kw):
        kw.setdefault("headers", {"Accept": "text/html"})
        return self.client.get(url, **kw)

    def post_json(self, url, body, token=True):
        headers = {"X-CSRFToken": self.token} if token else {}
        return self.client.post(url, json=body, headers=headers)

    def act(self, cluster_id, action, **body):
        return self.post_json(f"/api/clusters/{cluster_id}/{action}", body)

    def form(self, url, data):
        return self.client.post(url, data={**data, "csrf_token": self.token}, headers={"Accept": "text/html"})


@pytest.fixture
def app(cluster_world):
    app = create_app(cluster_world["settings"], testing=True)
    yield app
    app.extensions["samx.db"].dispose()


def version(db, cid):
    with db.session() as s:
        return s.get(Cluster, cid).version


# ---------------------------------------------------------------------------------------------
# login, roles, CSRF


def test_everything_needs_a_login(app, cluster_world):
    c = app.test_client()
    a = cluster_world["c"][0]
    for url in ["/", f"/runs/{cluster_world['run']}", f"/clusters/{a}", "/runs", "/vocabulary", "/images/1"]:
        resp = c.get(url, headers={"Accept": "text/html"})
        assert resp.status_code == 302 and resp.location.startswith("/login?next="), url
    for url in [f"/api/clusters/{a}", f"/api/runs/{cluster_world['run']}/umap", "/api/jobs/1"]:
        resp = c.get(url)
        assert resp.status_code == 401 and resp.json["error"] == "log in first", url
    assert c.post(f"/api/clusters/{a}/name", json={"version": 1, "label_id": 1}).status_code in (400, 401)
    assert c.get("/static/style.css").status_code == 200  # the login page needs its CSS
    assert c.get("/login").status_code == 200


def test_every_route_declares_a_permission(app):
    """Login is enforced globally; each view must also say which role it needs."""
    from backend.web.auth import PUBLIC_ENDPOINTS

    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC_ENDPOINTS or rule.endpoint == "auth.logout":
            continue
        view = app.view_functions[rule.endpoint]
        assert getattr(view, "permission", None) in ("view", "decide", "admin"), rule.rule
        if rule.methods & {"POST", "PUT", "DELETE"} and rule.endpoint != "auth.logout":
            assert view.permission in ("decide", "admin"), rule.rule


def test_login_logout_and_safe_redirects(app, cluster_world):
    b = Browser(app)
    bad = b.login("rad1", "wrong-password")
    assert bad.status_code == 401 and "wrong password" in bad.text
    ok = b.login("rad1", next="/vocabulary")
    assert ok.status_code == 302 and ok.location == "/vocabulary"
    evil = Browser(app).login("rad1", next="//evil.example/x")
    assert evil.location == "/"
    assert Browser(app).login("rad1", next="https://evil.example/").location == "/"
    resp = b.form("/logout", {})
    assert resp.status_code == 302
    assert b.get("/runs").status_code == 302


def test_login_and_forms_need_csrf(app, cluster_world):
    c = app.test_client()
    resp = c.post("/login", data={"username": "rad1", "password": TEST_PASSWORD})
    assert resp.status_code == 400 and "CSRF" in resp.text
    b = Browser(app, "rad1")
    a = cluster_world["c"][0]
    resp = b.post_json(f"/api/clusters/{a}/name", {"version": 1, "label_id": cluster_world["L"]["knee"]}, token=False)
    assert resp.status_code == 400 and "CSRF" in resp.json["error"]
    b.token = "forged"
    resp = b.act(a, "name", version=1, label_id=cluster_world["L"]["knee"])
    assert resp.status_code == 400 and "CSRF" in resp.json["error"]
    assert version(cluster_world["db"], a) == 1


def test_roles(app, cluster_world):
    a = cluster_world["c"][0]
    viewer = Browser(app, "viewer")
    for url in [f"/runs/{cluster_world['run']}", f"/clusters/{a}", "/runs", "/vocabulary", f"/api/runs/{cluster_world['run']}/umap"]:
        assert viewer.get(url).status_code == 200, url
    page = viewer.get(f"/clusters/{a}").text
    assert 'id="actions"' not in page and 'class="sel"' not in page  # nothing to click that would fail
    resp = viewer.act(a, "name", version=1, label_id=cluster_world["L"]["knee"])
    assert resp.status_code == 403 and "viewer" in resp.json["error"]
    assert viewer.form("/runs", {"k": "5", "epochs": "1"}).status_code == 403
    assert viewer.form("/vocabulary", {"name": "tail"}).status_code == 403
    rad = Browser(app, "rad1")
    assert 'id="actions"' in rad.get(f"/clusters/{a}").text
    assert rad.form("/vocabulary", {"name": "tail"}).status_code == 403
    assert 'id="add-label"' not in rad.get("/vocabulary").text
    assert Browser(app, "boss").form("/vocabulary", {"name": "tail"}).status_code == 303


# ---------------------------------------------------------------------------------------------
# the decision API


def test_name_conflict_between_two_radiologists(app, cluster_world):
    db, a, L = cluster_world["db"], cluster_world["c"][0], cluster_world["L"]
    one, two = Browser(app, "rad1"), Browser(app, "rad2")
    seen = version(db, a)
    resp = one.act(a, "name", version=seen, label_id=L["knee"])
    assert resp.status_code == 200 and resp.json["ok"] and resp.json["cluster"]["version"] == seen + 1
    resp = two.act(a, "discard", version=seen)
    assert resp.status_code == 409
    assert re.fullmatch(r"rad1 named this cluster 'knee' at \d\d:\d\d UTC — reload to see it\.", resp.json["error"])
    with db.session() as s:
        assert s.get(Cluster, a).status == "named"
        labels = s.scalars(select(WeakLabel).where(WeakLabel.superseded_at.is_(None))).all()
    assert len(labels) == 12 and {(w.label_id, LabelSource(w.source)) for w in labels} == {(L["knee"], LabelSource.cluster)}
    # rad2 reloads and carries on with the current version
    resp = two.act(a, "undo", version=version(db, a))
    assert resp.status_code == 200 and resp.json["cluster"]["status"] == "open"


def test_all_actions_through_the_api(app, cluster_world):
    db, (a, b, c), L = cluster_world["db"], cluster_world["c"], cluster_world["L"]
    r = Browser(app, "rad1")
    assert r.act(a, "name", version=1, label_id=L["knee"]).status_code == 200
    with db.session() as s:
        img = s.scalar(select(ClusterMembership.image_id).where(ClusterMembership.cluster_id == a).limit(1))
    resp = r.act(a, "move", version=version(db, a), image_ids=[img], target=L["foot"])
    assert resp.status_code == 200, resp.json
    resp = r.act(a, "merge", version=version(db, a), sources=[b], source_versions={str(b): version(db, b)})
    assert resp.status_code == 200 and resp.json["cluster"]["size"] == 17
    resp = r.act(c, "split", version=version(db, c), k=2)
    assert resp.status_code == 200 and len(resp.json["children"]) == 2
    resp = r.act(c, "undo", version=version(db, c))
    assert resp.status_code == 200 and resp.json["cluster"]["status"] == "open"
    resp = r.act(b, "discard", version=version(db, b))
    assert resp.status_code == 400 and "merged into cluster #0" in resp.json["error"]
    page = r.get(f"/clusters/{a}").text
    assert "merge" in page and "rad1" in page  # the history names who decided


@pytest.mark.parametrize("action,body,status,needle", [
    ("name", {"label_id": 1}, 400, "version"),
    ("name", {"version": 1}, 400, "label_id"),
    ("name", {"version": 1, "label_id": "lesion"}, 400, "not a region label"),
    ("name", {"version": 1, "label_id": 10**9}, 400, "not a region label"),
    ("name", {"version": "one", "label_id": "knee"}, 400, "integer"),
    ("split", {"version": 1}, 400, "'k' is missing"),
    ("split", {"version": 1, "k": 1}, 400, "at least 2"),
    ("split", {"version": 1, "k": 13}, 400, "at most the cluster size"),
    ("split", {"version": 1, "k": [2]}, 400, "integer"),
    ("merge", {"version": 1, "sources": []}, 400, "at least one"),
    ("merge", {"version": 1, "sources": ["self"]}, 400, "itself"),
    ("merge", {"version": 1, "sources": [10**6]}, 404, "no cluster"),
    ("merge", {"version": 1, "sources": ["foreign"]}, 400, "within one clustering run"),
    ("merge", {"version": 1, "sources": ["b"], "source_versions": [1]}, 400, "source_versions"),
    ("move", {"version": 1, "image_ids": [1]}, 400, "'target' is missing"),
    ("move", {"version": 1, "image_ids": "all", "target": "unlabeled"}, 400, "select at least one"),
    ("move", {"version": 1, "image_ids": ["b-image"], "target": "unlabeled"}, 400, "not in cluster"),
    ("move", {"version": 1, "image_ids": ["a-image"], "target": "elsewhere"}, 400, "'unlabeled' or 'discarded'"),
    ("undo", {"version": 1}, 400, "nothing to undo"),
    ("rename", {"version": 1}, 404, "unknown action"),
])
def test_malformed_requests_get_clear_4xx(app, cluster_world, db, action, body, status, needle):
    from tests.factories import make_cluster_run

    a, b = cluster_world["c"][0], cluster_world["c"][1]
    with db.session() as s:
        lesion = s.scalar(select(Label.id).where(Label.kind == "lesion"))
        a_img = s.scalar(select(ClusterMembership.image_id).where(ClusterMembership.cluster_id == a).limit(1))
        b_img = s.scalar(select(ClusterMembership.image_id).where(ClusterMembership.cluster_id == b).limit(1))
    subst = {"lesion": lesion, "self": a, "b": b, "a-image": a_img, "b-image": b_img}
    if body.get("sources") == ["foreign"]:
        other = make_cluster_run(db, sizes=[2])
        with db.session() as s:
            subst["foreign"] = s.scalar(select(Cluster.id).where(Cluster.run_id == other))

    def fill(v):
        if isinstance(v, list):
            return [fill(x) for x in v]
        return subst.get(v, v) if isinstance(v, str) else v

    body = {k: fill(v) for k, v in body.items()}
    resp = Browser(app, "rad1").act(a, action, **body)
    assert resp.status_code == status, resp.json
    assert needle in resp.json["error"] and resp.json["status"] == status


def test_bad_bodies_and_unknown_clusters(app, cluster_world):
    r = Browser(app, "rad1")
    a = cluster_world["c"][0]
    headers = {"X-CSRFToken": r.token, "Content-Type": "application/json"}
    resp = r.client.post(f"/api/clusters/{a}/name", data="{not json", headers=headers)
    assert resp.status_code == 400 and "must be JSON" in resp.json["error"]
    resp = r.client.post(f"/api/clusters/{a}/name", data="[1, 2]", headers=headers)
    assert resp.status_code == 400 and "JSON object" in resp.json["error"]
    assert r.act(987654, "undo", version=1).status_code == 404
    assert r.client.get("/api/clusters/987654").status_code == 404
    assert r.get("/clusters/987654").status_code == 404
    assert r.get("/runs/987654").status_code == 404
    assert r.client.get("/api/jobs/987654").status_code == 404
    assert r.client.get(f"/api/clusters/{a}/name").status_code == 405
    assert r.get(f"/clusters/{a}?page=abc").status_code == 400


# ---------------------------------------------------------------------------------------------
# overview, montages, map


def card_ids(html: str) -> list[int]:
    return [int(x) for x in re.findall(r'class="cluster-card [a-z]+" href="[^"]+"\s+data-id="(\d+)"', html)]


def test_overview_cards_and_sorting(app, cluster_world):
    db, (a, b, c), run = cluster_world["db"], cluster_world["c"], cluster_world["run"]
    r = Browser(app, "rad1")
    home = r.get("/")
    assert home.status_code == 302 and home.location == f"/runs/{run}"
    assert card_ids(r.get(f"/runs/{run}?sort=size").text) == [a, b, c]
    assert card_ids(r.get(f"/runs/{run}?sort=uncertainty").text) == [b, c, a]
    r.act(a, "name", version=1, label_id=cluster_world["L"]["knee"])
    assert card_ids(r.get(f"/runs/{run}").text) == [b, c, a]  # unnamed first
    r.act(c, "merge", version=1, sources=[b])
    html = r.get(f"/runs/{run}?sort=bogus").text
    assert card_ids(html) == [c, a]  # the merged cluster is gone, the bogus sort ignored
    assert "knee" in html and "9 images" in html


def test_montages_are_lazy_and_cached(app, cluster_world):
    settings, (a, b, _), run = cluster_world["settings"], cluster_world["c"], cluster_world["run"]
    mdir = settings.cache_dir / "montages"
    r = Browser(app, "rad1")
    r.get(f"/runs/{run}")
    assert not mdir.exists() or not any(mdir.iterdir())  # the page builds nothing
    resp = r.client.get(f"/clusters/{a}/montage.webp")
    assert resp.status_code == 200 and resp.mimetype == "image/webp" and resp.data[:4] == b"RIFF"
    files = list(mdir.glob(f"{a}-*.webp"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    assert r.client.get(f"/clusters/{a}/montage.webp").status_code == 200
    assert files[0].stat().st_mtime_ns == stamp  # served from the cache
    from PIL import Image as PILImage
    import io

    with PILImage.open(io.BytesIO(resp.data)) as im:
        assert im.size == (384, 384)
        arr = np.asarray(im.convert("L"))
    assert (arr[:128, :128] != arr[0, 0]).any()  # a real thumbnail in the first tile
    # a merge changes the members nearest the centre -> a new montage replaces the old one
    r.act(a, "merge", version=1, sources=[b])
    with cluster_world["db"].session() as s:
        cl = s.get(Cluster, a)
        cl.stats = {**cl.stats, "representatives": []}
    r.client.get(f"/clusters/{a}/montage.webp")
    new = list(mdir.glob(f"{a}-*.webp"))
    assert len(new) == 1 and new[0].name != files[0].name


def test_umap_json_follows_current_clusters(app, cluster_world):
    (a, b, c), run = cluster_world["c"], cluster_world["run"]
    r = Browser(app, "rad1")
    data = r.client.get(f"/api/runs/{run}/umap").json
    assert data["n"] == 21 and len(data["x"]) == len(data["y"]) == len(data["ids"]) == 21
    assert 0 <= min(data["x"]) and max(data["x"]) == 4095
    assert sorted(set(data["c"])) == [0, 1, 2]
    r.act(a, "merge", version=1, sources=[b, c])
    data = r.client.get(f"/api/runs/{run}/umap").json
    assert set(data["c"]) == {0} and [row[0] for row in data["clusters"]] == [a]


def test_cluster_page_pages_members(app, cluster_world, monkeypatch):
    from backend.web import clusters

    monkeypatch.setattr(clusters, "PER_PAGE", 5)
    a = cluster_world["c"][0]
    r = Browser(app, "rad1")
    ids = []
    for page in (1, 2, 3):
        html = r.get(f"/clusters/{a}?page={page}").text
        ids += [int(x) for x in re.findall(r'class="thumb" data-image-id="(\d+)"', html)]
    assert len(ids) == 12 == len(set(ids))
    with cluster_world["db"].session() as s:
        by_distance = list(s.scalars(select(ClusterMembership.image_id).where(ClusterMembership.cluster_id == a)
                                     .order_by(ClusterMembership.distance)))
    assert ids == by_distance
    resp = r.get(f"/clusters/{a}?page=9")
    assert resp.status_code == 302 and resp.location.endswith("page=3")
    html = r.get(f"/clusters/{a}").text
    for key in ("/ or n", "<dt>d</dt>", "<dt>u</dt>", "1–9"):
        assert key in html  # the shortcuts are documented on the page


# ---------------------------------------------------------------------------------------------
# images


def test_window_mapping():
    px = np.array([[0.0, 0.25, 0.5, 0.75, 1.0]], np.float32)
    out = window_to_uint8(px, centre=32767.5, width=65535)
    assert out.tolist() == [[0, 64, 128, 191, 255]]
    narrow = window_to_uint8(px, centre=0.5 * 65535, width=1000)
    assert narrow.tolist() == [[0, 0, 128, 255, 255]]
    c, w = auto_window(np.linspace(0, 1, 1001, dtype=np.float32).reshape(11, 91))
    assert abs(c - 32767.5) < 1 and abs(w - 0.98 * 65535) < 50


def test_windowed_full_image(app, cluster_world):
    import cv2

    r = Browser(app, "viewer")
    with cluster_world["db"].session() as s:
        img = s.scalar(select(Image).order_by(Image.id).limit(1))
    pixels = load_pixels(cluster_world["settings"], img.store_path)
    resp = r.client.get(f"/images/{img.id}/window?c=20000&w=30000&size=0")
    assert resp.status_code == 200 and resp.mimetype == "image/png"
    assert resp.headers["X-Window-Center"] == "20000.0" and resp.headers["X-Window-Width"] == "30000.0"
    got = cv2.imdecode(np.frombuffer(resp.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert got.dtype == np.uint8 and got.shape == pixels.shape
    assert np.array_equal(got, window_to_uint8(pixels, 20000, 30000))
    other = cv2.imdecode(np.frombuffer(r.client.get(f"/images/{img.id}/window?c=40000&w=5000&size=0").data, np.uint8),
                         cv2.IMREAD_UNCHANGED)
    assert not np.array_equal(got, other)
    auto = r.client.get(f"/images/{img.id}/window?auto=1&size=32")
    assert auto.status_code == 200 and float(auto.headers["X-Window-Width"]) > 1
    small = cv2.imdecode(np.frombuffer(auto.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert max(small.shape) == 32
    assert r.client.get(f"/images/{img.id}/window?c=abc&w=1").status_code == 400
    assert r.client.get(f"/images/{img.id}/window?c=nan&w=1").status_code == 400
    assert r.client.get("/images/987654/window").status_code == 404
    thumb = r.client.get(f"/images/{img.id}/thumbnail")
    assert thumb.status_code == 200 and thumb.mimetype == "image/webp"


def test_image_page_shows_provenance(app, cluster_world):
    db, a = cluster_world["db"], cluster_world["c"][0]
    r = Browser(app, "rad1")
    r.act(a, "name", version=1, label_id=cluster_world["L"]["knee"])
    r.act(a, "name", version=2, label_id=cluster_world["L"]["femur"])
    with db.session() as s:
        img = s.scalar(select(ClusterMembership.image_id).where(ClusterMembership.cluster_id == a).limit(1))
    html = r.get(f"/images/{img}").text
    table = html[html.index('id="provenance"'):]
    assert table.index("femur") < table.index("knee") and "rad1" in table and "current" in table


# ---------------------------------------------------------------------------------------------
# runs and vocabulary


def test_start_clustering_job(app, cluster_world, monkeypatch):
    import backend.cli.job_kinds  # noqa: F401  # registers the real handlers first
    from backend.jobs import registry

    monkeypatch.setitem(registry._KINDS, "cluster", lambda ctx: {"run_id": None})
    db = cluster_world["db"]
    r = Browser(app, "rad1")
    resp = r.form("/runs", {"k": "7", "epochs": "3"})
    assert resp.status_code == 303
    job_id = int(resp.location.rsplit("job=", 1)[1])
    with db.session() as s:
        job = s.get(Job, job_id)
        assert (job.kind, job.params, job.status.value) == ("cluster", {"k": 7, "epochs": 3}, "queued")
    status = r.client.get(f"/api/jobs/{job_id}").json
    assert status["status"] == "queued" and status["params"] == {"k": 7, "epochs": 3}
    page = r.get(f"/runs?job={job_id}").text
    assert f'data-job-id="{job_id}"' in page and "queued" in page
    for bad in ({"k": "1", "epochs": "3"}, {"k": "x", "epochs": "3"}, {"k": "5", "epochs": "0"}):
        resp = r.form("/runs", bad)
        assert resp.status_code == 303
        assert "must be" in r.get("/runs").text
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1
    monkeypatch.delitem(registry._KINDS, "cluster")
    r.form("/runs", {"k": "5", "epochs": "1"})
    assert "Could not start clustering" in r.get("/runs").text


@pytest.mark.slow
def test_clustering_started_from_the_page_runs_for_real(app, cluster_world):
    """No k on the form: the job picks it; a worker (here: execute) runs the real DeepCluster."""
    from backend.jobs import execute
    from backend.database.schema import ClusterRun

    db = cluster_world["db"]
    r = Browser(app, "rad1")
    resp = r.form("/runs", {"k": "", "epochs": "1"})
    job_id = int(resp.location.rsplit("job=", 1)[1])
    assert "k=automatic" in r.get("/runs").text
    done = execute(db, job_id)
    assert done.status.value == "succeeded", done.error
    with db.session() as s:
        run = s.get(ClusterRun, done.result["run_id"])
        assert run.status == "done" and run.k == 10  # 21 images: at least 10 clusters
    status = r.client.get(f"/api/jobs/{job_id}").json
    assert status["status"] == "succeeded" and status["progress"] == 1.0


def test_vocabulary_admin(app, cluster_world):
    db, a, L = cluster_world["db"], cluster_world["c"][0], cluster_world["L"]
    boss = Browser(app, "boss")
    assert boss.form("/vocabulary", {"name": "  Tail  Bone ", "description": "coccyx"}).status_code == 303
    with db.session() as s:
        tail = s.scalar(select(Label).where(Label.name == "tail bone"))
        assert tail is not None and tail.kind == "region" and tail.is_active
    boss.form("/vocabulary", {"name": "knee"})
    assert "already in the vocabulary" in boss.get("/vocabulary").text
    boss.form(f"/vocabulary/{L['toe']}", {"name": "toes", "sort_order": "3", "is_active": "on"})
    boss.form(f"/vocabulary/{L['finger']}", {"name": "finger", "sort_order": "1"})  # unticked: retired
    boss.form(f"/vocabulary/{L['hand']}", {"name": "knee", "sort_order": "1", "is_active": "on"})
    with db.session() as s:
        assert s.get(Label, L["toe"]).name == "toes"
        assert not s.get(Label, L["finger"]).is_active
        assert s.get(Label, L["hand"]).name == "hand"  # the rename to a taken name was refused
    page = boss.get(f"/clusters/{a}").text
    picker = page[page.index('id="label-list"'):page.index("</ol>", page.index('id="label-list"'))]
    assert 'data-name="toes"' in picker and 'data-name="tail bone"' in picker and 'data-name="finger"' not in picker
    resp = Browser(app, "rad1").act(a, "name", version=1, label_id=L["finger"])
    assert resp.status_code == 400 and "retired" in resp.json["error"]
    assert boss.form("/vocabulary/987654", {"name": "x"}).status_code == 404


# ---------------------------------------------------------------------------------------------
# scale


def test_overview_of_1000_clusters_uses_a_fixed_number_of_queries(sqlite_db):
    """However many clusters and images, the overview costs the same few SQL statements, never
    one per cluster. (Its speed is measured by bench/overview.py, not here.)"""
    run = make_big_run(sqlite_db, n_clusters=1000, n_images=20_000)
    make_user(sqlite_db, "rad1")
    app = create_app(sqlite_db.settings, testing=True)
    r = Browser(app, "rad1")
    statements = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    engine = app.extensions["samx.db"].engine
    event.listen(engine, "before_cursor_execute", listener)
    try:
        resp = r.get(f"/runs/{run}?sort=uncertainty")
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert resp.status_code == 200
    assert len(card_ids(resp.text)) == 1000
    assert len(statements) <= 6, statements  # user, run, cards, summary: never one per cluster
    data = r.client.get(f"/api/runs/{run}/umap").json
    assert data["n"] == 20_000 and len(data["clusters"]) == 1000
    app.extensions["samx.db"].dispose()


# ---------------------------------------------------------------------------------------------
# samx serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_samx_serve_starts_the_app(tmp_path):
    settings = make_settings(tmp_path / "served")
    port = _free_port()
    env = dict(os.environ, SAMX_DATA_DIR=str(settings.data_dir), DATABASE_URL=settings.database_url)
    proc = subprocess.Popen([sys.executable, "-m", "backend.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=2) as resp:
                    assert resp.status == 200 and b"Log in" in resp.read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(f"samx serve did not answer: {proc.stdout.read1().decode(errors='replace') if proc.poll() is not None else 'timeout'}")
                time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(10)
