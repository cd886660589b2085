"""The active-learning order, pushed to Label Studio after each detector training.

Two places a radiologist can sort by in the data manager: each unlabelled task gets a
prediction from the new version (its boxes, so they are pre-annotated too) whose score is the
task's priority, and the task's data gets ``al_rank`` (1 = label this first) and
``al_priority``. Predictions go in bulk (one request per 500); the data needs one PATCH per task
(Label Studio has no bulk update of task data), sent from a few threads."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import httpx

from backend.config import Settings
from backend.labelstudio.process import LabelStudioConnection, LabelStudioError, connection
from backend.labelstudio.sync import IMPORT_TIMEOUT_S, iter_tasks, load_state, project_id, task_map

RANK_KEY, PRIORITY_KEY = "al_rank", "al_priority"
BATCH = 500


def push_ranking(settings: Settings, ranking: Sequence[dict], model_version: str,
                 conn: LabelStudioConnection | None = None, workers: int = 4) -> dict:
    """``ranking``: dicts with image_id, rank, priority and ``result`` (Label Studio result list).
    Returns counts; raises LabelStudioError when there is no synced project or it is unreachable."""
    pid = project_id(settings)
    if pid is None:
        raise LabelStudioError("no Label Studio project synced yet (samx labelstudio sync)")
    conn = conn or connection(settings)
    if load_state(settings).get("url") not in (None, conn.url):
        raise LabelStudioError(f"the synced project lives on {load_state(settings).get('url')}, not {conn.url}")
    try:
        return _push(settings, pid, conn, ranking, model_version, workers)
    except httpx.HTTPError as exc:
        raise LabelStudioError(f"could not reach Label Studio at {conn.url}: {type(exc).__name__}: {exc}") from None


def _push(settings: Settings, pid: int, conn: LabelStudioConnection, ranking: Sequence[dict], model_version: str,
          workers: int) -> dict:
    tasks = task_map(settings)
    entries = [e for e in ranking if e["image_id"] in tasks]
    with conn.http(timeout=IMPORT_TIMEOUT_S) as http:
        for start in range(0, len(entries), BATCH):
            batch = [{"task": tasks[e["image_id"]], "result": e.get("result") or [], "score": float(e["priority"]),
                      "model_version": model_version} for e in entries[start:start + BATCH]]
            r = http.post(f"/api/projects/{pid}/import/predictions", json=batch)
            if r.status_code >= 300:
                raise LabelStudioError(f"Label Studio refused {len(batch)} predictions: {r.status_code} {r.text[:300]}")
        r = http.patch(f"/api/projects/{pid}", json={"model_version": model_version})
        if r.status_code >= 300:
            raise LabelStudioError(f"could not set the project's model version: {r.status_code} {r.text[:300]}")

        data_of = {t["id"]: t.get("data") or {} for t in iter_tasks(conn, pid)}  # one paged read, not one per task

        def patch(e: dict) -> bool:
            tid = tasks[e["image_id"]]
            if tid not in data_of:  # deleted in Label Studio since the last sync
                return False
            data = {**data_of[tid], RANK_KEY: int(e["rank"]), PRIORITY_KEY: round(float(e["priority"]), 6)}
            return http.patch(f"/api/tasks/{tid}", json={"data": data}).status_code < 300

        with ThreadPoolExecutor(workers) as pool:
            patched = sum(pool.map(patch, entries))
    return {"project_id": pid, "predictions": len(entries), "ranked_tasks": patched, "not_in_project": len(ranking) - len(entries)}
