"""`samx labelstudio sync`: the lesion project in Label Studio, our images as its tasks, and
our ML backend connected to it. Safe to run again at any time: it adds what is missing.

- **Project**: found by the id remembered in ``DATA_DIR/labelstudio/state.json``, else by
  title, else created; its labeling config (config.py) is updated when the lesion classes or
  the region vocabulary changed.
- **Images**: Label Studio shows an 8-bit foreground-equalised PNG of each stored image at full
  resolution (same width and height, so percent boxes map 1:1 onto the original), written once
  per image to ``DATA_DIR/labelstudio/files/images/<hash[:2]>/<hash>.png`` and served by Label
  Studio's local-files view (a local-files storage of the project makes it serve that folder;
  the storage is never "synced", so it imports nothing itself).
- **Tasks**: ``{"image": "/data/local-files/?d=images/..", "samx_image_id": id, "region": name}``,
  imported in batches (one request each, no automatic retry: a batch that timed out but
  landed must not land twice). Which images are already there is read from Label Studio itself
  (``data.samx_image_id`` of the project's tasks) at every run, so a crash between a batch and
  our bookkeeping, or tasks deleted in Label Studio, cannot cause duplicates or gaps; the
  resulting image -> task map is cached in state.json for other samx code (:func:`task_map`).
  Images a radiologist discarded as not MSK are left out.
- **ML backend**: added once per URL (Label Studio checks its /health and /setup first, with
  the backend's basic-auth pair), and a project webhook to ``<url>/webhook`` for annotation
  events unless Label Studio made one.
"""
from __future__ import annotations

import base64
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence
from urllib.parse import parse_qs, quote, urlparse

from sqlalchemy import func, select

from backend.config import Settings
from backend.database.session import Database
from backend.images.store import DISPLAY_SUBDIR, display_relpath, write_display_image
from ml_backend.labeling_config import (
    LOCAL_FILES_URL,
    PROJECT_TITLE,
    TASK_IMAGE_ID_KEY,
    TASK_IMAGE_KEY,
    TASK_REGION_KEY,
    labeling_config,
    parse_classes,
    parse_labeling_config,
)
from backend.labelstudio.process import LabelStudioConnection, LabelStudioError, check_connection, connection, files_root
from ml_backend.auth import credentials
from backend.database.schema import Image, ImageStatus, Label, LabelKind, WeakLabel
from imaging.files import write_atomic

DEFAULT_BATCH_SIZE = 500
#: Annotation events the ML backend needs (Label Studio has no ANNOTATION_DELETED, only the plural).
WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
ML_BACKEND_TITLE = "samx"
IMPORT_TIMEOUT_S = 600.0

Progress = Callable[[int, int], None]


# ----------------------------------------------------------------------------- state and paths


def state_file(settings: Settings) -> Path:
    return settings.labelstudio_dir / "state.json"


def load_state(settings: Settings) -> dict:
    try:
        return json.loads(state_file(settings).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _save_state(settings: Settings, state: dict) -> None:
    write_atomic(state_file(settings), json.dumps(state, separators=(",", ":")).encode())


def task_map(settings: Settings) -> dict[int, int]:
    """samx image id -> Label Studio task id in the project of the last sync (state.json; the
    truth is the tasks' ``data.samx_image_id`` in Label Studio, which every sync reads back)."""
    return {int(k): int(v) for k, v in load_state(settings).get("tasks", {}).items()}


def project_id(settings: Settings) -> int | None:
    """The Label Studio id of the lesion project, as of the last sync."""
    pid = load_state(settings).get("project_id")
    return int(pid) if pid is not None else None


def image_url(relpath: str) -> str:
    """The task's ``image`` value: Label Studio's local-files URL of a path below files_root()."""
    return LOCAL_FILES_URL + quote(relpath, safe="/")


def local_path(settings: Settings, url: str) -> Path:
    """The file behind a task's ``image`` URL (``/data/local-files/?d=...``), for code on this
    machine that would rather read the disk than download it."""
    d = parse_qs(urlparse(url).query).get("d", [""])[0]
    root = files_root(settings).resolve()
    path = (root / d).resolve()
    if not d or root not in path.parents:
        raise ValueError(f"not a local-files URL below {root}: {url!r}")
    return path


# ----------------------------------------------------------------------------- vocabulary


def region_names(db: Database) -> list[str]:
    with db.session() as s:
        return list(s.scalars(select(Label.name).where(Label.kind == LabelKind.region, Label.is_active.is_(True))
                              .order_by(Label.sort_order, Label.id)))


def lesion_classes(db: Database, classes: str | Iterable[str] | None = None) -> tuple[str, ...]:
    """The classes to box: ``classes`` (a list, "a,b" or a preset name), else the settings'
    SAMX_LESION_CLASSES, else the vocabulary's active lesion labels. Explicit classes missing
    from the vocabulary are added to it, so boxes coming back from Label Studio have a label."""
    explicit = parse_classes(classes) or tuple(db.settings.lesion_classes)
    with db.session() as s:
        if not explicit:
            names = tuple(s.scalars(select(Label.name).where(Label.kind == LabelKind.lesion, Label.is_active.is_(True))
                                    .order_by(Label.sort_order, Label.id)))
            if not names:
                raise LabelStudioError("the vocabulary has no active lesion label: pass --classes")
            return names
        existing = set(s.scalars(select(Label.name).where(Label.kind == LabelKind.lesion)))
        order = s.scalar(select(func.max(Label.sort_order)).where(Label.kind == LabelKind.lesion))
        order = -1 if order is None else order
        for name in explicit:
            if name not in existing:
                order += 1
                s.add(Label(kind=LabelKind.lesion, name=name, sort_order=order))
    return explicit


# ----------------------------------------------------------------------------- Label Studio calls


def _error_text(exc: Exception) -> str:
    """A readable message from an SDK ApiError (Label Studio's validation errors hold HTML)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        detail = body.get("validation_errors") or body.get("detail") or body
        text = json.dumps(detail) if not isinstance(detail, str) else detail
    else:
        text = str(body if body is not None else exc)
    text = re.sub(r"<[^>]+>", "", text)
    return text.replace("\\n", " ").replace('\\"', '"')[:1000]


def _api(what: str, fn, *args, **kwargs):
    from label_studio_sdk.core.api_error import ApiError

    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        raise LabelStudioError(f"Label Studio refused to {what} ({exc.status_code}): {_error_text(exc)}") from None
    except Exception as exc:  # httpx errors: not reachable, timeouts
        if type(exc).__module__.startswith("httpx"):
            raise LabelStudioError(f"could not {what}: {type(exc).__name__}: {exc}") from None
        raise


@dataclass
class ProjectInfo:
    id: int
    created: bool
    config_updated: bool


def find_project(conn: LabelStudioConnection, title: str, known_id: int | None = None):
    """The project with id ``known_id`` if it still exists, else the oldest one titled ``title``,
    else None (an SDK project object: ``.id``, ``.title``, ``.label_config``)."""
    from label_studio_sdk.core.api_error import ApiError

    ls = conn.client()
    if known_id is not None:
        try:
            return ls.projects.get(known_id)
        except ApiError as exc:
            if exc.status_code != 404:
                raise LabelStudioError(f"Label Studio refused to read project {known_id}: {_error_text(exc)}") from None
    matches = [p for p in _api("list projects", lambda: list(ls.projects.list(page_size=100))) if p.title == title]
    return min(matches, key=lambda p: p.id) if matches else None


def ensure_project(conn: LabelStudioConnection, title: str, label_config: str, known_id: int | None = None,
                   project=None) -> ProjectInfo:
    """The project with this id (if it still exists) or title (or ``project``, found already);
    created if neither exists. Its labeling config is set to ``label_config`` if it differs."""
    ls = conn.client()
    project = project or find_project(conn, title, known_id)
    if project is None:
        made = _api("create the project", ls.projects.create, title=title, label_config=label_config,
                    description="Lesion boxes for samx (made by `samx labelstudio sync`).",
                    # Opening a task asks the ML backend for its prediction (tasks/api.py). Not
                    # evaluate_predictions_automatically: with it every page of the task list
                    # (ours, when we reconcile, included) asks for predictions for the whole page.
                    show_collab_predictions=True)
        return ProjectInfo(id=made.id, created=True, config_updated=False)
    if (project.label_config or "").strip() != label_config.strip():
        _api("change the labeling config (labels still used by annotations cannot be removed)",
             ls.projects.update, project.id, label_config=label_config)
        return ProjectInfo(id=project.id, created=False, config_updated=True)
    return ProjectInfo(id=project.id, created=False, config_updated=False)


def ensure_local_storage(conn: LabelStudioConnection, project: int, path: Path) -> bool:
    """A local-files import storage of ``path`` in the project, without which Label Studio does
    not serve the files below it. Never synced. True if created now."""
    ls = conn.client()
    path.mkdir(parents=True, exist_ok=True)
    existing = _api("list the project's storages", ls.import_storage.local.list, project=project)
    if any(os.path.normpath(s.path or "") == os.path.normpath(str(path)) for s in existing):
        return False
    _api(f"add the local-files storage {path} (is LOCAL_FILES_DOCUMENT_ROOT its parent?)",
         ls.import_storage.local.create, project=project, path=str(path), title="samx display images",
         description="Served to the labeling page; not synced: samx imports the tasks.", use_blob_urls=True)
    return True


def iter_tasks(conn: LabelStudioConnection, project: int, page_size: int = 1000) -> Iterator[dict]:
    """Every task of the project as {"id", "data"}, page by page."""
    seen = 0
    with conn.http(timeout=IMPORT_TIMEOUT_S) as http:
        page = 1
        while True:
            r = http.get("/api/tasks", params={"project": project, "page": page, "page_size": page_size,
                                               "fields": "task_only", "include": "id,data"})
            if r.status_code == 404 and page > 1:  # past the last page
                return
            if r.status_code != 200:
                raise LabelStudioError(f"could not list the tasks of project {project}: {r.status_code} {r.text[:300]}")
            body = r.json()
            tasks = body.get("tasks", [])
            seen += len(tasks)
            yield from tasks
            if len(tasks) < page_size or seen >= int(body.get("total", 0)):
                return
            page += 1


def project_tasks(conn: LabelStudioConnection, project: int, page_size: int = 1000) -> tuple[dict[int, int], int]:
    """From Label Studio itself: samx image id -> task id (the lowest task id where an image was
    imported twice), and the number of tasks in the project."""
    mapping: dict[int, int] = {}
    seen = 0
    for t in iter_tasks(conn, project, page_size):
        seen += 1
        image_id = (t.get("data") or {}).get(TASK_IMAGE_ID_KEY)
        if isinstance(image_id, int) and (image_id not in mapping or t["id"] < mapping[image_id]):
            mapping[image_id] = t["id"]
    return mapping, seen


def import_tasks(conn: LabelStudioConnection, project: int, tasks: Sequence[dict], *,
                 batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None,
                 on_batch: Callable[[Sequence[dict], list[int]], None] | None = None) -> list[int]:
    """Import task data dicts in batches of ``batch_size`` (one request each): the new task ids,
    in the order of ``tasks``. ``on_batch(batch, ids)`` runs after each batch landed."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    ls = conn.client(timeout=IMPORT_TIMEOUT_S)
    ids: list[int] = []
    for start in range(0, len(tasks), batch_size):
        batch = list(tasks[start:start + batch_size])
        resp = _api(f"import {len(batch)} tasks", ls.projects.import_tasks, project, request=batch,
                    return_task_ids=True, request_options={"max_retries": 0, "timeout": IMPORT_TIMEOUT_S})
        new = list(getattr(resp, "task_ids", None) or [])
        if len(new) != len(batch):
            raise LabelStudioError(f"Label Studio created {len(new)} tasks for a batch of {len(batch)}")
        ids += new
        if on_batch:
            on_batch(batch, new)
        if progress:
            progress(len(ids), len(tasks))
    return ids


@dataclass
class MlBackendInfo:
    id: int
    created: bool
    webhook_created: bool


def connect_ml_backend(conn: LabelStudioConnection, project: int, url: str, title: str = ML_BACKEND_TITLE,
                       auth: tuple[str, str] | None = None) -> MlBackendInfo:
    """Add the ML backend at ``url`` to the project once (Label Studio calls its /health and
    /setup before it accepts it, with ``auth`` as HTTP basic auth if given), then make sure a
    project webhook sends annotation events to ``url/webhook``."""
    ls = conn.client()
    url = url.rstrip("/")
    backends = _api("list ML backends", ls.ml.list, project=project)
    mine = next((b for b in backends if (b.url or "").rstrip("/") == url), None)
    created = False
    if mine is None:
        extra = ({"auth_method": "BASIC_AUTH", "basic_auth_user": auth[0], "basic_auth_pass": auth[1]}
                 if auth else {})
        try:
            mine = _api(f"add the ML backend {url}", ls.ml.create, project=project, url=url, title=title,
                        is_interactive=False, request_options={"max_retries": 0}, **extra)
        except LabelStudioError as exc:
            raise LabelStudioError(f"{exc}. Is the samx ML backend running at {url} (it must answer GET /health "
                                   "and POST /setup)?") from None
        created = True
    return MlBackendInfo(id=mine.id, created=created, webhook_created=ensure_webhook(conn, project, url + "/webhook", auth))


def ensure_webhook(conn: LabelStudioConnection, project: int, hook_url: str,
                   auth: tuple[str, str] | None = None) -> bool:
    """A project webhook to ``hook_url`` for annotation events, carrying ``auth`` as a basic-auth
    header (the ML backend refuses anonymous calls). Adding an ML backend makes a hook for all
    events when SSRF protection is off, but without that header: it is given one. True if a
    hook was created now."""
    ls = conn.client()
    headers = {"Authorization": "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()} if auth else {}
    hooks = [h for h in _api("list webhooks", ls.webhooks.list, project=str(project))
             if h.url.rstrip("/") == hook_url.rstrip("/") and h.project == project]
    for h in hooks:
        if (h.headers or {}) != headers:
            _api(f"set the webhook {hook_url}'s credentials", ls.webhooks.update, h.id, url=h.url, headers=headers)
    if hooks:
        return False
    _api(f"add the webhook {hook_url}", ls.webhooks.create, url=hook_url, project=project, send_payload=True,
         send_for_all_actions=False, actions=list(WEBHOOK_ACTIONS), is_active=True, headers=headers)
    return True


# ----------------------------------------------------------------------------- sync


@dataclass
class SyncResult:
    project_id: int
    project_url: str
    title: str
    created_project: bool
    config_updated: bool
    lesion_classes: tuple[str, ...]
    images: int  # eligible images in samx
    imported: int  # tasks created now
    skipped: int  # images already in the project
    discarded: int  # images left out: discarded as not MSK
    renditions: int  # display images written now
    tasks_in_project: int
    storage_created: bool
    ml_backend_url: str | None = None
    ml_backend_id: int | None = None
    ml_backend_created: bool = False
    webhook_created: bool = False
    ml_error: str | None = None  # the ML backend could not be connected: why
    seconds: float = 0.0
    task_ids: dict[int, int] = field(default_factory=dict, repr=False)


def _eligible_images(db: Database) -> tuple[list[tuple[int, str, str, str | None]], int]:
    """(image id, content hash, store path, current region name) of every imported image, and
    the number left out because their current label says discarded (not MSK)."""
    with db.session() as s:
        current = (select(WeakLabel.image_id, WeakLabel.label_id)
                   .where(WeakLabel.superseded_at.is_(None)).subquery())
        rows = s.execute(
            select(Image.id, Image.content_hash, Image.store_path, Label.name, current.c.image_id,
                   current.c.label_id)
            .outerjoin(current, current.c.image_id == Image.id)
            .outerjoin(Label, Label.id == current.c.label_id)
            .where(Image.status == ImageStatus.imported, Image.store_path.is_not(None))
            .order_by(Image.id)).all()
    out, discarded = [], 0
    for image_id, content_hash, store_path, region, labelled, label_id in rows:
        if labelled is not None and label_id is None:
            discarded += 1
            continue
        out.append((image_id, content_hash, store_path, region))
    return out, discarded


def task_data(image_id: int, content_hash: str, region: str | None) -> dict:
    """The ``data`` of the task that shows one image."""
    return {TASK_IMAGE_KEY: image_url(display_relpath(content_hash)), TASK_IMAGE_ID_KEY: image_id,
            TASK_REGION_KEY: region}


def sync(db: Database, *, classes: str | Iterable[str] | None = None, ml_backend_url: str | None = None,
         ml_backend_auth: tuple[str, str] | None = None, title: str = PROJECT_TITLE,
         batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None, conn: LabelStudioConnection | None = None,
         progress: Progress | None = None) -> SyncResult:
    """Bring Label Studio's lesion project up to date with samx (see the module docstring)."""
    settings = db.settings
    started = time.monotonic()
    conn = conn or connection(settings)
    check_connection(conn)
    state = load_state(settings)
    known = state.get("project_id") if state.get("url") == conn.url and state.get("title") == title else None
    found = find_project(conn, title, known)
    # Classes: given now, else the settings', else those the project has (a plain re-run keeps
    # what an earlier `--classes` chose), else the vocabulary's active lesion labels.
    current = parse_labeling_config(found.label_config).lesion_classes if found and found.label_config else ()
    if parse_classes(classes) or db.settings.lesion_classes or not current:
        names = lesion_classes(db, classes)
    else:
        names = current
    config = labeling_config(names, region_names(db))
    project = ensure_project(conn, title, config, project=found)
    storage_created = ensure_local_storage(conn, project.id, files_root(settings) / DISPLAY_SUBDIR)

    present, tasks_before = project_tasks(conn, project.id)
    state = {"url": conn.url, "title": title, "project_id": project.id,
             "tasks": {str(k): v for k, v in sorted(present.items())}}
    _save_state(settings, state)

    images, discarded = _eligible_images(db)
    todo = [im for im in images if im[0] not in present]
    renditions = 0
    workers = max(1, workers or min(4, os.cpu_count() or 1))

    def render(im: tuple[int, str, str, str | None]) -> bool:
        return write_display_image(settings, im[1], im[2])

    imported = 0
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            renditions += sum(pool.map(render, batch))  # rendered before the tasks that show them exist
            data = [task_data(im[0], im[1], im[3]) for im in batch]

            def remember(sent: Sequence[dict], ids: list[int]) -> None:
                for d, task_id in zip(sent, ids):
                    state["tasks"][str(d[TASK_IMAGE_ID_KEY])] = task_id
                _save_state(settings, state)

            imported += len(import_tasks(conn, project.id, data, batch_size=batch_size, on_batch=remember))
            if progress:
                progress(imported, len(todo))

    result = SyncResult(project_id=project.id, project_url=f"{conn.url}/projects/{project.id}/data", title=title,
                        created_project=project.created, config_updated=project.config_updated,
                        lesion_classes=names, images=len(images), imported=imported,
                        skipped=len(images) - len(todo), discarded=discarded, renditions=renditions,
                        tasks_in_project=tasks_before + imported, storage_created=storage_created,
                        task_ids={int(k): v for k, v in state["tasks"].items()})
    url = ml_backend_url if ml_backend_url is not None else settings.ml_backend_url
    if url:
        result.ml_backend_url = url.rstrip("/")
        try:
            auth = ml_backend_auth or credentials(settings)
            ml = connect_ml_backend(conn, project.id, url, auth=auth)
            result.ml_backend_id, result.ml_backend_created, result.webhook_created = ml.id, ml.created, ml.webhook_created
        except LabelStudioError as exc:
            result.ml_error = str(exc)
    result.seconds = time.monotonic() - started
    return result
