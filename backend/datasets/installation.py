"""Which samx installation wrote a dataset: lets an import recognise its own export."""
from __future__ import annotations

import hashlib

from backend.config import Settings


def installation_id(settings: Settings) -> str:
    """A stable, non-reversible id of this installation (from its secret key)."""
    return hashlib.sha256(b"samx-installation:" + settings.secret()).hexdigest()[:16]
