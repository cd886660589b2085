"""The in-memory radiograph every other layer works with."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class RadiographMeta:
    """What a radiologist cares about, and nothing that identifies a patient unless the
    reader was given no de-identifier (then UIDs and patient_id are the file's own)."""

    format: str  # "dicom" | "png" | "jpeg" | "tiff"
    rows: int
    columns: int
    bits_stored: int
    photometric: str = "MONOCHROME2"
    modality: str | None = None
    body_part: str | None = None
    view_position: str | None = None
    laterality: str | None = None
    pixel_spacing: tuple[float, float] | None = None  # (row, column) mm
    manufacturer: str | None = None
    transfer_syntax: str | None = None
    patient_id: str | None = None  # pseudonym after de-identification
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    study_date: str | None = None  # YYYYMMDD, shifted after de-identification
    voi: str | None = None  # which intensity transform produced the pixels
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["pixel_spacing"] is not None:
            d["pixel_spacing"] = list(d["pixel_spacing"])
        return d


@dataclass
class Radiograph:
    """``pixels``: float32 in [0, 1], 2-D, bright = dense (bone), whatever the photometric
    interpretation of the file; full bit depth kept (no 8-bit quantization)."""

    pixels: np.ndarray
    meta: RadiographMeta


#: DICOM modalities whose images are not projection radiographs.
NOT_PROJECTION = frozenset({"CT", "MR", "US", "NM", "PT", "MG", "OP", "XC", "ES", "SM", "OCT", "IVUS", "ECG", "SR"})


def not_a_radiograph(fmt: str | None, modality: str | None, photometric: str | None) -> str | None:
    """Why a DICOM header says the image is no projection radiograph, or None. CR and DX
    images are MONOCHROME1/2 by the standard, so a colour or palette DICOM is something else
    (a photo, a screenshot, ultrasound). PNG and JPEG carry no such facts: the sorter's
    out-of-distribution score has to judge those."""
    if fmt != "dicom":
        return None
    if modality and modality.upper() in NOT_PROJECTION:
        return f"DICOM modality {modality} is not a projection radiograph"
    if photometric and not photometric.upper().startswith("MONOCHROME"):
        return f"DICOM photometric interpretation {photometric}: radiographs are MONOCHROME1/2"
    return None
