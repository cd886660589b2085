"""Active learning against random selection for the lesion detector, on phantoms with lesions.

A pool of phantoms (radiologists' "unlabelled" images, their true boxes standing in for the
annotations) and a separate test set, half of them with lesions by default (``--lesion-rate``;
in a real dump far fewer images have one). Boxes are one class, "lesion", unless
``--two-classes`` keeps benign / malignant apart: the question here is which images teach the
detector most, and two subtle classes on a few dozen images only add noise to both curves.
Each seed starts both strategies from the same random labelled set and the same detector
trained on it from scratch (``--steps``). Every round ``--step`` more images are labelled: the
top of ml_backend.active_learning's ranking (uncertainty from the detector's scores and a
flipped pass, diversity in its embedding, away from what is labelled) or a random draw; the
round's detector fine-tunes the previous one on everything labelled (``--finetune-steps``, as
``samx train detector --warm-start`` does; 0: from scratch every round) and is judged on the
test set (mAP@0.5, COCO 101-point, pycocotools). Same seeds, same budget, same training.
Printed: mAP against labels for both (mean ± sd over seeds), a PNG plot, and how many labels
active needs to reach random's final mAP (linear between rounds), as a share of random's.

    python bench/active_learning.py [--pool 200] [--test 80] [--start 20] [--step 20] [--rounds 4]
                                    [--seeds 3] [--steps 1200] [--finetune-steps 400] ...

The detector is the small-lesion one: ResNet-18-FPN trained on lesion-centred 96 px tiles of
the 384 px inputs (ml_backend.tiles), AdamW, a fixed number of optimiser steps per training
(epochs alone would starve the small labelled sets), 32 box-head samples per tile and 300 RPN
proposals (torchvision's 512 and 2000 are sized for whole COCO images; with the smaller tile a
CPU step is 2.5 times faster than 128 px tiles with 128 samples and 2000 proposals, and no
worse in a 400-step probe). On whole images from scratch no configuration tried learned these
lesions (test mAP@0.5 about 0.001); on tiles, the number of steps is what counts (60 labels:
400 steps, test mAP 0.002; 1200 steps, 0.047). On 2 CPU cores a step of 8 tiles takes about
0.5 s and a seed about 50 minutes; a GPU takes minutes. Each seed's curves are saved as it
finishes, and a rerun with the same settings resumes after them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
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
    """The detector's input: foreground-aware HE, long side ``size`` (what the product feeds it)."""
    from imaging.reader import read_radiograph
    from imaging.tensor_cache import prepare_tensor

    return prepare_tensor(read_radiograph(path).pixels, size, "fhe", crop_to_body=False, square=False).astype(np.float32)


def load(folder: Path, size: int):
    """Inputs at long side ``size`` and their true boxes in input pixels (x, y, w, h)."""
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
    ap.add_argument("--steps", type=int, default=1200, help="optimiser steps of each seed's first training")
    ap.add_argument("--finetune-steps", type=int, default=400,
                    help="steps of every later round, fine-tuning the previous round's detector "
                         "(0: every round trains from scratch for --steps)")
    ap.add_argument("--size", type=int, default=384,
                    help="long side of the detector's input (phantoms are drawn at it)")
    ap.add_argument("--tile", type=int, default=96, help="training tile in input pixels (0: whole images)")
    ap.add_argument("--tiles-per-image", type=int, default=8)
    ap.add_argument("--arch", default="resnet18_fpn")
    ap.add_argument("--anchors", default="8,16,32,64,128", help="anchor sizes, one per FPN level")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rois-per-image", type=int, default=32, help="box-head samples per tile (a tile holds 1-2 lesions)")
    ap.add_argument("--proposals", type=int, default=300, help="RPN proposals kept per image")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (on a GPU machine: a few)")
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lesion-rate", type=float, default=0.5, help="share of phantoms drawn with lesions")
    ap.add_argument("--two-classes", action="store_true", help="benign / malignant instead of one class 'lesion'")
    a = ap.parse_args()

    from ml_backend.active_learning import priority_scores
    from ml_backend.boxes import Detections
    from ml_backend.detector import LesionDetector
    from ml_backend.metrics import detection_map

    t0 = time.perf_counter()
    drawn = dict(fmt="png", size=a.size, lesion_rate=a.lesion_rate, regions=REGIONS)
    tag = f"{a.size}-{a.lesion_rate:g}"
    pool_dir = cached_phantoms(f"phantoms-lesions-{a.pool}-{tag}", a.pool, seed=31, **drawn)
    test_dir = cached_phantoms(f"phantoms-lesions-test-{a.test}-{tag}", a.test, seed=32, **drawn)
    images, boxes, labels = load(pool_dir, a.size)
    t_images, t_boxes, t_labels = load(test_dir, a.size)
    classes = ["benign", "malignant"]
    if not a.two_classes:
        classes = ["lesion"]
        labels, t_labels = ([["lesion"] * len(x) for x in group] for group in (labels, t_labels))
    gt = [Detections(b, None, lab) for b, lab in zip(t_boxes, t_labels)]
    print(f"pool {len(images)} images ({sum(len(b) > 0 for b in boxes)} with lesions, {sum(map(len, boxes))} "
          f"lesions), test {len(t_images)} ({sum(map(len, t_boxes))} lesions), long side {a.size}; prepared in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)

    # Each seed's curves are kept under bench/out, keyed by every other setting: a run cut short
    # (or split over several calls, as a GPU lease wants) resumes at the first seed not done.
    settings = {k: v for k, v in sorted(vars(a).items()) if k not in ("seeds", "workers")}
    key = hashlib.sha1(json.dumps(settings).encode()).hexdigest()[:10]
    done_dir = OUT / "active_learning"
    done_dir.mkdir(parents=True, exist_ok=True)
    anchors = tuple(int(v) for v in a.anchors.split(","))
    budgets = [a.start + a.step * r for r in range(a.rounds + 1)]
    curves = {"active": np.zeros((a.seeds, len(budgets))), "random": np.zeros((a.seeds, len(budgets)))}

    def train(idx: list[int], seed: int, previous: LesionDetector | None = None) -> LesionDetector:
        """About ``--steps`` optimiser steps whatever the number of labels (epochs alone would
        starve the small sets); with ``previous``, ``--finetune-steps`` starting from its weights."""
        steps, init = a.steps, None
        if previous is not None and a.finetune_steps:
            steps, init = a.finetune_steps, previous.save(done_dir / f"{key}-previous.pt")
        per_epoch = math.ceil(len(idx) * (a.tiles_per_image if a.tile else 1) / a.batch_size)
        return LesionDetector(classes, arch=a.arch, size=a.size, tile=a.tile or None, tiles_per_image=a.tiles_per_image,
                              anchor_sizes=anchors, optimizer=a.optimizer, lr=a.lr, batch_size=a.batch_size,
                              rois_per_image=a.rois_per_image, proposals=a.proposals, init_weights=init,
                              epochs=max(1, round(steps / per_epoch)), workers=a.workers, seed=seed).fit(
            [images[i] for i in idx], [boxes[i] for i in idx], [labels[i] for i in idx])

    def judge(det: LesionDetector) -> float:
        return float(detection_map(gt, det.predict(t_images, score_threshold=0.001), classes)["map50"])

    def run_seed(seed: int) -> dict:
        rng = np.random.default_rng(1000 + seed)
        start = sorted(rng.choice(len(images), a.start, replace=False).tolist())
        det0 = train(start, seed)
        m0 = judge(det0)
        print(f"seed {seed}: {a.start} labels, mAP@0.5 {m0:.3f} (both strategies start here)", flush=True)
        curve = {}
        for strategy in ("active", "random"):
            curve[strategy] = [m0]
            labelled, det = list(start), det0
            pick_rng = np.random.default_rng(2000 + seed)
            for _ in range(a.rounds):
                rest = [i for i in range(len(images)) if i not in set(labelled)]
                if strategy == "random":
                    new = pick_rng.choice(rest, a.step, replace=False).tolist()
                else:
                    analysis = det.analyse([images[i] for i in rest])
                    known = det.embed([images[i] for i in labelled])
                    prio = priority_scores(analysis.uncertainty, analysis.embeddings, batch_size=a.step, labeled=known)
                    new = [rest[i] for i in np.argsort(-prio, kind="stable")[: a.step]]
                labelled += new
                det = train(sorted(labelled), seed, det)
                curve[strategy].append(judge(det))
                with_lesions = sum(len(boxes[i]) > 0 for i in labelled)
                print(f"  seed {seed} {strategy:6s}: {len(labelled):4d} labels ({with_lesions} with lesions), mAP@0.5 "
                      f"{curve[strategy][-1]:.3f}  ({(time.perf_counter() - t0) / 60:.1f} min)", flush=True)
        return curve

    for seed in range(a.seeds):
        done = done_dir / f"{key}-seed{seed}.json"
        if done.exists():
            curve = json.loads(done.read_text())["curves"]
            print(f"seed {seed}: from {done.relative_to(ROOT)}: active {curve['active']}, random {curve['random']}")
        else:
            curve = run_seed(seed)
            done.write_text(json.dumps({"settings": settings, "seed": seed, "curves": curve}))
        for strategy in curves:
            curves[strategy][seed] = curve[strategy]
    (done_dir / f"{key}-previous.pt").unlink(missing_ok=True)

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
