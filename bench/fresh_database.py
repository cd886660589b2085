"""A new, empty samx installation under bench/out for one benchmark run."""
from __future__ import annotations

import shutil
from pathlib import Path


def fresh_database(data_dir: Path):
    """(Settings, Database) of an empty data directory (anything there before is removed):
    SQLite, the embedded queue, schema at head, the default vocabulary."""
    from backend.config import Settings
    from backend.database.session import Database

    shutil.rmtree(data_dir, ignore_errors=True)
    settings = Settings(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'samx.db'}", queue_url="sqlite")
    settings.ensure_dirs()
    db = Database(settings)
    db.upgrade()
    db.seed_vocabulary()
    return settings, db
