"""Cluster montages: up to 9 representative thumbnails in a 3x3 WebP, built on first request
and cached on disk under ``data_dir/cache/montages``.

The overview page only links to montages (lazy <img>), so rendering 1,000 cards never builds
one. The cache file name carries a hash of the chosen image ids: a merge, split or undo that
changes the representatives gives a new name, and stale files of the cluster are removed."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.database.schema import Cluster, ClusterMembership, Image
from imaging.files import write_atomic

TILE = 128
GRID = 3
N = GRID * GRID
BACKGROUND = 24  # dark grey: empty tiles read as "nothing here", not as black images


def montage_dir(settings: Settings) -> Path:
    return settings.cache_dir / "montages"


def representative_ids(s: Session, cluster: Cluster, n: int = N) -> list[int]:
    """``stats["representatives"]`` still in the cluster, topped up with the members nearest
    the centre (smallest ``distance``)."""
    wanted = [int(i) for i in (cluster.stats or {}).get("representatives") or []][:n]
    present: set[int] = set()
    if wanted:
        present = set(s.scalars(select(ClusterMembership.image_id).where(
            ClusterMembership.cluster_id == cluster.id, ClusterMembership.image_id.in_(wanted))))
    ids = [i for i in dict.fromkeys(wanted) if i in present]
    if len(ids) < n:
        q = (select(ClusterMembership.image_id).where(ClusterMembership.cluster_id == cluster.id)
             .order_by(ClusterMembership.distance.asc().nulls_last(), ClusterMembership.image_id).limit(n + len(ids)))
        ids += [i for i in s.scalars(q) if i not in set(ids)][: n - len(ids)]
    return ids


def build_montage(paths: list[Path | None], tile: int = TILE) -> bytes:
    """3x3 grid of thumbnails, each fitted into its tile (aspect kept); missing files stay empty."""
    canvas = PILImage.new("L", (GRID * tile, GRID * tile), BACKGROUND)
    for k, path in enumerate(paths[:N]):
        if path is None or not path.is_file():
            continue
        try:
            with PILImage.open(path) as im:
                im = im.convert("L")
                im.thumbnail((tile - 2, tile - 2))
                r, c = divmod(k, GRID)
                canvas.paste(im, (c * tile + (tile - im.width) // 2, r * tile + (tile - im.height) // 2))
        except OSError:  # a damaged thumbnail must not break the overview
            continue
    buf = io.BytesIO()
    canvas.save(buf, format="WEBP", quality=80, method=4)
    return buf.getvalue()


def montage_path(settings: Settings, s: Session, cluster: Cluster) -> Path:
    """The cached montage file of the cluster, built now if it is missing."""
    ids = representative_ids(s, cluster)
    key = hashlib.sha1((",".join(map(str, ids)) + f"/{TILE}").encode()).hexdigest()[:16]
    path = montage_dir(settings) / f"{cluster.id}-{key}.webp"
    if path.is_file():
        return path
    thumbs = dict(s.execute(select(Image.id, Image.thumbnail_path).where(Image.id.in_(ids))).all()) if ids else {}
    root = settings.data_dir.resolve()
    paths = [(root / thumbs[i]) if thumbs.get(i) else None for i in ids]
    write_atomic(path, build_montage(paths))
    for old in path.parent.glob(f"{cluster.id}-*.webp"):
        if old != path:
            old.unlink(missing_ok=True)
    return path
