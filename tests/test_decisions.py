"""The decision service on SQLite and PostgreSQL: labels, merges, splits, undo, conflicts."""
from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm.exc import StaleDataError

from backend.clusters import decisions
from backend.clusters import payloads
from backend.clusters.decisions import Conflict, DecisionError, Forbidden, NotFound, decide
from backend.database.schema import (
    Cluster,
    ClusterDecision,
    ClusterMembership,
    ClusterStatus,
    Label,
    LabelSource,
    User,
    WeakLabel,
)
from tests.factories import make_cluster_run, make_user


@pytest.fixture
def world(db):
    """Three open clusters (6, 5, 4 images) and two radiologists and a viewer."""
    run_id = make_cluster_run(db, sizes=[6, 5, 4], regions=["knee", "hand", "chest"])
    users = {name: make_user(db, name, role) for name, role in
             (("rad1", "radiologist"), ("rad2", "radiologist"), ("viewer", "viewer"))}
    with db.session() as s:
        clusters = list(s.scalars(select(Cluster).where(Cluster.run_id == run_id).order_by(Cluster.index)))
        labels = {lab.name: lab.id for lab in s.scalars(select(Label).where(Label.kind == "region"))}
        lesion = s.scalar(select(Label.id).where(Label.kind == "lesion"))
    return {"db": db, "run": run_id, "c": [c.id for c in clusters], "u": users, "L": labels, "lesion": lesion}


def version(db, cid) -> int:
    with db.session() as s:
        return s.get(Cluster, cid).version


def members(db, cid) -> list[int]:
    with db.session() as s:
        return sorted(s.scalars(select(ClusterMembership.image_id).where(ClusterMembership.cluster_id == cid)))


def current(db, image_ids=None) -> dict[int, tuple]:
    """image -> (label_id, source, decision_id, user_id, weak label id) of its current label."""
    with db.session() as s:
        q = select(WeakLabel).where(WeakLabel.superseded_at.is_(None))
        if image_ids is not None:
            q = q.where(WeakLabel.image_id.in_(image_ids))
        return {w.image_id: (w.label_id, LabelSource(w.source), w.decision_id, w.user_id, w.id) for w in s.scalars(q)}


def snapshot(db, run_id) -> dict:
    """Everything a decision may change, minus versions and bookkeeping."""
    with db.session() as s:
        clusters = {c.id: (c.status, c.label_id, c.size, c.parent_id)
                    for c in s.scalars(select(Cluster).where(Cluster.run_id == run_id))}
        ms = sorted((m.image_id, m.cluster_id, m.distance)
                    for m in s.scalars(select(ClusterMembership).where(ClusterMembership.run_id == run_id)))
    return {"clusters": clusters, "members": ms, "labels": {i: v[4] for i, v in current(db).items()}}


def seed_label(db, image_id, label_id, source=LabelSource.imported, user_id=None) -> int:
    with db.session() as s:
        w = WeakLabel(image_id=image_id, label_id=label_id, source=source, user_id=user_id)
        s.add(w)
        s.flush()
        return w.id


# ---------------------------------------------------------------------------------------------
# name / discard


def test_name_labels_every_member_with_provenance(world):
    db, (a, _, _), rad1 = world["db"], world["c"], world["u"]["rad1"]
    v = version(db, a)
    out = decide(db, "name", a, rad1, version=v, label_id=world["L"]["knee"])
    assert out["cluster"]["status"] == "named" and out["cluster"]["label"] == "knee"
    assert out["cluster"]["version"] == v + 1
    assert "6 images labelled" in out["message"]
    labels = current(db, members(db, a))
    assert len(labels) == 6
    assert {(lab, src, dec, uid) for lab, src, dec, uid, _ in labels.values()} == \
        {(world["L"]["knee"], LabelSource.cluster, out["decision_id"], rad1.id)}
    with db.session() as s:
        d = s.get(ClusterDecision, out["decision_id"])
        assert d.action == "name" and d.user_id == rad1.id and d.label_id == world["L"]["knee"]
        assert sorted(e[0] for e in d.payload["labels"]) == members(db, a)
        assert d.payload["before"] == {str(a): {"status": "open", "label_id": None, "size": 6}}


def test_rename_supersedes_and_keeps_history(world):
    db, a, rad1 = world["db"], world["c"][0], world["u"]["rad1"]
    decide(db, "name", a, rad1, version=version(db, a), label_id=world["L"]["hand"])
    decide(db, "name", a, rad1, version=version(db, a), label_id=world["L"]["knee"])
    img = members(db, a)[0]
    with db.session() as s:
        history = s.scalars(select(WeakLabel).where(WeakLabel.image_id == img).order_by(WeakLabel.id)).all()
    assert [h.label_id for h in history] == [world["L"]["hand"], world["L"]["knee"]]
    assert history[0].superseded_at is not None and history[1].superseded_at is None


def test_name_keeps_manual_labels(world):
    db, a, rad1 = world["db"], world["c"][0], world["u"]["rad1"]
    img = members(db, a)[:2]
    decide(db, "move", a, rad1, version=version(db, a), image_ids=img, target=world["L"]["foot"])
    out = decide(db, "name", a, rad1, version=version(db, a), label_id=world["L"]["knee"])
    assert "4 images labelled, 2 manual labels kept" in out["message"]
    labels = current(db, members(db, a))
    for i in img:
        assert labels[i][:2] == (world["L"]["foot"], LabelSource.manual)
    others = [v for i, v in labels.items() if i not in img]
    assert {v[:2] for v in others} == {(world["L"]["knee"], LabelSource.cluster)}


def test_discard_gives_null_labels(world):
    db, b, rad1 = world["db"], world["c"][1], world["u"]["rad1"]
    out = decide(db, "discard", b, rad1, version=version(db, b))
    assert out["cluster"]["status"] == "discarded" and out["cluster"]["label_id"] is None
    labels = current(db, members(db, b))
    assert len(labels) == 5 and {v[:2] for v in labels.values()} == {(None, LabelSource.cluster)}


def test_name_rejects_bad_labels_and_roles(world):
    db, a = world["db"], world["c"][0]
    rad1, viewer = world["u"]["rad1"], world["u"]["viewer"]
    with pytest.raises(DecisionError, match="not a region label"):
        decide(db, "name", a, rad1, label_id=world["lesion"])
    with pytest.raises(DecisionError, match="not a region label"):
        decide(db, "name", a, rad1, label_id=987654)
    with pytest.raises(DecisionError, match="must be an integer"):
        decide(db, "name", a, rad1, label_id="knee")
    with db.session() as s:
        s.get(Label, world["L"]["toe"]).is_active = False
    with pytest.raises(DecisionError, match="retired"):
        decide(db, "name", a, rad1, label_id=world["L"]["toe"])
    with pytest.raises(Forbidden):
        decide(db, "name", a, viewer, label_id=world["L"]["knee"])
    with pytest.raises(NotFound):
        decide(db, "name", 999999, rad1, label_id=world["L"]["knee"])
    with pytest.raises(DecisionError, match="unknown action"):
        decide(db, "rename", a, rad1)
    assert current(db) == {}  # nothing written by any failed attempt


# ---------------------------------------------------------------------------------------------
# undo


def test_undo_name_restores_previous_labels_exactly(world):
    db, a, rad1 = world["db"], world["c"][0], world["u"]["rad1"]
    imgs = members(db, a)
    imported = seed_label(db, imgs[0], world["L"]["hip"])  # a label that existed before
    before = snapshot(db, world["run"])
    out = decide(db, "name", a, rad1, version=version(db, a), label_id=world["L"]["knee"])
    v = out["cluster"]["version"]
    undo = decide(db, "undo", a, rad1, version=v)
    assert undo["cluster"]["status"] == "open" and undo["cluster"]["version"] == v + 1
    assert snapshot(db, world["run"]) == before
    assert current(db)[imgs[0]][4] == imported
    with db.session() as s:
        d = s.get(ClusterDecision, out["decision_id"])
        assert d.undone_by_id == undo["decision_id"]
        # the undone labels are kept (superseded) for the record, not deleted
        assert s.scalar(select(func.count()).select_from(WeakLabel).where(WeakLabel.decision_id == d.id)) == 6
    with pytest.raises(DecisionError, match="nothing to undo"):
        decide(db, "undo", a, rad1, version=version(db, a))


def test_undo_is_lifo_and_returns_to_start(world):
    db, (a, b, c), rad1 = world["db"], world["c"], world["u"]["rad1"]
    start = snapshot(db, world["run"])
    decide(db, "name", a, rad1, label_id=world["L"]["knee"])
    after_name = snapshot(db, world["run"])
    decide(db, "move", a, rad1, image_ids=members(db, a)[:1], target="unlabeled")
    decide(db, "discard", a, rad1)
    decide(db, "undo", a, rad1)
    decide(db, "undo", a, rad1)
    assert snapshot(db, world["run"]) == after_name
    decide(db, "undo", a, rad1)
    assert snapshot(db, world["run"]) == start


def test_move_to_label_unlabeled_and_discarded(world):
    db, a, rad1 = world["db"], world["c"][0], world["u"]["rad1"]
    decide(db, "name", a, rad1, label_id=world["L"]["knee"])
    i1, i2, i3 = members(db, a)[:3]
    before = current(db)
    out = decide(db, "move", a, rad1, version=version(db, a), image_ids=[i1], target=world["L"]["hand"])
    assert current(db)[i1][:4] == (world["L"]["hand"], LabelSource.manual, out["decision_id"], rad1.id)
    decide(db, "move", a, rad1, image_ids=[i2], target="unlabeled")
    assert i2 not in current(db)
    decide(db, "move", a, rad1, image_ids=[i3], target="discarded")
    assert current(db)[i3][:2] == (None, LabelSource.manual)
    for _ in range(3):
        decide(db, "undo", a, rad1)
    assert current(db) == before
    with db.session() as s:
        assert s.get(Cluster, a).status == "named"  # moves never change the cluster's own name


def test_move_validates_images(world):
    db, (a, b, _), rad1 = world["db"], world["c"], world["u"]["rad1"]
    with pytest.raises(DecisionError, match="not in cluster"):
        decide(db, "move", a, rad1, image_ids=members(db, b)[:1], target=world["L"]["hand"])
    with pytest.raises(DecisionError, match="select at least one"):
        decide(db, "move", a, rad1, image_ids=[], target=world["L"]["hand"])
    with pytest.raises(DecisionError, match="'unlabeled' or 'discarded'"):
        decide(db, "move", a, rad1, image_ids=members(db, a)[:1], target="sideways")
    with pytest.raises(DecisionError, match="not a region label"):
        decide(db, "move", a, rad1, image_ids=members(db, a)[:1], target=world["lesion"])


# ---------------------------------------------------------------------------------------------
# merge


def test_merge_into_named_cluster_moves_and_labels(world):
    db, (a, b, c), rad1 = world["db"], world["c"], world["u"]["rad1"]
    decide(db, "name", a, rad1, label_id=world["L"]["knee"])
    decide(db, "name", c, rad1, label_id=world["L"]["chest"])
    manual = members(db, b)[0]
    decide(db, "move", b, rad1, image_ids=[manual], target=world["L"]["wrist"])
    start = snapshot(db, world["run"])
    versions = {x: version(db, x) for x in (a, b, c)}
    out = decide(db, "merge", a, rad1, version=versions[a], sources=[b, c],
                 source_versions={str(b): versions[b], c: versions[c]})
    assert out["cluster"]["size"] == 15 and "Merged" in out["message"]
    assert members(db, a) == sorted(start_members for start_members, *_ in start["members"])
    with db.session() as s:
        for x in (b, c):
            cl = s.get(Cluster, x)
            assert (cl.status, cl.size, cl.stats["merged_into"]) == ("merged", 0, a)
    for x in (a, b, c):  # every cluster involved gets a new version
        assert version(db, x) == versions[x] + 1
    labels = current(db)
    for img in members(db, a):
        expect = (world["L"]["wrist"], LabelSource.manual) if img == manual else (world["L"]["knee"], LabelSource.cluster)
        assert labels[img][:2] == expect
    with pytest.raises(DecisionError, match="merged into cluster #0"):
        decide(db, "name", b, rad1, label_id=world["L"]["hand"])
    with pytest.raises(DecisionError, match="merged into"):
        decide(db, "undo", b, rad1)
    decide(db, "undo", a, rad1, version=version(db, a))
    assert snapshot(db, world["run"]) == start


def test_merge_into_open_cluster_keeps_labels(world):
    db, (a, b, _), rad1 = world["db"], world["c"], world["u"]["rad1"]
    decide(db, "name", b, rad1, label_id=world["L"]["hand"])
    before = current(db)
    decide(db, "merge", a, rad1, sources=[b])
    assert current(db) == before
    out = decide(db, "name", a, rad1, label_id=world["L"]["knee"])
    assert "11 images labelled" in out["message"]


def test_merge_validation(world, db):
    a, b, _ = world["c"]
    rad1 = world["u"]["rad1"]
    other_run = make_cluster_run(db, sizes=[2, 2])
    with db.session() as s:
        foreign = s.scalar(select(Cluster.id).where(Cluster.run_id == other_run).limit(1))
    with pytest.raises(DecisionError, match="within one clustering run"):
        decide(db, "merge", a, rad1, sources=[foreign])
    with pytest.raises(DecisionError, match="with itself"):
        decide(db, "merge", a, rad1, sources=[a])
    with pytest.raises(NotFound):
        decide(db, "merge", a, rad1, sources=[b, 424242])
    with pytest.raises(DecisionError, match="at least one"):
        decide(db, "merge", a, rad1, sources=[])
    with pytest.raises(DecisionError, match="at least one"):
        decide(db, "merge", a, rad1, sources="b")
    with pytest.raises(Conflict):
        decide(db, "merge", a, rad1, sources=[b], source_versions={b: version(db, b) + 5})
    assert members(db, b) and version(db, a) == 1


# ---------------------------------------------------------------------------------------------
# split


def test_split_and_undo(world):
    db, a, rad1 = world["db"], world["c"][0], world["u"]["rad1"]
    start = snapshot(db, world["run"])
    imgs = members(db, a)
    out = decide(db, "split", a, rad1, version=version(db, a), k=3)
    children = out["children"]
    assert len(children) == 3 and sum(ch["size"] for ch in children) == 6
    assert sorted(ch["index"] for ch in children) == [3, 4, 5]  # next free indices of the run
    with db.session() as s:
        parent = s.get(Cluster, a)
        assert (parent.status, parent.size) == ("split", 0)
        kids = [s.get(Cluster, ch["id"]) for ch in children]
        assert all(k.parent_id == a and k.status == "open" for k in kids)
        assert all(set(k.stats["representatives"]) <= set(imgs) and k.stats["uncertainty"] is not None for k in kids)
    assert sorted(i for ch in children for i in members(db, ch["id"])) == imgs
    with pytest.raises(DecisionError, match="was split"):
        decide(db, "name", a, rad1, label_id=world["L"]["knee"])
    decide(db, "undo", a, rad1, version=version(db, a))
    assert snapshot(db, world["run"]) == start
    with db.session() as s:
        assert all(s.get(Cluster, ch["id"]) is None for ch in children)  # no history: removed


def test_split_undo_waits_for_children(world):
    db, a, rad1 = world["db"], world["c"][0], world["u"]["rad1"]
    start = snapshot(db, world["run"])
    out = decide(db, "split", a, rad1, k=2)
    child = out["children"][0]["id"]
    decide(db, "name", child, rad1, label_id=world["L"]["knee"])
    with pytest.raises(DecisionError, match="undo those first"):
        decide(db, "undo", a, rad1)
    decide(db, "undo", child, rad1)
    decide(db, "undo", a, rad1)
    snap = snapshot(db, world["run"])
    kept = snap["clusters"].pop(child)  # kept for the undone decision's provenance ...
    assert kept[0] == "merged" and kept[2] == 0  # ... but out of the way
    assert snap == start


def test_split_validation(world):
    db, (a, b, c), rad1 = world["db"], world["c"], world["u"]["rad1"]
    with pytest.raises(DecisionError, match="at least 2"):
        decide(db, "split", a, rad1, k=1)
    with pytest.raises(DecisionError, match="at most the cluster size"):
        decide(db, "split", c, rad1, k=5)
    with pytest.raises(DecisionError, match="must be an integer"):
        decide(db, "split", c, rad1, k="two")
    (db.settings.data_dir / "runs" / str(world["run"]) / "arrays.npz").unlink()
    with pytest.raises(DecisionError, match="embeddings .* missing"):
        decide(db, "split", a, rad1, k=2)


def test_merge_split_undo_chain(world):
    db, (a, b, c), rad1 = world["db"], world["c"], world["u"]["rad1"]
    start = snapshot(db, world["run"])
    decide(db, "name", a, rad1, label_id=world["L"]["knee"])
    decide(db, "merge", a, rad1, sources=[b, c])
    out = decide(db, "split", a, rad1, k=3)
    decide(db, "discard", out["children"][1]["id"], rad1)
    decide(db, "undo", out["children"][1]["id"], rad1)
    for _ in range(3):
        decide(db, "undo", a, rad1)
    snap = snapshot(db, world["run"])
    snap["clusters"].pop(out["children"][1]["id"])
    assert snap == start


# ---------------------------------------------------------------------------------------------
# labels across runs


def test_undo_skips_images_relabelled_by_a_later_run(world, db):
    a = world["c"][0]
    rad1, rad2 = world["u"]["rad1"], world["u"]["rad2"]
    imgs = members(db, a)
    run2 = make_cluster_run(db, sizes=[6], image_ids=imgs)  # the same images, clustered again
    with db.session() as s:
        b2 = s.scalar(select(Cluster.id).where(Cluster.run_id == run2))
    decide(db, "name", a, rad1, label_id=world["L"]["knee"])
    decide(db, "name", b2, rad2, label_id=world["L"]["hand"])
    out = decide(db, "undo", a, rad1)
    assert "6 images kept their newer labels" in out["message"]
    assert {v[0] for v in current(db, imgs).values()} == {world["L"]["hand"]}
    decide(db, "undo", b2, rad2)  # the knee decision is undone: nothing to fall back to
    assert current(db, imgs) == {}


# ---------------------------------------------------------------------------------------------
# conflicts


def test_stale_version_conflict_names_who_and_when(world):
    db, a = world["db"], world["c"][0]
    rad1, rad2 = world["u"]["rad1"], world["u"]["rad2"]
    seen = version(db, a)
    decide(db, "name", a, rad1, version=seen, label_id=world["L"]["knee"])
    before = snapshot(db, world["run"])
    with pytest.raises(Conflict) as err:
        decide(db, "discard", a, rad2, version=seen)
    msg = str(err.value)
    assert msg.startswith("rad1 named this cluster 'knee' at ") and "UTC" in msg and "reload" in msg
    assert err.value.status == 409
    assert snapshot(db, world["run"]) == before  # the first decision stands, nothing lost


def test_conflict_message_for_merged_source(world):
    db, (a, b, _), rad1, rad2 = world["db"], world["c"], world["u"]["rad1"], world["u"]["rad2"]
    vb = version(db, b)
    decide(db, "merge", a, rad1, sources=[b])
    with pytest.raises(DecisionError, match="merged into cluster #0"):
        decide(db, "name", b, rad2, version=vb, label_id=world["L"]["hand"])
    with pytest.raises(Conflict, match="rad1 merged cluster #1 into cluster #0"):
        decide(db, "merge", world["c"][2], rad2, sources=[a], source_versions={a: 1})


def test_stale_session_raises_before_writing_labels(world):
    """The ORM version check itself: a session that read version 1 cannot write after another
    decision committed, even when the client-side check passed."""
    db, a = world["db"], world["c"][0]
    rad1, rad2 = world["u"]["rad1"], world["u"]["rad2"]
    s = db.sessionmaker()
    try:
        seen = s.get(Cluster, a)  # read at version 1 (kept referenced: the identity map is weak)
        assert seen.version == 1
        decide(db, "name", a, rad1, version=1, label_id=world["L"]["knee"])
        with pytest.raises(StaleDataError):
            decisions.name_cluster(s, rad2, a, label_id=world["L"]["hand"], version=1)
        s.rollback()
    finally:
        s.close()
    assert {v[0] for v in current(db).values()} == {world["L"]["knee"]}


def test_two_radiologists_at_once(world, monkeypatch):
    """Both pass the version check at the same moment; the database lets exactly one win and
    the other gets a Conflict naming the winner."""
    db, a = world["db"], world["c"][0]
    users = [world["u"]["rad1"], world["u"]["rad2"]]
    gate = threading.Barrier(2, timeout=30)
    real_check = decisions._check_version

    def check_then_wait(s, c, seen):
        real_check(s, c, seen)
        gate.wait()

    monkeypatch.setattr(decisions, "_check_version", check_then_wait)
    results: dict[str, object] = {}

    def act(user, label):
        try:
            results[user.username] = decide(db, "name", a, user, version=1, label_id=world["L"][label])
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            results[user.username] = exc

    threads = [threading.Thread(target=act, args=(u, lab)) for u, lab in zip(users, ("knee", "hand"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [n for n, r in results.items() if isinstance(r, dict)]
    losers = [r for r in results.values() if not isinstance(r, dict)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert isinstance(losers[0], Conflict), repr(losers[0])
    assert str(losers[0]).startswith(f"{winners[0]} named this cluster")
    won = results[winners[0]]["cluster"]["label_id"]
    labels = current(db)
    assert len(labels) == 6 and {v[0] for v in labels.values()} == {won}
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(ClusterDecision)) == 1  # the loser left nothing
        assert s.get(Cluster, a).version == 2


def test_history_lists_decisions(world):
    db, a, rad1 = world["db"], world["c"][0], world["u"]["rad1"]
    decide(db, "name", a, rad1, label_id=world["L"]["knee"])
    decide(db, "undo", a, rad1)
    with db.session() as s:
        h = decisions.history(s, a)
    assert [(x["action"], x["user"], x["undone"]) for x in h] == [("undo", "rad1", False), ("name", "rad1", True)]
    assert h[1]["label"] == "knee"


def test_user_row_works_as_actor(world):
    db, a = world["db"], world["c"][0]
    with db.session() as s:
        row = s.scalar(select(User).where(User.username == "rad2"))
    out = decide(db, "discard", a, row)
    assert out["cluster"]["status"] == "discarded"


def test_parallel_collision_becomes_a_conflict(world, monkeypatch):
    """A unique-index collision (parallel split taking the same sub-cluster index, or two current
    labels for one image) is a 409 that blames nobody, not a 500."""
    from sqlalchemy.exc import IntegrityError

    def collide(*_args, **_kwargs):
        raise IntegrityError("INSERT ...", {}, Exception("UNIQUE constraint failed"))

    monkeypatch.setitem(decisions.ACTIONS, "split", collide)
    with pytest.raises(Conflict, match="at the same moment"):
        decide(world["db"], "split", world["c"][0], world["u"]["rad1"], k=2)


# ---------------------------------------------------------------------------------------------
# payloads: the JSON layout of ClusterDecision.payload, which databases written by earlier
# versions of samx hold (lists and string keys, read back by position)


def _weak_labels_of(db, decision_id) -> dict[int, int]:
    with db.session() as s:
        return {w.image_id: w.id for w in s.scalars(select(WeakLabel).where(WeakLabel.decision_id == decision_id))}


def _payload(db, decision_id) -> dict:
    with db.session() as s:
        return s.get(ClusterDecision, decision_id).payload


def test_decisions_write_the_payload_layout_of_earlier_versions(world):
    """The typed payloads serialise to exactly the JSON the code before them wrote, so rows of
    either version read the same (and an older samx can still undo what this one did)."""
    db, (a, b, c), rad1 = world["db"], world["c"], world["u"]["rad1"]
    knee, hand = world["L"]["knee"], world["L"]["hand"]
    imgs_a = members(db, a)
    prior = seed_label(db, imgs_a[0], world["L"]["hip"])
    out = decide(db, "name", a, rad1, label_id=knee)
    named = _weak_labels_of(db, out["decision_id"])
    assert _payload(db, out["decision_id"]) == {
        "before": {str(a): {"status": "open", "label_id": None, "size": 6}},
        "labels": [[i, prior if i == imgs_a[0] else None, named[i]] for i in imgs_a], "kept_manual": 0}

    moved = members(db, b)
    out = decide(db, "merge", a, rad1, sources=[b])
    new = _weak_labels_of(db, out["decision_id"])
    assert _payload(db, out["decision_id"]) == {
        "before": {str(a): {"status": "named", "label_id": knee, "size": 6},
                   str(b): {"status": "open", "label_id": None, "size": 5}},
        "moved": {str(b): moved}, "labels": [[i, None, new[i]] for i in moved], "kept_manual": 0, "sources": [b]}

    out = decide(db, "move", a, rad1, image_ids=[imgs_a[1]], target=hand)
    new = _weak_labels_of(db, out["decision_id"])
    assert _payload(db, out["decision_id"]) == {
        "before": {str(a): {"status": "named", "label_id": knee, "size": 11}},
        "labels": [[imgs_a[1], named[imgs_a[1]], new[imgs_a[1]]]], "target": hand}
    out = decide(db, "move", a, rad1, image_ids=[imgs_a[2]], target="unlabeled")
    assert _payload(db, out["decision_id"]) == {
        "before": {str(a): {"status": "named", "label_id": knee, "size": 11}},
        "labels": [[imgs_a[2], named[imgs_a[2]], None]], "target": "unlabeled"}

    with db.session() as s:
        ms = s.execute(select(ClusterMembership.id, ClusterMembership.image_id, ClusterMembership.distance)
                       .where(ClusterMembership.cluster_id == c).order_by(ClusterMembership.image_id)).all()
    out = decide(db, "split", c, rad1, k=2)
    assert _payload(db, out["decision_id"]) == {
        "before": {str(c): {"status": "open", "label_id": None, "size": 4}}, "k": 2, "seed": c,
        "children": [ch["id"] for ch in out["children"]], "members": [[m, i, d] for m, i, d in ms]}

    out = decide(db, "undo", c, rad1)
    assert _payload(db, out["decision_id"]) == {"undid": out["undid"], "action": "split", "skipped_images": []}


def test_undo_of_a_name_decision_written_by_the_old_code(world):
    """A decision row exactly as the code before the typed payloads left it (written here by
    hand, not by the decision service) is undone: labels, cluster state and all."""
    db, a, rad1 = world["db"], world["c"][0], world["u"]["rad1"]
    imgs = members(db, a)
    prior = seed_label(db, imgs[0], world["L"]["hip"])
    start = snapshot(db, world["run"])
    knee = world["L"]["knee"]
    with db.session() as s:
        d = ClusterDecision(cluster_id=a, user_id=rad1.id, action="name", label_id=knee, payload={})
        s.add(d)
        s.flush()
        s.get(WeakLabel, prior).superseded_at = d.created_at
        s.flush()
        created = []
        for img in imgs:
            w = WeakLabel(image_id=img, label_id=knee, source=LabelSource.cluster, decision_id=d.id, user_id=rad1.id)
            s.add(w)
            s.flush()
            created.append(w.id)
        cl = s.get(Cluster, a)
        cl.status, cl.label_id = "named", knee
        cl.stats = {**cl.stats, "last_decision_id": d.id}
        d.payload = {"before": {str(a): {"status": "open", "label_id": None, "size": 6}},
                     "labels": [[img, prior if img == imgs[0] else None, w] for img, w in zip(imgs, created)],
                     "kept_manual": 0}
        decision_id = d.id
    assert {i: v[0] for i, v in current(db, imgs).items()} == {i: knee for i in imgs}
    undo = decide(db, "undo", a, rad1, version=version(db, a))
    assert undo["undid"] == decision_id and undo["cluster"]["status"] == "open" and undo["cluster"]["label"] is None
    assert snapshot(db, world["run"]) == start
    assert current(db, imgs)[imgs[0]][4] == prior


def test_undo_of_merge_and_split_payloads_written_by_the_old_code(world):
    """Merge and split rows whose payloads are the old code's literal JSON (string keys, lists
    of [membership, image, distance]) are undone back to the start."""
    db, (a, b, c), rad1 = world["db"], world["c"], world["u"]["rad1"]
    knee = world["L"]["knee"]
    decide(db, "name", a, rad1, label_id=knee)
    start = snapshot(db, world["run"])
    moved = members(db, b)
    out = decide(db, "merge", a, rad1, sources=[b])
    new = _weak_labels_of(db, out["decision_id"])
    with db.session() as s:
        s.get(ClusterDecision, out["decision_id"]).payload = {
            "before": {str(a): {"status": "named", "label_id": knee, "size": 6},
                       str(b): {"status": "open", "label_id": None, "size": 5}},
            "moved": {str(b): moved}, "labels": [[i, None, new[i]] for i in moved], "kept_manual": 0, "sources": [b]}
    decide(db, "undo", a, rad1)
    assert snapshot(db, world["run"]) == start

    with db.session() as s:
        ms = s.execute(select(ClusterMembership.id, ClusterMembership.image_id, ClusterMembership.distance)
                       .where(ClusterMembership.cluster_id == c).order_by(ClusterMembership.image_id)).all()
    out = decide(db, "split", c, rad1, k=2)
    with db.session() as s:
        s.get(ClusterDecision, out["decision_id"]).payload = {
            "before": {str(c): {"status": "open", "label_id": None, "size": 4}}, "k": 2, "seed": c,
            "children": [ch["id"] for ch in out["children"]], "members": [[m, i, d] for m, i, d in ms]}
    decide(db, "undo", c, rad1)
    assert snapshot(db, world["run"]) == start


def test_payload_classes_round_trip_the_old_json():
    old = {"before": {"7": {"status": "named", "label_id": 3, "size": 2}},
           "moved": {"8": [11, 12]}, "labels": [[11, None, 40], [12, 30, 41]], "kept_manual": 1, "sources": [8]}
    p = payloads.MergePayload.from_json(old)
    assert p.before[7] == payloads.ClusterState(ClusterStatus.named, 3, 2)
    assert p.labels[1] == payloads.LabelChange(12, 30, 41) and p.moved == {8: [11, 12]}
    assert p.to_json() == old
    split = {"before": {"9": {"status": "open", "label_id": None, "size": 3}}, "k": 2, "seed": 9,
             "children": [20, 21], "members": [[1, 11, 0.5], [2, 12, None]]}
    assert payloads.SplitPayload.from_json(split).to_json() == split
    assert payloads.SplitPayload.from_json(split).labels == []
    undo = {"undid": 5, "action": "merge", "skipped_images": [3]}
    assert payloads.UndoPayload.from_json(undo).to_json() == undo
    move = {"before": {"9": {"status": "named", "label_id": 2, "size": 3}}, "labels": [[11, 40, None]],
            "target": "unlabeled"}
    assert payloads.MovePayload.from_json(move).to_json() == move


def test_each_decision_and_its_undo_bump_every_touched_cluster_once(world):
    """One UPDATE per cluster and decision: the version a page sends next is the one it was told."""
    db, (a, b, c), rad1 = world["db"], world["c"], world["u"]["rad1"]
    steps = [("name", a, {"label_id": world["L"]["knee"]}, (a,)),
             ("move", a, {"image_ids": members(db, a)[:1], "target": world["L"]["hand"]}, (a,)),
             ("merge", a, {"sources": [b]}, (a, b)),
             ("undo", a, {}, (a, b)),
             ("discard", b, {}, (b,)),
             ("undo", b, {}, (b,)),
             ("split", c, {"k": 2}, (c,)),
             ("undo", c, {}, (c,)),
             ("undo", a, {}, (a,)),
             ("undo", a, {}, (a,))]
    for action, cid, kwargs, touched in steps:
        before = {x: version(db, x) for x in (a, b, c)}
        out = decide(db, action, cid, rad1, version=before[cid], **kwargs)
        assert out["cluster"]["version"] == before[cid] + 1, action
        assert {x: version(db, x) for x in (a, b, c)} == {x: v + (x in touched) for x, v in before.items()}, action
