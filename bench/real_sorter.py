"""The SAM-X sorter on real radiographs: cluster -> simulated naming -> train -> sort held-out images.

bench/sorter.py's path on the real development set (../shared/realdev by default; never part of the
repository) instead of phantoms, to see whether what works on phantoms sorts real films. A quarter of
the set is held out BEFORE ingest: the set has no patient IDs, so images are grouped by source file
(UNIFESP names carry only per-image SOP UIDs, Roboflow augmented copies were already reduced to one per
base) and joined where their 32 px thumbnails correlate >= 0.95 (near-duplicates, series shot alike);
25% of the groups of every (region, source) stratum are held out with a fixed seed. The rest is
ingested and clustered by `samx cluster` (K=30, the job's other defaults), named by the simulated
radiologist with the true regions (clusters >= 80% pure), and the sorter is trained on those weak labels
by the real `train_sorter` job with its defaults. The held-out images are sorted by `samx sort`'s code
path and judged against their TRUE regions: top-1/top-2 over all of them (the forced best class, also
where the sorter abstained) and over the accepted ones, coverage (share not sent to unsure), Cohen's
kappa (forced best class, all held-out images). Out of distribution: pydicom's bundled CT/MR/US/NM/
colour test files (one of each distinct picture; the DICOM header alone already rejects most) plus
synthetic scenes (gradients, texture, shapes, text; colour and grey; PNG and JPEG) go through the same
path; `ood_unsure` is the share sent to unsure. The same DICOM pictures re-saved as PNG (no header to
go on) are printed beside it: there only the out-of-distribution score judges.

    python bench/real_sorter.py [REALDEV] [--k 30] [--purity 0.8] [--scenes 50]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.real_clustering import OUT, REALDEV, ingest_and_cluster  # noqa: E402
from bench.sorter import run  # noqa: E402

SEED, SHARE, LINK = 0, 0.25, 0.95


def thumbnail(path: Path) -> np.ndarray:
    """32 px, zero mean, unit norm: dot products are correlations."""
    import cv2

    from imaging.reader import read_radiograph

    x = cv2.resize(read_radiograph(path).pixels.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA).ravel()
    x -= x.mean()
    return x / (np.linalg.norm(x) + 1e-6)


def split(realdev: Path) -> tuple[list[dict], list[dict], int]:
    """(train rows, held-out rows, near-duplicate links) of MANIFEST.tsv: groups kept whole."""
    rows = list(csv.DictReader(open(realdev / "MANIFEST.tsv", newline=""), delimiter="\t"))
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_stem = {}
    for i, r in enumerate(rows):  # one group per source file (Roboflow: the base before .rf.<hash>)
        key = (r["source_repo"], Path(r["source_path"]).name.split(".rf.")[0].rsplit(".", 1)[0])
        parent[root(i)] = root(by_stem.setdefault(key, i))
    thumbs = np.stack([thumbnail(realdev / r["file"]) for r in rows])
    same_source = np.array([r["source_repo"] for r in rows])
    a, b = np.nonzero(np.triu(thumbs @ thumbs.T >= LINK, 1) & (same_source[:, None] == same_source[None]))
    for i, j in zip(a, b):
        parent[root(i)] = root(j)
    groups = defaultdict(list)
    for i in range(len(rows)):
        groups[root(i)].append(i)
    strata = defaultdict(list)  # (region, source) of a group's first member
    for members in groups.values():
        strata[(rows[members[0]]["region"], rows[members[0]]["source_repo"])].append(members)
    rng, held = np.random.default_rng(SEED), set()
    for key in sorted(strata):
        gs = strata[key]
        for g in rng.permutation(len(gs))[: int(np.floor(SHARE * len(gs) + 0.5))]:
            held.update(gs[g])
    return ([r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held],
            len(a))


def link_folder(realdev: Path, rows: list[dict], folder: Path, with_manifest: bool) -> None:
    """Symlinks to the set's files: folder/images/<region>/<name> and a MANIFEST.tsv (the train part,
    as real_clustering reads a set), or folder/<name> (held out)."""
    for r in rows:
        dest = folder / r["file"] if with_manifest else folder / Path(r["file"]).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to((realdev / r["file"]).resolve())
    if with_manifest:
        with open(folder / "MANIFEST.tsv", "w", newline="") as f:
            w = csv.DictWriter(f, list(rows[0]), delimiter="\t", lineterminator="\n")
            w.writeheader()
            w.writerows(rows)


def non_radiographs(folder: Path, scenes: int) -> dict[str, str]:
    """File name -> kind: pydicom's test files that decode (one per distinct picture, radiographs and
    masks left out: "dicom <modality>"), the same pictures as PNG without their header ("dicom as png")
    and synthetic scenes ("scene colour", "scene grey")."""
    import cv2
    import pydicom
    from PIL import Image, ImageDraw, ImageFilter, ImageFont
    from pydicom.data import get_testdata_files

    from imaging.reader import read_radiograph

    kinds, seen = {}, []
    folder.mkdir(parents=True)
    with warnings.catch_warnings():  # offline: the files pydicom would download are simply not listed
        warnings.simplefilter("ignore")
        files = sorted(get_testdata_files("*.dcm"))
    for f in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(f, stop_before_pixels=True)
                modality = str(ds.get("Modality", "") or "")
                if modality in ("CR", "DX", "MG", "RTDOSE", "SEG") or min(ds.get("Rows") or 0, ds.get("Columns") or 0) < 32:
                    continue
                px = read_radiograph(f).pixels.astype(np.float32)
        except Exception:  # no header, no pixels, a codec that fails: not an image to judge
            continue
        x = cv2.resize(px, (32, 32), interpolation=cv2.INTER_AREA).ravel()
        x = (x - x.mean()) / (np.linalg.norm(x - x.mean()) + 1e-6)
        if any(float(x @ y) >= LINK for y in seen):  # the same picture in another encoding
            continue
        seen.append(x)
        name = Path(f).name
        shutil.copy(f, folder / name)
        kinds[name] = f"dicom {modality or '?'}"
        png = (255 * (px - px.min()) / max(float(np.ptp(px)), 1e-6)).astype(np.uint8)
        Image.fromarray(png).save(folder / f"{Path(f).stem}-as.png")
        kinds[f"{Path(f).stem}-as.png"] = "dicom as png"

    rng = np.random.default_rng(SEED)
    for i in range(scenes):
        w, h = (int(v) for v in rng.integers(160, 1200, 2))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = np.cos(rng.uniform(0, 2 * np.pi)) * xx + np.sin(rng.uniform(0, 2 * np.pi)) * yy
        t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
        cloud = cv2.resize(rng.normal(0, 40, (8, 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        bg = rng.integers(0, 256, 3) * (1 - t[..., None]) + rng.integers(0, 256, 3) * t[..., None] + cloud
        img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 15))):
            x0, x1 = sorted(rng.integers(0, w, 2).tolist())
            y0, y1 = sorted(rng.integers(0, h, 2).tolist())
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            shape = int(rng.integers(4))
            if shape == 0:
                draw.ellipse((x0, y0, x1, y1), fill=fill)
            elif shape == 1:
                draw.rectangle((x0, y0, x1, y1), fill=fill)
            elif shape == 2:
                draw.polygon([(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(int(rng.integers(3, 7)))],
                             fill=fill)
            else:
                draw.line((x0, y0, x1, y1), fill=fill, width=int(rng.integers(1, 12)))
        for _ in range(int(rng.integers(1, 4))):
            text = "".join(chr(c) for c in rng.integers(65, 91, int(rng.integers(3, 14))))
            draw.text((int(rng.integers(0, w // 2)), int(rng.integers(0, h - 20))), text,
                      fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
                      font=ImageFont.load_default(size=int(rng.integers(12, 64))))
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 2))))
        colour = i % 2 == 0
        name = f"scene_{i:03d}.{'png' if i % 4 < 2 else 'jpg'}"
        (img if colour else img.convert("L")).save(folder / name)
        kinds[name] = f"scene {'colour' if colour else 'grey'}"
    return kinds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("realdev", nargs="?", type=Path, default=REALDEV)
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--purity", type=float, default=0.8, help="the simulated radiologist names a cluster this pure")
    ap.add_argument("--scenes", type=int, default=50, help="synthetic non-radiographs for the OOD share")
    a = ap.parse_args()
    if not (a.realdev / "MANIFEST.tsv").is_file():
        sys.exit(f"no real development set at {a.realdev} (MANIFEST.tsv missing): pass its folder as the argument")

    from sklearn.metrics import cohen_kappa_score
    from sqlalchemy import select

    from backend.database.schema import Image, Label, WeakLabel
    from backend.database.users import create_user
    from backend.demo.simulated_radiologist import name_clusters
    from backend.sorter.folder_sort import sort_folder
    from backend.sorter.store import active_version, load_sorter, version_dir

    t0 = time.perf_counter()
    a.realdev = a.realdev.resolve()
    train_rows, held_rows, links = split(a.realdev)
    inputs = OUT / "real-sorter-inputs"
    shutil.rmtree(inputs, ignore_errors=True)
    link_folder(a.realdev, train_rows, inputs / "train", True)
    link_folder(a.realdev, held_rows, inputs / "heldout", False)
    regions = sorted({r["region"] for r in train_rows + held_rows})
    n_train, n_held = Counter(r["region"] for r in train_rows), Counter(r["region"] for r in held_rows)
    print(f"split ({time.perf_counter() - t0:.0f} s): {len(train_rows)} train, {len(held_rows)} held out; groups by "
          f"source file, {links} near-duplicate links (32 px correlation >= {LINK}); seed {SEED}")
    print("  region             train  held-out")
    for r in regions:
        print(f"  {r:18s} {n_train[r]:5d} {n_held[r]:9d}")
    print("  held out by source: " + ", ".join(f"{s} {n}" for s, n in
                                               Counter(r["source_repo"] for r in held_rows).most_common()), flush=True)

    settings, db, run_id, cluster_min = ingest_and_cluster(inputs / "train", OUT / "real-sorter", {"k": a.k})
    truth_of = {str((a.realdev / r["file"]).resolve()): r["region"] for r in train_rows}
    with db.session() as s:
        path_of = dict(s.execute(select(Image.id, Image.source_path)).all())
    region_of = {i: truth_of[str(Path(p).resolve())] for i, p in path_of.items()}
    user = create_user(db, "sim-radiologist", "simulated-radiologist-pw", "radiologist")
    naming = name_clusters(db, run_id, region_of, user, purity=a.purity)
    with db.session() as s:
        weak = dict(s.execute(select(WeakLabel.image_id, Label.name).join(Label, Label.id == WeakLabel.label_id)
                              .where(WeakLabel.superseded_at.is_(None))).all())
    weak_acc = float(np.mean([region_of[i] == r for i, r in weak.items()])) if weak else float("nan")
    print(f"samx cluster (k={a.k}): {cluster_min:.1f} min. Simulated naming (>= {a.purity:.0%} pure): "
          f"{dict(naming.decisions)}; {len(weak)} of {len(region_of)} images weakly labelled, {weak_acc:.3f} correct")
    print("  weak labels per region: " + ", ".join(f"{r} {n}" for r, n in Counter(weak.values()).most_common()),
          flush=True)

    t = time.perf_counter()
    trained = run(db, "train_sorter", {}, t)
    train_min = (time.perf_counter() - t) / 60
    cv1, cv2 = trained.get("cv_top1") or {}, trained.get("cv_top2") or {}
    print(f"sorter {trained['version']} ({len(trained['classes'])} classes): {train_min:.1f} min; cross-validation "
          f"(weak labels) top-1 {cv1.get('mean', float('nan')):.3f} ± {cv1.get('sd', float('nan')):.3f}, top-2 "
          f"{cv2.get('mean', float('nan')):.3f}; fixed validation top-1 {trained['holdout_top1']:.3f}", flush=True)
    with db.session() as s:
        mv = active_version(s)
        model, size, method = load_sorter(settings, mv), int(mv.config["size"]), mv.config["method"]
        folder = version_dir(settings, mv.version)
    metadata = json.loads((folder / "metadata.json").read_text())
    cleaning = metadata["cleaning"]
    print("  final model, training accuracy by epoch: "
          + " ".join(f"{h['train_accuracy']:.2f}" for h in metadata.get("history", [])))
    doubted = {d["image_id"] for d in cleaning.get("images", [])}
    wrong = {i for i, r in weak.items() if region_of[i] != r}
    print(f"doubted weak labels: {len(doubted)}, {len(doubted & wrong)} of them really wrong (of {len(wrong)} "
          f"wrong); {cleaning.get('left_out', 0)} left out of the version's training")
    unknown = [r for r in regions if r not in model.classes]
    if unknown:
        print(f"regions the sorter cannot predict (no or too few weak labels): {', '.join(unknown)} "
              f"({sum(n_held[r] for r in unknown)} held-out images)")

    # --- held-out real images through `samx sort`, judged against their TRUE regions ----------------
    t = time.perf_counter()
    summary = sort_folder(model, inputs / "heldout", settings.data_dir / "sorted-heldout", size=size, method=method)
    sort_s = time.perf_counter() - t
    held_truth = {Path(r["file"]).name: r for r in held_rows}
    rows = list(csv.DictReader(open(summary.csv, encoding="utf-8")))
    unreadable = [r["file"] for r in rows if r["status"] == "unreadable"]
    rows = [r for r in rows if r["status"] != "unreadable"]
    truth = np.array([held_truth[r["file"]]["region"] for r in rows])
    source = np.array([held_truth[r["file"]]["source_repo"] for r in rows])
    pred, second = np.array([r["prediction"] for r in rows]), np.array([r["second"] for r in rows])
    ok = np.array([r["region"] != "unsure" for r in rows])
    hit1, hit2 = pred == truth, (pred == truth) | (second == truth)
    top1, top2, coverage = float(hit1.mean()), float(hit2.mean()), float(ok.mean())
    kappa = float(cohen_kappa_score(truth, pred))
    print(f"held-out real images ({len(rows)}, true regions, {sort_s:.0f} s): forced best class over all: top-1 "
          f"{top1:.4f}, top-2 {top2:.4f}, kappa {kappa:.4f}; coverage {coverage:.4f} ({(~ok).sum()} unsure); "
          f"over the {ok.sum()} accepted: top-1 {hit1[ok].mean():.4f}, top-2 {hit2[ok].mean():.4f}"
          + (f"; unreadable: {unreadable}" if unreadable else ""))
    for s in sorted(set(source)):
        m = source == s
        print(f"  {s:45s} {m.sum():4d} images: top-1 {hit1[m].mean():.3f}, coverage {ok[m].mean():.3f}")
    print("  per region (top-1, coverage): " + ", ".join(
        f"{r} {hit1[truth == r].mean():.2f}/{ok[truth == r].mean():.2f}" for r in regions if (truth == r).any()))
    errors = Counter(f"{t}->{p}" for t, p in zip(truth, pred) if t != p)
    print("  errors (true->predicted): " + (", ".join(f"{k} {v}" for k, v in errors.most_common(12)) or "none"))

    # --- non-radiographs through the same path ----------------------------------------------------------
    kinds = non_radiographs(inputs / "ood", a.scenes)
    os.environ["PYTHONWARNINGS"] = "ignore::UserWarning"  # the decoding workers: pydicom on its odd test files
    summary = sort_folder(model, inputs / "ood", settings.data_dir / "sorted-ood", size=size, method=method)
    ood_rows = [r for r in csv.DictReader(open(summary.csv, encoding="utf-8")) if r["status"] != "unreadable"]
    group = {n: "dicom as png" if k == "dicom as png" else "dicom file" if k.startswith("dicom") else k
             for n, k in kinds.items()}
    by_kind = defaultdict(list)
    for r in ood_rows:
        by_kind[group[r["file"]]].append(r)
    counted = [r for r in ood_rows if group[r["file"]] != "dicom as png"]  # the PNG copies: context only
    ood_unsure = float(np.mean([r["region"] == "unsure" for r in counted]))
    dicoms = sorted(f"{n} ({k[6:]})" for n, k in kinds.items() if group[n] == "dicom file")
    print(f"non-radiographs: {len(counted)} ({len(dicoms)} pydicom test files: {', '.join(dicoms)}; {a.scenes} "
          f"synthetic scenes); unreadable {summary.by_folder.get('unreadable', 0)}")
    for k, rs in sorted(by_kind.items()):
        unsure = sum(r["region"] == "unsure" for r in rs)
        sent = Counter(r["region"] for r in rs if r["region"] != "unsure")
        print(f"  {k:22s} {unsure:3d} of {len(rs):3d} unsure" + (f"; sorted as {dict(sent)}" if sent else ""))
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min; report: {folder / 'report.html'}")
    print(f"RESULT top1={top1:.4f} top2={top2:.4f} coverage={coverage:.4f} kappa={kappa:.4f} ood_unsure={ood_unsure:.4f}")


if __name__ == "__main__":
    main()
