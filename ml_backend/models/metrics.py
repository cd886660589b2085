"""The papers' metrics, computed by the libraries people check them with.

* mAP@0.5 (VinDr-SpineXR): pycocotools' COCOeval at the single IoU threshold 0.5, 101-point
  interpolated precision, all box areas, up to ``max_dets`` boxes an image. A class with no
  ground-truth box in the set has no AP (None here): it is left out of the mean rather than
  counted as 0 or 1, as COCOeval does. Images without ground truth still count: their boxes
  are false positives.
* Box accuracy: the share of ground-truth boxes found by a predicted box of the same class with
  IoU > 0.5 (greedy, best score first), and the mean IoU of those matches.
* AUROC (sklearn) and sensitivity at a fixed false-positive rate (Zimbalist et al.: 1.5 %),
  each with a 95 % percentile-bootstrap interval over images.

Every result is JSON-ready: floats, lists, and None where a value is undefined."""
from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from sklearn.metrics import roc_auc_score, roc_curve
from torchvision.ops import box_iou

from imaging.files import write_atomic

from .boxes import as_detections, xywh_to_xyxy


def _num(x) -> float | None:
    """JSON has no NaN."""
    return None if x is None or not math.isfinite(float(x)) else float(x)


# -- detection ------------------------------------------------------------------------------
def _coco(gt, classes: Sequence[str]) -> COCO:
    anns = []
    for i, det in enumerate(gt):
        for box, label in zip(det.boxes.tolist(), det.labels):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": classes.index(label) + 1,
                         "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": [{"id": i + 1} for i in range(len(gt))], "annotations": anns,
                    "categories": [{"id": k + 1, "name": c} for k, c in enumerate(classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def detection_map(gt: Sequence, pred: Sequence, classes: Sequence[str], *, max_dets: int = 100) -> dict:
    """``gt``, ``pred``: one entry per image (Detections, or {"boxes": xywh, "labels", "scores"}).
    Returns {"map50", "ap50": {class: AP or None}, "n_gt": {class: count}}."""
    classes = list(classes)
    gt, pred = [as_detections(g) for g in gt], [as_detections(p) for p in pred]
    if len(gt) != len(pred):
        raise ValueError(f"{len(gt)} ground-truth images but {len(pred)} predicted")
    for what, items in (("ground truth", gt), ("predictions", pred)):
        unknown = sorted({lab for d in items for lab in d.labels} - set(classes))
        if unknown:
            raise ValueError(f"{what} use classes {unknown} not in {classes}")
    n_gt = {c: sum(d.labels.count(c) for d in gt) for c in classes}
    ap = {c: None for c in classes}
    results = [{"image_id": i + 1, "category_id": classes.index(lab) + 1, "bbox": box, "score": float(s)}
               for i, d in enumerate(pred) for box, s, lab in zip(d.boxes.tolist(), d.scores, d.labels)]
    if not results:  # loadRes cannot take an empty list: nothing found is AP 0 where there was something
        ap = {c: (0.0 if n_gt[c] else None) for c in classes}
    elif any(n_gt.values()):
        coco_gt = _coco(gt, classes)
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
            ev.params.iouThrs = np.array([0.5])
            ev.params.maxDets = [1, 10, max_dets]
            ev.evaluate()
            ev.accumulate()
        prec = ev.eval["precision"][0, :, :, 0, -1]  # (recall thresholds, classes), area "all", max_dets
        for k, c in enumerate(classes):
            col = prec[:, k]
            ap[c] = float(col.mean()) if n_gt[c] and (col > -1).any() else None  # -1: no ground truth
    known = [v for v in ap.values() if v is not None]
    return {"map50": float(np.mean(known)) if known else None, "ap50": ap, "n_gt": n_gt}


def box_accuracy(gt: Sequence, pred: Sequence, iou: float = 0.5, score_threshold: float = 0.0) -> dict:
    """Greedy by score: each predicted box (at or above ``score_threshold``) takes the
    unmatched same-class ground-truth box it overlaps most, if IoU > ``iou``."""
    gt, pred = [as_detections(g) for g in gt], [as_detections(p) for p in pred]
    if len(gt) != len(pred):
        raise ValueError(f"{len(gt)} ground-truth images but {len(pred)} predicted")
    matched_ious, n_gt = [], 0
    for g, p in zip(gt, pred):
        n_gt += len(g)
        p = p.select(p.scores >= score_threshold)
        if not len(g) or not len(p):
            continue
        ious = box_iou(torch.from_numpy(xywh_to_xyxy(p.boxes)), torch.from_numpy(xywh_to_xyxy(g.boxes))).numpy()
        ious[~np.equal.outer(np.array(p.labels), np.array(g.labels))] = 0.0
        free = np.ones(len(g), bool)
        for i in np.argsort(-p.scores, kind="stable"):
            cand = np.where(free, ious[i], -1.0)
            j = int(cand.argmax())
            if cand[j] > iou:
                free[j] = False
                matched_ious.append(float(cand[j]))
    return {"accuracy": len(matched_ious) / n_gt if n_gt else None,
            "mean_iou": float(np.mean(matched_ious)) if matched_ious else None,
            "n_gt": n_gt, "n_matched": len(matched_ious), "iou_threshold": iou}


# -- image level --------------------------------------------------------------------------------
def _bootstrap(y: np.ndarray, p: np.ndarray, stat, n_boot: int, seed: int) -> tuple[list | None, int]:
    """95 % percentile interval of ``stat`` over image resamples; resamples with one class only
    (where the statistic is undefined) are skipped."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].min() == y[idx].max():
            continue
        values.append(stat(y[idx], p[idx]))
    if not values:
        return None, 0
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)], len(values)


def _check(y, p) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y).astype(int).reshape(-1), np.asarray(p, np.float64).reshape(-1)
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} scores")
    if len(y) and not set(np.unique(y)) <= {0, 1}:
        raise ValueError("labels must be 0 (normal) or 1 (abnormal)")
    return y, p


def auroc_ci(y, p, n_boot: int = 1000, seed: int = 0) -> dict:
    y, p = _check(y, p)
    if len(y) == 0 or y.min() == y.max():
        return {"auroc": None, "ci95": None, "n_boot": 0, "n": len(y)}
    ci, used = _bootstrap(y, p, roc_auc_score, n_boot, seed)
    return {"auroc": float(roc_auc_score(y, p)), "ci95": ci, "n_boot": used, "n": len(y)}


def _sensitivity(y: np.ndarray, p: np.ndarray, fpr: float) -> float:
    fp, tp, _ = roc_curve(y, p, drop_intermediate=False)
    # By hand, because np.interp is undefined on the ROC's vertical steps (repeated FPR): take
    # the top of the step at or below ``fpr`` and go straight to the next point.
    j = int(np.searchsorted(fp, fpr, side="right")) - 1
    if j >= len(fp) - 1:
        return float(tp[-1])
    t = (fpr - fp[j]) / (fp[j + 1] - fp[j])
    return float(tp[j] + t * (tp[j + 1] - tp[j]))


def sensitivity_at_fpr(y, p, fpr: float = 0.015, n_boot: int = 1000, seed: int = 0) -> dict:
    """True-positive rate where the ROC curve (linearly interpolated) reaches ``fpr``."""
    y, p = _check(y, p)
    if len(y) == 0 or y.min() == y.max():
        return {"sensitivity": None, "fpr": fpr, "ci95": None, "n_boot": 0, "n": len(y)}
    ci, used = _bootstrap(y, p, lambda a, b: _sensitivity(a, b, fpr), n_boot, seed)
    return {"sensitivity": _sensitivity(y, p, fpr), "fpr": fpr, "ci95": ci, "n_boot": used, "n": len(y)}


def roc_plot(y, p, path: str | Path, *, fpr: float | None = 0.015, title: str = "ROC") -> Path:
    """PNG of the ROC curve (with the operating FPR marked), written atomically."""
    y, p = _check(y, p)
    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.8", lw=1)
    if len(y) and y.min() != y.max():
        fp, tp, _ = roc_curve(y, p)
        ax.plot(fp, tp, lw=2, label=f"AUROC {roc_auc_score(y, p):.3f}")
        if fpr is not None:
            ax.axvline(fpr, color="tab:red", lw=1, ls="--", label=f"FPR {fpr:g}: sens. {_sensitivity(y, p, fpr):.3f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate", ylabel="sensitivity", title=title)
    fig.tight_layout()
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return write_atomic(path, buf.getvalue())


# -- all of it -------------------------------------------------------------------------------
def image_scores(gt: Sequence, pred: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Image-level truth and score from boxes: abnormal = any ground-truth box; score = the best
    box score (0 without boxes)."""
    gt, pred = [as_detections(g) for g in gt], [as_detections(p) for p in pred]
    return (np.array([int(len(g) > 0) for g in gt]),
            np.array([float(d.scores.max()) if len(d) else 0.0 for d in pred]))


def evaluate(gt: Sequence, pred: Sequence, classes: Sequence[str], *, y_abnormal=None, p_abnormal=None,
             fpr: float = 0.015, n_boot: int = 1000, seed: int = 0, roc_path: str | Path | None = None) -> dict:
    """Everything ``samx eval`` reports, as one JSON-ready dict. Image-level truth and scores
    default to those derived from the boxes (``image_scores``); pass the classifier's
    ``p_abnormal`` to score that instead."""
    y0, p0 = image_scores(gt, pred)
    y = y0 if y_abnormal is None else np.asarray(y_abnormal)
    p = p0 if p_abnormal is None else np.asarray(p_abnormal)
    out = {"n_images": len(gt), "n_abnormal": int(np.sum(y)), "classes": list(classes),
           **detection_map(gt, pred, classes),
           "box_accuracy": box_accuracy(gt, pred),
           "auroc": auroc_ci(y, p, n_boot, seed),
           "sensitivity_at_fpr": sensitivity_at_fpr(y, p, fpr, n_boot, seed),
           "roc_png": str(roc_plot(y, p, roc_path, fpr=fpr)) if roc_path else None}
    out["map50"] = _num(out["map50"])
    out["ap50"] = {k: _num(v) for k, v in out["ap50"].items()}
    return out
