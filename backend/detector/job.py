"""The "train_detector" job: lesion detector + image-level classifier on the annotated images,
judged on the fixed validation split, stored as a model version, then the active-learning
ranking of every unlabelled image (pushed to Label Studio when a project is synced).

The fixed validation split is the sorter's (training.splits.holdout: a hash of each
patient/study group), so no patient is in both, and the split does not move as labels arrive.
The decision-fusion threshold c* (VinDr-SpineXR) is Youden's J on that split; metrics are of
the fused boxes, the way a radiologist will see them."""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import select, update

from backend.database import model_versions as model_store
from backend.config import Settings
from backend.detector.data import LabelledImage, labelled_images, unlabelled_images
from backend.images.tensors import load_inputs
from backend.detector.evaluation import judge, validation_mask
from backend.detector.store import active_version
from backend.jobs.context import JobContext, JobFailed
from backend.jobs.params import TrainDetectorParams, TrainDetectorResult
from backend.labelstudio.push import push_ranking
from ml_backend.models.boxes import scale_of, to_input
from ml_backend.models.fusion import offered_boxes
from ml_backend.results import prediction_result
from backend.labelstudio.process import LabelStudioError
from backend.database.schema import Label, LabelKind, ModelKind, ModelStatus, ModelVersion
from backend.sorter.predictions import predicted_regions
from ml_backend.models.abnormality import AbnormalityClassifier
from ml_backend.models.active_learning import priority_scores
from ml_backend.models.detector import DetectorConfig, LesionDetector
from training import distributed
from training.weights import IMAGENET, WeightsError

log = logging.getLogger("samx.detector")

FIRST_LR = DetectorConfig.lr  # the learning rate of a training from scratch, unless the job names one
# A warm start at the first training's rate undid what it had learned (bench/active_learning.py,
# AdamW, 1200 steps then 400-step rounds); at 0.3 of it mAP rose over the rounds (3 seeds).
WARM_START_LR_SCALE = 0.3

#: What a training does where its parameters name nothing (tile None: whole images; lr None: FIRST_LR, or
#: WARM_START_LR_SCALE of it for a warm start; epochs and size: the settings').
DEFAULTS = TrainDetectorParams(arch="mobilenet_v3", batch_size=4, seed=0, classifier_epochs=15, min_images=4,
                               reason="manual", rank_batch=50, warm_start=False, follow_active=False,
                               classifier_weights="deepcluster", backbone_weights="deepcluster")
FOLLOWED = ("arch", "tile", "size", "batch_size")  # what a loop's training takes from the active version


def _lesion_classes(s, rows: list[LabelledImage]) -> list[str]:
    """The classes the annotations use, in the vocabulary's order. Not the whole vocabulary: a
    class nobody boxed cannot be learned, and one the Label Studio project does not have (the
    vocabulary keeps every class ever synced) would come back as a box with no label."""
    used = {name for r in rows for name in r.labels}
    vocab = list(s.scalars(select(Label.name).where(Label.kind == LabelKind.lesion, Label.is_active.is_(True))
                           .order_by(Label.sort_order, Label.name)))
    return [c for c in vocab if c in used] + sorted(used - set(vocab))


def data_hash(rows: list[LabelledImage]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(f"{r.content_hash}|{int(r.abnormal)}|{np.round(r.boxes, 1).tolist()}|{r.labels}\n".encode())
    return h.hexdigest()


def warm_start_weights(settings: Settings, db, arch: str) -> tuple[str, ModelVersion]:
    """The active version's detector file and row, to fine-tune from. Each round of the
    labeling loop then costs a fraction of a training from scratch (bench/active_learning.py
    trains this way; at the full learning rate it did worse there than from scratch, hence
    WARM_START_LR_SCALE). Another class list only re-initialises the box predictor; another
    architecture cannot start from it."""
    with db.session() as s:
        mv = active_version(s)
        if mv is None:
            raise JobFailed("warm start needs an active detector version to start from, and there is none yet: "
                            "train the first one from scratch")
        their_arch = (mv.config or {}).get("arch")
    if their_arch != arch:
        raise JobFailed(f"warm start needs the active version's architecture: {mv.version} is {their_arch}, "
                        f"this training asks for {arch}")
    return str(settings.data_dir / mv.path), mv


def pretrained_start(settings: Settings, db, weights: str, what: str) -> tuple[str | None, ModelVersion | None]:
    """A network's starting weights (the classifier's, the detector backbone's) and the model version
    they come from. By default the latest DeepCluster network: trained on every image, unlabelled
    ones too, it has seen far more radiographs than the few annotated ones these learn from (SAM-X)."""
    if weights == "none":
        return None, None
    if weights != "deepcluster":
        if str(weights).lower() not in IMAGENET and not Path(weights).is_file():
            raise JobFailed(f"no {what} weights file {weights}")
        return weights, None
    with db.session() as s:
        found = model_store.latest_deepcluster(s)
    return (str(settings.data_dir / found[0].path), found[0]) if found else (None, None)


def followed_settings(settings: Settings, db, given: TrainDetectorParams) -> dict:
    """For a training the labeling loop queued: the active version's architecture, tile, size and
    batch (what whoever trained it chose, e.g. ResNet-18 on tiles for small lesions; the loop's
    defaults would silently swap it for MobileNetV3) where the job names none, and a warm start
    from it unless ``settings.detector_warm_start`` is off. Nothing while no version is active."""
    with db.session() as s:
        mv = active_version(s)
        if mv is None:
            return {}
        config = dict(mv.config or {})
    followed = {k: config[k] for k in FOLLOWED if k in config and getattr(given, k) is None}
    same_arch = (given.arch if given.arch is not None else config.get("arch")) == config.get("arch")
    warm_start = given.warm_start if given.warm_start is not None else settings.detector_warm_start and same_arch
    return {**followed, "warm_start": bool(warm_start)}


def run_train_detector_job(ctx: JobContext) -> dict:
    settings: Settings = ctx.settings
    given = TrainDetectorParams.from_json(ctx.params)
    p = given.over(replace(DEFAULTS, epochs=settings.detector_epochs, size=settings.detector_size))
    if p.follow_active:
        p = replace(p, **followed_settings(settings, ctx.db, given))
    t0 = time.perf_counter()
    with ctx.db.session() as s:
        rows = labelled_images(s)
        classes = _lesion_classes(s, rows)
    if len(rows) < int(p.min_images):
        raise JobFailed(f"the detector needs at least {p.min_images} annotated images; there are {len(rows)} — "
                        "annotate more in Label Studio (or import a COCO/VOC dataset)")
    if not classes:
        raise JobFailed(f"none of the {len(rows)} annotated images has a lesion box yet: the detector has nothing "
                        "to learn")
    init, warm_from = warm_start_weights(settings, ctx.db, p.arch) if p.warm_start else (None, None)
    clf_weights, clf_from = pretrained_start(settings, ctx.db, p.classifier_weights, "classifier")
    backbone_weights, backbone_from, backbone = None, None, None
    if warm_from is not None:
        backbone = (warm_from.config or {}).get("backbone")  # the active version's body: its file fits no other
    elif p.arch == "resnet18_fpn" or p.backbone_weights not in ("deepcluster", "none"):
        backbone_weights, backbone_from = pretrained_start(settings, ctx.db, p.backbone_weights, "backbone")
    lr = float(p.lr) if p.lr is not None else FIRST_LR * (WARM_START_LR_SCALE if init else 1.0)
    cfg = DetectorConfig(arch=p.arch, size=int(p.size), epochs=int(p.epochs), batch_size=int(p.batch_size),
                         lr=lr, seed=int(p.seed), tile=None if p.tile is None else int(p.tile),
                         init_weights=init, backbone_weights=backbone_weights, backbone=backbone)
    ctx.progress(0, 100, f"preparing {len(rows)} images", force=True)
    inputs = load_inputs(settings, [(r.content_hash, r.store_path) for r in rows], cfg.input_recipe)
    scales = [scale_of(r.width, r.height, x) for r, x in zip(rows, inputs)]
    boxes = [to_input(r.boxes, sc) for r, sc in zip(rows, scales)]
    labels = [r.labels for r in rows]
    y = np.array([int(r.abnormal) for r in rows])
    held = validation_mask(rows)
    train, val = np.flatnonzero(~held), np.flatnonzero(held)

    try:
        detector = LesionDetector(classes, cfg).fit(
            [inputs[i] for i in train], [boxes[i] for i in train], [labels[i] for i in train],
            progress=lambda d, n, m: ctx.progress(5 + int(70 * d / max(n, 1)), 100, f"detector: {m}"))
    except WeightsError as exc:
        raise JobFailed(f"the {p.arch} detector cannot start from {backbone_weights}: {exc}") from None
    classifier = None
    if len(set(y[train].tolist())) == 2:
        ctx.progress(75, 100, "image-level classifier", force=True)
        try:
            classifier = AbnormalityClassifier(epochs=int(p.classifier_epochs), seed=int(p.seed),
                                               weights=clf_weights).fit([inputs[i] for i in train], y[train])
        except WeightsError as exc:
            raise JobFailed(f"the classifier cannot start from {clf_weights}: {exc}") from None

    threshold, metrics, roc_tmp = 0.5, None, None
    if len(val):
        ctx.progress(82, 100, f"judging on {len(val)} validation images", force=True)
        roc_tmp = settings.cache_dir / f"roc-{ctx.job_id}.png"
        metrics, threshold = judge([rows[i] for i in val], [inputs[i] for i in val], detector, classifier,
                                   roc_path=roc_tmp)

    version = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + "-" + hashlib.sha1(
        f"{ctx.job_id}:{time.time_ns()}".encode()).hexdigest()[:6]
    meta = {"version": version, "kind": ModelKind.detector.value, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "classes": classes, "n_images": len(rows), "n_train": len(train), "n_val": len(val),
            "n_abnormal": int(y.sum()), "data_hash": data_hash(rows), "config": asdict(detector.config),
            "classifier": classifier is not None, "fusion_threshold": float(threshold), "metrics": metrics,
            "history": [asdict(h) for h in detector.history_], "trigger": p.reason,
            "warm_start": warm_from.version if warm_from else None, "init_report": detector.init_report_,
            "backbone": model_store.lineage(init or backbone_weights, detector.init_report_,
                                            version=warm_from or backbone_from),
            "classifier_backbone": None if classifier is None else
            model_store.lineage(clf_weights, classifier.init_report_, version=clf_from),
            "processes": distributed.world_size()}  # > 1: under torchrun

    def fill(tmp: Path) -> None:
        detector.save(tmp / "detector.pt")
        if classifier is not None:
            classifier.save(tmp / "classifier.pt")
        if roc_tmp is not None and roc_tmp.is_file():
            roc_tmp.replace(tmp / "roc.png")
        meta["seconds"] = round(time.perf_counter() - t0, 1)
        model_store.write_json(tmp / "metadata.json", meta)

    folder = model_store.write_version_dir(settings, ModelKind.detector, version, fill)
    with ctx.db.session() as s:
        mv = ModelVersion(kind=ModelKind.detector, version=version, status=ModelStatus.active,
                          path=str((folder / "detector.pt").relative_to(settings.data_dir)), data_hash=meta["data_hash"],
                          metrics=_summary(meta), config=meta["config"], job_id=ctx.job_id)
        s.add(mv)
        s.flush()
        s.execute(update(ModelVersion).where(ModelVersion.kind == ModelKind.detector, ModelVersion.status == ModelStatus.active,
                                             ModelVersion.id != mv.id).values(status=ModelStatus.retired))
        mv_id = mv.id
    ctx.progress(90, 100, "ranking unlabelled images", force=True)
    ranked = rank_unlabelled(settings, ctx.db, detector, classifier, threshold, version, folder, int(p.rank_batch),
                             labelled_inputs=inputs)
    ctx.progress(100, 100, "done", force=True)
    return TrainDetectorResult(model_version_id=mv_id, version=version, images=len(rows), validation_images=len(val),
                               map50=(metrics or {}).get("map50"), fusion_threshold=float(threshold), ranked=ranked,
                               warm_start=meta["warm_start"]).to_json()


def _summary(meta: dict) -> dict:
    m = meta.get("metrics") or {}
    return {"map50": m.get("map50"), "ap50": m.get("ap50"), "auroc": (m.get("auroc") or {}).get("auroc"),
            "n_images": meta["n_images"], "n_val": meta["n_val"], "fusion_threshold": meta["fusion_threshold"],
            "backbone": meta["backbone"], "classifier_backbone": meta["classifier_backbone"]}


def rank_unlabelled(settings: Settings, db, detector: LesionDetector, classifier: AbnormalityClassifier | None,
                    threshold: float, version: str, folder: Path, batch: int, labelled_inputs=()) -> int:
    """Score every unlabelled image (uncertainty + diversity, also away from what is labelled
    already), keep the order in the version folder, and push it with the new pre-annotations to
    Label Studio when a project is synced."""
    with db.session() as s:
        todo = unlabelled_images(s)
        regions = predicted_regions(s, [t[0] for t in todo])
    if not todo:
        return 0
    inputs = load_inputs(settings, [(h, path) for _, h, path, _, _ in todo], detector.config.input_recipe)
    analysis = detector.analyse(inputs)
    p = classifier.predict_proba(inputs) if classifier is not None else None
    labelled = detector.embed(list(labelled_inputs)) if len(labelled_inputs) else None
    priority = priority_scores(analysis.uncertainty, analysis.embeddings, batch_size=batch, labeled=labelled)
    order = np.argsort(-priority, kind="stable")
    ranking = []
    for rank, i in enumerate(order, 1):
        image_id, _, _, width, height = todo[i]
        det = offered_boxes(analysis.detections[i], scale_of(width, height, inputs[i]),
                            None if p is None else float(p[i]), threshold, settings.detector_min_score)
        ranking.append({"image_id": int(image_id), "rank": rank, "priority": float(priority[i]),
                        "uncertainty": float(analysis.uncertainty[i]),
                        "result": prediction_result(det, width, height, p_abnormal=None if p is None else float(p[i]),
                                                    threshold=threshold, region=regions.get(int(image_id)))})
    model_store.write_json(folder / "ranking.json", {"ranking": [{k: v for k, v in e.items() if k != "result"}
                                                                  for e in ranking]})
    try:
        pushed = push_ranking(settings, ranking, version)
        log.info("active learning: pushed %s", pushed)
    except LabelStudioError as exc:  # not synced or not running: the ranking is kept in the version folder
        log.warning("active learning: ranking not pushed to Label Studio: %s", exc)
    return len(ranking)
