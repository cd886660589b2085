"""`samx demo` (what `make demo` runs): the whole product on one machine, embedded default
(SQLite, the embedded queue, Label Studio on its own SQLite).

Phantoms (or SAMX_DATA's radiographs) are ingested and clustered; on phantoms a simulated
radiologist names the clusters (backend/demo/simulated_radiologist.py, through the decision service
the web page uses) and half the lesion boxes come in as an earlier COCO dataset (the import
job), so a first sorter is trained. Then the job worker, the ML backend, the web app and
Label Studio (project synced, ML backend connected) are started, a first detector is trained
(its pre-annotations and active-learning order land in Label Studio, the ML backend swaps it
in) and the URLs are printed. Ctrl-C stops every process it started. Each step is skipped when its result is
already there, so a second run goes straight to starting the servers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
from sqlalchemy import func, select

from backend.config import Settings
from backend.database.session import Database
from backend.jobs import enqueue, execute
from backend.jobs.params import (ClusterParams, ClusterResult, ImportParams, ImportResult, JobParams, JobResult,
                                 TrainDetectorParams, TrainDetectorResult, TrainSorterParams, TrainSorterResult)
from backend.jobs.progress_bar import progress_bar
from backend.database.schema import (Box, Cluster, ClusterDecision, ClusterRun, ClusterRunStatus, JobStatus, ModelKind,
                                     ModelStatus, ModelVersion, Role, User)

Echo = Callable[[str], None]
R = TypeVar("R", bound=JobResult)


@dataclass(frozen=True)
class DemoOptions:
    data: Path | None  # the user's radiographs; None: phantoms
    n: int = 240  # phantoms
    cluster_epochs: int = 20
    sorter_epochs: int = 8
    detector_epochs: int = 6
    detector_size: int = 320  # a first model in minutes on a CPU; the loop's retrains continue at it
    web_port: int = 5000
    ml_port: int = 9090
    label_studio: bool = True


def _job(db: Database, params: JobParams, result: type[R], echo: Echo) -> R:
    kind = params.kind
    with progress_bar(kind) as on_progress:
        job = execute(db, enqueue(db, kind, params, send=False).id, on_progress=on_progress)
    if job.status != JobStatus.succeeded:
        raise RuntimeError(f"the {kind} job failed: {job.error}")
    return result.from_json(job.result)


def _phantoms(settings: Settings, n: int, echo: Echo) -> tuple[Path, dict]:
    from imaging.phantoms import generate_phantoms

    root = settings.data_dir / "phantoms"
    truth_file = root / "truth.json"
    if not truth_file.is_file():
        echo(f"generating {n} phantoms in {root}")
        generate_phantoms(root, n, seed=0, fmt="mixed", lesion_rate=0.4, workers=os.cpu_count() or 1)
    return root, json.loads(truth_file.read_text())


def lesion_dataset(root: Path, truth: dict) -> Path:
    """Every other phantom with lesions as a COCO file: the boxes a team brings from earlier work."""
    with_lesions = [e for e in truth["images"] if e["lesions"]][::2]
    classes = sorted({les["label"] for e in with_lesions for les in e["lesions"]})
    images, annotations = [], []
    for i, e in enumerate(with_lesions, 1):
        images.append({"id": i, "file_name": e["file"], "width": e["width"], "height": e["height"]})
        for les in e["lesions"]:
            x0, y0, x1, y1 = les["box"]
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": classes.index(les["label"]) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    out = root / "earlier-boxes" / "instances_demo.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"images": images, "annotations": annotations,
                               "categories": [{"id": k, "name": c} for k, c in enumerate(classes, 1)]}))
    return out


def prepare(settings: Settings, db: Database, opts: DemoOptions, echo: Echo) -> None:
    """Everything before the servers; each step only when its result is missing."""
    from backend.images.ingest import ingest_paths
    from backend.demo.simulated_radiologist import name_clusters

    if opts.data is not None:
        folder, truth = opts.data, None
    else:
        root, truth = _phantoms(settings, opts.n, echo)
        folder = root / "images"
    with progress_bar("ingest", "file") as on_progress:
        summary = ingest_paths(db, [folder], progress=on_progress)
    echo(f"ingest: {summary.by_status['imported']} new, {summary.by_status['duplicate']} already in, "
         f"{summary.by_status['rejected']} rejected (`samx images --rejected`)")
    with db.session() as s:
        run_id = s.scalar(select(ClusterRun.id).where(ClusterRun.status == ClusterRunStatus.done).order_by(ClusterRun.id.desc()))
    if run_id is None:
        run_id = _job(db, ClusterParams(config={"epochs": opts.cluster_epochs}), ClusterResult, echo).run_id
    if truth is None:
        echo("your own radiographs: name the clusters in the web page, then `samx train sorter`")
        return
    region_of = {image_id: e["region"] for e in truth["images"]
                 if (image_id := summary.image_ids.get(str(folder.parent / e["file"]))) is not None}
    with db.session() as s:
        named = s.scalar(select(func.count()).select_from(ClusterDecision).join(ClusterDecision.cluster)
                         .where(Cluster.run_id == run_id))
        admin = s.scalar(select(User).where(User.role == Role.admin).order_by(User.id))
    if not named:
        naming = name_clusters(db, run_id, region_of, admin)
        echo(f"simulated radiologist: {dict(naming.decisions)}")
    with db.session() as s:
        kinds = set(s.scalars(select(ModelVersion.kind).where(ModelVersion.status == ModelStatus.active)))
        has_boxes = s.scalar(select(func.count()).select_from(Box)) > 0
    # A first model that cannot be trained (too few labels) is reported; the servers start anyway.
    if ModelKind.sorter not in kinds:
        try:
            r = _job(db, TrainSorterParams(folds=0, config={"epochs": opts.sorter_epochs}), TrainSorterResult, echo)
            echo(f"sorter {r.version} trained")
        except RuntimeError as exc:
            echo(f"no sorter yet: {exc}")
    if not has_boxes:
        try:
            _job(db, ImportParams(format="coco", path=str(lesion_dataset(root, truth)), image_dir=str(root)),
                 ImportResult, echo)
        except RuntimeError as exc:
            echo(f"no boxes imported: {exc}")


def train_first_detector(db: Database, opts: DemoOptions, echo: Echo) -> None:
    """After Label Studio is synced, so the job pushes its pre-annotations and ranking there;
    the running ML backend swaps the new version in by itself."""
    with db.session() as s:
        if s.scalar(select(ModelVersion.id).where(ModelVersion.kind == ModelKind.detector, ModelVersion.status == ModelStatus.active)):
            return
        if not s.scalar(select(func.count()).select_from(Box)):
            return  # the user's own radiographs: boxes come from Label Studio
    try:
        r = _job(db, TrainDetectorParams(epochs=opts.detector_epochs, size=opts.detector_size, min_images=4),
                 TrainDetectorResult, echo)
        echo(f"detector {r.version} trained")
    except RuntimeError as exc:
        echo(f"no detector yet: {exc}")


def _start(settings: Settings, args: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "backend.cli", "--data-dir", str(settings.data_dir), *args]
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait(url: str, proc: subprocess.Popen, auth=None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(proc.args[-3:])} exited with {proc.returncode}")
        try:
            if httpx.get(url, auth=auth, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def serve(settings: Settings, db: Database, opts: DemoOptions, echo: Echo) -> None:
    """Start the servers, print where they are, block until Ctrl-C (or SIGTERM), stop them all."""
    from backend.labelstudio import process as ls
    from backend.labelstudio.sync import sync
    from ml_backend.auth import credentials, credentials_file
    from backend.database.users import initial_password_file

    for name, port in (("web app", opts.web_port), ("ML backend", opts.ml_port)):
        if ls.port_in_use("127.0.0.1", port):
            raise RuntimeError(f"port {port} for the {name} is taken (is another demo running?)")
    logs = settings.logs_dir
    procs: list[subprocess.Popen] = []
    ls_started = False
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a shell starting us in the background ignores it
        signal.signal(sig, _interrupt)
    try:
        procs.append(_start(settings, ["worker"], logs / "demo-worker.log"))
        ml = _start(settings, ["ml-backend", "--port", str(opts.ml_port)], logs / "demo-ml-backend.log")
        web = _start(settings, ["serve", "--port", str(opts.web_port)], logs / "demo-web.log")
        procs += [ml, web]
        ml_url, web_url = f"http://127.0.0.1:{opts.ml_port}", f"http://127.0.0.1:{opts.web_port}"
        _wait(f"{ml_url}/health", ml, auth=credentials(settings))
        _wait(f"{web_url}/login", web)
        lines = [f"web app      {web_url}   log in as admin / {_admin_password(initial_password_file(settings))}",
                 f"ML backend   {ml_url}   (basic auth: {credentials_file(settings)})"]
        if opts.label_studio:
            try:
                r = ls.up(settings, echo=echo)
                ls_started = r.started
                s = sync(db, ml_backend_url=ml_url)
                creds = ls.credentials(settings)
                lines.append(f"Label Studio {s.project_url}   log in as {creds.username} / {creds.password}")
            except (ls.LabelStudioError, ValueError) as exc:
                lines.append(f"Label Studio not started: {exc}")
        train_first_detector(db, opts, echo)
        echo("\n".join(["", "samx demo is running:", *lines, f"logs in {logs}", "Ctrl-C stops everything.", ""]))
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        dead = next(p for p in procs if p.poll() is not None)
        raise RuntimeError(f"{' '.join(dead.args[-3:])} stopped (exit {dead.returncode}); see {logs}")
    except KeyboardInterrupt:
        echo("stopping ...")
    finally:
        _stop(procs)
        if ls_started:
            ls.down(settings)
        echo("stopped: worker, ML backend, web app" + (", Label Studio" if ls_started else ""))


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _admin_password(f: Path) -> str:
    return f.read_text().strip() if f.is_file() else "(the password you gave `samx init`)"
