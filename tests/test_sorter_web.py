"""The sorter in the web app, on SQLite and PostgreSQL: the review queue and label corrections
(provenance, conflicts, roles, malformed bodies, the retrain trigger), the models page and
reports, Grad-CAM overlays, similar cases, the image page's sorter card, and one real-browser
run of the queue.

Queue logic runs on SorterPrediction rows written here (test data, so the order is known); the
model-backed views run on a real tiny sorter (``make_sorter_world``, once per test)."""
from __future__ import annotations

import dataclasses
import re
import threading

import cv2
import numpy as np
import pytest
from sqlalchemy import func, select, update

from backend.clusters.decisions import decide
from backend.database.schema import (ClusterMembership, Image, Job, Label, LabelSource, ModelVersion, SorterPrediction,
                            WeakLabel, utcnow)
from backend.sorter.review import review_queue
from backend.sorter.store import stored_embeddings
from backend.web import create_app
from tests.factories import make_cluster_run, make_sorter_world, make_user
from tests.browser_fixtures import ARTIFACTS
from tests.test_browser import by_id, login, wait
from tests.test_web import Browser

ROW = re.compile(r'class="review-row" id="row-(\d+)"')


def make_app(db, retrain_after: int = 50):
    return create_app(dataclasses.replace(db.settings, sorter_retrain_after=retrain_after), testing=True)


def current(db, image_id):
    with db.session() as s:
        return s.scalar(select(WeakLabel).where(WeakLabel.image_id == image_id, WeakLabel.superseded_at.is_(None)))


def labelled_world(db, sizes=(4, 3, 3)) -> dict:
    """Images named knee / hand / chest by cluster decisions of rad1, plus a viewer and an admin."""
    run = make_cluster_run(db, sizes=sizes, regions=["knee", "hand", "chest"])
    users = {n: make_user(db, n, r) for n, r in (("rad1", "radiologist"), ("rad2", "radiologist"),
                                                ("viewer", "viewer"), ("boss", "admin"))}
    with db.session() as s:
        L = {lab.name: lab.id for lab in s.scalars(select(Label).where(Label.kind == "region"))}
        members = {}
        for region, (cid,) in zip(["knee", "hand", "chest"], s.execute(
                select(ClusterMembership.cluster_id).where(ClusterMembership.run_id == run)
                .group_by(ClusterMembership.cluster_id).order_by(ClusterMembership.cluster_id))):
            members[region] = (cid, list(s.scalars(select(ClusterMembership.image_id)
                                                   .where(ClusterMembership.cluster_id == cid)
                                                   .order_by(ClusterMembership.image_id))))
    for region, (cid, _) in members.items():
        decide(db, "name", cid, users["rad1"], label_id=L[region])
    return {"run": run, "users": users, "L": L, "ids": {r: ids for r, (_, ids) in members.items()},
            "clusters": {r: c for r, (c, _) in members.items()}}


def add_sorter(db, predictions: dict, *, version: str = "t1", status: str = "active") -> int:
    """A sorter version row and its predictions {image_id: (label id | None, confidence)}
    (no model file: enough for the queue, not for Grad-CAM or similar cases)."""
    with db.session() as s:
        mv = ModelVersion(kind="sorter", version=version, status=status, path=f"models/sorter/{version}/model.pt",
                          metrics={"threshold": 0.5, "classes": ["chest", "hand", "knee"]}, config={"size": 64})
        s.add(mv)
        s.flush()
        second = s.scalar(select(Label.id).where(Label.name == "femur"))
        for image_id, (label_id, conf) in predictions.items():
            s.add(SorterPrediction(image_id=image_id, model_version_id=mv.id, label_id=label_id, confidence=conf,
                                   second_label_id=second, second_confidence=round(1 - conf, 3) / 2,
                                   ood_score=0.8 if label_id is None else 0.2))
        return mv.id


def queued(db, kind="disagree", **kw):
    with db.session() as s:
        items, total = review_queue(s, kind=kind, **kw)
    return [i["image_id"] for i in items], total


# ---------------------------------------------------------------------------------------------
# the review queue and corrections (predictions written by the test)


def test_review_queue_and_corrections(db):
    w = labelled_world(db)
    L, (k0, k1, k2, k3), (h0, h1, h2), (c0, c1, c2) = w["L"], w["ids"]["knee"], w["ids"]["hand"], w["ids"]["chest"]
    app = make_app(db, retrain_after=2)
    rad, viewer = Browser(app, "rad1"), Browser(app, "viewer")

    # without a sorter: empty queue, explanations 404, pages still render
    assert queued(db) == ([], 0)
    assert "no active sorter" in rad.get("/review").text
    assert 'id="sorter-card"' not in rad.get(f"/images/{k0}").text
    for url in (f"/images/{k0}/gradcam.png", f"/api/images/{k0}/similar"):
        resp = rad.client.get(url, headers={"Accept": "application/json"})
        assert resp.status_code == 404 and "no active sorter" in resp.json["error"], url
    assert "no active sorter" in rad.get(f"/images/{k0}/gradcam.png").text  # an <img> gets the HTML page
    assert "No sorter trained yet" in rad.get("/models").text

    # h1 was corrected by hand before the sorter came: a person looked, it never enters the queue
    decide(db, "move", w["clusters"]["hand"], w["users"]["rad1"], image_ids=[h1], target=L["knee"])
    # c2's label came from an imported dataset: the sorter may question it
    with db.session() as s:
        s.get(WeakLabel, current(db, c2).id).superseded_at = utcnow()
        s.add(WeakLabel(image_id=c2, label_id=L["chest"], source=LabelSource.imported))
    add_sorter(db, {k0: (L["chest"], 0.99), h0: (L["knee"], 0.99)}, version="old", status="retired")
    mv = add_sorter(db, {k0: (L["hand"], 0.9), k1: (L["hand"], 0.6), k2: (L["knee"], 0.99), k3: (None, 0.4),
                         h0: (L["chest"], 0.75), h1: (L["hand"], 0.95), h2: (L["hand"], 0.8),
                         c0: (L["knee"], 0.3), c2: (L["hand"], 0.5)})

    assert queued(db) == ([k0, h0, k1, c2, c0], 5)
    assert queued(db, limit=2, offset=1) == ([h0, k1], 5)
    assert queued(db, kind="unsure") == ([k3], 1)
    # the version's cross-validation doubted k2's label (though the version agrees with it) and h1's
    # (corrected by a person: stays out)
    assert queued(db, kind="doubted") == ([], 0)
    with db.session() as s:
        s.execute(update(SorterPrediction).where(SorterPrediction.model_version_id == mv,
                                                 SorterPrediction.image_id.in_([k2, h1])).values(label_doubted=True))
    assert queued(db, kind="doubted") == ([k2], 1)
    html = rad.get(f"/images/{k2}").text
    assert "cross-validation doubts the current label" in html and f"kind=doubted&amp;image={k2}" in html
    doubted = rad.get("/review?kind=doubted").text
    assert [int(i) for i in ROW.findall(doubted)] == [k2] and 'id="doubted-why"' in doubted
    assert 'id="doubted-why"' not in rad.get("/review").text
    with db.session() as s:
        item = review_queue(s)[0][0]
    assert item["weak_label"]["label"] == "knee" and item["weak_label"]["source"] == "cluster"
    assert item["weak_label"]["user"] == "rad1" and item["weak_label"]["decision_id"] is not None
    assert item["prediction"]["label"] == "hand" and item["prediction"]["confidence"] == pytest.approx(0.9)
    assert item["prediction"]["second_label"] == "femur" and item["model_version"]["version"] == "t1"

    page = rad.get("/review").text
    assert [int(i) for i in ROW.findall(page)] == [k0, h0, k1, c2, c0]
    assert "Use prediction (hand)" in page and "Keep knee" in page and "Not MSK (discard)" in page
    unsure = rad.get("/review?kind=unsure").text
    assert [int(i) for i in ROW.findall(unsure)] == [k3] and "unsure — out of distribution" in unsure
    assert 'class="use-pred"' not in unsure  # nothing to accept
    view = viewer.get("/review").text
    assert [int(i) for i in ROW.findall(view)] == [k0, h0, k1, c2, c0] and 'class="use-pred"' not in view

    url = f"/api/images/{k0}/label"
    seen = current(db, k0).id
    # who may, and what is a well-formed request
    resp = viewer.post_json(url, {"label_id": L["hand"], "seen_label_id": seen, "accept_prediction": True})
    assert resp.status_code == 403 and "viewer" in resp.json["error"]
    assert rad.post_json(url, {"label_id": L["hand"], "seen_label_id": seen}, token=False).status_code == 400
    bad = rad.client.post(url, data="label_id=3", headers={"X-CSRFToken": rad.token, "Content-Type": "text/plain"})
    assert bad.status_code == 400 and "JSON" in bad.json["error"]
    for body, words in [([1, 2], "JSON object"), ({"label_id": L["hand"]}, "seen_label_id"),
                        ({"seen_label_id": seen}, "label_id"), ({"label_id": "abc", "seen_label_id": seen}, "integer"),
                        ({"label_id": L["hand"], "seen_label_id": "x"}, "integer"),
                        ({"label_id": L["hand"], "seen_label_id": seen, "accept_prediction": "yes"}, "true or false"),
                        ({"label_id": L["chest"], "seen_label_id": seen, "accept_prediction": True}, "predicted label"),
                        ({"label_id": 10**6, "seen_label_id": seen}, "not a region label")]:
        resp = rad.post_json(url, body)
        assert resp.status_code == 400 and words in resp.json["error"], (body, resp.json)
    assert rad.post_json("/api/images/987654/label", {"label_id": None, "seen_label_id": 1}).status_code == 404
    resp = rad.post_json(f"/api/images/{k0}/label", {"label_id": L["hand"], "seen_label_id": current(db, h0).id})
    assert resp.status_code == 409 and "reload" in resp.json["error"]
    assert current(db, k0).id == seen  # nothing changed by any of these

    # accept the prediction: a person decided (manual), with the sorter version, its confidence and who
    resp = rad.post_json(url, {"label_id": L["hand"], "seen_label_id": seen, "accept_prediction": True})
    assert resp.status_code == 200, resp.json
    assert resp.json["source"] == "manual" and resp.json["label"] == "hand" and resp.json["retrain_job"] is None
    new = current(db, k0)
    assert (new.label_id, new.source, new.model_version_id, new.user_id) == (L["hand"], LabelSource.manual, mv,
                                                                            w["users"]["rad1"].id)
    assert new.confidence == pytest.approx(0.9) and new.id == resp.json["weak_label_id"]
    with db.session() as s:
        old = s.get(WeakLabel, seen)
        assert old.superseded_at is not None and old.label_id == L["knee"] and old.source == LabelSource.cluster
    assert queued(db) == ([h0, k1, c2, c0], 4)

    # a second radiologist on the stale page: 409 naming the first one's label; theirs stands
    rad2 = Browser(app, "rad2")
    resp = rad2.post_json(url, {"label_id": L["femur"], "seen_label_id": seen})
    assert resp.status_code == 409 and "'hand' (manual, by rad1" in resp.json["error"]
    assert current(db, k0).id == new.id

    # another region: manual; the second correction reaches the threshold of 2 -> retrain queued
    resp = rad.post_json(f"/api/images/{h0}/label", {"label_id": L["finger"], "seen_label_id": current(db, h0).id})
    assert resp.status_code == 200 and resp.json["source"] == "manual"
    job_id = resp.json["retrain_job"]
    assert job_id is not None
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job.kind == "train_sorter" and job.status.value == "queued" and "labels changed" in job.params["reason"]
    h0_label = current(db, h0)
    assert (h0_label.label_id, h0_label.source, h0_label.model_version_id) == (L["finger"], LabelSource.manual, None)

    # keep the weak label (a person confirmed it) and discard one as non-MSK: both leave the queue;
    # a retrain is already pending, so no second job
    resp = rad.post_json(f"/api/images/{k1}/label", {"label_id": L["knee"], "seen_label_id": current(db, k1).id})
    assert resp.status_code == 200 and resp.json["retrain_job"] is None
    resp = rad.post_json(f"/api/images/{c0}/label", {"label_id": None, "seen_label_id": current(db, c0).id})
    assert resp.status_code == 200 and resp.json["label"] == "discarded (non-MSK)"
    assert (current(db, k1).label_id, current(db, k1).source) == (L["knee"], LabelSource.manual)
    assert (current(db, c0).label_id, current(db, c0).source) == (None, LabelSource.manual)
    assert queued(db) == ([c2], 1)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.kind == "train_sorter")) == 1
        assert s.scalar(select(func.count()).select_from(WeakLabel).where(WeakLabel.image_id == k0)) == 2

    # the image page: provenance shows the sorter version and confidence, the sorter card the prediction
    html = rad.get(f"/images/{k0}").text
    table = html[html.index('id="provenance"'):]
    assert "manual (t1, 0.90)" in table and "rad1" in table and table.index("hand") < table.index("knee")
    assert "predicted: <span class=\"name\">hand</span> 0.90" in html and 'id="gradcam"' in html
    assert 'id="review-link"' not in html  # it agrees now
    html = rad.get(f"/images/{c2}").text
    assert 'id="review-link"' in html and f"image={c2}" in html
    assert [int(i) for i in ROW.findall(rad.get(f"/review?image={c2}").text)] == [c2]
    html = rad.get(f"/images/{k3}").text
    assert "unsure — out of distribution (score 0.800 &gt; threshold 0.500)" in html
    app.extensions["samx.db"].dispose()


# ---------------------------------------------------------------------------------------------
# a real sorter: models page, reports, Grad-CAM, similar cases, the image page


def test_models_gradcam_similar_with_a_real_sorter(db):
    w = make_sorter_world(db)
    assert w["model_version"] is not None, w["job"].error
    make_user(db, "viewer", "viewer")
    app = make_app(db)
    rad, viewer = Browser(app, "rad"), Browser(app, "viewer")
    with db.session() as s:
        mv = s.get(ModelVersion, w["model_version"])
        version, mv_id = mv.version, mv.id
        preds = {p.image_id: p for p in s.scalars(select(SorterPrediction).where(SorterPrediction.model_version_id == mv_id))}
        labels = {wl.image_id: wl.label_id for wl in s.scalars(select(WeakLabel).where(WeakLabel.superseded_at.is_(None)))}
        names = dict(s.execute(select(Label.id, Label.name)).all())
    all_ids = sorted(i for ids in w["ids"].values() for i in ids)
    assert sorted(preds) == all_ids

    # the queue on real predictions is exactly the disagreeing cluster-labelled images
    expected = sorted((i for i, p in preds.items() if p.label_id is not None and p.label_id != labels[i]),
                      key=lambda i: (-preds[i].confidence, i))
    assert queued(db, limit=100) == (expected, len(expected))

    # models page, report, retrain
    page = viewer.get("/models").text
    assert f'data-version="{version}"' in page and 'class="version active"' in page and "first sorter version" in page
    assert 'id="retrain-form"' not in page and "0 labels changed since the active version" in page
    report = viewer.get(f"/models/{mv_id}/report")
    assert report.status_code == 200 and report.mimetype == "text/html" and "<html" in report.text.lower()
    assert viewer.get("/models/987654/report").status_code == 404
    assert viewer.form("/models/retrain", {}).status_code == 403
    resp = rad.form("/models/retrain", {})
    assert resp.status_code == 303 and resp.location.endswith("/models")
    with db.session() as s:
        job = s.scalars(select(Job).where(Job.kind == "train_sorter").order_by(Job.id.desc())).first()
        assert job.status.value == "queued" and job.params == {"reason": "retrain requested by rad"}
    page = rad.get("/models").text
    assert 'id="retrain-form"' in page and "retrain requested by rad" in page and "queued" in page
    assert "doubted)" not in page  # this version was trained without cross-validation: nothing left out
    with db.session() as s:
        mv = s.get(ModelVersion, mv_id)
        mv.metrics = {**mv.metrics, "left_out": 3}
    assert "(3 doubted)" in rad.get("/models").text

    # Grad-CAM: a PNG of the network input's size, for the predicted or a chosen class
    img = all_ids[0]
    resp = viewer.client.get(f"/images/{img}/gradcam.png")
    assert resp.status_code == 200 and resp.mimetype == "image/png" and resp.data[:8] == b"\x89PNG\r\n\x1a\n"
    picture = cv2.imdecode(np.frombuffer(resp.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert picture.shape == (256, 256, 3) and picture.std() > 0
    assert resp.headers["X-Sorter-Class"] in ("chest", "hand", "knee")
    other = viewer.client.get(f"/images/{img}/gradcam.png?class=chest")
    assert other.status_code == 200 and other.headers["X-Sorter-Class"] == "chest"
    assert viewer.client.get(f"/images/{img}/gradcam.png?class=femur").status_code == 400
    assert viewer.client.get("/images/987654/gradcam.png").status_code == 404

    # similar cases: the k nearest labelled images by stored embedding, never the image itself
    rows_of, emb = stored_embeddings(db.settings, mv)
    sims = {j: float(emb[rows_of[img]] @ emb[rows_of[j]]) for j in all_ids if j != img}
    data = viewer.client.get(f"/api/images/{img}/similar?k=5").json
    got = [n["image_id"] for n in data["neighbours"]]
    assert len(got) == 5 and img not in got
    assert got == sorted(sims, key=lambda j: -sims[j])[:5]
    for n in data["neighbours"]:
        assert n["label"] == names[labels[n["image_id"]]] and n["similarity"] == pytest.approx(sims[n["image_id"]], abs=1e-3)
        assert n["thumbnail"] == f"/images/{n['image_id']}/thumbnail" and n["url"] == f"/images/{n['image_id']}"
    votes = [n["label"] for n in data["neighbours"]]
    top = data["suggestion"]
    assert top["k"] == 5 and top["votes"] == votes.count(top["label"]) == max(votes.count(v) for v in votes)
    assert len(viewer.client.get(f"/api/images/{img}/similar?k=100").json["neighbours"]) == 20
    assert len(viewer.client.get(f"/api/images/{img}/similar?k=0").json["neighbours"]) == 1
    assert viewer.client.get("/api/images/987654/similar").status_code == 404

    # a correction shows at once in the neighbours' labels (no stale cache)
    first = got[0]
    resp = rad.post_json(f"/api/images/{first}/label", {"label_id": w["labels"]["femur"],
                                                         "seen_label_id": current(db, first).id})
    assert resp.status_code == 200
    again = viewer.client.get(f"/api/images/{img}/similar?k=5").json["neighbours"]
    assert again[0]["image_id"] == first and again[0]["label"] == "femur"

    # an image the sorter never saw (imported after training): embedded on the fly
    with db.session() as s:
        src = s.get(Image, all_ids[3])
        copy = Image(**{c.key: getattr(src, c.key) for c in Image.__table__.columns if c.key != "id"})
        copy.content_hash = "f" * 64
        s.add(copy)
        s.flush()
        new_id = copy.id
    data = viewer.client.get(f"/api/images/{new_id}/similar?k=3").json
    assert data["neighbours"][0]["image_id"] == all_ids[3] and data["neighbours"][0]["similarity"] > 0.999

    # the image page: sorter card, Grad-CAM with its caption, similar-cases hook
    sure = next(i for i in all_ids if preds[i].label_id is not None and i != first)
    html = viewer.get(f"/images/{sure}").text
    p = preds[sure]
    assert f'predicted: <span class="name">{names[p.label_id]}</span> {p.confidence:.2f}' in html
    assert f"runner-up {names[p.second_label_id]}" in html and f"version {version}" in html
    assert f'src="/images/{sure}/gradcam.png"' in html and "Drawn on the network's" in html
    assert f'data-similar-url="/api/images/{sure}/similar?k=5"' in html
    assert ("Review it" in html) == (sure in expected)
    app.extensions["samx.db"].dispose()


# ---------------------------------------------------------------------------------------------
# the queue in a real browser


@pytest.fixture
def live_review(db):
    from werkzeug.serving import make_server

    w = labelled_world(db)
    L, knee = w["L"], w["ids"]["knee"]
    mv = add_sorter(db, {knee[0]: (L["hand"], 0.9), knee[1]: (L["chest"], 0.8), knee[2]: (L["knee"], 0.99)})
    app = create_app(db.settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", {**w, "mv": mv}
    server.shutdown()
    thread.join(10)
    app.extensions["samx.db"].dispose()


@pytest.mark.slow
def test_radiologist_uses_a_prediction_in_the_browser(chrome, live_review, db):  # noqa: F811
    from selenium.webdriver.common.by import By

    base, w = live_review
    L, (k0, k1, *_rest) = w["L"], w["ids"]["knee"]
    driver = chrome()
    login(driver, base, "rad1")
    driver.get(base + "/review")
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.review-row")) == 2, message="queue not shown")
    assert [r.get_attribute("data-image-id") for r in driver.find_elements(By.CSS_SELECTOR, "tr.review-row")] == \
        [str(k0), str(k1)]
    by_id(driver, f"row-{k0}").find_element(By.CSS_SELECTOR, "button.use-pred").click()
    wait(driver, lambda d: not d.find_elements(By.ID, f"row-{k0}"), message="the row did not disappear")
    assert "accepted the sorter's 'hand'" in by_id(driver, "message").text
    assert [r.get_attribute("data-image-id") for r in driver.find_elements(By.CSS_SELECTOR, "tr.review-row")] == [str(k1)]
    assert by_id(driver, "queue-total").text == "1", "the counts follow the decision without a reload"
    assert driver.find_element(By.CSS_SELECTOR, "#queue-tabs a.active .count").text == "1"
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "review.png"))
    label = current(db, k0)
    assert (label.label_id, label.source, label.model_version_id) == (L["hand"], LabelSource.manual, w["mv"])
    assert queued(db) == ([k1], 1)
