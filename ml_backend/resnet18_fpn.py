"""Faster R-CNN on ResNet-18 with a narrow FPN: the CPU architecture for small lesions.

torchvision builds Faster R-CNN only on MobileNetV3 (finest feature map at stride 16: a 10 px
lesion falls between its cells) and ResNet-50 (stride 4, but about 4x the compute). This one
keeps ResNet-50-FPN's five levels (strides 4 to 64, so anchors and embeddings work the same)
on ResNet-18, with 128 FPN channels and a 256-wide box head: on 2 CPU cores a 128 px tile
trains in about 0.15 s. Built from torchvision's parts; nothing here is hand-written but the
sizes."""
from __future__ import annotations

from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

FPN_CHANNELS = 128
BOX_HEAD = 256


def fasterrcnn_resnet18_fpn(*, weights=None, weights_backbone=None, num_classes: int, **kwargs) -> FasterRCNN:
    """Same call as torchvision's builders (``weights`` must be None: there are no published ones)."""
    if weights is not None or weights_backbone is not None:
        raise ValueError("resnet18_fpn has no downloadable weights; pass init_weights instead")
    body = resnet18(weights=None, norm_layer=nn.BatchNorm2d)  # from scratch: trainable BatchNorm, as torchvision does
    layers = {f"layer{k}": str(k - 1) for k in range(1, 5)}
    backbone = BackboneWithFPN(body, layers, [64, 128, 256, 512], FPN_CHANNELS, extra_blocks=LastLevelMaxPool())
    return FasterRCNN(backbone, None, box_head=TwoMLPHead(FPN_CHANNELS * 7 * 7, BOX_HEAD),
                      box_predictor=FastRCNNPredictor(BOX_HEAD, num_classes), **kwargs)
