"""Clustering real radiographs: `samx cluster` on the real development set, named by a simulated
radiologist who knows each image's true region.

The set (../shared/realdev by default: 1,424 radiographs of 13 regions from public sources, never
part of the repository) is ingested into a fresh installation and clustered by the real `cluster`
job with the product's defaults (K=30 unless told). Printed beside it, on the same images in the
same run: the floors, raw pixels (the 64 px inputs, PCA-50, k-means) and HOG descriptors (128 px,
PCA-50, k-means). Region is partly confounded with source in this set (a region from one source
can be told apart by the source's style), so the NMI within each source that holds several
regions is reported too: there only anatomy separates them.

    python bench/real_clustering.py [REALDEV] [--k 30] [--set epochs=40 --set width=64 ...]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
REALDEV = ROOT.parent / "shared" / "realdev"
from bench.fresh_database import fresh_database  # noqa: E402


def manifest(realdev: Path) -> dict[str, tuple[str, str]]:
    """Resolved file path -> (region, source) from the set's MANIFEST.tsv."""
    with open(realdev / "MANIFEST.tsv", newline="") as f:
        return {str((realdev / r["file"]).resolve()): (r["region"], r["source_repo"])
                for r in csv.DictReader(f, delimiter="\t")}


def floor(features: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """PCA-50 + k-means (best of 3 starts): what any image feature gives without learning."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    x = PCA(n_components=min(50, *features.shape), random_state=seed).fit_transform(features.astype(np.float32))
    return KMeans(k, n_init=3, random_state=seed).fit_predict(x)


def hog_features(images: np.ndarray) -> np.ndarray:
    from skimage.feature import hog

    return np.stack([hog(im.astype(np.float32), orientations=9, pixels_per_cell=(16, 16), cells_per_block=(2, 2))
                     for im in images])


def within_source_nmi(model, images: np.ndarray, truth: np.ndarray, source: np.ndarray) -> tuple[float, dict]:
    """Each source holding several regions re-clustered alone at its number of regions; the NMI
    against the true regions, averaged over sources weighted by their images."""
    from clustering.stats import nmi

    per = {}
    for src in sorted(set(source)):
        rows = np.flatnonzero(source == src)
        regions = len(set(truth[rows]))
        if regions < 2 or len(rows) < 4 * regions:
            continue
        per[src] = (nmi(model.recluster(images[rows], regions), truth[rows]), len(rows), regions)
    total = sum(n for _, n, _ in per.values())
    return sum(v * n for v, n, _ in per.values()) / max(total, 1), per


def ingest_and_cluster(realdev: Path, out: Path, params: dict):
    """A fresh installation at ``out`` holding the real set, clustered by the real `cluster` job
    with ``params``: (settings, db, run id, minutes the job took)."""
    from sqlalchemy import select

    import backend.cli.job_kinds  # noqa: F401  # registers the job handlers, as the samx command does
    from backend.database.schema import Label, LabelKind
    from backend.images.ingest import ingest_paths
    from backend.jobs import enqueue, execute

    regions = sorted({r for r, _ in manifest(realdev).values()})
    settings, db = fresh_database(out)
    t = time.perf_counter()
    ingested = ingest_paths(db, [realdev / "images"]).by_status
    print(f"ingested {dict(ingested)} in {time.perf_counter() - t:.0f} s", flush=True)
    with db.session() as s:  # the set's region names, as an admin adds them to the vocabulary
        have = set(s.scalars(select(Label.name).where(Label.kind == LabelKind.region)))
        s.add_all(Label(kind=LabelKind.region, name=r, sort_order=100 + i) for i, r in enumerate(regions)
                  if r not in have)
    job = enqueue(db, "cluster", params, send=False)
    t = time.perf_counter()
    last = [""]

    def show(done, total, msg):
        if msg != last[0] and msg and "training" in msg:
            print(f"  {time.perf_counter() - t:6.0f} s  {msg}", flush=True)
        last[0] = msg

    finished = execute(db, job.id, on_progress=show)
    assert finished.status.value == "succeeded", finished.error
    return settings, db, finished.result["run_id"], (time.perf_counter() - t) / 60


def parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)  # numbers, true/false, lists
        except json.JSONDecodeError:
            out[key] = value  # a plain word: a method's name
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("realdev", nargs="?", type=Path, default=REALDEV)
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a cluster job parameter or DeepClusterConfig field (e.g. epochs=40, size=128, width=64)")
    ap.add_argument("--purity", type=float, default=0.8, help="the simulated radiologist names a cluster this pure")
    ap.add_argument("--out", type=Path, default=OUT / "real-clustering")
    a = ap.parse_args()
    if not (a.realdev / "MANIFEST.tsv").is_file():
        sys.exit(f"no real development set at {a.realdev} (MANIFEST.tsv missing): pass its folder as the argument")

    from sqlalchemy import select

    from backend.clusters.arrays import load_arrays
    from backend.database.schema import ClusterRun, Image, Label, ModelVersion, WeakLabel
    from backend.database.users import create_user
    from backend.demo.simulated_radiologist import name_clusters
    from backend.images.tensors import load_tensors
    from clustering.deepcluster import DeepCluster
    from clustering.stats import nmi, weighted_purity

    meta = manifest(a.realdev)
    regions = sorted({r for r, _ in meta.values()})
    params = {"k": a.k, **parse_sets(a.set)}
    settings, db, run_id, minutes = ingest_and_cluster(a.realdev, a.out, params)
    arrays = load_arrays(settings, run_id)
    with db.session() as s:
        run = s.get(ClusterRun, run_id)
        path_of = dict(s.execute(select(Image.id, Image.source_path)).all())
        stored = {i: (h, p) for i, h, p in s.execute(select(Image.id, Image.content_hash, Image.store_path))}
        model_path = settings.data_dir / s.get(ModelVersion, run.model_version_id).path
        size, method = run.params["size"], run.params["method"]
    truth, source = (np.array(v) for v in zip(*(meta[str(Path(path_of[int(i)]).resolve())] for i in arrays.image_ids)))
    model = DeepCluster.load(model_path)
    images = load_tensors(settings, [stored[int(i)] for i in arrays.image_ids], size=size, method=method)
    purity = weighted_purity(arrays.assignments, truth)
    at_regions = model.recluster(images, len(regions))
    nmi_regions = nmi(at_regions, truth)
    within, per_source = within_source_nmi(model, images, truth, source)
    print(f"samx cluster {params}: {len(truth)} images, {minutes:.1f} min on {os.cpu_count()} cores")
    print(f"  K={a.k}: weighted purity {purity:.3f}, NMI {nmi(arrays.assignments, truth):.3f}")
    print(f"  K={len(regions)} (re-clustered): NMI {nmi_regions:.3f}, purity {weighted_purity(at_regions, truth):.3f}")
    for src, (v, n, r) in per_source.items():
        print(f"  within {src} ({n} images, {r} regions): NMI {v:.3f}")
    for r in regions:  # how whole each region stays
        rows = truth == r
        top = Counter(at_regions[rows]).most_common(1)[0][1]
        print(f"    {r:18s} {rows.sum():4d} images, {top / rows.sum():.0%} in its largest K={len(regions)} cluster")

    # --- floors on the same images ------------------------------------------------------------
    t0 = time.perf_counter()
    raw = load_tensors(settings, [stored[int(i)] for i in arrays.image_ids], size=64, method=method)
    raw = raw.reshape(len(raw), -1)
    floor_purity, floor_nmi = weighted_purity(floor(raw, a.k), truth), nmi(floor(raw, len(regions)), truth)
    hog = hog_features(load_tensors(settings, [stored[int(i)] for i in arrays.image_ids], size=128, method=method))
    hog_purity, hog_nmi = weighted_purity(floor(hog, a.k), truth), nmi(floor(hog, len(regions)), truth)
    print(f"floors ({time.perf_counter() - t0:.0f} s): raw pixels purity {floor_purity:.3f}, NMI {floor_nmi:.3f}; "
          f"HOG purity {hog_purity:.3f}, NMI {hog_nmi:.3f}")

    # --- the simulated radiologist ------------------------------------------------------------
    region_of = dict(zip(arrays.image_ids.tolist(), truth.tolist()))
    radiologist = create_user(db, "sim-radiologist", "simulated-radiologist-pw", "radiologist")
    naming = name_clusters(db, run_id, region_of, radiologist, purity=a.purity)
    with db.session() as s:
        current = s.execute(select(WeakLabel.image_id, Label.name).join(Label, Label.id == WeakLabel.label_id)
                            .where(WeakLabel.superseded_at.is_(None))).all()
    labelled = len(current)
    accuracy = sum(region_of[i] == name for i, name in current) / max(labelled, 1)
    n_decisions = max(sum(naming.decisions.values()), 1)
    print(f"simulated radiologist (names clusters >= {a.purity:.0%} pure): {dict(naming.decisions)}; "
          f"{labelled} of {len(truth)} images labelled, {labelled / n_decisions:.1f} per decision, "
          f"accuracy {accuracy:.3f}")
    print(f"RESULT purity_k30={purity:.3f} nmi_kregions={nmi_regions:.3f} within_source_nmi={within:.3f} "
          f"images_per_decision={labelled / n_decisions:.1f} accuracy={accuracy:.3f} "
          f"floor_purity_k30={floor_purity:.3f} floor_nmi_kregions={floor_nmi:.3f} hog_purity_k30={hog_purity:.3f} "
          f"minutes={minutes:.1f}")


if __name__ == "__main__":
    main()
