"""Ingest speed and memory: `samx ingest` against a naive pydicom + PIL loop.

Same 1,000 phantom DICOMs for both. The naive loop does the least anyone would: read,
decode, min-max to 8 bits, save a 256-px PNG thumbnail. samx also hashes, de-identifies,
applies the VOI transform, writes 16-bit pixels and a foreground-equalised thumbnail and
records a database row per file. Then 10,000 files are ingested while RSS is sampled.

    python bench/ingest.py [--n 1000] [--n-memory 10000] [--size 512]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"

from bench.cached_phantoms import cached_phantoms  # noqa: E402


def phantoms(n: int, size: int) -> Path:
    return cached_phantoms(f"phantoms-dcm-{n}-{size}", n, seed=1, fmt="dcm", size=size)


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm"))


def naive_loop(files: list[Path], out: Path) -> float:
    import pydicom
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for i, f in enumerate(files):
        arr = pydicom.dcmread(f).pixel_array.astype(np.float32)
        arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1.0) * 255.0
        img = Image.fromarray(arr.astype(np.uint8))
        img.thumbnail((256, 256))
        img.save(out / f"{i}.png")
    return time.perf_counter() - t


def samx_ingest(folder: Path, data_dir: Path) -> float:
    env = dict(os.environ, SAMX_DATA_DIR=str(data_dir))
    env.pop("DATABASE_URL", None)
    env.pop("SAMX_QUEUE", None)
    subprocess.run([sys.executable, "-m", "backend.cli", "init"], env=env, check=True, capture_output=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "backend.cli", "ingest", str(folder)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def memory_profile(folder: Path, data_dir: Path) -> tuple[float, list[tuple[int, float]]]:
    """Ingest in this process, sampling its RSS (where growth per file would show)."""
    from backend.config import Settings
    from backend.database.session import Database
    from backend.images.ingest import ingest_paths

    settings = Settings(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'samx.db'}", queue_url="sqlite")
    db = Database(settings)
    db.upgrade()
    samples: list[tuple[int, float]] = []
    state = {"done": 0, "stop": False}

    def sampler() -> None:
        while not state["stop"]:
            samples.append((state["done"], rss_mb(os.getpid())))
            time.sleep(0.5)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    ingest_paths(db, [folder], progress=lambda d, t, m: state.update(done=d))
    state["stop"] = True
    th.join()
    samples.append((state["done"], rss_mb(os.getpid())))
    return max(m for _, m in samples), samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--n-memory", type=int, default=10000)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()

    folder = phantoms(args.n, args.size)
    files = dicom_files(folder)
    with tempfile.TemporaryDirectory(prefix="samx-bench-") as tmp:
        tmp = Path(tmp)
        naive_s = naive_loop(files, tmp / "naive")
        ours_s = samx_ingest(folder, tmp / "samx")
    naive_ips, ours_ips = len(files) / naive_s, len(files) / ours_s
    ratio = ours_ips / naive_ips
    print(f"naive pydicom+PIL loop : {len(files)} files in {naive_s:6.1f} s = {naive_ips:6.1f} images/s")
    print(f"samx ingest ({os.cpu_count()} cores) : {len(files)} files in {ours_s:6.1f} s = {ours_ips:6.1f} images/s")
    print(f"ratio (samx / naive)   : {ratio:.2f}")

    big = phantoms(args.n_memory, 256)
    with tempfile.TemporaryDirectory(prefix="samx-bench-mem-") as tmp:
        peak, samples = memory_profile(big, Path(tmp))
    early = next((m for d, m in samples if d >= args.n_memory // 10), samples[-1][1])
    print(f"RSS while ingesting {args.n_memory} files: {early:.0f} MB after 10%, "
          f"{samples[-1][1]:.0f} MB at the end, peak {peak:.0f} MB")
    print(f"RESULT ratio={ratio:.2f} images_per_s={ours_ips:.1f} peak_mb={peak:.0f}")


if __name__ == "__main__":
    main()
