"""Active learning against random selection for the lesion detector, on phantoms with lesions.

A pool of phantoms (radiologists' "unlabelled" images, their true boxes standing in for the
annotations) and a separate test set. Each seed starts both strategies from the same random
labelled set; every round the detector is trained from scratch on what is labelled and judged
on the test set (mAP@0.5, COCO 101-point, pycocotools), then ``--step`` more images are
labelled: the top of ml_backend.active_learning's ranking (uncertainty from the detector's
scores and a flipped pass, diversity in its embedding, away from what is labelled) or a
random draw. Same seeds, same budget, same training. Printed: mAP against labels for both
(mean ± sd over seeds), a PNG plot, and how many labels active needs to reach random's final
mAP (linear between rounds), as a share of random's.

    python bench/active_learning.py [--pool 200] [--test 80] [--start 20] [--step 20] [--rounds 4]
                                    [--seeds 3] [--epochs 12] [--size 256]

Slow on a CPU: about 0.7 s per image and epoch at long side 256 on 2 cores, so the defaults
(27 trainings) take hours; a GPU takes minutes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
from bench.cached_phantoms import cached_phantoms  # noqa: E402

REGIONS = ["hand", "wrist", "knee", "foot", "pelvis", "spine"]  # lesions sit on long and flat bones
MEANINGFUL_MAP = 0.05  # below this, "reaching random's mAP" is reaching noise


def _prepare(size: int, path: str) -> np.ndarray:
    from imaging.reader import read_radiograph
    from imaging.tensor_cache import prepare_tensor

    return prepare_tensor(read_radiograph(path).pixels, size, "fhe", crop_to_body=False, square=False).astype(np.float32)


def load(folder: Path, size: int):
    """Inputs at long side ``size`` and their true boxes in input pixels (x, y, w, h)."""
    import json
    import multiprocessing
    from functools import partial

    truth = json.loads((folder / "truth.json").read_text())["images"]
    with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 1) as pool:
        images = pool.map(partial(_prepare, size), [str(folder / e["file"]) for e in truth], chunksize=8)
    boxes, labels = [], []
    for e, x in zip(truth, images):
        s = x.shape[1] / e["width"], x.shape[0] / e["height"]
        b = np.array([les["box"] for les in e["lesions"]], np.float32).reshape(-1, 4)
        b = np.stack([b[:, 0] * s[0], b[:, 1] * s[1], (b[:, 2] - b[:, 0]) * s[0], (b[:, 3] - b[:, 1]) * s[1]], 1)
        boxes.append(b)
        labels.append([les["label"] for les in e["lesions"]])
    return images, boxes, labels


def labels_to_match(budgets: list[int], curve: np.ndarray, target: float) -> float | None:
    """The (interpolated) number of labels at which ``curve`` first reaches ``target``."""
    for k, value in enumerate(curve):
        if value >= target:
            if k == 0:
                return float(budgets[0])
            lo, hi = curve[k - 1], value
            return budgets[k - 1] + (budgets[k] - budgets[k - 1]) * (target - lo) / max(hi - lo, 1e-12)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=200)
    ap.add_argument("--test", type=int, default=80)
    ap.add_argument("--start", type=int, default=20)
    ap.add_argument("--step", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--size", type=int, default=256)
    a = ap.parse_args()

    from ml_backend.active_learning import priority_scores
    from ml_backend.boxes import Detections
    from ml_backend.detector import LesionDetector
    from ml_backend.metrics import detection_map

    t0 = time.perf_counter()
    pool_dir = cached_phantoms(f"phantoms-lesions-{a.pool}", a.pool, seed=31, fmt="png", size=384, lesion_rate=0.8,
                               regions=REGIONS)
    test_dir = cached_phantoms(f"phantoms-lesions-test-{a.test}", a.test, seed=32, fmt="png", size=384,
                               lesion_rate=0.8, regions=REGIONS)
    images, boxes, labels = load(pool_dir, a.size)
    t_images, t_boxes, t_labels = load(test_dir, a.size)
    classes = ["benign", "malignant"]
    gt = [Detections(b, None, lab) for b, lab in zip(t_boxes, t_labels)]
    n_boxes = sum(len(b) for b in boxes)
    print(f"pool {len(images)} images ({n_boxes} lesions), test {len(t_images)} ({sum(len(b) for b in t_boxes)} "
          f"lesions), long side {a.size}; prepared in {time.perf_counter() - t0:.0f} s", flush=True)

    budgets = [a.start + a.step * r for r in range(a.rounds + 1)]
    curves = {"active": np.zeros((a.seeds, len(budgets))), "random": np.zeros((a.seeds, len(budgets)))}

    def train(idx: list[int], seed: int) -> LesionDetector:
        return LesionDetector(classes, size=a.size, epochs=a.epochs, seed=seed).fit(
            [images[i] for i in idx], [boxes[i] for i in idx], [labels[i] for i in idx])

    def judge(det: LesionDetector) -> float:
        return float(detection_map(gt, det.predict(t_images), classes)["map50"])

    for seed in range(a.seeds):
        rng = np.random.default_rng(1000 + seed)
        start = sorted(rng.choice(len(images), a.start, replace=False).tolist())
        det0 = train(start, seed)
        m0 = judge(det0)
        print(f"seed {seed}: {a.start} labels, mAP@0.5 {m0:.3f} (both strategies start here)", flush=True)
        for strategy in ("active", "random"):
            curves[strategy][seed, 0] = m0
            labelled, det = list(start), det0
            pick_rng = np.random.default_rng(2000 + seed)
            for r in range(1, a.rounds + 1):
                rest = [i for i in range(len(images)) if i not in set(labelled)]
                if strategy == "random":
                    new = pick_rng.choice(rest, a.step, replace=False).tolist()
                else:
                    analysis = det.analyse([images[i] for i in rest])
                    known = det.embed([images[i] for i in labelled])
                    prio = priority_scores(analysis.uncertainty, analysis.embeddings, batch_size=a.step, labeled=known)
                    new = [rest[i] for i in np.argsort(-prio, kind="stable")[: a.step]]
                labelled += new
                det = train(sorted(labelled), seed)
                curves[strategy][seed, r] = judge(det)
                print(f"  seed {seed} {strategy:6s}: {len(labelled):4d} labels, mAP@0.5 {curves[strategy][seed, r]:.3f}"
                      f"  ({(time.perf_counter() - t0) / 60:.1f} min)", flush=True)

    mean = {k: v.mean(0) for k, v in curves.items()}
    sd = {k: v.std(0) for k, v in curves.items()}
    print(f"\n{'labels':>7} | {'active mAP@0.5':>16} | {'random mAP@0.5':>16}")
    for k, n in enumerate(budgets):
        print(f"{n:7d} | {mean['active'][k]:.3f} ± {sd['active'][k]:.3f}    | {mean['random'][k]:.3f} ± {sd['random'][k]:.3f}")
    final_random, final_active = float(mean["random"][-1]), float(mean["active"][-1])
    needed = labels_to_match(budgets, mean["active"], final_random)
    fraction = needed / budgets[-1] if needed is not None else float("nan")
    if final_random < MEANINGFUL_MAP:
        fraction = float("nan")
        print(f"random's final mAP {final_random:.3f} is below {MEANINGFUL_MAP}: the detector learned (next to) "
              "nothing, so there is nothing to match; no fraction is reported")
    elif needed is None:
        print(f"active never reached random's final mAP {final_random:.3f} within {budgets[-1]} labels")
    else:
        print(f"active reaches random's final mAP {final_random:.3f} with {needed:.0f} labels: "
              f"{fraction:.2f} of random's {budgets[-1]} (target: <= 0.70)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, colour in (("active", "tab:red"), ("random", "tab:blue")):
        ax.errorbar(budgets, mean[k], yerr=sd[k], label=k, color=colour, marker="o", capsize=3)
    ax.set(xlabel="labelled images", ylabel="test mAP@0.5", title=f"Active vs random selection ({a.seeds} seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = OUT / "active_learning.png"
    fig.savefig(png, dpi=120)
    print(f"plot: {png}; {(time.perf_counter() - t0) / 60:.1f} min on {os.cpu_count()} cores")
    print(f"RESULT labels_fraction_to_match_random={fraction:.2f} final_map_active={final_active:.3f} "
          f"final_map_random={final_random:.3f}")


if __name__ == "__main__":
    main()
