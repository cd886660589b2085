"""ml_backend.models.detector on tiny synthetic images: the fit / predict contract, coordinates in the
original pixels, persistence, uncertainty and embeddings; and (slow) that it learns."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ml_backend.models.boxes import Detections
from ml_backend.models.detector import DetectorConfig, LesionDetector
from ml_backend.models.metrics import detection_map
from ml_backend.models.tiles import MIN_VISIBLE, random_tile

CLASSES = ["benign", "malignant"]
TINY = dict(size=128, rois_per_image=16, proposals=100, batch_size=3, epochs=2, lr=0.02)


def squares(n: int, seed: int = 0, empty_every: int = 0):
    """Radiograph stand-ins of varied size and aspect: bright squares are benign, bright squares
    with a dark core malignant; boxes [x, y, w, h]. ``empty_every``: every k-th image is normal."""
    rng = np.random.default_rng(seed)
    images, boxes, labels = [], [], []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(120, 260, 2))
        img = (0.25 + 0.05 * rng.standard_normal((h, w))).astype(np.float32)
        b, lab = [], []
        for k in range(0 if empty_every and i % empty_every == empty_every - 1 else 1 + i % 2):
            s = int(rng.integers(int(0.2 * min(h, w)), int(0.35 * min(h, w))))
            x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
            if any(x < bx + bw and bx < x + s and y < by + bh and by < y + s for bx, by, bw, bh in b):
                continue
            cls = CLASSES[(i + k) % 2]
            img[y : y + s, x : x + s] = 0.85
            if cls == "malignant":
                img[y + s // 4 : y + s - s // 4, x + s // 4 : x + s - s // 4] = 0.1
            b.append([x, y, s, s])
            lab.append(cls)
        images.append(np.clip(img, 0, 1))
        boxes.append(np.array(b, np.float32).reshape(-1, 4))
        labels.append(lab)
    return images, boxes, labels


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: on a shared 2-core machine two threads spin against each other (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return squares(6, empty_every=3)


@pytest.fixture(scope="module")
def trained(data):
    images, boxes, labels = data
    calls = []
    det = LesionDetector(CLASSES, **TINY).fit(images, boxes, labels, val=(images[:2], boxes[:2], labels[:2]),
                                              progress=lambda *a: calls.append(a))
    return det, calls


def test_fit_records_history_and_progress(trained, data):
    det, calls = trained
    assert any(len(b) == 0 for b in data[1])  # normal images were part of the training set
    assert [h.epoch for h in det.history_] == [0, 1]
    for h in det.history_:
        assert np.isfinite(h.loss) and h.loss > 0
        assert set(h.parts) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
        assert h.val_map50 is None or 0 <= h.val_map50 <= 1
    assert calls[-1][0] == calls[-1][1] == 4 and "epoch 2/2" in calls[-1][2]


def test_predictions_are_in_original_pixels(trained):
    det, _ = trained
    base, _, _ = squares(2, seed=5)
    # Images whose long side is already det.config.size, and the same images 2x and 4x larger
    # (nearest-neighbour up, area down: the network sees identical pixels), portrait and landscape.
    bases = [cv2.resize(b, (128, 96)) for b in base[:1]] + [cv2.resize(b, (80, 128)) for b in base[1:]]
    for img in bases:
        big = [cv2.resize(img, None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST) for k in (2, 4)]
        p1, p2, p4 = det.predict([img, *big], score_threshold=0.001)
        assert len(p1) > 0
        for k, pk in ((2, p2), (4, p4)):
            assert pk.labels == p1.labels
            np.testing.assert_allclose(pk.scores, p1.scores, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(pk.boxes, p1.boxes * k, rtol=1e-4, atol=1e-2 * k)
        h, w = big[1].shape
        b = p4.boxes
        assert (b[:, :2] >= -1e-3).all() and (b[:, 0] + b[:, 2] <= w + 1e-2).all() and (b[:, 1] + b[:, 3] <= h + 1e-2).all()
        assert (b[:, 0] + b[:, 2]).max() > 128 * 2  # far outside the network's 128 px frame
    default = det.predict(bases)
    assert all((d.scores >= det.config.score_threshold).all() for d in default)
    assert all(set(d.labels) <= set(CLASSES) for d in default)


def test_save_load_roundtrip(trained, data, tmp_path):
    det, _ = trained
    path = det.save(tmp_path / "models" / "detector.pt")
    assert not list(path.parent.glob("*.tmp"))
    again = LesionDetector.load(path)
    assert again.classes == CLASSES and again.config == det.config
    assert [h.loss for h in again.history_] == [h.loss for h in det.history_]
    for a, b in zip(det.predict(data[0], score_threshold=0.001), again.predict(data[0], score_threshold=0.001)):
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores) and a.labels == b.labels
    torch.save({"something": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a samx lesion detector"):
        LesionDetector.load(tmp_path / "other.pt")


def test_init_weights_from_a_file(trained, data, tmp_path):
    det, _ = trained
    path = det.save(tmp_path / "detector.pt")
    images, boxes, labels = data
    # the same classes, no training: the very same detector
    same = LesionDetector(CLASSES, **{**TINY, "epochs": 0, "bn_images": 0, "init_weights": path})
    same.fit(images, boxes, labels)
    assert same.init_report_["reinitialised"] == [] and same.init_report_["missing"] == 0
    same = LesionDetector.load(same.save(tmp_path / "fine-tuned.pt"))  # and it saves as plain data, a warm start's start
    assert same.config.init_weights == str(path)
    for a, b in zip(det.predict(images[:2]), same.predict(images[:2])):
        assert np.array_equal(a.boxes, b.boxes) and a.labels == b.labels
    # another label set: everything but the box predictor comes over
    other = LesionDetector(["a", "b", "c"], **{**TINY, "epochs": 0, "init_weights": str(path)})
    other.fit(images[:1], [np.zeros((0, 4))], [[]])
    assert sorted(other.init_report_["reinitialised"]) == ["roi_heads.box_predictor.bbox_pred.bias",
                                                          "roi_heads.box_predictor.bbox_pred.weight",
                                                          "roi_heads.box_predictor.cls_score.bias",
                                                          "roi_heads.box_predictor.cls_score.weight"]
    # a backbone that does not fit, and a file that fits nothing, are errors
    state = torch.load(path, weights_only=True)["state_dict"]
    key = next(k for k in state if k.startswith("backbone.") and state[k].ndim == 4)
    torch.save({**state, key: torch.zeros(3, 3, 3, 3)}, tmp_path / "misfit.pt")
    with pytest.raises(ValueError, match="wrong shape"):
        LesionDetector(CLASSES, **{**TINY, "epochs": 0, "init_weights": str(tmp_path / "misfit.pt")}).fit(
            images[:1], [np.zeros((0, 4))], [[]])
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "alien.pt")
    with pytest.raises(ValueError, match="no tensor matches"):
        LesionDetector(CLASSES, **{**TINY, "epochs": 0, "init_weights": str(tmp_path / "alien.pt")}).fit(
            images[:1], [np.zeros((0, 4))], [[]])


def test_analyse_uncertainty_and_embeddings(trained, data):
    det, _ = trained
    images = data[0][:3]
    a = det.analyse(images)
    assert len(a.detections) == len(a.flipped) == 3
    assert a.uncertainty.shape == (3,) and np.isfinite(a.uncertainty).all()
    assert (a.uncertainty >= 0).all()
    assert a.embeddings.shape == (3, det.embedding_dim) and a.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a.embeddings, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(det.uncertainty(images), a.uncertainty)
    # an image's embedding does not depend on the images it is batched with
    np.testing.assert_allclose(det.embed(images[:1])[0], a.embeddings[0], rtol=1e-4, atol=1e-6)
    assert det.embed([]).shape == (0, det.embedding_dim) and det.predict([]) == []


def test_phantom_radiographs_go_through(tmp_path):
    """The real input path: phantom files read at full depth, foreground-equalised, truth boxes
    ([x0, y0, x1, y1] pixels) as [x, y, w, h]; too little training to learn, but every box must
    come back inside its own image."""
    from imaging.enhance import enhance
    from imaging.phantoms.generate import generate_phantoms
    from imaging.reader import read_radiograph

    truth = generate_phantoms(tmp_path, 4, seed=3, fmt="png", size=192, lesion_rate=1.0, workers=1)
    images, boxes, labels = [], [], []
    for entry in truth["images"]:
        images.append(enhance(read_radiograph(tmp_path / entry["file"]).pixels, "fhe"))
        xyxy = np.array([les["box"] for les in entry["lesions"]], np.float32).reshape(-1, 4)
        boxes.append(np.c_[xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]])
        labels.append([les["label"] for les in entry["lesions"]])
    assert sum(map(len, boxes)) > 0
    det = LesionDetector(CLASSES, **{**TINY, "epochs": 1, "batch_size": 2}).fit(images, boxes, labels)
    for img, pred in zip(images, det.predict(images, score_threshold=0.0)):
        h, w = img.shape
        assert len(pred) and (pred.boxes[:, 0] + pred.boxes[:, 2] <= w + 1e-3).all()
        assert (pred.boxes[:, 1] + pred.boxes[:, 3] <= h + 1e-3).all() and (pred.boxes >= -1e-3).all()


@pytest.mark.parametrize("arch, dim", [("mobilenet_v3_320", 3 * 256), ("resnet18_fpn", 5 * 128),
                                       ("resnet50_fpn", 5 * 256)])
def test_other_architectures(arch, dim):
    assert DetectorConfig(arch=arch).size == (320 if arch.endswith("_320") else 512)
    img = np.random.default_rng(0).random((90, 70), dtype=np.float32)
    det = LesionDetector(CLASSES, arch=arch, size=64, epochs=0, bn_images=0).fit([img], [np.zeros((0, 4))], [[]])
    (pred,), emb = det.predict([img], score_threshold=0.0), det.embed([img])
    assert emb.shape == (1, dim) and det.embedding_dim == dim
    assert len(pred) and (pred.boxes[:, 0] + pred.boxes[:, 2] <= 70 + 1e-3).all()
    with pytest.raises(ValueError, match="anchor sizes"):
        LesionDetector(CLASSES, arch=arch, size=64, epochs=0, anchor_sizes=(16, 32)).fit([img], [np.zeros((0, 4))], [[]])


def test_resnet18_fpn_box_heads_save_and_load(tmp_path):
    """The GroupNorm'd conv head (for AdamW, ml_backend.models.resnet18_fpn) is kept in the file's
    config; files saved before the choice existed load with the MLP head they have."""
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead

    img = np.random.default_rng(0).random((90, 70), dtype=np.float32)
    tiny = dict(arch="resnet18_fpn", size=64, epochs=0, bn_images=0)
    for head, kind in (("conv_gn", FastRCNNConvFCHead), ("mlp", TwoMLPHead)):
        det = LesionDetector(CLASSES, **tiny, box_head=head).fit([img], [np.zeros((0, 4))], [[]])
        assert isinstance(det.model_.roi_heads.box_head, kind)
        normed = any(isinstance(m, torch.nn.GroupNorm) for m in det.model_.roi_heads.box_head.modules())
        assert normed == (head == "conv_gn")
        state = det.state()
        if head == "mlp":
            del state["config"]["box_head"]  # as files saved before the field existed
        torch.save(state, tmp_path / f"{head}.pt")
        loaded = LesionDetector.load(tmp_path / f"{head}.pt")
        assert isinstance(loaded.model_.roi_heads.box_head, kind) and loaded.config.box_head == head
        (a,), (b,) = det.predict([img], score_threshold=0.0), loaded.predict([img], score_threshold=0.0)
        assert np.allclose(a.boxes, b.boxes, atol=1e-3) and np.allclose(a.scores, b.scores, atol=1e-5)
    with pytest.raises(ValueError, match="box_head"):
        DetectorConfig(box_head="mlp3")


def test_random_tile_cuts_boxes_and_keeps_labels():
    img = np.arange(200 * 300, dtype=np.float32).reshape(200, 300)
    boxes = np.array([[10, 20, 30, 40], [250, 150, 290, 190]], np.float32)
    labels = np.array([1, 2])
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        tile, b, lab = random_tile(img, boxes, labels, 64, focus=1.0, gen=gen)
        assert tile.shape == (64, 64) and len(b) >= 1 and len(b) == len(lab)  # focus 1: a lesion is always in
        top, left = divmod(int(tile[0, 0]), 300)  # the pixel values say where the tile was cut
        assert np.array_equal(tile, img[top : top + 64, left : left + 64])
        for box, k in zip(b, lab):
            whole = boxes[k - 1] - [left, top, left, top]
            assert (box >= 0).all() and (box <= 64).all() and (box[2:] > box[:2]).all()
            assert np.allclose(box, np.clip(whole, 0, 64))  # the same lesion, cut to the tile
            assert np.prod(box[2:] - box[:2]) >= MIN_VISIBLE * np.prod(whole[2:] - whole[:2])
    small, b, lab = random_tile(img[:40, :50], boxes[:1], labels[:1], 64, focus=0.0, gen=gen)
    assert small.shape == (64, 64) and (small[40:] == 0).all() and (small[:, 50:] == 0).all()
    assert np.allclose(b, [[10, 20, 30, 40]]) and lab.tolist() == [1]
    empty = random_tile(img, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 64, focus=1.0, gen=gen)
    assert empty[1].shape == (0, 4) and len(empty[2]) == 0


def test_tile_training_predicts_whole_images(data, tmp_path):
    """Trained on 64 px tiles, the network still sees (and answers for) whole images at ``size``."""
    images, boxes, labels = data
    calls = []
    det = LesionDetector(CLASSES, **{**TINY, "arch": "resnet18_fpn", "tile": 64, "tiles_per_image": 3,
                                     "epochs": 1}).fit(images, boxes, labels, progress=lambda *a: calls.append(a))
    assert calls[-1][1] == 6  # 6 images x 3 tiles, batches of 3
    assert det.model_.transform.min_size == (128,) and det.model_.transform.max_size == 128
    preds = det.predict(images, score_threshold=0.0)
    for img, pred in zip(images, preds):
        h, w = img.shape
        assert len(pred) and (pred.boxes[:, 0] + pred.boxes[:, 2] <= w + 1e-3).all()
        assert (pred.boxes[:, 1] + pred.boxes[:, 3] <= h + 1e-3).all()
    again = LesionDetector.load(det.save(tmp_path / "tiled.pt")).predict(images, score_threshold=0.0)
    for a, b in zip(preds, again):  # a loaded model is built for whole images: same answers
        assert np.allclose(a.boxes, b.boxes, atol=1e-3) and np.allclose(a.scores, b.scores, atol=1e-5)
    with pytest.raises(ValueError, match="tile must be"):
        DetectorConfig(size=128, tile=160)
    with pytest.raises(ValueError, match="tile must be"):
        DetectorConfig(size=128, tile=100)


def test_bad_training_input_is_refused():
    det = LesionDetector(CLASSES, **TINY)
    img = np.zeros((64, 64), np.float32)
    with pytest.raises(ValueError, match="unknown classes"):
        det.fit([img], [[[1, 1, 5, 5]]], [["fracture"]])
    with pytest.raises(ValueError, match="positive width"):
        det.fit([img], [[[1, 1, 0, 5]]], [["benign"]])
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        det.fit([img], [[[1, 1, 5, 5], [2, 2, 5, 5]]], [["benign"]])
    with pytest.raises(ValueError, match="2-D grayscale"):
        det.fit([np.zeros((8, 8, 3), np.float32)], [np.zeros((0, 4))], [[]])
    with pytest.raises(ValueError, match="multiple of 32"):
        DetectorConfig(size=100)
    with pytest.raises(RuntimeError, match="not trained"):
        det.predict([img])


def test_a_first_training_on_a_handful_of_images_works(data):
    """Four annotated images and one epoch are two optimiser steps: the schedule must cope."""
    images, boxes, labels = data
    det = LesionDetector(CLASSES, **{**TINY, "epochs": 1, "batch_size": 4}).fit(images[:4], boxes[:4], labels[:4])
    assert len(det.history_) == 1 and np.isfinite(det.history_[0].loss)
    from ml_backend.models.abnormality import AbnormalityClassifier

    clf = AbnormalityClassifier(size=64, epochs=1, batch_size=4).fit(images[:2], [0, 1])
    assert clf.predict_proba(images[:2]).shape == (2,)


def test_training_is_deterministic(data):
    images, boxes, labels = data
    cfg = {**TINY, "epochs": 1, "bn_images": 4}
    a = LesionDetector(CLASSES, **cfg).fit(images[:3], boxes[:3], labels[:3])
    b = LesionDetector(CLASSES, **cfg).fit(images[:3], boxes[:3], labels[:3])
    assert a.history_[0].loss == b.history_[0].loss
    for x, y in zip(a.predict(images[:2]), b.predict(images[:2])):
        assert np.array_equal(x.boxes, y.boxes) and np.array_equal(x.scores, y.scores)


@pytest.mark.slow
def test_detector_learns_the_lesions():
    """From scratch on 8 images, 100 steps (about two minutes on one busy CPU core): the losses
    must fall, and the training images' mAP@0.5 must rise from ~0 (untrained) well above it."""
    images, boxes, labels = squares(8)
    cfg = {**TINY, "epochs": 50, "batch_size": 4, "lr": 0.03, "scale_jitter": 0.0, "brightness": 0.0,
           "contrast": 0.0, "gamma": (1.0, 1.0)}
    det = LesionDetector(CLASSES, **cfg).fit(images, boxes, labels)
    first, last = det.history_[0], det.history_[-1]
    assert last.loss < 0.5 * first.loss
    assert last.parts["loss_objectness"] < 0.5 * first.parts["loss_objectness"]
    gt = [Detections(b, None, lab) for b, lab in zip(boxes, labels)]
    trained_map = detection_map(gt, det.predict(images, score_threshold=0.001), CLASSES)["map50"]
    untrained = LesionDetector(CLASSES, **{**cfg, "epochs": 0}).fit(images, boxes, labels)
    untrained_map = detection_map(gt, untrained.predict(images, score_threshold=0.001), CLASSES)["map50"]
    assert untrained_map < 0.05
    print(f"train mAP@0.5: untrained {untrained_map:.3f}, trained {trained_map:.3f}")
    assert trained_map > 0.25, (trained_map, [round(h.loss, 3) for h in det.history_])
