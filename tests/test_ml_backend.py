"""The ML backend behind Label Studio, without Label Studio: webhook events into our database,
the retrain trigger, the "train_detector" job, the hot-swapped model and the HTTP protocol with
its error answers. (tests/test_labelstudio_e2e.py runs the same against a real Label Studio.)"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import pytest
from sqlalchemy import delete, func, select

from backend.detector.data import labelled_images
from backend.detector.job import FIRST_LR, WARM_START_LR_SCALE
from backend.detector.retrain import maybe_retrain
from backend.detector.store import active_version
from backend.images.ingest import ingest_paths
from backend.jobs import enqueue, reap_stale
from backend.labelstudio.annotations import apply_event
from ml_backend.labeling_config import IMAGE_TO_NAME, LESION_FROM_NAME
from backend.labelstudio.process import files_root
from backend.detector.serving import ml_backend_service
from ml_backend.auth import credentials
from ml_backend.service import NO_MODEL
from backend.database.schema import Annotation, Box, ClusterRun, Image, Job, JobStatus, ModelVersion
from imaging.phantoms import generate_phantoms
from ml_backend.server import MAX_BODY, MAX_TASKS, create_app
from tests.conftest import make_settings
from tests.factories import ls_box_results, run_job

pytestmark = pytest.mark.slow


def ls_event(action: str, ann_id: int, image_id: int, width: int, height: int, boxes=(), *, abnormal=None,
             region=None, updated_at: str = "2026-11-23T10:00:00.000000Z", task_id: int | None = None) -> dict:
    """What Label Studio 1.23 posts for one annotation: boxes in percent of the image."""
    result = ls_box_results(boxes, width, height, abnormal, region)
    return {"action": action, "annotation": {"id": ann_id, "result": result, "completed_by": 1, "was_cancelled": False,
                                             "updated_at": updated_at, "task": task_id or 1000 + image_id},
            "task": {"id": task_id or 1000 + image_id, "data": {"samx_image_id": image_id}}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from backend.database.session import Database

    root = tmp_path_factory.mktemp("mlb")
    truth = generate_phantoms(root / "ph", 14, seed=5, fmt="png", size=256, lesion_rate=0.9,
                              regions=("knee", "hand"), workers=1)
    settings = dataclasses.replace(make_settings(root / "data"), detector_min_score=0.0)  # tiny model: show all boxes
    db = Database(settings)
    db.upgrade()
    db.seed_vocabulary()
    summary = ingest_paths(db, [root / "ph" / "images"], workers=1)
    images = []
    for e in truth["images"]:
        image_id = summary.image_ids[str(root / "ph" / e["file"])]
        with db.session() as s:
            img = s.get(Image, image_id)
            images.append({"id": image_id, "w": img.columns, "h": img.rows,
                           "boxes": [(les["label"], les["box"]) for les in e["lesions"]]})
    return {"settings": settings, "db": db, "images": images}


def test_annotation_events_land_as_boxes_in_pixels_with_their_answers(world):
    db, im = world["db"], world["images"][0]
    boxes = im["boxes"] or [("benign", (10.0, 12.0, 40.0, 30.0))]
    res = apply_event(db, "ANNOTATION_CREATED", ls_event("ANNOTATION_CREATED", 9001, im["id"], im["w"], im["h"],
                                                         boxes, abnormal=True))
    assert res.errors == [] and len(res.upserted) == 1 and res.boxes == len(boxes)
    with db.session() as s:
        ann = s.scalar(select(Annotation).where(Annotation.external_id == "9001"))
        got = sorted((b.x, b.y, b.x + b.width, b.y + b.height) for b in ann.boxes)
        assert ann.abnormal is True and ann.image_id == im["id"] and ann.task_external_id == str(1000 + im["id"])
    np.testing.assert_allclose(got, sorted(b for _, b in boxes), atol=1e-3)

    # an update replaces the boxes; an older (late) event changes nothing; a delete is final
    apply_event(db, "ANNOTATION_UPDATED", ls_event("ANNOTATION_UPDATED", 9001, im["id"], im["w"], im["h"],
                                                   [("malignant", (1, 2, 21, 32))], updated_at="2026-11-23T11:00:00Z"))
    late = apply_event(db, "ANNOTATION_UPDATED", ls_event("ANNOTATION_UPDATED", 9001, im["id"], im["w"], im["h"], [],
                                                          updated_at="2026-11-23T10:30:00Z"))
    assert late.stale == 1
    with db.session() as s:
        rows = s.scalars(select(Box).join(Annotation).where(Annotation.external_id == "9001")).all()
        assert len(rows) == 1 and (rows[0].x, rows[0].y, rows[0].width, rows[0].height) == pytest.approx((1, 2, 20, 30), abs=1e-3)
    assert apply_event(db, "ANNOTATIONS_DELETED", {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 9001}]}).deleted == 1
    again = apply_event(db, "ANNOTATION_UPDATED", ls_event("ANNOTATION_UPDATED", 9001, im["id"], im["w"], im["h"],
                                                           boxes, updated_at="2026-11-23T12:00:00Z"))
    assert again.stale == 1
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Box).join(Annotation)
                        .where(Annotation.external_id == "9001")) == 0
        assert all(r.image_id != im["id"] for r in labelled_images(s))


def test_a_region_choice_corrects_the_weak_label_with_provenance(world):
    from backend.database.schema import Label, LabelSource, WeakLabel, utcnow

    db, im = world["db"], world["images"][1]
    with db.session() as s:
        name_of = dict(s.execute(select(Label.id, Label.name).where(Label.kind == "region")).all())
        knee = next(i for i, n in name_of.items() if n == "knee")
        s.add(WeakLabel(image_id=im["id"], label_id=knee, source=LabelSource.cluster, created_at=utcnow()))

    def labels():
        with db.session() as s:
            return [(name_of.get(w.label_id), w.source, w.annotation_id, w.superseded_at is None) for w in
                    s.scalars(select(WeakLabel).where(WeakLabel.image_id == im["id"]).order_by(WeakLabel.id))]

    res = apply_event(db, "ANNOTATION_CREATED", ls_event("ANNOTATION_CREATED", 9300, im["id"], im["w"], im["h"],
                                                         region="hand"))
    assert res.errors == [] and res.labels == 1
    with db.session() as s:
        ann_id = s.scalar(select(Annotation.id).where(Annotation.external_id == "9300"))
    assert labels() == [("knee", LabelSource.cluster, None, False), ("hand", LabelSource.manual, ann_id, True)]
    # the same choice again changes nothing; another annotator's different choice supersedes it
    again = apply_event(db, "ANNOTATION_UPDATED", ls_event("ANNOTATION_UPDATED", 9300, im["id"], im["w"], im["h"],
                                                           region="hand", updated_at="2026-11-23T11:00:00Z"))
    assert again.labels == 0 and len(labels()) == 2
    other = apply_event(db, "ANNOTATION_CREATED", ls_event("ANNOTATION_CREATED", 9301, im["id"], im["w"], im["h"],
                                                           region="wrist"))
    assert other.labels == 1 and labels()[-1][:2] == ("wrist", LabelSource.manual) and labels()[-1][3]
    assert sum(current for *_, current in labels()) == 1
    # (the other tests of this module count the labelled images: these two annotations go again)
    gone = apply_event(db, "ANNOTATIONS_DELETED", {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 9300}, {"id": 9301}]})
    assert gone.deleted == 2 and labels()[-1][3], "a deleted annotation leaves the label it set in the history"


def test_a_task_samx_did_not_import_is_an_error_not_a_crash(world):
    bad = ls_event("ANNOTATION_CREATED", 9100, 1, 10, 10, [])
    bad["task"]["data"] = {"image": "http://example.org/x.png"}
    res = apply_event(world["db"], "ANNOTATION_CREATED", bad)
    assert res.upserted == [] and "no samx_image_id" in res.errors[0]
    missing = apply_event(world["db"], "ANNOTATION_CREATED", ls_event("ANNOTATION_CREATED", 9101, 999_999, 10, 10, []))
    assert "not in this samx database" in missing.errors[0]


def test_rotated_box_is_stored_as_its_axis_aligned_bounds(world):
    db, im = world["db"], world["images"][1]
    ev = ls_event("ANNOTATION_CREATED", 9200, im["id"], im["w"], im["h"], [("benign", (50, 50, 70, 60))])
    ev["annotation"]["result"][0]["value"]["rotation"] = 90
    apply_event(db, "ANNOTATION_CREATED", ev)
    with db.session() as s:
        (b,) = s.scalars(select(Box).join(Annotation).where(Annotation.external_id == "9200")).all()
        # 20 x 10 turned 90 degrees clockwise about its top-left corner (50, 50): x 40..50, y 50..70
        assert (b.x, b.y, b.width, b.height) == pytest.approx((40, 50, 10, 20), abs=1e-3)
    apply_event(db, "ANNOTATIONS_DELETED", {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 9200}]})


@pytest.fixture(scope="module")
def trained(world):
    """Annotations for 10 images (their true boxes), then one real train_detector job (the
    small-lesion architecture on tiles: the demo and the Label Studio test train the default)."""
    db = world["db"]
    for k, im in enumerate(world["images"][2:12]):
        apply_event(db, "ANNOTATION_CREATED", ls_event("ANNOTATION_CREATED", 100 + k, im["id"], im["w"], im["h"],
                                                       im["boxes"]))
    job = run_job(db, "train_detector", epochs=2, size=128, arch="resnet18_fpn", tile=64, classifier_epochs=2,
                  min_images=4, rank_batch=2)
    assert job.status == JobStatus.succeeded, job.error
    return job


def test_retrain_is_queued_once_after_n_annotations_and_not_again_while_pending(tmp_path, world):
    from backend.database.session import Database

    settings = dataclasses.replace(make_settings(tmp_path / "data"), detector_retrain_after=3)
    db = Database(settings)
    db.upgrade()
    summary = ingest_paths(db, [Path(world["settings"].data_dir).parent / "ph" / "images"], workers=1)
    ids = sorted(summary.image_ids.values())[:6]
    queued = []
    for k, image_id in enumerate(ids):
        apply_event(db, "ANNOTATION_CREATED", ls_event("ANNOTATION_CREATED", k + 1, image_id, 256, 256, []))
        queued.append(maybe_retrain(db, send=False))
    assert [j is not None for j in queued] == [False, False, True, False, False, False]  # pending: debounced
    assert queued[2].params == {"reason": "3 annotations since the last training", "follow_active": True}
    assert maybe_retrain(db, force_reason="START_TRAINING", send=False) is None
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.kind == "train_detector")) == 1


def test_train_detector_job_stores_a_version_and_ranks_the_unlabelled(world, trained):
    settings = world["settings"]
    res = trained.result
    assert res["images"] == 10 and res["ranked"] == len(world["images"]) - 10
    with world["db"].session() as s:
        mv = s.get(ModelVersion, res["model_version_id"])
        assert mv.kind == "detector" and mv.status == "active"
    scratch = {"source": "scratch", "model_version_id": None, "loaded": 0}  # no DeepCluster network here
    assert mv.metrics["backbone"] == scratch and mv.metrics["classifier_backbone"] in (scratch, None)
    folder = settings.data_dir / Path(mv.path).parent
    assert {"detector.pt", "metadata.json", "ranking.json"} <= {p.name for p in folder.iterdir()}
    meta = json.loads((folder / "metadata.json").read_text())
    used = {label for im in world["images"][2:12] for label, _ in im["boxes"]}
    assert meta["n_images"] == 10 and meta["classes"] == [c for c in ("benign", "malignant") if c in used]
    assert (meta["config"]["arch"], meta["config"]["tile"], meta["config"]["size"]) == ("resnet18_fpn", 64, 128)
    ranking = json.loads((folder / "ranking.json").read_text())["ranking"]
    assert sorted(r["rank"] for r in ranking) == list(range(1, len(ranking) + 1))
    assert [r["priority"] for r in ranking] == sorted((r["priority"] for r in ranking), reverse=True)


def test_samx_eval_judges_the_stored_version_with_its_own_threshold(world, trained, tmp_path):
    from backend.detector.evaluation import evaluate_version

    report = evaluate_version(world["settings"], world["db"], split="all", out=tmp_path)
    with world["db"].session() as s:
        mv = s.get(ModelVersion, trained.result["model_version_id"])
    meta = json.loads((world["settings"].data_dir / Path(mv.path).parent / "metadata.json").read_text())
    assert report["version"] == mv.version and report["n_images"] == 10
    assert report["fusion_threshold"] == pytest.approx(trained.result["fusion_threshold"])
    # a stored version's own c*, chosen at training time; without a classifier there is nothing to fuse
    assert report["threshold_selection"].startswith("given" if meta["classifier"] else "no classifier")
    assert report["map50"] is not None and report["box_accuracy_at_operating_point"]["iou_threshold"] == 0.5
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(report))
    from click.testing import CliRunner

    from backend.cli import main

    shown = CliRunner().invoke(main, ["--data-dir", str(world["settings"].data_dir), "eval", "--split", "all"],
                               catch_exceptions=False).output
    assert f"detector {mv.version} on 10 all images" in shown and "at the operating point" in shown
    assert f"fusion threshold c* {report['fusion_threshold']:.3f}: {report['threshold_selection']}" in shown


@pytest.fixture(scope="module")
def client(world, trained):
    backend = ml_backend_service(world["settings"], world["db"])
    backend.slot.refresh()
    app = create_app(backend, basic_auth=credentials(world["settings"]))
    user, password = credentials(world["settings"])
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Basic {token}"
    c.backend = backend
    return c


def test_every_route_needs_the_basic_auth_account(world, client):
    """Enumerates the URL map, so a route added later cannot skip the check."""
    anon = client.application.test_client()
    rules = list(client.application.url_map.iter_rules())
    assert {r.rule for r in rules} >= {"/", "/health", "/setup", "/predict", "/webhook", "/versions"}
    for rule in rules:
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            r = anon.open(rule.rule.replace("<path:filename>", "x.txt"), method=method, json={})
            assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic"), (method, rule.rule)
    wrong = base64.b64encode(b"labelstudio:nope").decode()
    assert anon.get("/health", headers={"Authorization": f"Basic {wrong}"}).status_code == 401


def test_health_setup_versions_report_one_stable_version(client, trained):
    v = trained.result["version"]
    assert client.get("/health").get_json() == {"status": "UP", "model_version": v}
    assert [client.post("/setup", json={"project": "1.1"}).get_json()["model_version"] for _ in range(3)] == [v] * 3
    versions = client.get("/versions").get_json()
    assert versions["model_version"] == v and versions["versions"][0]["version"] == v


def test_predict_gives_one_result_per_task_in_percent_of_the_original(world, client, trained):
    ims = world["images"][12:14]
    tasks = [{"id": 1, "data": {"samx_image_id": im["id"]}} for im in ims]
    body = client.post("/predict", json={"tasks": tasks}).get_json()
    assert len(body["results"]) == 2 and "errors" not in body
    for im, res in zip(ims, body["results"]):
        assert res["model_version"] == trained.result["version"]
        rects = [r for r in res["result"] if r["type"] == "rectanglelabels"]
        for r in rects:
            assert (r["original_width"], r["original_height"]) == (im["w"], im["h"])
            v = r["value"]
            assert 0 <= v["x"] <= 100 and 0 <= v["y"] <= 100 and v["x"] + v["width"] <= 100.01
            assert r["from_name"] == LESION_FROM_NAME and r["to_name"] == IMAGE_TO_NAME
            assert v["rectanglelabels"][0] in ("benign", "malignant")


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height (its header is all a decoder needs to refuse it)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
                     + struct.pack(">I", zlib.crc32(chunk)) + b"\x00\x00\x00\x00IEND\xaeB`\x82")


@pytest.mark.parametrize("body, status, words", [
    ("not json", 400, "JSON object"),
    ({"tasks": []}, 400, "non-empty list"),
    ({"tasks": "x"}, 400, "non-empty list"),
    ({"tasks": [1, 2]}, 400, "JSON object"),
    ({"tasks": [{"id": 7, "data": {"samx_image_id": 999999}}]}, 404, "not in this samx store"),
    ({"tasks": [{"id": 7, "data": {"samx_image_id": "abc"}}]}, 400, "integer"),
    ({"tasks": [{"id": 7, "data": {"image": "http://169.254.169.254/latest/meta-data"}}]}, 400, "outside the samx store"),
    ({"tasks": [{"id": 7, "data": {"image": "/data/local-files/?d=../../../../etc/passwd"}}]}, 400, "local-files"),
    ({"tasks": [{"id": 7, "data": {}}]}, 404, "names no samx image"),
])
def test_bad_predict_requests_get_a_clear_4xx(client, body, status, words):
    r = client.post("/predict", data=body, content_type="text/plain") if isinstance(body, str) \
        else client.post("/predict", json=body)
    assert r.status_code == status and words in r.get_json()["error"], r.get_json()


def test_oversized_requests_are_refused_whole(client):
    """Too many tasks, or a body over the limit, is a 413 with its reason, before any work."""
    tasks = [{"id": k, "data": {"samx_image_id": 999999}} for k in range(MAX_TASKS + 1)]
    r = client.post("/predict", json={"tasks": tasks})
    assert r.status_code == 413 and f"at most {MAX_TASKS}" in r.get_json()["error"]
    r = client.post("/predict", data=b" " * (MAX_BODY + 1), content_type="application/json")
    assert r.status_code == 413 and r.get_json()["error"]
    assert client.post("/webhook", data=b" " * (MAX_BODY + 1), content_type="application/json").status_code == 413


def test_a_20000_by_20000_image_is_refused_before_decoding(world, client):
    _png_header(files_root(world["settings"]) / "images" / "huge.png", 20_000, 20_000)
    r = client.post("/predict", json={"tasks": [{"id": 8, "data": {"image": "/data/local-files/?d=images/huge.png"}}]})
    assert r.status_code == 413 and "400000000 pixels" in r.get_json()["error"]
    _png_header(files_root(world["settings"]) / "images" / "big.png", 12_000, 11_000)  # under PIL's own bomb limit
    r = client.post("/predict", json={"tasks": [{"id": 9, "data": {"image": "/data/local-files/?d=images/big.png"}}]})
    assert r.status_code == 413 and "12000 x 11000" in r.get_json()["error"]


def test_one_bad_task_does_not_block_the_batch(world, client):
    good = {"id": 1, "data": {"samx_image_id": world["images"][13]["id"]}}
    r = client.post("/predict", json={"tasks": [good, {"id": 2, "data": {"samx_image_id": 999999}}]})
    body = r.get_json()
    assert r.status_code == 200 and len(body["results"]) == 2 and body["results"][1]["result"] == []
    assert body["errors"] == [{"task": 2, "status": 404, "error": "image 999999 is not in this samx store"}]


def test_webhook_answers_at_once_and_the_event_lands(world, client):
    im = world["images"][13]
    r = client.post("/webhook", json=ls_event("ANNOTATION_CREATED", 9300, im["id"], im["w"], im["h"],
                                              [("benign", (5, 5, 25, 25))]))
    assert r.status_code == 200 and r.get_json()["status"] == "accepted"
    assert client.post("/webhook", json={"project": 1}).status_code == 400
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED"}).get_json()["status"] == "ignored"
    client.backend.start(watch_every=3600)  # the event thread (the slot is already loaded)
    client.backend.wait_events()
    with world["db"].session() as s:
        assert s.scalar(select(func.count()).select_from(Annotation).where(Annotation.external_id == "9300")) == 1


def test_a_broken_new_version_is_not_served_and_the_old_one_keeps_serving(world, client, trained):
    db, settings = world["db"], world["settings"]
    folder = settings.models_dir / "detector" / "broken"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text("{}")
    (folder / "detector.pt").write_bytes(b"not a model")
    with db.session() as s:
        s.add(ModelVersion(kind="detector", version="broken", status="active", path="models/detector/broken/detector.pt"))
    old = client.backend.slot.current
    assert client.backend.slot.refresh() is False
    assert client.backend.slot.current is old and "broken" in client.backend.slot.failed
    assert client.get("/health").get_json()["model_version"] == trained.result["version"]
    with db.session() as s:
        s.execute(delete(ModelVersion).where(ModelVersion.version == "broken"))


def test_worker_killed_mid_training_leaves_the_old_model_serving(world, client, trained):
    """kill -9 of the worker while a retrain is in its detector epochs: the ML backend keeps
    serving the previous version, no version row or folder appears, the annotations are
    untouched, and the job is marked failed once the worker is found dead."""
    db, settings = world["db"], world["settings"]
    old = trained.result["version"]

    def state():
        with db.session() as s:
            return (s.scalar(select(func.count()).select_from(ModelVersion)), s.scalar(select(func.count()).select_from(Annotation)),
                    s.scalar(select(func.count()).select_from(Box)))

    before = state()
    folders = {p.name for p in (settings.models_dir / "detector").iterdir()}
    job = enqueue(db, "train_detector", {"epochs": 500, "size": 128, "classifier_epochs": 2, "min_images": 4})
    env = dict(os.environ, SAMX_DATA_DIR=str(settings.data_dir), DATABASE_URL=settings.database_url,
               SAMX_QUEUE=settings.queue_url)
    worker = subprocess.Popen([sys.executable, "-m", "backend.cli", "worker"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and worker.poll() is None:
            with db.session() as s:
                row = s.get(Job, job.id)
            if row.status == JobStatus.running and (row.message or "").startswith("detector: epoch 2"):
                break
            time.sleep(0.2)
        assert row.status == JobStatus.running and (row.message or "").startswith("detector"), (row.status, row.message)
        os.killpg(worker.pid, signal.SIGKILL)  # kill -9, mid-training
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    client.backend.slot.refresh()
    health = client.get("/health").get_json()
    assert health["model_version"] == old
    task = {"id": 1, "data": {"samx_image_id": world["images"][12]["id"]}}
    assert client.post("/predict", json={"tasks": [task]}).get_json()["results"][0]["model_version"] == old
    assert state() == before
    assert {p.name for p in (settings.models_dir / "detector").iterdir()} == folders
    assert reap_stale(db, stale_after=timedelta(0), requeue=False) == [job.id]
    with db.session() as s:
        dead = s.get(Job, job.id)
    assert dead.status == JobStatus.failed and "stopped without finishing" in dead.error


def test_no_model_yet_still_answers_with_a_stable_version(world):
    backend = ml_backend_service(world["settings"], world["db"])
    assert backend.model_version() == NO_MODEL  # nothing loaded before start()/refresh()
    res = backend.predict_task({"id": 1, "data": {"samx_image_id": world["images"][0]["id"]}})
    assert res == {"result": [], "score": 0.0, "model_version": NO_MODEL}


def test_warm_start_fine_tunes_the_active_version_of_the_same_architecture(world, trained):
    """Runs last in this module: it makes a new active version."""
    db, settings = world["db"], world["settings"]
    with db.session() as s:
        before, active_version_id = active_version(s).version, active_version(s).id
    other = run_job(db, "train_detector", epochs=1, size=128, arch="mobilenet_v3", classifier_epochs=1, min_images=4,
                    warm_start=True)
    assert other.status == JobStatus.failed and "resnet18_fpn" in other.error and "mobilenet_v3" in other.error
    job = run_job(db, "train_detector", epochs=1, size=128, arch="resnet18_fpn", tile=64, classifier_epochs=1,
                  min_images=4, rank_batch=2, warm_start=True)
    assert job.status == JobStatus.succeeded, job.error
    assert job.result["warm_start"] == before != job.result["version"]
    meta = json.loads((settings.models_dir / "detector" / job.result["version"] / "metadata.json").read_text())
    assert meta["warm_start"] == before and meta["config"]["init_weights"].endswith(f"{before}/detector.pt")
    assert meta["config"]["lr"] == pytest.approx(FIRST_LR * WARM_START_LR_SCALE)  # no lr given: the lower one
    old_meta = json.loads((settings.models_dir / "detector" / before / "metadata.json").read_text())
    report = meta["init_report"]
    assert report["loaded"] > 100 and report["missing"] == 0
    with db.session() as s:
        row = s.get(ModelVersion, job.result["model_version_id"])
        assert row.metrics["backbone"] == meta["backbone"] and meta["backbone"]["source"] == "model_version"
        assert (meta["backbone"]["model_version_id"], meta["backbone"]["loaded"]) == (active_version_id, report["loaded"])
    if meta["classes"] == old_meta["classes"]:
        assert report["reinitialised"] == []
    else:  # a class came or went: only the box predictor starts afresh
        assert report["reinitialised"] and all(k.startswith("roi_heads.box_predictor.") for k in report["reinitialised"])


def test_the_loops_retrain_continues_the_active_version(world, trained):
    """Runs after the warm-start test: a training the loop queues (no architecture named) keeps
    the active version's ResNet-18 on 64 px tiles at 128 px, not the job's MobileNetV3 default,
    and fine-tunes it; with SAMX_DETECTOR_WARM_START off it trains that architecture from scratch."""
    from backend.database.session import Database

    db, settings = world["db"], world["settings"]
    with db.session() as s:
        before = active_version(s).version
    job = run_job(db, "train_detector", follow_active=True, epochs=1, classifier_epochs=1, min_images=4, rank_batch=2)
    assert job.status == JobStatus.succeeded, job.error
    meta = json.loads((settings.models_dir / "detector" / job.result["version"] / "metadata.json").read_text())
    assert (meta["config"]["arch"], meta["config"]["tile"], meta["config"]["size"]) == ("resnet18_fpn", 64, 128)
    assert meta["warm_start"] == before and meta["config"]["lr"] == pytest.approx(FIRST_LR * WARM_START_LR_SCALE)

    cold = Database(dataclasses.replace(settings, detector_warm_start=False))
    try:
        job = run_job(cold, "train_detector", follow_active=True, epochs=1, classifier_epochs=1, min_images=4,
                      rank_batch=2)
    finally:
        cold.dispose()
    assert job.status == JobStatus.succeeded, job.error
    meta = json.loads((settings.models_dir / "detector" / job.result["version"] / "metadata.json").read_text())
    assert meta["config"]["arch"] == "resnet18_fpn" and meta["warm_start"] is None
    assert meta["config"]["init_weights"] is None and meta["config"]["lr"] == pytest.approx(FIRST_LR)


def test_the_detector_backbone_starts_from_the_deepcluster_network(world, trained):
    """Runs last: it registers a DeepCluster version. resnet18_fpn's body becomes that network (its
    width and Sobel input), the version records it, and a warm start keeps the shape."""
    from clustering.deepcluster import DeepCluster, DeepClusterConfig
    from ml_backend.models.detector import LesionDetector

    db, settings = world["db"], world["settings"]
    path = settings.models_dir / "deepcluster" / "dc-det.pt"
    unlabelled = np.random.default_rng(0).random((8, 32, 32)).astype(np.float16)
    dc = DeepCluster(DeepClusterConfig(k=2, epochs=0, width=8, pca_dim=4, seed=4)).fit(unlabelled)
    dc.save(path)
    with db.session() as s:
        row = ModelVersion(kind="deepcluster", version="dc-det", status="ready", path=str(path.relative_to(settings.data_dir)))
        s.add(row)
        s.flush()
        s.add(ClusterRun(k=2, status="done", params={"size": 32}, model_version_id=row.id))
        dc_id = row.id
    job = run_job(db, "train_detector", epochs=0, size=128, arch="resnet18_fpn", tile=64, classifier_epochs=0,
                  min_images=4, rank_batch=2)  # backbone_weights: deepcluster by default
    assert job.status == JobStatus.succeeded, job.error
    meta = json.loads((settings.models_dir / "detector" / job.result["version"] / "metadata.json").read_text())
    assert meta["config"]["backbone"] == {"arch": "resnet18", "width": 8, "sobel": True}
    assert meta["backbone"]["source"] == "model_version" and meta["backbone"]["model_version_id"] == dc_id
    assert meta["backbone"]["loaded"] == meta["init_report"]["loaded"] > 50
    det = LesionDetector.load(settings.models_dir / "detector" / job.result["version"] / "detector.pt")
    assert torch.equal(det.model_.backbone.body.layer2[0].conv1.weight, dc.backbone_.net.layer2[0].conv1.weight)
    warm = run_job(db, "train_detector", follow_active=True, epochs=0, classifier_epochs=0, min_images=4, rank_batch=2)
    assert warm.status == JobStatus.succeeded, warm.error
    meta = json.loads((settings.models_dir / "detector" / warm.result["version"] / "metadata.json").read_text())
    assert meta["warm_start"] == job.result["version"] and meta["config"]["backbone"]["width"] == 8
    mobile = run_job(db, "train_detector", epochs=0, size=128, arch="mobilenet_v3", classifier_epochs=0, min_images=4,
                     rank_batch=2, backbone_weights=str(path))
    assert mobile.status == JobStatus.failed and "mobilenet_v3 detector cannot start from" in mobile.error
