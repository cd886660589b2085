"""The review queue: where the active sorter and the weak labels disagree, a radiologist looks.

Cluster names label hundreds of images at once, so some of them are wrong; the sorter, trained
on all of them, points at the likely mistakes (a confident prediction that differs from the
label), at the images it cannot place (unsure: out of distribution) and at the labels its
cross-validation doubted (doubted: networks that never trained on the image confidently named
another region; the version left them out of its training). Only labels no person
has confirmed one by one (sources ``cluster`` and ``imported``) are queued: once a radiologist
corrected, kept or accepted the prediction for a label (all ``manual``), it stays out.

Plain functions over a SQLAlchemy ``Session`` (no Flask), like :mod:`backend.clusters.decisions`, whose
errors (:class:`~backend.clusters.decisions.DecisionError` and subclasses) they raise. A correction never
overwrites: it supersedes the current ``WeakLabel`` and adds a new one, and it checks the label
the client saw, so two radiologists on the same row cannot silently overwrite each other.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from sqlalchemy import and_, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from backend.config import Settings
from backend.database.session import current_label
from backend.clusters.decisions import (
    DECIDING_ROLES,
    Actor,
    Conflict,
    DecisionError,
    Forbidden,
    NotFound,
    _as_int,
    _region_label,
)
from backend.database.schema import Image, Label, LabelSource, ModelVersion, SorterPrediction, User, WeakLabel, utcnow
from backend.sorter.store import active_version, load_sorter, stored_embeddings

KINDS = ("disagree", "unsure", "doubted")
#: Labels nobody has confirmed image by image: the only ones the sorter may question.
UNREVIEWED = (LabelSource.cluster, LabelSource.imported)
MAX_K = 20

#: One model, many web threads: Grad-CAM hooks into the network, so every use is serialised.
model_lock = threading.Lock()


def _queue_filter(mv_id: int, kind: str):
    if kind not in KINDS:
        raise DecisionError(f"unknown queue {kind!r}; choose from {', '.join(KINDS)}")
    base = [SorterPrediction.model_version_id == mv_id, WeakLabel.superseded_at.is_(None),
            WeakLabel.label_id.is_not(None), WeakLabel.source.in_(UNREVIEWED)]
    if kind == "disagree":
        return and_(*base, SorterPrediction.label_id.is_not(None), SorterPrediction.label_id != WeakLabel.label_id)
    if kind == "doubted":
        return and_(*base, SorterPrediction.label_doubted.is_(True))
    return and_(*base, SorterPrediction.label_id.is_(None))


def review_queue(s: Session, *, limit: int = 50, offset: int = 0, kind: str = "disagree",
                 image_id: int | None = None) -> tuple[list[dict], int]:
    """One page of the queue (most confident sorter first) and the queue's length.

    ``image_id`` narrows it to one image (the image page links to its own row)."""
    mv = active_version(s)
    if mv is None:
        return [], 0
    cond = _queue_filter(mv.id, kind)
    if image_id is not None:
        cond = and_(cond, SorterPrediction.image_id == image_id)
    joined = select(SorterPrediction).join(WeakLabel, WeakLabel.image_id == SorterPrediction.image_id)
    total = s.scalar(select(func.count()).select_from(joined.where(cond).subquery())) or 0
    weak, pred, second = aliased(Label), aliased(Label), aliased(Label)
    rows = s.execute(
        select(SorterPrediction, WeakLabel, weak.name, pred.name, second.name, User.username)
        .join(WeakLabel, WeakLabel.image_id == SorterPrediction.image_id)
        .join(weak, weak.id == WeakLabel.label_id)
        .outerjoin(pred, pred.id == SorterPrediction.label_id)
        .outerjoin(second, second.id == SorterPrediction.second_label_id)
        .outerjoin(User, User.id == WeakLabel.user_id)
        .where(cond)
        .order_by(SorterPrediction.confidence.desc(), SorterPrediction.image_id)
        .offset(max(offset, 0)).limit(max(limit, 0))).all()
    version = {"id": mv.id, "version": mv.version, "threshold": (mv.metrics or {}).get("threshold")}
    items = [{"image_id": p.image_id,
              "weak_label": {"id": w.id, "label_id": w.label_id, "label": wname,
                             "source": LabelSource(w.source).value, "decision_id": w.decision_id,
                             "user": username, "created_at": w.created_at},
              "prediction": {"label_id": p.label_id, "label": pname, "confidence": p.confidence,
                             "second_label_id": p.second_label_id, "second_label": sname,
                             "second_confidence": p.second_confidence, "ood_score": p.ood_score},
              "model_version": version}
             for p, w, wname, pname, sname, username in rows]
    return items, total


def _describe(s: Session, w: WeakLabel | None) -> str:
    if w is None:
        return "no label"
    name = "discarded (non-MSK)" if w.label_id is None else (w.label.name if w.label else f"label {w.label_id}")
    who = w.user.username if w.user else None
    when = w.created_at.strftime("%H:%M") if w.created_at else "?"
    return f"'{name}' ({LabelSource(w.source).value}{', by ' + who if who else ''}, {when} UTC)"


def correct_label(s: Session, user: Any, image_id: Any, *, label_id: Any, seen_label_id: Any,
                  accept_prediction: bool = False) -> dict:
    """A radiologist settles one image: accept the sorter's prediction, choose a region or
    discard it. Always source ``manual`` (a person decided: exports count it as corrected);
    an accepted prediction also records the sorter version and its confidence (provenance).

    ``seen_label_id`` is the WeakLabel row the client showed as current; if that is no longer
    current, someone else decided meanwhile and their label stands (:class:`Conflict`)."""
    actor = Actor.of(user)
    if actor.role not in DECIDING_ROLES:
        raise Forbidden(f"{actor.username} is a {actor.role.value}; only radiologists and admins correct labels")
    iid = _as_int(image_id, "image id")
    if s.get(Image, iid) is None:
        raise NotFound(f"there is no image {iid}")
    label = None if label_id is None else _region_label(s, label_id)
    seen = _as_int(seen_label_id, "seen_label_id")
    if not isinstance(accept_prediction, bool):
        raise DecisionError(f"accept_prediction must be true or false, got {accept_prediction!r}")

    current = current_label(s, iid)
    if current is None or current.id != seen:
        raise Conflict(f"The label of image {iid} was changed since you loaded the page: it is now "
                       f"{_describe(s, current)}. Nothing of yours was saved — reload to see it.")
    source, mv_id, confidence = LabelSource.manual, None, None
    if accept_prediction:
        mv = active_version(s)
        pred = mv and s.scalar(select(SorterPrediction).where(SorterPrediction.model_version_id == mv.id,
                                                               SorterPrediction.image_id == iid))
        if not pred or pred.label_id is None:
            raise DecisionError(f"the active sorter has no prediction for image {iid} to accept")
        if label is None or label.id != pred.label_id:
            raise DecisionError("accept_prediction needs label_id to be the predicted label "
                                f"({pred.label_id}); send accept_prediction false to choose another region")
        mv_id, confidence = mv.id, pred.confidence

    now = utcnow()
    # WHERE superseded_at IS NULL: of two concurrent corrections only one finds the row current.
    hit = s.execute(update(WeakLabel).where(WeakLabel.id == current.id, WeakLabel.superseded_at.is_(None))
                    .values(superseded_at=now).execution_options(synchronize_session=False)).rowcount
    if hit != 1:
        raise Conflict(f"the label of image {iid} was changed by someone else at the same moment — reload")
    new = WeakLabel(image_id=iid, label_id=label.id if label else None, source=source, user_id=actor.id,
                    model_version_id=mv_id, confidence=confidence, created_at=now)
    s.add(new)
    try:
        s.flush()
    except IntegrityError as exc:  # the one-current-label index: a parallel correction won
        raise Conflict(f"the label of image {iid} was changed by someone else at the same moment — reload") from exc
    name = label.name if label else "discarded (non-MSK)"
    verb = "accepted the sorter's" if accept_prediction else "set"
    return {"image_id": iid, "weak_label_id": new.id, "superseded_id": current.id,
            "label_id": new.label_id, "label": name, "source": source.value, "user": actor.username,
            "model_version_id": mv_id, "confidence": confidence,
            "message": f"Image {iid}: {verb} '{name}' (was {_describe(s, current)})."}


def image_sorter(s: Session, image_id: int) -> dict | None:
    """What the active sorter says about one image, for the image page (None: no sorter)."""
    mv = active_version(s)
    if mv is None:
        return None
    pred, second = aliased(Label), aliased(Label)
    row = s.execute(select(SorterPrediction, pred.name, second.name)
                    .outerjoin(pred, pred.id == SorterPrediction.label_id)
                    .outerjoin(second, second.id == SorterPrediction.second_label_id)
                    .where(SorterPrediction.model_version_id == mv.id, SorterPrediction.image_id == image_id)).first()
    current = current_label(s, image_id)
    out = {"version": mv.version, "model_version_id": mv.id, "threshold": (mv.metrics or {}).get("threshold"),
           "size": (mv.config or {}).get("size"), "predicted": row is not None}
    if row is not None:
        p, pname, sname = row
        unreviewed = bool(current is not None and current.label_id is not None
                          and LabelSource(current.source) in UNREVIEWED)
        disagrees = bool(current is not None and current.label_id is not None and p.label_id is not None
                         and p.label_id != current.label_id)
        out.update(label_id=p.label_id, label=pname, confidence=p.confidence, second_label=sname,
                   second_confidence=p.second_confidence, ood_score=p.ood_score, disagrees=disagrees,
                   queue="disagree" if disagrees else "unsure" if p.label_id is None else "doubted",
                   queued=unreviewed and (p.label_id is None or disagrees or p.label_doubted))
    return out


# --------------------------------------------------------------------------------------------
# similar cases


_index_cache: OrderedDict[tuple, Any] = OrderedDict()
_cache_lock = threading.Lock()


def _labels_state(s: Session) -> tuple:
    """Changes whenever any current label does: every change inserts a weak label (a higher id)
    or supersedes one (superseded_at = now), and undo does both. One aggregate, not every row."""
    return tuple(s.execute(select(func.count(WeakLabel.id).filter(WeakLabel.superseded_at.is_(None)),
                                  func.max(WeakLabel.id), func.max(WeakLabel.superseded_at))).one())


def _labelled(s: Session) -> tuple[np.ndarray, list[str]]:
    rows = s.execute(select(WeakLabel.image_id, Label.name).join(Label, Label.id == WeakLabel.label_id)
                     .where(WeakLabel.superseded_at.is_(None)).order_by(WeakLabel.image_id)).all()
    return np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows]


def _similar_index(settings: Settings, s: Session, mv: ModelVersion):
    """The index of the labelled images' stored embeddings, cached per (version, state of the
    labels): a correction changes the state, so a neighbour's label is never stale."""
    from clustering.similar import SimilarCases

    key = (mv.id, mv.path, _labels_state(s))
    with _cache_lock:
        if key in _index_cache:
            _index_cache.move_to_end(key)
            return _index_cache[key]
    rows_of, emb = stored_embeddings(settings, mv)
    ids, names = _labelled(s)
    keep = [j for j, i in enumerate(ids.tolist()) if i in rows_of]
    if not keep:
        return None
    index = SimilarCases().fit(emb[[rows_of[int(ids[j])] for j in keep]], [names[j] for j in keep], ids[keep])
    with _cache_lock:
        _index_cache[key] = index
        while len(_index_cache) > 4:
            _index_cache.popitem(last=False)
    return index


def _query_embedding(settings: Settings, mv: ModelVersion, img: Image) -> np.ndarray:
    """The stored embedding, or (an image imported after training) the model's, computed now."""
    rows_of, emb = stored_embeddings(settings, mv)
    if img.id in rows_of:
        return emb[rows_of[img.id]]
    return network_input(settings, mv, img, lambda model, x: model.embed(x[None]))[0]


def network_input(settings: Settings, mv: ModelVersion, img: Image, use):
    """``use(model, x)`` with the version's model and the image as that model sees it: the
    body crop, letterboxed to the training size and enhanced (the tensor cache)."""
    from backend.images.store import load_pixels
    from backend.images.tensors import body_recipe, tensor_cache

    if not img.store_path:
        raise NotFound(f"image {img.id} has no stored pixels")
    cfg = mv.config or {}
    cache = tensor_cache(settings, body_recipe(int(cfg.get("size", 64)), cfg.get("method", "fhe")))
    try:
        x = np.asarray(cache.get(img.content_hash, lambda: load_pixels(settings, img.store_path)), np.float32)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise NotFound(f"the stored pixels of image {img.id} cannot be read ({exc})") from None
    model = load_sorter(settings, mv)
    with model_lock:
        return use(model, x)


def similar_cases(settings: Settings, s: Session, image_id: int, k: int = 5) -> dict:
    """The ``k`` nearest labelled images (never the image itself) in the active sorter's
    embedding space, and the majority vote of their labels."""
    from clustering.similar import majority_vote

    mv = active_version(s)
    if mv is None:
        raise NotFound("there is no active sorter yet")
    img = s.get(Image, image_id)
    if img is None:
        raise NotFound(f"there is no image {image_id}")
    k = max(1, min(int(k), MAX_K))
    index = _similar_index(settings, s, mv)
    neighbours = []
    if index is not None:
        found = index.kneighbors(_query_embedding(settings, mv, img)[None], k, exclude_ids=[image_id])
        neighbours = [{"image_id": int(i), "label": str(lab), "similarity": round(float(sim), 4)}
                      for i, lab, sim in zip(found.ids[0], found.labels[0], found.similarity[0])]
    label, share = majority_vote([n["label"] for n in neighbours])
    return {"image_id": image_id, "model_version": mv.version, "k": k, "neighbours": neighbours,
            "suggestion": {"label": label, "votes": int(round(share * len(neighbours))), "k": len(neighbours)}}
