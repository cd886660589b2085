"""The GPU path, run for real on the CPU: `torchrun` starts two samx processes that train
DeepCluster, the sorter and the lesion detector together (gloo instead of NCCL, the same code
otherwise)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from backend.cli import main
from backend.demo.pipeline import lesion_dataset

pytestmark = pytest.mark.slow


def samx(data: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["--data-dir", str(data), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def torchrun(data: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "backend.cli", "--data-dir", str(data), *args],
                          capture_output=True, text=True, timeout=600, env=env, cwd=Path(__file__).parents[1])


def test_cluster_and_sorter_train_on_two_processes(tmp_path: Path):
    from backend.config import Settings
    from backend.database.session import Database
    from backend.clusters.decisions import decide
    from backend.database.schema import Cluster, ClusterMembership, Image, Label, ModelVersion
    from backend.database.users import create_user

    data, phantoms = tmp_path / "data", tmp_path / "phantoms"
    samx(data, "synth", str(phantoms), "--n", "48", "--size", "160", "--format", "png", "--workers", "1")
    samx(data, "ingest", str(phantoms / "images"), "--workers", "1")

    done = torchrun(data, "cluster", "--k", "4", "--epochs", "2", "--width", "8", "--size", "48")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "48 images in 4 clusters" in done.stdout
    log = (data / "logs" / "samx.log").read_text()
    assert "rank 1 of 2 joined (gloo)" in log
    assert log.count("rank 1: DeepCluster._fit") == 1  # the follower trained DeepCluster alongside rank 0

    # every cluster named after most of its members (the weak labels the sorter learns from)
    truth = {Path(e["file"]).name: e["region"] for e in json.loads((phantoms / "truth.json").read_text())["images"]}
    db = Database(Settings.from_env(str(data)))
    user = create_user(db, "rad", "a-long-test-password", "radiologist")
    with db.session() as s:
        label_id = dict(s.execute(select(Label.name, Label.id).where(Label.kind == "region")).all())
        members = s.execute(select(ClusterMembership.cluster_id, Image.source_path)
                            .join(Image, Image.id == ClusterMembership.image_id)).all()
        clusters = s.scalars(select(Cluster.id)).all()
    for cid in clusters:
        region = Counter(truth[Path(p).name] for c, p in members if c == cid).most_common(1)[0][0]
        decide(db, "name", cid, user, label_id=label_id[region])

    done = torchrun(data, "train", "sorter", "--epochs", "2", "--folds", "3", "--min-per-class", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validation top-1" in done.stdout and "active" in done.stdout
    log = (data / "logs" / "samx.log").read_text()
    assert log.count("rank 1: train_network") == 4  # three folds and the version itself, on both ranks
    with db.session() as s:
        mv = s.scalar(select(ModelVersion).where(ModelVersion.kind == "sorter"))
        assert mv.config["processes"] == 2 and mv.status == "active"

    # lesion boxes from an earlier dataset (every other phantom with lesions), then the detector
    samx(data, "import", "coco", str(lesion_dataset(phantoms, json.loads((phantoms / "truth.json").read_text()))),
         "--images", str(phantoms))
    done = torchrun(data, "train", "detector", "--epochs", "2", "--size", "128", "--arch", "resnet18_fpn",
                    "--tile", "64", "--batch-size", "4")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "unlabelled images ranked" in done.stdout
    log = (data / "logs" / "samx.log").read_text()
    assert log.count("rank 1: train_network") == 5  # the detector's, after the sorter's four
    with db.session() as s:
        mv = s.scalar(select(ModelVersion).where(ModelVersion.kind == "detector"))
        assert mv.status == "active"
    meta = json.loads((data / mv.path).with_name("metadata.json").read_text())
    assert meta["processes"] == 2 and len(meta["history"]) == 2
    db.dispose()


def test_commands_that_do_not_train_refuse_torchrun(tmp_path: Path, monkeypatch):
    for args in (["train", "detector", "--background"], ["cluster", "--background"]):  # refused by rank 0, the others released
        done = torchrun(tmp_path, *args)
        assert done.returncode != 0 and "under torchrun" in done.stderr, done.stderr
        assert 'File "' + str(Path(__file__).parents[1] / "backend") not in done.stderr  # a usage error, no crash
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "serve"])  # refused before joining
    assert result.exit_code == 2 and "under torchrun samx runs" in result.output, result.output
