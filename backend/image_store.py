"""Files in the data directory, named by content hash: de-identified pixels and thumbnails.

The stored pixels are a 16-bit PNG of the decoded [0, 1] image: no header, so no PHI, and
every later step (training, Label Studio, exports) reads these rather than the originals.
"""
from __future__ import annotations


import cv2
import numpy as np

from backend.config import Settings
from imaging.files import write_atomic

THUMBNAIL_SIZE = 256
THUMBNAIL_FORMAT = "webp"


def pixels_relpath(content_hash: str) -> str:
    return f"store/{content_hash[:2]}/{content_hash}.png"


def thumbnail_relpath(content_hash: str) -> str:
    return f"thumbnails/{content_hash[:2]}/{content_hash}.{THUMBNAIL_FORMAT}"


def encode_pixels(pixels: np.ndarray) -> bytes:
    """[0, 1] float -> 16-bit PNG bytes (compression level 1: ingest speed over a few % of disk)."""
    arr = np.round(np.clip(pixels, 0.0, 1.0) * 65535.0).astype(np.uint16)
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OSError("PNG encoder failed")
    return buf.tobytes()


def write_pixels(settings: Settings, content_hash: str, pixels: np.ndarray) -> str:
    rel = pixels_relpath(content_hash)
    write_atomic(settings.data_dir / rel, encode_pixels(pixels))
    return rel


def load_pixels(settings: Settings, relpath: str) -> np.ndarray:
    """The stored image as float32 [0, 1]."""
    arr = cv2.imread(str(settings.data_dir / relpath), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise FileNotFoundError(settings.data_dir / relpath)
    return arr.astype(np.float32) / 65535.0
