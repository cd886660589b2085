"""Where everything lives and which servers to use, from flags and the environment."""
from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = "samx-data"


def _number_env(name: str, default, kind=int):
    raw = os.environ.get(name, "").strip()
    try:
        return kind(raw) if raw else default
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{name} must be {what}, got {raw!r}") from None


def _flag_env(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 1 or 0 (true/false, yes/no, on/off), got {raw!r}")


def _positive_hours(hours: float) -> float:
    if not hours > 0 or hours == float("inf"):
        raise ValueError(f"SAMX_SESSION_HOURS must be a positive number of hours, got {hours!r}")
    return hours


@dataclass(frozen=True)
class Settings:
    """One object passed down explicitly; nothing reads the environment behind its back."""

    data_dir: Path
    database_url: str
    queue_url: str  # "sqlite" (embedded, no server) or a redis:// URL
    #: Weak labels corrected (review queue, single-image moves) since the active sorter was
    #: trained that start a background retrain; 0 turns the loop off.
    sorter_retrain_after: int = 50
    #: Label Studio annotations synced since the last detector training that queue the next
    #: one (the ML backend's webhook); 0: only Label Studio's "Start training" does.
    detector_retrain_after: int = 20
    #: What a detector training the loop queues uses unless the job says otherwise (CPU: small).
    detector_epochs: int = 20
    detector_size: int = 512
    #: The loop's retrain fine-tunes the active version (its architecture, tile and size) instead
    #: of training from scratch: a round then needs a fraction of the steps (bench/active_learning.py).
    detector_warm_start: bool = True
    #: Boxes scoring below this (after decision fusion) are not offered as pre-annotations.
    detector_min_score: float = 0.2
    # Label Studio (backend/labelstudio/): the one `samx labelstudio up` starts, or an external one.
    label_studio_host: str = "127.0.0.1"  # interface it listens on
    label_studio_port: int = 8080
    label_studio_bin: str | None = None  # default: <repo>/.venv-ls/bin/label-studio, then PATH
    #: An already running Label Studio (e.g. docker-compose on PostgreSQL) instead of our own;
    #: its token then comes from SAMX_LABEL_STUDIO_TOKEN.
    label_studio_url: str | None = None
    label_studio_username: str | None = None  # default: generated once, DATA_DIR/labelstudio/credentials.json
    label_studio_password: str | None = None
    label_studio_token: str | None = None
    ml_backend_url: str | None = None  # e.g. http://127.0.0.1:9090 (the samx ML backend)
    #: The ML backend's basic-auth account; default: generated once, DATA_DIR/ml-backend/credentials.json.
    ml_backend_user: str | None = None
    ml_backend_password: str | None = None
    #: Lesion classes boxed in Label Studio; empty: the active lesion labels of the vocabulary.
    lesion_classes: tuple[str, ...] = ()
    #: A web login ends after this many hours without a request (the signed cookie expires).
    session_hours: float = 12.0
    #: Basic auth for `samx ingest dicomweb://...` (the password is never stored in the job).
    dicomweb_user: str | None = None
    dicomweb_password: str | None = None

    @classmethod
    def from_env(cls, data_dir: str | Path | None = None) -> "Settings":
        root = Path(data_dir or os.environ.get("SAMX_DATA_DIR") or DEFAULT_DATA_DIR).expanduser().resolve()
        db = os.environ.get("DATABASE_URL") or f"sqlite:///{root / 'samx.db'}"
        if db.startswith("postgres://"):  # Heroku-style URLs name no driver; we ship psycopg 3
            db = "postgresql+psycopg://" + db[len("postgres://") :]
        elif db.startswith("postgresql://"):
            db = "postgresql+psycopg://" + db[len("postgresql://") :]
        queue = os.environ.get("SAMX_QUEUE") or os.environ.get("REDIS_URL") or "sqlite"
        def env(name: str) -> str | None:
            return os.environ.get(name, "").strip() or None

        return cls(data_dir=root, database_url=db, queue_url=queue,
                   sorter_retrain_after=max(0, _number_env("SAMX_SORTER_RETRAIN_AFTER", 50)),
                   detector_retrain_after=max(0, _number_env("SAMX_DETECTOR_RETRAIN_AFTER", 20)),
                   detector_epochs=_number_env("SAMX_DETECTOR_EPOCHS", 20),
                   detector_size=_number_env("SAMX_DETECTOR_SIZE", 512),
                   detector_warm_start=_flag_env("SAMX_DETECTOR_WARM_START", True),
                   detector_min_score=_number_env("SAMX_DETECTOR_MIN_SCORE", 0.2, float),
                   label_studio_host=env("SAMX_LABEL_STUDIO_HOST") or "127.0.0.1",
                   label_studio_port=_number_env("SAMX_LABEL_STUDIO_PORT", 8080),
                   label_studio_bin=env("SAMX_LABEL_STUDIO_BIN"),
                   label_studio_url=env("SAMX_LABEL_STUDIO_URL"),
                   label_studio_username=env("SAMX_LABEL_STUDIO_USERNAME"),
                   label_studio_password=env("SAMX_LABEL_STUDIO_PASSWORD"),
                   label_studio_token=env("SAMX_LABEL_STUDIO_TOKEN"),
                   ml_backend_url=env("SAMX_ML_BACKEND_URL"),
                   ml_backend_user=env("SAMX_ML_BACKEND_USER"),
                   ml_backend_password=env("SAMX_ML_BACKEND_PASSWORD"),
                   dicomweb_user=env("SAMX_DICOMWEB_USER"),
                   dicomweb_password=env("SAMX_DICOMWEB_PASSWORD"),
                   session_hours=_positive_hours(_number_env("SAMX_SESSION_HOURS", 12.0, float)),
                   lesion_classes=tuple(c.strip() for c in (env("SAMX_LESION_CLASSES") or "").split(",") if c.strip()))

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
    def labelstudio_dir(self) -> Path:
        """Label Studio's own data (its SQLite database, media) and samx's state about it."""
        return self.data_dir / "labelstudio"

    @property
    def labelstudio_files_dir(self) -> Path:
        """``LOCAL_FILES_DOCUMENT_ROOT``: everything Label Studio may serve lies below this.

        Deliberately not DATA_DIR itself: any Label Studio user can add a local-files storage
        anywhere below the document root and read what is there, and DATA_DIR holds the
        installation key, our database, logs (with source paths) and Label Studio's own
        database (with its users' tokens)."""
        return self.labelstudio_dir / "files"

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
