"""A folder of phantoms plus truth.json.

The whole plan (region, patient, study, seed, format of every image) is fixed up
front from ``seed``, so each image is an independent job: any number of worker
processes writes byte-identical output.
"""
from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .anatomy import REGIONS
from .identity import make_identity
from .render import render_with_identity
from .writers import write_dicom, write_png

GENERATOR = "samx-phantoms"
VERSION = 1
FORMATS = ("dcm", "png", "mixed")


def _balanced(rng: np.random.Generator, n: int, regions: Sequence[str]) -> list[str]:
    seq = [regions[i % len(regions)] for i in range(n)]
    rng.shuffle(seq)
    return seq


def plan(n: int, seed: int, fmt: str, regions: Sequence[str]) -> list[dict]:
    """Images of one region are grouped into studies of 1-2, studies into patients of
    1-2 (so 1-4 images and 1-2 studies per patient), for split-by-patient tests."""
    rng = np.random.default_rng([seed, 0x5A3])
    region_of = _balanced(rng, n, regions)
    studies: list[list[int]] = []
    for region in regions:
        idx = [i for i in range(n) if region_of[i] == region]
        while idx:
            k = 1 if len(idx) == 1 else int(rng.integers(1, 3))
            studies.append(idx[:k])
            idx = idx[k:]
    rng.shuffle(studies)
    jobs: list[dict] = [{} for _ in range(n)]
    patient = 0
    while studies:
        take = 2 if len(studies) > 1 and rng.random() < 0.5 else 1
        for s, images in enumerate(studies[:take]):
            for i in images:
                jobs[i] = {"index": i, "region": region_of[i], "patient": patient, "study": s}
        studies = studies[take:]
        patient += 1
    for job in jobs:
        i = job["index"]
        job["seed"] = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        dicom = fmt == "dcm" or (fmt == "mixed" and rng.random() < 0.7)
        job["format"] = "dicom" if dicom else "png"
        job["id"] = f"ph{i + 1:06d}"
        job["file"] = f"images/p{job['patient']:04d}/{job['id']}.{'dcm' if dicom else 'png'}"
    return jobs


def _make(args: tuple[dict, dict, str]) -> dict:
    """One job: render, write, return its truth entry (top level so spawn can pickle it)."""
    job, opts, out_dir = args
    identity = make_identity(opts["seed"], job["patient"], job["study"], job["index"])
    ph = render_with_identity(job["seed"], job["region"], opts["size"], opts["lesion_rate"], opts["implant_rate"],
                              identity)
    path = Path(out_dir) / job["file"]
    if job["format"] == "dicom":
        write_dicom(path, ph, instance=job["index"] + 1)
    else:
        write_png(path, ph)
    t = ph.truth
    entry = {"id": job["id"], "file": job["file"], "format": job["format"], "seed": job["seed"]}
    entry.update({k: t[k] for k in ("region", "laterality", "view", "width", "height", "bits_stored",
                                    "photometric", "implant", "lesions", "patient", "study")})
    if job["format"] == "png":  # what the file holds: displayed polarity, 8 or 16 bits
        entry.update(bits_stored=8 if t["bits_stored"] == 8 else 16, photometric="MONOCHROME2")
    entry["source_bits_stored"], entry["source_photometric"] = t["bits_stored"], t["photometric"]
    entry["phi"] = t["phi"] if job["format"] == "dicom" else []
    entry["phi_tags"] = ph.dicom_header["phi_tags"] if job["format"] == "dicom" else {}
    entry["pose"] = t["pose"]
    return entry


def generate_phantoms(out_dir, n: int, seed: int = 0, fmt: str = "mixed", size: int = 512,
                      lesion_rate: float = 0.3, implant_rate: float = 0.1,
                      regions: Sequence[str] | None = None, workers: int = 1,
                      progress: Callable[[int], None] | None = None) -> dict:
    """Write ``n`` phantoms under ``out_dir/images/`` and ``out_dir/truth.json``.

    ``regions``: the regions to draw from (default: all), balanced across images.
    ``fmt="mixed"`` writes each image once, as DICOM with p=0.7 else PNG.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, not {fmt!r}")
    regions = tuple(regions) if regions else REGIONS
    unknown = [r for r in regions if r not in REGIONS]
    if unknown:
        raise ValueError(f"unknown regions {unknown}; expected some of {', '.join(REGIONS)}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    opts = {"seed": seed, "size": size, "lesion_rate": lesion_rate, "implant_rate": implant_rate}
    tasks = [(job, opts, str(out)) for job in plan(n, seed, fmt, regions)]
    entries: list[dict] = []
    if workers > 1 and n > 1:
        with mp.get_context("spawn").Pool(min(workers, n)) as pool:
            for entry in pool.imap(_make, tasks, chunksize=max(1, min(16, n // (4 * workers)))):
                entries.append(entry)
                if progress:
                    progress(len(entries))
    else:
        for task in tasks:
            entries.append(_make(task))
            if progress:
                progress(len(entries))
    truth = {"generator": GENERATOR, "version": VERSION, "seed": seed, "size": size, "fmt": fmt,
             "lesion_rate": lesion_rate, "implant_rate": implant_rate, "regions": list(regions), "images": entries}
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth
