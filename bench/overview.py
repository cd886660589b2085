"""Server time of the run overview and its map: fixed queries against one query per cluster.

A run of 1,000 clusters over 100,000 images (rows only, no image files; every third cluster
named) in a fresh SQLite data directory. A logged-in radiologist asks the Flask app for the
overview page `/runs/<id>` and the map's JSON `/api/runs/<id>/umap`. The alternative is the same
page with its cards built the obvious ORM way: load the clusters, then per cluster a COUNT of
its memberships and, when it is named, its label by primary key. Both build the same cards
(checked) and render the same template; each time is the median of --repeat after one warm-up.

    python bench/overview.py [--clusters 1000] [--images 100000] [--repeat 5]
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
PASSWORD = "bench-overview-password"


def make_big_run(db, n_clusters: int = 1000, n_images: int = 100_000, *, seed: int = 0) -> int:
    """Rows only (no files) for load tests: n_images images spread over n_clusters clusters,
    bulk-inserted. Run arrays hold a 2-D map and 8-D embeddings. (The tests use it too.)"""
    from sqlalchemy import insert, select

    from backend.database.schema import Cluster, ClusterMembership, ClusterRun, Image
    from backend.clusters.arrays import RunArrays, save_arrays

    rng = np.random.default_rng(seed)
    assign = np.sort(rng.integers(0, n_clusters, n_images))
    assign[:n_clusters] = np.arange(n_clusters)  # every cluster non-empty
    assign.sort()
    with db.session() as s:
        image_ids = list(s.scalars(insert(Image).returning(Image.id, sort_by_parameter_order=True), [
            {"content_hash": f"{seed:08d}{i:056d}", "status": "imported", "source_path": f"big/{i}.png",
             "file_size": 1} for i in range(n_images)]))
        run = ClusterRun(status="succeeded", k=n_clusters, params={"factory": "big"})
        s.add(run)
        s.flush()
        counts = np.bincount(assign, minlength=n_clusters)
        s.execute(insert(Cluster), [{"run_id": run.id, "index": j, "status": "open", "size": int(counts[j]),
                                     "version": 1, "stats": {"representatives": [], "outliers": [],
                                                             "uncertainty": float(rng.random())}}
                                    for j in range(n_clusters)])
        cid = dict(s.execute(select(Cluster.index, Cluster.id).where(Cluster.run_id == run.id)).all())
        s.execute(insert(ClusterMembership), [{"run_id": run.id, "cluster_id": cid[int(a)], "image_id": image_ids[i],
                                               "distance": float(i % 97) / 97.0} for i, a in enumerate(assign)])
        run_id = run.id
    ids = np.array(image_ids, dtype=np.int64)
    save_arrays(db.settings, run_id, RunArrays(image_ids=ids, embeddings=rng.normal(size=(n_images, 8)).astype(np.float32),
                                               umap=rng.normal(size=(n_images, 2)).astype(np.float32),
                                               assignments=assign.astype(np.int64),
                                               centroids=np.zeros((n_clusters, 8), np.float32)))
    return run_id


def name_every(db, run_id: int, every: int = 3) -> None:
    """Name every ``every``-th cluster with a region (cycling), as a run half-way through naming."""
    from sqlalchemy import bindparam, select, update

    from backend.database.schema import Cluster
    from backend.web.queries import region_labels

    with db.session() as s:
        labels = [label.id for label in region_labels(s)]
        ids = s.scalars(select(Cluster.id).where(Cluster.run_id == run_id).order_by(Cluster.index)).all()
        t = Cluster.__table__
        s.execute(update(t).where(t.c.id == bindparam("cid")).values(status="named", label_id=bindparam("lid")),
                  [{"cid": c, "lid": labels[i % len(labels)]} for i, c in enumerate(ids[::every])])


def naive_overview_cards(s, run_id: int, sort: str = "unnamed"):
    """The obvious version of ``queries.overview_cards``: per cluster a query for its size and,
    when named, one for its label (``Session.get``; the identity map is weak, so in practice
    one per named cluster)."""
    from sqlalchemy import func, select

    from backend.database.schema import Cluster, ClusterMembership, Label
    from backend.web.queries import HIDDEN, Card, sort_cards

    cards = []
    for c in s.scalars(select(Cluster).where(Cluster.run_id == run_id, Cluster.status.not_in(HIDDEN))):
        size = s.scalar(select(func.count()).select_from(ClusterMembership).where(ClusterMembership.cluster_id == c.id))
        label = s.get(Label, c.label_id).name if c.label_id is not None else None
        unc = (c.stats or {}).get("uncertainty")
        cards.append(Card(c.id, c.index, c.status, label, size, c.version, None if unc is None else float(unc)))
    return sort_cards(cards, sort)


def logged_in_client(app, username: str):
    client = app.test_client()
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/login").text).group(1)
    resp = client.post("/login", data={"username": username, "password": PASSWORD, "csrf_token": token})
    assert resp.status_code in (302, 303), f"login failed: {resp.status_code}"
    return client


def median_s(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    from sqlalchemy import event

    from backend.config import Settings
    from backend.database.session import Database
    from backend.database.users import create_user
    from backend.web import create_app, queries

    data_dir = OUT / f"overview-{a.clusters}-{a.images}"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    settings = Settings(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'samx.db'}", queue_url="sqlite")
    db = Database(settings)
    db.upgrade()
    db.seed_vocabulary()
    t = time.perf_counter()
    run_id = make_big_run(db, n_clusters=a.clusters, n_images=a.images)
    name_every(db, run_id)
    create_user(db, "bench", PASSWORD, "radiologist")
    print(f"built run {run_id}: {a.clusters} clusters over {a.images} images in {time.perf_counter() - t:.1f} s "
          f"({data_dir})", flush=True)
    with db.session() as s:
        assert naive_overview_cards(s, run_id) == queries.overview_cards(s, run_id), "the two overviews differ"

    app = create_app(settings, testing=True)
    client = logged_in_client(app, "bench")
    statements: list[str] = []
    event.listen(app.extensions["samx.db"].engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    def page() -> None:
        statements.clear()
        resp = client.get(f"/runs/{run_id}", headers={"Accept": "text/html"})
        assert resp.status_code == 200 and resp.text.count('class="cluster-card ') == a.clusters, resp.status_code

    def umap() -> None:
        data = client.get(f"/api/runs/{run_id}/umap").json
        assert data["n"] == a.images and len(data["clusters"]) == a.clusters

    ours_s = median_s(page, a.repeat)
    ours_q = len(statements)
    real = queries.overview_cards
    queries.overview_cards = naive_overview_cards  # the route looks it up on the module per request
    try:
        naive_s = median_s(page, a.repeat)
    finally:
        queries.overview_cards = real
    naive_q = len(statements)
    umap_s = median_s(umap, a.repeat)
    app.extensions["samx.db"].dispose()
    db.dispose()

    ratio = naive_s / ours_s
    print(f"overview page, fixed queries  : {ours_s * 1000:7.1f} ms  ({ours_q} SQL statements)")
    print(f"overview page, query/cluster  : {naive_s * 1000:7.1f} ms  ({naive_q} SQL statements)")
    print(f"ratio (naive / ours)          : {ratio:.2f}")
    print(f"{f'map JSON ({a.images} points)':30}: {umap_s * 1000:7.1f} ms")
    print(f"RESULT overview_s={ours_s:.4f} naive_s={naive_s:.4f} ratio={ratio:.2f} umap_s={umap_s:.4f} "
          f"clusters={a.clusters} images={a.images}")


if __name__ == "__main__":
    main()
