"""Faster R-CNN on ResNet-18 with a narrow FPN: the CPU architecture for small lesions.

torchvision builds Faster R-CNN only on MobileNetV3 (finest feature map at stride 16: a 10 px
lesion falls between its cells) and ResNet-50 (stride 4, but about 4x the compute). This one
keeps ResNet-50-FPN's five levels (strides 4 to 64, so anchors and embeddings work the same)
on ResNet-18, with 128 FPN channels and a 256-wide box head: on 2 CPU cores a 128 px tile
trains in about 0.15 s. Built from torchvision's parts; nothing here is hand-written but the
sizes. Its body is torchvision's resnet18 on three channels, or training.backbone's network in
any shape (``backbone``): the one DeepCluster trains on every image, so the detector can start
from it (SAM-X's transfer learning).

Two box heads: torchvision's two-layer MLP ("mlp", the default) and Faster R-CNN v2's kind
("conv_gn", as in ``fasterrcnn_resnet50_fpn_v2``: a GroupNorm'd conv before one fully connected
layer). AdamW at 1e-3 kills the MLP from scratch: after 1200 steps on 60 phantoms, 254 of its
first layer's 256 ReLUs never fired, every box scored about the same and test mAP@0.5 was 0.011;
with "conv_gn" 20 of 256 fired and mAP was 0.044. Under SGD (what ``samx train detector`` uses)
the MLP stays alive (253 of 256) and "conv_gn" gained nothing there (0.008 against 0.022, one
seed each), so it is the head for AdamW, as in the active-learning bench."""
from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from training.backbone import ARCHS, Backbone

FPN_CHANNELS = 128
BOX_HEAD = 256
BOX_HEADS = ("mlp", "conv_gn")


class _FirstChannel(nn.Module):
    """The detector feeds three equal channels (for torchvision's RGB bodies); training.backbone's
    network takes one, or its Sobel edges."""

    def __init__(self, sobel: nn.Module):
        super().__init__()
        self.sobel = sobel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sobel(x[:, :1])


def shared_body(config: dict) -> tuple[nn.Sequential, list[int]]:
    """training.backbone's ResNet (the network DeepCluster trains, any width, Sobel or not) as a
    sequence of stages IntermediateLayerGetter can cut, and the channels of layer1..layer4. Its
    tensors keep the backbone's names less ``net.``, so its saved files load (training.weights)."""
    backbone = Backbone(**config)
    net, expansion = backbone.net, ARCHS[config["arch"]][0].expansion
    stages = OrderedDict(input=_FirstChannel(backbone.sobel), conv1=net.conv1, bn1=net.bn1, relu=net.relu,
                         maxpool=net.maxpool, layer1=net.layer1, layer2=net.layer2, layer3=net.layer3, layer4=net.layer4)
    return nn.Sequential(stages), [config["width"] * expansion * 2**k for k in range(4)]


def fasterrcnn_resnet18_fpn(*, weights=None, weights_backbone=None, num_classes: int, box_head: str = "mlp",
                            backbone: dict | None = None, **kwargs) -> FasterRCNN:
    """Same call as torchvision's builders (``weights`` must be None: there are no published ones).
    ``backbone``: a training.backbone config ({"arch", "width", "sobel"}) for the body, e.g. the
    DeepCluster network's shape so its weights fit; None: torchvision's resnet18 on three channels."""
    if weights is not None or weights_backbone is not None:
        raise ValueError("resnet18_fpn has no downloadable weights; pass init_weights instead")
    if box_head not in BOX_HEADS:
        raise ValueError(f"box_head must be one of {BOX_HEADS}, not {box_head!r}")
    if backbone is None:
        body, channels = resnet18(weights=None, norm_layer=nn.BatchNorm2d), [64, 128, 256, 512]  # trainable BatchNorm, as torchvision does from scratch
    else:
        body, channels = shared_body(backbone)
    layers = {f"layer{k}": str(k - 1) for k in range(1, 5)}
    backbone = BackboneWithFPN(body, layers, channels, FPN_CHANNELS, extra_blocks=LastLevelMaxPool())
    # GroupNorm, not BatchNorm: its statistics are the same in training (tiles) and prediction (whole images)
    head = (FastRCNNConvFCHead((FPN_CHANNELS, 7, 7), [FPN_CHANNELS], [BOX_HEAD], norm_layer=partial(nn.GroupNorm, 32))
            if box_head == "conv_gn" else TwoMLPHead(FPN_CHANNELS * 7 * 7, BOX_HEAD))
    return FasterRCNN(backbone, None, box_head=head, box_predictor=FastRCNNPredictor(BOX_HEAD, num_classes), **kwargs)
