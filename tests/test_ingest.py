"""samx ingest: every file gets an outcome, re-runs add nothing, PHI never lands anywhere."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, inspect, select, text

from backend.images.store import load_pixels
from backend.images.ingest import ingest_paths
from backend.database.schema import Image, ImageStatus
from tests.factories import PHI, body_like, dicom_bytes, find_phi


@pytest.fixture
def dump(tmp_path: Path) -> Path:
    """A realistic mess: good DICOMs (with PHI), PNG/JPEG, a duplicate, and several bad files."""
    root = tmp_path / "dump"
    (root / "a" / "b").mkdir(parents=True)
    for i in range(6):
        (root / "a" / f"img{i}.dcm").write_bytes(dicom_bytes(body_like(i), phi=True))
    (root / "a" / "b" / "copy_of_img0").write_bytes((root / "a" / "img0.dcm").read_bytes())  # no extension
    buf = io.BytesIO()
    PILImage.fromarray((body_like(50) * 16).astype(np.uint16)).save(buf, format="PNG")
    (root / "b.png").write_bytes(buf.getvalue())
    buf = io.BytesIO()
    PILImage.fromarray((body_like(51) // 16).astype(np.uint8)).save(buf, format="JPEG")
    (root / "c.jpg").write_bytes(buf.getvalue())
    good = dicom_bytes(body_like(60))
    (root / "truncated.dcm").write_bytes(good[: len(good) - 3000])
    (root / "notes.txt").write_text("not an image\n")
    (root / "empty.dcm").write_bytes(b"")
    no_pixels = dicom_bytes(body_like(61)).replace(b"\xe0\x7f\x10\x00", b"\xe0\x7f\x11\x00")  # PixelData tag renamed
    (root / "no_pixels.dcm").write_bytes(no_pixels)
    (root / ".hidden.dcm").write_bytes(dicom_bytes(body_like(62)))
    return root


EXPECTED = {"imported": 8, "duplicate": 1, "rejected": 4}


def _by_name(report: Path) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in json.loads(report.read_text())}


def test_every_file_gets_an_outcome_and_a_reason(db, dump: Path, tmp_path: Path):
    report = tmp_path / "report.json"
    summary = ingest_paths(db, [dump], report=report, workers=2)
    assert dict(summary.by_status) == EXPECTED
    recs = _by_name(report)
    assert ".hidden.dcm" not in recs and len(recs) == 13
    assert recs["copy_of_img0"]["status"] == "duplicate"
    assert recs["copy_of_img0"]["image_id"] == recs["img0.dcm"]["image_id"] is not None
    assert recs["truncated.dcm"]["reason"].startswith(("truncated:", "corrupt:"))
    assert recs["notes.txt"]["reason"].startswith("not_image:")
    assert recs["empty.dcm"]["status"] == "rejected"
    assert recs["no_pixels.dcm"]["reason"].startswith("no_pixel_data:")
    for r in recs.values():
        assert set(r) == {"path", "status", "reason", "image_id"}
        assert (r["reason"] is None) == (r["status"] != "rejected")
    with db.session() as s:
        imported = s.scalars(select(Image).where(Image.status == ImageStatus.imported)).all()
        rejected = s.scalars(select(Image).where(Image.status == ImageStatus.rejected)).all()
        assert len(imported) == 8 and len(rejected) == 4
        assert all(r.reason and r.reason_code for r in rejected)
        for img in imported:  # complete rows: pixels and thumbnail exist and match the row
            px = load_pixels(db.settings, img.store_path)
            assert px.shape == (img.rows, img.columns)
            assert (db.settings.data_dir / img.thumbnail_path).stat().st_size > 0
        dcm = next(i for i in imported if i.source_path.endswith("img3.dcm"))
        assert dcm.bits_stored == 12 and dcm.patient_pseudonym and dcm.patient_pseudonym != PHI["PatientID"]
        assert dcm.study_date and dcm.study_date != PHI["StudyDate"]


def test_second_run_adds_nothing(db, dump: Path, tmp_path: Path):
    ingest_paths(db, [dump], workers=1)
    with db.session() as s:
        before = s.scalar(select(func.count()).select_from(Image))
    again = ingest_paths(db, [dump], report=tmp_path / "again.json", workers=1)
    assert again.by_status["imported"] == 0 and again.by_status["duplicate"] == 9
    assert again.by_status["rejected"] == 4
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == before


def test_interrupted_run_resumes_without_duplicates(sqlite_db, dump: Path):
    db = sqlite_db

    def stop_after(done, total, msg):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest_paths(db, [dump], workers=1, progress=stop_after)
    with db.session() as s:  # whatever was committed is complete
        for img in s.scalars(select(Image).where(Image.status == ImageStatus.imported)):
            assert (db.settings.data_dir / img.store_path).exists()
    summary = ingest_paths(db, [dump], workers=1)
    assert summary.by_status["rejected"] == 4
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Image).where(Image.status == ImageStatus.imported)) == 8
        assert s.scalar(select(func.count()).select_from(Image)) == 12


def test_parallel_and_serial_ingest_store_the_same_images(tmp_path: Path, dump: Path):
    from backend.database.session import Database
    from tests.conftest import make_settings

    results = []
    for workers in (1, 2):
        d = tmp_path / f"w{workers}"
        d.mkdir()
        db = Database(make_settings(d))
        db.upgrade()
        ingest_paths(db, [dump], workers=workers)
        with db.session() as s:
            results.append(sorted((i.content_hash, i.status.value, i.reason_code) for i in s.scalars(select(Image))))
        db.dispose()
    assert results[0] == results[1]


def _all_database_text(db) -> str:
    """Every value of every row of every table, as text (works on SQLite and PostgreSQL)."""
    chunks = []
    with db.engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                chunks.append(repr(tuple(row)))
    return "\n".join(chunks)


def test_no_phi_in_database_files_thumbnails_logs_or_report(db, dump: Path, tmp_path: Path):
    import logging

    log_file = db.settings.logs_dir / "samx.log"
    db.settings.logs_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    try:
        report = tmp_path / "report.json"
        ingest_paths(db, [dump], report=report, workers=1)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    phi = list(PHI.values()) + ["Phisecret"]
    assert find_phi(_all_database_text(db), phi) == []
    files = [p for p in db.settings.data_dir.rglob("*") if p.is_file() and p.name != "secret.key"]
    assert any(p.suffix == ".webp" for p in files) and any(p.suffix == ".png" for p in files)
    assert log_file.stat().st_size > 0  # rejections were logged
    for path in files + [report]:
        assert find_phi(path.read_bytes(), phi) == [], path


def test_two_ingests_racing_over_the_same_files_store_each_once(postgres_url: str, tmp_path: Path, dump: Path):
    import threading

    from backend.database.session import Database
    from tests.conftest import make_settings

    db = Database(make_settings(tmp_path / "race", postgres_url))
    db.upgrade()
    results, errors = [], []

    def run():
        try:
            results.append(ingest_paths(db, [dump], workers=1))
        except Exception as exc:  # noqa: BLE001  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(r.by_status["imported"] for r in results) == 8
    assert all(r.by_status["imported"] + r.by_status["duplicate"] == 9 for r in results)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Image).where(Image.status == ImageStatus.imported)) == 8
    db.dispose()
