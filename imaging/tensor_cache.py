"""Enhanced, letterboxed float16 training tensors on disk, computed once per image and method.

Keys are content hashes, so an entry never goes stale; entries are written atomically, so
concurrent writers of the same key each produce a whole file and the last one wins.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from imaging.body_crop import body_crop
from imaging.enhance import ENHANCERS, enhance
from imaging.files import write_atomic
from imaging.resize import letterbox, resize_long_side

_KEY = re.compile(r"[0-9a-f]{2,128}")
# Part of every cache folder's name; raise it whenever the preparation (ROI, crop, enhancement)
# changes, or tensors made by the old code would be mixed with new ones. 2: ClassicRoi's
# background test.
PREPARATION_VERSION = 2


def prepare_tensor(img: np.ndarray, size: int, method: str = "fhe", crop_to_body: bool = True,
                   square: bool = True) -> np.ndarray:
    """A [0, 1] float image -> the float16 input the networks see: (size, size) letterboxed, or
    with ``square=False`` long side = ``size``, aspect kept (the detector: boxes scale by one factor)."""
    prepared = body_crop(img, method) if crop_to_body else enhance(img, method)
    if not square:
        return resize_long_side(prepared.astype(np.float32, copy=False), size).astype(np.float16)
    return letterbox(prepared, size).astype(np.float16)


@dataclass(frozen=True)
class InputRecipe:
    """How a stored radiograph becomes a network's input. A model keeps its recipe with its
    weights and serving reads it back from there, so training and serving cannot drift apart.

    ``crop_to_body``: the body part alone (imaging.body_crop; clustering and the sorter);
    ``square=False``: the whole image, long side ``size``, aspect kept (the detector: boxes
    scale by one factor per axis)."""

    size: int = 256
    method: str = "fhe"
    crop_to_body: bool = True
    square: bool = True

    def __post_init__(self) -> None:
        if self.method not in ENHANCERS:
            raise ValueError(f"unknown enhancement {self.method!r}; choose from {sorted(ENHANCERS)}")

    def prepare(self, img: np.ndarray) -> np.ndarray:
        return prepare_tensor(img, self.size, self.method, self.crop_to_body, self.square)

    @property
    def name(self) -> str:
        """``<method>[_body]_<size>[_fit]``: a cache folder's name, and a key for in-memory caches."""
        name = f"{self.method}_body_{self.size}" if self.crop_to_body else f"{self.method}_{self.size}"
        return name if self.square else name + "_fit"


class TensorCache:
    """``root/<recipe name>_v<PREPARATION_VERSION>/<key[:2]>/<key>.npy``, read back memory-mapped."""

    def __init__(self, root: str | Path, size: int = 256, method: str = "fhe", crop_to_body: bool = False,
                 square: bool = True, *, recipe: InputRecipe | None = None):
        self.recipe = recipe or InputRecipe(size, method, crop_to_body, square)
        self.root = Path(root)
        self.size, self.method = self.recipe.size, self.recipe.method
        self.crop_to_body, self.square = self.recipe.crop_to_body, self.recipe.square
        self.dir = self.root / f"{self.recipe.name}_v{PREPARATION_VERSION}"

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
        tensor = self.recipe.prepare(load())
        buf = io.BytesIO()
        np.save(buf, tensor, allow_pickle=False)
        write_atomic(path, buf.getvalue())
        return np.load(path, mmap_mode="r")
