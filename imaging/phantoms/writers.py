"""Phantom -> file: DICOM Part 10 (stored values, full header, fake PHI) or PNG
(displayed polarity, no metadata at all)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from .identity import PRIVATE_CREATOR, PRIVATE_GROUP
from .render import Phantom


def png_array(ph: Phantom) -> np.ndarray:
    """8-bit as stored when BitsStored is 8, else 16-bit stretched to the full range;
    MONOCHROME1 is inverted because a PNG has nowhere to say so."""
    bits = ph.dicom_header["bits_stored"]
    maxv = (1 << bits) - 1
    disp = ph.pixels.astype(np.uint32)
    if ph.dicom_header["photometric"] == "MONOCHROME1":
        disp = maxv - disp
    if bits == 8:
        return disp.astype(np.uint8)
    return ((disp * 65535 + maxv // 2) // maxv).astype(np.uint16)


def write_png(path: Path, ph: Phantom) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # noisy pixels barely deflate: RLE at level 1 compresses as well as the default, 2x faster
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    if not cv2.imwrite(str(path), png_array(ph), params):
        raise OSError(f"could not write {path}")


def dicom_dataset(ph: Phantom, instance: int = 1) -> Dataset:
    h = ph.dicom_header
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = h["sop_class_uid"]
    meta.MediaStorageSOPInstanceUID = h["sop_uid"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = h["sop_class_uid"]
    ds.SOPInstanceUID = h["sop_uid"]
    ds.StudyInstanceUID = h["study_uid"]
    ds.SeriesInstanceUID = h["series_uid"]
    ds.Modality = h["modality"]
    ds.Manufacturer = h["manufacturer"]
    ds.ManufacturerModelName = h["model"]
    for keyword, value in h["phi_tags"].items():
        setattr(ds, keyword, value)
    ds.BodyPartExamined = h["body_part_examined"]
    ds.ViewPosition = h["view_position"]
    if h["laterality"]:
        ds.ImageLaterality = h["laterality"]
    if h["modality"] == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = h["photometric"]
    ds.Rows, ds.Columns = ph.pixels.shape
    ds.BitsAllocated = h["bits_allocated"]
    ds.BitsStored = h["bits_stored"]
    ds.HighBit = h["high_bit"]
    ds.PixelRepresentation = 0
    ds.PixelSpacing = list(h["pixel_spacing"])
    ds.ImagerPixelSpacing = list(h["pixel_spacing"])
    if h["window_center"] is not None:
        ds.WindowCenter = h["window_center"]
        ds.WindowWidth = h["window_width"]
    if h["rescale_slope"] is not None:
        ds.RescaleSlope = h["rescale_slope"]
        ds.RescaleIntercept = h["rescale_intercept"]
        ds.RescaleType = "US"
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", h["private_phi"])
    data = np.ascontiguousarray(ph.pixels, dtype="<u1" if h["bits_allocated"] == 8 else "<u2").tobytes()
    ds.PixelData = data + (b"\0" if len(data) % 2 else b"")
    ds["PixelData"].VR = "OB" if h["bits_allocated"] == 8 else "OW"
    return ds


def write_dicom(path: Path, ph: Phantom, instance: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dicom_dataset(ph, instance).save_as(path, enforce_file_format=True)
