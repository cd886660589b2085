"""The versioned model store: atomic version folders, and what killed writers leave behind."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from backend.database.model_versions import STALE_TMP_SECONDS, write_version_dir
from tests.conftest import make_settings


def test_a_version_folder_appears_whole_and_a_killed_writers_leftovers_are_swept(data_dir: Path):
    settings = make_settings(data_dir)
    kind_dir = settings.models_dir / "sorter"
    stale, live = kind_dir / ".tmp-aaa-123", kind_dir / ".tmp-bbb-456"  # a kill -9 mid-write; a writer at work
    for folder in (stale, live):
        folder.mkdir(parents=True)
        (folder / "model.pt").write_bytes(b"half")
    old = time.time() - STALE_TMP_SECONDS - 60
    os.utime(stale, (old, old))

    final = write_version_dir(settings, "sorter", "v1", lambda tmp: (tmp / "model.pt").write_bytes(b"whole"))
    assert final == kind_dir / "v1" and (final / "model.pt").read_bytes() == b"whole"
    assert not stale.exists() and live.exists()

    def broken(tmp: Path) -> None:
        (tmp / "model.pt").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_version_dir(settings, "sorter", "v2", broken)
    assert not (kind_dir / "v2").exists()
    assert sorted(p.name for p in kind_dir.iterdir()) == [".tmp-bbb-456", "v1"]


def test_lineage_has_one_shape_for_every_start():
    from backend.database.model_versions import lineage
    from backend.database.schema import ModelKind, ModelVersion

    assert lineage(None) == {"source": "scratch", "model_version_id": None, "loaded": 0}
    name = "torchvision ResNet18_Weights.IMAGENET1K_V1"
    assert lineage("ImageNet", {"source": name, "loaded": 122}) == {
        "source": "imagenet", "model_version_id": None, "loaded": 122, "name": name}
    assert lineage("/w/r18.pth", {"loaded": 120}) == {"source": "file", "model_version_id": None, "loaded": 120,
                                                       "path": "/w/r18.pth"}
    mv = ModelVersion(id=7, kind=ModelKind.deepcluster, version="abc", path="models/deepcluster/abc.pt")
    assert lineage("/data/models/deepcluster/abc.pt", {"loaded": 102}, version=mv) == {
        "source": "model_version", "model_version_id": 7, "loaded": 102, "name": "deepcluster abc",
        "path": "models/deepcluster/abc.pt"}
