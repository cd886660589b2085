"""The exported image files, made from samx's stored 16-bit PNGs (already de-identified:
pixels only, no header)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np

#: name -> file extension. png16: the stored pixels, lossless; png8 / jpg: the display image in
#: 8 bits, for tools that cannot read 16-bit files (VOC is JPEG by definition).
IMAGE_FORMATS = {"png16": ".png", "png8": ".png", "jpg": ".jpg"}
JPEG_QUALITY = 95


def to_8bit(arr16: np.ndarray) -> np.ndarray:
    """The stored [0, 1] image is already windowed (VOI applied), so 8 bits is a linear rescale."""
    return np.round(arr16.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)


def write_image(stored: Path, dest: Path, image_format: str, *, link: bool = False) -> None:
    """``stored`` in ``image_format`` at ``dest``. ``link`` hard-links the stored file where the
    format allows (png16 on the same file system) and copies otherwise."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, not {image_format!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if image_format == "png16":
        if link:
            try:
                os.link(stored, dest)
                return
            except OSError:
                pass  # another file system: copy instead
        shutil.copyfile(stored, dest)
        return
    arr = cv2.imread(str(stored), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise OSError(f"cannot read the stored image {stored}")
    arr8 = to_8bit(arr) if arr.dtype == np.uint16 else arr
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if image_format == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode(IMAGE_FORMATS[image_format], arr8, params)
    if not ok:
        raise OSError(f"cannot encode {dest.name}")
    dest.write_bytes(buf.tobytes())
