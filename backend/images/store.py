"""Every copy of an image samx keeps on disk, named by content hash, and where it lies.

- the stored pixels: a 16-bit PNG of the decoded [0, 1] image, no header, so no PHI; every
  later step (training, Label Studio, exports) reads these rather than the originals;
- the thumbnail the web pages show (foreground-equalised, long side 256, WebP);
- the display rendition Label Studio serves (8-bit, foreground-equalised, full resolution),
  below its files root;
- the network inputs, in backend.images.tensors (a content-addressed cache of their own).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from backend.config import Settings
from imaging.enhance import enhance
from imaging.files import write_atomic
from imaging.thumbnails import write_thumbnail as _write_thumbnail

THUMBNAIL_SIZE = 256
THUMBNAIL_FORMAT = "webp"
DISPLAY_SUBDIR = "images"  # below Label Studio's files root: the only folder it is allowed to serve


def pixels_relpath(content_hash: str) -> str:
    return f"store/{content_hash[:2]}/{content_hash}.png"


def thumbnail_relpath(content_hash: str) -> str:
    return f"thumbnails/{content_hash[:2]}/{content_hash}.{THUMBNAIL_FORMAT}"


def write_thumbnail(settings: Settings, content_hash: str, pixels: np.ndarray) -> str:
    rel = thumbnail_relpath(content_hash)
    _write_thumbnail(pixels, settings.data_dir / rel, THUMBNAIL_SIZE)
    return rel


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


def display_relpath(content_hash: str) -> str:
    """Path of an image's display rendition below Label Studio's files root (and in its task URL)."""
    return f"{DISPLAY_SUBDIR}/{content_hash[:2]}/{content_hash}.png"


def display_path(settings: Settings, content_hash: str) -> Path:
    return settings.labelstudio_files_dir / display_relpath(content_hash)


def render_display(pixels: np.ndarray) -> np.ndarray:
    """The picture a radiologist reads: foreground-aware HE at full resolution, 8 bits."""
    return np.rint(enhance(pixels, "fhe") * 255.0).astype(np.uint8)


def write_display_image(settings: Settings, content_hash: str, store_relpath: str) -> bool:
    """Write the display rendition unless it exists; True if it was written now."""
    path = display_path(settings, content_hash)
    if path.exists():
        return False
    ok, buf = cv2.imencode(".png", render_display(load_pixels(settings, store_relpath)),
                           [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f"PNG encoder failed for {content_hash}")
    write_atomic(path, buf.tobytes())
    return True
