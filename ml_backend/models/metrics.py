"""The papers' metrics, computed by the libraries people check them with.

* mAP@0.5 (VinDr-SpineXR): pycocotools' COCOeval at the single IoU threshold 0.5, 101-point
  interpolated precision, all box areas, up to ``max_dets`` boxes an image. A class with no
  ground-truth box in the set has no AP (None here): it is left out of the mean rather than
  counted as 0 or 1, as COCOeval does. Images without ground truth still count: their boxes
  are false positives.
* Box accuracy: the share of ground-truth boxes found by a predicted box of the same class with
  IoU > 0.5 (greedy, best score first), and the mean IoU of those matches; over every box shown
  and, as the papers report it, over the boxes at or above the operating score (mean IoU +- SD,
  bootstrap intervals).
* AUROC (sklearn) and sensitivity at a fixed false-positive rate (Zimbalist et al.: 1.5 %),
  each with a 95 % percentile-bootstrap interval over images.

Every interval takes 10,000 resamples of the images, the papers' number. A Python loop calling
sklearn per resample took 2 ms (AUROC) and 0.7 ms (sensitivity) a resample on 500 images: 27 s
for the two intervals. So the resamples are drawn as count matrices and each statistic is computed
for a chunk of them at once with numpy (0.15 s an interval).

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


def _matches(gt: Sequence, pred: Sequence, iou: float, score_threshold: float) -> tuple[list[int], list[list[float]]]:
    """Per image: its ground-truth boxes and the IoUs of those found. Greedy by score: each
    predicted box (at or above ``score_threshold``) takes the unmatched same-class ground-truth
    box it overlaps most, if IoU > ``iou``."""
    gt, pred = [as_detections(g) for g in gt], [as_detections(p) for p in pred]
    if len(gt) != len(pred):
        raise ValueError(f"{len(gt)} ground-truth images but {len(pred)} predicted")
    n_gt, found = [], []
    for g, p in zip(gt, pred):
        n_gt.append(len(g))
        found.append([])
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
                found[-1].append(float(cand[j]))
    return n_gt, found


def box_accuracy(gt: Sequence, pred: Sequence, iou: float = 0.5, score_threshold: float = 0.0) -> dict:
    """The share of ground-truth boxes found (``_matches``), the mean IoU of the matches and
    its SD (n - 1)."""
    return _accuracy(*_matches(gt, pred, iou, score_threshold), iou)


def _accuracy(n_gt: list[int], found: list[list[float]], iou: float) -> dict:
    ious = [v for f in found for v in f]
    return {"accuracy": len(ious) / sum(n_gt) if sum(n_gt) else None,
            "mean_iou": float(np.mean(ious)) if ious else None,
            "sd_iou": float(np.std(ious, ddof=1)) if len(ious) > 1 else None,
            "n_gt": sum(n_gt), "n_matched": len(ious), "iou_threshold": iou}


def box_accuracy_ci(gt: Sequence, pred: Sequence, iou: float = 0.5, score_threshold: float = 0.5,
                    n_boot: int = 10_000, seed: int = 0) -> dict:
    """``box_accuracy`` of the boxes a reader acts on (score at or above the operating score), with
    95 % percentile intervals over image resamples: boxes of one radiograph are not independent,
    so the image is the unit resampled. Resamples without a ground-truth box (accuracy) or
    without a match (mean IoU) are skipped."""
    n_gt, found = _matches(gt, pred, iou, score_threshold)
    out = _accuracy(n_gt, found, iou) | {"score_threshold": score_threshold}
    n_gt, hit = np.array(n_gt, np.float64), np.array([len(f) for f in found], np.float64)
    iou_sum = np.array([sum(f) for f in found], np.float64)
    acc, mean_iou = [], []
    for w in _resample_counts(len(n_gt), n_boot if len(n_gt) else 0, seed):
        g, m, s = w @ n_gt, w @ hit, w @ iou_sum
        acc.append(m[g > 0] / g[g > 0])
        mean_iou.append(s[m > 0] / m[m > 0])
    (out["accuracy_ci95"], out["n_boot"]), (out["mean_iou_ci95"], out["n_boot_iou"]) = (
        _percentile_ci(acc), _percentile_ci(mean_iou))
    return out


# -- image level --------------------------------------------------------------------------------
def _resample_counts(n: int, n_boot: int, seed: int, bins: np.ndarray | None = None, k: int | None = None,
                     chunk_cells: int = 2_000_000):
    """(b, k) chunks of counts: how often each resample draws each image (``bins`` None: the
    multinomial weights) or any image of each bin (``bins``: an image's bin, 0..k-1). The draws
    are those of a loop of ``rng.integers(0, n, n)``, so a seed means the same resamples as the
    old loop's; chunks keep memory bounded (tens of MB) whatever n_boot is."""
    bins, k = (np.arange(n), n) if bins is None else (np.asarray(bins), k)
    rng = np.random.default_rng(seed)
    rows = max(1, chunk_cells // max(n, k, 1))
    for start in range(0, n_boot, rows):
        b = min(rows, n_boot - start)
        idx = bins[rng.integers(0, n, (b, n))] + k * np.arange(b)[:, None]
        yield np.bincount(idx.ravel(), minlength=b * k).reshape(b, k)


def _percentile_ci(values: list[np.ndarray]) -> tuple[list | None, int]:
    values = np.concatenate(values) if values else np.zeros(0)
    if not len(values):
        return None, 0
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)], len(values)


def _score_counts(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int):
    """(pos, neg) chunks, (b, k) floats: each resample's abnormal and normal images at each
    distinct score, ascending; only resamples with both classes (else AUROC and sensitivity are
    undefined: skipped, as before). Binning by score while counting the draws sorts once for all."""
    u, inv = np.unique(p, return_inverse=True)
    for c in _resample_counts(len(y), n_boot, seed, bins=2 * inv + y, k=2 * len(u)):
        neg, pos = c[:, 0::2].astype(np.float64), c[:, 1::2].astype(np.float64)
        keep = (pos.sum(1) > 0) & (neg.sum(1) > 0)
        yield pos[keep], neg[keep]


def _auroc_of_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC of each resample, ties counted half: roc_auc_score of the resample
    spelled out as indices (exact integer sums, one division)."""
    below = np.cumsum(neg, axis=1) - neg
    return (pos * (2 * below + neg)).sum(1) / (2 * pos.sum(1) * neg.sum(1))


def _sensitivity_of_counts(pos: np.ndarray, neg: np.ndarray, fpr: float) -> np.ndarray:
    """``_sensitivity`` of each resample, the same arithmetic. Scores a resample does not draw add
    repeated points to its ROC curve, which leave the step rule's two points (the last at or
    below ``fpr`` and the next) where they are."""
    zero = np.zeros((len(pos), 1))
    tps, fps = np.hstack([zero, np.cumsum(pos[:, ::-1], 1)]), np.hstack([zero, np.cumsum(neg[:, ::-1], 1)])
    tp, fp = tps / tps[:, -1:], fps / fps[:, -1:]
    j = (fp <= fpr).sum(1) - 1
    j1 = np.minimum(j + 1, fp.shape[1] - 1)
    r = np.arange(len(j))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (fpr - fp[r, j]) / (fp[r, j1] - fp[r, j])
        out = tp[r, j] + t * (tp[r, j1] - tp[r, j])
    return np.where(j >= fp.shape[1] - 1, tp[:, -1], out)


def _bootstrap(y: np.ndarray, p: np.ndarray, stat, n_boot: int, seed: int) -> tuple[list | None, int]:
    """95 % percentile interval of ``stat(pos, neg)`` over image resamples, and how many
    resamples had both classes."""
    return _percentile_ci([stat(pos, neg) for pos, neg in _score_counts(y, p, n_boot, seed)])


def _check(y, p) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y).astype(int).reshape(-1), np.asarray(p, np.float64).reshape(-1)
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} scores")
    if len(y) and not set(np.unique(y)) <= {0, 1}:
        raise ValueError("labels must be 0 (normal) or 1 (abnormal)")
    return y, p


def auroc_ci(y, p, n_boot: int = 10_000, seed: int = 0) -> dict:
    y, p = _check(y, p)
    if len(y) == 0 or y.min() == y.max():
        return {"auroc": None, "ci95": None, "n_boot": 0, "n": len(y)}
    ci, used = _bootstrap(y, p, _auroc_of_counts, n_boot, seed)
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


def sensitivity_at_fpr(y, p, fpr: float = 0.015, n_boot: int = 10_000, seed: int = 0) -> dict:
    """True-positive rate where the ROC curve (linearly interpolated) reaches ``fpr``."""
    y, p = _check(y, p)
    if len(y) == 0 or y.min() == y.max():
        return {"sensitivity": None, "fpr": fpr, "ci95": None, "n_boot": 0, "n": len(y)}
    ci, used = _bootstrap(y, p, lambda pos, neg: _sensitivity_of_counts(pos, neg, fpr), n_boot, seed)
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
             raw: Sequence | None = None, fpr: float = 0.015, box_score: float = 0.5, n_boot: int = 10_000,
             seed: int = 0, roc_path: str | Path | None = None) -> dict:
    """Everything ``samx eval`` reports, as one JSON-ready dict. ``pred``: the boxes shown (after
    fusion); ``raw``: the detector's own before fusion (default ``pred``). Image-level truth and
    scores default to those derived from the boxes (``image_scores``); with the classifier's
    ``p_abnormal`` "auroc" and "sensitivity_at_fpr" score that, and "best_box" always scores the
    detector alone (Zimbalist et al.), so the two can be compared on the same images.
    ``box_score``: the operating score of "box_accuracy_at_operating_point" (the fusion's)."""
    y0, p0 = image_scores(gt, pred if raw is None else raw)
    y = y0 if y_abnormal is None else np.asarray(y_abnormal)
    p = p0 if p_abnormal is None else np.asarray(p_abnormal)
    image = {"auroc": auroc_ci(y, p, n_boot, seed), "sensitivity_at_fpr": sensitivity_at_fpr(y, p, fpr, n_boot, seed)}
    best_box = image if p_abnormal is None else {"auroc": auroc_ci(y, p0, n_boot, seed),
                                                 "sensitivity_at_fpr": sensitivity_at_fpr(y, p0, fpr, n_boot, seed)}
    out = {"n_images": len(gt), "n_abnormal": int(np.sum(y)), "classes": list(classes),
           **detection_map(gt, pred, classes),
           "box_accuracy": box_accuracy(gt, pred),
           "box_accuracy_at_operating_point": box_accuracy_ci(gt, pred, score_threshold=box_score, n_boot=n_boot,
                                                              seed=seed),
           **image, "best_box": dict(best_box),
           "image_score": "classifier" if p_abnormal is not None else "best box",
           "roc_png": str(roc_plot(y, p, roc_path, fpr=fpr)) if roc_path else None}
    out["map50"] = _num(out["map50"])
    out["ap50"] = {k: _num(v) for k, v in out["ap50"].items()}
    return out
