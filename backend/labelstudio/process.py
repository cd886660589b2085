"""Start, stop and find the Label Studio server that samx runs (`samx labelstudio up|down|status`).

Label Studio (PyPI ``label-studio``, pinned in the Makefile) lives in its own virtualenv,
``.venv-ls``: it pins many packages that clash with ours. We start its ``label-studio start``
as a background process in its own session (so ``down`` can signal the whole process group),
with everything it keeps under ``DATA_DIR/labelstudio/`` (its own SQLite database by default),
its output in ``DATA_DIR/logs/labelstudio.log`` and a pid file beside its data.

Other samx code gets the URL and API token with :func:`connection`.

Facts from Label Studio 1.23's source that this module relies on:

- ``label_studio/server.py`` creates the first user (and the organization) from
  ``LABEL_STUDIO_USERNAME`` / ``LABEL_STUDIO_PASSWORD`` / ``LABEL_STUDIO_USER_TOKEN`` at
  ``start``, only if the user does not exist yet: credentials are fixed at the first start.
  We pass them in the environment rather than as ``--password``/``--user-token`` flags, which
  every local user could read in ``ps``.
- If the port is busy, ``label-studio start`` silently moves to the next free port; we check
  the port first so samx never talks to a server it did not start.
- Local files are served at ``/data/local-files/?d=<path under LOCAL_FILES_DOCUMENT_ROOT>``
  only with ``LOCAL_FILES_SERVING_ENABLED`` and only below a local-files storage of a project
  the user may see (``io_storages/localfiles/views.py``); sync.py creates that storage.
- ``ML_BLOCK_LOCAL_IP`` (``ml/serializers.py``) refuses ML backends on 127.0.0.1 and
  ``SSRF_PROTECTION_ENABLED`` (``webhooks/serializers.py``) refuses local webhook URLs; the
  ``<ml backend>/webhook`` hook that adding an ML backend creates (``ml/models.py``,
  ``create_ml_webhook``) is then silently dropped. Both are turned off for our local backend.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx

from backend.config import Settings
from imaging.files import create_private_json

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO_ROOT / ".venv-ls" / "bin" / "label-studio"
DEFAULT_USERNAME = "admin@samx.local"  # Label Studio users are e-mail addresses
#: Label Studio's predict timeout (``ML_TIMEOUT_PREDICT``, default 100 s). A batch of full-size
#: radiographs through the detector on a CPU can take longer.
ML_TIMEOUT_PREDICT_S = 600
START_TIMEOUT_S = 300.0  # the first start runs ~200 migrations; a busy 2-core machine needs minutes
#: DRF's authtoken.Token.key is a 40-character column (enforced on PostgreSQL).
MAX_TOKEN_LENGTH = 40


class LabelStudioError(RuntimeError):
    """Label Studio could not be started, reached or used; the message says why."""


@dataclass(frozen=True)
class LabelStudioConnection:
    """Where Label Studio is and the API token to talk to it."""

    url: str  # no trailing slash, e.g. http://127.0.0.1:8080
    token: str

    @property
    def headers(self) -> dict[str, str]:
        """For plain HTTP clients (and our ML backend fetching task images)."""
        return {"Authorization": f"Token {self.token}"}

    def client(self, timeout: float = 120.0):
        """A ``label_studio_sdk.LabelStudio`` client for this server."""
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.token, timeout=timeout)

    def http(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    token: str


@dataclass(frozen=True)
class ServerStatus:
    url: str
    pid: int | None  # the process samx started, if it is alive
    healthy: bool  # /health answers
    external: bool = False  # SAMX_LABEL_STUDIO_URL: a server samx does not manage

    @property
    def running(self) -> bool:
        return self.healthy and (self.external or self.pid is not None)


@dataclass(frozen=True)
class UpResult:
    url: str
    pid: int | None
    started: bool  # False: it was already running
    seconds: float  # from launch until /health and the token worked
    username: str | None = None


# ----------------------------------------------------------------------------- paths and settings


def pid_file(settings: Settings) -> Path:
    return settings.labelstudio_dir / "server.pid"


def credentials_file(settings: Settings) -> Path:
    return settings.labelstudio_dir / "credentials.json"


def log_file(settings: Settings) -> Path:
    return settings.logs_dir / "labelstudio.log"


def files_root(settings: Settings) -> Path:
    """``LOCAL_FILES_DOCUMENT_ROOT`` (Settings.labelstudio_files_dir says why it is not DATA_DIR)."""
    return settings.labelstudio_files_dir


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host  # nosec - a client address


def server_url(settings: Settings) -> str:
    if settings.label_studio_url:
        return settings.label_studio_url.rstrip("/")
    host = _connect_host(settings.label_studio_host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.label_studio_port}"


def find_binary(settings: Settings) -> Path:
    """``SAMX_LABEL_STUDIO_BIN``, else ``<repo>/.venv-ls/bin/label-studio``, else PATH."""
    if settings.label_studio_bin:
        path = Path(settings.label_studio_bin).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise LabelStudioError(f"SAMX_LABEL_STUDIO_BIN={settings.label_studio_bin} is not an executable file")
        return path
    if DEFAULT_BIN.is_file() and os.access(DEFAULT_BIN, os.X_OK):
        return DEFAULT_BIN
    found = shutil.which("label-studio")
    if found:
        return Path(found)
    raise LabelStudioError(f"Label Studio is not installed: run `make labelstudio` (it installs into {DEFAULT_BIN.parent.parent}) "
                           "or point SAMX_LABEL_STUDIO_BIN at a label-studio executable")


def credentials(settings: Settings) -> Credentials:
    """The admin account and API token: from the settings (SAMX_LABEL_STUDIO_USERNAME/PASSWORD/
    TOKEN) where given, else generated once and kept in DATA_DIR/labelstudio/credentials.json
    (mode 0600). Label Studio takes them at its first start only: change them there, not here."""
    path = credentials_file(settings)
    stored: dict[str, str] = {}
    needs_file = not (settings.label_studio_username and settings.label_studio_password and settings.label_studio_token)
    if needs_file:
        if not path.exists():
            create_private_json(path, {"username": settings.label_studio_username or DEFAULT_USERNAME,
                                        "password": secrets.token_urlsafe(18),
                                        "token": secrets.token_hex(MAX_TOKEN_LENGTH // 2)})
        stored = json.loads(path.read_text())
    creds = Credentials(username=settings.label_studio_username or stored["username"],
                        password=settings.label_studio_password or stored["password"],
                        token=settings.label_studio_token or stored["token"])
    if not 5 < len(creds.token) <= MAX_TOKEN_LENGTH:  # Label Studio ignores tokens of 5 characters or fewer
        raise LabelStudioError(f"the Label Studio API token must have 6 to {MAX_TOKEN_LENGTH} characters")
    return creds


def connection(settings: Settings) -> LabelStudioConnection:
    """URL and token of samx's Label Studio (or of the external one in SAMX_LABEL_STUDIO_URL).
    Does not check that it is running: :func:`status` or :func:`check_connection` do."""
    if settings.label_studio_url:
        if not settings.label_studio_token:
            raise LabelStudioError("SAMX_LABEL_STUDIO_URL is set: set SAMX_LABEL_STUDIO_TOKEN to its API token too")
        return LabelStudioConnection(server_url(settings), settings.label_studio_token)
    return LabelStudioConnection(server_url(settings), credentials(settings).token)


# ----------------------------------------------------------------------------- process handling


def _read_pid(settings: Settings) -> dict | None:
    try:
        return json.loads(pid_file(settings).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:  # reap it if it is our own exited child, so a zombie does not look alive
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie that is not our child waits for its parent. But "Z" alone is not dead: when the
    # main thread of a multi-threaded process (Label Studio's) has exited, /proc shows Z while
    # its other threads still run and still hold the port.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z" and len(os.listdir(f"/proc/{pid}/task")) <= 1:
            return False
    except (OSError, IndexError):
        pass
    return True


def _is_label_studio(pid: int) -> bool:
    """Guards against signalling an unrelated process that got a recycled pid."""
    if not Path("/proc/self").exists():
        return True  # no /proc (macOS): trust the pid file
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"label-studio" in cmdline or b"label_studio" in cmdline


def _managed_pid(settings: Settings) -> int | None:
    info = _read_pid(settings)
    if not info:
        return None
    pid = int(info.get("pid", 0))
    if pid > 0 and _alive(pid) and _is_label_studio(pid):
        return pid
    return None


def health(url: str, timeout: float = 2.0) -> bool:
    try:
        r = httpx.get(f"{url.rstrip('/')}/health", timeout=timeout)
        return r.status_code == 200
    except httpx.HTTPError:
        return False


def check_connection(conn: LabelStudioConnection, timeout: float = 10.0) -> None:
    """Raise LabelStudioError unless the server answers and accepts the token."""
    try:
        r = httpx.get(f"{conn.url}/api/projects", params={"page_size": 1}, headers=conn.headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise LabelStudioError(f"Label Studio at {conn.url} is not reachable ({type(exc).__name__}: {exc}); "
                               "start it with `samx labelstudio up`") from None
    if r.status_code in (401, 403):
        raise LabelStudioError(
            f"Label Studio at {conn.url} refuses samx's API token ({r.status_code}: {r.text[:200]}). Its admin "
            "account and token are fixed at its first start: if DATA_DIR/labelstudio was started with other "
            "credentials (or without --enable-legacy-api-token), set SAMX_LABEL_STUDIO_TOKEN to the token shown on "
            "its Account & Settings page, or remove DATA_DIR/labelstudio to start afresh")
    if r.status_code != 200:
        raise LabelStudioError(f"Label Studio at {conn.url}/api/projects answered {r.status_code}: {r.text[:300]}")


def status(settings: Settings) -> ServerStatus:
    url = server_url(settings)
    if settings.label_studio_url:
        return ServerStatus(url=url, pid=None, healthy=health(url), external=True)
    pid = _managed_pid(settings)
    return ServerStatus(url=url, pid=pid, healthy=pid is not None and health(url))


def port_in_use(host: str, port: int) -> bool:
    try:
        with socket.create_connection((_connect_host(host), port), timeout=1.0):
            return True
    except OSError:
        return False


def _tail(path: Path, start: int = 0, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def launch_env(settings: Settings, creds: Credentials) -> dict[str, str]:
    """The environment of the Label Studio process (variable names as its settings read them:
    ``get_env(NAME)`` tries LABEL_STUDIO_NAME, HEARTEX_NAME, then NAME)."""
    env = dict(os.environ)
    ls_dir = settings.labelstudio_dir
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(ls_dir),
        # Its own SQLite database unless the user points it at PostgreSQL (DJANGO_DB=default + POSTGRE_*).
        "DJANGO_DB": env.get("LABEL_STUDIO_DJANGO_DB") or env.get("DJANGO_DB") or "sqlite",
        "LABEL_STUDIO_DATABASE_NAME": str(ls_dir / "label_studio.sqlite3"),
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root(settings)),
        "ML_BLOCK_LOCAL_IP": "false",  # our ML backend runs on 127.0.0.1
        "SSRF_PROTECTION_ENABLED": "false",  # else the ML backend's /webhook hook is silently not created
        "ML_TIMEOUT_PREDICT": env.get("ML_TIMEOUT_PREDICT") or str(ML_TIMEOUT_PREDICT_S),
        "LABEL_STUDIO_USERNAME": creds.username,
        "LABEL_STUDIO_PASSWORD": creds.password,
        "LABEL_STUDIO_USER_TOKEN": creds.token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        # No public sign-up: the admin invites radiologists (Organization page, invite link).
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        # Relative URLs everywhere; shadows a stray HOST variable of the user's shell.
        "LABEL_STUDIO_HOST": "",
        # Nothing leaves the machine (and nothing waits on a network that is not there).
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def up(settings: Settings, *, timeout: float = START_TIMEOUT_S, echo: Callable[[str], None] | None = None) -> UpResult:
    """Start Label Studio in the background and wait until it is healthy and takes our token.
    Already running: nothing is started. Raises LabelStudioError with the end of its log."""
    say = echo or (lambda _msg: None)
    url = server_url(settings)
    if settings.label_studio_url:
        check_connection(connection(settings))
        return UpResult(url=url, pid=None, started=False, seconds=0.0)
    creds = credentials(settings)
    conn = LabelStudioConnection(url, creds.token)
    pid = _managed_pid(settings)
    if pid is not None:
        if health(url):
            check_connection(conn)
            return UpResult(url=url, pid=pid, started=False, seconds=0.0, username=creds.username)
        say(f"Label Studio (pid {pid}) is starting; waiting for it")
        started = time.monotonic()
        _wait_healthy(settings, conn, pid, None, 0, timeout, started)
        return UpResult(url=url, pid=pid, started=False, seconds=time.monotonic() - started, username=creds.username)
    pid_file(settings).unlink(missing_ok=True)  # stale
    if port_in_use(settings.label_studio_host, settings.label_studio_port):
        raise LabelStudioError(f"port {settings.label_studio_port} on {_connect_host(settings.label_studio_host)} is in use "
                               "by another program (Label Studio would silently move to another port): stop it or "
                               "choose another with SAMX_LABEL_STUDIO_PORT")
    binary = find_binary(settings)
    settings.labelstudio_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.labelstudio_dir, 0o700)  # its database holds every user's token
    files_root(settings).mkdir(parents=True, exist_ok=True)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    log = log_file(settings)
    cmd = [str(binary), "start", "--no-browser", "--internal-host", settings.label_studio_host,
           "--port", str(settings.label_studio_port), "--data-dir", str(settings.labelstudio_dir),
           # Legacy tokens ("Authorization: Token T") rather than personal access tokens (JWT refresh
           # tokens, exchanged at /api/token/refresh/ for 5-minute access tokens): the token is ours,
           # chosen before the first start, so no login dance is needed to obtain one; it never
           # expires; plain HTTP clients and the SDK send it as it is; and Label Studio itself hands
           # the *legacy* token of the project owner to ML backends in /setup (ml/api_connector.py,
           # 'access_token'), which they use to download task images: with legacy tokens off, our
           # ML backend could not read the images. The flag is read when the organization is created
           # (first start); LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN covers organizations made otherwise.
           "--enable-legacy-api-token"]
    with open(log, "ab") as out:
        offset = out.tell()
        out.write(f"\n==== samx: {' '.join(cmd)} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=launch_env(settings, creds), cwd=settings.labelstudio_dir, start_new_session=True)
    started = time.monotonic()
    _write_pid(settings, {"pid": proc.pid, "url": url, "bin": str(binary), "started_at": time.time(), "log": str(log)})
    say(f"starting Label Studio (pid {proc.pid}) on {url}; log: {log}")
    try:
        _wait_healthy(settings, conn, proc.pid, proc, offset, timeout, started)
    except BaseException:
        _stop_pid(proc.pid)
        pid_file(settings).unlink(missing_ok=True)
        raise
    return UpResult(url=url, pid=proc.pid, started=True, seconds=time.monotonic() - started, username=creds.username)


def _write_pid(settings: Settings, info: dict) -> None:
    path = pid_file(settings)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def _wait_healthy(settings: Settings, conn: LabelStudioConnection, pid: int, proc: subprocess.Popen | None,
                  log_offset: int, timeout: float, started: float) -> None:
    log = log_file(settings)
    while True:
        exited = proc.poll() if proc is not None else (None if _alive(pid) else -1)
        if exited is not None:
            raise LabelStudioError(f"Label Studio exited (code {exited}) before it was ready. End of {log}:\n"
                                   + _tail(log, log_offset))
        if health(conn.url):
            check_connection(conn)
            return
        if time.monotonic() - started > timeout:
            raise LabelStudioError(f"Label Studio did not answer {conn.url}/health within {timeout:.0f} s. "
                                   f"End of {log}:\n" + _tail(log, log_offset))
        time.sleep(0.5)


def _stop_pid(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``timeout``."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return

    def targets(sig: int) -> None:
        if pgid == os.getpgid(0):  # never our own group (it was started with start_new_session)
            os.kill(pid, sig)
        else:
            os.killpg(pgid, sig)

    try:
        targets(signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            break
        time.sleep(0.2)
    try:
        targets(signal.SIGKILL)  # the leader may be gone while children of the group linger
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def down(settings: Settings, timeout: float = 20.0) -> int | None:
    """Stop the Label Studio that `up` started: the pid it stopped, or None if none was running."""
    pid = _managed_pid(settings)
    if pid is not None:
        _stop_pid(pid, timeout)
    pid_file(settings).unlink(missing_ok=True)
    return pid
