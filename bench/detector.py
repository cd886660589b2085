"""Does the lesion detector learn? Learning curves with the product's default settings.

Phantoms: detectors trained as `samx train detector` trains one (backend.detector.job's
defaults: architecture, tile, batch, learning rate; SAMX_DETECTOR_EPOCHS and _SIZE's defaults)
on 20 / 50 / 100 / 200 labelled phantoms (a seeded draw from a pool of 400, half with lesions,
both classes), from random weights and from the DeepCluster network trained on the whole
unlabelled pool (`samx cluster`'s defaults; resnet18_fpn's body takes its shape), and judged on
200 other phantoms: mAP@0.5 (pycocotools) and image-level sensitivity at 1.5% FPR with the
detector's own best box as the image's score (Zimbalist et al.'s operating point). ``--arch`` and
``--tile`` train another configuration with everything else the same.

Real: the same training on the fracture boxes of the real development set (../shared/realdev,
one class "fracture", every image abnormal, so mAP only), 70% / 30% of its boxed images drawn
with a seed (its README: near-duplicates were removed; patients are unknown).

    python bench/detector.py [REALDEV] [--labels 20 50 100 200] [--seeds 3] [--arch A] [--tile T]
                             [--inits scratch cluster] [--no-real]

Last line: ``RESULT map50=<phantoms, 100 labels, default settings, cluster-pretrained> sensitivity=<same>
map50_scratch=<same from scratch> map50_real=<fractures> ...`` (means over seeds; n/a where not run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.active_learning import REGIONS, load  # noqa: E402
from bench.cached_phantoms import OUT, cached_phantoms  # noqa: E402

REALDEV = ROOT.parent / "shared" / "realdev"
SIZE_AT = 100  # the RESULT line's budget of labels


def default_config(**overrides):
    """The DetectorConfig a first `samx train detector` builds, with the settings' defaults."""
    from dataclasses import fields

    from backend.config import Settings
    from backend.detector.job import DEFAULTS, FIRST_LR
    from ml_backend.models.detector import DetectorConfig

    s = {f.name: f.default for f in fields(Settings)}
    cfg = dict(arch=DEFAULTS.arch, size=s["detector_size"], epochs=s["detector_epochs"],
               batch_size=DEFAULTS.batch_size, lr=FIRST_LR, tile=DEFAULTS.tile)
    return DetectorConfig(**{**cfg, **{k: v for k, v in overrides.items() if v is not None}})


def deepcluster_file(folder: Path, out: Path) -> Path:
    """The DeepCluster network of `samx cluster`'s defaults on every image of ``folder``."""
    from backend.clusters.job import DEFAULTS, cluster_config
    from imaging.reader import read_radiograph
    from imaging.tensor_cache import prepare_tensor
    from clustering.deepcluster import DeepCluster

    path = out / "deepcluster.pt"
    if path.is_file():
        return path
    files = sorted(p for p in (folder / "images").rglob("*") if p.is_file())
    cfg = cluster_config({}, len(files))
    images = np.stack([prepare_tensor(read_radiograph(str(p)).pixels, DEFAULTS.size, DEFAULTS.method) for p in files])
    t = time.perf_counter()
    DeepCluster(cfg).fit(images).save(path)
    print(f"DeepCluster on {len(files)} unlabelled images: {time.perf_counter() - t:.0f} s", flush=True)
    return path


def judge(det, images, boxes, labels, classes) -> dict:
    from ml_backend.models.boxes import Detections
    from ml_backend.models.metrics import detection_map, sensitivity_at_fpr

    pred = det.predict(images, score_threshold=0.001)
    gt = [Detections(b, None, lab) for b, lab in zip(boxes, labels)]
    out = {"map50": detection_map(gt, pred, classes)["map50"]}
    y = np.array([len(b) > 0 for b in boxes], int)
    if 0 < y.sum() < len(y):
        best = np.array([p.scores.max() if len(p) else 0.0 for p in pred])
        out["sensitivity"] = sensitivity_at_fpr(y, best, 0.015, n_boot=0)["sensitivity"]
    return out


def train(cfg, classes, images, boxes, labels):
    from ml_backend.models.detector import LesionDetector

    t = time.perf_counter()
    det = LesionDetector(classes, cfg).fit(images, boxes, labels)
    return det, time.perf_counter() - t


def real_set(realdev: Path, size: int):
    """Inputs at long side ``size`` and their fracture boxes in input pixels."""
    from imaging.reader import read_radiograph
    from imaging.tensor_cache import prepare_tensor

    coco = json.loads((realdev / "boxes.json").read_text())
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    images, boxes = [], []
    for im in coco["images"]:
        if im["id"] not in by_image:
            continue
        x = prepare_tensor(read_radiograph(str(realdev / im["file_name"])).pixels, size, "fhe",
                           crop_to_body=False, square=False).astype(np.float32)
        s = x.shape[1] / im["width"], x.shape[0] / im["height"]
        b = np.array(by_image[im["id"]], np.float32) * np.array([s[0], s[1], s[0], s[1]], np.float32)
        images.append(x)
        boxes.append(b)
    return images, boxes, [["fracture"] * len(b) for b in boxes]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("realdev", nargs="?", type=Path, default=REALDEV)
    ap.add_argument("--labels", type=int, nargs="+", default=[20, 50, 100, 200])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--inits", nargs="+", default=["scratch", "cluster"], choices=["scratch", "cluster"])
    ap.add_argument("--arch", help="another architecture than the product's default")
    ap.add_argument("--tile", type=int, help="train on tiles of this many input pixels")
    ap.add_argument("--epochs", type=int, help="another number of epochs than the product's default")
    ap.add_argument("--no-real", action="store_true", help="phantoms only")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = default_config(arch=a.arch, tile=a.tile, epochs=a.epochs)
    print(f"detector: {cfg.arch}, tile {cfg.tile}, size {cfg.size}, {cfg.epochs} epochs, batch {cfg.batch_size}, "
          f"lr {cfg.lr}", flush=True)
    drawn = dict(fmt="png", size=512, lesion_rate=0.5, regions=REGIONS)
    pool_dir = cached_phantoms("phantoms-lesions-400-512-0.5", 400, seed=31, **drawn)
    test_dir = cached_phantoms("phantoms-lesions-test-200-512-0.5", 200, seed=33, **drawn)
    images, boxes, labels = load(pool_dir, cfg.size)
    t_images, t_boxes, t_labels = load(test_dir, cfg.size)
    classes = ["benign", "malignant"]
    out = OUT / "detector"
    out.mkdir(parents=True, exist_ok=True)
    starts = {"scratch": None}
    if "cluster" in a.inits:
        if cfg.arch == "resnet18_fpn":
            starts["cluster"] = str(deepcluster_file(pool_dir, out))
        else:
            print(f"{cfg.arch}'s body is not the DeepCluster network: no cluster-pretrained start", flush=True)
    starts = {k: v for k, v in starts.items() if k in a.inits}

    curves: dict[str, dict[int, list[dict]]] = {k: {n: [] for n in a.labels} for k in starts}
    for n in a.labels:
        for seed in range(a.seeds):
            idx = np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))
            for start, weights in starts.items():
                c = default_config(arch=a.arch, tile=a.tile, epochs=a.epochs, seed=seed, backbone_weights=weights)
                det, seconds = train(c, classes, [images[i] for i in idx], [boxes[i] for i in idx],
                                     [labels[i] for i in idx])
                r = {**judge(det, t_images, t_boxes, t_labels, classes), "seconds": round(seconds, 1)}
                curves[start][n].append(r)
                print(f"{n:>4} labels, seed {seed}, {start:>7}: mAP@0.5 {r['map50']:.3f}, sensitivity at 1.5% FPR "
                      f"{r.get('sensitivity', float('nan')):.3f} ({seconds / 60:.1f} min)", flush=True)
    (out / "curves.json").write_text(json.dumps({"config": {k: str(v) for k, v in vars(cfg).items()},
                                                  "curves": curves}, indent=1))

    def mean(start: str, key: str) -> str:
        values = [r.get(key) for r in curves.get(start, {}).get(SIZE_AT, []) if r.get(key) is not None]
        return f"{np.mean(values):.3f}" if values else "n/a"

    print("\nlabels  " + "  ".join(f"{s:>22}" for s in curves))
    for n in a.labels:
        cells = []
        for s in curves:
            m = [r["map50"] for r in curves[s][n]]
            cells.append(f"{np.mean(m):.3f} ± {np.std(m):.3f} (n={len(m)})" if m else "n/a")
        print(f"{n:>6}  " + "  ".join(f"{c:>22}" for c in cells))

    map_real = "n/a"
    if not a.no_real:
        if not (a.realdev / "boxes.json").is_file():
            print(f"no real development set at {a.realdev} (boxes.json missing): the real row is skipped")
        else:
            r_images, r_boxes, r_labels = real_set(a.realdev, cfg.size)
            order = np.random.default_rng(0).permutation(len(r_images))
            cut = int(0.7 * len(order))
            tr, te = order[:cut], order[cut:]
            c = default_config(arch=a.arch, tile=a.tile, epochs=a.epochs, seed=0)
            det, seconds = train(c, ["fracture"], [r_images[i] for i in tr], [r_boxes[i] for i in tr],
                                 [r_labels[i] for i in tr])
            r = judge(det, [r_images[i] for i in te], [r_boxes[i] for i in te], [r_labels[i] for i in te], ["fracture"])
            map_real = f"{r['map50']:.3f}"
            print(f"real fractures: {len(tr)} training / {len(te)} test images, from scratch: mAP@0.5 {map_real} "
                  f"({seconds / 60:.1f} min)", flush=True)

    best = "cluster" if "cluster" in curves else "scratch"
    print(f"RESULT map50={mean(best, 'map50')} sensitivity={mean(best, 'sensitivity')} "
          f"map50_scratch={mean('scratch', 'map50')} map50_real={map_real} arch={cfg.arch} tile={cfg.tile} "
          f"labels={SIZE_AT} seeds={a.seeds}")


if __name__ == "__main__":
    main()
