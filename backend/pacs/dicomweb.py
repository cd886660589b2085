"""`samx ingest dicomweb://HOST[:PORT]/PATH`: pull radiographs from a PACS over DICOMweb.

QIDO-RS finds the studies (date and modality matched by the server), their series (modality and
body part matched here) and their instances; WADO-RS retrieves each instance the ledger does not
have, in the transfer syntax the PACS stored it in, and the bytes go through the normal ingest
(de-identification, dedup by content hash, rejected reasons) without ever being written to disk
as they came. Each instance enters the ledger right after its image row is committed, so a pull
killed at any point and started again retrieves only what is missing.
"""
from __future__ import annotations

import io
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import requests
from pydicom.errors import InvalidDicomError

from backend.database.session import Database
from backend.images.ingest import FileOutcome, ingest_items
from backend.jobs.context import JobFailed
from backend.jobs.params import PullParams, PullResult
from backend.pacs.ledger import RETRY_CODES, Ledger

log = logging.getLogger("samx.pacs")

#: dicomweb:// is samx's shorthand (no such scheme is registered): it means plain HTTP.
SCHEMES = {"dicomweb": "http", "dicomwebs": "https", "http": "http", "https": "https"}
PAGE = 500  # QIDO-RS results asked for at once
TIMEOUT = 30  # seconds to connect and between bytes of an answer
#: A refused connection or a busy answer (429, 408, 503, 504) is tried this often, 1 s then 2 s
#: apart (dicomweb-client's default, 5 tries over 30 s, keeps a mistyped URL waiting).
ATTEMPTS, BACKOFF_MS = 3, 500

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
MODALITY, BODY_PART = "00080060", "00180015"

Progress = Callable[[int, "int | None", "str | None"], None]


class PacsError(JobFailed):
    """A PACS that cannot be reached or answers nonsense: the message names the URL."""


def is_url(arg: str) -> bool:
    return "://" in arg


def service_url(url: str) -> str:
    """The http(s) URL of the DICOMweb service: dicomweb://host:port/path -> http://host:port/path,
    dicomwebs:// -> https://. ValueError with the reason for anything else."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in SCHEMES or not parts.hostname:
        raise ValueError(f"{url}: not a DICOMweb URL (dicomweb://HOST[:PORT]/PATH or http(s)://HOST[:PORT]/PATH)")
    if parts.username or parts.password:
        raise ValueError(f"{url}: put no account in the URL; use --dicomweb-user and SAMX_DICOMWEB_PASSWORD")
    if parts.query or parts.fragment:
        raise ValueError(f"{url}: a DICOMweb service URL has no query or fragment")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"{url}: the port is not a number") from None
    return urlunsplit((SCHEMES[parts.scheme.lower()], parts.netloc, parts.path.rstrip("/"), "", ""))


def explain(url: str, exc: BaseException) -> str:
    """What went wrong, in words, naming the URL."""
    if isinstance(exc, requests.Timeout):
        return f"{url}: no answer within {TIMEOUT} s"
    if isinstance(exc, requests.ConnectionError):
        errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
        return f"{url}: cannot connect ({errno.group(1).strip() if errno else type(exc).__name__})"
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        r = exc.response
        hint = " (check --dicomweb-user and SAMX_DICOMWEB_PASSWORD)" if r.status_code in (401, 403) else ""
        return f"{url}: the server answered HTTP {r.status_code} {r.reason or ''}".rstrip() + hint
    text = " ".join(str(exc).split())[:200]
    return f"{url}: the answer is not what a DICOMweb server sends ({type(exc).__name__}: {text})"


def _refused(exc: BaseException) -> bool:
    """An HTTP error that no later request would escape (bad credentials): the pull stops."""
    return isinstance(exc, requests.HTTPError) and (exc.response is None or exc.response.status_code in (401, 403))


def connect(url: str, user: str | None, password: str | None):
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if user:
        session.auth = (user, password or "")
    client = DICOMwebClient(url, session=session, timeout=TIMEOUT)
    client.set_http_retry_params(max_attempts=ATTEMPTS, wait_exponential_multiplier=BACKOFF_MS)
    return client


def _value(record: dict, tag: str) -> str | None:
    values = (record.get(tag) or {}).get("Value") or [None]
    return values[0] if isinstance(values[0], str) else None


def search_all(search: Callable[..., list], uid_tag: str, **kwargs) -> list[dict]:
    """Every QIDO-RS result, page by page. By hand: dicomweb-client's ``get_remaining`` never
    stops on a server that ignores ``offset``; here a page with nothing new ends it."""
    results: list[dict] = []
    seen: set[str] = set()
    while True:
        page = search(offset=len(results), limit=PAGE, **kwargs)
        if not isinstance(page, list) or not all(isinstance(r, dict) for r in page):
            raise ValueError(f"expected a JSON array of DICOM datasets, got {type(page).__name__}")
        fresh = 0
        for record in page:
            uid = _value(record, uid_tag)
            if uid is None:
                raise ValueError(f"a result without the UID ({uid_tag})")
            if uid not in seen:
                seen.add(uid)
                results.append(record)
                fresh += 1
        if not fresh:
            return results


def find_studies(client, p: PullParams) -> list[str]:
    """Study Instance UIDs, one query per modality (servers differ on ModalitiesInStudy lists)."""
    found: dict[str, None] = {}
    for modality in p.modalities or (None,):
        filters = {}
        if p.since:
            filters["StudyDate"] = f"{p.since}-"
        if modality:
            filters["ModalitiesInStudy"] = modality
        for study in search_all(client.search_for_studies, STUDY_UID, search_filters=filters):
            found[_value(study, STUDY_UID)] = None
    return list(found)


def find_instances(client, study: str, p: PullParams) -> tuple[int, list[tuple[str, str]]]:
    """(matching series, [(series UID, SOP Instance UID)]) of one study. By hand: series are
    matched here, as not every server matches BodyPartExamined or a modality list."""
    modalities = {m.upper() for m in p.modalities}
    body_parts = {b.upper() for b in p.body_parts}
    series = set()
    for s in search_all(client.search_for_series, SERIES_UID, study_instance_uid=study, fields=["BodyPartExamined"]):
        if modalities and (_value(s, MODALITY) or "").upper() not in modalities:
            continue
        if body_parts and (_value(s, BODY_PART) or "").upper() not in body_parts:
            continue
        series.add(_value(s, SERIES_UID))
    if not series:
        return 0, []
    instances = search_all(client.search_for_instances, SOP_UID, study_instance_uid=study)
    return len(series), [(_value(i, SERIES_UID), _value(i, SOP_UID)) for i in instances
                         if _value(i, SERIES_UID) in series]


def encode(ds) -> bytes:
    """The retrieved instance as the file it was (dicomweb-client hands over parsed datasets)."""
    import pydicom

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds)
    return buf.getvalue()


@dataclass
class _Counts:
    study: int = 0  # the study being retrieved (1-based)
    series: int = 0
    instances: int = 0
    already_had: int = 0
    retrieved: int = 0
    failed: int = 0
    failed_studies: int = 0
    recorded: int = 0


def pull(db: Database, p: PullParams, *, password: str | None = None, progress: Progress | None = None,
         job_id: int | None = None) -> PullResult:
    url = p.url
    started = time.perf_counter()
    client = connect(url, p.user or db.settings.dicomweb_user, password)
    ledger = Ledger(db, url, job_id)
    have = ledger.keys()
    try:
        studies = find_studies(client, p)
    except Exception as exc:
        raise PacsError(explain(url, exc)) from None
    n = _Counts()
    pending: dict[str, str] = {}  # item name -> ledger key, until its outcome is recorded
    failure: list[BaseException] = []
    lock = threading.Lock()

    def items() -> Iterator[tuple[str, bytes]]:
        """Runs in the ingest pool's feeder thread: it never raises, the main thread does."""
        try:
            for number, study in enumerate(studies, 1):
                n.study = number
                try:
                    series, instances = find_instances(client, study, p)
                except (requests.HTTPError, ValueError) as exc:
                    if _refused(exc):
                        raise
                    n.failed_studies += 1  # e.g. a PACS that cannot read one of its files; asked again next pull
                    log.warning("%s: study %s not listed: %s", url, ledger.key(study), explain(url, exc))
                    continue
                n.series += series
                n.instances += len(instances)
                for series_uid, sop_uid in instances:
                    key = ledger.key(sop_uid)
                    if key in have:
                        n.already_had += 1
                        continue
                    have.add(key)
                    try:
                        data = encode(client.retrieve_instance(study, series_uid, sop_uid))
                    except (requests.HTTPError, ValueError, InvalidDicomError) as exc:
                        if _refused(exc):
                            raise
                        n.failed += 1  # this object only; not ledgered, so the next pull asks again
                        log.warning("%s: instance %s not retrieved: %s", url, key, explain(url, exc))
                        continue
                    name = f"{url}#{key}"
                    with lock:
                        pending[name] = key
                    n.retrieved += 1
                    yield name, data
        except Exception as exc:
            failure.append(exc)

    def on_outcome(outcome: FileOutcome, image_id: int | None) -> None:
        with lock:
            key = pending.pop(outcome.path)
        if not (outcome.status == "rejected" and outcome.code in RETRY_CODES):
            ledger.add(key, outcome.status, image_id)
        n.recorded += 1
        if progress is not None:
            progress(n.recorded + n.already_had + n.failed, n.instances,
                     f"study {n.study}/{len(studies)}")

    summary = ingest_items(db, items(), voi=p.voi, workers=p.workers, on_outcome=on_outcome, job_id=job_id)
    if failure:
        raise PacsError(f"{explain(url, failure[0])}; {summary.by_status['imported']} images were imported "
                        "before that, and the next pull goes on from there") from None
    if progress is not None:
        progress(n.instances, n.instances, f"{len(studies)} studies")
    seconds = time.perf_counter() - started
    return PullResult(
        url=url, studies=len(studies), series=n.series, instances=n.instances, already_had=n.already_had,
        retrieved=n.retrieved, failed=n.failed, failed_studies=n.failed_studies, imported=summary.by_status["imported"],
        duplicate=summary.by_status["duplicate"], rejected=summary.by_status["rejected"],
        rejected_by_reason=dict(summary.by_reason), seconds=round(seconds, 3),
        studies_per_second=round(len(studies) / seconds, 3) if seconds else 0.0,
    )
