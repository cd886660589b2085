"""The versioned model store: ``models/<kind>/<version>/`` folders, one per trained version.

A version folder is built under a temporary name and renamed into place, and its database row
is written after that: a crash never leaves a half-written model for anyone to load or serve."""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.database.schema import ClusterRun, ModelKind, ModelStatus, ModelVersion
from training.weights import IMAGENET

#: A temporary version folder untouched this long belongs to a writer that was killed (a
#: version takes seconds to write): the next write of that kind removes it. By age, not by
#: pid: workers in other containers have their own pids.
STALE_TMP_SECONDS = 6 * 3600


def version_dir(settings: Settings, kind: ModelKind, version: str) -> Path:
    return settings.models_dir / kind / version


def active_version(s: Session, kind: ModelKind) -> ModelVersion | None:
    """The newest promoted version of ``kind``: the one that predicts and that the web UI shows."""
    return s.scalar(select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.status == ModelStatus.active)
                    .order_by(ModelVersion.id.desc()).limit(1))


def find_version(s: Session, kind: ModelKind, version: str | None) -> ModelVersion | None:
    """A version by name (any status), or the active one when ``version`` is None."""
    if version is None:
        return active_version(s, kind)
    return s.scalar(select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.version == version))


def latest_deepcluster(s: Session) -> tuple[ModelVersion, dict] | None:
    """The newest DeepCluster network and its run's parameters (input size, enhancement): the
    start of the sorter and of the abnormality classifier."""
    row = s.execute(select(ModelVersion, ClusterRun.params).join(ClusterRun, ClusterRun.model_version_id == ModelVersion.id)
                    .where(ModelVersion.kind == ModelKind.deepcluster, ModelVersion.status == ModelStatus.ready)
                    .order_by(ModelVersion.id.desc()).limit(1)).first()
    return (row[0], row[1]) if row else None


def lineage(weights: str | None, report: dict | None = None, *, version: ModelVersion | None = None) -> dict:
    """Which backbone a model version started from, in one shape for every kind (kept in its
    ``metrics`` JSON, so no migration): what a version learned depends on it as much as on its data.
    ``weights``: None (random), a name in training.weights.IMAGENET or a file; ``version``: the
    model version that file belongs to; ``report``: the load's report (its ``loaded`` and ``source``)."""
    report = report or {}
    out = {"source": "scratch", "model_version_id": None, "loaded": int(report.get("loaded", 0))}
    if version is not None:
        return {**out, "source": "model_version", "model_version_id": version.id,
                "name": f"{version.kind} {version.version}", "path": version.path}
    if weights and str(weights).lower() in IMAGENET:
        return {**out, "source": "imagenet", "name": report.get("source", str(weights))}
    return {**out, "source": "file", "path": str(weights)} if weights else out


def write_version_dir(settings: Settings, kind: ModelKind, version: str, fill: Callable[[Path], None]) -> Path:
    """``fill(tmp)`` writes the files; the folder is then renamed into place (atomic on one file
    system). Returns the final folder."""
    final = version_dir(settings, kind, version)
    _remove_stale_tmp(final.parent)
    tmp = final.with_name(f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        if final.exists():  # only a retried job writes a version name twice; the earlier folder has no row
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _remove_stale_tmp(kind_dir: Path) -> None:
    cutoff = time.time() - STALE_TMP_SECONDS
    for leftover in kind_dir.glob(".tmp-*"):
        try:
            if leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover, ignore_errors=True)
        except FileNotFoundError:  # another writer removed it first
            pass


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, allow_nan=False, default=_json_default))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
