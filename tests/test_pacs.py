"""PACS in: `samx ingest dicomweb://` against a real Orthanc (QIDO-RS, WADO-RS), and `samx listen`
receiving Orthanc's and pynetdicom's C-STOREs. Only the misbehaving servers are stand-ins: a
tiny HTTP server that answers HTTP 500 or HTML, as a broken PACS would."""
from __future__ import annotations

import http.server
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file
from sqlalchemy import func, select

from backend.cli import main
from backend.database.schema import Image, ImageStatus, PacsInstance
from backend.database.session import Database
from imaging.phantoms import generate_phantoms
from tests.conftest import make_settings, missing
from tests.factories import find_phi
from tests.orthanc_server import PASSWORD, USER, Orthanc, free_port, orthanc_missing
from tests.test_ingest import _all_database_text

REPO = Path(__file__).resolve().parents[1]
N_PHANTOMS = 8
TESTDATA = ("CT_small.dcm", "MR_small.dcm", "reportsi.dcm")  # reportsi: a structured report, no pixels


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> tuple[list[Path], dict]:
    root = tmp_path_factory.mktemp("pacs-phantoms")
    truth = generate_phantoms(root, N_PHANTOMS, seed=11, fmt="dcm", size=160, workers=1)
    return sorted((root / "images").rglob("*.dcm")), truth


@pytest.fixture(scope="module")
def listen_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, phantoms, listen_port):
    """One real Orthanc holding pydicom's CT, MR and SR test files and the phantoms (CR and DX),
    with samx's listener configured as modality "samx"."""
    why = orthanc_missing()
    if why:
        missing(why)
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), modalities={"samx": ("SAMX", listen_port)}).start()
    try:
        ids = {name: server.upload(Path(get_testdata_file(name)).read_bytes()) for name in TESTDATA}
        ids.update({f.name: server.upload(f.read_bytes()) for f in phantoms[0]})
        server.ids = ids
        yield server
    finally:
        server.stop()


def samx(data_dir: Path, *args: str, database_url: str | None = None, password: str | None = PASSWORD):
    env = {"SAMX_DICOMWEB_USER": USER, "SAMX_DICOMWEB_PASSWORD": password, "DATABASE_URL": database_url}
    return CliRunner().invoke(main, ["--data-dir", str(data_dir), *args], env=env, catch_exceptions=False)


def open_db(data_dir: Path, database_url: str | None = None) -> Database:
    return Database(make_settings(data_dir, database_url))


def modality_counts(phantoms) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in phantoms[0]:
        m = pydicom.dcmread(f, stop_before_pixels=True).Modality
        counts[m] = counts.get(m, 0) + 1
    return counts


# ---------------------------------------------------------------- DICOMweb pull


def test_pull_imports_deidentified_once_and_records_rejections(orthanc, phantoms, db):
    data_dir = db.settings.data_dir
    url = db.settings.database_url
    result = samx(data_dir, "ingest", orthanc.dicomweb_url, "--workers", "1", database_url=url)
    assert result.exit_code == 0, result.output
    n_images = N_PHANTOMS + 2  # the phantoms, CT_small and MR_small; the report is refused
    assert f"{N_PHANTOMS + 3} studies" in result.output and f"{N_PHANTOMS + 3} instances" in result.output
    assert f"{N_PHANTOMS + 3} retrieved, 0 already had, 0 failed" in result.output
    assert f"{n_images} imported, 0 duplicates, 1 rejected" in result.output
    with db.session() as s:
        images = s.scalars(select(Image).where(Image.status == ImageStatus.imported)).all()
        rejected = s.scalars(select(Image).where(Image.status == ImageStatus.rejected)).all()
        ledger = s.scalars(select(PacsInstance)).all()
        assert len(images) == n_images and len(rejected) == 1
        assert rejected[0].reason_code == "no_pixel_data"
        assert {i.modality for i in images} == {"CT", "MR", *modality_counts(phantoms)}
        # the ledger holds every instance under the UID the de-identifier gave the image row
        assert len(ledger) == N_PHANTOMS + 3
        assert {r.sop_uid for r in ledger if r.outcome == "imported"} == {i.sop_uid for i in images}
        assert all(r.source == orthanc.dicomweb_url.replace("dicomweb://", "http://") for r in ledger)
    originals = [pydicom.dcmread(get_testdata_file(n), stop_before_pixels=True) for n in TESTDATA]
    phi = ["CompressedSamples", "Last Name^First Name", *(ds.SOPInstanceUID for ds in originals),
           *(ds.StudyInstanceUID for ds in originals)]
    for im in phantoms[1]["images"]:
        phi += [im["phi_tags"][k] for k in ("PatientName", "PatientID", "InstitutionName", "AccessionNumber")]
        phi.append(im["study"])  # the original Study Instance UID
    assert find_phi(_all_database_text(db), phi) == []

    again = samx(data_dir, "ingest", orthanc.dicomweb_url, "--workers", "1", database_url=url)
    assert again.exit_code == 0, again.output
    assert f"0 retrieved, {N_PHANTOMS + 3} already had" in again.output and "0 imported" in again.output
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == n_images + 1


def test_modality_body_part_and_date_filters(orthanc, phantoms, tmp_path):
    counts = modality_counts(phantoms)
    cr = samx(tmp_path / "cr", "ingest", orthanc.dicomweb_url, "--modality", "cr", "--workers", "2")
    assert cr.exit_code == 0, cr.output
    assert f"{counts['CR']} imported" in cr.output
    db = open_db(tmp_path / "cr")
    with db.session() as s:
        assert [m for (m,) in s.execute(select(Image.modality))] == ["CR"] * counts["CR"]
    db.dispose()

    first = pydicom.dcmread(phantoms[0][0], stop_before_pixels=True)
    part = samx(tmp_path / "part", "ingest", orthanc.dicomweb_url, "--body-part", first.BodyPartExamined,
                "--modality", "CR,DX", "--workers", "1")
    assert part.exit_code == 0, part.output
    assert "1 imported" in part.output and " 1 series" in part.output

    late = samx(tmp_path / "late", "ingest", orthanc.dicomweb_url, "--since", "2100-01-01")
    assert late.exit_code == 0 and "0 studies" in late.output


def test_pull_killed_mid_way_resumes_and_imports_everything_once(orthanc, tmp_path):
    data_dir = tmp_path / "data"
    env = dict(os.environ, SAMX_DICOMWEB_USER=USER, SAMX_DICOMWEB_PASSWORD=PASSWORD)
    env.pop("DATABASE_URL", None)
    cmd = [sys.executable, "-m", "backend.cli", "--data-dir", str(data_dir), "ingest", orthanc.dicomweb_url,
           "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    ledgered = 0
    deadline = time.monotonic() + 120
    try:
        while ledgered < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
            try:
                with sqlite3.connect(f"file:{data_dir / 'samx.db'}?mode=ro", uri=True, timeout=1) as c:
                    ledgered = c.execute("SELECT count(*) FROM pacs_instances").fetchone()[0]
            except sqlite3.OperationalError:  # not created yet
                pass
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the CLI and any decoding process
        proc.wait()
    total = N_PHANTOMS + 3
    with sqlite3.connect(data_dir / "samx.db") as c:
        at_kill = c.execute("SELECT count(*) FROM pacs_instances").fetchone()[0]
    assert 2 <= at_kill < total, "the pull was not caught mid-way"

    result = samx(data_dir, "ingest", orthanc.dicomweb_url, "--workers", "1")
    assert result.exit_code == 0, result.output
    assert f"{at_kill} already had" in result.output
    db = open_db(data_dir)
    with db.session() as s:
        sop_uids = [u for (u,) in s.execute(select(Image.sop_uid).where(Image.status == ImageStatus.imported))]
        assert len(sop_uids) == len(set(sop_uids)) == N_PHANTOMS + 2
        assert s.scalar(select(func.count()).select_from(PacsInstance)) == total
    db.dispose()


def test_a_pull_stopped_by_an_error_stops_its_decoding_pool_at_once(orthanc, data_dir):
    """A cancelled job raises from the progress callback while the pool's feeder thread may be
    waiting to read ahead: the pull must end, not wait for it forever."""
    from backend.jobs.params import PullParams
    from backend.pacs.dicomweb import pull, service_url

    class Stop(Exception):
        pass

    def stop(done, total, message):
        raise Stop

    db = open_db(data_dir)
    db.upgrade()
    started = time.monotonic()
    with pytest.raises(Stop):
        pull(db, PullParams(url=service_url(orthanc.dicomweb_url), user=USER, workers=2), password=PASSWORD,
             progress=stop)
    assert time.monotonic() - started < 60
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(PacsInstance)) == 1  # the one recorded before the stop
    db.dispose()


def test_a_server_that_is_down_gives_a_clear_error_and_stores_nothing(tmp_path):
    port = free_port()  # nothing listens there
    result = samx(tmp_path / "d", "ingest", f"dicomweb://127.0.0.1:{port}/dicom-web")
    assert result.exit_code == 1
    assert f"http://127.0.0.1:{port}/dicom-web: cannot connect (Connection refused)" in result.output
    _assert_nothing_stored(tmp_path / "d")


UID = {"study": "1.2.826.0.1.3680043.8.498.1", "series": "1.2.826.0.1.3680043.8.498.2",
       "sop": "1.2.826.0.1.3680043.8.498.3"}
QIDO = {"studies": [{"0020000D": {"vr": "UI", "Value": [UID["study"]]}}],
        "series": [{"0020000D": {"vr": "UI", "Value": [UID["study"]]},
                    "0020000E": {"vr": "UI", "Value": [UID["series"]]}}],
        "instances": [{"0020000D": {"vr": "UI", "Value": [UID["study"]]},
                       "0020000E": {"vr": "UI", "Value": [UID["series"]]},
                       "00080018": {"vr": "UI", "Value": [UID["sop"]]}}]}


class _Broken(http.server.BaseHTTPRequestHandler):
    """A PACS gone wrong: HTTP 500, a web page where DICOM JSON belongs; or right answers to the
    queries up to ``mode`` (studies, series, or instances: all of them) and HTTP 500 after."""

    mode = "500"

    def do_GET(self):
        query = self.path.split("?")[0].rsplit("/", 1)[-1]
        offset = int(self.path.partition("offset=")[2].split("&")[0] or 0)
        answered = list(QIDO)[: list(QIDO).index(self.mode) + 1] if self.mode in QIDO else []
        if query in answered:
            self.send_response(200)
            body = json.dumps(QIDO[query] if offset == 0 else []).encode()
        elif self.mode != "html":
            self.send_response(500)
            body = b"internal error"
        else:
            self.send_response(200)
            body = b"<html><body>Welcome to the PACS portal</body></html>"
        self.send_header("Content-Type", "text/plain" if self.mode == "500" else "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def broken_pacs(mode: str):
    """The URL of a _Broken server in a thread, for the duration."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Broken,), {"mode": mode}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("mode, words", [("500", "the server answered HTTP 500 Internal Server Error"),
                                          ("html", "the answer is not what a DICOMweb server sends")])
def test_a_server_answering_garbage_gives_a_clear_error_and_stores_nothing(tmp_path, mode, words):
    with broken_pacs(mode) as url:
        result = samx(tmp_path / "d", "ingest", "--dicomweb", url)
    assert result.exit_code == 1
    assert f"{url}: {words}" in result.output
    _assert_nothing_stored(tmp_path / "d")


@pytest.mark.parametrize("mode, words", [
    ("instances", "0 retrieved, 0 already had, 1 failed to retrieve\n"),
    ("studies", "0 retrieved, 0 already had, 0 failed to retrieve, 1 studies could not be listed"),
])
def test_what_the_server_cannot_deliver_is_counted_and_the_pull_goes_on(tmp_path, mode, words):
    with broken_pacs(mode) as url:
        result = samx(tmp_path / "d", "ingest", url.replace("http://", "dicomweb://"), "--workers", "1")
    assert result.exit_code == 0, result.output
    assert words in result.output
    _assert_nothing_stored(tmp_path / "d")  # not ledgered either: the next pull asks again


def _assert_nothing_stored(data_dir: Path) -> None:
    db = open_db(data_dir)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 0
        assert s.scalar(select(func.count()).select_from(PacsInstance)) == 0
    db.dispose()
    assert not any((data_dir / "store").rglob("*.png"))


def test_bad_dicomweb_arguments(tmp_path):
    for args, words in [(("dicomweb://u:p@host/dicom-web",), "put no account in the URL"),
                        (("http://host/dicom-web",), "with --dicomweb"),
                        (("dicomweb://host/dicom-web", str(tmp_path)), "takes one URL"),
                        ((str(tmp_path), "--modality", "CR"), "are for a DICOMweb URL")]:
        result = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "d"), "ingest", *args])
        assert result.exit_code == 2 and words in result.output, result.output


# ---------------------------------------------------------------- samx listen


def _scu(ae_title: str):
    from pynetdicom import AE, StoragePresentationContexts
    from pynetdicom.sop_class import BasicTextSRStorage, Verification

    ae = AE(ae_title=ae_title)
    ae.requested_contexts = StoragePresentationContexts[:120]
    ae.add_requested_context(Verification)
    ae.add_requested_context(BasicTextSRStorage)
    return ae


def _store(ae_title: str, port: int, what):
    """C-STORE one dataset or file: (association accepted, status or None)."""
    assoc = _scu(ae_title).associate("127.0.0.1", port, ae_title="SAMX")
    if not assoc.is_established:
        return False, None
    try:
        status = assoc.send_c_store(what)
    finally:
        assoc.release()
    return True, status


@pytest.fixture
def listener(tmp_path, listen_port):
    """`samx listen` as its own process (as a PACS sees it), allowing Orthanc and GOODSCU."""
    data_dir = tmp_path / "listen-data"
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    log = (tmp_path / "listen.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "backend.cli", "--data-dir", str(data_dir), "listen",
                             "--host", "127.0.0.1", "--port", str(listen_port), "--ae-title", "SAMX",
                             "--allow-aet", "ORTHANC,GOODSCU"], env=env, cwd=REPO, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while True:  # ready once it answers C-ECHO (the Verification SCP)
            assoc = _scu("GOODSCU").associate("127.0.0.1", listen_port, ae_title="SAMX")
            if assoc.is_established:
                echo = assoc.send_c_echo()
                assoc.release()
                assert echo.Status == 0x0000
                break
            assert proc.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
            time.sleep(0.2)
        yield proc, data_dir, Path(log.name)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        log.close()


def test_listener_ingests_pushes_and_refuses_strangers_and_bad_objects(orthanc, phantoms, listener, tmp_path,
                                                                       listen_port):
    proc, data_dir, log = listener
    pushed = [orthanc.ids[f.name] for f in phantoms[0][:3]]
    answer = orthanc.store_to("samx", pushed)  # Orthanc's own C-STORE SCU
    assert answer.get("FailedInstancesCount", 0) == 0 and answer.get("InstancesCount") == 3, answer

    accepted, _ = _store("EVILSCU", listen_port, phantoms[0][3])
    assert not accepted

    accepted, status = _store("GOODSCU", listen_port, pydicom.dcmread(get_testdata_file("reportsi.dcm")))
    assert accepted and status.Status == 0xC000 and status.ErrorComment.startswith("no_pixel_data")

    whole = phantoms[0][4].read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(whole[: len(whole) * 2 // 3])
    accepted, status = _store("GOODSCU", listen_port, truncated)
    assert accepted and status.Status == 0xC000 and status.ErrorComment.startswith(("truncated", "corrupt"))

    accepted, status = _store("GOODSCU", listen_port, phantoms[0][5])  # still serving
    assert accepted and status.Status == 0x0000
    accepted, status = _store("GOODSCU", listen_port, phantoms[0][5])  # again: a duplicate, still success
    assert accepted and status.Status == 0x0000

    db = open_db(data_dir)
    with db.session() as s:
        imported = s.scalars(select(Image).where(Image.status == ImageStatus.imported)).all()
        rejected = {r.reason_code for r in s.scalars(select(Image).where(Image.status == ImageStatus.rejected))}
        sources = sorted(r.source for r in s.scalars(select(PacsInstance)))
        assert len(imported) == 4 and all(i.store_path and i.patient_pseudonym for i in imported)
        assert rejected in ({"no_pixel_data", "truncated"}, {"no_pixel_data", "corrupt"})
        assert sources == ["dicom://GOODSCU"] + ["dicom://ORTHANC"] * 3
    names = [im["phi_tags"]["PatientName"] for im in phantoms[1]["images"]] + ["Last Name^First Name"]
    assert find_phi(_all_database_text(db), names) == []
    db.dispose()

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    text = log.read_text()
    assert "rejected association from 'EVILSCU'" in text and "calling AE title not allowed" in text
    assert "refused C-STORE" in text and "no_pixel_data" in text
    assert "stopped: 4 imported, 1 duplicates, 2 refused, 1 associations rejected" in text
