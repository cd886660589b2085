"""The import contracts in pyproject.toml ([tool.importlinter]) hold, and they catch what they
are there for: an arrow running up the layers, and an import circle."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("backend", "ml_backend", "clustering", "exports", "imaging", "training")
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))  # root's packages before the installed ones
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def copy_of_the_packages(tmp_path: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "static", "templates"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _prepend(path: Path, line: str) -> None:
    text = path.read_text()
    head, _, rest = text.partition("from __future__ import annotations\n")
    path.write_text(head + "from __future__ import annotations\n" + line + "\n" + rest if rest else line + "\n" + text)


def test_the_repository_keeps_its_import_contracts():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 kept, 0 broken" in out.stdout


def test_an_arrow_running_up_the_layers_is_refused(copy_of_the_packages: Path):
    _prepend(copy_of_the_packages / "imaging" / "files.py", "import backend.config  # noqa")
    _prepend(copy_of_the_packages / "ml_backend" / "server.py", "import backend.database.schema  # noqa")
    out = _lint(copy_of_the_packages)
    assert out.returncode != 0
    assert "imaging is not allowed to import backend" in out.stdout
    assert "ml_backend is not allowed to import backend" in out.stdout


def test_an_import_circle_is_refused(copy_of_the_packages: Path):
    # The job machinery importing a capability whose job it runs: the circle the registry broke.
    _prepend(copy_of_the_packages / "backend" / "jobs" / "runner.py", "import backend.sorter.job  # noqa")
    out = _lint(copy_of_the_packages)
    assert out.returncode != 0
    assert "No cycles are allowed in backend" in out.stdout
