"""The basic-auth account of samx's ML backend, shared by the server (`samx ml-backend`) and
the side that tells Label Studio how to call it (`samx labelstudio sync`)."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from backend.config import Settings
from imaging.files import create_private_json


def credentials_file(settings: Settings) -> Path:
    return settings.data_dir / "ml-backend" / "credentials.json"


def credentials(settings: Settings) -> tuple[str, str]:
    """SAMX_ML_BACKEND_USER / SAMX_ML_BACKEND_PASSWORD, else a pair generated once and kept in
    DATA_DIR/ml-backend/credentials.json (mode 0600)."""
    user, password = os.environ.get("SAMX_ML_BACKEND_USER"), os.environ.get("SAMX_ML_BACKEND_PASSWORD")
    if user and password:
        return user, password
    path = credentials_file(settings)
    if not path.exists():
        create_private_json(path, {"username": "labelstudio", "password": secrets.token_urlsafe(18)})
    stored = json.loads(path.read_text())
    return str(stored["username"]), str(stored["password"])
