"""Exports as third-party readers see them (torchvision's loaders, datumaro's and CVAT's layout
conventions) and datasets as those tools write them, imported back: issue 25's defects."""
from __future__ import annotations

import csv
import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from sqlalchemy import func, select

from backend.database.schema import Box, Image, JobStatus, WeakLabel
from backend.database.session import Database
from backend.datasets.installation import NORMAL
from backend.images.store import load_pixels, render_display
from exports.manifest import read_manifest
from imaging.phantoms import generate_phantoms
from tests.conftest import make_settings
from tests.factories import make_export_world, run_job
from tests.test_exports import db_boxes


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    generate_phantoms(out, 14, seed=5, fmt="dcm", size=128, lesion_rate=0.7)
    return out


@pytest.fixture
def other_db(tmp_path):
    """A second, empty installation: where a dataset from elsewhere is imported."""
    (tmp_path / "other").mkdir()
    other = Database(make_settings(tmp_path / "other"))
    other.upgrade()
    other.seed_vocabulary()
    yield other
    other.dispose()


@pytest.fixture
def world_db(db, phantoms):
    """The export world on SQLite and PostgreSQL (where the JSON of exported hashes is queried)."""
    make_export_world(db, phantoms)
    return db


def export(db, out: Path, fmt: str, **params) -> dict:
    job = run_job(db, "export", format=fmt, out=str(out), **params)
    assert job.status == JobStatus.succeeded, job.error
    return job.result


def import_(db, fmt: str, path: Path) -> dict:
    job = run_job(db, "import", format=fmt, path=str(path))
    assert job.status == JobStatus.succeeded, job.error
    return job.result


def counts(db) -> tuple[int, int]:
    with db.session() as s:
        return s.scalar(select(func.count(Image.id))), s.scalar(select(func.count(Box.id)))


# ---------------------------------------------------------------- pixels


def test_loaders_see_the_pixels_the_radiologist_saw(sqlite_db, phantoms, tmp_path):
    """Every image format through the loaders people use: torchvision's CocoDetection and
    VOCDetection (PIL convert("RGB")), OpenCV's imread as Ultralytics calls it. The 8-bit formats
    are the display rendering (exactly for PNG, to JPEG's rounding for jpg), never saturated;
    png16 is the stored pixels, whole, for a loader that reads 16 bits."""
    from PIL import Image as PILImage
    from torchvision.datasets import CocoDetection, VOCDetection

    class FullDepthCoco(CocoDetection):
        """CocoDetection with PIL's own mode kept, not convert("RGB"): 16 bits in."""

        def _load_image(self, id: int):
            return PILImage.open(os.path.join(self.root, self.coco.loadImgs(id)[0]["file_name"]))

    db = sqlite_db
    make_export_world(db, phantoms)
    with db.session() as s:
        stored = {i: p for i, p in s.execute(select(Image.id, Image.store_path).where(Image.store_path.is_not(None)))}
    display = {i: render_display(load_pixels(db.settings, p)) for i, p in stored.items()}

    def check_8bit(image_id: int, arr: np.ndarray, lossy: bool) -> None:
        if arr.ndim == 3:
            assert (arr == arr[..., :1]).all()  # grey in every channel
            arr = arr[..., 0]
        want = display[image_id]
        assert arr.shape == want.shape and (arr == 255).mean() < 0.2 and arr.std() > 20  # not saturated
        diff = np.abs(arr.astype(int) - want)
        if lossy:  # JPEG at quality 95 on noisy 128 px phantoms; another windowing is off by tens
            assert diff.mean() < 2 and np.percentile(diff, 99) <= 10, (diff.mean(), diff.max())
        else:
            assert diff.max() == 0

    seen = 0
    for image_format in ("png8", "jpg", "png16"):
        out = tmp_path / f"coco-{image_format}"
        export(db, out, "coco", image_format=image_format, split="1,0,0")
        ann = out / "annotations" / "instances_train.json"
        loader = (FullDepthCoco if image_format == "png16" else CocoDetection)(str(out / "images" / "train"), str(ann))
        for k in range(len(loader)):
            image, _ = loader[k]
            image_id = loader.ids[k]
            if image_format == "png16":
                full = np.asarray(image)
                want = cv2.imread(str(db.settings.data_dir / stored[image_id]), cv2.IMREAD_UNCHANGED)
                assert full.dtype.itemsize == 2 and np.array_equal(full, want) and (full == 65535).mean() < 0.2
                path = out / "images" / "train" / f"{image_id:08d}.png"
                assert np.array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), want)
            else:
                check_8bit(image_id, np.asarray(image), lossy=image_format == "jpg")
            seen += 1
    out = tmp_path / "voc"
    export(db, out, "voc", split="1,0,0")
    for image, target in VOCDetection(str(out), year="2007", image_set="train"):
        check_8bit(int(target["annotation"]["source"]["image_id"]), np.asarray(image), lossy=True)
        seen += 1
    for image_format in ("png8", "jpg"):
        out = tmp_path / f"yolo-{image_format}"
        export(db, out, "yolo", image_format=image_format, split="1,0,0")
        for path in sorted((out / "images" / "train").iterdir()):
            check_8bit(int(path.stem), cv2.imread(str(path)), lossy=image_format == "jpg")  # Ultralytics' imread
            seen += 1
    assert seen == 6 * len(stored) - 6  # every format saw every image but the discarded one


# ---------------------------------------------------------------- layouts


def test_samx_files_stay_out_of_each_formats_layout_and_voc_declares_its_labels(sqlite_db, phantoms, tmp_path):
    db = sqlite_db
    make_export_world(db, phantoms)
    layouts = {"coco": {"annotations", "images"}, "voc": {"VOCdevkit"},
               "yolo": {"images", "labels", "classes.txt", "data.yaml"}}
    for fmt, top in layouts.items():
        export(db, tmp_path / fmt, fmt)
        assert {p.name for p in (tmp_path / fmt).iterdir()} == top | {"samx"}  # no CSV at the root
        assert {p.name for p in (tmp_path / fmt / "samx").iterdir()} == {"manifest.json", "SHA256SUMS",
                                                                          "image_labels.csv"}
    names = (tmp_path / "yolo" / "classes.txt").read_text(encoding="utf-8").splitlines()
    lines = (tmp_path / "voc" / "VOCdevkit" / "VOC2007" / "labelmap.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# label:color_rgb:parts:actions"
    fields = [line.split(":") for line in lines[1:]]
    assert all(len(f) == 4 and f[2] == f[3] == "" for f in fields)
    assert [f[0] for f in fields] == ["background", *names]
    colors = [tuple(int(c) for c in f[1].split(",")) for f in fields]
    assert colors[:3] == [(0, 0, 0), (128, 0, 0), (0, 128, 0)] and len(set(colors)) == len(colors)  # the devkit's


def test_exports_before_the_samx_folder_still_import(sqlite_db, phantoms, tmp_path, other_db):
    db = sqlite_db
    make_export_world(db, phantoms)
    out = tmp_path / "coco"
    export(db, out, "coco")
    for name in ("manifest.json", "image_labels.csv", "SHA256SUMS"):  # the old layout: all at the root
        (out / "samx" / name).rename(out / name)
    (out / "samx").rmdir()
    assert read_manifest(out)["format"] == "coco"
    r = import_(other_db, "coco", out)
    with db.session() as s:
        regions = s.scalar(select(func.count(WeakLabel.id)).where(WeakLabel.label_id.is_not(None)))
    assert r["ingested"] == r["images"] and r["labels_added"] == regions  # image_labels.csv read at the root


# ---------------------------------------------------------------- VOC as datumaro writes it


def test_voc_import_takes_every_image_the_layout_lists_or_holds(sqlite_db, phantoms, tmp_path, other_db):
    """datumaro writes an XML only for an annotated image. Every image comes in: one listed in an
    image set without XML is a known negative, one JPEGImages merely holds is not, and a listed
    image without its file is reported."""
    db = sqlite_db
    make_export_world(db, phantoms)
    out = tmp_path / "voc"
    first = export(db, out, "voc", split="1,0,0")
    shutil.rmtree(out / "samx")
    root = out / "VOCdevkit" / "VOC2007"
    negatives = {p.stem for p in (root / "Annotations").glob("*.xml") if ET.parse(p).find("object") is None}
    assert 0 < len(negatives) < first["images"]
    for stem in negatives:
        (root / "Annotations" / f"{stem}.xml").unlink()
    for lst in (root / "ImageSets" / "Main").glob("*_*.txt"):
        lst.unlink()  # datumaro writes the split lists only
    with open(root / "ImageSets" / "Main" / "train.txt", "a") as f:
        f.write("ghost\n")
    held = cv2.imread(str(root / "JPEGImages" / f"{min(negatives)}.jpg"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(root / "JPEGImages" / "held.png"), np.flipud(held))  # another image, in no list
    r = import_(other_db, "voc", out)
    assert r["images"] == first["images"] + 2 and r["failed"] == 1, r
    assert r["ingested"] == first["images"] + 1 and r["boxes_added"] == first["boxes"]
    assert any("ghost" in p and "file missing" in p for p in r["problems"])
    assert r["labels_added"] == len(negatives)
    with other_db.session() as s:
        normal = {Path(p).stem for p, m in s.execute(select(Image.source_path, Image.meta)) if m.get(NORMAL)}
    assert normal == negatives  # not "held": nothing says anyone read it
    from backend.detector.data import labelled_images, unlabelled_images

    with other_db.session() as s:  # the detector learns from them as labelled normals, boxes from the rest
        stem_of = dict(s.execute(select(Image.id, Image.source_path)).all())
        learned = {Path(stem_of[r.image_id]).stem: r for r in labelled_images(s)}
        waiting = {Path(stem_of[r[0]]).stem for r in unlabelled_images(s)}
    assert negatives <= set(learned) and not any(learned[n].abnormal or len(learned[n].boxes) for n in negatives)
    assert not negatives & waiting and "held" in waiting
    again = import_(other_db, "voc", out)
    assert again["ingested"] == again["boxes_added"] == again["labels_added"] == 0
    export(other_db, tmp_path / "back", "coco")  # the negatives travel on, in image_labels.csv
    with open(tmp_path / "back" / "samx" / "image_labels.csv", newline="") as f:
        abnormal = {row["image_id"]: row["abnormal"] for row in csv.DictReader(f)}
    with other_db.session() as s:
        stem = {str(i): Path(p).stem for i, p in s.execute(select(Image.id, Image.source_path))}
    assert {stem[i] for i, a in abnormal.items() if a == "0"} == negatives
    assert abnormal[next(i for i, st in stem.items() if st == "held")] == ""


# ---------------------------------------------------------------- our export, rewritten elsewhere


def _rewrite_coco(out: Path) -> None:
    """As another tool re-serialises it: its own image ids, file names and category ids, no samx fields."""
    for ann_file in (out / "annotations").glob("*.json"):
        data = json.loads(ann_file.read_text())
        cat_id = {c["id"]: 100 - c["id"] for c in data["categories"]}
        img_id = {}
        images = []
        for n, im in enumerate(data["images"], 1):
            img_id[im["id"]] = n
            new = f"img_{ann_file.stem}_{n}.png"
            folder = out / "images" / ann_file.stem.removeprefix("instances_")
            (folder / im["file_name"]).rename(folder / new)
            images.append({"id": n, "file_name": new, "width": im["width"], "height": im["height"]})
        anns = [{"id": k, "image_id": img_id[a["image_id"]], "category_id": cat_id[a["category_id"]],
                 "bbox": a["bbox"], "area": a["area"], "iscrowd": 0} for k, a in enumerate(data["annotations"], 1)]
        cats = [{"id": cat_id[c["id"]], "name": c["name"]} for c in data["categories"]]
        ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}, indent=2))


def _rewrite_voc(out: Path) -> None:
    """As datumaro writes VOC: XML only for annotated images, split lists only."""
    root = out / "VOCdevkit" / "VOC2007"
    for xml in (root / "Annotations").glob("*.xml"):
        if ET.parse(xml).find("object") is None:
            xml.unlink()
    for lst in (root / "ImageSets" / "Main").glob("*_*.txt"):
        lst.unlink()


def _rewrite_yolo(out: Path) -> None:
    """Renamed files, names as a list."""
    for label in sorted((out / "labels").rglob("*.txt")):
        image = next((out / "images" / label.parent.name).glob(f"{label.stem}.*"))
        image.rename(image.with_name(f"x{label.stem}{image.suffix}"))
        label.rename(label.with_name(f"x{label.name}"))
    data = yaml.safe_load((out / "data.yaml").read_text())
    data["names"] = [data["names"][i] for i in range(len(data["names"]))]
    del data["nc"]
    (out / "data.yaml").write_text(yaml.safe_dump(data))


def test_our_export_rewritten_elsewhere_comes_back_onto_its_images(world_db, tmp_path):
    """No manifest, another tool's ids, names and conventions: each image file is still the one
    samx wrote, so it maps back to its image; no image and no box is added twice."""
    db = world_db
    before = counts(db)
    for fmt, rewrite in (("coco", _rewrite_coco), ("voc", _rewrite_voc), ("yolo", _rewrite_yolo)):
        out = tmp_path / fmt
        first = export(db, out, fmt)
        shutil.rmtree(out / "samx")
        rewrite(out)
        r = import_(db, fmt, out)
        assert r["matched"] == first["images"] and r["ingested"] == r["failed"] == 0, (fmt, r)
        assert r["boxes_added"] == r["labels_added"] == 0 and r["boxes_present"] == first["boxes"], (fmt, r)
    assert counts(db) == before


# ---------------------------------------------------------------- YOLO import


def test_yolo_export_import_round_trips(sqlite_db, phantoms, tmp_path, other_db):
    db = sqlite_db
    make_export_world(db, phantoms)
    first = export(db, tmp_path / "yolo", "yolo")
    r = import_(other_db, "yolo", tmp_path / "yolo")
    assert r["ingested"] == r["images"] == first["images"] and r["failed"] == 0 and not r["problems"], r
    assert r["boxes_added"] == first["boxes"]
    want = sorted(b for boxes in db_boxes(db).values() for b in boxes)  # clipped to the image, as exported
    got = sorted(b for boxes in db_boxes(other_db).values() for b in boxes)
    assert [b[0] for b in got] == [b[0] for b in want]
    np.testing.assert_allclose([b[1:] for b in got], [b[1:] for b in want], rtol=1e-9, atol=1e-9)
    again = import_(other_db, "yolo", tmp_path / "yolo" / "data.yaml")
    assert again["ingested"] == again["boxes_added"] == again["labels_added"] == 0
    label = next(p for p in sorted((tmp_path / "yolo" / "labels").rglob("*.txt")) if p.read_text())
    with open(label, "a") as f:
        f.write("7 0.5 0.5 0.1 0.1\n0 0.1 0.1 0.2 0.1 0.2 0.2\n")  # an unknown class, a segment
    bad = import_(other_db, "yolo", tmp_path / "yolo")
    text = "\n".join(bad["problems"])
    assert "line" in text and "class 7" in text and "segments are not boxes" in text
    assert bad["boxes_added"] == 0 and bad["boxes_present"] == first["boxes"] and bad["failed"] == 0


def test_known_negatives_are_labelled_normals_on_every_database(db):
    """The JSON lookup of an imported known negative, on SQLite and PostgreSQL alike."""
    from backend.database.schema import ImageStatus
    from backend.detector.data import labelled_images, unlabelled_images
    from tests.factories import make_cluster_run

    make_cluster_run(db, sizes=(3,))
    with db.session() as s:
        images = s.scalars(select(Image).order_by(Image.id)).all()
        for image, meta in zip(images, ({NORMAL: True}, {NORMAL: False}, {"other": 1})):
            image.meta, image.status = {**(image.meta or {}), **meta}, ImageStatus.imported
            image.rows = image.rows or 64
            image.columns = image.columns or 64
        ids = [i.id for i in images]
    with db.session() as s:
        learned, waiting = labelled_images(s), [r[0] for r in unlabelled_images(s)]
    assert [(r.image_id, r.abnormal, len(r.boxes)) for r in learned] == [(ids[0], False, 0)]
    assert waiting == ids[1:]
