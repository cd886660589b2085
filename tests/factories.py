"""Small DICOM files built in memory for tests (phantoms cover the realistic ones)."""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bench.overview import make_big_run  # noqa: F401  (rows-only load run; lives with its benchmark)

#: Fake PHI written into every identifying tag by :func:`phi_dicom`; tests grep for these.
PHI = {
    "PatientName": "Zyxwvut^Quillane^Marguerite",
    "PatientID": "PHI-ID-88231957",
    "PatientBirthDate": "19470312",
    "OtherPatientIDs": "PHI-OTHER-55120",
    "PatientAddress": "17 Phidelity Lane Smalltown",
    "InstitutionName": "Saint Phiminian Hospital",
    "InstitutionAddress": "99 Hospitalstrasse Phiburg",
    "ReferringPhysicianName": "Drphi^Referring",
    "PerformingPhysicianName": "Drphi^Performing",
    "OperatorsName": "Techphi^Operator",
    "AccessionNumber": "ACCPHI77812",
    "StudyID": "STUDYPHI991",
    "StationName": "STATIONPHI42",
    "DeviceSerialNumber": "SERIALPHI3310",
    "StudyDescription": "Knee pain Quillane follow-up",
    "ImageComments": "patient Quillane fell on ice",
    "StudyDate": "20190417",
}


def dicom_bytes(pixels: np.ndarray, *, phi: bool = False, **tags) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if phi:
        for key, value in PHI.items():
            setattr(ds, key, value)
        ds.add_new(0x00091010, "LO", "Private Phisecret Note")
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def body_like(seed: int, shape=(96, 80)) -> np.ndarray:
    """A 12-bit image with a bright oval 'body' and a denser 'bone' on noise; distinct per seed."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = h / 2 + rng.uniform(-5, 5), w / 2 + rng.uniform(-5, 5)
    body = ((yy - cy) / (0.4 * h)) ** 2 + ((xx - cx) / (0.3 * w)) ** 2 < 1
    bone = ((yy - cy) / (0.3 * h)) ** 2 + ((xx - cx) / (0.08 * w)) ** 2 < 1
    img = 300 + 1500 * body + 1800 * bone + rng.normal(0, 40, shape)
    return np.clip(img, 0, 4095).astype(np.uint16)


def forearm(h: int = 480, w: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Float [0, 1] forearm-like view: soft-tissue blob with two bones (bright cortex, darker
    marrow) on a dark noisy background, quantised to 12 bits. Returns (img, body_mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx, ry, rx = 0.6 * h, 0.45 * w, 0.3 * h, 0.22 * w
    r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    body = r <= 1
    img = np.full((h, w), 0.08, np.float32)
    img[body] = 0.28 + 0.14 * (1 - r[body])  # thicker soft tissue in the middle
    for offset, half in ((-0.07, 0.035), (0.07, 0.03)):
        d = np.abs(xx - cx - offset * w)
        shaft = (d < half * w) & (np.abs(yy - cy) < 0.24 * h)
        img[shaft] = np.where(d[shaft] > 0.6 * half * w, 0.85, 0.62)  # cortex vs marrow
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    return (np.rint(np.clip(img, 0, 1) * 4095) / 4095).astype(np.float32), body


# ---- cluster runs for the decision service and the web app --------------------------------

TEST_PASSWORD = "correct-horse-battery"


def stop_workers(workers: list[subprocess.Popen]) -> None:
    """`samx worker` processes started with ``start_new_session``: SIGINT to each group (Huey's
    graceful stop), SIGKILL to any still there after 20 s."""
    for w in workers:
        if w.poll() is None:
            os.killpg(w.pid, signal.SIGINT)
    for w in workers:
        try:
            w.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(w.pid, signal.SIGKILL)
            w.wait(timeout=10)


def make_user(db, username: str, role: str = "radiologist"):
    """An account with :data:`TEST_PASSWORD`."""
    from backend.database.users import create_user

    return create_user(db, username, TEST_PASSWORD, role)


def make_cluster_run(db, sizes=(6, 5, 4), regions=None, *, seed: int = 0, px: int = 64, dim: int = 16,
                     image_ids=None, uncertainty=None) -> int:
    """A finished clustering run with real files: one phantom per image (stored 16-bit pixels
    and a WebP thumbnail, laid out as ingest does), Clusters with stats
    {representatives, outliers, uncertainty}, memberships with distances, and run arrays
    (L2-normalised embeddings grouped by cluster, a UMAP-like 2-D map). ``image_ids``: reuse
    images of an earlier run (same order) instead of making new ones. Returns the run id."""
    import hashlib
    import uuid

    from backend.images.store import thumbnail_relpath, write_pixels
    from backend.database.schema import Cluster, ClusterMembership, ClusterRun, Image, ImageStatus
    from backend.clusters.arrays import RunArrays, save_arrays
    from imaging.phantoms import REGIONS, render_phantom
    from imaging.thumbnails import write_thumbnail

    settings = db.settings
    settings.ensure_dirs()
    rng = np.random.default_rng(seed)
    sizes = list(sizes)
    regions = list(regions) if regions is not None else [REGIONS[j % len(REGIONS)] for j in range(len(sizes))]
    tag = uuid.uuid4().hex[:8]
    total = sum(sizes)
    if image_ids is not None and len(image_ids) < total:
        raise ValueError(f"need {total} image ids, got {len(image_ids)}")
    with db.session() as s:
        ids: list[int] = []
        if image_ids is None:
            n = 0
            for j, size in enumerate(sizes):
                for _ in range(size):
                    ph = render_phantom(seed * 100_000 + n, regions[j], size=px, lesion_rate=0.0, implant_rate=0.0)
                    pixels = ph.displayed()
                    digest = hashlib.sha256(f"{tag}-{n}".encode()).hexdigest()
                    store = write_pixels(settings, digest, pixels)
                    thumb = thumbnail_relpath(digest)
                    write_thumbnail(pixels, settings.data_dir / thumb, size=px)
                    img = Image(content_hash=digest, status=ImageStatus.imported, source_path=f"synthetic/{tag}/{n}.png",
                                file_size=int(pixels.size * 2), format="png", rows=pixels.shape[0],
                                columns=pixels.shape[1], bits_stored=16, photometric="MONOCHROME2", modality="DX",
                                body_part=regions[j].upper(), store_path=store, thumbnail_path=thumb)
                    s.add(img)
                    s.flush()
                    ids.append(img.id)
                    n += 1
        else:
            ids = [int(i) for i in image_ids[:total]]
        run = ClusterRun(status="succeeded", k=len(sizes), params={"factory": True, "seed": seed})
        s.add(run)
        s.flush()
        centroids = rng.normal(size=(len(sizes), dim)).astype(np.float32)
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        centres2d = rng.uniform(-10, 10, size=(len(sizes), 2))
        emb, umap, assign = [], [], []
        pos = 0
        for j, size in enumerate(sizes):
            members = ids[pos:pos + size]
            pos += size
            dist = np.sort(rng.uniform(0.05, 1.0, size))
            order = list(members)  # distance ascending in this order
            unc = (uncertainty[j] if uncertainty is not None else float(rng.uniform(0.2, 0.9)))
            c = Cluster(run_id=run.id, index=j, status="open", size=size,
                        stats={"representatives": order[:9], "outliers": order[::-1][:9] if size > 9 else [],
                               "uncertainty": unc})
            s.add(c)
            s.flush()
            for image_id, d in zip(members, dist):
                s.add(ClusterMembership(run_id=run.id, cluster_id=c.id, image_id=image_id, distance=float(d)))
            e = centroids[j] + 0.3 * rng.normal(size=(size, dim)).astype(np.float32)
            emb.append(e / np.linalg.norm(e, axis=1, keepdims=True))
            umap.append(centres2d[j] + rng.normal(size=(size, 2)))
            assign += [j] * size
        run_id = run.id
    save_arrays(settings, run_id, RunArrays(image_ids=np.array(ids, dtype=np.int64),
                                            embeddings=np.concatenate(emb).astype(np.float32),
                                            umap=np.concatenate(umap).astype(np.float32),
                                            assignments=np.array(assign, dtype=np.int64), centroids=centroids))
    return run_id


#: A lesion label whose name tests non-ASCII text in every format.
ODD_LESION = "Osteochondrom ä/é 骨"


def make_export_world(db, phantoms: Path, *, workers: int = 1) -> dict:
    """Ingest the DICOM phantoms under ``phantoms`` (from :func:`generate_phantoms` with fake PHI
    in every header) and label them as samx would: boxes from the phantoms' truth
    (annotations), region weak labels (cluster names, one manual correction, one discarded
    image), a predicted box at score 0.3 and one at 0.9, and the hard cases: a box touching
    the image border, a 0.37-pixel box, a box reaching outside the image and a non-ASCII
    label. Returns {"truth", "ids" (truth id -> image id), "labels" (name -> id)}."""
    import json

    from sqlalchemy import select

    from backend.images.ingest import ingest_paths
    from backend.database.schema import Box, Image, Label, LabelSource, ModelVersion, WeakLabel

    truth = json.loads((Path(phantoms) / "truth.json").read_text())
    summary = ingest_paths(db, [Path(phantoms) / "images"], workers=workers)
    ids = {e["id"]: summary.image_ids[str(Path(phantoms) / e["file"])] for e in truth["images"]}
    with db.session() as s:
        odd = Label(kind="lesion", name=ODD_LESION, sort_order=5)
        mv = ModelVersion(kind="detector", version="v7", status="ready")
        s.add_all([odd, mv])
        s.flush()
        labels = {lab.name: lab.id for lab in s.scalars(select(Label))}
        for n, e in enumerate(truth["images"]):
            image = s.get(Image, ids[e["id"]])
            for les in e["lesions"]:
                x0, y0, x1, y1 = les["box"]
                s.add(Box(image_id=image.id, label_id=labels[les["label"]], x=x0, y=y0, width=x1 - x0,
                          height=y1 - y0, source="annotation"))
            if n == 0:  # the hard cases, on one image
                w, h = image.columns, image.rows
                s.add_all([
                    Box(image_id=image.id, label_id=labels["malignant"], x=0.0, y=0.0, width=10.5, height=7.25,
                        source="annotation"),
                    Box(image_id=image.id, label_id=labels["benign"], x=w - 6.0, y=h - 4.0, width=6.0, height=4.0,
                        source="annotation"),
                    Box(image_id=image.id, label_id=odd.id, x=20.3, y=30.6, width=0.37, height=0.41,
                        source="annotation"),
                    Box(image_id=image.id, label_id=labels["benign"], x=w - 3.5, y=5.0, width=9.0, height=3.0,
                        source="annotation"),  # reaches outside: clipped to 3.5 px wide
                ])
            if n == 1:
                s.add_all([
                    Box(image_id=image.id, label_id=labels["malignant"], x=11.0, y=12.0, width=13.0, height=14.0,
                        source="prediction", score=0.9, model_version_id=mv.id),
                    Box(image_id=image.id, label_id=labels["benign"], x=40.0, y=41.0, width=5.0, height=6.0,
                        source="prediction", score=0.3, model_version_id=mv.id),
                ])
            region = e["region"]
            if n == 2:
                s.add(WeakLabel(image_id=image.id, label_id=labels[region], source=LabelSource.manual))
            elif n == 3:
                s.add(WeakLabel(image_id=image.id, label_id=None, source=LabelSource.cluster))  # discarded
            elif n != 4:  # image 4 stays unlabelled
                s.add(WeakLabel(image_id=image.id, label_id=labels.get(region) or labels["chest"],
                                source=LabelSource.cluster))
    return {"truth": truth, "ids": ids, "labels": labels, "model_version": mv.id}


def run_job(db, kind: str, **params):
    """Run a job in this process as the CLI does; the finished Job row."""
    from backend.jobs import enqueue, execute

    return execute(db, enqueue(db, kind, params, send=False).id)


def make_sorter_world(db, sizes=(12, 10, 10), regions=("knee", "hand", "chest"), *, epochs: int = 3,
                      folds: int = 0, **params) -> dict:
    """Images named by cluster decisions (a radiologist "rad" names cluster j as regions[j]) and
    a real sorter trained on them by the "train_sorter" job (tiny: random init, a few epochs),
    with its predictions stored. Returns {"run", "clusters", "ids" (per region), "labels",
    "user", "job" (the finished Job), "model_version" (id or None)}."""
    from sqlalchemy import select

    from backend.clusters.decisions import decide
    from backend.database.schema import Cluster, ClusterMembership, Label

    run_id = make_cluster_run(db, sizes=sizes, regions=regions)
    user = make_user(db, "rad", "radiologist")
    with db.session() as s:
        clusters = list(s.scalars(select(Cluster.id).where(Cluster.run_id == run_id).order_by(Cluster.index)))
        labels = {lab.name: lab.id for lab in s.scalars(select(Label).where(Label.kind == "region"))}
        ids = {r: list(s.scalars(select(ClusterMembership.image_id).where(ClusterMembership.cluster_id == c)
                                 .order_by(ClusterMembership.image_id))) for r, c in zip(regions, clusters)}
    for region, cid in zip(regions, clusters):
        decide(db, "name", cid, user, label_id=labels[region])
    job = run_job(db, "train_sorter", epochs=epochs, folds=folds, min_per_class=2, init="none", **params)
    return {"run": run_id, "clusters": clusters, "ids": ids, "labels": labels, "user": user, "job": job,
            "model_version": (job.result or {}).get("model_version_id")}


def ls_box_results(boxes, width: int, height: int, abnormal: bool | None = None,
                   region: str | None = None) -> list[dict]:
    """A Label Studio annotation's ``result``: (label, (x0, y0, x1, y1) pixels) boxes in percent
    of the image, and optionally the normal/abnormal and body-region choices."""
    from ml_backend.labeling_config import (ABNORMAL, ABNORMAL_FROM_NAME, IMAGE_TO_NAME, LESION_FROM_NAME, NORMAL,
                                            REGION_FROM_NAME)

    result = [{"id": f"r{k}", "from_name": LESION_FROM_NAME, "to_name": IMAGE_TO_NAME, "type": "rectanglelabels",
               "original_width": width, "original_height": height,
               "value": {"x": 100 * x0 / width, "y": 100 * y0 / height, "width": 100 * (x1 - x0) / width,
                         "height": 100 * (y1 - y0) / height, "rotation": 0, "rectanglelabels": [label]}}
              for k, (label, (x0, y0, x1, y1)) in enumerate(boxes)]
    if abnormal is not None:
        result.append({"id": "c", "from_name": ABNORMAL_FROM_NAME, "to_name": IMAGE_TO_NAME, "type": "choices",
                       "value": {"choices": [ABNORMAL if abnormal else NORMAL]}})
    if region is not None:
        result.append({"id": "r", "from_name": REGION_FROM_NAME, "to_name": IMAGE_TO_NAME, "type": "choices",
                       "value": {"choices": [region]}})
    return result


# --------------------------------------------------------------------------- PHI leak detection


def find_phi(blob: bytes | str, phi_strings: Iterable[str]) -> list[str]:
    """Which of ``phi_strings`` occur in ``blob``, case-insensitively.

    For bytes, each variant is searched as UTF-8, Latin-1 and UTF-16 (both byte orders and
    alignments), which covers database files, DICOM files, logs and Windows-style text. DICOM
    person names ('Doe^John') are also searched as their components of four characters or more
    and as 'John Doe' / 'Doe John' / 'Doe, John'; YYYYMMDD dates also as YYYY-MM-DD, YYYY.MM.DD
    and YYYY/MM/DD."""
    if isinstance(blob, str):
        haystack: str | bytes = blob.casefold()
    else:
        haystack = bytes(blob).lower()  # ASCII case folding; the needles get the same treatment
    found: list[str] = []
    for phi in phi_strings:
        if phi in found:
            continue
        needles = _phi_needles(phi, text=isinstance(haystack, str))
        if any(needle in haystack for needle in needles):
            found.append(phi)
    return found


def _phi_variants(phi: str) -> set[str]:
    phi = str(phi).strip()
    if not phi:
        return set()
    variants = {phi}
    if "^" in phi or "=" in phi:
        for group in phi.split("="):
            parts = [p.strip() for p in group.split("^") if p.strip()]
            variants.update(p for p in parts if len(p) >= 4)
            if len(parts) >= 2:
                family, given = parts[0], parts[1]
                variants.update({f"{given} {family}", f"{family} {given}", f"{family}, {given}"})
                variants.add(" ".join(parts))
    date = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", phi)
    if date:
        variants.update(sep.join(date.groups()) for sep in "-./")
    return variants


def _phi_needles(phi: str, text: bool) -> set:
    variants = _phi_variants(phi)
    if text:
        return {v.casefold() for v in variants}
    needles: set[bytes] = set()
    for variant in variants:
        for form in {variant, variant.lower(), variant.upper()}:  # non-ASCII letters differ in bytes
            for codec in ("utf-8", "latin-1", "utf-16-le", "utf-16-be"):
                try:
                    needles.add(form.encode(codec).lower())
                except UnicodeEncodeError:
                    continue
    return needles
