"""Active learning against random selection for the lesion detector, on phantoms with lesions.

A pool of phantoms (radiologists' "unlabelled" images, their true boxes standing in for the
annotations) and a separate test set, half of them with lesions by default (``--lesion-rate``;
in a real dump far fewer images have one). Boxes are one class, "lesion", unless
``--two-classes`` keeps benign / malignant apart: the question here is which images teach the
detector most, and two subtle classes on a few dozen images only add noise to both curves.
Each seed starts both strategies from the same random labelled set and the same detector
trained on it from scratch (``--steps``). Every round ``--step`` more images are labelled: the
top of ml_backend.models.active_learning's ranking (summed score entropy of the image and its mirror,
diversity in the detector's embedding, away from what is labelled) or a random draw; the
round's detector fine-tunes the previous one on everything labelled (``--finetune-steps`` at
``--finetune-lr``, as ``samx train detector --warm-start`` does; 0 steps: from scratch every
round) and is judged on the test set (mAP@0.5, COCO 101-point, pycocotools). Same seeds, same
budget, same training. Printed: mAP against labels for both (mean ± sd over seeds), a PNG plot,
and how many labels active needs to reach random's final mAP (linear between rounds), as a
share of random's. The pool (400) is four times the final budget, as in an annotation project,
where the labelled images are a small part of the dump: with a pool twice the budget (the
earlier default) the last rounds have little left to choose from, whatever the ranking.

    python bench/active_learning.py [--pool 400] [--test 80] [--start 20] [--step 20] [--rounds 4]
                                    [--seeds 3] [--steps 1200] [--finetune-steps 400]
                                    [--finetune-lr 3e-4] [--jobs N] ...

The detector is the small-lesion one: ResNet-18-FPN trained on lesion-centred 96 px tiles of the
384 px inputs (ml_backend.models.tiles), AdamW, a fixed number of optimiser steps per training (epochs
alone would starve the small labelled sets), the normalised box head (``--box-head``: runs
before it had the MLP head, which died from scratch; ml_backend.models.resnet18_fpn), 32 box-head
samples per tile and 300 RPN proposals (torchvision's 512 and 2000 are sized for whole COCO
images; with the smaller tile a CPU step is 2.5 times faster than 128 px tiles with 128 samples
and 2000 proposals, and no worse in a 400-step probe). On whole images from scratch no
configuration tried learned these lesions (test mAP@0.5 about 0.001); on tiles, the number of
steps is what counts (60 labels, MLP head: 400 steps, test mAP 0.002; 1200 steps, 0.047). On 2
CPU cores a step of 8 tiles takes about 0.4 s; the seeds' starting detectors and the strategies'
chains of rounds run as ``--jobs`` processes side by side (2 one-thread jobs there; 3 seeds took
55 to 80 minutes), and a GPU takes minutes. Each starting detector and each chain is saved as it
finishes, and a rerun with the same settings resumes after them; the starts and the random
chains are keyed without the ranking (its code, ``--diversity`` and ``--pool-factor``), so
trying another ranking reruns only the active chains (the starting detectors, 55 MB each, stay
in bench/out for that).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
from bench.cached_phantoms import cached_phantoms  # noqa: E402
from ml_backend.models.resnet18_fpn import BOX_HEADS  # noqa: E402

REGIONS = ["hand", "wrist", "knee", "foot", "pelvis", "spine"]  # lesions sit on long and flat bones
RANKING_CODE = ("uncertainty.py", "active_learning.py")  # saved active chains are reused only with this ranking
RANKING_SETTINGS = ("diversity", "pool_factor", "ranking_code")  # what only the active chains depend on
MEANINGFUL_MAP = 0.05  # below this, "reaching random's mAP" is reaching noise


def _prepare(size: int, path: str) -> np.ndarray:
    """The detector's input: foreground-aware HE, long side ``size`` (what the product feeds it)."""
    from imaging.reader import read_radiograph
    from imaging.tensor_cache import prepare_tensor

    return prepare_tensor(read_radiograph(path).pixels, size, "fhe", crop_to_body=False, square=False).astype(np.float32)


def load(folder: Path, size: int):
    """Inputs at long side ``size`` and their true boxes in input pixels (x, y, w, h)."""
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


_W: dict = {}  # a worker process's data and settings, set once by _init_worker


def _init_worker(state: dict, threads: int) -> None:
    """Small tiles keep two threads poorly busy: on 2 cores, two one-thread jobs do 1.4 times the
    steps per second of one two-thread job."""
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    _W.update(state)


def _train(idx: list[int], seed: int, previous=None):
    """About ``--steps`` optimiser steps whatever the number of labels (epochs alone would starve
    the small sets); with ``previous`` (a saved detector), ``--finetune-steps`` at ``--finetune-lr``
    starting from its weights."""
    from ml_backend.models.detector import LesionDetector

    a, images, boxes, labels = _W["a"], _W["images"], _W["boxes"], _W["labels"]
    steps, lr, init = a.steps, a.lr, None
    if previous is not None and a.finetune_steps:
        steps, lr, init = a.finetune_steps, a.finetune_lr, previous
    per_epoch = math.ceil(len(idx) * (a.tiles_per_image if a.tile else 1) / a.batch_size)
    return LesionDetector(_W["classes"], arch=a.arch, size=a.size, tile=a.tile or None,
                          tiles_per_image=a.tiles_per_image, anchor_sizes=tuple(int(v) for v in a.anchors.split(",")),
                          box_head=a.box_head,
                          optimizer=a.optimizer, lr=lr, batch_size=a.batch_size, rois_per_image=a.rois_per_image,
                          proposals=a.proposals, init_weights=init, epochs=max(1, round(steps / per_epoch)),
                          workers=a.workers, seed=seed).fit(
        [images[i] for i in idx], [boxes[i] for i in idx], [labels[i] for i in idx])


def _judge(det) -> float:
    from ml_backend.models.metrics import detection_map

    return float(detection_map(_W["gt"], det.predict(_W["t_images"], score_threshold=0.001), _W["classes"])["map50"])


def start(seed: int) -> dict:
    """A seed's random starting set and the detector trained on it from scratch, which both
    strategies continue from (saved next to the results)."""
    a = _W["a"]
    rng = np.random.default_rng(1000 + seed)
    labelled = sorted(rng.choice(len(_W["images"]), a.start, replace=False).tolist())
    det = _train(labelled, seed)
    m0 = _judge(det)
    det.save(start_file(_W, seed, "pt"))
    start_file(_W, seed, "json").write_text(json.dumps({"labelled": labelled, "map50": m0}))
    print(f"seed {seed}: {a.start} labels, mAP@0.5 {m0:.3f} (both strategies start here)  "
          f"({(time.time() - _W['wall0']) / 60:.1f} min)", flush=True)
    return {"kind": "start", "seed": seed}


def start_file(state: dict, seed: int, ext: str) -> Path:
    """A seed's starting set and mAP (json) or detector (pt), keyed without the ranking."""
    return Path(f"{state['prefix']}-seed{seed}-start.{ext}")


def chain_file(state: dict, seed: int, strategy: str) -> Path:
    """Random chains are saved with the starts (they do not depend on the ranking), active ones
    under the ranking's key."""
    return Path(f"{state['prefix' if strategy == 'random' else 'active_prefix']}-seed{seed}-{strategy}.json")


def chain(seed: int, strategy: str) -> dict:
    """``--rounds`` rounds of one strategy from the seed's start: pick ``--step`` images, train,
    judge. Saved when done; a rerun returns the saved curve."""
    from ml_backend.models.active_learning import priority_scores
    from ml_backend.models.detector import LesionDetector

    a, images, boxes = _W["a"], _W["images"], _W["boxes"]
    done = chain_file(_W, seed, strategy)
    if done.exists():
        curve = json.loads(done.read_text())["curve"]
        print(f"seed {seed} {strategy}: from {done.name}: {curve}", flush=True)
        return {"kind": "chain", "seed": seed, "strategy": strategy, "curve": curve}
    begun = json.loads(start_file(_W, seed, "json").read_text())
    labelled, previous = list(begun["labelled"]), str(start_file(_W, seed, "pt"))
    det = LesionDetector.load(previous) if strategy == "active" else None  # random picks without it
    curve = [begun["map50"]]
    pick_rng = np.random.default_rng(2000 + seed)
    for _ in range(a.rounds):
        taken = set(labelled)
        rest = [i for i in range(len(images)) if i not in taken]
        if strategy == "random":
            new = pick_rng.choice(rest, a.step, replace=False).tolist()
        else:
            analysis = det.analyse([images[i] for i in rest])
            known = det.embed([images[i] for i in labelled])
            prio = priority_scores(analysis.uncertainty, analysis.embeddings, batch_size=a.step, labeled=known,
                                   diversity=a.diversity, pool_factor=a.pool_factor)
            new = [rest[i] for i in np.argsort(-prio, kind="stable")[: a.step]]
        labelled += new
        det = _train(sorted(labelled), seed, previous)
        previous = str(det.save(done.with_name(f"{done.stem}-previous.pt")))
        curve.append(_judge(det))
        with_lesions = sum(len(boxes[i]) > 0 for i in labelled)
        print(f"  seed {seed} {strategy:6s}: {len(labelled):4d} labels ({with_lesions} with lesions), mAP@0.5 "
              f"{curve[-1]:.3f}  ({(time.time() - _W['wall0']) / 60:.1f} min)", flush=True)
    Path(previous).unlink(missing_ok=True)
    settings = _W["settings"] if strategy == "active" else _W["start_settings"]
    done.write_text(json.dumps({"settings": settings, "seed": seed, "strategy": strategy, "curve": curve}))
    return {"kind": "chain", "seed": seed, "strategy": strategy, "curve": curve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=400)
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
    ap.add_argument("--box-head", default="conv_gn", choices=BOX_HEADS,
                    help="resnet18_fpn's box head; 'mlp' died from scratch (ml_backend.models.resnet18_fpn)")
    ap.add_argument("--anchors", default="8,16,32,64,128", help="anchor sizes, one per FPN level")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rois-per-image", type=int, default=32, help="box-head samples per tile (a tile holds 1-2 lesions)")
    ap.add_argument("--proposals", type=int, default=300, help="RPN proposals kept per image")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (on a GPU machine: a few)")
    ap.add_argument("--jobs", type=int, default=0,
                    help="seeds and strategies trained side by side, sharing the cores (0: 1 on a GPU, else up to 4)")
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of each seed's first training")
    ap.add_argument("--finetune-lr", type=float, default=3e-4,
                    help="peak learning rate of the fine-tuning rounds (the first training's rate undoes what it learned)")
    ap.add_argument("--diversity", type=float, default=0.5,
                    help="weight of diversity against uncertainty in the ranking (the product's default)")
    ap.add_argument("--pool-factor", type=int, default=5,
                    help="the ranking's candidates: this many times --step most uncertain images (the product's default)")
    ap.add_argument("--lesion-rate", type=float, default=0.5, help="share of phantoms drawn with lesions")
    ap.add_argument("--two-classes", action="store_true", help="benign / malignant instead of one class 'lesion'")
    a = ap.parse_args()

    import torch

    from ml_backend.models.boxes import Detections

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
    print(f"pool {len(images)} images ({sum(len(b) > 0 for b in boxes)} with lesions, {sum(map(len, boxes))} "
          f"lesions), test {len(t_images)} ({sum(map(len, t_boxes))} lesions), long side {a.size}; prepared in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)

    # Every piece of work is saved under bench/out, keyed by every setting it depends on: a run
    # cut short (or split over several calls, as a GPU lease wants) resumes where it stopped.
    settings = {k: v for k, v in sorted(vars(a).items()) if k not in ("seeds", "workers", "jobs")}
    settings["ranking_code"] = hashlib.sha1(b"".join((ROOT / "ml_backend" / f).read_bytes() for f in RANKING_CODE)).hexdigest()
    start_settings = {k: v for k, v in settings.items() if k not in RANKING_SETTINGS}
    key, active_key = (hashlib.sha1(json.dumps(s).encode()).hexdigest()[:10] for s in (start_settings, settings))
    done_dir = OUT / "active_learning"
    done_dir.mkdir(parents=True, exist_ok=True)
    budgets = [a.start + a.step * r for r in range(a.rounds + 1)]
    jobs = a.jobs or (1 if torch.cuda.is_available() else min(4, os.cpu_count() or 1))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    state = dict(a=a, settings=settings, start_settings=start_settings, images=images, boxes=boxes, labels=labels, t_images=t_images,
                 classes=classes, gt=[Detections(b, None, lab) for b, lab in zip(t_boxes, t_labels)],
                 prefix=str(done_dir / key), active_prefix=str(done_dir / active_key), wall0=time.time())
    print(f"{jobs} parallel job(s) of {threads} thread(s)", flush=True)

    curves = {"active": np.zeros((a.seeds, len(budgets))), "random": np.zeros((a.seeds, len(budgets)))}
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(state, threads)) as ex:
        # a seed is ready when its start is saved, or both its chains are
        ready = [all(start_file(state, seed, ext).exists() for ext in ("json", "pt"))
                 or all(chain_file(state, seed, strategy).exists() for strategy in curves) for seed in range(a.seeds)]
        # the starts first (the pool runs in order): their chains are the longest path
        pending = {ex.submit(start, seed) for seed in range(a.seeds) if not ready[seed]}
        pending |= {ex.submit(chain, seed, strategy) for seed in range(a.seeds) if ready[seed] for strategy in curves}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    result = f.result()
                    if result["kind"] == "start":
                        pending |= {ex.submit(chain, result["seed"], strategy) for strategy in curves}
                    else:
                        curves[result["strategy"]][result["seed"]] = result["curve"]
        except BaseException:  # one job failed (or Ctrl-C): do not start the queued ones
            ex.shutdown(wait=False, cancel_futures=True)
            raise
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
