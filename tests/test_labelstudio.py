"""Label Studio for real: `samx labelstudio up` starts the pinned Label Studio from .venv-ls
(`make labelstudio`) on a free port with a data directory in tmp, sync creates the lesion project
and imports ingested phantoms as tasks, connects samx's real ML backend, and `down` stops it.
Nothing is mocked. (The labeling loop through it: tests/test_labelstudio_e2e.py.)"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import time

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage
from sqlalchemy import select

from backend.labelstudio import process as server
from ml_backend.labeling_config import (
    ABNORMAL_CHOICES,
    ABNORMAL_FROM_NAME,
    IMAGE_TO_NAME,
    LESION_FROM_NAME,
    PROJECT_TITLE,
    REGION_FROM_NAME,
    TASK_IMAGE_ID_KEY,
    TASK_IMAGE_KEY,
    TASK_REGION_KEY,
    VINDR_SPINEXR_LESION_CLASSES,
    labeling_config,
    parse_classes,
    parse_labeling_config,
)
from backend.labelstudio.sync import (
    ensure_project,
    import_tasks,
    load_state,
    local_path,
    project_tasks,
    sync,
    task_map,
)
from backend.database.schema import Image, Label, LabelSource, WeakLabel
from tests.conftest import make_settings
from tests.labelstudio_fixtures import N_IMAGES, free_port

def _http(settings, token: str | None = None) -> httpx.Client:
    conn = server.connection(settings)
    headers = {"Authorization": f"Token {token or conn.token}"}
    return httpx.Client(base_url=conn.url, headers=headers, timeout=60)


def _projects(settings) -> list[dict]:
    with _http(settings) as c:
        r = c.get("/api/projects", params={"page_size": 1000})
        r.raise_for_status()
        return r.json()["results"]


# ----------------------------------------------------------------------------- no server needed


def test_labeling_config_names_and_classes():
    xml = labeling_config(["benign", "malignant"], ["knee", "hand"])
    parsed = parse_labeling_config(xml)
    assert parsed.lesion_classes == ("benign", "malignant")
    assert parsed.regions == ("knee", "hand")
    assert parsed.abnormal_choices == ABNORMAL_CHOICES == ("normal", "abnormal")
    assert parsed.image_name == IMAGE_TO_NAME
    assert f'<RectangleLabels name="{LESION_FROM_NAME}" toName="{IMAGE_TO_NAME}"' in xml
    # names that need escaping survive as they are
    tricky = parse_labeling_config(labeling_config(['a "b" & <c>'], [])).lesion_classes
    assert tricky == ('a "b" & <c>',)
    assert parse_classes("vindr-spinexr") == VINDR_SPINEXR_LESION_CLASSES and len(VINDR_SPINEXR_LESION_CLASSES) == 7
    assert parse_classes(" benign, malignant ,benign,, ") == ("benign", "malignant")
    with pytest.raises(ValueError):
        labeling_config([], ["knee"])


def test_credentials_are_made_once_and_private(tmp_path):
    settings = make_settings(tmp_path)
    a = server.credentials(settings)
    b = server.credentials(settings)
    assert a == b and len(a.token) == 40 and len(a.password) >= 20
    assert (server.credentials_file(settings).stat().st_mode & 0o777) == 0o600
    env = dataclasses.replace(settings, label_studio_token="fixed-token-123")
    assert server.credentials(env).token == "fixed-token-123"
    assert server.connection(env).headers == {"Authorization": "Token fixed-token-123"}


def test_missing_binary_is_a_clear_error(tmp_path):
    settings = dataclasses.replace(make_settings(tmp_path), label_studio_bin=str(tmp_path / "nope"))
    with pytest.raises(server.LabelStudioError, match="SAMX_LABEL_STUDIO_BIN"):
        server.up(settings)


# ----------------------------------------------------------------------------- the real server


def test_up_is_healthy_token_works_and_second_up_is_a_no_op(label_studio):
    settings, first = label_studio
    assert first.started and first.pid
    conn = server.connection(settings)
    assert conn.url == f"http://127.0.0.1:{settings.label_studio_port}"
    assert server.health(conn.url)
    server.check_connection(conn)  # the token is accepted on /api/projects
    with _http(settings, token="not-the-token-000") as c:
        assert c.get("/api/projects").status_code == 401
    st = server.status(settings)
    assert st.running and st.pid == first.pid
    info = json.loads(server.pid_file(settings).read_text())
    assert info["pid"] == first.pid
    t0 = time.monotonic()
    again = server.up(settings)
    assert not again.started and again.pid == first.pid and time.monotonic() - t0 < 10
    log = server.log_file(settings).read_text()
    assert "Starting development server" in log


def test_busy_port_is_refused_not_silently_moved(label_studio, tmp_path):
    settings, _ = label_studio
    other = dataclasses.replace(make_settings(tmp_path), label_studio_port=settings.label_studio_port)
    with pytest.raises(server.LabelStudioError, match="in use"):
        server.up(other)


def test_cli_status_and_up(label_studio):
    from backend.cli import main

    settings, first = label_studio
    env = {"SAMX_LABEL_STUDIO_PORT": str(settings.label_studio_port)}
    runner = CliRunner()
    r = runner.invoke(main, ["--data-dir", str(settings.data_dir), "labelstudio", "status"], env=env)
    assert r.exit_code == 0, r.output
    assert f"pid {first.pid}" in r.output and "healthy" in r.output
    r = runner.invoke(main, ["--data-dir", str(settings.data_dir), "labelstudio", "up"], env=env)
    assert r.exit_code == 0, r.output
    assert "already running" in r.output


def test_sync_creates_one_project_with_our_config_and_is_idempotent(label_studio, ls_db):
    settings, _ = label_studio
    db = ls_db
    r1 = sync(db)
    r2 = sync(db)
    assert r1.project_id == r2.project_id
    assert not r2.created_project and not r2.config_updated
    assert r1.imported + r1.skipped == N_IMAGES == r2.skipped and r2.imported == 0 and r2.renditions == 0
    assert r2.tasks_in_project == N_IMAGES

    mine = [p for p in _projects(settings) if p["title"] == PROJECT_TITLE]
    assert len(mine) == 1 and mine[0]["id"] == r1.project_id
    cfg = parse_labeling_config(mine[0]["label_config"])
    with db.session() as s:
        regions = tuple(s.scalars(select(Label.name).where(Label.kind == "region", Label.is_active.is_(True))
                                  .order_by(Label.sort_order, Label.id)))
    assert cfg.lesion_classes == ("benign", "malignant")
    assert cfg.regions == regions and len(regions) == 28
    assert cfg.abnormal_choices == ("normal", "abnormal")
    assert cfg.image_name == IMAGE_TO_NAME
    assert f'name="{REGION_FROM_NAME}"' in mine[0]["label_config"]
    assert f'name="{ABNORMAL_FROM_NAME}"' in mine[0]["label_config"]

    conn = server.connection(settings)
    in_ls, count = project_tasks(conn, r1.project_id)
    assert count == N_IMAGES
    with db.session() as s:
        images = {im.id: im for im in s.scalars(select(Image))}
    assert set(in_ls) == set(images)
    assert task_map(settings) == in_ls == r2.task_ids
    assert load_state(settings)["project_id"] == r1.project_id


def test_tasks_show_a_full_size_display_image_that_label_studio_serves(label_studio, ls_db):
    settings, _ = label_studio
    r = sync(ls_db)
    with ls_db.session() as s:
        images = {im.id: (im.columns, im.rows) for im in s.scalars(select(Image))}
    with _http(settings) as c:
        resp = c.get("/api/tasks", params={"project": r.project_id, "page_size": 100, "fields": "task_only"})
        resp.raise_for_status()
        tasks = resp.json()["tasks"]
        assert len(tasks) == N_IMAGES
        for t in tasks:
            data = t["data"]
            assert set(data) == {TASK_IMAGE_KEY, TASK_IMAGE_ID_KEY, TASK_REGION_KEY}
            assert data[TASK_IMAGE_KEY].startswith("/data/local-files/?d=images/")
            png = c.get(data[TASK_IMAGE_KEY])
            assert png.status_code == 200, png.text[:200]
            assert png.headers["content-type"] == "image/png"
            pic = PILImage.open(io.BytesIO(png.content))
            assert pic.mode == "L" and pic.size == images[data[TASK_IMAGE_ID_KEY]]
            assert pic.getextrema()[1] > 200  # equalised, not a dark 16->8 bit cut
            assert local_path(settings, data[TASK_IMAGE_KEY]).read_bytes() == png.content
        first = tasks[0]["data"][TASK_IMAGE_KEY]
        # not without a token, and nothing outside the display images
        assert httpx.get(server.server_url(settings) + first, timeout=30).status_code in (401, 403)
        (server.files_root(settings) / "elsewhere").mkdir(exist_ok=True)
        (server.files_root(settings) / "elsewhere" / "x.png").write_bytes(png.content)
        for d in ("../../samx.db", "../credentials.json", "../label_studio.sqlite3", "elsewhere/x.png"):
            assert c.get("/data/local-files/", params={"d": d}).status_code != 200, d  # 404, or 500 on '..'



def test_region_weak_label_and_discarded_images(label_studio, ls_db):
    settings, _ = label_studio
    db = ls_db
    with db.session() as s:
        ids = sorted(s.scalars(select(Image.id)))
        knee = s.scalar(select(Label.id).where(Label.kind == "region", Label.name == "knee"))
        s.add(WeakLabel(image_id=ids[0], label_id=knee, source=LabelSource.manual))
        s.add(WeakLabel(image_id=ids[1], label_id=None, source=LabelSource.manual))  # discarded: not MSK
    try:
        r = sync(db, title="samx discard test")
        assert r.created_project and r.discarded == 1 and r.images == N_IMAGES - 1 == r.imported
        in_ls, _ = project_tasks(server.connection(settings), r.project_id)
        assert ids[1] not in in_ls and ids[0] in in_ls
        with _http(settings) as c:
            task = c.get(f"/api/tasks/{in_ls[ids[0]]}").json()
            other = c.get(f"/api/tasks/{in_ls[ids[2]]}").json()
        assert task["data"][TASK_REGION_KEY] == "knee" and other["data"][TASK_REGION_KEY] is None
    finally:
        with db.session() as s:
            for wl in s.scalars(select(WeakLabel).where(WeakLabel.image_id.in_(ids[:2]))):
                s.delete(wl)


def test_changed_classes_update_the_same_project(label_studio, ls_db):
    settings, _ = label_studio
    db = ls_db
    base = sync(db)
    changed = sync(db, classes="vindr-spinexr")
    try:
        kept = sync(db)  # a plain re-run keeps the classes the project has
        assert not kept.config_updated and kept.lesion_classes == VINDR_SPINEXR_LESION_CLASSES
        assert changed.project_id == base.project_id and changed.config_updated and not changed.created_project
        assert changed.imported == 0
        mine = [p for p in _projects(settings) if p["title"] == PROJECT_TITLE]
        assert len(mine) == 1
        assert parse_labeling_config(mine[0]["label_config"]).lesion_classes == VINDR_SPINEXR_LESION_CLASSES
        with db.session() as s:
            lesions = set(s.scalars(select(Label.name).where(Label.kind == "lesion")))
        assert set(VINDR_SPINEXR_LESION_CLASSES) <= lesions  # boxes coming back have a label to point at
    finally:
        back = sync(db, classes="benign,malignant")
    assert back.config_updated and back.lesion_classes == ("benign", "malignant")


def test_ml_backend_is_connected_once_with_an_authenticated_webhook(label_studio, ls_db, ml_backend):
    settings, _ = label_studio
    url, _ = ml_backend
    r1 = sync(ls_db, ml_backend_url=url)
    r2 = sync(ls_db, ml_backend_url=url + "/")
    assert r1.ml_error is None and r1.ml_backend_created and r1.ml_backend_id
    assert r2.ml_error is None and not r2.ml_backend_created and r2.ml_backend_id == r1.ml_backend_id
    with _http(settings) as c:
        backends = c.get("/api/ml", params={"project": r1.project_id}).json()
        hooks = [h for h in c.get("/api/webhooks", params={"project": r1.project_id}).json()
                 if h["project"] == r1.project_id]
    assert [b["url"].rstrip("/") for b in backends] == [url]
    assert backends[0]["auth_method"] == "BASIC_AUTH"
    hook_urls = [h["url"] for h in hooks]
    assert hook_urls.count(url + "/webhook") == 1, hooks
    hook = next(h for h in hooks if h["url"] == url + "/webhook")
    assert hook["is_active"] and (hook["send_for_all_actions"] or
                                  {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"} <= set(hook["actions"]))
    assert hook["headers"]["Authorization"].startswith("Basic ")  # the backend refuses anonymous events


def test_ml_backend_with_the_wrong_password_is_refused_clearly(label_studio, ls_db, ml_backend):
    url, _ = ml_backend
    refused = sync(ls_db, title="samx auth test", ml_backend_url=url, ml_backend_auth=("labelstudio", "wrong"))
    assert refused.ml_error and "authentication" in refused.ml_error


def test_unreachable_ml_backend_is_a_clear_error_not_a_failed_sync(label_studio, ls_db):
    r = sync(ls_db, ml_backend_url=f"http://127.0.0.1:{free_port()}")
    assert r.imported == 0 and r.skipped == N_IMAGES  # the rest of the sync still happened
    assert r.ml_error and "health check failed" in r.ml_error and "/health" in r.ml_error


@pytest.mark.slow
def test_10000_tasks_import_in_batches(label_studio):
    settings, _ = label_studio
    conn = server.connection(settings)
    project = ensure_project(conn, "samx 10k import test", labeling_config(["benign", "malignant"], ["knee"]))
    tasks = [{TASK_IMAGE_KEY: f"/data/local-files/?d=images/00/{i:064x}.png", TASK_IMAGE_ID_KEY: 10_000_000 + i,
              TASK_REGION_KEY: None} for i in range(10_000)]
    batches = []
    t0 = time.monotonic()
    ids = import_tasks(conn, project.id, tasks, batch_size=1000, on_batch=lambda b, i: batches.append(len(i)))
    seconds = time.monotonic() - t0
    print(f"\n10,000 tasks imported in {seconds:.1f} s ({len(batches)} batches of 1000)")
    assert len(ids) == 10_000 == len(set(ids)) and batches == [1000] * 10
    t0 = time.monotonic()
    in_ls, count = project_tasks(conn, project.id)
    print(f"listing them back: {time.monotonic() - t0:.1f} s")
    assert count == 10_000 and in_ls == {d[TASK_IMAGE_ID_KEY]: i for d, i in zip(tasks, ids)}


def test_down_stops_it_and_up_restarts_on_the_same_data(label_studio):
    settings, first = label_studio
    conn = server.connection(settings)
    pid = server.status(settings).pid
    assert server.down(settings) == pid
    assert not server.status(settings).running and not server.pid_file(settings).exists()
    assert not server.health(conn.url)
    assert not server.port_in_use(settings.label_studio_host, settings.label_studio_port)
    with pytest.raises(OSError):
        os.kill(pid, 0)  # gone, and reaped
    assert server.down(settings) is None  # nothing left to stop
    again = server.up(settings, timeout=600)  # same database: no migrations, same account and token
    print(f"\nLabel Studio restart: {again.seconds:.1f} s")
    assert again.started and again.pid != pid
    server.check_connection(conn)
    assert [p for p in _projects(settings) if p["title"] == PROJECT_TITLE]
