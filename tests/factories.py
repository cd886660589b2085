"""Small DICOM files built in memory for tests (phantoms cover the realistic ones)."""
from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

#: Fake PHI written into every identifying tag by :func:`phi_dicom`; tests grep for these.
PHI = {
    "PatientName": "Zyxwvut^Quillane^Marguerite",
    "PatientID": "PHI-ID-88231957",
    "PatientBirthDate": "19470312",
    "OtherPatientIDs": "PHI-OTHER-55120",
    "PatientAddress": "17 Phidelity Lane Smalltown",
    "InstitutionName": "Saint Phiminian Hospital",
    "InstitutionAddress": "99 Hospitalstrasse Phiburg",
    "ReferringPhysicianName": "Drphi^Referring",
    "PerformingPhysicianName": "Drphi^Performing",
    "OperatorsName": "Techphi^Operator",
    "AccessionNumber": "ACCPHI77812",
    "StudyID": "STUDYPHI991",
    "StationName": "STATIONPHI42",
    "DeviceSerialNumber": "SERIALPHI3310",
    "StudyDescription": "Knee pain Quillane follow-up",
    "ImageComments": "patient Quillane fell on ice",
    "StudyDate": "20190417",
}


def dicom_bytes(pixels: np.ndarray, *, phi: bool = False, **tags) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if phi:
        for key, value in PHI.items():
            setattr(ds, key, value)
        ds.add_new(0x00091010, "LO", "Private Phisecret Note")
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def body_like(seed: int, shape=(96, 80)) -> np.ndarray:
    """A 12-bit image with a bright oval 'body' and a denser 'bone' on noise; distinct per seed."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = h / 2 + rng.uniform(-5, 5), w / 2 + rng.uniform(-5, 5)
    body = ((yy - cy) / (0.4 * h)) ** 2 + ((xx - cx) / (0.3 * w)) ** 2 < 1
    bone = ((yy - cy) / (0.3 * h)) ** 2 + ((xx - cx) / (0.08 * w)) ** 2 < 1
    img = 300 + 1500 * body + 1800 * bone + rng.normal(0, 40, shape)
    return np.clip(img, 0, 4095).astype(np.uint16)


def forearm(h: int = 480, w: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Float [0, 1] forearm-like view: soft-tissue blob with two bones (bright cortex, darker
    marrow) on a dark noisy background, quantised to 12 bits. Returns (img, body_mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx, ry, rx = 0.6 * h, 0.45 * w, 0.3 * h, 0.22 * w
    r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    body = r <= 1
    img = np.full((h, w), 0.08, np.float32)
    img[body] = 0.28 + 0.14 * (1 - r[body])  # thicker soft tissue in the middle
    for offset, half in ((-0.07, 0.035), (0.07, 0.03)):
        d = np.abs(xx - cx - offset * w)
        shaft = (d < half * w) & (np.abs(yy - cy) < 0.24 * h)
        img[shaft] = np.where(d[shaft] > 0.6 * half * w, 0.85, 0.62)  # cortex vs marrow
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    return (np.rint(np.clip(img, 0, 1) * 4095) / 4095).astype(np.float32), body
