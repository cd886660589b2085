"""Phantom folders the benchmarks share: generated once under bench/out and reused."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def cached_phantoms(name: str, n: int, **kwargs) -> Path:
    """``bench/out/<name>``, made by generate_phantoms(n, **kwargs) unless it is there already
    (delete bench/out to regenerate)."""
    from imaging.phantoms import generate_phantoms

    folder = OUT / name
    if not (folder / "truth.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        t = time.perf_counter()
        generate_phantoms(folder, n, workers=os.cpu_count() or 1, **kwargs)
        print(f"generated {n} phantoms in {time.perf_counter() - t:.1f} s", flush=True)
    return folder
