"""Stored radiographs -> the arrays the networks see, by a model's input recipe.

Enhancement (foreground-aware HE on the full bit depth) costs tens of milliseconds an image,
so results live in the content-addressed TensorCache (DATA_DIR/cache/tensors/<recipe>/) and
misses are computed in a process pool."""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

from backend.config import Settings
from backend.images.store import load_pixels
from imaging.tensor_cache import InputRecipe, TensorCache

Item = tuple[str, str]  # (content hash, store path)


def body_recipe(size: int, method: str = "fhe") -> InputRecipe:
    """The clustering and sorting networks' input: the body part alone, cropped and letterboxed
    (imaging.body_crop): shutters and markers never reach a network."""
    return InputRecipe(size, method, crop_to_body=True, square=True)


def tensor_cache(settings: Settings, recipe: InputRecipe) -> TensorCache:
    return TensorCache(settings.cache_dir / "tensors", recipe=recipe)


def _one(settings: Settings, recipe: InputRecipe, item: Item) -> np.ndarray:
    content_hash, store_path = item
    return np.array(tensor_cache(settings, recipe).get(content_hash, partial(load_pixels, settings, store_path)))


def iter_inputs(settings: Settings, items: Sequence[Item], recipe: InputRecipe, *, workers: int | None = None,
                progress: Callable[[int, int], None] | None = None):
    """(index, array) for every item, cached ones first, misses as the pool finishes them."""
    cache = tensor_cache(settings, recipe)
    missing = []
    for i, (h, store_path) in enumerate(items):  # one look at the cache per image
        if cache.has(h):
            yield i, cache.get(h, partial(load_pixels, settings, store_path))  # recomputes an unreadable entry
        else:
            missing.append(i)
    done = len(items) - len(missing)
    if progress:
        progress(done, len(items))
    workers = workers or min(len(missing), os.cpu_count() or 1)
    fn = partial(_one, settings, recipe)
    if workers <= 1 or len(missing) < 16:
        results, pool = map(fn, (items[i] for i in missing)), None
    else:
        pool = multiprocessing.get_context("spawn").Pool(workers)
        results = pool.imap(fn, [items[i] for i in missing], chunksize=4)
    try:
        for i, arr in zip(missing, results):
            yield i, arr
            done += 1
            if progress:
                progress(done, len(items))
    finally:
        if pool is not None:
            pool.terminate()


def load_inputs(settings: Settings, items: Sequence[Item], recipe: InputRecipe, *, workers: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """float32 inputs of any shape (the detector's keep each image's aspect), in order."""
    out: list[np.ndarray | None] = [None] * len(items)
    for i, arr in iter_inputs(settings, items, recipe, workers=workers, progress=progress):
        out[i] = np.asarray(arr, dtype=np.float32)
    return out  # type: ignore[return-value]


def load_tensors(settings: Settings, items: Sequence[Item], *, size: int, method: str = "fhe",
                 workers: int | None = None, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The body-crop inputs of clustering and the sorter: float16 (n, size, size), in order."""
    out = np.zeros((len(items), size, size), dtype=np.float16)
    for i, arr in iter_inputs(settings, items, body_recipe(size, method), workers=workers, progress=progress):
        out[i] = arr
    return out
