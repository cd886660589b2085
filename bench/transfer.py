"""Transfer learning as SAM-X did it: a region classifier started from the DeepCluster network
trained on every (unlabelled) image, against the same classifier from random weights, and from
ImageNet weights when this machine has them; same labelled images, epochs and seed.

The real development set (../shared/realdev by default) is ingested and clustered by the real
`cluster` job with the product's defaults; then the sorter's network (clustering.sorter.model)
learns the 13 regions from ``--labels`` images per region, with the same number of optimiser steps
for every start, and is judged on a stratified held-out 30% (top-1, abstention ignored). DeepCluster saw the held-out images too, unlabelled, as it sees
every image of an installation: that is the setting SAM-X measured (88.1% against 54.2% from
scratch on their task).

    python bench/transfer.py [REALDEV] [--labels 10 30] [--steps 300] [--seeds 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.real_clustering import OUT, REALDEV, ingest_and_cluster, manifest  # noqa: E402


def imagenet_backbone():
    """torchvision's ResNet18 ImageNet weights in the shared backbone, or why there are none."""
    from training.backbone import Backbone
    from training.weights import WeightsError, load_into

    net = Backbone("resnet18", 64, sobel=False)
    try:
        load_into(net, "imagenet", arch="resnet18", allow_download=False)
    except WeightsError as exc:
        return None, str(exc)
    return net, "torchvision ResNet18 ImageNet weights"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("realdev", nargs="?", type=Path, default=REALDEV)
    ap.add_argument("--labels", type=int, nargs="+", default=[10, 30], help="labelled images per region")
    ap.add_argument("--steps", type=int, default=300,
                    help="the region classifier's optimiser steps (epochs follow from the labelled set's size)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT / "transfer")
    a = ap.parse_args()
    if not (a.realdev / "MANIFEST.tsv").is_file():
        sys.exit(f"no real development set at {a.realdev} (MANIFEST.tsv missing): pass its folder as the argument")

    from sklearn.model_selection import train_test_split
    from sqlalchemy import select

    from backend.database.schema import ClusterRun, Image, ModelVersion
    from backend.images.tensors import load_tensors
    from clustering.deepcluster import DeepCluster
    from clustering.sorter.model import Sorter

    meta = manifest(a.realdev)
    settings, db, run_id, minutes = ingest_and_cluster(a.realdev, a.out, {"k": 30})
    with db.session() as s:
        run = s.get(ClusterRun, run_id)
        model_path = settings.data_dir / s.get(ModelVersion, run.model_version_id).path
        size, method = run.params["size"], run.params["method"]
        rows = s.execute(select(Image.content_hash, Image.store_path, Image.source_path).order_by(Image.id)).all()
    images = load_tensors(settings, [(h, p) for h, p, _ in rows], size=size, method=method)
    regions = sorted({r for r, _ in meta.values()})
    y = np.array([regions.index(meta[str(Path(src).resolve())][0]) for _, _, src in rows])
    pool, test = train_test_split(np.arange(len(y)), test_size=0.3, stratify=y, random_state=0)
    starts = {"scratch": (None, "random weights"),
              "cluster-pretrained": (DeepCluster.load(model_path).backbone_, f"DeepCluster ({minutes:.1f} min)")}
    starts["imagenet"] = imagenet_backbone()
    print(f"{len(pool)} images to label from, {len(test)} held out; DeepCluster took {minutes:.1f} min")

    results: dict[tuple[str, int], list[float]] = {}
    for n in a.labels:
        for seed in range(a.seeds):
            rng = np.random.default_rng(seed)
            train = np.concatenate([rng.choice(pool[y[pool] == c], min(n, int((y[pool] == c).sum())), replace=False)
                                    for c in range(len(regions))])
            for name, (init, why) in starts.items():
                if init is None and name != "scratch":
                    continue
                t = time.perf_counter()
                epochs = max(1, round(a.steps / max(1, len(train) // 64)))  # the same budget for every start
                model = Sorter(regions, epochs=epochs, seed=seed).fit(images[train], y[train], init=init)
                top1 = float((model.predict_proba(images[test]).argmax(1) == y[test]).mean())
                results.setdefault((name, n), []).append(top1)
                print(f"  {n:3d} a region, seed {seed}, {name:18s}: top-1 {top1:.3f} ({time.perf_counter() - t:.0f} s)",
                      flush=True)
    for name, (init, why) in starts.items():
        if init is None and name != "scratch":
            print(f"{name}: not run ({why})")
    print(f"{'labels a region':>16s} " + " ".join(f"{name:>18s}" for name in starts))
    for n in a.labels:
        print(f"{n:16d} " + " ".join(f"{np.mean(results[name, n]):18.3f}" if (name, n) in results else f"{'-':>18s}"
                                     for name in starts))
    n = max(a.labels)
    imagenet = results.get(("imagenet", n))
    print(f"RESULT labels_per_region={n} top1_scratch={np.mean(results['scratch', n]):.3f} "
          f"top1_cluster={np.mean(results['cluster-pretrained', n]):.3f} "
          f"top1_imagenet={'n/a' if imagenet is None else f'{np.mean(imagenet):.3f}'} "
          f"top1_scratch_{min(a.labels)}={np.mean(results['scratch', min(a.labels)]):.3f} "
          f"top1_cluster_{min(a.labels)}={np.mean(results['cluster-pretrained', min(a.labels)]):.3f}")


if __name__ == "__main__":
    main()
