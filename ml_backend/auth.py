"""The basic-auth account of samx's ML backend, shared by the server (`samx ml-backend`) and
the side that tells Label Studio how to call it (`samx labelstudio sync`)."""
from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Protocol

from imaging.files import create_private_json


class AccountSettings(Protocol):
    """The part of samx's settings the account needs (backend.config.Settings has it)."""

    data_dir: Path
    ml_backend_user: str | None
    ml_backend_password: str | None


def credentials_file(settings: AccountSettings) -> Path:
    return settings.data_dir / "ml-backend" / "credentials.json"


def credentials(settings: AccountSettings) -> tuple[str, str]:
    """The configured pair (SAMX_ML_BACKEND_USER / SAMX_ML_BACKEND_PASSWORD), else a pair
    generated once and kept in DATA_DIR/ml-backend/credentials.json (mode 0600)."""
    if settings.ml_backend_user and settings.ml_backend_password:
        return settings.ml_backend_user, settings.ml_backend_password
    path = credentials_file(settings)
    if not path.exists():
        create_private_json(path, {"username": "labelstudio", "password": secrets.token_urlsafe(18)})
    stored = json.loads(path.read_text())
    return str(stored["username"]), str(stored["password"])
