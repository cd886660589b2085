"""One phantom: anatomy -> pose -> attenuation layers -> hardware/lesions -> acquisition."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from . import implants
from .acquisition import draw_acquisition, expose, header_fields, image_size, quantise
from .anatomy import BODY_PART, REGIONS, build, random_pose
from .identity import Identity, make_identity
from .lesions import place_lesions
from .raster import disk, rasterise


@dataclass
class Phantom:
    """``pixels`` are STORED values (inverted for MONOCHROME1). ``lesion_map`` (0 = none,
    k = ``truth["lesions"][k-1]``) and ``bone_mask`` are ground truth for tests and
    detector training; they are not written to disk."""

    pixels: np.ndarray
    truth: dict
    dicom_header: dict
    lesion_map: np.ndarray
    bone_mask: np.ndarray

    def displayed(self) -> np.ndarray:
        """Float32 in [0, 1], bone bright, whatever the photometric interpretation."""
        maxv = float((1 << self.dicom_header["bits_stored"]) - 1)
        img = self.pixels.astype(np.float32) / maxv
        return 1.0 - img if self.dicom_header["photometric"] == "MONOCHROME1" else img


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Trabecular pattern: coarse + fine noise around 1."""
    coarse = rng.standard_normal((max(2, h // 6), max(2, w // 6)), dtype=np.float32)
    fine = rng.standard_normal((max(2, h // 3), max(2, w // 3)), dtype=np.float32)
    fine += cv2.resize(coarse, fine.shape[::-1], interpolation=cv2.INTER_CUBIC)
    fine *= np.float32(0.15)
    fine += np.float32(1.0)
    return cv2.resize(fine, (w, h), interpolation=cv2.INTER_LINEAR)


def render_phantom(seed: int, region: str | None = None, size: int = 512, lesion_rate: float = 0.3,
                   implant_rate: float = 0.1) -> Phantom:
    """Deterministic in its arguments. Independent random streams drive geometry,
    acquisition, hardware and lesions, so switching lesions on or off (same seed)
    leaves everything else drawn identically."""
    return render_with_identity(seed, region, size, lesion_rate, implant_rate, make_identity(seed, 0, 0, 0))


def render_with_identity(seed: int, region: str | None, size: int, lesion_rate: float, implant_rate: float,
                         identity: Identity) -> Phantom:
    """``render_phantom`` with the patient/study identity chosen by the caller (a dataset
    plan shares one identity across a patient's images); identity never affects pixels."""
    r_region, r_geom, r_acq, r_hw, r_les, r_hdr = (np.random.default_rng(s)
                                                   for s in np.random.SeedSequence(seed).spawn(6))
    if region is None:
        region = REGIONS[int(r_region.integers(len(REGIONS)))]
    anatomy = build(region, r_geom)
    mirror = bool(r_geom.random() < 0.5)
    laterality = ("L" if mirror else "R") if anatomy.paired else None
    h, w = image_size(r_geom, size)
    pose = random_pose(r_geom, h, w, mirror)
    texture = _texture(r_geom, h, w)
    acq = draw_acquisition(r_acq, h, w, laterality)

    shapes = list(anatomy.shapes)
    implant = None
    if r_hw.random() < implant_rate:
        chosen = implants.choose(anatomy, r_hw)
        if chosen is not None:
            implant, metal_shapes = chosen
            shapes += metal_shapes
    layers = rasterise(shapes, pose, h, w, texture)

    lesions: list[dict] = []
    lesion_map = np.zeros((h, w), np.uint8)
    if r_les.random() < lesion_rate:
        allowed = acq.field & (cv2.dilate((layers.metal > 0).astype(np.uint8), disk(4)) == 0)
        lesion_map, lesions = place_lesions(layers.bone, layers.lesionable, allowed, r_les,
                                            1 + int(r_les.random() < 0.35), pose.px_per_unit)

    ppu = pose.px_per_unit
    soft = cv2.GaussianBlur(layers.soft, (0, 0), max(0.8, 0.01 * ppu))
    bone = cv2.GaussianBlur(layers.bone, (3, 3), 0.6)
    atten = soft + bone + cv2.GaussianBlur(layers.metal, (3, 3), 0.5)
    clean = 1.0 - cv2.exp(-atten)
    displayed = expose(clean, acq, r_acq)
    pixels = quantise(displayed, acq)

    header = header_fields(acq, pixels, r_hdr)
    body_part = BODY_PART[region]
    roll = r_hdr.random()
    if roll < 0.1:
        body_part = ""
    elif roll < 0.2:
        body_part = BODY_PART[REGIONS[(REGIONS.index(region) + 1 + int(r_hdr.integers(len(REGIONS) - 1)))
                                      % len(REGIONS)]]
    view = anatomy.view if region != "chest" else ("PA" if r_hdr.random() < 0.75 else "AP")
    header.update({
        "laterality": laterality, "view_position": view, "body_part_examined": body_part,
        "study_uid": identity.study_uid, "series_uid": identity.series_uid, "sop_uid": identity.sop_uid,
        "phi_tags": dict(identity.tags), "private_phi": identity.private,
    })
    truth = {
        "region": region, "laterality": laterality, "view": view, "width": w, "height": h,
        "bits_stored": acq.bits_stored, "photometric": acq.photometric, "implant": implant,
        "lesions": lesions, "patient": identity.patient_id, "study": identity.study_uid,
        "phi": list(identity.phi),
        "pose": {"angle": round(pose.angle, 3), "scale": round(pose.scale, 4), "mirrored": pose.mirrored},
    }
    return Phantom(pixels, truth, header, lesion_map, layers.lesionable.astype(bool))
