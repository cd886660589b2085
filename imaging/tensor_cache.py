"""Enhanced, letterboxed float16 training tensors on disk, computed once per image and method.

Keys are content hashes, so an entry never goes stale; entries are written atomically, so
concurrent writers of the same key each produce a whole file and the last one wins.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Callable

import numpy as np

from imaging.body_crop import body_crop
from imaging.enhance import ENHANCERS, enhance
from imaging.files import write_atomic
from imaging.thumbnails import resize_long_side

_KEY = re.compile(r"[0-9a-f]{2,128}")
# Part of every cache folder's name; raise it whenever the preparation (ROI, crop, enhancement)
# changes, or tensors made by the old code would be mixed with new ones. 2: ClassicRoi's
# background test.
PREPARATION_VERSION = 2


def letterbox(img: np.ndarray, size: int) -> np.ndarray:
    """Long side = ``size``, aspect kept, centred on a zero (black) square."""
    small = resize_long_side(img.astype(np.float32, copy=False), size)
    out = np.zeros((size, size), dtype=np.float32)
    h, w = small.shape
    top, left = (size - h) // 2, (size - w) // 2
    out[top : top + h, left : left + w] = small
    return out


def prepare_tensor(img: np.ndarray, size: int, method: str = "fhe", crop_to_body: bool = True,
                   square: bool = True) -> np.ndarray:
    """A [0, 1] float image -> the float16 input the networks see: (size, size) letterboxed, or
    with ``square=False`` long side = ``size``, aspect kept (the detector: boxes scale by one factor)."""
    prepared = body_crop(img, method) if crop_to_body else enhance(img, method)
    if not square:
        return resize_long_side(prepared.astype(np.float32, copy=False), size).astype(np.float16)
    return letterbox(prepared, size).astype(np.float16)


class TensorCache:
    """``root/<method>[_body]_<size>[_fit]_v<PREPARATION_VERSION>/<key[:2]>/<key>.npy``, read
    back memory-mapped."""

    def __init__(self, root: str | Path, size: int = 256, method: str = "fhe", crop_to_body: bool = False,
                 square: bool = True):
        """``crop_to_body``: the input the clustering and sorting networks see (imaging.body_crop);
        ``square=False``: whole images, long side ``size`` (the detector's input)."""
        if method not in ENHANCERS:
            raise ValueError(f"unknown enhancement {method!r}; choose from {sorted(ENHANCERS)}")
        self.root = Path(root)
        self.size = size
        self.method = method
        self.crop_to_body = crop_to_body
        self.square = square
        name = f"{method}_body_{size}" if crop_to_body else f"{method}_{size}"
        self.dir = self.root / f"{name if square else name + '_fit'}_v{PREPARATION_VERSION}"

    def path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):  # keys become file names: no separators, no surprises
            raise ValueError(f"cache key must be a lower-case hex content hash, got {key!r}")
        return self.dir / key[:2] / f"{key}.npy"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str, load: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached tensor, computing it from ``load()`` (a float32 [0, 1] image) on a miss."""
        path = self.path(key)
        if path.is_file():
            try:
                return np.load(path, mmap_mode="r")
            except (ValueError, OSError):
                pass  # unreadable entry (e.g. disk trouble): recompute and overwrite it
        tensor = prepare_tensor(load(), self.size, self.method, self.crop_to_body, self.square)
        buf = io.BytesIO()
        np.save(buf, tensor, allow_pickle=False)
        write_atomic(path, buf.getvalue())
        return np.load(path, mmap_mode="r")
