"""Where everything lives and which servers to use, from flags and the environment."""
from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = "samx-data"


@dataclass(frozen=True)
class Settings:
    """One object passed down explicitly; nothing reads the environment behind its back."""

    data_dir: Path
    database_url: str
    queue_url: str  # "sqlite" (embedded, no server) or a redis:// URL
    #: Weak labels corrected (review queue, single-image moves) since the active sorter was
    #: trained that start a background retrain; 0 turns the loop off.
    sorter_retrain_after: int = 50

    @classmethod
    def from_env(cls, data_dir: str | Path | None = None) -> "Settings":
        root = Path(data_dir or os.environ.get("SAMX_DATA_DIR") or DEFAULT_DATA_DIR).expanduser().resolve()
        db = os.environ.get("DATABASE_URL") or f"sqlite:///{root / 'samx.db'}"
        if db.startswith("postgres://"):  # Heroku-style URLs name no driver; we ship psycopg 3
            db = "postgresql+psycopg://" + db[len("postgres://") :]
        elif db.startswith("postgresql://"):
            db = "postgresql+psycopg://" + db[len("postgresql://") :]
        queue = os.environ.get("SAMX_QUEUE") or os.environ.get("REDIS_URL") or "sqlite"
        retrain = os.environ.get("SAMX_SORTER_RETRAIN_AFTER", "").strip()
        try:
            retrain_after = int(retrain) if retrain else 50
        except ValueError:
            raise ValueError(f"SAMX_SORTER_RETRAIN_AFTER must be a whole number, got {retrain!r}") from None
        return cls(data_dir=root, database_url=db, queue_url=queue, sorter_retrain_after=max(0, retrain_after))

    # Layout of the data directory: one place to change it.
    @property
    def store_dir(self) -> Path:
        """De-identified pixels (16-bit PNG), one file per content hash."""
        return self.data_dir / "store"

    @property
    def thumbnails_dir(self) -> Path:
        return self.data_dir / "thumbnails"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def queue_file(self) -> Path:
        return self.data_dir / "queue.db"

    @property
    def secret_file(self) -> Path:
        return self.data_dir / "secret.key"

    def ensure_dirs(self) -> None:
        for d in (self.data_dir, self.store_dir, self.thumbnails_dir, self.cache_dir, self.models_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)

    def secret(self) -> bytes:
        """The installation key behind pseudonyms and replaced UIDs; made once, never rotated
        silently (rotating it would split one patient into two)."""
        path = self.secret_file
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret-")  # 0600, unique per caller
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(secrets.token_bytes(32))
                os.link(tmp, path)  # atomic create-if-absent: concurrent first callers agree on one key
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        return path.read_bytes()
