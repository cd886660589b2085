"""Shared fixtures: a fresh data directory, and the database on SQLite and real PostgreSQL."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

import backend.cli.job_kinds  # noqa: F401  # as the entry points do: registers the job handlers
from backend.config import Settings
from backend.database.session import Database

PG_ADMIN_URL = os.environ.get("SAMX_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("SAMX_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")

pytest_plugins = ["tests.labelstudio_fixtures", "tests.browser_fixtures"]


def missing(reason: str):
    """On CI a missing server or tool is a failure; on a laptop without it, a visible skip."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _unavailable(what: str, exc: Exception):
    missing(f"{what} not reachable ({type(exc).__name__}: {exc})")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    from sqlalchemy import create_engine, text

    try:
        eng = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.execute(text("SELECT 1"))
        eng.dispose()
    except Exception as exc:
        _unavailable("PostgreSQL", exc)
    return PG_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_server: str):
    """A new, empty database for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"samx_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL)
        client.ping()
        client.flushdb()
    except Exception as exc:
        _unavailable("Redis", exc)
    yield REDIS_URL
    client.flushdb()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


def make_settings(data_dir: Path, database_url: str | None = None, queue_url: str = "sqlite") -> Settings:
    return Settings(data_dir=data_dir.resolve(),
                    database_url=database_url or f"sqlite:///{data_dir.resolve() / 'samx.db'}",
                    queue_url=queue_url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, data_dir: Path) -> Database:
    """The schema at head on each backend the product supports."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    database = Database(make_settings(data_dir, url))
    database.upgrade()
    database.seed_vocabulary()
    yield database
    database.dispose()


@pytest.fixture
def sqlite_db(data_dir: Path) -> Database:
    database = Database(make_settings(data_dir))
    database.upgrade()
    database.seed_vocabulary()
    yield database
    database.dispose()


def pydicom_test_files() -> list[Path]:
    import pydicom

    root = Path(pydicom.__file__).parent / "data" / "test_files"
    return sorted(p for p in root.rglob("*") if p.is_file())


def pydicom_data_radiographs() -> list[Path]:
    import data_store  # pydicom-data

    root = Path(data_store.__file__).parent / "data"
    return sorted(root.glob("RG[13]_*.dcm"))


@pytest.fixture
def cluster_world(db):
    """A clustering run with three open clusters (12, 5 and 4 images with real files) and one
    account per role (password ``tests.factories.TEST_PASSWORD``), on SQLite and PostgreSQL."""
    from sqlalchemy import select

    from backend.database.schema import Cluster, Label
    from tests.factories import make_cluster_run, make_user

    run_id = make_cluster_run(db, sizes=[12, 5, 4], regions=["knee", "hand", "chest"], uncertainty=[0.2, 0.9, 0.5])
    users = {name: make_user(db, name, role) for name, role in
             (("rad1", "radiologist"), ("rad2", "radiologist"), ("viewer", "viewer"), ("boss", "admin"))}
    with db.session() as s:
        clusters = list(s.scalars(select(Cluster.id).where(Cluster.run_id == run_id).order_by(Cluster.index)))
        labels = {lab.name: lab.id for lab in s.scalars(select(Label).where(Label.kind == "region"))}
    return {"db": db, "settings": db.settings, "run": run_id, "c": clusters, "u": users, "L": labels}
