"""Third-party readers on samx's exports: datumaro and Ultralytics (issue 25's acceptance).

samx's COCO, VOC and YOLO exports should open in the tools people use on such datasets, with
the right boxes and the right pixels. This bench makes them as a user would and hands them to
datumaro and Ultralytics, which pin packages samx's own venv does not want, so they live in a
virtualenv of their own: bench/out/readers-venv (python3.11 -m venv; `pip install torch==2.14.1
torchvision==0.29.1`, the releases on this machine's disk, then `pip install datumaro
ultralytics`), made once and reused (delete it to reinstall; the install time is printed).

The exports: 30 phantoms (bench.cached_phantoms, lesion_rate 0.6, DICOM and PNG mixed) go
through the CLI: `samx ingest` into a fresh data directory, `samx import coco` of a COCO file
written from the phantoms' truth.json (their lesion boxes, matched onto the ingested images),
then `samx export coco|voc|yolo` with the default image format (8-bit PNG; VOC's only one, JPEG).
Each exported image as samx's venv reads it (PIL, grey) is saved as the reference.

The six checks, each 1 or 0:
  1-3. datumaro imports COCO (coco_instances), VOC (voc_detection) and YOLO (yolo_ultralytics,
       else yolo, which detects the Ultralytics layout in datumaro 1.13): Dataset.import_from
       with an error policy that collects instead of raising, every item iterated: no error, and
       as many images and boxes as `samx export` reported (each image counted once: datumaro
       reads VOC's trainval list as a subset of its own, train and val again). Warnings are
       printed, not failed; so is the largest difference between datumaro's box coordinates and
       samx's COCO boxes. VOC is read with coordinate_mode="voc-one-based" (the devkit's 1-based
       pixel indices, which samx writes); datumaro's default (0-based) is run too, its shift printed.
  4.   Ultralytics on the YOLO export: check_det_dataset(data.yaml), then build_yolo_dataset for
       each split (its label scan): no exception, 0 corrupt labels, and every image and box.
  5.   datumaro sees the right pixels on all three formats: every item's image, grey in every
       channel, equal to samx's file as PIL reads it (max difference <= 2, mean <= 0.5: a JPEG
       decoder's rounding; PNG gives 0).
  6.   Ultralytics sees the right pixels: dataset.load_image(i) (BGR, with imgsz set to the
       image's long side so that nothing is resized), same test.
How far the exported files are from samx's display rendering (render_display of the stored
pixels) is printed too: 0 for PNG, JPEG's error for VOC.

    python bench/readers.py [--n 30]

Ends with `RESULT readers_ok=<n> of=6 datumaro=<version> ultralytics=<version>`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
VENV = OUT / "readers-venv"
VPY = VENV / "bin" / "python"
# torch and torchvision first, pinned to the releases on this machine's disk (ultralytics needs
# them; left to the resolver, pip would pick other releases and download gigabytes)
TORCH = ("torch==2.14.1", "torchvision==0.29.1")
READERS = ("datumaro", "ultralytics")
FORMATS = ("coco", "voc", "yolo")
REF = OUT / "readers" / "ref"


def ensure_venv() -> tuple[bool, str]:
    """(ok, message): bench/out/readers-venv with datumaro and ultralytics, made once and reused."""
    stamp = VENV / "readers-installed"
    if stamp.exists() and VPY.exists():
        return True, "reused bench/out/readers-venv"
    t = time.perf_counter()
    shutil.rmtree(VENV, ignore_errors=True)
    steps = [["python3.11", "-m", "venv", str(VENV)],
             [str(VPY), "-m", "pip", "install", "-q", *TORCH],
             [str(VPY), "-m", "pip", "install", "-q", *READERS]]
    for cmd in steps:
        print("$", " ".join(cmd), flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
            return False, f"`{' '.join(cmd)}` failed (exit {r.returncode}) after {time.perf_counter() - t:.0f} s:\n{tail}"
    stamp.write_text("ok\n")
    return True, f"installed datumaro and ultralytics into bench/out/readers-venv in {time.perf_counter() - t:.0f} s"


# --- the exports: phantoms, ingested, boxes imported from their truth, exported ------------------

def samx(env: dict, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "backend.cli", *args], env=env, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"samx {' '.join(args)} failed (exit {r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def make_exports(n: int) -> tuple[dict[str, Path], dict[str, dict], Path]:
    """{format: export folder}, {format: {"images", "boxes"} the export reported}, the data
    directory. Through the CLI as a user runs it: `samx ingest` the phantoms, `samx import coco` a
    COCO file of their true lesion boxes (matched onto the ingested images), `samx export
    coco|voc|yolo` with the default (8-bit) image format."""
    from bench.cached_phantoms import cached_phantoms
    from bench.fresh_database import fresh_database

    phantoms = cached_phantoms(f"readers-phantoms-{n}", n, seed=25, fmt="mixed", lesion_rate=0.6)
    truth = json.loads((phantoms / "truth.json").read_text())
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "benign"}, {"id": 2, "name": "malignant"}]}
    cat = {"benign": 1, "malignant": 2}
    for k, e in enumerate(truth["images"], 1):
        coco["images"].append({"id": k, "file_name": e["file"], "width": e["width"], "height": e["height"]})
        for les in e["lesions"]:
            x0, y0, x1, y1 = les["box"]
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": k, "category_id": cat[les["label"]],
                                        "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    work = OUT / "readers"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    truth_coco = work / "truth_coco.json"
    truth_coco.write_text(json.dumps(coco))
    data_dir = work / "samx-data"
    fresh_database(data_dir)[1].dispose()
    env = dict(os.environ, SAMX_DATA_DIR=str(data_dir))
    for var in ("DATABASE_URL", "SAMX_QUEUE", "REDIS_URL"):
        env.pop(var, None)
    t = time.perf_counter()
    samx(env, "ingest", str(phantoms / "images"))
    print("samx import coco (truth boxes):", samx(env, "import", "coco", str(truth_coco), "--images", str(phantoms)).strip())
    exports, expected = {}, {}
    for fmt in FORMATS:
        exports[fmt] = work / fmt
        first = samx(env, "export", fmt, str(exports[fmt])).splitlines()[0]
        print(f"samx export {fmt}: {first}")
        m = re.match(r"\w+: (\d+) images, (\d+) boxes", first)
        expected[fmt] = {"images": int(m[1]), "boxes": int(m[2])}
    print(f"{len(truth['images'])} phantoms, {len(coco['annotations'])} true boxes: ingested, imported and exported "
          f"in {time.perf_counter() - t:.1f} s", flush=True)
    return exports, expected, data_dir


def exported_boxes(coco_export: Path) -> dict[str, list]:
    """{file stem: [[label, x, y, w, h], ...]} as samx's COCO export gives them (float pixels)."""
    boxes: dict[str, list] = {}
    for f in sorted((coco_export / "annotations").glob("instances_*.json")):
        data = json.loads(f.read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        stems = {im["id"]: Path(im["file_name"]).stem for im in data["images"]}
        for a in data["annotations"]:
            boxes.setdefault(stems[a["image_id"]], []).append([names[a["category_id"]], *a["bbox"]])
    return boxes


def reference_pixels(exports: dict[str, Path], data_dir: Path) -> dict:
    """Every exported image as samx's own venv reads it (PIL, grey), saved to bench/out/readers/ref/
    <format>/<stem>.npy for the readers to compare with; returns {"means": {format: {stem: mean}},
    "vs_rendering": {format: largest difference between the files and samx's display rendering}}."""
    import numpy as np
    from PIL import Image as PILImage

    from backend.config import Settings
    from backend.database.schema import Image
    from backend.database.session import Database
    from backend.images.store import load_pixels, render_display
    from sqlalchemy import select

    db = Database(Settings(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'samx.db'}", queue_url="sqlite"))
    with db.session() as s:
        stored = dict(s.execute(select(Image.id, Image.store_path).where(Image.store_path.is_not(None))).all())
    refs, vs_rendering = {}, {}
    for fmt, out in exports.items():
        refs[fmt], worst = {}, 0
        for p in sorted(out.rglob("*")):
            if p.suffix not in (".png", ".jpg") or "samx" in p.relative_to(out).parts:
                continue
            arr = np.asarray(PILImage.open(p).convert("L"), dtype=np.uint8)
            (REF / fmt).mkdir(parents=True, exist_ok=True)
            np.save(REF / fmt / f"{p.stem}.npy", arr)
            refs[fmt][p.stem] = float(arr.mean())
            want = render_display(load_pixels(db.settings, stored[int(p.stem)]))
            worst = max(worst, int(np.abs(arr.astype(int) - want).max()) if arr.shape == want.shape else 999)
        vs_rendering[fmt] = worst
    db.dispose()
    return {"means": refs, "vs_rendering": vs_rendering}


# --- the readers, in their own venv ----------------------------------------------------------

READER_SCRIPT = r'''"""Run by bench/readers.py in bench/out/readers-venv: datumaro and Ultralytics on samx's exports.
argv: config JSON (exports, ref dir), result JSON."""
import json
import logging
import sys
import traceback
from pathlib import Path

import numpy as np

cfg = json.loads(Path(sys.argv[1]).read_text())
REF = Path(cfg["ref"])
TOL_MAX, TOL_MEAN = 2, 0.5  # "right pixels": a decoder's rounding at most (PNG: 0)


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(f"{record.name}: {record.getMessage()}"[:300])


def grey(arr):
    """2-D uint8 of a reader's image; None if its channels differ (not the grey samx wrote)."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        if arr.max() <= 255 and np.array_equal(arr, np.round(arr)):
            arr = arr.astype(np.uint8)
        else:
            return None
    if arr.ndim == 3:
        if arr.shape[2] == 1:
            return arr[..., 0]
        if not (arr[..., :3] == arr[..., :1]).all():
            return None
        return arr[..., 0]
    return arr


def compare(fmt, stem, arr):
    """(right, mean of the reader's image, mean of samx's, max difference)."""
    ref = np.load(REF / fmt / f"{stem}.npy")
    g = grey(arr)
    if g is None or g.shape != ref.shape:
        shape = None if arr is None else tuple(np.asarray(arr).shape)
        return False, float(np.asarray(arr, dtype=float).mean()), float(ref.mean()), f"shape {shape} vs {ref.shape}"
    d = np.abs(g.astype(int) - ref.astype(int))
    return bool(d.max() <= TOL_MAX and d.mean() <= TOL_MEAN), float(g.mean()), float(ref.mean()), int(d.max())


def run_datumaro(fmt, path, **options):
    import datumaro
    from datumaro.components.annotation import AnnotationType
    from datumaro.components.importer import ImportErrorPolicy

    class Collect(ImportErrorPolicy):
        def __init__(self):
            super().__init__()
            self.errors = []

        def _handle_item_error(self, error):
            self.errors.append(f"{error!r} caused by {error.__cause__!r}"[:400])

        def _handle_annotation_error(self, error):
            self.errors.append(f"{error!r} caused by {error.__cause__!r}"[:400])

    env = datumaro.Environment()
    names = set(env.importers)  # names only: .items() would load every plugin (some need packages absent here)
    wanted = {"coco": ["coco_instances", "coco"], "voc": ["voc_detection", "voc"],
              "yolo": ["yolo_ultralytics", "yolo"]}[fmt]  # datumaro 1.13's "yolo" detects the Ultralytics layout
    dm_format = next((f for f in wanted if f in names), None)
    res = {"format": dm_format, "detected": None, "errors": [], "warnings": [], "items": 0, "annotations": 0,
           "bboxes": 0, "labels": [], "pixels": [], "pixels_right": False, "ok": False}
    try:  # among these formats only: env.detect_dataset loads every plugin (some need packages absent here)
        from datumaro.components.format_detection import detect_dataset_format

        cands = [n for n in ("coco_instances", "voc_detection", "yolo") if n in names]
        res["detected"] = list(detect_dataset_format([(n, env.importers[n].detect) for n in cands], str(path)))
    except Exception as exc:
        res["detected"] = f"detect failed: {exc!r}"[:200]
    if dm_format is None:
        res["errors"].append(f"no importer among {wanted}")
        return res
    handler = Warnings()
    logging.getLogger().addHandler(handler)
    policy = Collect()
    try:
        ds = datumaro.Dataset.import_from(str(path), dm_format, error_policy=policy, **options)
        cats = ds.categories().get(AnnotationType.label)
        res["labels"] = [c.name for c in cats] if cats else []
        label_name = {i: c.name for i, c in enumerate(cats)} if cats else {}
        right, seen, worst = [], set(), 0.0
        for item in ds:
            res["items"] += 1
            res["annotations"] += len(item.annotations)
            stem = Path(item.id).name
            if stem in seen:  # VOC's trainval list is a subset of its own to datumaro: train + val again
                continue
            seen.add(stem)
            boxes = sorted((label_name.get(a.label), *a.get_bbox()) for a in item.annotations
                           if a.type == AnnotationType.bbox)
            res["bboxes"] += len(boxes)
            want = sorted(tuple(b) for b in cfg["boxes"].get(stem, []))
            if [b[0] for b in boxes] != [b[0] for b in want]:
                worst = float("inf")
            else:
                for got, exp in zip(boxes, want):
                    worst = max(worst, max(abs(g - e) for g, e in zip(got[1:], exp[1:])))
            arr = item.media.data if item.media is not None and item.media.has_data else None
            if arr is None:
                right.append(False)
                res["pixels"].append([stem, None, None, "no image"])
                continue
            ok, mine, theirs, diff = compare(fmt, stem, arr)
            right.append(ok)
            res["pixels"].append([stem, mine, theirs, diff])
        res["pixels_right"] = bool(right) and all(right)
        res["unique_items"], res["box_max_diff"] = len(seen), worst
        res["subsets"] = {name: len(sub) for name, sub in ds.subsets().items()}
    except Exception:
        res["errors"].append(traceback.format_exc()[-1500:])
    finally:
        logging.getLogger().removeHandler(handler)
    res["errors"] += policy.errors
    res["warnings"] = handler.records
    expected = cfg["expected"][fmt]
    res["ok"] = (not res["errors"] and res.get("unique_items") == expected["images"]
                 and res["bboxes"] == expected["boxes"])
    return res


def run_ultralytics(path):
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset, load_dataset_cache_file
    from ultralytics.utils import DEFAULT_CFG, LOGGER

    handler = Warnings()
    LOGGER.addHandler(handler)
    res = {"errors": [], "splits": {}, "pixels": [], "pixels_right": False, "ok": False}
    right = []
    try:
        data = check_det_dataset(str(path / "data.yaml"))
        res["names"] = data["names"]
        for split in ("train", "val", "test"):
            if not data.get(split):
                continue
            cfg_ = get_cfg(DEFAULT_CFG)
            ds = build_yolo_dataset(cfg_, data[split], 4, data, mode="val", rect=False, stride=32)
            cache = Path(ds.label_files[0]).parent.with_suffix(".cache")
            nf, nm, ne, nc, n = load_dataset_cache_file(cache)["results"]
            boxes = sum(len(lb["cls"]) for lb in ds.labels)
            res["splits"][split] = {"images": len(ds.im_files), "found": nf, "missing": nm, "empty": ne,
                                    "corrupt": nc, "boxes": boxes}
            for i, f in enumerate(ds.im_files):
                h, w = np.load(REF / "yolo" / f"{Path(f).stem}.npy").shape
                ds.imgsz = max(h, w)  # load_image resizes the long side to imgsz: keep the file's size
                im, _, _ = ds.load_image(i)
                ok, mine, theirs, diff = compare("yolo", Path(f).stem, im)
                right.append(ok)
                res["pixels"].append([Path(f).stem, mine, theirs, diff])
    except Exception:
        res["errors"].append(traceback.format_exc()[-1500:])
    finally:
        LOGGER.removeHandler(handler)
    res["warnings"] = handler.records
    res["corrupt"] = sum(s["corrupt"] for s in res["splits"].values())
    exp = cfg["expected"]["yolo"]
    res["ok"] = (not res["errors"] and bool(res["splits"]) and res["corrupt"] == 0
                 and sum(s["images"] for s in res["splits"].values()) == exp["images"]
                 and sum(s["boxes"] for s in res["splits"].values()) == exp["boxes"])
    res["pixels_right"] = bool(right) and all(right) and not res["errors"]
    return res


def main():
    import datumaro
    import ultralytics

    out = {"versions": {"datumaro": datumaro.__version__, "ultralytics": ultralytics.__version__}}
    import datumaro as _dm
    out["datumaro_formats"] = sorted(f for f in _dm.Environment().importers if f.startswith(("coco", "voc", "yolo")))
    # VOC coordinates are 1-based (the devkit's convention, which samx writes); datumaro reads them
    # as 0-based unless told: both are run, the devkit's convention counts
    out["datumaro"] = {fmt: run_datumaro(fmt, Path(p), **({"coordinate_mode": "voc-one-based"} if fmt == "voc" else {}))
                       for fmt, p in cfg["exports"].items()}
    out["datumaro_voc_default"] = run_datumaro("voc", Path(cfg["exports"]["voc"]))
    out["ultralytics"] = run_ultralytics(Path(cfg["exports"]["yolo"]))
    Path(sys.argv[2]).write_text(json.dumps(out, indent=1, default=str))


main()
'''


def run_readers(exports: dict[str, Path], expected: dict[str, dict]) -> dict:
    work = OUT / "readers"
    (work / "check_readers.py").write_text(READER_SCRIPT)
    (work / "config.json").write_text(json.dumps({"exports": {f: str(p) for f, p in exports.items()}, "ref": str(REF),
                                                  "expected": expected, "boxes": exported_boxes(exports["coco"])}))
    env = dict(os.environ, YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(work / "ultralytics-config"),
               PYTHONWARNINGS="default")
    env.pop("PYTHONPATH", None)
    t = time.perf_counter()
    r = subprocess.run([str(VPY), str(work / "check_readers.py"), str(work / "config.json"), str(work / "result.json")],
                       env=env, capture_output=True, text=True, cwd=work)
    (work / "readers.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"the reader script failed (exit {r.returncode}; bench/out/readers/readers.log):\n"
                           + "\n".join((r.stdout + r.stderr).strip().splitlines()[-20:]))
    print(f"readers ran in {time.perf_counter() - t:.1f} s (log: bench/out/readers/readers.log)")
    return json.loads((work / "result.json").read_text())


def fmt_pixels(rows: list, k: int = 3) -> str:
    return ", ".join(f"{stem} {a:.1f}/{b:.1f}" if isinstance(a, float) and isinstance(b, float) else f"{stem} {d}"
                     for stem, a, b, d in rows[:k])


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30, help="phantoms")
    args = ap.parse_args()
    ok, message = ensure_venv()
    print(message, flush=True)
    if not ok:
        print("RESULT readers_ok=0 of=6 datumaro=n/a ultralytics=n/a  (the readers' venv could not be installed)")
        sys.exit(1)
    exports, expected, data_dir = make_exports(args.n)
    shutil.rmtree(REF, ignore_errors=True)
    ref = reference_pixels(exports, data_dir)
    try:
        res = run_readers(exports, expected)
    except RuntimeError as exc:
        print(exc)
        print("RESULT readers_ok=0 of=6 datumaro=n/a ultralytics=n/a  (the reader script failed)")
        sys.exit(1)
    v = res["versions"]
    print(f"\ndatumaro {v['datumaro']}, ultralytics {v['ultralytics']}; datumaro's formats: {', '.join(res['datumaro_formats'])}")
    print("exported files against samx's display rendering, largest difference: "
          + ", ".join(f"{f} {d}" for f, d in ref["vs_rendering"].items()))
    print(f"\n{'reader':<12} {'format':<6} {'read as':<15} {'ok':<3} {'images':>6} {'boxes':>5} {'box dx':>6} {'err':>3} "
          f"{'warn':>4} {'pixels':<7} first images (reader mean / samx mean)")
    for fmt, d in res["datumaro"].items():
        e = expected[fmt]
        print(f"{'datumaro':<12} {fmt:<6} {str(d['format']):<15} {'yes' if d['ok'] else 'NO':<3} "
              f"{d.get('unique_items', 0):>6} {d['bboxes']:>5} {d.get('box_max_diff', float('nan')):>6.3g} "
              f"{len(d['errors']):>3} {len(d['warnings']):>4} {'right' if d['pixels_right'] else 'WRONG':<7} "
              f"{fmt_pixels(d['pixels'])}")
    u = res["ultralytics"]
    n_img = sum(s["images"] for s in u["splits"].values())
    n_box = sum(s["boxes"] for s in u["splits"].values())
    print(f"{'ultralytics':<12} {'yolo':<6} {'YOLODataset':<15} {'yes' if u['ok'] else 'NO':<3} {n_img:>6} {n_box:>5} "
          f"{'':>6} {len(u['errors']):>3} {len(u['warnings']):>4} {'right' if u['pixels_right'] else 'WRONG':<7} "
          f"{fmt_pixels(u['pixels'])}")
    print(f"(samx exported {expected['coco']['images']} images and {expected['coco']['boxes']} boxes; images and boxes "
          "are counted once per image; box dx: largest coordinate difference, in pixels, from samx's COCO boxes)")
    for split, s in u["splits"].items():
        print(f"  ultralytics {split}: {s}")
    for fmt, d in res["datumaro"].items():
        print(f"  datumaro {fmt}: {d['items']} items in subsets {d.get('subsets')}, labels {d['labels']}, "
              f"detected as {d['detected']}")
        for text in d["errors"][:5]:
            print(f"    error: {text}")
        for text in sorted(set(d["warnings"]))[:5]:
            print(f"    warning: {text}")
        bad = [p for p in d["pixels"] if not (isinstance(p[3], int) and p[3] <= 2)]
        if bad:
            print(f"    pixels differ on {len(bad)} of {len(d['pixels'])}: {bad[:3]}")
    dv = res["datumaro_voc_default"]
    print(f"  datumaro voc with its default coordinate_mode (dm-zero-based) instead of voc-one-based: ok={dv['ok']}, "
          f"box dx {dv.get('box_max_diff')} (boxes shifted by the 1-based origin)")
    for text in u["errors"][:5]:
        print(f"  ultralytics error: {text}")
    for text in sorted(set(u["warnings"]))[:8]:
        print(f"  ultralytics warning: {text}")
    checks = {f"datumaro_{f}": res["datumaro"][f]["ok"] for f in FORMATS}
    checks["ultralytics_yolo"] = u["ok"]
    checks["datumaro_pixels"] = all(res["datumaro"][f]["pixels_right"] for f in FORMATS)
    checks["ultralytics_pixels"] = u["pixels_right"]
    print("\nchecks: " + ", ".join(f"{k}={int(bool(x))}" for k, x in checks.items()))
    print(f"RESULT readers_ok={sum(map(bool, checks.values()))} of=6 datumaro={v['datumaro']} ultralytics={v['ultralytics']}")


if __name__ == "__main__":
    main()
