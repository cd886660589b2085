"""Load on the two servers people use at once, each started as in production (gunicorn):
the ML backend under 8 Label Studio clients, then the web app under 20 radiologists.

Setup: 32 phantoms with lesions are ingested into a fresh data directory, 16 get their true
boxes as Label Studio annotations, the real "train_detector" job trains a detector (2 epochs:
load does not need a good model), and the real "cluster" job clusters them.

ML backend (`samx ml-backend --server gunicorn --threads 8`): 8 clients for --ml-minutes each
loop over what Label Studio sends when a radiologist opens a task: /predict for one random
task, and every tenth request /setup and /health. Compared with the bare detector forward on
the same prepared inputs in this process: requests/s served against forwards/s bare.

Web app (`samx serve --server gunicorn`): 20 radiologists log in and each loop over the run
overview, a cluster page, its JSON, its montage and four thumbnails, and name the cluster
every fifth round (a 409 conflict with another radiologist is the app working, not an error).
Compared with one radiologist alone, before the load.

An error is a transport failure, a 5xx, or any status other than the expected ones; the target
is none, and a run with any exits non-zero after its RESULT line.

    python bench/load.py [--ml-minutes 5] [--web-minutes 3] [--clients 8] [--users 20]
"""
from __future__ import annotations

import argparse
import base64
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
from bench.fresh_database import fresh_database  # noqa: E402
from bench.predict_latency import _free_port  # noqa: E402

PASSWORD = "bench-load-password"
CSRF = re.compile(r'name="csrf-token" content="([^"]+)"')


class Tally:
    """Latencies and outcomes per endpoint, from many threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ms: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.conflicts = 0
        self.rps = 0.0

    def timed(self, name: str, call, ok=(200,), conflict=()):
        t = time.perf_counter()
        try:
            resp = call()
            status, detail = resp.status_code, resp.text[:200]
        except Exception as exc:  # a transport failure is an error of the run, counted and shown
            status, detail = None, f"{type(exc).__name__}: {exc}"
        ms = 1000 * (time.perf_counter() - t)
        with self.lock:
            self.ms[name].append(ms)
            if status in conflict:
                self.conflicts += 1
            elif status not in ok:
                self.errors.append(f"{name}: {status} {detail}")
        return resp if status is not None else None

    def all_ms(self) -> list[float]:
        return [v for lst in self.ms.values() for v in lst]

    def report(self, title: str) -> None:
        print(f"{title}: {sum(map(len, self.ms.values()))} requests, {len(self.errors)} errors, "
              f"{self.conflicts} conflicts")
        for name, lst in sorted(self.ms.items()):
            print(f"  {name:22s} n={len(lst):6d}  p50 {np.percentile(lst, 50):7.1f} ms  p95 {np.percentile(lst, 95):7.1f} ms")
        for e in self.errors[:10]:
            print(f"  error: {e}")


def start(args: list[str], settings, port: int, probe, auth=None):
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "backend.cli", "--data-dir", str(settings.data_dir), *args,
                             "--port", str(port)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{probe}", headers=auth, timeout=5).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            stop(proc)
            raise SystemExit(f"{args[0]} did not come up: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.3)


def stop(proc) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def prepare(data: Path):
    import backend.cli.job_kinds  # noqa: F401  # registers the job handlers, as the samx command does
    from backend.jobs import enqueue, execute
    from backend.images.ingest import ingest_paths
    from backend.labelstudio.annotations import apply_event
    from ml_backend.results import prediction_result
    from backend.database.schema import Image
    from imaging.phantoms import generate_phantoms
    from ml_backend.models.boxes import Detections

    truth = generate_phantoms(data / "ph", 32, seed=31, fmt="png", size=1024, lesion_rate=0.8,
                              regions=["knee", "hand", "chest", "foot"], workers=2)
    settings, db = fresh_database(data / "samx")
    summary = ingest_paths(db, [data / "ph" / "images"])
    ids = [summary.image_ids[str(data / "ph" / e["file"])] for e in truth["images"]]
    for k, (image_id, e) in enumerate(list(zip(ids, truth["images"]))[:16]):
        with db.session() as s:
            img = s.get(Image, image_id)
            w, h = img.columns, img.rows
        boxes = np.array([les["box"] for les in e["lesions"]], np.float32).reshape(-1, 4)
        boxes[:, 2:] -= boxes[:, :2]  # x0 y0 x1 y1 -> x y w h
        result = prediction_result(Detections(boxes, None, [les["label"] for les in e["lesions"]]), w, h)
        apply_event(db, "ANNOTATION_CREATED", {"annotation": {"id": k + 1, "result": result, "updated_at": "1"},
                                               "task": {"id": k + 1, "data": {"samx_image_id": image_id}}})
    det = execute(db, enqueue(db, "train_detector", {"epochs": 2, "size": 512, "min_images": 4}, send=False).id)
    assert det.status.value == "succeeded", det.error
    clu = execute(db, enqueue(db, "cluster", {"k": 6, "epochs": 2, "size": 64, "batch_size": 16, "workers": 1},
                              send=False).id)
    assert clu.status.value == "succeeded", clu.error
    return settings, db, ids, det.result["version"], clu.result["run_id"]


def bare_forwards_per_second(settings, db, ids: list[int], seconds: float = 20.0) -> float:
    from backend.images.tensors import load_inputs
    from backend.detector.store import active_version, load_version
    from backend.database.schema import Image

    with db.session() as s:
        dv = load_version(settings, active_version(s).version)
        items = [(s.get(Image, i).content_hash, s.get(Image, i).store_path) for i in ids]
    inputs = load_inputs(settings, items, dv.detector.config.input_recipe)  # what the server feeds it
    dv.detector.predict([inputs[0]])  # warm-up
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        dv.detector.predict([inputs[n % len(inputs)]])
        n += 1
    return n / (time.perf_counter() - t)


def ml_phase(settings, ids: list[int], version: str, minutes: float, clients: int) -> tuple[Tally, float]:
    import httpx

    from ml_backend.auth import credentials

    user, password = credentials(settings)
    auth = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    port = _free_port()
    proc = start(["ml-backend", "--server", "gunicorn", "--threads", str(clients)], settings, port, "/health", auth)
    tally = Tally()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=120) as c:
            for i in ids:  # Label Studio pre-annotates every task once; the load then reopens them
                c.post("/predict", json={"tasks": [{"id": i, "data": {"samx_image_id": i}}]}).raise_for_status()
        deadline = time.monotonic() + 60 * minutes

        def client(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=120) as c:
                n = 0
                while time.monotonic() < deadline:
                    n += 1
                    if n % 10 == 0:
                        tally.timed("/setup", lambda: c.post("/setup", json={"project": "1.1", "schema": ""}))
                        tally.timed("/health", lambda: c.get("/health"))
                    i = rng.choice(ids)
                    r = tally.timed("/predict", lambda: c.post("/predict", json={"tasks": [{"id": i, "data": {"samx_image_id": i}}]}))
                    if r is not None and r.status_code == 200:
                        body = r.json()
                        if "errors" in body or body["results"][0]["model_version"] != version:
                            with tally.lock:
                                tally.errors.append(f"/predict: unexpected answer {str(body)[:200]}")

        t = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        wall = time.perf_counter() - t
    finally:
        stop(proc)
    return tally, len(tally.ms["/predict"]) / wall


def web_phase(settings, db, run_id: int, minutes: float, users: int) -> tuple[Tally, float]:
    import httpx
    from sqlalchemy import select

    from backend.database.schema import Cluster, ClusterMembership, Label
    from backend.database.users import create_user

    with db.session() as s:
        clusters = {c: list(s.scalars(select(ClusterMembership.image_id).where(ClusterMembership.cluster_id == c)))
                    for c in s.scalars(select(Cluster.id).where(Cluster.run_id == run_id))}
        labels = list(s.scalars(select(Label.id).where(Label.kind == "region", Label.is_active.is_(True))))
    for k in range(users):
        create_user(db, f"rad{k}", PASSWORD, "radiologist")
    port = _free_port()
    proc = start(["serve", "--server", "gunicorn", "--workers", str(os.cpu_count() or 2), "--threads", "8"],
                 settings, port, "/login")
    base = f"http://127.0.0.1:{port}"

    def session(k: int, tally: Tally, rounds: int | None, deadline: float | None) -> None:
        rng = random.Random(k)
        with httpx.Client(base_url=base, timeout=60, headers={"Accept": "text/html"}) as c:
            token = CSRF.search(c.get("/login").text).group(1)
            tally.timed("POST /login", lambda: c.post("/login", data={"username": f"rad{k}", "password": PASSWORD,
                                                                     "csrf_token": token}), ok=(302,))
            token = CSRF.search(c.get("/runs").text).group(1)
            n = 0
            while (rounds is None or n < rounds) and (deadline is None or time.monotonic() < deadline):
                n += 1
                cid = rng.choice(list(clusters))
                tally.timed("overview", lambda: c.get(f"/runs/{run_id}"))
                tally.timed("cluster page", lambda: c.get(f"/clusters/{cid}"))
                state = tally.timed("cluster json", lambda: c.get(f"/api/clusters/{cid}"))
                tally.timed("montage", lambda: c.get(f"/clusters/{cid}/montage.webp"))
                for image_id in rng.sample(clusters[cid], min(4, len(clusters[cid]))):
                    tally.timed("thumbnail", lambda: c.get(f"/images/{image_id}/thumbnail"))
                if n % 5 == 0 and state is not None and state.status_code == 200:
                    body = {"version": state.json()["version"], "label_id": rng.choice(labels)}
                    tally.timed("POST name", lambda: c.post(f"/api/clusters/{cid}/name", json=body,
                                                            headers={"X-CSRFToken": token}), conflict=(409,))

    try:
        alone = Tally()
        session(0, alone, rounds=20, deadline=None)
        deadline = time.monotonic() + 60 * minutes
        tally = Tally()
        t = time.perf_counter()
        with ThreadPoolExecutor(users) as pool:
            list(pool.map(lambda k: session(k, tally, None, deadline), range(users)))
        tally.rps = len(tally.all_ms()) / (time.perf_counter() - t)
    finally:
        stop(proc)
    return tally, float(np.percentile(alone.all_ms(), 50))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ml-minutes", type=float, default=5.0)
    ap.add_argument("--web-minutes", type=float, default=3.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--users", type=int, default=20)
    a = ap.parse_args()

    data = OUT / "load"
    shutil.rmtree(data, ignore_errors=True)
    t = time.perf_counter()
    settings, db, ids, version, run_id = prepare(data)
    print(f"setup: {len(ids)} images, detector {version}, clustering run {run_id} ({time.perf_counter() - t:.0f} s)")

    bare = bare_forwards_per_second(settings, db, ids)
    ml, served = ml_phase(settings, ids, version, a.ml_minutes, a.clients)
    ml.report(f"ML backend, {a.clients} clients, {a.ml_minutes:g} min")
    print(f"  /predict served {served:.2f}/s; bare forward {bare:.2f}/s; ratio {served / bare:.2f}")

    web, alone_p50 = web_phase(settings, db, run_id, a.web_minutes, a.users)
    web.report(f"web app, {a.users} radiologists, {a.web_minutes:g} min")
    w_all = web.all_ms()
    w50, w95 = np.percentile(w_all, 50), np.percentile(w_all, 95)
    print(f"  {web.rps:.0f} requests/s; one radiologist alone: p50 {alone_p50:.1f} ms; "
          f"under load p95 / alone p50 = {w95 / alone_p50:.1f}")
    p = ml.ms["/predict"]
    print(f"RESULT ml_requests={sum(map(len, ml.ms.values()))} ml_errors={len(ml.errors)} "
          f"ml_p50_ms={np.percentile(p, 50):.0f} ml_p95_ms={np.percentile(p, 95):.0f} "
          f"ml_rps={served:.2f} ml_vs_bare={served / bare:.2f} "
          f"web_requests={len(w_all)} web_errors={len(web.errors)} web_conflicts={web.conflicts} "
          f"web_p50_ms={w50:.0f} web_p95_ms={w95:.0f} web_rps={web.rps:.0f} web_p95_vs_alone_p50={w95 / alone_p50:.1f}")
    if ml.errors or web.errors:  # the target is zero: a run with errors fails (make bench stops there)
        sys.exit(f"{len(ml.errors)} ML backend and {len(web.errors)} web app errors under load (listed above)")


if __name__ == "__main__":
    main()
