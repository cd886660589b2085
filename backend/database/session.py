"""Engine, sessions and schema upgrades for SQLite (default) and PostgreSQL."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from backend.config import Settings
from backend.database.schema import Label, LabelKind, WeakLabel, utcnow

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

#: Body regions seeded into the vocabulary: 28 MSK regions at the granularity SAM-X names
#: (the paper does not list them; admins edit this list in the web UI).
DEFAULT_REGIONS = (
    "skull", "cervical spine", "thoracic spine", "lumbar spine", "spine", "chest", "ribs",
    "sternum", "clavicle", "shoulder", "humerus", "elbow", "forearm", "wrist", "hand", "finger",
    "pelvis", "sacrum", "hip", "femur", "knee", "patella", "lower leg", "ankle", "foot",
    "calcaneus", "toe", "long leg",
)
DEFAULT_LESIONS = ("benign", "malignant")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL: readers never block the ingest writer
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class Database:
    """The engine and session factory for one Settings."""

    def __init__(self, settings: Settings):
        self.settings = settings
        if settings.database_url.startswith("sqlite"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(settings.database_url)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on any error."""
        with self.sessionmaker() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def upgrade(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent)."""
        from alembic import command

        command.upgrade(alembic_config(self.engine), "head")

    def seed_vocabulary(self) -> int:
        """Add default labels that are missing; never touches edited or removed ones' rows."""
        added = 0
        with self.session() as s:
            existing = {(k, n) for k, n in s.execute(select(Label.kind, Label.name))}
            for kind, names in ((LabelKind.region, DEFAULT_REGIONS), (LabelKind.lesion, DEFAULT_LESIONS)):
                for order, name in enumerate(names):
                    if (kind, name) not in existing:
                        s.add(Label(kind=kind, name=name, sort_order=order))
                        added += 1
        return added

    def dispose(self) -> None:
        self.engine.dispose()


def label_id(s: Session, kind: LabelKind, name: str, cache: dict | None = None) -> int:
    """The vocabulary entry's id, added at the end of its kind when a dataset or Label Studio
    brings a name ours does not have (yet). ``cache``: (kind, name) -> id across one batch."""
    key = (kind, name)
    if cache is not None and key in cache:
        return cache[key]
    row = s.scalar(select(Label).where(Label.kind == kind, Label.name == name))
    if row is None:
        row = Label(kind=kind, name=name, sort_order=1000)
        s.add(row)
        s.flush()
    if cache is not None:
        cache[key] = row.id
    return row.id


def alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def current_label(s: Session, image_id: int) -> WeakLabel | None:
    """The image's current weak label (at most one: the ``uq_weak_labels_current`` index)."""
    return s.scalar(select(WeakLabel).where(WeakLabel.image_id == image_id, WeakLabel.superseded_at.is_(None)))


def supersede_label(s: Session, current: WeakLabel | None, new: WeakLabel) -> WeakLabel:
    """``new`` becomes the image's current label and ``current`` (if any) its history."""
    if current is not None:
        current.superseded_at = new.created_at or utcnow()
        s.flush()  # at most one current label per image: the old one stops being current first
    s.add(new)
    s.flush()
    return new
