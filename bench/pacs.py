"""PACS pull speed: `samx ingest dicomweb://` against Orthanc's own download loop.

Starts a real Orthanc (Debian's, with its DICOMweb plugin; `make orthanc` installs it), uploads
50 studies of phantom DICOMs, then times, on the same server:

- naive: `GET /instances/{id}/file` for every instance, one after another (requests), bytes
  kept in memory: the least anyone would do to copy a PACS, without decoding anything;
- samx: `samx ingest dicomweb://...` into a fresh data directory, as a user runs it (its own
  process): QIDO-RS, WADO-RS, then de-identify, decode, write pixels and thumbnails, one row per
  instance and the ledger. The RESULT line is the default (a decoding process per core); the
  same pull with `--workers 1` is printed beside it.

    python bench/pacs.py [--studies 50] [--size 512] [--workers N]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cached_phantoms import cached_phantoms  # noqa: E402
from tests.orthanc_server import PASSWORD, USER, Orthanc, orthanc_missing  # noqa: E402


def study_files(studies: int, size: int) -> list[Path]:
    """The DICOM files of the first ``studies`` studies of a cached phantom set."""
    import pydicom

    n = 2 * studies  # a patient's study sometimes holds several images
    folder = cached_phantoms(f"phantoms-dcm-{n}-{size}", n, seed=5, fmt="dcm", size=size)
    by_study: dict[str, list[Path]] = {}
    for f in sorted(folder.rglob("*.dcm")):
        by_study.setdefault(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID, []).append(f)
    return [f for files in list(by_study.values())[:studies] for f in files]


def naive_loop(orthanc: Orthanc) -> tuple[float, int]:
    session = requests.Session()
    session.auth = orthanc.auth
    t = time.perf_counter()
    ids = session.get(f"{orthanc.url}/instances", timeout=60).json()
    size = 0
    for i in tqdm(ids, desc="naive /file loop", unit="instance", disable=None):
        r = session.get(f"{orthanc.url}/instances/{i}/file", timeout=60)
        r.raise_for_status()
        size += len(r.content)
    return time.perf_counter() - t, size


def samx_pull(orthanc: Orthanc, data_dir: Path, workers: int | None) -> tuple[float, float | None]:
    """Wall time of the command, and the pull's own time as it reports it (no process start)."""
    env = dict(os.environ, SAMX_DATA_DIR=str(data_dir), SAMX_DICOMWEB_USER=USER, SAMX_DICOMWEB_PASSWORD=PASSWORD)
    env.pop("DATABASE_URL", None)
    env.pop("SAMX_QUEUE", None)
    subprocess.run([sys.executable, "-m", "backend.cli", "init"], env=env, check=True, capture_output=True)
    cmd = [sys.executable, "-m", "backend.cli", "ingest", orthanc.dicomweb_url]
    if workers:
        cmd += ["--workers", str(workers)]
    t = time.perf_counter()
    # stderr passes through: samx's own progress bar (instances, study k/N)
    out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True, cwd=ROOT).stdout
    wall = time.perf_counter() - t
    print(out, end="")
    own = re.search(r"instances in ([\d.]+) s", out)
    return wall, float(own.group(1)) if own else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=50)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--workers", type=int, default=None, help="samx's decoding processes (default: all cores)")
    args = ap.parse_args()
    why = orthanc_missing()
    if why:
        sys.exit(why)

    files = study_files(args.studies, args.size)
    with tempfile.TemporaryDirectory(prefix="samx-bench-pacs-") as tmp, Orthanc(Path(tmp) / "orthanc") as orthanc:
        for f in tqdm(files, desc="upload to Orthanc", unit="instance", disable=None):
            orthanc.upload(f.read_bytes())
        studies = len(requests.get(f"{orthanc.url}/studies", auth=orthanc.auth, timeout=60).json())
        naive_s, size = min(naive_loop(orthanc) for _ in range(2))  # the better of two: a warm cache
        wall_s, own_s = samx_pull(orthanc, Path(tmp) / "samx", args.workers)
        one_s = samx_pull(orthanc, Path(tmp) / "samx-1", 1)[0] if args.workers is None else None

    naive_sps, ours_sps = studies / naive_s, studies / wall_s
    ratio = ours_sps / naive_sps
    print(f"{studies} studies, {len(files)} instances, {size / 1e6:.1f} MB, on {os.cpu_count()} cores")
    print(f"naive /instances/{{id}}/file loop : {naive_s:6.2f} s = {naive_sps:7.2f} studies/s (download only)")
    print(f"samx ingest dicomweb://          : {wall_s:6.2f} s = {ours_sps:7.2f} studies/s (command, start included)")
    if own_s:
        print(f"  of which the pull itself       : {own_s:6.2f} s = {studies / own_s:7.2f} studies/s")
    if one_s:
        print(f"samx ingest ... --workers 1      : {one_s:6.2f} s = {studies / one_s:7.2f} studies/s "
              "(no decoding pool to start)")
    print(f"ratio (samx / naive)             : {ratio:.3f}")
    print(f"RESULT studies_per_s={ours_sps:.2f} naive_studies_per_s={naive_sps:.2f} ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
