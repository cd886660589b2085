"""The one backbone every samx model can start from: a torchvision ResNet on grayscale
radiographs, at any width, optionally behind fixed Sobel filters (DeepCluster's input).

It lives here, below clustering and ml_backend, so that the network DeepCluster trains on every
unlabelled image can initialise the sorter and the abnormality classifier alike; its state dict
names (``sobel.weight``, ``net.conv1.weight``, ...) are those of every saved file, so keep them."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

ARCHS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
         "resnet50": (Bottleneck, [3, 4, 6, 3])}


class Sobel(nn.Module):
    """Fixed Sobel filters, as in DeepCluster: the network sees edges, not raw brightness, so
    exposure and detector differences cannot become what clusters are made of."""

    def __init__(self):
        super().__init__()
        gx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        self.register_buffer("weight", torch.stack([gx, gx.T])[:, None])  # (2, 1, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.weight, padding=1)


class Backbone(nn.Module):
    """(N, 1, H, W) in [0, 1] -> (N, out_dim) pooled features.

    ``width`` scales the channel counts (64 = torchvision's ResNet): torchvision hard-codes
    64-128-256-512, so the stem and stages are rebuilt with its own ``_make_layer``."""

    def __init__(self, arch: str = "resnet18", width: int = 64, sobel: bool = True):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
        block, layers = ARCHS[arch]
        net = ResNet(block, layers)
        net.inplanes = width
        net.conv1 = nn.Conv2d(2 if sobel else 1, width, kernel_size=7, stride=2, padding=3, bias=False)
        net.bn1 = nn.BatchNorm2d(width)
        net.layer1 = net._make_layer(block, width, layers[0])
        net.layer2 = net._make_layer(block, width * 2, layers[1], stride=2)
        net.layer3 = net._make_layer(block, width * 4, layers[2], stride=2)
        net.layer4 = net._make_layer(block, width * 8, layers[3], stride=2)
        net.fc = nn.Identity()
        for m in net.modules():  # torchvision's own initialisation, re-applied to the rebuilt layers
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.sobel = Sobel() if sobel else nn.Identity()
        self.net = net
        self.out_dim = width * 8 * block.expansion
        self.config = {"arch": arch, "width": width, "sobel": sobel}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.sobel(x))
