"""The real Label Studio the Label Studio tests share (one per session: its first start runs
its migrations, about 90 s), and samx's database in the same data directory, whose phantoms
carry lesions so the end-to-end loop has boxes to learn."""
from __future__ import annotations

import dataclasses
import os
import socket

import pytest

from backend.database.session import Database
from backend.images.ingest import ingest_paths
from backend.labelstudio import process as server
from imaging.phantoms import generate_phantoms
from tests.conftest import make_settings, missing

N_IMAGES = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A real Label Studio (`server.up`) on a free port, data in tmp; stopped at the end.
    Yields (settings, UpResult of the first start)."""
    data_dir = tmp_path_factory.mktemp("ls") / "data"
    data_dir.mkdir()
    settings = dataclasses.replace(make_settings(data_dir), label_studio_port=free_port(),
                                   label_studio_bin=os.environ.get("SAMX_LABEL_STUDIO_BIN") or None)
    try:
        server.find_binary(settings)
    except server.LabelStudioError as exc:
        missing(f"Label Studio is not installed ({exc}); `make labelstudio` installs it")
    try:
        first = server.up(settings, timeout=600)
    except server.LabelStudioError as exc:
        pytest.fail(str(exc))
    print(f"\nLabel Studio first start (migrations included): {first.seconds:.1f} s")
    yield settings, first
    server.down(settings)


@pytest.fixture(scope="session")
def ls_phantoms(tmp_path_factory):
    ph = tmp_path_factory.mktemp("phantoms")
    truth = generate_phantoms(ph, N_IMAGES, seed=3, fmt="png", size=256, lesion_rate=0.9, regions=("knee", "hand"),
                              workers=1)
    return ph, truth


@pytest.fixture(scope="session")
def ls_db(label_studio, ls_phantoms):
    """samx's database in the same data directory as Label Studio, with N_IMAGES ingested phantoms."""
    settings, _ = label_studio
    db = Database(settings)
    db.upgrade()
    db.seed_vocabulary()
    ph, _ = ls_phantoms
    summary = ingest_paths(db, [ph / "images"], workers=1)
    assert summary.by_status["imported"] == N_IMAGES
    yield db
    db.dispose()


@pytest.fixture(scope="session")
def ml_backend(label_studio, ls_db):
    """samx's real ML backend (the app `samx ml-backend` serves) on a free port in this
    process, so the test can wait for its event thread. Yields (url, SamxBackend)."""
    import threading

    from werkzeug.serving import make_server

    from ml_backend.auth import credentials
    from backend.detector.serving import ml_backend_service
    from ml_backend.server import create_app

    settings, _ = label_studio
    # the loop as a test can afford it: retrain after 4 annotations, a small detector
    db = Database(dataclasses.replace(settings, detector_retrain_after=4, detector_epochs=8, detector_size=128,
                                      detector_min_score=0.0))  # a tiny detector's boxes score low: show them all
    backend = ml_backend_service(db.settings, db).start(watch_every=0.5)
    httpd = make_server("127.0.0.1", free_port(), create_app(backend, basic_auth=credentials(settings)), threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", backend
    httpd.shutdown()
    backend.stop()
    db.dispose()
