"""COCO / VOC / YOLO exports, checked with the tools users load them with (pycocotools,
torchvision), and imports back into samx."""
from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from backend.database.session import Database
from backend.database.schema import Box, Image, JobStatus, Label, WeakLabel
from exports.records import BoxRecord, clip_box
from training.splits import assign_splits, group_images, parse_fractions
from exports.voc import decode_box, encode_box
from imaging.phantoms import generate_phantoms
from tests.conftest import make_settings
from tests.factories import ODD_LESION, make_export_world, run_job

N_PHANTOMS = 14


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    """DICOM phantoms with fake PHI in every identifying header tag, lesions on most."""
    out = tmp_path_factory.mktemp("phantoms")
    generate_phantoms(out, N_PHANTOMS, seed=5, fmt="dcm", size=128, lesion_rate=0.7)
    return out


@pytest.fixture
def world(db, phantoms):
    return {"db": db, **make_export_world(db, phantoms)}


def export(db, out: Path, fmt: str, **params):
    job = run_job(db, "export", format=fmt, out=str(out), **params)
    assert job.status == JobStatus.succeeded, job.error
    return job.result


def db_boxes(db, sources=("annotation", "imported")) -> dict[int, list[tuple]]:
    """image id -> sorted (label name, x, y, w, h) of the boxes an export should contain, clipped."""
    out: dict[int, list[tuple]] = {}
    keep = exported_ids(db)
    with db.session() as s:
        rows = s.execute(select(Box, Label.name, Image.columns, Image.rows).join(Label, Label.id == Box.label_id)
                         .join(Image, Image.id == Box.image_id).where(Box.source.in_(sources))).all()
        for b, name, w, h in rows:
            if b.image_id not in keep:
                continue
            c = clip_box(BoxRecord(0, b.x, b.y, b.width, b.height), w, h)
            out.setdefault(b.image_id, []).append((name, c.x, c.y, c.w, c.h))
    return {k: sorted(v) for k, v in out.items()}


def exported_ids(db) -> set[int]:
    """Every imported image but the discarded one."""
    with db.session() as s:
        discarded = set(s.scalars(select(WeakLabel.image_id).where(WeakLabel.label_id.is_(None))))
        return set(s.scalars(select(Image.id))) - discarded


# ---------------------------------------------------------------- COCO


def test_coco_export_loads_in_pycocotools_and_torchvision(world, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from torchvision.datasets import CocoDetection

    db = world["db"]
    r = export(db, tmp_path / "coco", "coco")
    expected = db_boxes(db)
    ids = exported_ids(db)
    assert r["images"] == len(ids) and r["discarded_images_left_out"] == 1
    seen_images, seen_boxes = set(), {}
    for split in ("train", "val", "test"):
        ann_file = tmp_path / "coco" / "annotations" / f"instances_{split}.json"
        gt = COCO(str(ann_file))
        cats = gt.loadCats(gt.getCatIds())
        assert [c["id"] for c in cats] == list(range(1, len(cats) + 1))  # 1-based, no gaps
        assert [c["name"] for c in cats][:2] == ["benign", "malignant"] and ODD_LESION in [c["name"] for c in cats]
        names = {c["id"]: c["name"] for c in cats}
        img_ids = gt.getImgIds()
        assert len(img_ids) == len(set(img_ids))  # one entry per image
        assert not seen_images & set(img_ids)  # and in one split only
        seen_images |= set(img_ids)
        for a in gt.loadAnns(gt.getAnnIds()):
            seen_boxes.setdefault(a["image_id"], []).append((names[a["category_id"]], *a["bbox"]))
            assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3]) and a["iscrowd"] == 0
            assert a["segmentation"] == []  # boxes only, but the key datumaro expects is there
        if gt.getAnnIds():  # ground truth scored against itself: AP = 1
            dets = [{**a, "score": 1.0} for a in gt.loadAnns(gt.getAnnIds())]
            ev = COCOeval(gt, gt.loadRes(dets), "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            assert ev.stats[0] == pytest.approx(1.0) and ev.stats[1] == pytest.approx(1.0)
        ds = CocoDetection(str(tmp_path / "coco" / "images" / split), str(ann_file))
        assert len(ds) == len(img_ids)
        for k in range(len(ds)):
            image, target = ds[k]
            info = gt.loadImgs(ds.ids[k])[0]
            assert image.size == (info["width"], info["height"])
    assert seen_images == ids  # images without boxes are kept
    assert {k: sorted(v) for k, v in seen_boxes.items()} == expected  # exact floats, clipped to the image
    edge = next(v for v in expected.values() if any(b[0] == ODD_LESION for b in v))
    assert (ODD_LESION, 20.3, 30.6, 0.37, 0.41) in edge  # the tiny box, untouched
    assert any(b[0] == "benign" and b[2:] == (5.0, 3.5, 3.0) for b in edge)  # 9 px wide, clipped to the 3.5 inside
    assert r["clipped_boxes"] == 1


def test_coco_png16_images_are_the_stored_16_bit_pixels(world, tmp_path):
    import cv2

    db = world["db"]
    export(db, tmp_path / "coco", "coco", images="link", image_format="png16")
    export(db, tmp_path / "copy", "coco", image_format="png16")
    with db.session() as s:
        image = s.scalars(select(Image).order_by(Image.id)).first()
    stored = db.settings.data_dir / image.store_path
    exported = next((tmp_path / "coco" / "images").rglob(f"{image.id:08d}.png"))
    assert exported.read_bytes() == stored.read_bytes()
    arr = cv2.imread(str(exported), cv2.IMREAD_UNCHANGED)
    assert arr.dtype == np.uint16 and arr.shape == (image.rows, image.columns)
    copy = next((tmp_path / "copy" / "images").rglob(f"{image.id:08d}.png"))
    assert copy.read_bytes() == stored.read_bytes()
    assert (tmp_path / "copy" / "samx" / "manifest.json").read_text() == \
        (tmp_path / "coco" / "samx" / "manifest.json").read_text()


# ---------------------------------------------------------------- VOC


def test_voc_export_reads_in_torchvision(world, tmp_path):
    from torchvision.datasets import VOCDetection

    db = world["db"]
    r = export(db, tmp_path / "voc", "voc")
    expected = db_boxes(db)
    sizes = {}
    with db.session() as s:
        for i, w, h in s.execute(select(Image.id, Image.columns, Image.rows)):
            sizes[i] = (w, h)
    seen = {}
    for image_set in ("train", "val", "test"):
        ds = VOCDetection(str(tmp_path / "voc"), year="2007", image_set=image_set)
        for k in range(len(ds)):
            image, target = ds[k]
            ann = target["annotation"]
            image_id = int(ann["source"]["image_id"])
            w, h = sizes[image_id]
            assert image.size == (w, h) and (int(ann["size"]["width"]), int(ann["size"]["height"])) == (w, h)
            for obj in ann.get("object", []):
                bb = {k: int(v) for k, v in obj["bndbox"].items()}
                assert 1 <= bb["xmin"] <= bb["xmax"] <= w and 1 <= bb["ymin"] <= bb["ymax"] <= h
                touches = bb["xmin"] == 1 or bb["ymin"] == 1 or bb["xmax"] == w or bb["ymax"] == h
                assert obj["truncated"] == str(int(touches))
                seen.setdefault(image_id, []).append((obj["name"], bb["xmin"], bb["ymin"], bb["xmax"], bb["ymax"]))
    assert len(VOCDetection(str(tmp_path / "voc"), year="2007", image_set="trainval")) == \
        r["splits"]["train"]["images"] + r["splits"]["val"]["images"]
    assert set(seen) == set(expected)
    for image_id, boxes in expected.items():
        w, h = sizes[image_id]
        want = sorted((name, *encode_box(BoxRecord(0, x, y, bw, bh), w, h)) for name, x, y, bw, bh in boxes)
        assert sorted(seen[image_id]) == want
        for name, x, y, bw, bh in boxes:  # covering pixels: never smaller than the float box
            x0, y0, x1, y1 = encode_box(BoxRecord(0, x, y, bw, bh), w, h)
            assert x0 - 1 <= x and y0 - 1 <= y and x1 >= x + bw - 1e-9 and y1 >= y + bh - 1e-9
    # per-class image sets, as the devkit has them
    main = tmp_path / "voc" / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    lines = (main / "malignant_train.txt").read_text().splitlines()
    assert len(lines) == r["splits"]["train"]["images"] and {ln.split()[1] for ln in lines} <= {"1", "-1"}


def test_voc_integer_boxes_do_not_drift():
    """decode -> encode is the identity, and float boxes round outwards, not inwards."""
    rng = np.random.default_rng(0)
    for _ in range(2000):
        w, h = int(rng.integers(2, 400)), int(rng.integers(2, 400))
        x, y = float(rng.uniform(0, w - 1)), float(rng.uniform(0, h - 1))
        bw, bh = float(rng.uniform(1e-3, w - x)), float(rng.uniform(1e-3, h - y))
        voc = encode_box(BoxRecord(1, x, y, bw, bh), w, h)
        assert voc[0] - 1 <= x and voc[2] >= x + bw - 1e-9 and voc[2] - voc[0] < bw + 2
        again = encode_box(BoxRecord(1, *decode_box(*voc)), w, h)
        assert again == voc
    assert encode_box(BoxRecord(1, 0.0, 0.0, 10.0, 5.0), 10, 5) == (1, 1, 10, 5)  # the whole image


# ---------------------------------------------------------------- YOLO


def test_yolo_boxes_convert_back_to_the_database(world, tmp_path):
    import yaml

    from exports.yolo import decode_box as yolo_decode

    db = world["db"]
    export(db, tmp_path / "yolo", "yolo")
    expected = db_boxes(db)
    names = (tmp_path / "yolo" / "classes.txt").read_text(encoding="utf-8").splitlines()
    data = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text(encoding="utf-8"))
    assert data["names"] == dict(enumerate(names)) and data["nc"] == len(names) and ODD_LESION in names
    with db.session() as s:
        sizes = {i: (w, h) for i, w, h in s.execute(select(Image.id, Image.columns, Image.rows))}
    seen = {}
    for label_file in (tmp_path / "yolo" / "labels").rglob("*.txt"):
        split = label_file.parent.name
        image_id = int(label_file.stem)
        assert (tmp_path / "yolo" / data[split] / f"{label_file.stem}.png").is_file()
        w, h = sizes[image_id]
        for line in label_file.read_text().splitlines():
            cls, *vals = line.split()
            box = yolo_decode(*map(float, vals), w, h)
            seen.setdefault(image_id, []).append((names[int(cls)], *box))
    assert set(seen) == set(expected)
    for image_id, boxes in expected.items():
        got = sorted(seen[image_id])
        assert [b[0] for b in got] == [b[0] for b in boxes]
        for g, e in zip(got, boxes):
            np.testing.assert_allclose(g[1:], e[1:], rtol=1e-6, atol=0)
    empty = [p for p in (tmp_path / "yolo" / "labels").rglob("*.txt") if not p.read_text()]
    assert len(empty) == 1  # the image without boxes is a known negative


# ---------------------------------------------------------------- every format


def test_no_phi_in_any_exported_byte(world, phantoms, tmp_path):
    """Phantoms carry fake PHI in every identifying tag; none of it, and nothing of the source
    paths, may reach any exported file (annotations, images, manifest, checksums)."""
    db = world["db"]
    truth = world["truth"]
    needles = {v for e in truth["images"] for v in e["phi"] if len(v) >= 4}
    needles |= {e["patient"] for e in truth["images"]}
    needles |= {Path(e["file"]).stem for e in truth["images"]} | {Path(e["file"]).parent.name for e in truth["images"]}
    needles |= {str(phantoms)}
    assert len(needles) > 50
    for fmt in ("coco", "voc", "yolo"):
        export(db, tmp_path / "exports" / fmt, fmt)
    files = [p for p in (tmp_path / "exports").rglob("*") if p.is_file()]
    assert len(files) > 3 * N_PHANTOMS
    for path in files:
        data = path.read_bytes()
        low = data.lower()
        for needle in needles:
            for form in {needle, needle.replace("^", " ")}:
                assert form.encode().lower() not in low, f"{form!r} in {path}"
                assert form.encode("utf-16-le").lower() not in low, f"{form!r} (UTF-16) in {path}"


def test_exports_are_deterministic_and_checksummed(world, tmp_path):
    db = world["db"]
    for fmt in ("coco", "voc", "yolo"):
        a = export(db, tmp_path / f"{fmt}-a", fmt)
        b = export(db, tmp_path / f"{fmt}-b", fmt)
        assert a["checksum"] == b["checksum"]
        files_a = sorted(p.relative_to(tmp_path / f"{fmt}-a") for p in (tmp_path / f"{fmt}-a").rglob("*") if p.is_file())
        files_b = sorted(p.relative_to(tmp_path / f"{fmt}-b") for p in (tmp_path / f"{fmt}-b").rglob("*") if p.is_file())
        assert files_a == files_b
        for rel in files_a:
            assert (tmp_path / f"{fmt}-a" / rel).read_bytes() == (tmp_path / f"{fmt}-b" / rel).read_bytes(), rel
        check = subprocess.run(["sha256sum", "--check", "--quiet", "samx/SHA256SUMS"], cwd=tmp_path / f"{fmt}-a",
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        manifest = json.loads((tmp_path / f"{fmt}-a" / "samx" / "manifest.json").read_text())
        assert manifest["counts"]["images"] == a["images"] and manifest["format"] == fmt


def test_splits_never_share_a_patient_or_study(world, tmp_path):
    db = world["db"]
    export(db, tmp_path / "coco", "coco", split="0.5,0.25,0.25", seed=3)
    rows = (tmp_path / "coco" / "samx" / "image_labels.csv").read_text().splitlines()[1:]
    split_of = {int(r.split(",")[1]): r.split(",")[2] for r in rows}
    with db.session() as s:
        meta = {i: (p, st) for i, p, st in s.execute(select(Image.id, Image.patient_pseudonym, Image.study_uid))}
    by_patient, by_study = {}, {}
    for image_id, split in split_of.items():
        patient, study = meta[image_id]
        assert patient and study
        by_patient.setdefault(patient, set()).add(split)
        by_study.setdefault(study, set()).add(split)
    assert all(len(v) == 1 for v in by_patient.values()) and all(len(v) == 1 for v in by_study.values())
    assert len(set(split_of.values())) == 3


def test_split_assignment_groups_and_fractions():
    # a patient with one study, and a study shared by two pseudonyms (merged): 3 groups
    groups = group_images([(1, "A", "s1"), (2, "A", "s2"), (3, "B", "s2"), (4, None, None), (5, None, "s9")])
    assert groups[1] == groups[2] == groups[3] and len({groups[4], groups[5], groups[1]}) == 3
    many = {i: f"g{i // 3}" for i in range(3000)}  # 1000 groups of 3 images
    split = assign_splits(many, parse_fractions("0.7,0.2,0.1"), seed=1)
    counts = {s: sum(1 for v in split.values() if v == s) for s in ("train", "val", "test")}
    assert abs(counts["train"] - 2100) <= 3 and abs(counts["val"] - 600) <= 3 and abs(counts["test"] - 300) <= 3
    assert split == assign_splits(dict(reversed(list(many.items()))), parse_fractions("0.7,0.2,0.1"), seed=1)
    assert split != assign_splits(many, parse_fractions("0.7,0.2,0.1"), seed=2)
    for bad in ("0.5,0.5", "0.8,0.3,0.1", "a,b,c", "-0.1,0.6,0.5"):
        with pytest.raises(ValueError, match="fractions"):
            parse_fractions(bad)


def test_filters_choose_sources_regions_and_model_versions(world, tmp_path):
    db = world["db"]
    # predicted boxes only at or above the score, and only when asked for
    base = export(db, tmp_path / "a", "coco", split="1,0,0")
    with_pred = ["weak", "corrected", "imported", "predicted"]
    pred = export(db, tmp_path / "b", "coco", split="1,0,0", sources=with_pred, min_score=0.5)
    assert pred["boxes"] == base["boxes"] + 1
    low = export(db, tmp_path / "c", "coco", split="1,0,0", sources=with_pred, min_score=0.2)
    assert low["boxes"] == base["boxes"] + 2
    other = run_job(db, "export", format="coco", out=str(tmp_path / "d"), sources=["predicted"], model_version="v99")
    assert other.status == JobStatus.failed and "no model version 'v99'" in other.error
    mv = export(db, tmp_path / "e", "coco", split="1,0,0", sources=["predicted"], model_version="detector:v7",
                min_score=0.0)
    assert mv["boxes"] == 2
    # only weak (cluster) labels: the manual correction's region is not exported
    weak = export(db, tmp_path / "f", "coco", split="1,0,0", sources=["weak"])
    rows = [r.split(",") for r in (tmp_path / "f" / "samx" / "image_labels.csv").read_text().splitlines()[1:]]
    assert {r[4] for r in rows} == {"weak", ""} and weak["boxes"] == 0
    # one region
    region = world["truth"]["images"][0]["region"]
    knees = export(db, tmp_path / "g", "coco", split="1,0,0", regions=[region])
    rows = [r.split(",") for r in (tmp_path / "g" / "samx" / "image_labels.csv").read_text().splitlines()[1:]]
    assert rows and {r[3] for r in rows} == {region} and knees["images"] == len(rows)


def test_export_errors_are_clear_and_leave_nothing_behind(world, tmp_path):
    db = world["db"]
    tmp_path = tmp_path / "exports"
    export(db, tmp_path / "out", "coco")
    again = run_job(db, "export", format="coco", out=str(tmp_path / "out"))
    assert again.status == JobStatus.failed and "exists" in again.error and "--force" in again.error
    replaced = run_job(db, "export", format="yolo", out=str(tmp_path / "out"), force=True)
    assert replaced.status == JobStatus.succeeded and (tmp_path / "out" / "data.yaml").is_file()
    assert not (tmp_path / "out" / "annotations").exists()
    for params, words in [({"format": "coco", "split": "0.9,0.2"}, "fractions"),
                          ({"format": "voc", "image_format": "png16"}, "JPEG"),
                          ({"format": "coco", "sources": ["rumour"]}, "unknown label source"),
                          ({"format": "coco", "regions": ["tail"]}, "no images match"),
                          ({"format": "tiff"}, "format must be")]:
        job = run_job(db, "export", out=str(tmp_path / "bad"), **params)
        assert job.status == JobStatus.failed and words in job.error, (params, job.error)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folders


# ---------------------------------------------------------------- import


def test_round_trip_export_import_export_is_identical(world, tmp_path):
    """Into the same installation: the export is recognised (manifest), mapped back onto its
    images, nothing is added twice, and the next export is byte-identical."""
    db = world["db"]
    with db.session() as s:
        n_boxes = s.scalar(select(Box.id).order_by(Box.id.desc()))
    for fmt in ("coco", "voc", "yolo"):
        first = export(db, tmp_path / f"{fmt}-1", fmt)
        job = run_job(db, "import", format=fmt, path=str(tmp_path / f"{fmt}-1"))
        assert job.status == JobStatus.succeeded, job.error
        r = job.result
        assert r["matched"] == first["images"] and r["ingested"] == 0 and r["failed"] == 0, r
        assert r["boxes_added"] == 0 and r["boxes_present"] == first["boxes"] and r["labels_added"] == 0, r
        second = export(db, tmp_path / f"{fmt}-2", fmt)
        assert second["checksum"] == first["checksum"]
    with db.session() as s:
        assert s.scalar(select(Box.id).order_by(Box.id.desc())) == n_boxes


def test_edited_export_comes_back_onto_the_same_images(world, tmp_path):
    """An ML engineer fixes a box in another tool and re-imports: one new box, same image."""
    db = world["db"]
    export(db, tmp_path / "coco", "coco", split="1,0,0")
    path = tmp_path / "coco" / "annotations" / "instances_train.json"
    data = json.loads(path.read_text())
    ann = data["annotations"][0]
    ann["bbox"] = [ann["bbox"][0] + 2.0, *ann["bbox"][1:]]
    path.write_text(json.dumps(data))
    r = run_job(db, "import", format="coco", path=str(tmp_path / "coco")).result
    assert r["boxes_added"] == 1 and r["ingested"] == 0 and r["matched"] == r["images"]
    with db.session() as s:
        new = s.scalars(select(Box).where(Box.source == "imported")).one()
    assert new.image_id == ann["image_id"] and new.x == ann["bbox"][0]


def test_import_into_a_fresh_installation(world, tmp_path):
    """A COCO export seeds another samx: images ingested, boxes and regions as in the source."""
    db = world["db"]
    export(db, tmp_path / "coco", "coco")
    source = {tuple(v) for v in db_boxes(db).values()}
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = Database(make_settings(other_dir))
    other.upgrade()
    other.seed_vocabulary()
    try:
        job = run_job(other, "import", format="coco", path=str(tmp_path / "coco"))
        assert job.status == JobStatus.succeeded, job.error
        r = job.result
        assert r["ingested"] == r["images"] == len(exported_ids(db)) and r["failed"] == 0, r
        got = {tuple(v) for v in db_boxes(other).values()}
        assert got == source
        with other.session() as s:
            regions = s.execute(select(Label.name).join(WeakLabel, WeakLabel.label_id == Label.id)).scalars().all()
            lesion = s.scalar(select(Label).where(Label.name == ODD_LESION))
        assert len(regions) == len(exported_ids(db)) - 1 and lesion.kind == "lesion"  # one image had no region
        again = run_job(other, "import", format="coco", path=str(tmp_path / "coco")).result
        assert again["boxes_added"] == 0 and again["labels_added"] == 0 and again["ingested"] == 0
    finally:
        other.dispose()


def test_import_reports_bad_datasets_and_keeps_the_good_part(world, tmp_path):
    db = world["db"]
    export(db, tmp_path / "voc", "voc", split="1,0,0")
    root = tmp_path / "voc" / "VOCdevkit" / "VOC2007"
    xmls = sorted((root / "Annotations").glob("*.xml"))
    xmls[0].write_text("<annotation><filename>")  # truncated XML
    missing = xmls[1].stem
    (root / "JPEGImages" / f"{missing}.jpg").unlink()
    tree = ET.parse(xmls[2])
    tree.find("size/width").text = "9999"  # wrong size: boxes would land in the wrong place
    tree.write(xmls[2])
    shutil.rmtree(tmp_path / "voc" / "samx")  # no manifest: the files are recognised by their bytes
    job = run_job(db, "import", format="voc", path=str(tmp_path / "voc"))
    assert job.status == JobStatus.succeeded, job.error
    r = job.result
    text = "\n".join(r["problems"])
    assert "unreadable annotation" in text and "file missing" in text and "9999" in text
    assert r["failed"] == 3 and r["matched"] == r["images"] - 3 and r["ingested"] == 0 and r["boxes_present"] > 0
    bad = run_job(db, "import", format="coco", path=str(tmp_path / "voc"))
    assert bad.status == JobStatus.failed and "no COCO JSON" in bad.error
    (tmp_path / "broken.json").write_text("{not json")
    bad = run_job(db, "import", format="coco", path=str(tmp_path / "broken.json"))
    assert bad.status == JobStatus.failed and "not a COCO instances file" in bad.error


def test_cli_export_and_import(sqlite_db, phantoms, tmp_path):
    """The CLI on the default SQLite installation (the jobs run on PostgreSQL above)."""
    from click.testing import CliRunner

    from backend.cli import main

    db = sqlite_db
    make_export_world(db, phantoms)
    runner = CliRunner()
    args = ["--data-dir", str(db.settings.data_dir)]
    res = runner.invoke(main, [*args, "export", "coco", str(tmp_path / "c"), "--split", "0.6,0.2,0.2"])
    assert res.exit_code == 0, res.output
    assert "images" in res.output and "sha256sum -c samx/SHA256SUMS" in res.output
    res = runner.invoke(main, [*args, "export", "coco", str(tmp_path / "c")])
    assert res.exit_code != 0 and "exists" in res.output
    res = runner.invoke(main, [*args, "import", "coco", str(tmp_path / "c")])
    assert res.exit_code == 0 and "0 boxes added" in res.output, res.output
    shutil.rmtree(tmp_path / "c")
    res = runner.invoke(main, [*args, "export", "yolo", str(tmp_path / "y")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, [*args, "import", "yolo", str(tmp_path / "y" / "data.yaml")])
    assert res.exit_code == 0 and "0 boxes added" in res.output and "0 ingested" in res.output, res.output


def test_import_an_external_coco_dataset(sqlite_db, phantoms, tmp_path):
    """Someone else's COCO: category ids 10/20, file names with folders, DICOM images beside it.
    Boxes land on the ingested (de-identified) images exactly as given."""
    truth = json.loads((phantoms / "truth.json").read_text())
    cats = {"benign": 10, "malignant": 20}
    images, anns = [], []
    for i, e in enumerate(truth["images"], 1):
        images.append({"id": i, "file_name": e["file"], "width": e["width"], "height": e["height"]})
        for les in e["lesions"]:
            x0, y0, x1, y1 = les["box"]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cats[les["label"]],
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    anns.append({"id": 999, "image_id": 1, "category_id": 10, "bbox": [1, 1, 5, 5], "iscrowd": 1})
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": v, "name": k} for k, v in cats.items()]}))
    job = run_job(sqlite_db, "import", format="coco", path=str(tmp_path), image_dir=str(phantoms))
    assert job.status == JobStatus.succeeded, job.error
    r = job.result
    assert r["ingested"] == len(images) and r["boxes_added"] == len(anns) - 1 and r["failed"] == 0
    assert any("iscrowd" in p for p in r["problems"])
    with sqlite_db.session() as s:
        got = sorted((name, b.x, b.y, b.width, b.height) for b, name in
                     s.execute(select(Box, Label.name).join(Label, Label.id == Box.label_id)))
        pseudonyms = set(s.scalars(select(Image.patient_pseudonym)))
    want = sorted((les["label"], les["box"][0], les["box"][1], les["box"][2] - les["box"][0],
                   les["box"][3] - les["box"][1]) for e in truth["images"] for les in e["lesions"])
    assert got == want
    assert not pseudonyms & {e["patient"] for e in truth["images"]}  # ingested de-identified
