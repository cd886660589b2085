"""Who may do what, checked route by route from the web app's URL map (a route added later is
checked without anyone remembering to), plus path traversal, upload size, session expiry and
password storage. The ML backend's own map is enumerated in tests/test_ml_backend.py."""
from __future__ import annotations

import dataclasses
import re
import time

import pytest
from sqlalchemy import func, select

from backend.jobs import enqueue
from backend.database.schema import Cluster, ClusterMembership, Label, User, WeakLabel
from backend.web import create_app
from tests.factories import TEST_PASSWORD
from tests.test_web import Browser

pytestmark = pytest.mark.parametrize("db", ["sqlite"], indirect=True)  # rules, not storage: one database

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
#: The policy, written out: who may call each endpoint (None: anyone). A new route fails the
#: tests until it is entered here, and a view whose decorator drifts from it fails too.
POLICY = {
    "auth.login": None, "static": None, "auth.logout": None,
    "clusters.home": "view", "clusters.overview": "view", "clusters.umap": "view", "clusters.cluster_page": "view",
    "clusters.montage": "view", "clusters.cluster_json": "view", "clusters.act": "decide",
    "images.image_page": "view", "images.thumbnail": "view", "images.windowed": "view",
    "runs.runs_page": "view", "runs.job_status": "view", "runs.start_run": "decide",
    "sorter.review_page": "view", "sorter.set_label": "decide", "sorter.models_page": "view",
    "sorter.retrain": "decide", "sorter.report": "view", "sorter.gradcam_png": "view", "sorter.similar": "view",
    "vocabulary.vocabulary_page": "view", "vocabulary.add_label": "admin", "vocabulary.edit_label": "admin",
}
CSRF = re.compile(r'name="csrf-token" content="([^"]+)"')


@pytest.fixture
def app(cluster_world):
    app = create_app(cluster_world["settings"], testing=True)
    yield app
    app.extensions["samx.db"].dispose()


@pytest.fixture
def urls(app, cluster_world) -> list[tuple[str, str, str | None]]:
    """(method, url, permission) for every route and method, built with ids that exist."""
    db = cluster_world["db"]
    with db.session() as s:
        image_id = s.scalar(select(ClusterMembership.image_id).where(ClusterMembership.cluster_id == cluster_world["c"][0]))
    job = enqueue(db, "cluster", {"k": 3, "epochs": 1}, send=False)
    values = {"run_id": cluster_world["run"], "cluster_id": cluster_world["c"][0], "image_id": image_id,
              "job_id": job.id, "mv_id": 1, "label_id": cluster_world["L"]["knee"], "action": "name",
              "filename": "style.css"}
    out = []
    for rule in app.url_map.iter_rules():
        missing = set(rule.arguments) - set(values)
        assert not missing, f"{rule.rule}: give the security test a value for {missing}"
        url = rule.rule
        for name in rule.arguments:
            url = re.sub(rf"<(?:\w+:)?{name}>", str(values[name]), url)
        assert rule.endpoint in POLICY, f"{rule.endpoint} ({rule.rule}): enter it in POLICY"
        permission = POLICY[rule.endpoint]
        assert getattr(app.view_functions[rule.endpoint], "permission", None) == permission, rule.endpoint
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            out.append((method, url, permission, rule.endpoint))
    return out


def call(browser: Browser, method: str, url: str):
    if method == "GET":
        return browser.client.get(url, headers={"Accept": "text/html"})
    return browser.client.open(url, method=method, json={}, headers={"X-CSRFToken": browser.token or ""})


def decisions(db) -> tuple[int, int, int]:
    with db.session() as s:
        return (s.scalar(select(func.sum(Cluster.version))), s.scalar(select(func.count(WeakLabel.id))),
                s.scalar(select(func.count(Label.id))))


def test_unauthenticated_requests_reach_no_view(app, cluster_world, urls):
    """Every route but the login page and static files: a page redirects to the login, the API
    answers 401, and a write with a valid CSRF token but no login changes nothing."""
    before = decisions(cluster_world["db"])
    anon = Browser(app)
    anon.token = CSRF.search(anon.client.get("/login").text).group(1)  # a real token: only the login is missing
    checked = 0
    for method, url, permission, endpoint in urls:
        if endpoint in ("auth.login", "static"):
            assert permission is None
            assert call(anon, method, url).status_code in (200, 401), url  # 401: empty login form
            continue
        resp = call(anon, method, url)
        if url.startswith("/api/") or method in WRITE_METHODS:
            assert resp.status_code in (302, 401), (method, url, resp.status_code)
            if resp.status_code == 401:
                assert resp.json["error"] == "log in first", url
        else:
            assert resp.status_code == 302, (method, url, resp.status_code)
        if resp.status_code == 302:
            assert resp.location.startswith("/login"), (method, url, resp.location)
        checked += 1
    assert checked >= 20
    assert decisions(cluster_world["db"]) == before


@pytest.mark.parametrize("username, allowed", [
    ("viewer", {"view"}),
    ("rad1", {"view", "decide"}),
    ("boss", {"view", "decide", "admin"}),
])
def test_each_role_reaches_exactly_its_routes(app, cluster_world, urls, username, allowed):
    """A route the role lacks answers 403 and changes nothing; one it has never answers 401/403
    or a server error (an empty body may well be a 400)."""
    b = Browser(app, username)
    before = decisions(cluster_world["db"])
    for method, url, permission, endpoint in urls:
        if endpoint in ("auth.login", "auth.logout", "static"):
            continue
        resp = call(b, method, url)
        if permission in allowed:
            assert resp.status_code not in (401, 403) and resp.status_code < 500, (username, method, url, resp.status_code)
        else:
            assert resp.status_code == 403, (username, method, url, resp.status_code)
            if url.startswith("/api/"):
                assert username in resp.json["error"], url
    if allowed == {"view"}:
        assert decisions(cluster_world["db"]) == before
    assert call(b, "POST", "/logout").status_code == 302
    assert call(b, "GET", "/runs").status_code == 302  # logged out for real


@pytest.mark.parametrize("url", [
    "/static/../backend/db.py",
    "/static/%2e%2e/%2e%2e/pyproject.toml",
    "/static/..%2f..%2fpyproject.toml",
    "/static/%2fetc%2fpasswd",
    "/images/..%2f..%2fsamx.db",
    "/images/1%2f..%2f..%2fsecret.key/thumbnail",
    "/models/..%2f..%2fsecret.key/report",
    "/clusters/1/..%2f..%2fsamx.db",
])
def test_path_traversal_reaches_no_file(app, cluster_world, url):
    b = Browser(app, "boss")
    resp = b.client.get(url, headers={"Accept": "text/html"}, follow_redirects=True)  # werkzeug merges "//"
    assert resp.status_code in (400, 404), (url, resp.status_code)
    assert all(r.request.path.startswith(("/static/", "/images/", "/models/", "/clusters/")) for r in resp.history)
    secret = cluster_world["settings"].secret_file.read_bytes()
    assert secret not in resp.data and b"sqlalchemy" not in resp.data


def test_request_bodies_are_size_limited(app, cluster_world):
    b = Browser(app, "rad1")
    before = decisions(cluster_world["db"])
    big = '{"version": 1, "label_id": 1, "pad": "' + "x" * (5 * 1024 * 1024) + '"}'
    resp = b.client.post(f"/api/clusters/{cluster_world['c'][0]}/name", data=big,
                         headers={"X-CSRFToken": b.token, "Content-Type": "application/json"})
    assert resp.status_code == 413 and "limit is 4 MiB" in resp.json["error"]
    assert decisions(cluster_world["db"]) == before


def test_sessions_expire_when_idle(cluster_world):
    """The lifetime is an idle timeout: each request renews the signed cookie."""
    settings = dataclasses.replace(cluster_world["settings"], session_hours=2 / 3600)
    app = create_app(settings, testing=True)
    try:
        b = Browser(app, "viewer")
        cookie = b.client.get_cookie("session")
        assert cookie is not None and cookie.expires is not None  # permanent: the browser drops it too
        for _ in range(6):  # 3 s of activity with a 2 s lifetime: renewed each time
            assert b.get("/runs").status_code == 200
            time.sleep(0.5)
        time.sleep(3.5)
        resp = b.get("/runs")
        assert resp.status_code == 302 and resp.location.startswith("/login")
        assert b.client.get("/api/jobs/1").status_code == 401
    finally:
        app.extensions["samx.db"].dispose()


def test_passwords_are_stored_as_slow_salted_hashes(cluster_world):
    with cluster_world["db"].session() as s:
        hashes = {u.username: u.password_hash for u in s.scalars(select(User))}
    assert len(hashes) == 4
    for h in hashes.values():
        assert h.startswith(("scrypt:", "pbkdf2:")) and TEST_PASSWORD not in h
    assert len(set(hashes.values())) == len(hashes)  # same password, different salts
