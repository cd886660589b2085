"""The samx command line, used the way the README says."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from backend.cli import main


def run(*args: str, data_dir: Path) -> str:
    result = CliRunner().invoke(main, ["--data-dir", str(data_dir), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_init_synth_ingest_images_jobs(tmp_path: Path):
    data = tmp_path / "data"
    out = run("init", data_dir=data)
    assert "admin account:  admin / " in out and (data / "initial-admin-password").exists()
    assert "admin account" not in run("init", data_dir=data)  # printed once only

    phantoms = tmp_path / "phantoms"
    out = run("synth", str(phantoms), "--n", "16", "--size", "128", "--workers", "1", data_dir=data)
    assert "wrote 16 phantoms" in out
    truth = json.loads((phantoms / "truth.json").read_text())
    assert len(truth["images"]) == 16
    images = phantoms / "images"
    (images / "broken.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00" * 10)

    report = tmp_path / "report.json"
    out = run("ingest", str(images), "--report", str(report), "--workers", "1", data_dir=data)
    assert "17 files" in out and "16 imported, 0 duplicates, 1 rejected" in out
    records = json.loads(report.read_text())
    assert {r["status"] for r in records} == {"imported", "rejected"}

    out = run("images", "--rejected", data_dir=data)
    assert "broken.dcm" in out and "1 of 1 rejected" in out
    listed = json.loads(run("images", "--json", "--limit", "100", data_dir=data))
    assert len(listed) == 16

    out = run("ingest", str(images), "--workers", "1", data_dir=data)
    assert "0 imported, 16 duplicates, 1 rejected" in out

    out = run("jobs", data_dir=data)
    assert out.count("ingest") == 2 and "succeeded" in out
    shown = run("jobs", "show", "1", data_dir=data)
    assert '"imported": 16' in shown


def test_background_ingest_is_run_by_the_worker(tmp_path: Path):
    data = tmp_path / "data"
    phantoms = tmp_path / "phantoms"
    run("synth", str(phantoms), "--n", "4", "--size", "128", "--workers", "1", data_dir=data)
    out = run("ingest", str(phantoms / "images"), "--background", "--workers", "1", data_dir=data)
    assert "queued job 1" in out
    assert "queued" in run("jobs", data_dir=data)
    run("worker", "--burst", data_dir=data)
    assert "succeeded" in run("jobs", "--status", "succeeded", data_dir=data)


def test_bad_arguments_give_clear_errors(tmp_path: Path):
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "d"), "ingest", str(tmp_path / "missing")])
    assert result.exit_code != 0 and "does not exist" in result.output
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "d"), "jobs", "retry", "99"])
    assert result.exit_code != 0 and "no job 99" in result.output
