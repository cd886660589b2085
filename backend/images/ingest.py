"""``samx ingest``: walk folders, de-identify and decode every file, record each outcome.

Decoding runs in worker processes; only this process writes the database, one transaction
per file, after the image's files are completely on disk. An interrupted run leaves
complete rows or none, and the next run skips what is already there (by content hash).

Files come as paths, or as (name, bytes) from a PACS (backend/pacs/): those go through the same
steps without ever being written to disk undeidentified.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from backend.config import Settings
from backend.database.session import Database
from backend.images.store import write_pixels, write_thumbnail
from backend.database.schema import Image, ImageStatus

log = logging.getLogger("samx.ingest")

Progress = Callable[[int, int, str | None], None]
#: A file path, or (name, content) for bytes received from elsewhere; the name is what the row,
#: the report and the log call it.
Item = str | tuple[str, bytes]


def iter_files(paths: Iterable[str | Path], *, exclude: Path | None = None) -> Iterator[Path]:
    """Every regular file under ``paths``, in a stable order; hidden files and ``exclude``
    (our own data directory) are skipped, symlinked folders are not followed."""
    for raw in paths:
        root = Path(raw)
        if root.is_file():
            yield root
            continue
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such file or directory")
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = sorted(
                d for d in dirnames
                if not d.startswith(".") and (exclude is None or (here / d).resolve() != exclude)
            )
            for name in sorted(filenames):
                if not name.startswith("."):
                    yield here / name


@dataclass
class FileOutcome:
    """What a worker process found for one file (plain data: it crosses processes)."""

    path: str
    content_hash: str | None
    file_size: int
    status: str  # imported | duplicate | rejected
    code: str | None = None
    reason: str | None = None
    meta: dict | None = None
    store_path: str | None = None
    thumbnail_path: str | None = None


# ---------------------------------------------------------------- worker side (no database)

_worker_state: dict = {}


def _init_worker(settings: Settings, known_imported: frozenset[str], voi: str) -> None:
    from imaging.deidentify import Deidentifier

    _worker_state.update(settings=settings, known=known_imported, voi=voi,
                         deidentifier=Deidentifier(settings.secret()))


def _process(item: Item) -> FileOutcome:
    """Read once, hash, decode, de-identify, write pixels + thumbnail. Never raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns per odd element; the outcome carries the reason
        return _process_quietly(item)


def _process_quietly(item: Item) -> FileOutcome:
    from imaging.errors import ImageRejected
    from imaging.reader import read_bytes, read_radiograph
    settings: Settings = _worker_state["settings"]
    path_str, source = (item, item) if isinstance(item, str) else item
    try:
        data = read_bytes(source)
    except ImageRejected as exc:
        return FileOutcome(path_str, None, 0, "rejected", exc.code, exc.reason)
    digest = hashlib.sha256(data).hexdigest()
    if digest in _worker_state["known"]:
        return FileOutcome(path_str, digest, len(data), "duplicate")
    try:
        rad = read_radiograph(data, voi=_worker_state["voi"], deidentifier=_worker_state["deidentifier"])
        store_path = write_pixels(settings, digest, rad.pixels)
        thumb = write_thumbnail(settings, digest, rad.pixels)
    except ImageRejected as exc:
        return FileOutcome(path_str, digest, len(data), "rejected", exc.code, exc.reason)
    except Exception as exc:  # a bug must cost one file, not the batch
        log.exception("unexpected error on %s", path_str)
        return FileOutcome(path_str, digest, len(data), "rejected", "internal_error", f"{type(exc).__name__}: {exc}")
    return FileOutcome(path_str, digest, len(data), "imported", meta=rad.meta.to_dict(),
                       store_path=store_path, thumbnail_path=thumb)


# ---------------------------------------------------------------- main side (database)


@dataclass
class IngestSummary:
    files: int = 0
    by_status: Counter = field(default_factory=Counter)
    by_reason: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    image_ids: dict[str, int] = field(default_factory=dict)  # path as given -> image (imported or duplicate)

    @property
    def images_per_second(self) -> float:
        return self.files / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {"files": self.files, "imported": self.by_status["imported"],
                "duplicate": self.by_status["duplicate"], "rejected": self.by_status["rejected"],
                "rejected_by_reason": dict(self.by_reason), "seconds": round(self.seconds, 3),
                "files_per_second": round(self.images_per_second, 2)}


class _ReportWriter:
    """Streams ``--report`` records to disk: memory stays flat on 100,000-file dumps."""

    def __init__(self, path: Path | None):
        self.path, self.tmp, self.f, self.first = path, None, None, True
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = path.with_name(path.name + ".partial")
            self.f = self.tmp.open("w", encoding="utf-8")
            self.f.write("[\n")

    def write(self, record: dict) -> None:
        if self.f is not None:
            self.f.write(("" if self.first else ",\n") + json.dumps(record, ensure_ascii=False))
            self.first = False

    def close(self) -> None:
        if self.f is not None:
            self.f.write("\n]\n")
            self.f.close()
            os.replace(self.tmp, self.path)
            self.f = None

    def abort(self) -> None:
        """Interrupted: keep what was written as ``.partial`` for the person to inspect."""
        if self.f is not None:
            self.f.close()
            self.f = None


def _image_columns(outcome: FileOutcome) -> dict:
    m = outcome.meta or {}
    return dict(
        format=m.get("format"), rows=m.get("rows"), columns=m.get("columns"), bits_stored=m.get("bits_stored"),
        photometric=m.get("photometric"), modality=m.get("modality"), body_part=m.get("body_part"),
        view_position=m.get("view_position"), laterality=m.get("laterality"), manufacturer=m.get("manufacturer"),
        patient_pseudonym=m.get("patient_id"), study_uid=m.get("study_uid"), series_uid=m.get("series_uid"),
        sop_uid=m.get("sop_uid"), study_date=m.get("study_date"), meta=m,
        store_path=outcome.store_path, thumbnail_path=outcome.thumbnail_path,
    )


class Recorder:
    """The database side of an ingest: one transaction per file, duplicates by content hash, the
    report. Used by one thread at a time."""

    def __init__(self, db: Database, *, report: str | Path | None = None, job_id: int | None = None):
        self.db, self.job_id = db, job_id
        self.summary = IngestSummary()
        with db.session() as s:
            self.known: dict[str, tuple[int, ImageStatus]] = {
                h: (i, st) for i, h, st in s.execute(select(Image.id, Image.content_hash, Image.status))
            }
        self.writer = _ReportWriter(Path(report) if report else None)
        self.session = db.sessionmaker()

    def known_imported(self) -> frozenset[str]:
        return frozenset(h for h, (_, st) in self.known.items() if st == ImageStatus.imported)

    def record(self, outcome: FileOutcome) -> int | None:
        """One file, one transaction: a kill loses at most the file in flight. Returns the
        image's id (its row, rejected ones included, or None), ``outcome.status`` what happened."""
        known, session, summary = self.known, self.session, self.summary
        row = None
        prior = known.get(outcome.content_hash) if outcome.content_hash else None
        if outcome.status != "rejected" and prior is not None and prior[1] == ImageStatus.imported:
            outcome.status = "duplicate"
        elif outcome.status == "imported":
            row = session.get(Image, prior[0]) if prior else None  # a once-rejected file now decodes
            if row is None:
                row = Image(content_hash=outcome.content_hash)
                session.add(row)
            for key, value in _image_columns(outcome).items():
                setattr(row, key, value)
            row.status, row.reason_code, row.reason = ImageStatus.imported, None, None
        elif outcome.status == "rejected" and outcome.content_hash is not None:
            row = session.get(Image, prior[0]) if prior else None
            if row is None:
                row = Image(content_hash=outcome.content_hash, status=ImageStatus.rejected, meta={})
                session.add(row)
            row.reason_code, row.reason = outcome.code, outcome.reason
        if row is not None:
            row.source_path, row.file_size, row.ingest_job_id = outcome.path, outcome.file_size, self.job_id
            try:
                session.commit()
                known[outcome.content_hash] = (row.id, row.status)
            except IntegrityError:  # another ingest committed the same content first
                session.rollback()
                other = session.scalar(select(Image).where(Image.content_hash == outcome.content_hash))
                known[outcome.content_hash] = (other.id, other.status)
                if other.status == ImageStatus.imported:
                    outcome.status = "duplicate"
                row = None
        image_id = row.id if row is not None else known.get(outcome.content_hash or "", (None,))[0]
        summary.files += 1
        summary.by_status[outcome.status] += 1
        if image_id is not None and outcome.status != "rejected":
            summary.image_ids[outcome.path] = image_id
        if outcome.status == "rejected":
            summary.by_reason[outcome.code or "unknown"] += 1
            log.info("rejected %s: %s: %s", outcome.path, outcome.code, outcome.reason)
        self.writer.write({"path": outcome.path, "status": outcome.status,
                           "reason": f"{outcome.code}: {outcome.reason}" if outcome.code else None,
                           "image_id": image_id})
        return image_id

    def close(self, *, complete: bool) -> None:
        """``complete``: the report is final; otherwise it stays ``.partial`` for inspection."""
        if complete:
            self.writer.close()
        self.writer.abort()
        self.session.close()


def process_here(db: Database, item: Item, *, voi: str = "auto",
                 known_imported: frozenset[str] = frozenset()) -> FileOutcome:
    """Decode one item in this process (``samx listen``); ``Recorder.record`` stores it."""
    if _worker_state.get("settings") is not db.settings or _worker_state.get("voi") != voi:
        db.settings.ensure_dirs()
        _init_worker(db.settings, known_imported, voi)
    return _process(item)


def ingest_paths(
    db: Database,
    paths: Iterable[str | Path],
    *,
    report: str | Path | None = None,
    voi: str = "auto",
    workers: int | None = None,
    progress: Progress | None = None,
    job_id: int | None = None,
) -> IngestSummary:
    files = [str(p) for p in iter_files(paths, exclude=db.settings.data_dir)]
    return ingest_items(db, files, total=len(files), report=report, voi=voi, workers=workers,
                        progress=progress, job_id=job_id)


def ingest_items(
    db: Database,
    items: Iterable[Item],
    *,
    total: int | None = None,
    report: str | Path | None = None,
    voi: str = "auto",
    workers: int | None = None,
    progress: Progress | None = None,
    job_id: int | None = None,
    on_outcome: Callable[[FileOutcome, int | None], None] | None = None,
) -> IngestSummary:
    """Ingest ``items`` (paths or (name, bytes)). Without ``total`` they are taken as a lazy
    iterable: the pool's feeder thread reads it, so whatever produces it (a download) overlaps
    with decoding, at most a few items ahead of the database (bytes wait in memory).
    ``on_outcome`` sees each file's outcome and image id right after its transaction."""
    settings = db.settings
    settings.ensure_dirs()
    settings.secret()  # create before workers start so all agree on one key
    recorder = Recorder(db, report=report, job_id=job_id)
    summary = recorder.summary
    cap = (total or 1) if total is not None else (workers or os.cpu_count() or 1)
    workers = max(1, min(workers or os.cpu_count() or 1, cap))
    started = time.perf_counter()
    init_args = (settings, recorder.known_imported(), voi)
    pool = None
    complete = False
    ahead = threading.Semaphore(4 * workers)
    stopping = threading.Event()

    def read_ahead(lazy: Iterable[Item]) -> Iterator[Item]:
        """Hold the feeder thread back; it must also notice a stop, as terminate() joins it."""
        for item in lazy:
            while not ahead.acquire(timeout=0.2):
                if stopping.is_set():
                    return
            yield item

    try:
        if workers == 1:
            _init_worker(*init_args)
            outcomes: Iterator[FileOutcome] = map(_process, items)
        elif total is None:  # the pool (seconds to start) only once there is a first item
            lazy = iter(items)
            first = next(lazy, None)
            if first is None:
                outcomes = iter(())
            else:
                pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, init_args)
                outcomes = pool.imap(_process, read_ahead(itertools.chain([first], lazy)), chunksize=1)
        else:
            pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, init_args)
            outcomes = pool.imap(_process, items, chunksize=2)
        for done, outcome in enumerate(outcomes, 1):
            ahead.release()
            image_id = recorder.record(outcome)
            if on_outcome is not None:
                on_outcome(outcome, image_id)
            if progress is not None:
                progress(done, total, None)
        complete = True
    finally:
        stopping.set()
        recorder.close(complete=complete)
        if pool is not None:
            pool.terminate()
            pool.join()
    summary.seconds = time.perf_counter() - started
    return summary
