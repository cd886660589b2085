"""docker-compose.yml and the Dockerfile, checked without a Docker engine (none runs on our
machines): the compose file against the Compose Specification's JSON schema, every service's
command against samx's own command line, secrets only from the environment; and the process
layout it describes (gunicorn web app and ML backend on PostgreSQL and Redis) run natively."""
from __future__ import annotations

import base64
import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

from backend.cli import main as samx_cli
from tests.conftest import make_settings
from tests.labelstudio_fixtures import free_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SAMX_SERVICES = ("init", "web", "ml-backend", "worker")
SECRET = re.compile(r"(PASSWORD|SECRET|(?<!ENABLE_LEGACY_API_)TOKEN)$")  # not the on/off switch


def _schema_validator():
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def _resolve(args: list[str]):
    """The samx subcommand ``args`` name, its arguments parsed as the CLI would (raises if not)."""
    assert args[0] == "samx", args
    ctx = samx_cli.make_context("samx", [], resilient_parsing=True)
    command = samx_cli.get_command(ctx, args[1])
    assert command is not None, f"samx has no command {args[1]!r}"
    return command.make_context(args[1], list(args[2:]), parent=ctx)


def test_compose_file_follows_the_compose_specification():
    validator = _schema_validator()
    errors = sorted(validator.iter_errors(COMPOSE), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["web"]["depends_on"]["init"]["condition"] = "when_ready"
    broken["services"]["worker"]["scale_me"] = True
    assert len(list(validator.iter_errors(broken))) >= 2  # the schema does catch mistakes


def test_every_samx_service_runs_a_real_samx_command():
    services = COMPOSE["services"]
    assert set(SAMX_SERVICES) <= set(services)
    for name in SAMX_SERVICES:
        command = services[name]["command"]
        assert _resolve(command).command.name == command[1], name
        check = services[name].get("healthcheck", {}).get("test", [])
        if check[1:2] == ["samx"]:
            _resolve(check[1:])
    assert _resolve(services["web"]["command"]).params["server"] == "gunicorn"  # not Flask's dev server
    assert _resolve(services["ml-backend"]["command"]).params["server"] == "gunicorn"
    with pytest.raises(Exception):  # and a wrong one would be caught
        _resolve(["samx", "serve", "--server", "uwsgi"])
    cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.M)
    _resolve(json.loads(cmd.group(1)))


def test_services_wait_for_what_they_need_and_report_health():
    services = COMPOSE["services"]
    for name, service in services.items():
        if name != "init":
            assert "healthcheck" in service, name
    for name in ("web", "ml-backend", "worker"):
        deps = services[name]["depends_on"]
        assert deps["init"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql+psycopg://") and env["SAMX_QUEUE"].startswith("redis://")
        assert "samx-data:/data" in services[name]["volumes"]
    assert services["labelstudio"]["environment"]["DJANGO_DB"] == "default"  # Label Studio on PostgreSQL
    worker = services["worker"]  # `--scale worker=N` fails on a fixed name or host port
    assert "container_name" not in worker and "ports" not in worker


def test_secrets_come_from_the_environment():
    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                if SECRET.search(str(key)) and not isinstance(value, (dict, list)):
                    yield f"{where}.{key}", str(value)
                yield from walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{where}[{i}]")

    found = dict(walk(COMPOSE, "compose"))
    assert found, "no secret settings found: the walk is broken"
    for where, value in found.items():
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", value), f"{where} is not taken from the environment: {value}"
    assert "${POSTGRES_PASSWORD:?" in COMPOSE["x-samx"]["environment"]["DATABASE_URL"]
    assert "${SAMX_ADMIN_PASSWORD:?" in " ".join(COMPOSE["services"]["init"]["command"])


def test_the_image_holds_every_package():
    dockerfile = (ROOT / "Dockerfile").read_text()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in packages:
        package = pattern.rstrip("*")
        assert re.search(rf"^COPY {package} \./{package}$", dockerfile, re.M), package
    pinned = re.findall(r'"(torch(?:vision)?==[\d.]+); platform_machine == .x86_64."',
                        (ROOT / "pyproject.toml").read_text())
    for pin in pinned:
        assert pin in dockerfile, pin  # the image runs what CI tested


# ---------------------------------------------------------------------------------------------
# the compose process layout, natively: gunicorn on PostgreSQL + Redis


def _get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _wait_for(url: str, proc: subprocess.Popen, headers: dict | None = None, timeout: float = 90) -> tuple[int, bytes]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _get(url, headers)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else "timeout"
                raise AssertionError(f"{url} did not answer: {out[-3000:]}")
            time.sleep(0.3)


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)  # what `docker compose stop` sends
    return proc.wait(45)


@pytest.mark.slow
def test_gunicorn_services_on_postgres_and_redis(tmp_path, postgres_url, redis_url):
    settings = make_settings(tmp_path / "compose", database_url=postgres_url, queue_url=redis_url)
    env = dict(os.environ, SAMX_DATA_DIR=str(settings.data_dir), DATABASE_URL=postgres_url, SAMX_QUEUE=redis_url,
               SAMX_ML_BACKEND_USER="labelstudio", SAMX_ML_BACKEND_PASSWORD="ml-backend-test-pw")
    services = COMPOSE["services"]

    def launch(name: str, port: int) -> subprocess.Popen:
        args = list(services[name]["command"][1:])
        args[args.index("--port") + 1] = str(port)
        args[args.index("--host") + 1] = "127.0.0.1"
        return subprocess.Popen([sys.executable, "-m", "backend.cli", *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)

    init = [sys.executable, "-m", "backend.cli", *services["init"]["command"][1:]]
    init[init.index("--admin-password") + 1] = "compose-admin-pw"
    subprocess.run(init, env=env, check=True, capture_output=True, timeout=120)
    subprocess.run(init, env=env, check=True, capture_output=True, timeout=120)  # every `up` runs it again

    web_port, ml_port = free_port(), free_port()
    web, ml = launch("web", web_port), launch("ml-backend", ml_port)
    try:
        status, body = _wait_for(f"http://127.0.0.1:{web_port}/login", web)
        assert status == 200 and b"Log in" in body
        assert _get(f"http://127.0.0.1:{web_port}/api/jobs/1")[0] == 401
        auth = {"Authorization": "Basic " + base64.b64encode(b"labelstudio:ml-backend-test-pw").decode()}
        status, body = _wait_for(f"http://127.0.0.1:{ml_port}/health", ml, auth)
        assert status == 200 and json.loads(body)["status"] == "UP"
        assert _get(f"http://127.0.0.1:{ml_port}/health")[0] == 401
        expected = 1 + _resolve(services["web"]["command"]).params["workers"]  # gunicorn's master + workers
        deadline = time.monotonic() + 30  # /login answers as soon as one worker is up; the others fork alongside
        while True:
            group = subprocess.run(["pgrep", "-g", str(web.pid)], capture_output=True, text=True).stdout.split()
            if len(group) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(group) == expected
    finally:
        codes = [_stop(web), _stop(ml)]
    assert codes == [0, 0], codes  # a clean stop on SIGTERM
