"""ml_backend.models.abnormality: a tiny normal / abnormal classifier that learns, and survives a save."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ml_backend.models.abnormality import AbnormalityClassifier
from ml_backend.models.metrics import auroc_ci


def images(n: int, seed: int = 0):
    """Abnormal (every third image, a minority): a bright blob somewhere; sizes and aspects vary."""
    rng = np.random.default_rng(seed)
    out, y = [], []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(60, 120, 2))
        img = (0.3 + 0.05 * rng.standard_normal((h, w))).astype(np.float32)
        if i % 3 == 0:
            s = int(min(h, w) * 0.3)
            x0, y0 = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
            img[y0 : y0 + s, x0 : x0 + s] = 0.9
        out.append(np.clip(img, 0, 1))
        y.append(int(i % 3 == 0))
    return out, np.array(y)


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_classifier_learns_and_round_trips(one_thread, tmp_path):
    x, y = images(36)
    held_out, y_held_out = images(30, seed=9)
    clf = AbnormalityClassifier(size=64, epochs=6, batch_size=12).fit(x, y, val=(held_out, y_held_out))
    p = clf.predict_proba(held_out)
    assert p.shape == (30,) and ((p >= 0) & (p <= 1)).all()
    assert auroc_ci(y_held_out, p, n_boot=0)["auroc"] > 0.9  # 1.0 measured, for seeds 0, 1 and 2
    assert clf.history_[-1].loss < clf.history_[0].loss
    assert all(h.val_auroc is not None for h in clf.history_)
    again = AbnormalityClassifier.load(clf.save(tmp_path / "abn.pt"))
    np.testing.assert_array_equal(again.predict_proba(held_out), p)
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        AbnormalityClassifier(size=64).fit(x[:2], [0, 2])


# ------------------------------------------------------------------ pretrained starts (issue 24)
# Weight files in torchvision's exact layout with random values, and a real (tiny) DeepCluster
# file: nothing is downloaded. epochs=0: the start itself, as fit leaves it (BatchNorm statistics
# recomputed, no weight trained).

QUICK = dict(size=64, epochs=0, batch_size=4, bn_images=4)


def _saved(state: dict, path) -> str:
    torch.save(state, path)
    return str(path)


def test_starts_from_a_torchvision_resnet18_file_and_imagenet_by_name(tmp_path, one_thread):
    import torchvision

    from training.weights import hub_file

    x, y = images(4)
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    clf = AbnormalityClassifier(**QUICK, weights=_saved(state, tmp_path / "r18.pth")).fit(x, y)
    assert clf.config.backbone == {"arch": "resnet18", "width": 64, "sobel": False}
    report = clf.init_report_
    assert report["adapted"] == ["net.conv1.weight: 3 -> 1 input channel (kernels summed)"]
    assert sorted(report["unused"]) == ["net.fc.bias", "net.fc.weight"] and report["missing"] == []
    net = clf.net_.backbone.net
    assert torch.equal(net.layer3[1].conv2.weight.cpu(), state["layer3.1.conv2.weight"])
    assert torch.allclose(net.conv1.weight.cpu(), state["conv1.weight"].sum(1, keepdim=True))
    again = AbnormalityClassifier.load(clf.save(tmp_path / "abn.pt"))
    assert again.init_report_ == report and again.config.weights == str(tmp_path / "r18.pth")
    np.testing.assert_array_equal(again.predict_proba(x), clf.predict_proba(x))

    old_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))  # a torch hub cache of this test's own
    try:
        hub_file("resnet18").parent.mkdir(parents=True)
        torch.save(state, hub_file("resnet18"))
        by_name = AbnormalityClassifier(**QUICK, weights="imagenet").fit(x, y)
    finally:
        torch.hub.set_dir(old_hub)
    assert by_name.init_report_["source"] == "torchvision ResNet18_Weights.IMAGENET1K_V1"
    assert torch.equal(by_name.net_.backbone.net.layer4[0].conv1.weight.cpu(), state["layer4.0.conv1.weight"])


def test_starts_from_a_saved_deepcluster_backbone_of_its_shape(tmp_path, one_thread):
    from clustering.deepcluster import DeepCluster, DeepClusterConfig

    x, y = images(4)
    unlabelled = np.random.default_rng(0).random((16, 32, 32)).astype(np.float16)
    dc = DeepCluster(DeepClusterConfig(k=2, epochs=0, width=32, sobel=True, pca_dim=4, seed=5)).fit(unlabelled)
    path = str(dc.save(tmp_path / "deepcluster.pt"))
    clf = AbnormalityClassifier(**QUICK, weights=path).fit(x, y)
    assert clf.config.backbone == {"arch": "resnet18", "width": 32, "sobel": True}  # read from the file
    assert clf.init_report_["source"] == path and clf.init_report_["missing"] == []
    mine, theirs = clf.net_.backbone.state_dict(), dc.backbone_.state_dict()
    assert torch.equal(mine["sobel.weight"], theirs["sobel.weight"])
    assert torch.equal(mine["net.layer2.0.conv1.weight"], theirs["net.layer2.0.conv1.weight"])
    scratch = AbnormalityClassifier(**QUICK, backbone=clf.config.backbone).fit(x, y)
    assert scratch.init_report_ is None
    assert not torch.equal(scratch.net_.backbone.net.layer2[0].conv1.weight, mine["net.layer2.0.conv1.weight"])
    assert not np.allclose(scratch.predict_proba(x), clf.predict_proba(x))
    again = AbnormalityClassifier.load(clf.save(tmp_path / "abn.pt"))
    np.testing.assert_array_equal(again.predict_proba(x), clf.predict_proba(x))
    # a sorter file (clustering.sorter.model.Sorter.state): its network's backbone, its head left out
    sorter = {"classes": ["a", "b", "c"], "config": {"arch": "resnet18", "width": 32, "sobel": True, "epochs": 1},
              "net": {**{f"backbone.{k}": v for k, v in theirs.items()}, "head.weight": torch.zeros(3, 256),
                      "head.bias": torch.zeros(3)}}
    from_sorter = AbnormalityClassifier(**QUICK, weights=_saved(sorter, tmp_path / "sorter.pt")).fit(x, y)
    assert from_sorter.config.backbone == clf.config.backbone and from_sorter.init_report_["missing"] == []
    assert torch.equal(from_sorter.net_.backbone.state_dict()["net.layer2.0.conv1.weight"],
                       theirs["net.layer2.0.conv1.weight"])


def test_refuses_weights_of_another_architecture(tmp_path):
    import torchvision

    from training.weights import WeightsError

    x, y = images(4)
    path = _saved(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(WeightsError, match="does not fit this resnet18"):
        AbnormalityClassifier(**QUICK, weights=path).fit(x, y)


def test_a_first_format_file_still_loads(tmp_path):
    """samx.abnormality/1 held torchvision's resnet18 with a one-channel first convolution."""
    import torchvision
    from dataclasses import asdict

    from ml_backend.models.abnormality import AbnormalityConfig
    from ml_backend.models.preprocess import letterbox

    torch.manual_seed(2)
    net = torchvision.models.resnet18(weights=None, num_classes=2)
    net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    for m in net.modules():  # non-trivial BatchNorm statistics, so a mapping mistake would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    config = {k: v for k, v in asdict(AbnormalityConfig(size=64)).items() if k not in ("weights", "backbone")}
    torch.save({"format": "samx.abnormality/1", "config": config, "state_dict": net.state_dict(),
                "history": [{"epoch": 0, "loss": 0.5, "seconds": 1.0, "val_auroc": None}]}, tmp_path / "old.pt")
    clf = AbnormalityClassifier.load(tmp_path / "old.pt", device="cpu")
    x, _ = images(3)
    with torch.no_grad():
        want = torch.softmax(net.eval()(torch.from_numpy(np.stack([letterbox(i, 64) for i in x]))[:, None]), 1)[:, 1]
    np.testing.assert_allclose(clf.predict_proba(x), want.numpy(), rtol=1e-5, atol=1e-6)
    assert clf.init_report_ is None and clf.config.backbone is None
