"""The labeling loop end to end, every part real: Label Studio (started by the fixture), samx's
ML backend, the job queue with a `samx worker` process, the database.

sync the project and connect the backend -> radiologists' annotations posted through Label
Studio's API -> its webhook syncs them into our database and queues exactly one retrain ->
the worker trains a detector version -> the backend hot-swaps to it -> Label Studio retrieves
predictions for every task, boxes included, and the active-learning order is on the tasks."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from sqlalchemy import func, select

from backend.labelstudio import process as server
from ml_backend.labeling_config import LESION_FROM_NAME
from backend.labelstudio.push import PRIORITY_KEY, RANK_KEY
from backend.labelstudio.sync import sync, task_map
from backend.database.schema import Annotation, Box, Image, Job, ModelVersion
from tests.browser_fixtures import ARTIFACTS, wait
from tests.factories import ls_box_results

pytestmark = pytest.mark.slow
ANNOTATED = 6  # of N_IMAGES; the loop's threshold is 4 (labelstudio_fixtures.ml_backend)


def _wait(what: str, condition, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _count(db, stmt) -> int:
    with db.session() as s:
        return s.scalar(stmt)


@pytest.fixture(scope="module")
def loop(label_studio, ls_db, ls_phantoms, ml_backend):
    """The loop, run once for this module's tests; asserts each step as it goes."""
    settings, _ = label_studio
    url, backend = ml_backend
    db = backend.store.db  # the backend's settings: retrain after 4 annotations, small CPU training
    ph, truth = ls_phantoms

    result = sync(db, ml_backend_url=url)
    assert result.ml_error is None, result.ml_error
    tasks = task_map(settings)
    ls = server.connection(settings).client()
    pid = result.project_id
    with db.session() as s:
        by_source = {p: (i, w, h) for i, p, w, h in s.execute(select(Image.id, Image.source_path, Image.columns,
                                                                          Image.rows))}
    images = []
    for e in truth["images"]:
        image_id, w, h = by_source[str(ph / e["file"])]
        if image_id in tasks:
            images.append((image_id, w, h, [(les["label"], les["box"]) for les in e["lesions"]]))
    assert len(images) >= ANNOTATED + 2

    # radiologists annotate six images in Label Studio
    before = _count(db, select(func.count()).select_from(Annotation))
    for image_id, w, h, boxes in images[:ANNOTATED]:
        ls.annotations.create(id=tasks[image_id], result=ls_box_results(boxes, w, h, abnormal=bool(boxes)),
                              was_cancelled=False)
    _wait("the webhook to sync six annotations", lambda: _count(
        db, select(func.count()).select_from(Annotation)) == before + ANNOTATED)
    backend.wait_events()
    with db.session() as s:
        for image_id, _, _, boxes in images[:ANNOTATED]:
            got = sorted((b.x, b.y, b.x + b.width, b.y + b.height) for b in s.scalars(
                select(Box).join(Annotation).where(Annotation.image_id == image_id, Annotation.deleted_at.is_(None))))
            want = sorted(tuple(b) for _, b in boxes)
            assert len(got) == len(want)
            np.testing.assert_allclose(np.array(got).reshape(-1, 4), np.array(want).reshape(-1, 4), atol=0.05)
        jobs = s.scalars(select(Job).where(Job.kind == "train_detector")).all()
    assert len(jobs) == 1 and jobs[0].status.value == "queued", [(j.id, j.status) for j in jobs]

    # the worker (a separate process, as in production) trains; the backend swaps to the new version
    env = {**os.environ, "SAMX_DETECTOR_EPOCHS": str(db.settings.detector_epochs),
           "SAMX_DETECTOR_SIZE": str(db.settings.detector_size),
           "SAMX_DETECTOR_MIN_SCORE": str(db.settings.detector_min_score), "SAMX_LABEL_STUDIO_PORT": str(settings.label_studio_port)}
    done = subprocess.run([sys.executable, "-m", "backend.cli", "--data-dir", str(settings.data_dir), "worker", "--burst"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    with db.session() as s:
        job = s.get(Job, jobs[0].id)
        assert job.status.value == "succeeded", job.error
        mv = s.get(ModelVersion, job.result["model_version_id"])
        version = mv.version
    _wait("the backend to serve the new version", lambda: backend.model_version() == version, 30)

    # Label Studio asks for predictions on every task
    ls.actions.create(id="retrieve_tasks_predictions", project=pid, selected_items={"all": True, "excluded": []})
    return {"settings": settings, "ls": ls, "pid": pid, "tasks": tasks, "version": version,
            "annotated": {tasks[i] for i, *_ in images[:ANNOTATED]}}


def test_annotations_in_label_studio_retrain_the_detector_that_pre_annotates_every_task(loop):
    ls, pid, tasks, version = loop["ls"], loop["pid"], loop["tasks"], loop["version"]
    preds = [p for p in ls.predictions.list(project=pid) if p.model_version == version]
    predicted_tasks = {p.task for p in preds}
    assert predicted_tasks == set(tasks.values()), f"{len(predicted_tasks)} of {len(tasks)} tasks have a prediction"
    rects = [r for p in preds for r in p.result if r["from_name"] == LESION_FROM_NAME]
    assert rects, "the new version pre-annotated no box on any task"
    assert all(0 <= r["value"]["x"] <= 100 and r["original_width"] > 0 for r in rects)

    # the unlabelled tasks carry the active-learning order
    ranks = {}
    for tid in set(tasks.values()) - loop["annotated"]:
        data = ls.tasks.get(tid).data
        ranks[tid] = (data[RANK_KEY], data[PRIORITY_KEY])
    assert len({r for r, _ in ranks.values()}) == len(ranks)  # one rank each
    by_rank = sorted(ranks.values())
    assert [p for _, p in by_rank] == sorted((p for _, p in by_rank), reverse=True)


def test_the_labeling_page_shows_the_pre_annotated_box(loop, chrome):
    """Headless Chromium logs into Label Studio and opens an unlabelled task whose prediction has
    a box; the region list shows it and a screenshot is kept in test-artifacts/."""
    from selenium.webdriver.common.by import By

    settings, ls, pid, version = loop["settings"], loop["ls"], loop["pid"], loop["version"]
    with_box = [p for p in ls.predictions.list(project=pid) if p.model_version == version
                and p.task not in loop["annotated"] and any(r["from_name"] == LESION_FROM_NAME for r in p.result)]
    assert with_box, "no unlabelled task has a predicted box to show"
    pred = max(with_box, key=lambda p: max(r.get("score", 0) for r in p.result if r["from_name"] == LESION_FROM_NAME))
    label = next(r for r in pred.result if r["from_name"] == LESION_FROM_NAME)["value"]["rectanglelabels"][0]
    creds = server.credentials(settings)
    url = server.connection(settings).url
    driver = chrome()
    driver.get(f"{url}/user/login/")
    driver.find_element(By.NAME, "email").send_keys(creds.username)
    driver.find_element(By.NAME, "password").send_keys(creds.password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    wait(driver, lambda d: "/user/login" not in d.current_url, timeout=60, message="Label Studio login failed")
    driver.get(f"{url}/projects/{pid}/data?task={pred.task}")
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        # the region list (outliner): an item with its score for each predicted box on the canvas
        wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "canvas")
             and d.find_elements(By.CSS_SELECTOR, ".lsf-outliner-item__control_type_score"),
             timeout=90, message="the labeling page showed no scored region")
        time.sleep(1.0)  # let the canvas draw the boxes
    finally:
        driver.save_screenshot(str(ARTIFACTS / "labelstudio_preannotation.png"))
    items = driver.find_elements(By.CSS_SELECTOR, ".lsf-outliner-item")  # a virtual list: only what is on screen
    assert items and any(label in item.text for item in items), [i.text for i in items]
