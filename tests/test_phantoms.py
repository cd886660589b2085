"""Synthetic radiograph generator: determinism, geometry truth, file formats, and the
guarantee that the body region is visible in the shape of the image, not its statistics."""
from __future__ import annotations

import collections
import json
import os

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image

from imaging.phantoms import REGIONS, generate_phantoms, render_phantom

REQUIRED = {"hand", "wrist", "knee", "foot", "pelvis", "chest", "spine", "skull"}


def _find(pred, region=None, size=128, **kw):
    for seed in range(500):
        ph = render_phantom(seed, region, size=size, **kw)
        if pred(ph):
            return seed, ph
    raise AssertionError("no seed satisfies the predicate")


def _displayed(path: str, entry: dict) -> np.ndarray:
    """A written file as float [0, 1], bone bright."""
    if entry["format"] == "dicom":
        ds = pydicom.dcmread(path)
        a = ds.pixel_array.astype(np.float32) / ((1 << ds.BitsStored) - 1)
        return 1.0 - a if ds.PhotometricInterpretation == "MONOCHROME1" else a
    im = np.asarray(Image.open(path))
    return im.astype(np.float32) / (255.0 if im.dtype == np.uint8 else 65535.0)


def test_regions_cover_the_required_body_parts():
    assert REQUIRED <= set(REGIONS)
    assert len(set(REGIONS)) == len(REGIONS)


def test_same_seed_same_phantom_different_seed_different():
    a = render_phantom(7, "knee", size=128, lesion_rate=1.0, implant_rate=0.5)
    b = render_phantom(7, "knee", size=128, lesion_rate=1.0, implant_rate=0.5)
    c = render_phantom(8, "knee", size=128, lesion_rate=1.0, implant_rate=0.5)
    assert np.array_equal(a.pixels, b.pixels) and a.pixels.dtype == b.pixels.dtype
    assert a.truth == b.truth and a.dicom_header == b.dicom_header
    assert a.pixels.shape != c.pixels.shape or not np.array_equal(a.pixels, c.pixels)
    assert render_phantom(7, size=96).truth["region"] in REGIONS


@pytest.mark.parametrize("region", REGIONS)
def test_every_region_renders_with_valid_stored_values(region):
    for seed in range(4):
        ph = render_phantom(seed, region, size=128)
        t, h = ph.truth, ph.dicom_header
        bits = t["bits_stored"]
        assert t["region"] == region
        assert ph.pixels.shape == (t["height"], t["width"]) == (h["rows"], h["columns"])
        assert ph.pixels.dtype == (np.uint8 if bits == 8 else np.uint16)
        assert bits in (8, 10, 12, 14, 16) and int(ph.pixels.max()) < 2**bits
        assert 96 <= max(ph.pixels.shape) <= 160
        assert h["photometric"] in ("MONOCHROME1", "MONOCHROME2")
        assert (t["laterality"] in ("L", "R")) == (region in ("hand", "wrist", "knee", "foot"))
        assert ph.bone_mask.any(), "some bone must be in the field"
        assert ph.pixels.std() > 0


def test_unknown_region_is_rejected():
    with pytest.raises(ValueError):
        render_phantom(0, "tail")


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_bone_is_bright_when_displayed_and_low_when_stored_monochrome1(photometric):
    _, ph = _find(lambda p: p.truth["photometric"] == photometric and p.bone_mask.mean() > 0.15, "knee")
    field = ph.displayed() < 0.999  # keep collimator bands and markers out of "background"
    bone = ph.bone_mask & field
    rest = ~ph.bone_mask & field
    stored_bone, stored_rest = ph.pixels[bone].mean(), ph.pixels[rest].mean()
    if photometric == "MONOCHROME1":
        assert stored_bone < stored_rest
    else:
        assert stored_bone > stored_rest
    assert ph.displayed()[bone].mean() > ph.displayed()[rest].mean()


def test_lesion_boxes_are_tight_on_bone_and_mark_changed_pixels():
    checked = 0
    for seed in range(40):
        with_l = render_phantom(seed, size=256, lesion_rate=1.0, implant_rate=0.0)
        without = render_phantom(seed, size=256, lesion_rate=0.0, implant_rate=0.0)
        assert without.truth["lesions"] == [] and not without.lesion_map.any()
        assert with_l.truth["region"] == without.truth["region"]
        h, w = with_l.pixels.shape
        diff = np.abs(with_l.displayed() - without.displayed())
        for k, les in enumerate(with_l.truth["lesions"], start=1):
            assert les["label"] in ("benign", "malignant")
            assert les["kind"] in ("lytic", "sclerotic", "permeative")
            assert (les["label"] == "malignant") == (les["kind"] == "permeative")
            x0, y0, x1, y1 = les["box"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            ys, xs = np.nonzero(with_l.lesion_map == k)
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == [x0, y0, x1, y1]
            box = (slice(int(y0), int(y1)), slice(int(x0), int(x1)))
            inside = diff[box].mean()
            outside = diff[with_l.lesion_map == 0].mean()
            assert inside > 3 * outside + 0.005, (seed, les, inside, outside)
            lesion_px = with_l.lesion_map == k
            assert (lesion_px & with_l.bone_mask).sum() > 0.2 * lesion_px.sum(), "lesion must sit on bone"
            checked += 1
    assert checked >= 20
    kinds = {les["kind"] for s in range(40) for les in render_phantom(s, size=128, lesion_rate=1.0).truth["lesions"]}
    assert kinds == {"lytic", "sclerotic", "permeative"}


def test_lesion_and_implant_rates_are_respected():
    none = [render_phantom(s, size=96, lesion_rate=0.0, implant_rate=0.0).truth for s in range(20)]
    assert all(not t["lesions"] and t["implant"] is None for t in none)
    some = [render_phantom(s, size=128, lesion_rate=1.0, implant_rate=1.0).truth for s in range(24)]
    assert sum(bool(t["lesions"]) for t in some) >= 20
    assert {t["implant"] for t in some} <= {"plate", "prosthesis", None}
    assert {t["implant"] for t in some} >= {"plate", "prosthesis"}


def test_acquisition_parameters_vary():
    hdrs = [render_phantom(s, size=96).dicom_header for s in range(80)]
    assert {h["bits_stored"] for h in hdrs} == {8, 10, 12, 14, 16}
    assert {h["photometric"] for h in hdrs} == {"MONOCHROME1", "MONOCHROME2"}
    assert {h["modality"] for h in hdrs} == {"CR", "DX"}
    assert any(h["window_center"] is None for h in hdrs) and any(h["window_center"] is not None for h in hdrs)
    assert any(h["rescale_slope"] is None for h in hdrs) and any(h["rescale_slope"] is not None for h in hdrs)
    assert any(h["body_part_examined"] == "" for h in hdrs)
    mirrored = {render_phantom(s, "hand", size=64).truth["laterality"] for s in range(10)}
    assert mirrored == {"L", "R"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    seen = []
    truth = generate_phantoms(out, 24, seed=5, fmt="mixed", size=128, lesion_rate=0.5, implant_rate=0.2,
                              progress=seen.append)
    return out, truth, seen


def test_generate_writes_consistent_truth_and_files(dataset):
    out, truth, seen = dataset
    assert seen == list(range(1, 25))
    assert json.loads((out / "truth.json").read_text()) == truth
    assert truth["generator"] == "samx-phantoms" and truth["version"] == 1 and truth["seed"] == 5
    images = truth["images"]
    assert len(images) == 24 and len({e["id"] for e in images}) == 24
    files = sorted(str(p.relative_to(out)) for p in (out / "images").rglob("*") if p.is_file())
    assert files == sorted(e["file"] for e in images), "one file per phantom, nothing else"
    assert {e["format"] for e in images} == {"dicom", "png"}
    counts = collections.Counter(e["region"] for e in images)
    assert set(counts) == set(REGIONS) and max(counts.values()) - min(counts.values()) <= 1
    per_patient = collections.defaultdict(list)
    for e in images:
        per_patient[e["patient"]].append(e)
    assert all(1 <= len(v) <= 4 and len({e["study"] for e in v}) <= 2 for v in per_patient.values())
    assert any(len(v) > 1 for v in per_patient.values())
    for e in images:
        a = _displayed(str(out / e["file"]), e)
        assert a.shape == (e["height"], e["width"])
        for x0, y0, x1, y1 in (les["box"] for les in e["lesions"]):
            assert 0 <= x0 < x1 <= e["width"] and 0 <= y0 < y1 <= e["height"]


def test_dicom_files_are_valid_and_carry_all_fake_phi(dataset):
    out, truth, _ = dataset
    dicoms = [e for e in truth["images"] if e["format"] == "dicom"]
    study_of = {}
    for e in dicoms:
        path = out / e["file"]
        raw = path.read_bytes()
        assert raw[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID in ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1")
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.PhotometricInterpretation == e["photometric"] and ds.BitsStored == e["bits_stored"]
        assert ds.BitsAllocated == (8 if e["bits_stored"] == 8 else 16) and ds.HighBit == ds.BitsStored - 1
        assert ds.SamplesPerPixel == 1 and ds.PixelRepresentation == 0
        arr = ds.pixel_array
        assert arr.shape == (ds.Rows, ds.Columns) == (e["height"], e["width"])
        assert int(arr.max()) < 2 ** ds.BitsStored
        assert ds.Modality in ("CR", "DX") and ds.Manufacturer and len(ds.PixelSpacing) == 2
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert pydicom.uid.UID(uid).is_valid
        assert str(ds.PatientID) == e["patient"] and ds.StudyInstanceUID == e["study"]
        study_of.setdefault(e["study"], set()).add(str(ds.PatientID))
        for keyword, value in e["phi_tags"].items():
            assert str(ds.data_element(keyword).value) == value, keyword
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                        "OtherPatientIDs", "PatientAddress", "InstitutionName", "InstitutionAddress",
                        "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "AccessionNumber",
                        "StudyID", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime",
                        "SeriesTime", "AcquisitionTime", "ContentTime", "StationName", "DeviceSerialNumber",
                        "StudyDescription", "SeriesDescription", "ImageComments"):
            assert keyword in ds and str(ds.data_element(keyword).value), keyword
        private = ds.private_block(0x0011, "SAMX PHANTOM")[0x01].value
        assert private.startswith("PHI")
        assert len(e["phi"]) >= 20 and private in e["phi"]
        for phi in e["phi"]:
            assert phi.encode() in raw, phi
    assert all(len(p) == 1 for p in study_of.values()), "a study belongs to one patient"
    codes = {e["patient"]: e["phi_tags"]["PatientName"] for e in dicoms}
    assert len(set(codes.values())) == len(codes), "fake names are unique per patient"


@pytest.mark.parametrize("bits", [8, 10, 12, 14, 16])
def test_dicom_round_trip_keeps_stored_values(tmp_path, bits):
    from imaging.phantoms.writers import write_dicom

    _, ph = _find(lambda p: p.truth["bits_stored"] == bits and p.pixels.size % 2 == 1, size=64)
    write_dicom(tmp_path / "x.dcm", ph)
    ds = pydicom.dcmread(tmp_path / "x.dcm")
    assert np.array_equal(ds.pixel_array, ph.pixels)
    assert ds.PhotometricInterpretation == ph.truth["photometric"]


def test_png_files_have_displayed_polarity_and_right_depth(dataset):
    out, truth, _ = dataset
    pngs = [e for e in truth["images"] if e["format"] == "png"]
    assert pngs
    for e in pngs:
        im = Image.open(out / e["file"])
        arr = np.asarray(im)
        assert arr.dtype == (np.uint8 if e["source_bits_stored"] == 8 else np.uint16), im.mode
        assert e["phi"] == [] and not im.info.get("text")
        assert e["photometric"] == "MONOCHROME2"
        ph = render_phantom(e["seed"], e["region"], size=128, lesion_rate=0.5, implant_rate=0.2)
        assert np.abs(ph.displayed() - _displayed(str(out / e["file"]), e)).max() < 1e-3


def test_workers_give_identical_output(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ta = generate_phantoms(a, 10, seed=9, fmt="mixed", size=96, workers=1)
    tb = generate_phantoms(b, 10, seed=9, fmt="mixed", size=96, workers=2)
    assert ta == tb
    for e in ta["images"]:
        assert (a / e["file"]).read_bytes() == (b / e["file"]).read_bytes(), e["file"]


def _hog(img: np.ndarray) -> np.ndarray:
    """Shape only: gradient-orientation histograms of a 32x32 thumbnail (324 numbers)."""
    g = (cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA) * 255).astype(np.uint8)
    return cv2.HOGDescriptor((32, 32), (16, 16), (8, 8), (8, 8), 9).compute(g).ravel()


def test_region_is_readable_from_shape_but_not_from_trivial_statistics(tmp_path):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    truth = generate_phantoms(tmp_path, 400, seed=11, fmt="mixed", size=128)
    trivial, shape, y = [], [], []
    for e in truth["images"]:
        path = str(tmp_path / e["file"])
        img = _displayed(path, e)
        trivial.append([os.path.getsize(path), img.mean()])
        shape.append(_hog(img))
        y.append(e["region"])
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    acc_trivial = cross_val_score(RandomForestClassifier(200, random_state=0), np.array(trivial), y, cv=cv).mean()
    acc_shape = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000)),
                                np.array(shape), y, cv=cv).mean()
    print(f"region accuracy from [file size, mean]: {acc_trivial:.3f}; from HOG shape: {acc_shape:.3f}")
    assert acc_trivial < 0.30
    assert acc_shape > 0.70
