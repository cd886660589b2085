"""The SAM-X sorter, the whole path on phantoms: cluster -> simulated naming -> train -> sort.

2,000 phantoms of 8 regions are ingested and clustered by the real `cluster` job, named by the
simulated radiologist (backend/demo/simulated_radiologist.py) and the sorter is trained on those weak
labels by the real `train_sorter` job (5-fold cross-validation, then the version itself, without
the weak labels the out-of-fold predictions confidently contradict: how many of those were really
wrong is printed). It is then judged on 400 held-out phantoms (another seed: other patients)
with their TRUE regions, sorted by `samx sort`'s code path. Also printed: similar-case
precision@5 (held-out images against the weakly labelled ones), and the throughput of `samx
sort` (decode, enhance, predict, copy) against the bare network forward on the same, already
prepared images.

    python bench/sorter.py [--n 2000] [--test 400] [--k 50] [--cluster-epochs 20] [--epochs 12]
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
from bench.cached_phantoms import cached_phantoms  # noqa: E402
from bench.fresh_database import fresh_database  # noqa: E402
from backend.demo.simulated_radiologist import name_clusters  # noqa: E402

REGIONS = ["hand", "wrist", "knee", "foot", "pelvis", "chest", "spine", "skull"]


def run(db, kind: str, params: dict, t0: float):
    import backend.cli.job_kinds  # noqa: F401  # registers the job handlers, as the samx command does
    from backend.jobs import enqueue, execute

    last = [""]

    def show(done, total, msg):
        if msg and msg != last[0] and "preparing" not in msg and "sorting" not in msg \
                and ("fold" not in msg or "epoch 1/" in msg):
            print(f"  {time.perf_counter() - t0:6.0f} s  {msg}", flush=True)
        last[0] = msg

    job = execute(db, enqueue(db, kind, params, send=False).id, on_progress=show)
    assert job.status.value == "succeeded", job.error
    return job.result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--test", type=int, default=400)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--cluster-epochs", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--folds", type=int, default=5)
    a = ap.parse_args()

    from sqlalchemy import select

    from backend.images.ingest import ingest_paths
    from backend.database.schema import Image, Label, WeakLabel
    from backend.sorter.folder_sort import _files, _prepare, sort_folder
    from backend.sorter.store import active_version, load_sorter, stored_embeddings, version_dir
    from backend.database.users import create_user
    from clustering.similar import SimilarCases, majority_vote
    from clustering.sorter.metrics import precision_at_k

    train_dir = cached_phantoms(f"phantoms-mixed-{a.n}", a.n, seed=11, fmt="mixed", regions=REGIONS)
    test_dir = cached_phantoms(f"phantoms-heldout-{a.test}", a.test, seed=977, fmt="mixed", regions=REGIONS)
    truth_by_file = {str((train_dir / e["file"]).resolve()): e["region"]
                     for e in json.loads((train_dir / "truth.json").read_text())["images"]}
    test_truth = {Path(e["file"]).relative_to("images").as_posix(): e["region"]
                  for e in json.loads((test_dir / "truth.json").read_text())["images"]}

    settings, db = fresh_database(OUT / f"sorter-{a.n}")
    data = settings.data_dir
    t0 = time.perf_counter()
    ingest_paths(db, [train_dir / "images"])
    print(f"ingested in {time.perf_counter() - t0:.0f} s", flush=True)
    cluster = run(db, "cluster", {"k": a.k, "epochs": a.cluster_epochs}, t0)
    with db.session() as s:
        path_of = dict(s.execute(select(Image.id, Image.source_path)).all())
    region_of = {i: truth_by_file[str(Path(p).resolve())] for i, p in path_of.items()}
    user = create_user(db, "sim-radiologist", "simulated-radiologist-pw", "radiologist")
    naming = name_clusters(db, cluster["run_id"], region_of, user)
    with db.session() as s:
        weak = dict(s.execute(select(WeakLabel.image_id, Label.name).join(Label, Label.id == WeakLabel.label_id)
                              .where(WeakLabel.superseded_at.is_(None))).all())
    weak_acc = float(np.mean([region_of[i] == r for i, r in weak.items()]))
    print(f"simulated naming: {dict(naming.decisions)}; {len(weak)} weak labels, {weak_acc:.3f} correct", flush=True)

    t = time.perf_counter()
    trained = run(db, "train_sorter", {"epochs": a.epochs, "folds": a.folds}, t0)
    train_min = (time.perf_counter() - t) / 60
    cv1, cv2 = trained.get("cv_top1") or {}, trained.get("cv_top2") or {}
    print(f"sorter {trained['version']}: {train_min:.1f} min; cross-validation (weak labels) top-1 "
          f"{cv1.get('mean', float('nan')):.3f} ± {cv1.get('sd', float('nan')):.3f}, top-2 "
          f"{cv2.get('mean', float('nan')):.3f} ± {cv2.get('sd', float('nan')):.3f}; fixed validation top-1 "
          f"{trained['holdout_top1']:.3f}", flush=True)

    with db.session() as s:
        mv = active_version(s)
        model, size, method = load_sorter(settings, mv), int(mv.config["size"]), mv.config["method"]
        folder = version_dir(settings, mv.version)
        ids_rows, train_emb = stored_embeddings(settings, mv)

    cleaning = json.loads((folder / "metadata.json").read_text())["cleaning"]
    wrong = {i for i, r in weak.items() if region_of[i] != r}
    doubted = {d["image_id"] for d in cleaning.get("images", [])}
    caught = doubted & wrong
    print(f"doubted weak labels (confident learning on the out-of-fold predictions): {len(doubted)}, of which "
          f"{len(caught)} really wrong ({len(caught)} of the {len(wrong)} wrong labels caught); "
          f"{cleaning.get('left_out', 0)} left out of the version's training", flush=True)

    # --- held-out phantoms through `samx sort` --------------------------------------------------
    out = data / "sorted"
    t = time.perf_counter()
    summary = sort_folder(model, test_dir / "images", out, size=size, method=method)
    sort_s = time.perf_counter() - t
    rows = list(csv.DictReader(open(summary.csv, encoding="utf-8")))
    truth = np.array([test_truth[r["file"]] for r in rows])
    pred = np.array([r["prediction"] for r in rows])
    second = np.array([r["second"] for r in rows])
    unsure = np.array([r["region"] == "unsure" for r in rows])
    top1 = float((pred == truth).mean())
    top2 = float(((pred == truth) | (second == truth)).mean())
    coverage = float((~unsure).mean())
    accepted = float((pred[~unsure] == truth[~unsure]).mean()) if (~unsure).any() else float("nan")
    print(f"held-out phantoms ({len(rows)}, true regions): top-1 {top1:.4f}, top-2 {top2:.4f}; "
          f"abstained on {unsure.sum()} ({1 - coverage:.1%}), top-1 of the rest {accepted:.4f}")
    errors = Counter(f"{t}->{p}" for t, p in zip(truth, pred) if t != p)
    print("held-out errors (true->predicted): " + (", ".join(f"{k} {v}" for k, v in errors.most_common()) or "none"))
    for r, t in zip(rows, truth):
        if t not in (r["prediction"], r["second"]):
            print(f"  top-2 miss {r['file']}: true {t}, predicted {r['prediction']} {r['confidence']}, "
                  f"{r['second']} {r['second_confidence']}")

    # --- the same images, prepared once, through the bare network --------------------------------
    paths = _files(test_dir / "images")
    tensors = np.stack([_prepare(size, method, p)[0] for p in paths]).astype(np.float32)
    import torch

    with torch.no_grad():
        model.net_.eval()
        t = time.perf_counter()
        for start in range(0, len(tensors), 256):
            model.net_(torch.from_numpy(tensors[start : start + 256])[:, None])
        bare_s = time.perf_counter() - t
    print(f"samx sort: {len(rows) / sort_s:.1f} images/s ({sort_s:.1f} s, {os.cpu_count()} cores: decode, enhance, "
          f"predict, copy); bare forward: {len(rows) / bare_s:.1f} images/s; ratio {sort_s / bare_s:.1f}")

    # --- similar cases: held-out images against the weakly labelled ones ------------------------
    labelled = [i for i in ids_rows if i in weak]
    index = SimilarCases().fit(train_emb[[ids_rows[i] for i in labelled]], [weak[i] for i in labelled], labelled)
    nb = index.kneighbors(model.embed(tensors), k=5)
    order = {p.relative_to(test_dir / "images").as_posix(): j for j, p in enumerate(paths)}
    truth_in_path_order = np.empty(len(paths), dtype=object)
    for r in rows:
        truth_in_path_order[order[r["file"]]] = test_truth[r["file"]]
    p_at_5 = precision_at_k(nb.labels, truth_in_path_order)
    vote = float(np.mean([majority_vote(lab)[0] == t for lab, t in zip(nb.labels, truth_in_path_order)]))
    print(f"similar cases: precision@5 {p_at_5:.4f}, majority vote of 5 correct {vote:.4f}")
    print(f"report: {folder / 'report.html'}")
    print(f"RESULT top1={top1:.4f} top2={top2:.4f} overhead={sort_s / bare_s:.1f} precision_at_5={p_at_5:.4f} "
          f"cv_top1={cv1.get('mean', float('nan')):.4f} cv_top2={cv2.get('mean', float('nan')):.4f} "
          f"coverage={coverage:.4f} weak_label_accuracy={weak_acc:.4f} doubted={len(doubted)} "
          f"doubted_wrong={len(caught)} train_minutes={train_min:.1f}")


if __name__ == "__main__":
    main()
