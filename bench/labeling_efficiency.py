"""How many radiographs one radiologist decision labels, and how well.

2,000 phantoms of 8 regions are ingested, clustered by the real `cluster` job (DeepCluster,
K=50) and then named by a simulated radiologist through the same decision service the web page
uses (backend/demo/simulated_radiologist.py: it names pure clusters and merges them by region,
splits mixed ones, discards what stays mixed).
Also printed: the same labels named one cluster at a time (one decision per cluster, as SAM-X
counted), k-means on the untrained network's features (the baseline), and at K = 8 regions.

    python bench/labeling_efficiency.py [--n 2000] [--k 50] [--epochs 30] [--purity 0.8]
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
OUT = ROOT / "bench" / "out"
from bench.cached_phantoms import cached_phantoms  # noqa: E402
from bench.fresh_database import fresh_database  # noqa: E402
from backend.demo.simulated_radiologist import name_clusters  # noqa: E402

REGIONS = ["hand", "wrist", "knee", "foot", "pelvis", "chest", "spine", "skull"]


def phantoms(n: int) -> Path:
    return cached_phantoms(f"phantoms-mixed-{n}", n, seed=11, fmt="mixed", regions=REGIONS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--purity", type=float, default=0.8, help="Name a cluster when this share agrees.")
    a = ap.parse_args()

    from sqlalchemy import select

    from backend.images.ingest import ingest_paths
    import backend.cli.job_kinds  # noqa: F401  # registers the job handlers, as the samx command does
    from backend.jobs import enqueue, execute
    from backend.database.schema import ClusterRun, Image, Label, ModelVersion, WeakLabel
    from backend.clusters.arrays import load_arrays
    from backend.images.tensors import load_tensors
    from backend.database.users import create_user
    from clustering.deepcluster import DeepCluster
    from clustering.stats import nmi, weighted_purity

    folder = phantoms(a.n)
    truth_by_file = {str((folder / e["file"]).resolve()): e["region"]
                     for e in json.loads((folder / "truth.json").read_text())["images"]}
    settings, db = fresh_database(OUT / f"labeling-{a.n}")
    t = time.perf_counter()
    ingested = ingest_paths(db, [folder / "images"]).by_status["imported"]
    print(f"ingested {ingested} images in {time.perf_counter() - t:.0f} s", flush=True)

    # --- DeepCluster, timed as a user would run it -------------------------------------------
    job = enqueue(db, "cluster", {"k": a.k, "epochs": a.epochs, "size": a.size, "width": a.width}, send=False)
    t = time.perf_counter()
    last = [""]

    def show(done, total, msg):
        if msg != last[0] and msg and "epoch" in msg and "training" in msg:
            print(f"  {time.perf_counter() - t:6.0f} s  {msg}", flush=True)
        last[0] = msg

    finished = execute(db, job.id, on_progress=show)
    minutes = (time.perf_counter() - t) / 60
    assert finished.status.value == "succeeded", finished.error
    run_id = finished.result["run_id"]
    arrays = load_arrays(settings, run_id)
    with db.session() as s:
        path_of = dict(s.execute(select(Image.id, Image.source_path)).all())
        stored = {i: (h, p) for i, h, p in s.execute(select(Image.id, Image.content_hash, Image.store_path))}
        run = s.get(ClusterRun, run_id)
        hist, model_path = run.metrics["history"], settings.data_dir / s.get(ModelVersion, run.model_version_id).path
    truth = np.array([truth_by_file[str(Path(path_of[int(i)]).resolve())] for i in arrays.image_ids])
    images = load_tensors(settings, [stored[int(i)] for i in arrays.image_ids], size=a.size)  # cached by the job
    purity = weighted_purity(arrays.assignments, truth)
    at_regions = DeepCluster.load(model_path).recluster(images, len(REGIONS))
    nmi8 = nmi(at_regions, truth)
    print(f"DeepCluster: {a.epochs} epochs, K={a.k}, {minutes:.1f} min on {os.cpu_count()} cores")
    print("  consecutive-epoch NMI: " + " ".join(f"{h['nmi_prev']:.3f}" for h in hist if h["nmi_prev"] is not None))
    print(f"  K={a.k}: weighted purity {purity:.3f}, NMI {nmi(arrays.assignments, truth):.3f}")
    print(f"  K={len(REGIONS)} (the trained network's features re-clustered): NMI {nmi8:.3f}, "
          f"purity {weighted_purity(at_regions, truth):.3f}")

    # --- baseline: the same network untrained, the same whitening and k-means ----------------
    base = DeepCluster(k=a.k, epochs=0).fit(images)
    base_purity = weighted_purity(base.labels_, truth)
    base_nmi8 = nmi(base.recluster(images, len(REGIONS)), truth)
    print(f"baseline (untrained network + k-means): K={a.k} purity {base_purity:.3f}; "
          f"K={len(REGIONS)} NMI {base_nmi8:.3f}")

    # --- the simulated radiologist ------------------------------------------------------------
    region_of = dict(zip(arrays.image_ids.tolist(), truth.tolist()))
    radiologist = create_user(db, "sim-radiologist", "simulated-radiologist-pw", "radiologist")
    naming = name_clusters(db, run_id, region_of, radiologist, purity=a.purity)
    decisions = naming.decisions
    with db.session() as s:
        current = s.execute(select(WeakLabel.image_id, Label.name).join(Label, Label.id == WeakLabel.label_id)
                            .where(WeakLabel.superseded_at.is_(None))).all()
    labelled = len(current)
    correct = sum(region_of[i] == name for i, name in current)
    accuracy = correct / max(labelled, 1)
    n_decisions = sum(decisions.values())
    per_cluster = decisions["split"] + decisions["discard"] + naming.named_clusters
    print(f"simulated radiologist (name at purity >= {a.purity}): {dict(decisions)}")
    print(f"  {labelled} of {len(truth)} images labelled by {n_decisions} decisions: "
          f"{labelled / n_decisions:.1f} images per decision, weak-label accuracy {accuracy:.3f}")
    print(f"  naming one cluster at a time instead of merging: {per_cluster} decisions, "
          f"{labelled / per_cluster:.1f} images per decision")
    print(f"RESULT images_per_decision={labelled / n_decisions:.1f} accuracy={accuracy:.3f} purity={purity:.3f} "
          f"nmi={nmi8:.3f} images_per_decision_one_by_one={labelled / per_cluster:.1f} "
          f"baseline_purity={base_purity:.3f} baseline_nmi={base_nmi8:.3f} "
          f"nmi_consecutive={hist[-1]['nmi_prev']:.3f} minutes={minutes:.1f}")


if __name__ == "__main__":
    main()
