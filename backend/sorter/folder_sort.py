"""``samx sort IN OUT``: the sorter as a folder organizer.

Every file under IN is copied (or hard-linked) to OUT/<region>/<its path under IN>, to
OUT/unsure/... where the sorter abstains (its out-of-distribution score is above the calibrated
threshold, or the DICOM header says it is no projection radiograph), or to OUT/unreadable/...
where it is no image at all; OUT/predictions.csv says why for each. The originals are never touched and nothing is
written to the database. Decoding and enhancement (tens of ms an image) run in a process pool;
the network sees batches."""
from __future__ import annotations

import csv
import io
import multiprocessing
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from clustering.sorter.model import Sorter
from imaging.errors import ImageRejected
from imaging.files import write_atomic
from imaging.radiograph import not_a_radiograph
from imaging.reader import read_radiograph
from imaging.tensor_cache import prepare_tensor

UNSURE, UNREADABLE = "unsure", "unreadable"
#: region: where the file went (a region or "unsure"); prediction: the sorter's best class even
#: when it abstained, so the runner-up and the abstention can be judged separately.
COLUMNS = ["file", "destination", "region", "prediction", "confidence", "second", "second_confidence", "ood_score",
           "status", "reason"]
BATCH = 256


class SortError(Exception):
    """The folders cannot be sorted as asked (OUT taken, OUT inside IN, nothing to sort)."""


@dataclass
class SortSummary:
    files: int = 0
    by_folder: Counter = field(default_factory=Counter)
    csv: str = ""


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".")
                                                                           for part in p.relative_to(root).parts))


def _prepare(size: int, method: str, path: Path) -> tuple[np.ndarray | None, str | None, str | None]:
    """(tensor, why the header says it is no radiograph or None, None) or (None, None, why unreadable)."""
    try:
        rad = read_radiograph(path)
        m = rad.meta
        return prepare_tensor(rad.pixels, size, method), not_a_radiograph(m.format, m.modality, m.photometric), None
    except ImageRejected as exc:
        return None, None, str(exc)  # "code: reason"
    except Exception as exc:  # a batch never dies on one file
        return None, None, f"{type(exc).__name__}: {exc}"


def _prepared(paths: list[Path], size: int, method: str, workers: int) -> Iterator:
    fn = partial(_prepare, size, method)
    if workers <= 1 or len(paths) < 16:
        yield from map(fn, paths)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(fn, paths, chunksize=4)


def check_folders(src: Path, out: Path, force: bool) -> None:
    if not src.is_dir():
        raise SortError(f"{src} is not a folder")
    if out == src or src in out.parents:
        raise SortError(f"OUT ({out}) must not lie inside IN ({src}): a second run would sort its own output")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise SortError(f"{out} exists and is not empty; choose another folder or pass --force")


def sort_folder(model: Sorter, src: str | Path, out: str | Path, *, size: int, method: str = "fhe",
                link: bool = False, force: bool = False, workers: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> SortSummary:
    src, out = Path(src).resolve(), Path(out).resolve()
    check_folders(src, out, force)
    paths = _files(src)
    if not paths:
        raise SortError(f"{src} holds no files")
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or min(os.cpu_count() or 1, 8)
    summary = SortSummary(files=len(paths))
    rows: list[dict] = []
    pending: list[tuple[Path, np.ndarray, str | None]] = []

    def flush() -> None:
        pred = model.predict(np.stack([t for _, t, _ in pending]))
        top, top_p = pred.top, pred.top_proba
        for r, (path, _, header) in enumerate(pending):
            reasons = [header] if header else []
            if pred.abstained[r]:
                reasons.append(f"out of distribution: score {pred.ood_score[r]:.3f} > threshold "
                               f"{model.abstention_.threshold:.3f}")
            region = UNSURE if reasons else model.classes[top[r, 0]]
            rows.append(_place(src, out, path, region, link, "; ".join(reasons), model.classes[top[r, 0]],
                               top_p[r, 0], model.classes[top[r, 1]], top_p[r, 1], pred.ood_score[r]))
        pending.clear()

    for done, (path, (tensor, header, error)) in enumerate(zip(paths, _prepared(paths, size, method, workers)), 1):
        if error is not None:
            rows.append(_place(src, out, path, UNREADABLE, link, error))
        else:
            pending.append((path, tensor, header))
            if len(pending) >= BATCH:
                flush()
        if progress:
            progress(done, len(paths))
    if pending:
        flush()
    rows.sort(key=lambda r: r["file"])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    summary.csv = str(write_atomic(out / "predictions.csv", buf.getvalue().encode("utf-8")))
    summary.by_folder = Counter(r["destination"].split("/", 1)[0] for r in rows)
    return summary


def _place(src: Path, out: Path, path: Path, folder: str, link: bool, reason: str, best: str | None = None,
           best_p: float | None = None, second: str | None = None, second_p: float | None = None,
           score: float | None = None) -> dict:
    rel = path.relative_to(src)
    dest = out / folder / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest.unlink()
    if link:
        try:
            os.link(path, dest)
        except OSError:  # another file system: fall back to a copy
            shutil.copy2(path, dest)
    else:
        shutil.copy2(path, dest)
    status = "sorted" if folder not in (UNSURE, UNREADABLE) else folder
    return {"file": rel.as_posix(), "destination": dest.relative_to(out).as_posix(),
            "region": "" if folder == UNREADABLE else folder, "prediction": best or "",
            "confidence": "" if best_p is None else f"{best_p:.4f}",
            "second": second or "", "second_confidence": "" if second_p is None else f"{second_p:.4f}",
            "ood_score": "" if score is None else f"{score:.4f}", "status": status, "reason": reason}
