"""Pretrained weights as users have them (training.weights): torchvision's files in the torch hub
cache under their exact names, samx model files, 3 -> 1 channel adaptation, refusals. The files
are built here in torchvision's layout with random values; nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from clustering.deepcluster import DeepCluster, DeepClusterConfig
from training.backbone import Backbone
from training.weights import WeightsError, hub_file, load_into


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """A torch hub cache of this test's own (what $TORCH_HOME/hub is on a user's machine)."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def _torchvision_file(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's own model with random values, saved where and as torchvision's API looks for it."""
    torch.manual_seed(1)
    state = getattr(torchvision.models, arch)(weights=None).state_dict()
    path = hub_file(arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_imagenet_by_name_from_the_hub_cache_adapts_the_first_convolution(hub):
    state = _torchvision_file("resnet18")
    assert hub_file("resnet18") == hub / "checkpoints" / "resnet18-f37072fd.pth"  # torchvision's file name
    net = Backbone("resnet18", width=64, sobel=False)
    report = load_into(net, "imagenet", arch="resnet18", allow_download=False)
    assert report.source == "torchvision ResNet18_Weights.IMAGENET1K_V1"
    assert report.adapted == ["net.conv1.weight: 3 -> 1 input channel (kernels summed)"]
    assert sorted(report.unused) == ["net.fc.bias", "net.fc.weight"] and report.missing == []  # the classifier head
    assert torch.equal(net.net.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(net.net.bn1.running_var, state["bn1.running_var"])
    # a grey radiograph fed as R = G = B answers through the summed kernel exactly as in colour
    grey = torch.rand(1, 1, 32, 32)
    colour = torch.nn.functional.conv2d(grey.repeat(1, 3, 1, 1), state["conv1.weight"], stride=2, padding=3)
    assert torch.allclose(net.net.conv1(grey), colour, atol=1e-5)


def test_missing_file_names_where_to_put_it(hub):
    with pytest.raises(WeightsError, match=r"place resnet18-f37072fd\.pth in .*hub/checkpoints"):
        load_into(Backbone("resnet18", 64, sobel=False), "imagenet", arch="resnet18", allow_download=False)
    with pytest.raises(WeightsError, match="no weights file"):
        load_into(Backbone("resnet18", 64, sobel=False), hub / "nothing.pth", arch="resnet18")


def test_another_width_or_architecture_is_refused(hub, tmp_path):
    _torchvision_file("resnet18")
    with pytest.raises(WeightsError, match="wrong shape|another architecture or width"):
        load_into(Backbone("resnet18", width=32, sobel=False), "imagenet", arch="resnet18", allow_download=False)
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(WeightsError, match="no place for"):  # same shapes where they overlap: still refused
        load_into(Backbone("resnet18", width=64, sobel=False), tmp_path / "r34.pth", arch="resnet18")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "alien.pth")
    with pytest.raises(WeightsError, match="no tensor matches"):
        load_into(Backbone("resnet18", width=64, sobel=False), tmp_path / "alien.pth", arch="resnet18")
    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(WeightsError, match="not a PyTorch weights file"):
        load_into(Backbone("resnet18", width=64, sobel=False), tmp_path / "text.pth", arch="resnet18")


def test_deepcluster_starts_from_a_samx_model_file_and_records_it(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((48, 32, 32)).astype(np.float16)
    tiny = dict(k=4, epochs=1, width=8, pca_dim=4, batch_size=16, epoch_samples=48, seed=0)
    first = DeepCluster(DeepClusterConfig(**tiny, sobel=False)).fit(images)
    first.save(tmp_path / "first.pt")  # a samx DeepCluster file: its "backbone" is used
    start = {k: v.clone() for k, v in first.backbone_.state_dict().items()}
    cfg = DeepClusterConfig(**{**tiny, "epochs": 0}, weights=str(tmp_path / "first.pt"))
    assert cfg.sobel is False  # pretrained filters see intensities
    second = DeepCluster(cfg).fit(images)
    assert second.init_report_["source"] == str(tmp_path / "first.pt") and second.init_report_["missing"] == []
    for name, value in second.backbone_.state_dict().items():  # no epoch: exactly the start
        assert torch.equal(value, start[name]), name
    again = DeepCluster.load(second.save(tmp_path / "second.pt"))
    assert again.init_report_ == second.init_report_ and again.config.weights == str(tmp_path / "first.pt")
    with pytest.raises(WeightsError, match="width 8 cannot take torchvision's ImageNet weights"):
        DeepCluster(DeepClusterConfig(**tiny, weights="imagenet")).fit(images)


# -- the detector's backbone ------------------------------------------------------------------------

def _detector(**config):
    """An untrained detector whose network is built (and its weights loaded): fit with no epoch."""
    from ml_backend.models.detector import LesionDetector

    img = np.zeros((64, 64), np.float32)
    return LesionDetector(["lesion"], size=64, epochs=0, bn_images=0, **config).fit([img], [np.zeros((0, 4))], [[]])


def test_detector_backbones_take_imagenet_by_name(hub):
    r18 = _torchvision_file("resnet18")
    det = _detector(arch="resnet18_fpn", backbone_weights="imagenet")
    body = det.model_.backbone.body
    assert det.init_report_["source"] == "torchvision ResNet18_Weights.IMAGENET1K_V1" and det.init_report_["part"] == "backbone"
    assert det.init_report_["adapted"] == [] and det.config.backbone is None  # torchvision's body, on 3 channels
    assert torch.equal(body.layer3[1].conv2.weight, r18["layer3.1.conv2.weight"])
    assert torch.equal(body.conv1.weight, r18["conv1.weight"])
    mnv3 = _torchvision_file("mobilenet_v3_large")
    det = _detector(arch="mobilenet_v3", backbone_weights="imagenet")
    assert det.init_report_["source"].startswith("torchvision MobileNet_V3_Large_Weights")
    assert torch.equal(det.model_.backbone.body["16"][0].weight, mnv3["features.16.0.weight"])
    assert not any(k.startswith("features.") for k in det.init_report_["unused"])  # only the classifier is left
    with pytest.raises(WeightsError, match="does not fit|no tensor matches"):  # ResNet weights into a MobileNet
        _detector(arch="mobilenet_v3", backbone_weights=str(hub_file("resnet18")))


def test_detector_backbone_from_deepcluster_takes_its_shape_and_survives_save(tmp_path):
    from ml_backend.models.detector import LesionDetector

    rng = np.random.default_rng(0)
    images = rng.random((48, 32, 32)).astype(np.float16)
    dc = DeepCluster(DeepClusterConfig(k=4, epochs=1, width=8, pca_dim=4, batch_size=16, epoch_samples=48, seed=0)).fit(images)
    dc.save(tmp_path / "dc.pt")
    det = _detector(arch="resnet18_fpn", backbone_weights=str(tmp_path / "dc.pt"))
    assert det.config.backbone == {"arch": "resnet18", "width": 8, "sobel": True}  # DeepCluster's shape
    body, net = det.model_.backbone.body, dc.backbone_.net
    assert torch.equal(body.layer4[1].conv2.weight, net.layer4[1].conv2.weight)
    assert torch.equal(body.bn1.running_mean, net.bn1.running_mean)
    assert det.init_report_["missing"] == ["input.sobel.weight"]  # fixed filters, the same in every network
    assert det.init_report_["loaded"] > 50
    # the Sobel edges of the first channel are what the body sees, as in DeepCluster
    x = torch.rand(1, 1, 64, 64)
    assert torch.allclose(body.conv1(body.input(x.expand(1, 3, -1, -1))), net.conv1(dc.backbone_.sobel(x)))
    again = LesionDetector.load(det.save(tmp_path / "det.pt"))
    assert again.config.backbone == det.config.backbone
    img = rng.random((80, 96)).astype(np.float32)
    a, b = det.predict([img], score_threshold=0.0)[0], again.predict([img], score_threshold=0.0)[0]
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
    with pytest.raises(ValueError, match="only resnet18_fpn"):
        LesionDetector(["lesion"], arch="mobilenet_v3", backbone={"arch": "resnet18", "width": 8, "sobel": True})
