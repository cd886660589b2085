"""/predict latency of the ML backend against the bare detector forward on the same image.

A phantom with lesions resampled to 2,000 x 2,500 is ingested, a detector version is trained on
it and three more by the real "train_detector" job (2 epochs: latency does not need a good model), and `samx ml-backend` is started as its own process
(as in production). Then: one client asking for the same task 40 times, each request followed by
`LesionDetector.predict` on the already prepared input in this process (alternating, so load from
elsewhere hits both alike), and 4 concurrent clients asking 20 times each. The first request of the server (decoding, equalisation, cache fill) is reported
on its own and not counted: Label Studio asks again for every opened task.

    python bench/predict_latency.py [--requests 40] [--size 512]
"""
from __future__ import annotations

import argparse
import base64
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
from bench.fresh_database import fresh_database  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ms(values) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--size", type=int, default=512, help="Long side the detector sees.")
    a = ap.parse_args()

    import httpx

    from backend.images.tensors import load_inputs
    from ml_backend.models.detector import DetectorConfig
    from backend.detector.store import active_version, load_version
    from backend.images.ingest import ingest_paths
    import backend.cli.job_kinds  # noqa: F401  # registers the job handlers, as the samx command does
    from backend.jobs import enqueue, execute
    from backend.labelstudio.annotations import apply_event
    from ml_backend.results import prediction_result
    from ml_backend.auth import credentials
    from backend.database.schema import Image
    from imaging.phantoms import generate_phantoms
    from imaging.reader import read_radiograph
    from ml_backend.models.boxes import Detections

    data = OUT / "predict-latency"
    shutil.rmtree(data, ignore_errors=True)
    truth = generate_phantoms(data / "ph", 4, seed=21, fmt="dcm", size=2500, lesion_rate=1.0, regions=["knee"],
                              workers=2)
    settings, db = fresh_database(data / "samx")
    # the first phantom, resampled to exactly 2,000 x 2,500 (its boxes with it), is the one asked for
    first = truth["images"][0]
    path = data / "ph" / first["file"]
    src = read_radiograph(path).pixels
    sx, sy = 2000 / src.shape[1], 2500 / src.shape[0]
    big = cv2.resize(src, (2000, 2500), interpolation=cv2.INTER_CUBIC)
    path.unlink()
    first["file"] = str(Path(first["file"]).with_suffix(".png"))
    cv2.imwrite(str(data / "ph" / first["file"]), np.round(np.clip(big, 0, 1) * 65535).astype(np.uint16))
    for les in first["lesions"]:
        x0, y0, x1, y1 = les["box"]
        les["box"] = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
    summary = ingest_paths(db, [data / "ph" / "images"])
    ids = [summary.image_ids[str(data / "ph" / e["file"])] for e in truth["images"]]
    with db.session() as s:
        dims = {i: (s.get(Image, i).columns, s.get(Image, i).rows) for i in ids}
    for k, (image_id, e) in enumerate(zip(ids, truth["images"])):
        w, h = dims[image_id]
        boxes = np.array([les["box"] for les in e["lesions"]], np.float32).reshape(-1, 4)
        boxes[:, 2:] -= boxes[:, :2]  # x0 y0 x1 y1 -> x y w h
        result = prediction_result(Detections(boxes, None, [les["label"] for les in e["lesions"]]), w, h)
        apply_event(db, "ANNOTATION_CREATED", {"annotation": {"id": k + 1, "result": result, "updated_at": "1"},
                                               "task": {"id": k + 1, "data": {"samx_image_id": image_id}}})
    job = execute(db, enqueue(db, "train_detector", {"epochs": 2, "size": a.size, "min_images": 1}, send=False).id)
    assert job.status.value == "succeeded", job.error
    target = ids[0]
    print(f"image {dims[target][0]} x {dims[target][1]}; detector {job.result['version']} at long side {a.size}")

    with db.session() as s:
        dv = load_version(settings, active_version(s).version)
        img = s.get(Image, target)
        item = (img.content_hash, img.store_path)
    x = load_inputs(settings, [item], DetectorConfig(size=a.size).input_recipe)[0]
    dv.detector.predict([x])  # warm-up, as the server's first request

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "backend.cli", "--data-dir", str(settings.data_dir), "ml-backend",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    user, password = credentials(settings)
    auth = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    body = {"tasks": [{"id": 1, "data": {"samx_image_id": target}}]}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=120) as c:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if c.get("/health").json().get("model_version") == job.result["version"]:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"ml backend did not come up: {proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ''}")
                time.sleep(0.3)
            t = time.perf_counter()
            r = c.post("/predict", json=body)
            first_ms = 1000 * (time.perf_counter() - t)
            r.raise_for_status()
            boxes = sum(x["type"] == "rectanglelabels" for x in r.json()["results"][0]["result"])

            def one(client) -> float:
                t = time.perf_counter()
                client.post("/predict", json=body).raise_for_status()
                return 1000 * (time.perf_counter() - t)

            # endpoint and bare forward alternate, so a load elsewhere on the machine hits both alike
            single, bare = [], []
            for _ in range(a.requests):
                single.append(one(c))
                t = time.perf_counter()
                dv.detector.predict([x])
                bare.append(1000 * (time.perf_counter() - t))

        def client_run(_: int) -> list[float]:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=120) as cc:
                return [one(cc) for _ in range(a.requests // 2)]

        with ThreadPoolExecutor(4) as pool:
            t = time.perf_counter()
            concurrent = [ms for lst in pool.map(client_run, range(4)) for ms in lst]
            conc_wall = time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(10)

    p50, p95 = _ms(single)
    b50, b95 = _ms(bare)
    c50, c95 = _ms(concurrent)
    print(f"first request (decode + equalise a {dims[target][0]} x {dims[target][1]} image, cache fill): {first_ms:.0f} ms; "
          f"{boxes} boxes returned")
    print(f"/predict, 1 client : p50 {p50:.0f} ms, p95 {p95:.0f} ms ({a.requests} requests)")
    print(f"/predict, 4 clients: p50 {c50:.0f} ms, p95 {c95:.0f} ms ({len(concurrent)} requests, "
          f"{len(concurrent) / conc_wall:.1f} requests/s on {os.cpu_count()} cores)")
    print(f"bare forward       : p50 {b50:.0f} ms, p95 {b95:.0f} ms; overhead (p50 / p50) {p50 / b50:.2f}")
    print(f"RESULT overhead={p50 / b50:.2f} p50_ms={p50:.0f} p95_ms={p95:.0f} concurrent_p50_ms={c50:.0f} "
          f"concurrent_p95_ms={c95:.0f} bare_p50_ms={b50:.0f} first_ms={first_ms:.0f}")


if __name__ == "__main__":
    main()
