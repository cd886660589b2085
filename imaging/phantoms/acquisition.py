"""Detector and processing effects, and the acquisition header fields.

Every parameter here is drawn from one distribution shared by all regions, and the
final intensity is pinned to a drawn mean and spread: image size, noise, brightness
and file size must carry no information about the body part.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

BITS = (8, 10, 12, 14, 16)
MANUFACTURERS = (("Acme Radiography", "AcmeDR 500"), ("Nordlicht Imaging", "NL-CR 12"),
                 ("Kestrel Medical", "Kestrel DX2"), ("Orion X-Ray Systems", "OXR Vision"),
                 ("Phantasm Devices", "PD Flat 43"))
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_COMPLEX)


def image_size(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """(height, width): long side 0.8-1.2 x size, aspect 0.75-1.33, for every region alike."""
    long_side = size * rng.uniform(0.8, 1.2)
    aspect = float(np.exp(rng.uniform(np.log(0.75), np.log(4 / 3))))
    if aspect >= 1:
        return max(8, round(long_side / aspect)), max(8, round(long_side))
    return max(8, round(long_side)), max(8, round(long_side * aspect))


@dataclass
class Acquisition:
    height: int
    width: int
    bits_stored: int
    photometric: str
    modality: str
    manufacturer: str
    model: str
    pixel_spacing: float
    window: bool
    rescale: tuple[float, float] | None
    blur: float
    levels: tuple[float, float]  # where the 0.5th / 99.8th intensity percentiles land
    heel: tuple[float, float]
    target_mean: float
    noise_sigma: float
    noise_quantum: float
    field: np.ndarray  # bool, True where the collimator is open
    shutter_level: float
    markers: list[dict] = field(default_factory=list)


def _collimator(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    open_ = np.ones((h, w), np.uint8)
    if rng.random() < 0.45:
        return open_.astype(bool)
    m = [rng.uniform(0.03, 0.14) if rng.random() < 0.65 else 0.0 for _ in range(4)]
    rect = np.array([(m[0] * w, m[1] * h), ((1 - m[2]) * w, m[1] * h), ((1 - m[2]) * w, (1 - m[3]) * h),
                     (m[0] * w, (1 - m[3]) * h)])
    if rng.random() < 0.3:
        a = np.deg2rad(rng.uniform(-4, 4))
        c = rect.mean(axis=0)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        rect = (rect - c) @ rot.T + c
    open_[:] = 0
    cv2.fillPoly(open_, [np.round(rect * 16).astype(np.int32)], 1, shift=4)
    return open_.astype(bool)


def _markers(rng: np.random.Generator, h: int, w: int, letter: str | None) -> list[dict]:
    s = min(h, w) / 512.0
    out = []

    def corner() -> tuple[int, int]:
        x = rng.uniform(0.04, 0.25) if rng.random() < 0.5 else rng.uniform(0.75, 0.92)
        y = rng.uniform(0.06, 0.25) if rng.random() < 0.5 else rng.uniform(0.78, 0.95)
        return int(x * w), int(y * h)

    if rng.random() < 0.8:
        out.append({"kind": "text", "text": letter or ("L" if rng.random() < 0.5 else "R"), "at": corner(),
                    "font": FONTS[int(rng.integers(len(FONTS)))], "scale": s * rng.uniform(1.0, 2.2),
                    "thick": max(1, int(round(s * rng.uniform(2, 5)))), "level": rng.uniform(0.85, 1.0),
                    "boxed": bool(rng.random() < 0.3)})
    if rng.random() < 0.5:
        y, mo, d = int(rng.integers(1995, 2024)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
        text = (f"{y}-{mo:02d}-{d:02d}" if rng.random() < 0.5 else f"{d:02d}/{mo:02d}/{y}")
        if rng.random() < 0.5:
            text += f" {int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}"
        out.append({"kind": "text", "text": text, "at": corner(), "font": FONTS[int(rng.integers(len(FONTS)))],
                    "scale": s * rng.uniform(0.4, 0.7), "thick": 1, "level": rng.uniform(0.8, 1.0), "boxed": False})
    if rng.random() < 0.3:
        side = max(2, int(min(h, w) * rng.uniform(0.015, 0.04)))
        out.append({"kind": "square", "at": corner(), "side": side, "level": rng.uniform(0.85, 1.0)})
    return out


def draw_acquisition(rng: np.random.Generator, height: int, width: int, letter: str | None) -> Acquisition:
    """All acquisition choices up front, so anatomy and lesions never shift these draws."""
    maker, model = MANUFACTURERS[int(rng.integers(len(MANUFACTURERS)))]
    rescale = None
    if rng.random() < 0.35:
        slope = float([1.0, 0.5, 2.0, 0.25, round(rng.uniform(0.1, 4.0), 4)][int(rng.integers(5))])
        intercept = float([0.0, -1024.0, float(rng.integers(-2000, 1))][int(rng.integers(3))])
        rescale = (slope, intercept)
    return Acquisition(
        height=height, width=width,
        bits_stored=BITS[int(rng.integers(len(BITS)))],
        photometric="MONOCHROME1" if rng.random() < 0.35 else "MONOCHROME2",
        modality="CR" if rng.random() < 0.4 else "DX",
        manufacturer=maker, model=model,
        pixel_spacing=round(float(rng.uniform(0.1, 0.2)), 4),
        window=bool(rng.random() < 0.7), rescale=rescale,
        blur=float(rng.uniform(0.0, 1.3)), levels=(float(rng.uniform(0.0, 0.08)), float(rng.uniform(0.88, 0.98))),
        heel=(float(rng.uniform(-0.08, 0.08)), float(rng.uniform(0, 2 * np.pi))),
        target_mean=float(rng.uniform(0.3, 0.6)),
        noise_sigma=float(rng.uniform(0.006, 0.03)), noise_quantum=float(rng.uniform(0.0, 8e-4)),
        field=_collimator(rng, height, width), shutter_level=float(rng.uniform(0.82, 1.0)),
        markers=_markers(rng, height, width, letter),
    )


def _draw_markers(img: np.ndarray, markers: list[dict]) -> None:
    for mk in markers:
        if mk["kind"] == "square":
            x, y = mk["at"]
            cv2.rectangle(img, (x, y), (x + mk["side"], y + mk["side"]), mk["level"], -1)
            continue
        cv2.putText(img, mk["text"], mk["at"], mk["font"], mk["scale"], mk["level"], mk["thick"], cv2.LINE_AA)
        if mk["boxed"]:
            (tw, th), _ = cv2.getTextSize(mk["text"], mk["font"], mk["scale"], mk["thick"])
            x, y = mk["at"]
            pad = max(2, th // 4)
            cv2.rectangle(img, (x - pad, y - th - pad), (x + tw + pad, y + pad), mk["level"], max(1, mk["thick"] // 2))


def _pin_mean(img: np.ndarray, target: float) -> np.ndarray:
    """Power curve I**g with g chosen so the mean hits ``target``: sets brightness
    without clipping anything (an offset would saturate bone or air)."""
    logs = np.log(np.maximum(img[::5, ::5].ravel(), 1e-6))
    lo, hi = -3.0, 3.0  # bounds on log g; the mean falls as g grows
    for _ in range(20):
        mid = (lo + hi) / 2
        if float(np.exp(logs * np.float32(np.exp(mid))).mean()) > target:
            lo = mid
        else:
            hi = mid
    return cv2.pow(img, float(np.exp((lo + hi) / 2)))


def _gaussian_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Standard normal field; cv2's generator (seeded from ``rng``) is 3x faster than numpy's."""
    cv2.setRNGSeed(int(rng.integers(1, 2**31 - 1)))
    out = np.empty((h, w), np.float32)
    cv2.randn(out, 0.0, 1.0)
    return out


def expose(intensity: np.ndarray, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Clean transmission image in [0, 1] (bone bright) -> displayed image in [0, 1]."""
    h, w = intensity.shape
    img = cv2.GaussianBlur(intensity, (0, 0), acq.blur) if acq.blur > 0.3 else intensity.copy()
    amp, ang = acq.heel
    img *= 1 + amp * ((np.arange(w, dtype=np.float32)[None, :] / w - 0.5) * np.float32(np.cos(ang))
                      + (np.arange(h, dtype=np.float32)[:, None] / h - 0.5) * np.float32(np.sin(ang)))
    p_lo, p_hi = np.percentile(img[::3, ::3], [0.5, 99.8])
    lo, hi = acq.levels
    gain = (hi - lo) / max(float(p_hi - p_lo), 1e-6)
    img *= np.float32(gain)
    img += np.float32(lo - p_lo * gain)
    np.clip(img, 0, 1, out=img)
    img[~acq.field] = acq.shutter_level
    _draw_markers(img, acq.markers)
    img = _pin_mean(img, acq.target_mean)
    sigma = cv2.sqrt(img * np.float32(acq.noise_quantum) + np.float32(acq.noise_sigma**2))
    img += sigma * _gaussian_noise(rng, h, w)
    sample = img[::2, ::2]
    shift = 0.0
    for _ in range(4):  # noise clipped at 0 and 1 moves the mean a little
        shift += acq.target_mean - float(np.clip(sample + shift, 0, 1).mean())
    img += np.float32(shift)
    return np.clip(img, 0, 1, out=img)


def quantise(displayed: np.ndarray, acq: Acquisition) -> np.ndarray:
    """Displayed [0, 1] -> stored values (inverted for MONOCHROME1)."""
    maxv = (1 << acq.bits_stored) - 1
    q = np.rint(displayed * maxv)
    if acq.photometric == "MONOCHROME1":
        q = maxv - q
    return q.astype(np.uint8 if acq.bits_stored == 8 else np.uint16)


def header_fields(acq: Acquisition, stored: np.ndarray, rng: np.random.Generator) -> dict:
    """Acquisition part of the DICOM header; window is derived from the stored values
    (in rescaled units, as a viewer would apply it)."""
    slope, intercept = acq.rescale if acq.rescale else (1.0, 0.0)
    wc = ww = None
    if acq.window:
        lo, hi = np.percentile(stored[::4, ::4], [1, 99])
        wc = round(float(slope * (lo + hi) / 2 + intercept), 2)
        ww = round(float(max(slope * (hi - lo), 1.0) * rng.uniform(0.9, 1.3)), 2)
    return {
        "modality": acq.modality,
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1" if acq.modality == "CR" else "1.2.840.10008.5.1.4.1.1.1.1",
        "photometric": acq.photometric,
        "bits_allocated": 8 if acq.bits_stored == 8 else 16,
        "bits_stored": acq.bits_stored,
        "high_bit": acq.bits_stored - 1,
        "rows": acq.height,
        "columns": acq.width,
        "pixel_spacing": [acq.pixel_spacing, acq.pixel_spacing],
        "window_center": wc,
        "window_width": ww,
        "rescale_slope": acq.rescale[0] if acq.rescale else None,
        "rescale_intercept": acq.rescale[1] if acq.rescale else None,
        "manufacturer": acq.manufacturer,
        "model": acq.model,
    }
