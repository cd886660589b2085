"""Mutated DICOM / PNG / JPEG / TIFF bytes through ``read_radiograph`` (10,000 inputs, with
hypothesis) and through the ingest path (a folder of 1,500 of them): nothing but ImageRejected
escapes, every rejection names a known code and a reason, whatever is accepted is a valid
radiograph, no decoder crashes the process or hangs, and ingest loses and doubles nothing."""
from __future__ import annotations

import io
import json
import random
import time
import warnings
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from backend.images.ingest import ingest_paths
from backend.database.schema import Image, ImageStatus
from imaging.deidentify import Deidentifier
from imaging.errors import ImageRejected
from imaging.reader import read_radiograph
from tests.conftest import pydicom_test_files
from tests.factories import body_like, dicom_bytes

#: Every code the imaging layer may give; a new one must be added here on purpose.
CODES = {"not_image", "no_pixel_data", "truncated", "corrupt", "too_large", "unreadable",
         "unsupported_transfer_syntax", "decode_failed"}
#: One small file per encoding path: the decoders (RLE, JPEG baseline/extended, JPEG-LS,
#: JPEG 2000, deflate), both endiannesses, implicit VR, colour, multi-frame, non-radiograph.
PYDICOM_SEEDS = ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm",
                 "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm",
                 "JPGExtended.dcm", "SC_rgb_rle_16bit_2frame.dcm", "SC_ybr_full_422_uncompressed.dcm",
                 "SC_rgb_jpeg_gdcm.dcm", "image_dfl.dcm", "rtdose.dcm", "JPEG2000.dcm"]
SLOWEST_SECONDS = 10.0  # one input; far above the ~2 ms a small file takes


def _seeds() -> list[bytes]:
    files = {p.name: p for p in pydicom_test_files()}
    seeds = [files[name].read_bytes() for name in PYDICOM_SEEDS]
    img16 = body_like(1, (48, 40)).astype(np.uint16) * 16
    seeds.append(dicom_bytes(body_like(2, (48, 40)), PhotometricInterpretation="MONOCHROME1",
                             WindowCenter=2048, WindowWidth=4096))
    seeds.append(cv2.imencode(".png", img16)[1].tobytes())
    seeds.append(cv2.imencode(".png", (img16 >> 8).astype(np.uint8))[1].tobytes())
    seeds.append(cv2.imencode(".jpg", (img16 >> 8).astype(np.uint8))[1].tobytes())
    buf = io.BytesIO()
    tifffile.imwrite(buf, img16)
    seeds.append(buf.getvalue())
    return seeds


SEEDS = _seeds()
INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFF]
WIDE = [0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFFFFFE]


def mutate(data: bytes, ops: list[tuple]) -> bytes:
    """Apply (kind, where, arg) operations; ``where`` is a fraction of the length, and low
    fractions are squared towards the header where lengths and tags live."""
    buf = bytearray(data)
    for kind, where, arg in ops:
        if not buf:
            break
        i = min(len(buf) - 1, int((where ** 2) * len(buf)))
        if kind == "flip":
            buf[i] ^= 1 << (arg % 8)
        elif kind == "byte":
            buf[i] = INTERESTING[arg % len(INTERESTING)]
        elif kind == "u16":
            buf[i:i + 2] = (WIDE[arg % len(WIDE)] & 0xFFFF).to_bytes(2, "little")
        elif kind == "u32":
            buf[i:i + 4] = (WIDE[arg % len(WIDE)] & 0xFFFFFFFF).to_bytes(4, "little")
        elif kind == "truncate":
            del buf[max(1, i):]
        elif kind == "delete":
            del buf[i:i + 1 + arg % 64]
        elif kind == "duplicate":
            buf[i:i] = buf[i:i + 1 + arg % 256]
        elif kind == "insert":
            buf[i:i] = bytes((arg * 7 + k) % 256 for k in range(1 + arg % 32))
    return bytes(buf)


KINDS = ["flip", "byte", "u16", "u32", "truncate", "delete", "duplicate", "insert"]
OPS = st.lists(st.tuples(st.sampled_from(KINDS), st.floats(0, 1, allow_nan=False), st.integers(0, 2**16)),
               min_size=1, max_size=6)


def random_ops(rng: random.Random) -> list[tuple]:
    return [(rng.choice(KINDS), rng.random(), rng.randrange(2**16)) for _ in range(rng.randint(1, 6))]


def check_read(data: bytes, deidentifier: Deidentifier | None) -> str:
    """The outcome code ('ok' or the rejection code); fails the test on anything else."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rad = read_radiograph(data, deidentifier=deidentifier, max_pixels=4_000_000)
    except ImageRejected as exc:
        assert exc.code in CODES, exc
        assert exc.reason and exc.reason.isprintable(), exc.reason
        outcome = exc.code
    else:
        px = rad.pixels
        assert px.ndim == 2 and px.shape == (rad.meta.rows, rad.meta.columns) and px.size > 0
        assert px.dtype == np.float32 and np.isfinite(px).all() and px.min() >= 0 and px.max() <= 1
        outcome = "ok"
    assert time.perf_counter() - start < SLOWEST_SECONDS
    return outcome


DEID = Deidentifier(b"fuzz" * 8)


@pytest.mark.slow
def test_read_radiograph_survives_10000_mutated_files():
    outcomes: Counter = Counter()

    @settings(max_examples=10_000, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(seed=st.integers(0, len(SEEDS) - 1), ops=OPS, deid=st.booleans())
    def one_input(seed, ops, deid):
        outcomes[check_read(mutate(SEEDS[seed], ops), DEID if deid else None)] += 1

    one_input()
    print(dict(outcomes))
    assert sum(outcomes.values()) >= 10_000
    # the mutations reach the decoders, not only the format sniffer, and are not all harmless
    assert outcomes["ok"] > 1000 and sum(v for k, v in outcomes.items() if k != "ok") > 1000
    assert len(outcomes) >= 4  # several rejection codes, not one catch-all


INGESTED = 10_000  # the floor, for the ingest path as for the reader alone


@pytest.mark.slow
def test_ingest_of_10000_mutated_files_records_each_once(sqlite_db, tmp_path: Path):
    db, rng = sqlite_db, random.Random(7)
    folder = tmp_path / "dump"
    folder.mkdir()
    for n in range(INGESTED):
        seed = SEEDS[n % len(SEEDS)]
        (folder / f"f{n:05d}.bin").write_bytes(mutate(seed, random_ops(rng)) if n >= len(SEEDS) else seed)
    report = tmp_path / "report.json"
    summary = ingest_paths(db, [folder], report=report, workers=2)
    recs = json.loads(report.read_text())
    assert len(recs) == INGESTED and len({r["path"] for r in recs}) == INGESTED
    assert summary.by_reason.get("internal_error", 0) == 0, summary.by_reason
    assert summary.by_status["imported"] > 100 and summary.by_status["rejected"] > 100
    for r in recs:
        assert r["status"] in ("imported", "duplicate", "rejected")
        if r["status"] == "rejected":
            assert r["reason"].split(":")[0] in CODES, r
    with db.session() as s:
        rows = s.scalar(select(func.count()).select_from(Image))
        imported = s.scalars(select(Image).where(Image.status == ImageStatus.imported)).all()
        assert all((db.settings.data_dir / i.store_path).is_file() for i in imported)
        assert len(imported) == summary.by_status["imported"]
        assert s.scalar(select(func.count()).select_from(Image).where(Image.reason.is_(None),
                                                                        Image.status == ImageStatus.rejected)) == 0
    again = ingest_paths(db, [folder], workers=2)
    assert again.by_status["imported"] == 0
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == rows
