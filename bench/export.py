"""Export speed and memory: samx's export job against Label Studio's converter, COCO and VOC.

100,000 lesion boxes (float pixels, "benign"/"malignant") on 50,000 radiographs of 1500-3000
px, about 4 images per patient, rows only (no pixel files; about one image in seven has no
box, as a read radiograph without findings). samx runs its real "export" job on a fresh copy
of that SQLite database with images="none" (annotations only: COCO JSON per split, VOC XML,
image_labels.csv, manifest and checksums). The same annotations, read back from the database,
are written as a Label Studio JSON export (one task per image, one submitted annotation each,
boxes in percent of original_width/height, an empty result for images without boxes), and
label-studio-sdk's `Converter.convert(json, out, "COCO" | "VOC", is_dir=False)` converts
them: what a Label Studio user runs to get the same datasets. It is given no hostname, no
token and an upload folder that does not exist, so it can neither download nor copy an image
(its COCO path still calls PIL's Image.open on each task's image to read a size; those calls
are counted and printed, and they all fail here).

Each export runs in a fresh process of its own; its time is the export call alone (imports,
copying the database and building the Label Studio JSON are left out; the JSON's build time
is printed on its own line). Peak memory is the process's VmHWM from /proc/self/status:
getrusage's ru_maxrss would not do, as Linux carries the parent's peak into a child across
vfork + exec. The outputs are then read back and checked against the database: images and
boxes counted, coordinates compared, and what each tool got wrong printed as observations.
The database and the JSON are cached under bench/out/export (delete it to rebuild); the
exports go to a temporary folder ($TMPDIR picks where: the disk by default, as a user's would).

    python bench/export.py   (sizes: SAMX_BENCH_EXPORT_IMAGES=50000 SAMX_BENCH_EXPORT_BOXES=100000)
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out" / "export"
VERSION = 1  # bump when the generated world changes
SEED = 7
LESIONS = ("benign", "malignant")
LS_CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
             '<Label value="benign"/><Label value="malignant"/></RectangleLabels></View>')
LS_ENV = ("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST", "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN",
          "LOCAL_FILES_DOCUMENT_ROOT", "LOCAL_FILES_SERVING_ENABLED", "LABEL_STUDIO_FORCE_ANNOTATOR_EXPORT")
FORMATS = ("coco", "voc")
TOOLS = ("samx", "ls")
TOOL_NAMES = {"samx": "samx export job", "ls": "Label Studio Converter"}


def sizes() -> tuple[int, int]:
    return (int(os.environ.get("SAMX_BENCH_EXPORT_IMAGES", 50_000)),
            int(os.environ.get("SAMX_BENCH_EXPORT_BOXES", 100_000)))


def settings_for(data_dir: Path):
    from backend.config import Settings

    return Settings(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'samx.db'}", queue_url="sqlite")


# --- the world: a samx database and the same annotations as Label Studio JSON -------------------

def build_database(data_dir: Path, n_images: int, n_boxes: int, seed: int = SEED) -> None:
    """Bulk-inserted rows: images of random size grouped into patients and studies, boxes
    scattered over them (uniform image choice, so some images get none) and kept inside."""
    from sqlalchemy import insert, select, text

    from backend.database.session import Database
    from backend.database.schema import Box, Image, Label

    rng = np.random.default_rng(seed)
    db = Database(settings_for(data_dir))
    db.upgrade()
    db.seed_vocabulary()
    cols, rows = rng.integers(1500, 3001, n_images), rng.integers(1500, 3001, n_images)
    patient = rng.integers(0, max(1, n_images // 4), n_images)
    study = rng.integers(0, 2, n_images)
    on = np.sort(rng.integers(0, n_images, n_boxes))
    w = np.minimum(rng.uniform(12.0, 400.0, n_boxes), cols[on] - 1.0)
    h = np.minimum(rng.uniform(12.0, 400.0, n_boxes), rows[on] - 1.0)
    x, y = rng.uniform(0.0, cols[on] - w), rng.uniform(0.0, rows[on] - h)
    lesion = rng.random(n_boxes) < 0.3  # 30 % malignant
    with db.session() as s:
        label = dict(s.execute(select(Label.name, Label.id).where(Label.kind == "lesion")).all())
        ids = []
        for lo in range(0, n_images, 10_000):
            ids += s.scalars(insert(Image).returning(Image.id, sort_by_parameter_order=True), [
                {"content_hash": f"{seed:08d}{i:056d}", "status": "imported", "source_path": f"bench/{i:08d}.dcm",
                 "file_size": 1, "format": "dicom", "rows": int(rows[i]), "columns": int(cols[i]),
                 "modality": "CR", "patient_pseudonym": f"P{patient[i]:07d}",
                 "study_uid": f"2.25.{patient[i]}.{study[i]}", "store_path": f"store/{i:08d}.png", "meta": {}}
                for i in range(lo, min(lo + 10_000, n_images))]).all()
        for lo in range(0, n_boxes, 20_000):
            s.execute(insert(Box), [
                {"image_id": ids[on[j]], "label_id": label[LESIONS[int(lesion[j])]], "x": float(x[j]),
                 "y": float(y[j]), "width": float(w[j]), "height": float(h[j]), "source": "annotation"}
                for j in range(lo, min(lo + 20_000, n_boxes))])
    with db.engine.connect() as c:  # one self-contained file to copy
        c.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    db.dispose()


def read_truth(data_dir: Path) -> tuple[dict[int, tuple[int, int, str | None]], dict[int, list[tuple]]]:
    """image id -> (width, height, patient); image id -> [(box id, label, x, y, w, h)]."""
    from sqlalchemy import create_engine, select

    from backend.database.schema import Box, Image, Label

    engine = create_engine(settings_for(data_dir).database_url)
    with engine.connect() as c:
        images = {i: (w, h, p) for i, w, h, p in c.execute(
            select(Image.id, Image.columns, Image.rows, Image.patient_pseudonym).order_by(Image.id))}
        boxes: dict[int, list[tuple]] = defaultdict(list)
        for bid, image_id, name, x, y, w, h in c.execute(
                select(Box.id, Box.image_id, Label.name, Box.x, Box.y, Box.width, Box.height)
                .join(Label, Label.id == Box.label_id).order_by(Box.image_id, Box.id)):
            boxes[image_id].append((bid, name, x, y, w, h))
    engine.dispose()
    return images, boxes


def ls_task(image_id: int, width: int, height: int, boxes: list[tuple]) -> dict:
    """One task as Label Studio exports it (JSON format) after an annotator submitted it."""
    result = [{"id": f"b{bid}", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
               "original_width": width, "original_height": height, "image_rotation": 0,
               "value": {"x": x / width * 100.0, "y": y / height * 100.0, "width": w / width * 100.0,
                         "height": h / height * 100.0, "rotation": 0, "rectanglelabels": [name]}}
              for bid, name, x, y, w, h in boxes]
    return {"id": image_id, "data": {"image": f"/data/upload/1/{image_id:08d}.png"},
            "annotations": [{"id": image_id, "completed_by": 1, "result": result, "was_cancelled": False,
                             "ground_truth": False, "created_at": "2024-01-01T00:00:00.000000Z",
                             "updated_at": "2024-01-01T00:00:00.000000Z", "lead_time": 10.0}],
            "predictions": []}


def write_ls_json(data_dir: Path, path: Path) -> None:
    images, boxes = read_truth(data_dir)
    tasks = [ls_task(i, w, h, boxes.get(i, [])) for i, (w, h, _) in images.items()]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tasks, f)


def cached_world(n_images: int, n_boxes: int) -> Path:
    """bench/out/export/world-...: samx.db and label-studio.json, built unless there already."""
    folder = OUT / f"world-{n_images}-{n_boxes}-seed{SEED}-v{VERSION}"
    done = folder / "done.json"
    if done.exists():
        built = json.loads(done.read_text())
        print(f"cached world {folder.relative_to(ROOT)} (built in {built['db_s']:.1f} s; "
              f"Label Studio JSON in {built['ls_json_s']:.1f} s)", flush=True)
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t = time.perf_counter()
    build_database(folder, n_images, n_boxes)
    db_s = time.perf_counter() - t
    print(f"built samx database: {n_images} images, {n_boxes} boxes in {db_s:.1f} s", flush=True)
    t = time.perf_counter()
    write_ls_json(folder, folder / "label-studio.json")
    ls_s = time.perf_counter() - t
    print(f"built Label Studio JSON export ({(folder / 'label-studio.json').stat().st_size / 2**20:.0f} MB) "
          f"from the database in {ls_s:.1f} s (not counted in the converter's time)", flush=True)
    done.write_text(json.dumps({"db_s": db_s, "ls_json_s": ls_s}))
    return folder


# --- one measured export, in a process of its own -------------------------------------------------

def status_mb(field: str) -> float | None:
    """VmHWM (peak) or VmRSS (now) of this process, in MB; None without /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_mb() -> float:
    import resource

    return status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def samx_export(spec: dict) -> dict:
    import backend.datasets.export  # noqa: F401  # imported before the clock starts, as LS's converter is
    from backend.database.session import Database
    import backend.cli.job_kinds  # noqa: F401  # registers the job handlers, as the samx command does
    from backend.jobs import enqueue, execute

    db = Database(settings_for(Path(spec["data_dir"])))
    job_id = enqueue(db, "export", {"format": spec["format"], "out": spec["out"], "images": "none",
                                    "split": "0.8,0.1,0.1"}, send=False).id
    start = status_mb("VmRSS")
    t = time.perf_counter()
    job = execute(db, job_id)
    seconds = time.perf_counter() - t
    if job.status.value != "succeeded":
        raise SystemExit(f"samx export failed: {job.error}")
    return {"seconds": seconds, "start_mb": start, "result": {k: v for k, v in job.result.items() if k != "splits"}}


def ls_export(spec: dict) -> dict:
    """Converter.convert with thin counting wrappers on where it could reach image files."""
    import PIL.Image

    import label_studio_sdk.converter.converter as lsc
    from label_studio_sdk._extensions.label_studio_tools.core.utils import io as lsio
    from label_studio_sdk.converter import Converter

    calls = {"resolve": 0, "download": 0, "image_open": 0, "image_open_ok": 0}
    resolve, image_open = lsc.get_local_path, PIL.Image.open

    def counted_resolve(*a, **k):
        calls["resolve"] += 1
        return resolve(*a, **k)

    def no_download(*a, **k):
        calls["download"] += 1
        raise FileNotFoundError("bench: downloads are off")

    def counted_open(*a, **k):
        calls["image_open"] += 1
        img = image_open(*a, **k)
        calls["image_open_ok"] += 1
        return img

    lsc.get_local_path, lsio.download_and_cache, PIL.Image.open = counted_resolve, no_download, counted_open
    conv = Converter(LS_CONFIG, project_dir=None, upload_dir=spec["upload_dir"], download_resources=False)
    start = status_mb("VmRSS")
    t = time.perf_counter()
    conv.convert(spec["json"], spec["out"], spec["format"].upper(), is_dir=False)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "start_mb": start, "calls": calls}


def child(spec: dict) -> None:
    out = samx_export(spec) if spec["tool"] == "samx" else ls_export(spec)
    out["peak_mb"] = peak_mb()
    print("RESULT-JSON " + json.dumps(out), flush=True)


def measure(spec: dict, log: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LS_ENV}
    with open(log, "w") as err:  # LS logs a warning per image without boxes
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    line = next((ln for ln in proc.stdout.splitlines()[::-1] if ln.startswith("RESULT-JSON ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"{spec['tool']} {spec['format']} failed (exit {proc.returncode}); see {log}:\n"
                         + log.read_text()[-3000:])
    result = json.loads(line[len("RESULT-JSON "):])
    result["log_lines"] = sum(1 for _ in open(log, errors="replace"))
    return result


def run_all(world: Path, tmp: Path) -> dict[tuple[str, str], dict]:
    runs = {}
    for fmt in FORMATS:
        for tool in TOOLS:
            out = tmp / f"{tool}-{fmt}"
            if tool == "samx":
                data_dir = tmp / f"samx-data-{fmt}"
                data_dir.mkdir()
                shutil.copy2(world / "samx.db", data_dir / "samx.db")
                spec = {"tool": tool, "format": fmt, "data_dir": str(data_dir), "out": str(out)}
            else:
                spec = {"tool": tool, "format": fmt, "json": str(world / "label-studio.json"), "out": str(out),
                        "upload_dir": str(tmp / "no-such-upload-dir")}
            os.sync()  # the previous run's files are written back before this one's clock starts
            runs[tool, fmt] = r = measure(spec, tmp / f"{tool}-{fmt}.log")
            r["out"] = out
            print(f"  {fmt.upper():4} {TOOL_NAMES[tool]:24} {r['seconds']:7.1f} s  {r['peak_mb']:6.0f} MB", flush=True)
    return runs


# --- reading the outputs back ---------------------------------------------------------------------

def match(found: list[tuple], truth: list[tuple]) -> tuple[float, int, int]:
    """Pair each found (label, x0, y0, x1, y1) with the nearest unused true box of its label on
    the same image; (largest edge error in px, boxes not covering their true box, unpaired)."""
    left = [(name, x, y, x + w, y + h) for _, name, x, y, w, h in truth]
    worst, short, unpaired, eps = 0.0, 0, 0, 1e-6
    for name, *edges in found:
        cands = [t for t in left if t[0] == name]
        if not cands:
            unpaired += 1
            continue
        best = min(cands, key=lambda t: max(abs(a - b) for a, b in zip(edges, t[1:])))
        left.remove(best)
        worst = max(worst, max(abs(a - b) for a, b in zip(edges, best[1:])))
        short += (edges[0] > best[1] + eps or edges[1] > best[2] + eps or edges[2] < best[3] - eps
                  or edges[3] < best[4] - eps)
    return worst, short, unpaired + len(left)


def read_coco(files: list[Path]) -> dict:
    images, anns, cats, split_of = [], [], None, {}
    for f in files:
        data = json.loads(f.read_text(encoding="utf-8"))
        images += data["images"]
        anns += data["annotations"]
        cats = data["categories"]
        for im in data["images"]:
            split_of[im["id"]] = f.stem.removeprefix("instances_")
    return {"images": images, "annotations": anns, "categories": cats, "split_of": split_of}


def check_coco(files: list[Path], images_truth: dict, truth: dict) -> dict:
    d = read_coco(files)
    ims, anns = d["images"], d["annotations"]
    stem_of = {im["id"]: int(Path(im["file_name"]).stem) for im in ims}
    found: dict[int, list[tuple]] = defaultdict(list)
    names = {c["id"]: c["name"] for c in d["categories"]}
    coords = []
    for a in anns:
        x, y, w, h = a["bbox"]
        coords += (x, y, w, h)
        found[stem_of[a["image_id"]]].append((names[a["category_id"]], x, y, x + w, y + h))
    worst, short, unpaired = 0.0, 0, 0
    for image_id in set(found) | set(truth):
        e, s, u = match(found.get(image_id, []), truth.get(image_id, []))
        worst, short, unpaired = max(worst, e), short + s, unpaired + u
    patients = defaultdict(set)
    for im in ims:
        patients[images_truth[stem_of[im["id"]]][2]].add(d["split_of"][im["id"]])
    return {"entries": len(ims), "images": len(set(stem_of.values())), "boxes": len(anns),
            "files": [f.name for f in files], "image_ids_distinct": len({im["id"] for im in ims}),
            "null_size": sum(im.get("width") is None or im.get("height") is None for im in ims),
            "cat_ids": sorted(c["id"] for c in d["categories"]),
            "min_ann_id": min((a["id"] for a in anns), default=None),
            "image_id_is_db_id": all(im["id"] == stem_of[im["id"]] for im in ims),
            "file_name": ims[0]["file_name"] if ims else "", "max_err_px": worst, "not_covering": short,
            "unpaired": unpaired, "integer_coords": bool(coords) and all(float(v).is_integer() for v in coords),
            "patients_in_two_splits": sum(len(s) > 1 for s in patients.values())}


OBJECT = re.compile(rb"<object>(.*?)</object>", re.S)
TAG = {t: re.compile(rb"<%s>\s*([^<]*?)\s*</%s>" % (t.encode(), t.encode())) for t in
       ("name", "xmin", "ymin", "xmax", "ymax", "depth", "filename")}


def check_voc(annotations: Path, truth: dict, n_images: int) -> dict:
    """VOC's convention (the devkit's, torchvision's): 1-based inclusive pixels, so a box
    covers [xmin - 1, xmax] in float pixels; errors are measured that way for both tools."""
    files = sorted(annotations.glob("*.xml"))
    worst, short, unpaired, boxes, depths, zero_based = 0.0, 0, 0, 0, set(), 0
    seen = set()
    for f in files:
        data = f.read_bytes()
        image_id = int(f.stem)
        seen.add(image_id)
        depths.add(TAG["depth"].search(data).group(1).decode())
        objs = []
        for o in OBJECT.findall(data):
            v = {t: TAG[t].search(o).group(1).decode() for t in ("name", "xmin", "ymin", "xmax", "ymax")}
            x0, y0, x1, y1 = (float(v[t]) for t in ("xmin", "ymin", "xmax", "ymax"))
            zero_based += x0 == 0 or y0 == 0
            objs.append((v["name"], x0 - 1, y0 - 1, x1, y1))
        boxes += len(objs)
        e, s, u = match(objs, truth.get(image_id, []))
        worst, short, unpaired = max(worst, e), short + s, unpaired + u
    unpaired += sum(len(truth[i]) for i in set(truth) - seen)
    sets = annotations.parent / "ImageSets" / "Main"
    return {"images": len(files), "boxes": boxes, "max_err_px": worst, "not_covering": short, "unpaired": unpaired,
            "depths": sorted(depths), "zero_coords": zero_based,
            "image_sets": sorted(p.name for p in sets.glob("*.txt")) if sets.is_dir() else [],
            "without_boxes_missing": n_images - len(files)}


def check(runs: dict, world: Path) -> list[str]:
    """Count what each export holds; return observations about the Label Studio side and the
    checks that hold for samx (all computed from the files, none assumed)."""
    images_truth, truth = read_truth(world)
    n_images, n_boxes = len(images_truth), sum(map(len, truth.values()))
    empty = n_images - len(truth)
    notes = []
    for tool in TOOLS:
        out = runs[tool, "coco"]["out"]
        files = sorted((out / "annotations").glob("instances_*.json")) if tool == "samx" else [out / "result.json"]
        c = runs[tool, "coco"]["check"] = check_coco(files, images_truth, truth)
        runs[tool, "coco"]["images"], runs[tool, "coco"]["boxes"] = c["images"], c["boxes"]
        out = runs[tool, "voc"]["out"]
        voc = out / "VOCdevkit" / "VOC2007" / "Annotations" if tool == "samx" else out / "Annotations"
        v = runs[tool, "voc"]["check"] = check_voc(voc, truth, n_images)
        runs[tool, "voc"]["images"], runs[tool, "voc"]["boxes"] = v["images"], v["boxes"]
        who = "samx" if tool == "samx" else "LS"
        if c["entries"] != c["images"] or c["image_ids_distinct"] != c["entries"]:
            notes.append(f"{who} COCO: {c['entries']} image entries ({c['image_ids_distinct']} distinct ids) "
                         f"for {c['images']} images")
        elif tool == "ls":
            notes.append(f"{who} COCO: one image entry per image ({c['entries']}), none repeated per annotation")
        if c["null_size"]:
            notes.append(f"{who} COCO: {c['null_size']} image entries without width/height (null) - "
                         f"the {empty} images without boxes")
        if c["cat_ids"] and c["cat_ids"][0] == 0:
            notes.append(f"{who} COCO: category ids {c['cat_ids']} start at 0 (COCO's start at 1; "
                         f"0 is background to torchvision's detectors); annotation ids start at {c['min_ann_id']}")
        if not c["image_id_is_db_id"]:
            notes.append(f"{who} COCO: image ids are positions in the export (0..N-1), not task ids")
        if not re.fullmatch(r"\d{8}\.\w+", c["file_name"]):
            notes.append(f"{who} COCO: file_name is {c['file_name']!r}, the upload URL path, not a file "
                         f"relative to an image folder")
        if c["integer_coords"]:
            notes.append(f"{who} COCO: every bbox coordinate is a whole number (rounded)")
        notes.append(f"{who} COCO: boxes match the database to {c['max_err_px']:.1e} px"
                     + (f"; {c['unpaired']} boxes missing or extra" if c["unpaired"] else ""))
        if len(files) == 1:
            notes.append(f"{who} COCO: one file ({files[0].name}), no train/val/test split")
        else:
            notes.append(f"{who} COCO: {len(files)} split files, {c['patients_in_two_splits']} patients in two splits")
        if v["without_boxes_missing"]:
            notes.append(f"{who} VOC: no XML for {v['without_boxes_missing']} images (those without boxes)")
        notes.append(f"{who} VOC: edges off by up to {v['max_err_px']:.2f} px read as VOC (1-based, inclusive); "
                     f"{v['not_covering']} of {v['boxes']} boxes have an edge inside their true box"
                     + (f"; {v['zero_coords']} boxes have a 0 coordinate (0-based)" if v["zero_coords"] else "")
                     + (f"; {v['unpaired']} boxes missing or extra" if v["unpaired"] else ""))
        if v["depths"] != ["1"]:
            notes.append(f"{who} VOC: depth {'/'.join(v['depths'])} for grayscale radiographs")
        if not v["image_sets"]:
            notes.append(f"{who} VOC: no ImageSets/Main lists (no splits; torchvision's VOCDetection needs them)")
    for fmt in FORMATS:
        k = runs["ls", fmt]["calls"]
        notes.append(f"LS {fmt.upper()}: resolved {k['resolve']} image URLs, {k['download']} downloads, "
                     f"{k['image_open']} image opens ({k['image_open_ok']} succeeded), "
                     f"{runs['ls', fmt]['log_lines']} log lines on stderr")
    for tool, fmt in runs:
        r = runs[tool, fmt]
        r["counts_ok"] = (r["images"], r["boxes"]) == (n_images, n_boxes)
    return notes


# --- report -----------------------------------------------------------------------------------------

def report(runs: dict, notes: list[str], n_images: int, n_boxes: int) -> None:
    print()
    print(f"{'format':6} {'tool':24} {'seconds':>8} {'peak MB':>8} {'start MB':>8} {'images':>8} {'boxes':>8}"
          f"   (database: {n_images} images, {n_boxes} boxes; start MB: RSS after imports)")
    for fmt in FORMATS:
        for tool in TOOLS:
            r = runs[tool, fmt]
            flag = "" if r["counts_ok"] else "  <- counts differ"
            print(f"{fmt.upper():6} {TOOL_NAMES[tool]:24} {r['seconds']:8.1f} {r['peak_mb']:8.0f} "
                  f"{r['start_mb'] or 0:8.0f} {r['images']:8d} {r['boxes']:8d}{flag}")
    for tool in TOOLS:
        total = sum(runs[tool, f]["seconds"] for f in FORMATS)
        peak = max(runs[tool, f]["peak_mb"] for f in FORMATS)
        print(f"{'both':6} {TOOL_NAMES[tool]:24} {total:8.1f} {peak:8.0f}")
    print("\nobservations (from reading the outputs back):")
    for n in notes:
        print(f"  - {n}")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
        return
    t0 = time.perf_counter()
    n_images, n_boxes = sizes()
    world = cached_world(n_images, n_boxes)
    with tempfile.TemporaryDirectory(prefix="samx-bench-export-") as tmp:
        runs = run_all(world, Path(tmp))
        notes = check(runs, world)
    report(runs, notes, n_images, n_boxes)
    samx_s = sum(runs["samx", f]["seconds"] for f in FORMATS)
    ls_s = sum(runs["ls", f]["seconds"] for f in FORMATS)
    ratio = ls_s / samx_s
    peak = max(runs["samx", f]["peak_mb"] for f in FORMATS)
    print(f"\nwhole benchmark: {time.perf_counter() - t0:.0f} s")
    print(f"ratio = Label Studio {ls_s:.1f} s / samx {samx_s:.1f} s (COCO + VOC): samx's export is "
          + (f"{ratio:.2f}x as fast" if ratio >= 1 else f"{1 / ratio:.2f}x slower")
          + f"; peak_mb = samx's largest peak RSS ({peak:.0f} MB)")
    print(f"RESULT ratio={ratio:.2f} peak_mb={peak:.0f}")


if __name__ == "__main__":
    main()
