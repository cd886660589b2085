"""Image serving: cached thumbnails, and full images windowed on the server.

The stored pixels are 16-bit (see ``backend.images.store``); the browser only shows 8 bits, so
the viewer asks for a window (centre/width in stored 16-bit units, 0..65535) and the server maps
that slice of the full dynamic range onto 0..255. Dragging in the viewer changes the window; a
small LRU cache keeps the last images decoded so a drag does not re-read the PNG each time."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from flask import Blueprint, Response, abort, render_template, request, send_file

from backend.images.store import load_pixels
from backend.sorter.review import image_sorter
from backend.web import queries
from backend.web.auth import requires
from backend.web.common import float_arg, get_db, get_settings, int_arg
from imaging.thumbnails import resize_long_side

bp = Blueprint("images", __name__)

FULL_RANGE = 65535.0
DEFAULT_SIZE = 1024
MAX_SIZE = 4096


def window_to_uint8(pixels: np.ndarray, centre: float, width: float) -> np.ndarray:
    """[0, 1] float pixels -> uint8 through a linear window given in 16-bit units."""
    width = max(float(width), 1.0)
    lo = float(centre) - width / 2.0
    out = (pixels * FULL_RANGE - lo) * (255.0 / width)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def auto_window(pixels: np.ndarray) -> tuple[float, float]:
    """Centre/width spanning the 1st..99th percentile: background and burnt-in labels do not
    set the contrast."""
    lo, hi = np.percentile(pixels, [1.0, 99.0]) * FULL_RANGE
    return float((lo + hi) / 2.0), float(max(hi - lo, 1.0))


@lru_cache(maxsize=16)
def _pixels(data_dir: str, relpath: str, size: int) -> np.ndarray:
    settings = get_settings()
    img = load_pixels(settings, relpath)
    if size and max(img.shape[:2]) > size:
        img = resize_long_side(img, size)
    img.setflags(write=False)
    return img


def _safe_file(root: Path, rel: str | None) -> Path:
    if not rel:
        abort(404, description="this image has no file")
    path = (root / rel).resolve()
    if root.resolve() not in path.parents or not path.is_file():
        abort(404, description="image file not found")
    return path


def _image_or_404(s, image_id: int):
    img = queries.get_image(s, image_id)
    if img is None:
        abort(404, description=f"there is no image {image_id}")
    return img


@bp.route("/images/<int:image_id>")
@requires("view")
def image_page(image_id: int):
    with get_db().session() as s:
        img = _image_or_404(s, image_id)
        sorter = image_sorter(s, image_id)
        return render_template("image.html", image=img, history=queries.image_provenance(s, image_id),
                               clusters=queries.image_clusters(s, image_id), sorter=sorter)


@bp.route("/images/<int:image_id>/thumbnail")
@requires("view")
def thumbnail(image_id: int):
    settings = get_settings()
    with get_db().session() as s:
        rel = _image_or_404(s, image_id).thumbnail_path
    return send_file(_safe_file(settings.data_dir, rel), mimetype="image/webp", max_age=3600, conditional=True)


@bp.route("/images/<int:image_id>/window")
@requires("view")
def windowed(image_id: int):
    """PNG of the image at ``size`` (long side, default 1024, 0 = full resolution) through the
    window ``c``/``w``; without them (or with ``auto=1``) an automatic window. The window used
    comes back in X-Window-Center / X-Window-Width."""
    settings = get_settings()
    size = int_arg("size", DEFAULT_SIZE, lo=0, hi=MAX_SIZE)
    centre, width = float_arg("c"), float_arg("w")
    with get_db().session() as s:
        rel = _image_or_404(s, image_id).store_path
    _safe_file(settings.data_dir, rel)
    try:
        pixels = _pixels(str(settings.data_dir), rel, size)
    except (FileNotFoundError, OSError, cv2.error):
        abort(404, description="the stored pixels of this image cannot be read")

    if centre is None or width is None or request.args.get("auto") == "1":
        centre, width = auto_window(pixels)
    ok, buf = cv2.imencode(".png", window_to_uint8(pixels, centre, width), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        abort(500)
    resp = Response(buf.tobytes(), mimetype="image/png")
    resp.headers["X-Window-Center"] = f"{centre:.1f}"
    resp.headers["X-Window-Width"] = f"{width:.1f}"
    resp.headers["Cache-Control"] = "private, max-age=600"
    return resp
