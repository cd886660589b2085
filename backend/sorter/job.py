"""The "train_sorter" job (SAM-X phase 2) and the "predict" job.

train_sorter: the current region weak labels -> 5-fold cross-validation (6-2-2, stratified, no
patient or study in two splits) for the report, whose test parts give every image an
out-of-fold prediction -> the labels those predictions confidently contradict are left out
(clustering.sorter.label_noise; they land in the review queue, since the version never learns them)
-> the version itself, trained on the rest outside the fixed validation split and calibrated
(abstention) and judged on it -> promoted only if at least as good there as the active version
-> predictions for every image.

predict: predictions of the active version for images it has not seen (new ingests)."""
from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy import delete, insert, select, update

from backend.config import Settings
from backend.database import model_versions as model_store
from backend.jobs.context import JobContext, JobFailed
from backend.jobs.params import AcrossFolds, PredictParams, PredictResult, TrainSorterParams, TrainSorterResult
from backend.database.schema import (Image, ImageStatus, Label, LabelKind, ModelKind, ModelStatus, ModelVersion,
                                     SorterPrediction, WeakLabel)
from backend.sorter.store import active_version, load_sorter, write_version
from backend.images.tensors import load_tensors
from clustering.deepcluster import DeepCluster
from clustering.sorter.gradcam import gradcam, overlay
from clustering.sorter.label_noise import confident_classes, label_issues
from clustering.sorter.model import UNSURE, Predictions, Sorter, SorterConfig
from clustering.sorter.metrics import evaluate, summarize
from clustering.sorter.report import render_report
from training.splits import cv_folds, holdout
from training.splits import group_images
from imaging.radiograph import not_a_radiograph
from training import distributed
from training.backbone import Backbone
from training.weights import IMAGENET, LoadReport, WeightsError, backbone_config_of, load_into

log = logging.getLogger(__name__)
#: What a training does where its parameters name nothing (size and method: without a DeepCluster start).
DEFAULTS = TrainSorterParams(folds=5, min_per_class=5, init="deepcluster", force=False, reason="trained by hand",
                             clean=True)
BATCH = 512


def _params(raw: dict) -> tuple[SorterConfig, TrainSorterParams]:
    given = TrainSorterParams.from_json(raw)
    config = SorterConfig(**{k: v for k, v in given.config.items() if v is not None})
    job = given.over(DEFAULTS)
    if job.folds and int(job.folds) < 3:
        raise JobFailed("folds must be 0 (no cross-validation) or at least 3")
    return config, job


def pretrained_backbone(weights: str, config: SorterConfig) -> tuple[Backbone, LoadReport]:
    """ImageNet or a file: a samx model's backbone in its own shape; torchvision's weights (by name
    or a state dict file) in torchvision's (width 64, one input channel, no Sobel)."""
    if weights.lower() not in IMAGENET and not Path(weights).is_file():
        raise JobFailed(f"no sorter weights file {weights}")
    try:
        shape = (None if weights.lower() in IMAGENET else backbone_config_of(weights)) or \
            {"arch": config.arch, "width": 64, "sobel": False}
        backbone = Backbone(**shape)
        return backbone, load_into(backbone, weights, arch=shape["arch"])
    except WeightsError as exc:
        raise JobFailed(f"the sorter cannot start from {weights}: {exc}") from None


def _training_rows(s) -> list:
    """Images with a current region weak label: id, content hash, store path, patient, study, label."""
    return s.execute(
        select(Image.id, Image.content_hash, Image.store_path, Image.patient_pseudonym, Image.study_uid,
               Label.name, Label.sort_order)
        .join(WeakLabel, WeakLabel.image_id == Image.id).join(Label, Label.id == WeakLabel.label_id)
        .where(WeakLabel.superseded_at.is_(None), Label.kind == LabelKind.region, Image.status == ImageStatus.imported,
               Image.store_path.is_not(None))
        .order_by(Image.id)).all()


def data_hash(rows) -> str:
    """What the version was trained on: sorted (content hash, label) pairs."""
    digest = hashlib.sha256()
    for line in sorted(f"{r.content_hash}\t{r.name}" for r in rows):
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()


def run_train_sorter_job(ctx: JobContext) -> dict:
    settings: Settings = ctx.settings
    config, job = _params(dict(ctx.params))
    t0 = time.perf_counter()
    with ctx.db.session() as s:
        rows = _training_rows(s)
        deepcluster = model_store.latest_deepcluster(s)
        previous = active_version(s)
        previous = (previous.id, previous.version, previous.path) if previous else None
    counts = Counter(r.name for r in rows)
    order = {r.name: r.sort_order for r in rows}
    classes = sorted((c for c, n in counts.items() if n >= int(job.min_per_class)), key=lambda c: (order[c], c))
    dropped = {c: n for c, n in counts.items() if c not in classes}
    if len(classes) < 2:
        raise JobFailed(f"the sorter needs at least two regions with {job.min_per_class} or more labelled images "
                        f"each; the weak labels have {dict(counts) or 'none'} — name more clusters first")
    rows = [r for r in rows if r.name in classes]
    y = np.array([classes.index(r.name) for r in rows], dtype=np.int64)
    groups = group_images((r.id, r.patient_pseudonym, r.study_uid) for r in rows)
    group_keys = [groups[r.id] for r in rows]

    init, init_note, backbone = None, "none (random weights)", model_store.lineage(None)
    size, method = int(job.size or 64), job.method or "fhe"
    if job.init == "deepcluster" and deepcluster is not None:
        mv, run_params = deepcluster
        size, method = int(run_params.get("size", 64)), run_params.get("method", "fhe")
        init = DeepCluster.load(settings.data_dir / mv.path).backbone_
        init_note = f"deepcluster {mv.version}"
        backbone = model_store.lineage(None, {"loaded": len(init.state_dict())}, version=mv)
    elif job.init not in ("deepcluster", "none"):
        init, report = pretrained_backbone(str(job.init), config)
        init_note = f"{report.source} ({report.loaded} tensors)"
        backbone = model_store.lineage(str(job.init), report.to_dict())

    images = load_tensors(settings, [(r.content_hash, r.store_path) for r in rows], size=size, method=method,
                          progress=lambda d, n: ctx.progress(int(10 * d / n), 100, f"preparing images {d}/{n}"))
    n_folds = int(job.folds)
    steps = n_folds + 1  # trainings: one per fold, then the version itself
    step = [0]

    def on_epoch(epoch: int, epochs: int, message: str) -> None:
        what = f"fold {step[0] + 1}/{n_folds}" if step[0] < n_folds else "final model"
        ctx.progress(10 + int(80 * (step[0] + epoch / max(epochs, 1)) / steps), 100, f"{what}: {message}")

    cv, out_of_fold = None, np.full((len(y), len(classes)), np.nan)
    if n_folds:
        folds = []
        for fold in cv_folds(y, group_keys, n_folds, config.seed):
            model = Sorter(classes, config).fit(images[fold.train], y[fold.train], init=init, progress=on_epoch)
            model.calibrate(images[fold.val])
            pred = model.predict(images[fold.test])
            out_of_fold[fold.test] = pred.proba
            folds.append({"index": fold.index, "n_train": len(fold.train), "n_val": len(fold.val),
                          "n_test": len(fold.test), **evaluate(y[fold.test], pred.proba, classes, pred.abstained)})
            log.info("sorter fold %d: top-1 %.3f top-2 %.3f", fold.index, folds[-1]["top1"], folds[-1]["top2"])
            step[0] += 1
        cv = {"folds": folds, "summary": summarize(folds)}

    held = holdout(group_keys)
    if held.sum() < 2 or (~held).sum() < 2:
        raise JobFailed(f"the fixed validation split needs images on both sides; {int(held.sum())} of {len(y)} "
                        "images fell into it — label more images (from more patients)")
    doubted, cleaning = _doubted_labels(out_of_fold, y, held, rows, classes, bool(job.clean) and cv is not None)
    train = ~held & ~doubted
    model = Sorter(classes, config).fit(images[train], y[train], init=init, progress=on_epoch)
    model.calibrate(images[held])
    pred = model.predict(images[held])
    held_metrics = evaluate(y[held], pred.proba, classes, pred.abstained)
    names = np.array([r.name for r in rows], dtype=object)

    ctx.progress(90, 100, "comparing with the active version", force=True)
    promoted, reason, prev_info = _judge(settings, previous, held_metrics["top1"], images[held], names[held],
                                         bool(job.force))
    version = hashlib.sha1(f"{ctx.job_id}:{time.time_ns()}".encode()).hexdigest()[:12]
    meta = {"version": version, "kind": ModelKind.sorter.value, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "classes": classes, "counts": {c: counts[c] for c in classes}, "dropped_classes": dropped,
            "data_hash": data_hash(rows), "n_images": len(rows), "n_holdout": int(held.sum()),
            "n_trained": int(train.sum()),
            "config": {**asdict(model.config), "size": size, "method": method, "init": init_note,
                       "folds": n_folds, "min_per_class": int(job.min_per_class), "clean": bool(job.clean),
                       "processes": distributed.world_size()},  # > 1: trained under torchrun
            "cv": _finite(cv), "cleaning": cleaning, "holdout": _finite(held_metrics),
            "abstention": asdict(model.abstention_), "backbone": backbone,
            "history": [asdict(h) for h in model.history_], "previous": prev_info, "promoted": promoted,
            "reason": reason, "trigger": job.reason, "seconds": None}

    all_ids, all_pred = (np.zeros(0, np.int64), None)
    if promoted:
        ctx.progress(92, 100, "sorting every image", force=True)
        all_ids, all_pred = _predict_all(ctx, model, size, method)
    examples = _gradcam_examples(model, images[held], y[held], pred, [r.id for r, h in zip(rows, held) if h])
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    path = write_version(settings, version, model, meta, render_report(meta, examples), all_ids,
                         all_pred.embeddings if all_pred is not None else np.zeros((0, 1), np.float32))
    with ctx.db.session() as s:
        mv = ModelVersion(kind=ModelKind.sorter, version=version,
                          status=ModelStatus.active if promoted else ModelStatus.rejected,
                          path=str(path.relative_to(settings.data_dir)), data_hash=meta["data_hash"],
                          metrics=_stored_metrics(meta), config=meta["config"], job_id=ctx.job_id)
        s.add(mv)
        s.flush()
        if promoted:
            s.execute(update(ModelVersion).where(ModelVersion.kind == ModelKind.sorter,
                                                 ModelVersion.status == ModelStatus.active,
                                                 ModelVersion.id != mv.id).values(status=ModelStatus.retired))
            store_predictions(s, mv.id, all_ids, all_pred, classes,
                              frozenset(int(r.id) for r, d in zip(rows, doubted) if d))
        mv_id = mv.id
    ctx.progress(100, 100, "done", force=True)
    summary = cv["summary"] if cv else {}
    return TrainSorterResult(
        model_version_id=mv_id, version=version, promoted=promoted, reason=reason, images=len(rows), classes=classes,
        holdout_top1=held_metrics["top1"], holdout_top2=held_metrics["top2"],
        cv_top1=AcrossFolds.from_json(summary["top1"]) if "top1" in summary else None,
        cv_top2=AcrossFolds.from_json(summary["top2"]) if "top2" in summary else None,
        left_out=cleaning["left_out"], predicted=int(len(all_ids))).to_json()


def _doubted_labels(out_of_fold: np.ndarray, y: np.ndarray, held: np.ndarray, rows, classes,
                   clean: bool) -> tuple[np.ndarray, dict]:
    """The images whose weak label the out-of-fold predictions confidently contradict, and what the
    report says about them. Held-out ones stay in the fixed validation split (versions are judged
    on the same images); only the training side loses them."""
    if not clean:
        return np.zeros(len(y), dtype=bool), {"enabled": False, "flagged": 0, "left_out": 0}
    doubted = label_issues(out_of_fold, y)
    confident = confident_classes(out_of_fold, y)
    left_out = doubted & ~held
    log.info("sorter: %d weak labels doubted by the out-of-fold predictions, %d left out of training",
             doubted.sum(), left_out.sum())
    return doubted, {
        "enabled": True, "flagged": int(doubted.sum()), "left_out": int(left_out.sum()),
        "by_label": {classes[j]: int(np.sum(doubted & (y == j))) for j in range(len(classes))},
        "images": [{"image_id": int(r.id), "label": r.name, "predicted": classes[confident[i]],
                    "probability": round(float(out_of_fold[i, confident[i]]), 4), "held_out": bool(held[i])}
                   for i, r in enumerate(rows) if doubted[i]]}


def _judge(settings, previous, new_top1: float, held_images, held_names, force: bool) -> tuple[bool, str, dict | None]:
    """Promote when there is no active version, or when this one is at least as good on the
    fixed validation split as the active one is on the same images and current labels."""
    if previous is None:
        return True, "first sorter version", None
    mv_id, version, path = previous
    old = Sorter.load(settings.data_dir / path)
    old_pred = np.array(old.classes, dtype=object)[old.predict_proba(held_images).argmax(1)]
    old_top1 = float((old_pred == held_names).mean())
    info = {"version": version, "holdout_top1": old_top1}
    if force:
        return True, f"forced (top-1 {new_top1:.3f}; active version {version}: {old_top1:.3f})", info
    if new_top1 >= old_top1:
        return True, f"top-1 {new_top1:.3f} >= {old_top1:.3f} of the active version {version}", info
    return False, f"top-1 {new_top1:.3f} < {old_top1:.3f} of the active version {version}; it stays active", info


def _finite(value):
    """NaN (a class absent from a test fold) -> None, so the metrics are valid JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


def _stored_metrics(meta: dict) -> dict:
    """What the versions page lists (the full metrics live in metadata.json and the report)."""
    cv = (meta.get("cv") or {}).get("summary") or {}
    held = meta["holdout"]
    return {"classes": meta["classes"], "n_images": meta["n_images"],
            "left_out": (meta.get("cleaning") or {}).get("left_out", 0), "holdout_top1": held["top1"],
            "holdout_top2": held["top2"], "holdout_coverage": held.get("coverage"),
            "cv_top1": cv.get("top1"), "cv_top2": cv.get("top2"), "promoted": meta["promoted"],
            "reason": meta["reason"], "trigger": meta["trigger"], "previous": meta["previous"],
            "threshold": meta["abstention"]["threshold"], "seconds": meta["seconds"],
            "backbone": meta["backbone"]}  # where it started (model_versions.lineage)


def _gradcam_examples(model: Sorter, images, y, pred: Predictions, ids, per_class: int = 2) -> list[dict]:
    """Up to ``per_class`` validation images per class, mistakes first."""
    chosen = []
    for c in range(len(model.classes)):
        members = np.flatnonzero(y == c)
        wrong = [i for i in members if pred.proba[i].argmax() != c]
        chosen += (wrong + [i for i in members if i not in wrong])[:per_class]
    if not chosen:
        return []
    heat = gradcam(model.net_, np.asarray(images[chosen], np.float32), pred.proba[chosen].argmax(1))
    out = []
    for i, h in zip(chosen, heat):
        best = int(pred.proba[i].argmax())
        said = "unsure" if pred.abstained[i] else f"{model.classes[best]} {pred.proba[i, best]:.2f}"
        ok, png = cv2.imencode(".png", overlay(np.asarray(images[i], np.float32), h))
        out.append({"title": f"image {ids[i]}: labelled {model.classes[y[i]]}, predicted {said}", "png": png.tobytes()})
    return out


def _imported(s, without_version: int | None = None) -> list:
    q = select(Image.id, Image.content_hash, Image.store_path, Image.format, Image.modality, Image.photometric).where(
        Image.status == ImageStatus.imported, Image.store_path.is_not(None))
    if without_version is not None:
        seen = select(SorterPrediction.image_id).where(SorterPrediction.model_version_id == without_version)
        q = q.where(Image.id.not_in(seen))
    return s.execute(q.order_by(Image.id)).all()


def _predict_all(ctx: JobContext, model: Sorter, size: int, method: str, without_version: int | None = None,
                 lo: int = 92, hi: int = 99) -> tuple[np.ndarray, Predictions | None]:
    """Predictions for the imported images; those whose DICOM header says they are no
    projection radiograph (CT, colour, ...) are unsure whatever the network thinks."""
    with ctx.db.session() as s:
        rows = _imported(s, without_version)
    ids = np.array([r.id for r in rows], dtype=np.int64)
    header = np.array([not_a_radiograph(r.format, r.modality, r.photometric) is not None for r in rows], dtype=bool)
    parts = []
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        parts.append(model.predict(load_tensors(ctx.settings, [(r.content_hash, r.store_path) for r in chunk],
                                                size=size, method=method)))
        ctx.progress(lo + int((hi - lo) * (start + len(chunk)) / max(len(rows), 1)), 100,
                     f"sorting {start + len(chunk)}/{len(rows)} images")
    if not parts:
        return ids, None
    pred = Predictions(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Predictions)))
    pred.label[header] = UNSURE
    return ids, pred


def store_predictions(s, model_version_id: int, image_ids: np.ndarray, pred: Predictions | None, classes,
                      doubted_ids: frozenset[int] = frozenset()) -> int:
    """One SorterPrediction row per image (replacing the version's earlier row for it);
    ``doubted_ids``: the images whose weak label the version's cross-validation doubted."""
    if pred is None or len(image_ids) == 0:
        return 0
    label_ids = dict(s.execute(select(Label.name, Label.id).where(Label.kind == LabelKind.region)).all())
    top, top_p = pred.top, pred.top_proba
    rows = []
    for r, image_id in enumerate(image_ids):
        first = None if pred.abstained[r] else label_ids.get(classes[top[r, 0]])
        second = label_ids.get(classes[top[r, 1]]) if top.shape[1] > 1 else None
        rows.append({"image_id": int(image_id), "model_version_id": model_version_id, "label_id": first,
                     "confidence": float(top_p[r, 0]), "second_label_id": second,
                     "second_confidence": float(top_p[r, 1]) if top.shape[1] > 1 else None,
                     "ood_score": float(pred.ood_score[r]), "label_doubted": int(image_id) in doubted_ids})
    for start in range(0, len(rows), 2000):
        chunk = rows[start : start + 2000]
        s.execute(delete(SorterPrediction).where(SorterPrediction.model_version_id == model_version_id,
                                                 SorterPrediction.image_id.in_([c["image_id"] for c in chunk])))
        s.execute(insert(SorterPrediction), chunk)
    return len(rows)


def predict_missing(ctx: JobContext, lo: int = 0, hi: int = 99) -> PredictResult | None:
    """Predictions of the active sorter for every imported image that has none from it yet;
    None when there is no active sorter."""
    with ctx.db.session() as s:
        mv = active_version(s)
        if mv is None:
            return None
        mv_id, cfg = mv.id, dict(mv.config)
        model = load_sorter(ctx.settings, mv)
    ids, pred = _predict_all(ctx, model, int(cfg.get("size", 64)), cfg.get("method", "fhe"), without_version=mv_id,
                             lo=lo, hi=hi)
    with ctx.db.session() as s:
        n = store_predictions(s, mv_id, ids, pred, model.classes)
    return PredictResult(model_version_id=mv_id, predicted=n)


def run_predict_job(ctx: JobContext) -> dict:
    PredictParams.from_json(ctx.params)
    result = predict_missing(ctx)
    if result is None:
        raise JobFailed("there is no active sorter yet: run `samx train sorter` first")
    ctx.progress(100, 100, "done", force=True)
    return result.to_json()
