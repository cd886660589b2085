"""The exported image files, made from samx's stored 16-bit PNGs (already de-identified:
pixels only, no header).

8 bits by default because that is what the loaders people use read right: torchvision's
CocoDetection and VOCDetection call PIL's ``convert("RGB")``, which clips a 16-bit PNG to white,
and datumaro wraps it modulo 256. The 8 bits are samx's display rendering (the caller passes
it), so a model trains on the picture the radiologist labelled, not on a second windowing."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from exports.manifest import sha256_file

#: name -> file extension. png8 / jpg: the display rendering in 8 bits; png16: the stored pixels
#: (VOI applied, not the display equalisation), lossless. VOC is JPEG by definition.
IMAGE_FORMATS = {"png8": ".png", "jpg": ".jpg", "png16": ".png"}
#: Where png16 is read right, for the CLI help and the docs.
PNG16_READERS = ("cv2.imread(path, cv2.IMREAD_UNCHANGED) and PIL's Image.open without convert (mode I;16) "
                 "read all 16 bits; torchvision's CocoDetection (PIL convert('RGB')) sees white and datumaro "
                 "wraps values modulo 256")
JPEG_QUALITY = 95


def write_image(stored: Path, dest: Path, image_format: str, display: Callable[[], np.ndarray], *,
                link: bool = False) -> str:
    """``stored`` in ``image_format`` at ``dest``; ``display()`` gives the 8-bit rendering. ``link``
    hard-links the stored file where the format allows (png16 on the same file system) and copies
    otherwise. Returns the SHA-256 of the file: how samx recognises it when it comes back."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, not {image_format!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if image_format == "png16":
        if link:
            try:
                os.link(stored, dest)
            except OSError:  # another file system: copy instead
                link = False
        if not link:
            shutil.copyfile(stored, dest)
        return sha256_file(dest)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if image_format == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode(IMAGE_FORMATS[image_format], display(), params)
    if not ok:
        raise OSError(f"cannot encode {dest.name}")
    data = buf.tobytes()
    dest.write_bytes(data)
    return hashlib.sha256(data).hexdigest()
