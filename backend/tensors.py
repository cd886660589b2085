"""Stored radiographs -> the (n, S, S) enhanced array the networks train on.

Enhancement (foreground-aware HE on the full bit depth) costs tens of milliseconds an image,
so results live in the content-addressed TensorCache and misses are computed in a process pool."""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

from backend.config import Settings
from backend.image_store import load_pixels
from imaging.tensor_cache import TensorCache


def tensor_cache(settings: Settings, size: int, method: str = "fhe") -> TensorCache:
    """The body part alone, cropped (imaging.body_crop): shutters and markers never reach a network."""
    return TensorCache(settings.cache_dir / "tensors", size=size, method=method, crop_to_body=True)


def _one(settings: Settings, size: int, method: str, item: tuple[str, str]) -> np.ndarray:
    content_hash, store_path = item
    cache = tensor_cache(settings, size, method)
    return np.array(cache.get(content_hash, lambda: load_pixels(settings, store_path)), dtype=np.float16)


def load_tensors(settings: Settings, items: Sequence[tuple[str, str]], *, size: int, method: str = "fhe",
                 workers: int | None = None, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """``items`` are (content_hash, store_path) pairs; returns float16 (n, size, size) in order."""
    out = np.zeros((len(items), size, size), dtype=np.float16)
    cache = tensor_cache(settings, size, method)
    missing = []
    for i, (h, store_path) in enumerate(items):  # one look at the cache per image
        if cache.has(h):
            out[i] = cache.get(h, partial(load_pixels, settings, store_path))  # recomputes an unreadable entry
        else:
            missing.append(i)
    done = len(items) - len(missing)
    if progress:
        progress(done, len(items))
    workers = workers or min(len(missing), os.cpu_count() or 1)
    fn = partial(_one, settings, size, method)
    if workers <= 1 or len(missing) < 32:
        results = map(fn, (items[i] for i in missing))
        pool = None
    else:
        pool = multiprocessing.get_context("spawn").Pool(workers)
        results = pool.imap(fn, [items[i] for i in missing], chunksize=8)
    try:
        for i, arr in zip(missing, results):
            out[i] = arr
            done += 1
            if progress:
                progress(done, len(items))
    finally:
        if pool is not None:
            pool.terminate()
    return out
