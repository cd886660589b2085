"""De-identification: no PHI survives a round trip to disk, replacements are keyed and stable,
and every file pydicom ships with can be de-identified and written back."""

from __future__ import annotations

import copy
import datetime as dt
import io
import re
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import data_manager
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
)

from imaging.deidentify import DEIDENTIFICATION_METHOD, MAX_DATE_SHIFT_DAYS, Deidentifier
from tests.factories import find_phi

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))

SOP_UID = "1.2.826.0.1.3680043.8.498.10000000000000000000000000001"
STUDY_UID = "1.2.826.0.1.3680043.8.498.10000000000000000000000000002"
SERIES_UID = "1.2.826.0.1.3680043.8.498.10000000000000000000000000003"
FOR_UID = "1.2.826.0.1.3680043.8.498.10000000000000000000000000004"
REF_UID = "1.2.826.0.1.3680043.8.498.10000000000000000000000000005"
DEEP_REF_UID = "1.2.826.0.1.3680043.8.498.10000000000000000000000000006"

PHI = [
    "Quagmire^Glenda^Marie",
    "MRN55501234",
    "SAINT ELSEWHERE MRN",
    "ALT-7731-XY",
    "ALT-8842-QZ",
    "OPID-99817",
    "Müller^Jürgen",
    "19561103",
    "20210315",
    "42 Wallaby Way",
    "+61 2 5550 1234",
    "Vandersnoot^Hilda",
    "lives with daughter Prudence",
    "fell off a ladder",
    "ACC20210315X",
    "STUDY88123",
    "XR WRIST LEFT urgent",
    "PA and lateral as asked",
    "Call back on 555-0199",
    "Hibbert^Julius",
    "Riviera^Nicholas",
    "Technologist^Barbarella",
    "Assistant^Bernadette",
    "Radiologist^Rosalind",
    "Requester^Reginald",
    "Saint Elsewhere Hospital",
    "1 Hospital Plaza, Springfield",
    "Orthopaedic Trauma Wing",
    "XRAYROOM7PC",
    "ELSEWHERE_PACS",
    "SN-KX-48213",
    "WRIST custom protocol",
    "Evaluator^Ermengarde",
    "Reviewer^Wilhelmina",
    "private note about Glenda",
    "overlay label Glenda",
    "curve label Glenda",
    SOP_UID,
    STUDY_UID,
    SERIES_UID,
    FOR_UID,
    REF_UID,
    DEEP_REF_UID,
]


def _item(**keywords) -> Dataset:
    item = Dataset()
    for keyword, value in keywords.items():
        setattr(item, keyword, value)
    return item


def _phi_dataset() -> Dataset:
    """A DX image with PHI in every attribute the profile names, written to bytes and read back
    so that it looks like what the reader hands over."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = SOP_UID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.SourceApplicationEntityTitle = "ELSEWHERE_PACS"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = SOP_UID
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.FrameOfReferenceUID = FOR_UID

    ds.PatientName = "Quagmire^Glenda^Marie"
    ds.PatientID = "MRN55501234"
    ds.IssuerOfPatientID = "SAINT ELSEWHERE MRN"
    ds.OtherPatientIDs = ["ALT-7731-XY", "ALT-8842-QZ"]
    ds.OtherPatientIDsSequence = [_item(PatientID="OPID-99817", TypeOfPatientID="TEXT")]
    ds.OtherPatientNames = "Müller^Jürgen"
    ds.PatientBirthDate = "19561103"
    ds.PatientBirthTime = "071500"
    ds.PatientSex = "F"
    ds.PatientAge = "064Y"
    ds.PatientAddress = "42 Wallaby Way, Sydney"
    ds.PatientTelephoneNumbers = "+61 2 5550 1234"
    ds.PatientMotherBirthName = "Vandersnoot^Hilda"
    ds.PatientComments = "lives with daughter Prudence"
    ds.AdditionalPatientHistory = "fell off a ladder at home"

    ds.AccessionNumber = "ACC20210315X"
    ds.StudyID = "STUDY88123"
    ds.StudyDate = "20210315"
    ds.StudyTime = "101530.123"
    ds.SeriesDate = "20210315"
    ds.ContentDate = "20210315"
    ds.AcquisitionDateTime = "20210315102000.000000+0100"
    ds.StudyDescription = "XR WRIST LEFT urgent"
    ds.SeriesDescription = "PA and lateral as asked"
    ds.ImageComments = "Call back on 555-0199"
    ds.ProtocolName = "WRIST custom protocol"

    ds.ReferringPhysicianName = "Hibbert^Julius"
    ds.PerformingPhysicianName = "Riviera^Nicholas"
    ds.OperatorsName = ["Technologist^Barbarella", "Assistant^Bernadette"]
    ds.NameOfPhysiciansReadingStudy = "Radiologist^Rosalind"
    ds.RequestingPhysician = "Requester^Reginald"
    ds.InstitutionName = "Saint Elsewhere Hospital"
    ds.InstitutionAddress = "1 Hospital Plaza, Springfield"
    ds.InstitutionalDepartmentName = "Orthopaedic Trauma Wing"
    ds.StationName = "XRAYROOM7PC"
    ds.DeviceSerialNumber = "SN-KX-48213"

    # what a radiologist needs
    ds.Modality = "DX"
    ds.BodyPartExamined = "HAND"
    ds.ViewPosition = "PA"
    ds.ImageLaterality = "L"
    ds.Laterality = "L"
    ds.Manufacturer = "ACME Imaging"
    ds.ManufacturerModelName = "RadMaster 3000"
    ds.PixelSpacing = [0.1, 0.1]
    ds.ImagerPixelSpacing = [0.12, 0.12]
    ds.WindowCenter = "2048"
    ds.WindowWidth = "4096"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    voi_lut = _item(LUTDescriptor=[4, 0, 16], LUTExplanation="NORMAL")
    voi_lut.add_new(0x00283006, "US", [0, 100, 200, 4095])  # LUTData
    ds.VOILUTSequence = [voi_lut]
    ds.Rows, ds.Columns = 4, 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(range(32))

    # nested sequences: referenced UIDs at two depths, person names the table does not list
    deep = _item(
        ReferencedSOPClassUID=DigitalXRayImageStorageForPresentation, ReferencedSOPInstanceUID=DEEP_REF_UID
    )
    deep.SecondaryReviewerName = "Reviewer^Wilhelmina"
    series_item = _item(SeriesInstanceUID=SERIES_UID, EvaluatorName="Evaluator^Ermengarde")
    series_item.ReferencedInstanceSequence = [deep]
    series_item.private_block(0x0029, "ACME NESTED", create=True).add_new(
        0x01, "LO", "private note about Glenda"
    )
    ds.ReferencedSeriesSequence = [series_item]
    ds.ReferencedImageSequence = [
        _item(ReferencedSOPClassUID=DigitalXRayImageStorageForPresentation, ReferencedSOPInstanceUID=REF_UID)
    ]

    block = ds.private_block(0x0011, "ACME PHI 1.0", create=True)
    block.add_new(0x01, "LO", "private note about Glenda")
    block.add_new(0x02, "OB", b"\x00\xffMRN55501234\x00\x01")
    block.add_new(0x03, "UN", "Quagmire^Glenda^Marie".encode())

    ds.add_new(0x60000010, "US", 4)  # overlay rows
    ds.add_new(0x60000011, "US", 4)  # overlay columns
    ds.add_new(0x60000040, "CS", "G")  # overlay type
    ds.add_new(0x60000050, "SS", [1, 1])  # overlay origin
    ds.add_new(0x60000100, "US", 1)  # overlay bits allocated
    ds.add_new(0x60000102, "US", 0)  # overlay bit position
    ds.add_new(0x60001500, "LO", "overlay label Glenda")
    ds.add_new(0x60003000, "OW", b"Quagmire")
    ds.add_new(0x50002500, "LO", "curve label Glenda")

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def _written(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def phi_ds() -> Dataset:
    return _phi_dataset()


@pytest.fixture(scope="module")
def deid() -> Deidentifier:
    return Deidentifier(SECRET)


# --------------------------------------------------------------------------- PHI removal


def test_every_phi_string_is_in_the_original(phi_ds):
    """The control for the test below: find_phi does see each PHI string before cleaning."""
    assert find_phi(_written(phi_ds), PHI) == PHI


def test_no_phi_survives_writing(phi_ds, deid):
    out = deid.dataset(phi_ds)
    written = _written(out)
    assert find_phi(written, PHI) == []
    back = pydicom.dcmread(io.BytesIO(written))
    assert not [e.tag for e in back.iterall() if e.tag.is_private]
    assert not [e.tag for e in back.iterall() if 0x5000 <= e.tag.group <= 0x60FF]


def test_input_dataset_is_not_modified(phi_ds, deid):
    before = copy.deepcopy(phi_ds)
    deid.dataset(phi_ds)
    assert phi_ds == before
    assert phi_ds.file_meta == before.file_meta
    assert phi_ds.PatientName == "Quagmire^Glenda^Marie"


def test_identifiers_and_dates_are_replaced(phi_ds, deid):
    out = deid.dataset(phi_ds)
    pseudonym = deid.patient_pseudonym("MRN55501234")
    assert out.PatientID == pseudonym
    assert out.PatientName == pseudonym
    assert "PatientBirthDate" in out and not out.PatientBirthDate
    for keyword in ("PatientBirthTime", "OtherPatientIDs", "OtherPatientIDsSequence", "IssuerOfPatientID"):
        assert keyword not in out, keyword
    for keyword in ("AccessionNumber", "StudyID", "ReferringPhysicianName"):
        assert not out.get(keyword), keyword
    assert not out.get("InstitutionName") and not out.get("StationName") and not out.get("OperatorsName")
    assert (
        "EvaluatorName" in out.ReferencedSeriesSequence[0]
        and not out.ReferencedSeriesSequence[0].EvaluatorName
    )

    shifted = deid.shift_date("20210315", pseudonym)
    assert shifted and shifted != "20210315"
    assert out.StudyDate == out.SeriesDate == out.ContentDate == shifted
    assert out.AcquisitionDateTime == shifted + "102000.000000+0100"
    assert out.StudyTime == "101530.123"  # times of day are kept


def test_uids_are_replaced_consistently_and_standard_uids_kept(phi_ds, deid):
    out = deid.dataset(phi_ds)
    assert out.SOPInstanceUID == out.file_meta.MediaStorageSOPInstanceUID == deid.uid(SOP_UID)
    assert out.StudyInstanceUID == deid.uid(STUDY_UID)
    assert out.SeriesInstanceUID == out.ReferencedSeriesSequence[0].SeriesInstanceUID == deid.uid(SERIES_UID)
    assert out.FrameOfReferenceUID == deid.uid(FOR_UID)
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == deid.uid(REF_UID)
    deep = out.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert deep.ReferencedSOPInstanceUID == deid.uid(DEEP_REF_UID)
    assert deep.ReferencedSOPClassUID == DigitalXRayImageStorageForPresentation
    assert out.SOPClassUID == out.file_meta.MediaStorageSOPClassUID == DigitalXRayImageStorageForPresentation
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert "SourceApplicationEntityTitle" not in out.file_meta


def test_what_a_radiologist_needs_is_kept(phi_ds, deid):
    out = deid.dataset(phi_ds)
    for keyword in (
        "Modality", "BodyPartExamined", "ViewPosition", "ImageLaterality", "Laterality", "Manufacturer",
        "ManufacturerModelName", "PixelSpacing", "ImagerPixelSpacing", "WindowCenter", "WindowWidth",
        "RescaleIntercept", "RescaleSlope", "RescaleType", "VOILUTSequence", "Rows", "Columns",
        "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
        "PatientSex", "PatientAge", "PixelData",
    ):  # fmt: skip
        assert out[keyword].value == phi_ds[keyword].value, keyword


def test_deidentification_is_declared(phi_ds, deid):
    out = deid.dataset(phi_ds)
    back = pydicom.dcmread(io.BytesIO(_written(out)))
    assert back.PatientIdentityRemoved == "YES"
    assert list(back.DeidentificationMethod) == list(DEIDENTIFICATION_METHOD)
    codes = {
        (item.CodeValue, item.CodingSchemeDesignator) for item in back.DeidentificationMethodCodeSequence
    }
    assert {("113100", "DCM"), ("113107", "DCM")} <= codes
    assert back.LongitudinalTemporalInformationModified == "MODIFIED"


def test_dataset_without_file_meta(deid):
    ds = Dataset()
    ds.PatientName = "Quagmire^Glenda"
    ds.PatientID = "MRN55501234"
    ds.StudyDate = "20210315"
    ds.StudyInstanceUID = STUDY_UID
    out = deid.dataset(ds)
    assert not hasattr(out, "file_meta")
    buf = io.BytesIO()
    out.save_as(buf, implicit_vr=True, little_endian=True)
    assert find_phi(buf.getvalue(), ["Quagmire^Glenda", "MRN55501234", "20210315", STUDY_UID]) == []
    assert pydicom.dcmread(io.BytesIO(buf.getvalue()), force=True).PatientID == deid.patient_pseudonym(
        "MRN55501234"
    )


def test_odd_values_do_not_crash(deid):
    ds = Dataset()
    ds.PatientName = ["Quagmire^Glenda", ""]
    ds.PatientID = ""
    ds.StudyDate = ["20210315", "not a date", ""]
    ds.SeriesDate = "20230230"
    ds.ContentDate = ""
    ds.AcquisitionDateTime = "2021"
    ds.StudyTime = "noon"
    ds.SeriesTime = ["101500", "25:99"]
    ds.PatientAge = "abc"
    ds.SOPInstanceUID = ""
    ds.OtherPatientIDs = ["", "ALT-1"]
    level3 = _item(PatientName="Deep^Dorothea", StudyDate="20210316")
    level3.private_block(0x0031, "ODD", create=True).add_new(0x10, "OB", b"\xff\xfe\x00")
    ds.ReferencedSeriesSequence = [
        _item(ReferencedInstanceSequence=[_item(ReferencedImageSequence=[level3])])
    ]
    ds.add_new(0x00291010, "OB", b"\x00\x01\x02")  # private element without a creator
    out = deid.dataset(ds)
    out.save_as(io.BytesIO(), implicit_vr=True, little_endian=True)

    key = deid.patient_pseudonym(None, "Quagmire^Glenda")
    assert list(out.StudyDate) == [deid.shift_date("20210315", key), "", ""]
    assert not out.SeriesDate and not out.ContentDate and not out.StudyTime
    assert list(out.SeriesTime) == ["101500", ""]
    assert re.fullmatch(r"\d{4}", out.AcquisitionDateTime) and int(out.AcquisitionDateTime) <= 2021
    assert "PatientAge" not in out
    deep = out.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedImageSequence[0]
    assert deep.PatientName == deid.patient_pseudonym(None, "Deep^Dorothea")
    assert deep.StudyDate == deid.shift_date("20210316", key)
    assert not [e.tag for e in out.iterall() if e.tag.is_private]


@pytest.mark.parametrize(
    ("age", "expected"), [("064Y", "064Y"), ("089Y", "089Y"), ("093Y", "090Y"), ("006M", "006M")]
)
def test_patient_age_is_kept_with_the_oldest_aggregated(deid, age, expected):
    ds = Dataset()
    ds.PatientAge = age
    assert deid.dataset(ds).PatientAge == expected


def test_compressed_pixel_data_is_passed_through(deid):
    for name in ("JPEG2000.dcm", "MR_small_RLE.dcm"):
        ds = pydicom.dcmread(pydicom.data.get_testdata_file(name))
        out = deid.dataset(ds)
        assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert out.PixelData == ds.PixelData
        back = pydicom.dcmread(io.BytesIO(_written(out)))
        assert back.PixelData == ds.PixelData


# --------------------------------------------------------------------------- UIDs


def test_uid_is_keyed_stable_and_valid():
    a, b, other = Deidentifier(SECRET), Deidentifier(bytes(SECRET)), Deidentifier(OTHER_SECRET)
    for original in (STUDY_UID, "1.2.3", "2.25.12345678901234567890123456789012345678"):
        new = a.uid(original)
        assert new == b.uid(original)
        assert new != other.uid(original)
        assert new != original
        assert len(new) <= 64 and UID(new).is_valid
        assert re.fullmatch(r"2\.25\.(0|[1-9]\d*)", new)
    assert a.uid(STUDY_UID + "\0") == a.uid(STUDY_UID)
    assert a.uid("1.2.3") != a.uid("1.2.4")


def test_shared_study_uid_maps_to_one_new_uid(phi_ds):
    first = Deidentifier(SECRET).dataset(phi_ds)
    second_input = copy.deepcopy(phi_ds)
    second_input.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.99"
    second = Deidentifier(SECRET).dataset(second_input)
    assert first.StudyInstanceUID == second.StudyInstanceUID != STUDY_UID
    assert first.SOPInstanceUID != second.SOPInstanceUID


def test_secret_must_be_a_real_key():
    with pytest.raises(ValueError):
        Deidentifier(b"short")


# --------------------------------------------------------------------------- pseudonyms and dates


def test_patient_pseudonym(deid):
    pseudonym = deid.patient_pseudonym("MRN55501234", "Quagmire^Glenda")
    assert re.fullmatch(r"P[0-9a-f]{16}", pseudonym)
    assert pseudonym == Deidentifier(SECRET).patient_pseudonym(" MRN55501234 ", "Someone^Else")
    assert pseudonym != Deidentifier(OTHER_SECRET).patient_pseudonym("MRN55501234")
    assert pseudonym != deid.patient_pseudonym("MRN55501235")
    assert deid.patient_pseudonym(None, "Doe^John^^") == deid.patient_pseudonym("", "DOE^JOHN")


def _days(yyyymmdd: str) -> int:
    return dt.date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:])).toordinal()


def test_date_shift_keeps_intervals_within_a_patient(deid):
    key = deid.patient_pseudonym("MRN55501234")
    first, second = deid.shift_date("20210315", key), deid.shift_date("20220610", key)
    assert _days(second) - _days(first) == _days("20220610") - _days("20210315")
    assert 1 <= _days("20210315") - _days(first) <= MAX_DATE_SHIFT_DAYS
    assert Deidentifier(SECRET).shift_date("20210315", key) == first


def test_date_shift_keeps_intervals_between_studies(phi_ds, deid):
    later = copy.deepcopy(phi_ds)
    later.StudyDate = "20210401"
    a, b = deid.dataset(phi_ds), deid.dataset(later)
    assert _days(b.StudyDate) - _days(a.StudyDate) == 17


def test_different_patients_get_different_offsets(deid):
    offsets = {
        _days("20210315") - _days(deid.shift_date("20210315", deid.patient_pseudonym(f"MRN{i}")))
        for i in range(50)
    }
    assert len(offsets) >= 45
    assert all(1 <= offset <= MAX_DATE_SHIFT_DAYS for offset in offsets)


@pytest.mark.parametrize("bad", ["", "2021", "20211301", "20230230", "hello", "2021-03-15"])
def test_unparsable_dates_are_dropped(deid, bad):
    assert deid.shift_date(bad, "P0") == ""


def test_acr_nema_dates_are_shifted(deid):
    assert deid.shift_date("2021.03.15", "P0") == deid.shift_date("20210315", "P0") != ""


# --------------------------------------------------------------------------- find_phi


def test_find_phi_variants():
    phi = ["Quagmire^Glenda", "Doe^Li", "MRN55501234", "20210315", "Müller^Jürgen", "", "absent-string"]
    assert find_phi(b"...QUAGMIRE...", phi) == ["Quagmire^Glenda"]
    assert find_phi("glenda quagmire", phi) == ["Quagmire^Glenda"]
    assert find_phi("Glenda".encode("utf-16-le"), phi) == ["Quagmire^Glenda"]
    assert find_phi(b"\x00" + "mrn55501234".encode("utf-16-be"), phi) == ["MRN55501234"]
    assert find_phi(b"Doe^Li", phi) == ["Doe^Li"]
    assert find_phi(b"Li Doe", phi) == ["Doe^Li"]
    assert find_phi(b"Doe and Li", phi) == []  # parts under four characters are not searched alone
    assert find_phi(b"born 2021-03-15", phi) == ["20210315"]
    assert find_phi("MÜLLER".encode("latin-1"), phi) == ["Müller^Jürgen"]
    assert find_phi("Jürgen".encode("utf-8"), phi) == ["Müller^Jürgen"]
    assert find_phi(b"nothing to see", phi) == []


# --------------------------------------------------------------------------- pydicom's test files


def _test_files() -> list[Path]:
    """pydicom's own test files and those of pydicom-data, read from disk (no downloads)."""
    roots = [Path(data_manager.DATA_ROOT) / "test_files"]
    roots += [Path(source.data_path) for source in data_manager.get_external_sources().values()]
    return sorted(
        p for root in roots for p in root.rglob("*") if p.is_file() and p.suffix.lower() in ("", ".dcm")
    )


_FILES = _test_files()


def test_test_files_are_found():
    assert len(_FILES) > 50


@pytest.mark.parametrize("path", _FILES, ids=[f"{p.parent.name}/{p.name}" for p in _FILES])
def test_pydicom_test_file(path, deid):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception as exc:
            pytest.skip(f"pydicom cannot parse it: {exc}")
        before = copy.deepcopy(ds)
        out = deid.dataset(ds)
        written = _written(out)
        back = pydicom.dcmread(io.BytesIO(written), force=True)

    assert ds == before
    assert back.PatientIdentityRemoved == "YES"
    assert not [e.tag for e in back.iterall() if e.tag.is_private]
    if "PixelData" in ds:
        assert back.PixelData == ds.PixelData
    assert re.fullmatch(r"P[0-9a-f]{16}", back.PatientID)
    assert back.get("PatientName", back.PatientID) == back.PatientID
    assert not back.get("InstitutionName") and "PatientBirthTime" not in back
    # names in these files are generic words ('TEST', 'NAME^PATIENT') that kept attributes
    # share, so the byte-level check uses the instance UIDs, which must all be gone
    uids = {
        str(uid)
        for e in before.iterall()
        if e.VR == "UI" and e.keyword.endswith("InstanceUID")
        for uid in (e.value if isinstance(e.value, pydicom.multival.MultiValue) else [e.value])
    }
    assert find_phi(written, [u for u in uids if len(u) >= 8 and not u.startswith("1.2.840.10008.")]) == []
