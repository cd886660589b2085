"""The ledger of instances samx has had from a PACS (table ``pacs_instances``).

Keyed by the SOP Instance UID as the de-identifier replaces it: the same keyed value the image
row's ``sop_uid`` gets, so the ledger holds no original UID yet a pull can tell what it has
without retrieving it again.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from backend.database.schema import PacsInstance
from backend.database.session import Database
from imaging.deidentify import Deidentifier

#: Rejections that say nothing about the object (a samx bug): not ledgered, tried again.
RETRY_CODES = frozenset({"internal_error"})


class Ledger:
    def __init__(self, db: Database, source: str, job_id: int | None = None):
        self.db, self.source, self.job_id = db, source, job_id
        self._deidentifier = Deidentifier(db.settings.secret())

    def key(self, sop_instance_uid: str) -> str:
        return self._deidentifier.uid(sop_instance_uid)

    def keys(self) -> set[str]:
        with self.db.session() as s:
            return set(s.scalars(select(PacsInstance.sop_uid)))

    def add(self, key: str, outcome: str, image_id: int | None, source: str | None = None) -> None:
        """Its own transaction, after the image's: a kill in between costs one retrieval, which
        the content hash then finds a duplicate."""
        with self.db.session() as s:
            row = s.scalar(select(PacsInstance).where(PacsInstance.sop_uid == key))
            if row is None:
                row = PacsInstance(sop_uid=key)
                s.add(row)
            row.source, row.outcome, row.image_id, row.job_id = source or self.source, outcome, image_id, self.job_id
            try:
                s.commit()
            except IntegrityError:  # a listener and a pull recorded it at once: theirs stands
                s.rollback()
