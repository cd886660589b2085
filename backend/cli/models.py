"""`samx cluster`, `samx train`, `samx eval`, `samx predict`, `samx sort`, `samx models`: the networks."""
from __future__ import annotations

import json
from pathlib import Path

import click
from tqdm import tqdm

from backend.config import Settings
from backend.cli.app import main, open_db, pass_settings, run_job
from backend.database.schema import JobKind, ModelKind, ModelStatus
from training.weights import IMAGENET
from backend.jobs.params import (ClusterParams, ClusterResult, PredictParams, PredictResult, TrainDetectorParams,
                                 TrainDetectorResult, TrainSorterParams, TrainSorterResult)


@main.command()
@click.option("--k", type=int, help="Number of clusters (default: about 40 images a cluster).")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--size", type=int, default=64, show_default=True, help="Input resolution in pixels.")
@click.option("--width", type=int, default=32, show_default=True, help="ResNet width (64 = torchvision's).")
@click.option("--arch", type=click.Choice(["resnet18", "resnet34", "resnet50"]), default="resnet18", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--weights", help="Start from pretrained weights: 'imagenet' (torchvision's, from the torch hub cache; "
                                "needs --width 64) or a weights file. Default: random weights.")
@click.option("--background", is_flag=True, help="Queue a job for `samx worker` instead of running here.")
@pass_settings
def cluster(settings: Settings, k: int | None, epochs: int, size: int, width: int, arch: str, seed: int,
            weights: str | None, background: bool) -> None:
    """Group all imported radiographs with DeepCluster, for naming in the web app.

    Checkpoints every epoch: `samx jobs retry ID` on a killed run resumes where it stopped."""
    db = open_db(settings)
    config = {"k": k, "epochs": epochs, "width": width, "arch": arch, "seed": seed}
    if weights:
        config["weights"] = weights if weights.lower() in IMAGENET else str(Path(weights).expanduser().resolve())
    params = ClusterParams(size=size, config=config)
    out = run_job(db, JobKind.cluster, params, background, unit="%")
    if out is None:
        return
    r = ClusterResult.from_json(out)
    click.echo(f"run {r.run_id}: {r.images} images in {r.k} clusters, {r.seconds:.0f} s; "
               f"NMI between the last two epochs {r.nmi_consecutive or 0:.3f}")
    click.echo("name the clusters in the browser: `samx serve`")


@main.group()
def train() -> None:
    """Train the models that label for you."""


@train.command("sorter")
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--folds", type=int, default=5, show_default=True,
              help="Cross-validation folds for the report (6-2-2 at 5); 0 skips cross-validation.")
@click.option("--min-per-class", type=int, default=5, show_default=True,
              help="Regions with fewer labelled images are left out of the sorter.")
@click.option("--init", default="deepcluster", show_default=True,
              help="Start from: 'deepcluster' (the latest DeepCluster network, SAM-X), 'none' (random weights), "
                   "'imagenet' (torchvision's ResNet, from the torch hub cache) or a weights file (a torchvision "
                   "state dict or a samx model).")
@click.option("--coverage", type=float, default=0.99, show_default=True,
              help="Share of validation images the sorter must accept; the rest of the world is 'unsure'.")
@click.option("--clean/--no-clean", default=True, show_default=True,
              help="Leave out of the version's training the weak labels that cross-validation confidently "
                   "contradicts (confident learning); they wait in the review queue. Needs --folds.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Make the new version active even if it is worse than the active one.")
@click.option("--background", is_flag=True, help="Queue a job for `samx worker` instead of running here.")
@pass_settings
def train_sorter(settings: Settings, epochs: int, folds: int, min_per_class: int, init: str, coverage: float,
                 clean: bool, seed: int, force: bool, background: bool) -> None:
    """Train the SAM-X sorter on the current region weak labels.

    Cross-validates (top-1/top-2 per fold, confusion matrix), trains the version on everything
    outside the fixed validation split but the labels cross-validation doubts, and makes it
    active if it is at least as good there as the active version. Writes an HTML report into
    the model store."""
    if not 0 < coverage <= 1:
        raise click.BadParameter("must be in (0, 1]", param_hint="--coverage")
    db = open_db(settings)
    params = TrainSorterParams(folds=folds, min_per_class=min_per_class, init=_weights_choice(init), force=force, clean=clean,
                               config={"epochs": epochs, "coverage": coverage, "seed": seed})
    out = run_job(db, JobKind.train_sorter, params, background, unit="%")
    if out is None:
        return
    r = TrainSorterResult.from_json(out)
    cv = f"; cross-validation top-1 {r.cv_top1.mean:.3f} ± {r.cv_top1.sd:.3f}, " \
         f"top-2 {r.cv_top2.mean:.3f} ± {r.cv_top2.sd:.3f}" if r.cv_top1 and r.cv_top2 else ""
    click.echo(f"sorter {r.version} on {r.images} images, {len(r.classes)} regions: validation top-1 "
               f"{r.holdout_top1:.3f}, top-2 {r.holdout_top2:.3f}{cv}")
    if r.left_out:
        click.echo(f"{r.left_out} weak labels that cross-validation confidently contradicts were left out of "
                   "training; see the review queue")
    click.echo(f"{'active' if r.promoted else 'not activated'}: {r.reason}")
    click.echo(f"report: {settings.models_dir / 'sorter' / r.version / 'report.html'}")


def _weights_choice(given: str) -> str:
    """A name as it is, a file as an absolute path: the worker may run elsewhere."""
    named = given.lower()
    return named if named in ("deepcluster", "none", *IMAGENET) else str(Path(given).expanduser().resolve())


@train.command("detector")
@click.option("--epochs", type=int, help="Default: SAMX_DETECTOR_EPOCHS (20).")
@click.option("--size", type=int, help="Long side the network sees, a multiple of 32. Default: SAMX_DETECTOR_SIZE (512).")
@click.option("--arch", type=click.Choice(["mobilenet_v3", "mobilenet_v3_320", "resnet18_fpn", "resnet50_fpn",
                                          "resnet50_fpn_v2"]), default="mobilenet_v3", show_default=True,
              help="Faster R-CNN backbone; resnet18_fpn (with --tile) for small lesions; the ResNet-50 ones want a GPU.")
@click.option("--tile", type=int, help="Train on lesion-centred tiles of this many input pixels (a multiple of 32, "
              "e.g. 128); predictions still see whole images. Default: whole images.")
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--lr", type=float, help="Peak learning rate. Default: 0.02, or 0.3 of it with --warm-start.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--warm-start", is_flag=True, help="Fine-tune the active version (same --arch) instead of training "
              "from scratch: a few epochs per labeling round, at a lower learning rate.")
@click.option("--classifier-weights", default="deepcluster", show_default=True,
              help="Start the normal/abnormal classifier from: 'deepcluster' (the latest DeepCluster network; random "
                   "weights while there is none), 'none' (random weights), 'imagenet' (torchvision's ResNet18, from "
                   "the torch hub cache) or a weights file (a resnet18 state dict or a samx model).")
@click.option("--backbone-weights", default="deepcluster", show_default=True,
              help="Start the detector's backbone from: 'deepcluster' (the latest DeepCluster network, for "
                   "resnet18_fpn, which takes its shape; random weights while there is none and for the other "
                   "architectures), 'none', 'imagenet' (torchvision's, from the torch hub cache) or a weights file. "
                   "Not with --warm-start, which starts every layer from the active version.")
@click.option("--background", is_flag=True, help="Queue a job for `samx worker` instead of running here.")
@pass_settings
def train_detector(settings: Settings, epochs: int | None, size: int | None, arch: str, tile: int | None,
                   batch_size: int, lr: float | None, seed: int, warm_start: bool, classifier_weights: str,
                   backbone_weights: str, background: bool) -> None:
    """Train the lesion detector and the normal/abnormal classifier on the annotated images.

    Judged on the fixed validation split (mAP@0.5, AUROC; the decision-fusion threshold is
    Youden's J there), stored as the active version; the ML backend swaps to it, and the
    unlabelled images are ranked for labeling (pushed to Label Studio when synced)."""
    db = open_db(settings)
    params = TrainDetectorParams(epochs=epochs, size=size, arch=arch, tile=tile, batch_size=batch_size, lr=lr,
                                 seed=seed, warm_start=warm_start, reason="samx train detector",
                                 classifier_weights=_weights_choice(classifier_weights),
                                 backbone_weights=_weights_choice(backbone_weights))
    out = run_job(db, JobKind.train_detector, params, background, unit="%")
    if out is None:
        return
    r = TrainDetectorResult.from_json(out)
    m = "n/a (no validation images yet)" if r.map50 is None else f"{r.map50:.3f}"
    start = f" (fine-tuned from {r.warm_start})" if r.warm_start else ""
    click.echo(f"detector {r.version}{start} on {r.images} images ({r.validation_images} for validation): "
               f"mAP@0.5 {m}, fusion threshold {r.fusion_threshold:.3f}; {r.ranked} unlabelled images ranked")


@main.command("eval")
@click.option("--version", help="A detector version (default: the active one).")
@click.option("--split", type=click.Choice(["validation", "all"]), default="validation", show_default=True,
              help="The fixed validation split (never trained on) or every labelled image.")
@click.option("--out", type=click.Path(file_okay=False), help="Write metrics.json and roc.png here.")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def eval_(settings: Settings, version: str | None, split: str, out: str | None, as_json: bool) -> None:
    """Detection and image-level metrics of a detector version, as the papers report them."""
    from backend.detector.evaluation import evaluate_version

    try:
        r = evaluate_version(settings, open_db(settings), version, split=split, out=out)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(r, indent=1))
        return
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    auc, sens, box = r["auroc"], r["sensitivity_at_fpr"], r["box_accuracy"]
    click.echo(f"detector {r['version']} on {r['n_images']} {split} images ({r['n_abnormal']} abnormal)")
    click.echo(f"  mAP@0.5 (COCO 101-point): {fmt(r['map50'])}   " + "   ".join(
        f"AP {c}: {fmt(v)}" for c, v in r["ap50"].items()))
    click.echo(f"  boxes found at IoU > 0.5: {fmt(box.get('accuracy'))}, mean IoU {fmt(box.get('mean_iou'))}")
    op = r.get("box_accuracy_at_operating_point")
    if op:
        click.echo(f"  at the operating point (boxes scoring >= {op['score_threshold']:g}): found {fmt(op['accuracy'])} "
                   f"(95% CI {_ci(op.get('accuracy_ci95'))}), mean IoU {fmt(op['mean_iou'])} +- {fmt(op.get('sd_iou'))}")
    scorings = [(r.get("image_score", "classifier"), auc, sens)]
    if r.get("best_box") and r.get("image_score") != "best box":
        scorings.append(("best box", r["best_box"]["auroc"], r["best_box"]["sensitivity_at_fpr"]))
    for name, a, se in scorings:
        click.echo(f"  {name}: AUROC {fmt(a.get('auroc'))} (95% CI {_ci(a.get('ci95'))}); sensitivity at "
                   f"{100 * se.get('fpr', 0.015):.1f}% FPR {fmt(se.get('sensitivity'))} (95% CI {_ci(se.get('ci95'))})")
    if r.get("threshold_selection"):
        click.echo(f"  fusion threshold c* {fmt(r.get('fusion_threshold'))}: {r['threshold_selection']}")
    if out:
        click.echo(f"  written: {Path(out) / 'metrics.json'}" + (f", {r['roc_png']}" if r.get("roc_png") else ""))


def _ci(ci) -> str:
    return "n/a" if not ci or ci[0] is None else f"{ci[0]:.3f}-{ci[1]:.3f}"


@main.command()
@click.option("--background", is_flag=True, help="Queue a job for `samx worker` instead of running here.")
@pass_settings
def predict(settings: Settings, background: bool) -> None:
    """Sorter predictions for the imported images the active sorter has not seen yet."""
    out = run_job(open_db(settings), JobKind.predict, PredictParams(), background, unit="%")
    if out is not None:
        click.echo(f"{PredictResult.from_json(out).predicted} images predicted")


@main.command("sort")
@click.argument("src", metavar="IN", type=click.Path(exists=True, file_okay=False))
@click.argument("out", metavar="OUT", type=click.Path(file_okay=False))
@click.option("--model", "version", help="Sorter version (default: the active one).")
@click.option("--link", is_flag=True, help="Hard-link instead of copying (same file system).")
@click.option("--force", is_flag=True, help="Write into a non-empty OUT.")
@click.option("--workers", type=int, default=None, help="Decoding processes (default: all cores).")
@pass_settings
def sort_cmd(settings: Settings, src: str, out: str, version: str | None, link: bool, force: bool,
             workers: int | None) -> None:
    """Copy every file under IN to OUT/<region>/, OUT/unsure/ or OUT/unreadable/, with
    OUT/predictions.csv (region, confidence, runner-up, out-of-distribution score, reason).

    The originals stay as they are; nothing is added to the database."""
    from backend.sorter.folder_sort import SortError, sort_folder
    from backend.sorter.store import find_version, load_sorter

    db = open_db(settings)
    with db.session() as s:
        mv = find_version(s, version)
        if mv is None or not mv.path:
            raise click.ClickException(f"no sorter version {version!r}" if version else
                                       "there is no active sorter yet: run `samx train sorter` first")
        model, cfg, name = load_sorter(settings, mv), dict(mv.config), mv.version
    with tqdm(desc="sort", unit="file", disable=None) as bar:
        def on_progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            r = sort_folder(model, src, out, size=int(cfg.get("size", 64)), method=cfg.get("method", "fhe"),
                            link=link, force=force, workers=workers, progress=on_progress)
        except SortError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"sorter {name}: {r.files} files -> " + ", ".join(f"{k} {v}" for k, v in sorted(r.by_folder.items())))
    click.echo(f"predictions: {r.csv}")


@main.command()
@pass_settings
def models(settings: Settings) -> None:
    """Sorter versions with their metrics (the active one marked *)."""
    from sqlalchemy import select

    from backend.database.schema import ModelVersion

    with open_db(settings).session() as s:
        rows = s.scalars(select(ModelVersion).where(ModelVersion.kind == ModelKind.sorter).order_by(ModelVersion.id)).all()
        for mv in rows:
            m = mv.metrics or {}
            top1 = m.get("holdout_top1")
            click.echo(f"{'*' if mv.status == ModelStatus.active else ' '} {mv.version}  {mv.status:<8} "
                       f"{mv.created_at:%Y-%m-%d %H:%M}  {m.get('n_images', '?')} images  validation top-1 "
                       f"{'-' if top1 is None else f'{top1:.3f}'}  backbone {backbone_name(m.get('backbone'))}  "
                       f"{m.get('reason', '')}")
        if not rows:
            click.echo("no sorter trained yet: `samx train sorter`")


def backbone_name(lineage: dict | None) -> str:
    """The ``backbone`` column: where a version's network started (model_versions.lineage)."""
    if not lineage:
        return "-"  # trained before versions recorded it
    return lineage.get("name") or (Path(lineage["path"]).name if lineage.get("path") else lineage["source"])
