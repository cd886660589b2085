"""What samx remembers of datasets: which installation wrote one and which image files it wrote
(so an import recognises its own export, with its manifest or, rewritten by another tool,
without), and which images an imported dataset called normal."""
from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.database.schema import Image

#: images.meta key: SHA-256 of the files exports wrote for the image, newest last. A JSON list, not a
#: table: exports are deterministic, so it holds one hash per image format and stays a few entries long.
EXPORTED = "exported_sha256"
KEEP = 8
#: images.meta key: an imported dataset showed the image read and without findings (a known negative).
NORMAL = "imported_normal"


def installation_id(settings: Settings) -> str:
    """A stable, non-reversible id of this installation (from its secret key)."""
    return hashlib.sha256(b"samx-installation:" + settings.secret()).hexdigest()[:16]


def record_exported(s: Session, hashes: dict[int, str]) -> None:
    """Remember the hash of the file just exported for each image id."""
    for image in s.scalars(select(Image).where(Image.id.in_(hashes)).with_for_update()):
        known = list((image.meta or {}).get(EXPORTED) or [])
        if hashes[image.id] not in known:  # a repeated export writes nothing
            image.meta = {**(image.meta or {}), EXPORTED: (known + [hashes[image.id]])[-KEEP:]}


def exported_images(s: Session) -> dict[str, int]:
    """SHA-256 of every file an export wrote -> its image id (one pass over images.meta, as ingest
    reads every content hash: no index to keep)."""
    rows = s.execute(select(Image.id, Image.meta[EXPORTED]).where(Image.meta[EXPORTED].is_not(None)))
    return {h: image_id for image_id, hashes in rows for h in hashes or ()}
