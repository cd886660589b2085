"""The SAM-X sorter: estimator, splits, metrics, similar cases, Grad-CAM, the train_sorter and
predict jobs, the model store, and `samx sort`."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from clustering.sorter.gradcam import gradcam, overlay
from clustering.similar import SimilarCases, majority_vote
from clustering.sorter.model import UNSURE, Sorter
from clustering.sorter.metrics import evaluate, precision_at_k, summarize
from training.splits import cv_folds, holdout
from imaging.phantoms import render_phantom
from imaging.tensor_cache import prepare_tensor
from tests.conftest import pydicom_data_radiographs
from tests.factories import make_sorter_world, run_job

REGIONS = ["knee", "hand", "chest"]


def phantom_tensors(n_per: int, seed: int, size: int = 48, regions=REGIONS) -> tuple[np.ndarray, np.ndarray]:
    x, y = [], []
    for c, region in enumerate(regions):
        for i in range(n_per):
            ph = render_phantom(seed * 10_000 + c * 1000 + i, region, size=160, lesion_rate=0.0, implant_rate=0.0)
            x.append(prepare_tensor(ph.displayed(), size))
            y.append(c)
    return np.stack(x), np.array(y)


@pytest.fixture(scope="module")
def trained():
    """A small sorter trained on 3 regions of phantoms and calibrated on others."""
    x, y = phantom_tensors(24, seed=1)
    xv, yv = phantom_tensors(8, seed=2)
    model = Sorter(REGIONS, epochs=12, width=16, batch_size=24, lr=0.05).fit(x, y).calibrate(xv)
    return model, (x, y), (xv, yv)


# ------------------------------------------------------------------------------ the estimator


def test_sorter_learns_regions_it_never_saw(trained):
    model, _, _ = trained
    xt, yt = phantom_tensors(10, seed=3)
    pred = model.predict(xt)
    assert (pred.proba.argmax(1) == yt).mean() >= 0.9
    assert np.allclose(pred.proba.sum(1), 1, atol=1e-5) and pred.embeddings.shape == (len(xt), model.net_.backbone.out_dim)
    assert np.allclose(np.linalg.norm(pred.embeddings, axis=1), 1, atol=1e-4)
    assert (pred.top[:, 0] != pred.top[:, 1]).all() and (pred.top_proba[:, 0] >= pred.top_proba[:, 1]).all()


def test_abstention_is_calibrated_on_validation_and_flags_what_is_no_radiograph(trained):
    model, _, (xv, _) = trained
    ab = model.abstention_
    assert ab.coverage == 0.99 and len(ab.val_scores) == len(xv)
    assert (model.predict(xv).label != UNSURE).mean() >= 0.95  # ~99% of validation images kept by construction
    yy, xx = np.mgrid[:160, :160]
    # Checks and rings. (Not parallel stripes: with no flat background the crop keeps all of them,
    # and at 48 px they pass for fingers to this 72-image model.)
    odd = [((xx // 20) + (yy // 20)) % 2, np.hypot(xx - 80, yy - 80) % 20 < 10]
    pred = model.predict(np.stack([prepare_tensor(np.asarray(o, np.float32), 48) for o in odd]))
    assert (pred.label == UNSURE).all(), (pred.ood_score, ab.threshold)
    assert (pred.ood_score > ab.threshold).all()


def test_save_and_load_give_the_same_predictions(trained, tmp_path):
    model, _, (xv, _) = trained
    model.save(tmp_path / "m.pt")
    back = Sorter.load(tmp_path / "m.pt")
    a, b = model.predict(xv), back.predict(xv)
    assert np.allclose(a.proba, b.proba, atol=1e-6) and (a.label == b.label).all()
    assert back.classes == REGIONS and back.abstention_.threshold == model.abstention_.threshold


def test_class_imbalance_is_weighted(trained):
    """9:1 imbalance: with balanced loss weights the minority class is still found."""
    x, y = phantom_tensors(18, seed=4, regions=["knee", "chest"])
    keep = np.r_[np.arange(18), np.arange(18, 20)]  # 18 knees, 2 chests
    model = Sorter(["knee", "chest"], epochs=10, width=16, batch_size=10).fit(x[keep], y[keep])
    xt, yt = phantom_tensors(6, seed=5, regions=["knee", "chest"])
    recall = evaluate(yt, model.predict_proba(xt), ["knee", "chest"])["recall"]
    assert recall["chest"] >= 0.5, recall


def test_bad_training_input_is_refused():
    x = np.zeros((4, 32, 32), np.float32)
    with pytest.raises(ValueError, match="at least two classes"):
        Sorter(["knee"])
    with pytest.raises(ValueError, match="indices"):
        Sorter(["a", "b"]).fit(x, np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="4 images and 3 labels"):
        Sorter(["a", "b"]).fit(x, np.array([0, 1, 0]))


# ------------------------------------------------------------------------- splits and metrics


def test_cv_folds_are_6_2_2_stratified_and_keep_patients_together():
    groups = [f"p{i // 3}" for i in range(300)]  # 100 patients, 3 images each
    y = np.array([int(g[1:]) % 3 for g in groups])
    folds = list(cv_folds(y, groups, 5, seed=0))
    assert len(folds) == 5
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests) == list(range(300))  # every image tested exactly once
    for f in folds:
        parts = [set(np.asarray(groups)[p]) for p in (f.train, f.val, f.test)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert abs(len(f.train) / 300 - 0.6) < 0.05 and abs(len(f.test) / 300 - 0.2) < 0.05
        for part in (f.train, f.test):
            share = np.bincount(y[part], minlength=3) / len(part)
            assert np.abs(share - 1 / 3).max() < 0.06
    with pytest.raises(ValueError, match="at least 5 patients"):
        list(cv_folds(y[:6], groups[:6], 5))


def test_holdout_is_stable_when_images_are_added():
    groups = [f"p:{i}" for i in range(2000)]
    mask = holdout(groups)
    assert 0.17 < mask.mean() < 0.23
    more = holdout(groups + [f"p:{i}" for i in range(2000, 3000)])
    assert (more[:2000] == mask).all()
    assert (holdout(["p:1", "p:1", "p:1"]) == holdout(["p:1"])[0]).all()  # one patient, one side


def test_evaluate_and_summarize():
    y = np.array([0, 0, 1, 2])
    prob = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.5, 0.1, 0.4]])
    m = evaluate(y, prob, ["a", "b", "c"], abstained=np.array([False, True, False, False]))
    assert m["top1"] == 0.5 and m["top2"] == 1.0
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert m["recall"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert m["coverage"] == 0.75 and m["accepted_top1"] == pytest.approx(2 / 3)
    s = summarize([m, {**m, "top1": 1.0}])
    assert s["top1"]["mean"] == 0.75 and s["top1"]["sd"] == pytest.approx(np.std([0.5, 1.0], ddof=1))
    assert s["confusion"] == [[2, 2, 0], [0, 2, 0], [2, 0, 0]]


# ------------------------------------------------------------------- similar cases, Grad-CAM


def test_similar_cases_and_majority_vote():
    emb = np.eye(4, dtype=np.float32)[[0, 0, 1, 1, 2]] + 0.01 * np.arange(5)[:, None]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = SimilarCases().fit(emb, ["knee", "knee", "hand", "hand", "chest"], [10, 11, 12, 13, 14])
    nb = index.kneighbors(emb[[0]], k=2, exclude_ids=[10])
    assert nb.ids.tolist() == [[11, 12]] or nb.ids[0, 0] == 11
    assert 10 not in nb.ids[0] and nb.labels[0, 0] == "knee"
    assert majority_vote(["hand", "knee", "knee", "hand"]) == ("hand", 0.5)  # tie: the nearer wins
    assert majority_vote(["knee", "knee", "hand"]) == ("knee", pytest.approx(2 / 3))
    assert precision_at_k(np.array([["a", "a"], ["b", "a"]]), np.array(["a", "a"])) == 0.75


def test_gradcam_maps_are_normalised_and_depend_on_the_class(trained):
    model, _, (xv, yv) = trained
    heat = gradcam(model.net_, xv[:4].astype(np.float32), yv[:4])
    assert heat.shape == (4, 48, 48) and heat.min() >= 0 and np.isclose(heat.max(), 1.0)
    other = gradcam(model.net_, xv[:4].astype(np.float32), (yv[:4] + 1) % 3)
    assert not np.allclose(heat, other)
    pic = overlay(xv[0].astype(np.float32), heat[0], size=128)
    assert pic.shape == (128, 128, 3) and pic.dtype == np.uint8


# ------------------------------------------------------------------------- the jobs and store


def test_train_sorter_job_stores_a_versioned_model_and_predictions(db):
    from backend.database.schema import ModelVersion, SorterPrediction
    from backend.sorter.store import active_version

    world = make_sorter_world(db, epochs=2, folds=3)
    job = world["job"]
    assert job.status.value == "succeeded", job.error
    r = job.result
    assert r["promoted"] and r["images"] == 32 and sorted(r["classes"]) == sorted(REGIONS)
    assert len(r["cv_top1"]["values"]) == 3 and r["predicted"] == 32
    settings = db.settings
    with db.session() as s:
        mv = active_version(s)
        assert mv.id == r["model_version_id"] and mv.kind == "sorter" and mv.job_id == job.id
        folder = settings.data_dir / Path(mv.path).parent
        meta = json.loads((folder / "metadata.json").read_text())
        assert mv.data_hash == meta["data_hash"] and len(mv.data_hash) == 64
        assert meta["config"]["folds"] == 3 and meta["config"]["init"].startswith("none")
        assert meta["backbone"] == mv.metrics["backbone"] == {"source": "scratch", "model_version_id": None,
                                                              "loaded": 0}
        assert len(meta["cv"]["folds"]) == 3 and meta["abstention"]["threshold"] > 0
        # the labels the out-of-fold predictions doubt are listed, and those outside the fixed
        # validation split are not trained on
        cleaning = meta["cleaning"]
        assert cleaning["enabled"] and meta["config"]["clean"] and cleaning["flagged"] == len(cleaning["images"])
        assert cleaning["left_out"] == r["left_out"] == sum(not i["held_out"] for i in cleaning["images"])
        assert meta["n_trained"] == 32 - meta["n_holdout"] - cleaning["left_out"]
        assert set(s.scalars(select(SorterPrediction.image_id).where(
            SorterPrediction.model_version_id == mv.id, SorterPrediction.label_doubted))) \
            == {i["image_id"] for i in cleaning["images"]}  # the "doubted" review queue
        n_pred = s.scalar(select(func.count()).select_from(SorterPrediction).where(
            SorterPrediction.model_version_id == mv.id))
        assert n_pred == 32
        assert s.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.kind == "sorter")) == 1
    assert not list(folder.parent.glob(".tmp-*"))  # the folder was renamed into place
    html = (folder / "report.html").read_text()
    assert "Cross-validation" in html and "data:image/png;base64," in html and mv.version in html
    with np.load(folder / "embeddings.npz") as z:
        assert len(z["image_ids"]) == 32 and z["embeddings"].shape[0] == 32

    # a new image gets its prediction from the predict job, nothing twice
    from tests.factories import make_cluster_run
    make_cluster_run(db, sizes=[2], regions=["knee"], seed=9)
    assert run_job(db, "predict").result["predicted"] == 2
    assert run_job(db, "predict").result["predicted"] == 0

    # an ingest after the sorter exists sorts what it imported, in the same job
    from imaging.phantoms.writers import write_png
    folder = db.settings.data_dir.parent / "new-arrivals"
    write_png(folder / "knee.png", render_phantom(123, "knee", size=96))
    ingested = run_job(db, "ingest", paths=[str(folder)])
    assert ingested.status.value == "succeeded", ingested.error
    assert ingested.result["imported"] == 1 and ingested.result["sorter_predictions"] == 1
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(SorterPrediction).where(
            SorterPrediction.model_version_id == mv.id)) == 35

    # a doubted label is stored with its image's prediction (here: the tiny sorter doubted nothing)
    from backend.sorter.job import store_predictions
    from clustering.sorter.model import Predictions
    knee, hand = world["ids"]["knee"][0], world["ids"]["hand"][0]
    pred = Predictions(np.array([0, 1]), np.array([[0.8, 0.15, 0.05], [0.1, 0.6, 0.3]]), np.zeros(2),
                       np.zeros((2, 4)))
    with db.session() as s:
        assert store_predictions(s, mv.id, np.array([knee, hand]), pred, r["classes"], frozenset({hand})) == 2
    with db.session() as s:
        assert dict(s.execute(select(SorterPrediction.image_id, SorterPrediction.label_doubted).where(
            SorterPrediction.model_version_id == mv.id, SorterPrediction.image_id.in_([knee, hand]))).all()) \
            == {knee: False, hand: True}


def test_a_worse_version_does_not_replace_the_active_one(sqlite_db):
    from backend.database.schema import ModelVersion
    from backend.sorter.store import active_version

    world = make_sorter_world(sqlite_db, sizes=(20, 20, 20), epochs=12)
    first = world["job"].result
    worse = run_job(sqlite_db, "train_sorter", epochs=0, folds=0, min_per_class=2, init="none", seed=3).result
    assert worse["holdout_top1"] < first["holdout_top1"], (worse, first)
    assert not worse["promoted"] and "stays active" in worse["reason"]
    with sqlite_db.session() as s:
        assert active_version(s).version == first["version"]
        assert s.get(ModelVersion, worse["model_version_id"]).status == "rejected"
    forced = run_job(sqlite_db, "train_sorter", epochs=0, folds=0, min_per_class=2, init="none", force=True).result
    assert forced["promoted"]
    with sqlite_db.session() as s:
        assert active_version(s).version == forced["version"]
        assert s.scalar(select(ModelVersion).where(ModelVersion.version == first["version"])).status == "retired"


def test_train_sorter_refuses_without_enough_named_regions(sqlite_db):
    job = run_job(sqlite_db, "train_sorter", epochs=1)
    assert job.status.value == "failed" and "name more clusters first" in job.error
    assert run_job(sqlite_db, "train_sorter", bogus=1).error.startswith("unknown sorter parameter")
    assert run_job(sqlite_db, "predict").error.startswith("there is no active sorter")


# ------------------------------------------------------------------------------- samx sort


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_samx_sort_organises_a_folder_and_abstains_on_what_is_no_radiograph(sqlite_db, tmp_path):
    import pydicom.data

    from backend.cli import main

    make_sorter_world(sqlite_db, epochs=3)
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    radiographs = {p.stem: p for p in pydicom_data_radiographs()}
    shutil.copy(radiographs["RG1_UNCR"], src / "chest_cr.dcm")
    shutil.copy(radiographs["RG3_UNCR"], src / "sub" / "leg_cr.dcm")
    shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), src / "ct.dcm")
    shutil.copy(pydicom.data.get_testdata_file("SC_rgb.dcm"), src / "sub" / "rgb.dcm")
    (src / "broken.dcm").write_bytes(b"DICM" + b"\x00" * 50)
    before = {p: _sha(p) for p in src.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    args = ["--data-dir", str(sqlite_db.settings.data_dir), "sort", str(src), str(out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = {r["file"]: r for r in csv.DictReader(open(out / "predictions.csv", encoding="utf-8"))}
    assert set(rows) == {"chest_cr.dcm", "sub/leg_cr.dcm", "ct.dcm", "sub/rgb.dcm", "broken.dcm"}
    assert rows["ct.dcm"]["region"] == "unsure" and rows["sub/rgb.dcm"]["region"] == "unsure", rows
    assert rows["broken.dcm"]["status"] == "unreadable" and rows["broken.dcm"]["reason"].startswith("not_image: not a ")
    for rel, row in rows.items():
        dest = out / row["destination"]
        assert dest.is_file() and _sha(dest) == _sha(src / rel)
        if row["status"] == "sorted":
            assert row["destination"] == f"{row['region']}/{rel}" and row["region"] in REGIONS
            assert 0 < float(row["confidence"]) <= 1 and row["second"] != row["prediction"]
    assert {p: _sha(p) for p in src.rglob("*") if p.is_file()} == before  # originals untouched

    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "not empty" in again.output
    inside = CliRunner().invoke(main, [*args[:3], str(src), str(src / "sorted")])
    assert inside.exit_code != 0 and "must not lie inside" in inside.output


def test_versions_record_the_backbone_they_started_from(sqlite_db):
    """Issue 24: the sorter and the abnormality classifier start from the latest DeepCluster
    network; every version says which backbone it started from (``metrics["backbone"]``)."""
    from backend.cli import main
    from backend.database.schema import ClusterRun, ModelVersion
    from backend.detector.job import pretrained_start
    from backend.jobs.context import JobFailed
    from clustering.deepcluster import DeepCluster, DeepClusterConfig

    db, settings = sqlite_db, sqlite_db.settings
    world = make_sorter_world(db, epochs=1)
    assert world["job"].status.value == "succeeded", world["job"].error
    scratch = {"source": "scratch", "model_version_id": None, "loaded": 0}
    with db.session() as s:
        assert s.get(ModelVersion, world["model_version"]).metrics["backbone"] == scratch
    assert pretrained_start(settings, db, "deepcluster", "classifier") == (None, None)  # no DeepCluster network yet: random

    unlabelled = np.random.default_rng(0).random((8, 32, 32)).astype(np.float16)
    path = settings.models_dir / "deepcluster" / "dc1.pt"
    DeepCluster(DeepClusterConfig(k=2, epochs=0, width=8, pca_dim=4, seed=4)).fit(unlabelled).save(path)
    with db.session() as s:
        dc = ModelVersion(kind="deepcluster", version="dc1", status="ready",
                          path=str(path.relative_to(settings.data_dir)))
        s.add(dc)
        s.flush()
        s.get(ClusterRun, world["run"]).model_version_id = dc.id
        dc_id = dc.id
    job = run_job(db, "train_sorter", epochs=0, folds=0, min_per_class=2, force=True)  # init: deepcluster
    assert job.status.value == "succeeded", job.error
    with db.session() as s:
        mv = s.get(ModelVersion, job.result["model_version_id"])
        lineage = mv.metrics["backbone"]
    assert lineage["source"] == "model_version" and lineage["model_version_id"] == dc_id
    assert lineage["name"] == "deepcluster dc1" and lineage["loaded"] > 60
    meta = json.loads((settings.data_dir / Path(mv.path).parent / "metadata.json").read_text())
    assert meta["backbone"] == lineage and meta["config"]["width"] == 8

    start, version = pretrained_start(settings, db, "deepcluster", "classifier")
    assert start == str(path) and version.id == dc_id
    assert pretrained_start(settings, db, "none", "classifier") == (None, None)
    assert pretrained_start(settings, db, "imagenet", "classifier") == ("imagenet", None)
    with pytest.raises(JobFailed, match="no classifier weights file"):
        pretrained_start(settings, db, str(settings.data_dir / "nothing.pth"), "classifier")

    out = CliRunner().invoke(main, ["--data-dir", str(settings.data_dir), "models"])
    assert out.exit_code == 0, out.output
    assert "backbone scratch" in out.output and "backbone deepcluster dc1" in out.output

    # a torchvision resnet18 state dict (ImageNet's layout, random values): torchvision's shape, 3 -> 1 channel
    import torch
    import torchvision

    from backend.sorter.store import load_sorter

    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(tv, settings.data_dir / "r18.pth")
    out = CliRunner().invoke(main, ["--data-dir", str(settings.data_dir), "train", "sorter", "--epochs", "0",
                                    "--folds", "0", "--min-per-class", "2", "--force", "--init",
                                    str(settings.data_dir / "r18.pth")])
    assert out.exit_code == 0, out.output
    with db.session() as s:
        mv = s.scalars(select(ModelVersion).where(ModelVersion.kind == "sorter").order_by(ModelVersion.id.desc())).first()
        lineage = mv.metrics["backbone"]
    assert lineage["source"] == "file" and lineage["path"] == str(settings.data_dir / "r18.pth") and lineage["loaded"] > 60
    sorter = load_sorter(settings, mv)
    assert sorter.config.width == 64 and sorter.config.sobel is False
    assert torch.equal(sorter.net_.backbone.net.conv1.weight, tv["conv1.weight"].sum(1, keepdim=True))  # no epoch: the start
    bad = CliRunner().invoke(main, ["--data-dir", str(settings.data_dir), "train", "sorter", "--epochs", "0",
                                    "--folds", "0", "--min-per-class", "2", "--init", str(settings.data_dir / "nothing.pth")])
    assert bad.exit_code != 0 and "no sorter weights file" in bad.output
