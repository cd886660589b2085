"""`samx listen`: a DICOM storage SCP that ingests each instance as it arrives.

A PACS or a modality pushes with C-STORE (and checks the line with C-ECHO). Associations from a
calling AE title that is not allowed, or to another called AE title, are rejected before any
data flows. Each received instance goes through the normal ingest in this process, one at a
time: a non-image object or a broken dataset gets a failure status and a rejected row with the
reason, an image gets success only once its row is committed, and the listener goes on serving.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter

from backend.database.session import Database
from backend.images.ingest import Recorder, process_here
from backend.pacs.ledger import RETRY_CODES, Ledger

log = logging.getLogger("samx.pacs")

SUCCESS = 0x0000
#: "Failure: cannot understand" (PS3.4 Annex B.2.3): what samx answers for anything it refuses.
CANNOT_UNDERSTAND = 0xC000


class Listener:
    """The SCP; ``allowed`` empty accepts any calling AE title."""

    def __init__(self, db: Database, *, ae_title: str = "SAMX", host: str = "0.0.0.0", port: int = 11112,
                 allowed: tuple[str, ...] = (), voi: str = "auto"):
        self.db, self.ae_title, self.host, self.port, self.voi = db, ae_title, host, port, voi
        self.allowed = tuple(a.strip() for a in allowed if a.strip())
        self.counts: Counter = Counter()
        self._lock = threading.Lock()  # one ingest at a time: the recorder's session is not shared
        self._server = None
        self._recorder: Recorder | None = None
        self._ledger = Ledger(db, f"dicom://{ae_title}")  # each row names the calling AE title

    def start(self) -> Listener:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        self.db.settings.ensure_dirs()
        self._recorder = Recorder(self.db)
        self._known = self._recorder.known_imported()
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        ae.require_calling_aet = list(self.allowed)
        for context in AllStoragePresentationContexts:  # any transfer syntax: the reader decodes them all
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_REJECTED, self._on_rejected)]
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        self.port = self._server.server_address[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        with self._lock:
            if self._recorder is not None:
                self._recorder.close(complete=True)
                self._recorder = None

    # ------------------------------------------------------------------ events

    def _on_echo(self, event) -> int:
        return SUCCESS

    def _on_rejected(self, event) -> None:
        peer = event.assoc.requestor
        calling, called = peer.ae_title, event.assoc.acceptor.ae_title
        if self.allowed and calling not in self.allowed:
            why = f"calling AE title not allowed (--allow-aet {','.join(self.allowed)})"
        elif called != self.ae_title:
            why = f"it called AE title {called!r}, this listener is {self.ae_title!r}"
        else:
            why = "association refused by the DICOM layer"
        self.counts["associations_rejected"] += 1
        log.warning("rejected association from %r at %s:%s: %s", calling, peer.address, peer.port, why)

    def _on_store(self, event):
        peer = event.assoc.requestor
        try:
            key = self._ledger.key(event.request.AffectedSOPInstanceUID)
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # a request too broken to even name
            return self._refuse(peer, "?", "corrupt", f"{type(exc).__name__}: {exc}")
        name = f"dicom://{peer.ae_title}@{peer.address}#{key}"
        with self._lock:
            if self._recorder is None:  # stopping
                return self._status(0xA700, "samx listen is stopping")  # "Out of resources"
            outcome = process_here(self.db, (name, data), voi=self.voi, known_imported=self._known)
            image_id = self._recorder.record(outcome)
            if outcome.status != "rejected":
                self._ledger.add(key, outcome.status, image_id, source=f"dicom://{peer.ae_title}")
        self.counts[outcome.status] += 1
        if outcome.status == "rejected":
            if outcome.code in RETRY_CODES:
                log.error("could not store %s: %s", name, outcome.reason)
            return self._refuse(peer, key, outcome.code, outcome.reason)
        log.info("%s %s from %r (image %s)", outcome.status, key, peer.ae_title, image_id)
        return SUCCESS

    def _refuse(self, peer, key: str, code: str | None, reason: str | None):
        self.counts[f"rejected:{code}"] += 1
        log.warning("refused C-STORE of %s from %r: %s: %s", key, peer.ae_title, code, reason)
        return self._status(CANNOT_UNDERSTAND, f"{code}: {reason}")

    @staticmethod
    def _status(code: int, comment: str):
        from pydicom.dataset import Dataset

        status = Dataset()
        status.Status = code
        status.ErrorComment = " ".join(comment.replace("\\", "/").split())[:64]  # LO: 64 characters, no backslash
        return status
