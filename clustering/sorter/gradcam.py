"""Grad-CAM (Selvaraju et al. 2017) for the sorter, via captum: where in the image the network
looked when it chose a class, as an overlay a radiologist can read."""
from __future__ import annotations

import cv2
import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam

from clustering.sorter.model import SorterNet


def gradcam(net: SorterNet, images: np.ndarray, targets) -> np.ndarray:
    """(n, S, S) images and one class index each -> (n, S, S) heat maps in [0, 1]."""
    net.eval()
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None].requires_grad_(True)
    cam = LayerGradCam(net, net.backbone.net.layer4)
    attr = cam.attribute(x, target=torch.as_tensor(np.asarray(targets, dtype=np.int64)), relu_attributions=True)
    up = LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    up = up.detach().clamp_min(0).numpy()
    peak = up.reshape(len(up), -1).max(1)[:, None, None]
    return np.where(peak > 0, up / np.maximum(peak, 1e-12), 0.0).astype(np.float32)


def overlay(image: np.ndarray, heat: np.ndarray, size: int = 256, alpha: float = 0.4) -> np.ndarray:
    """[0, 1] grayscale image and heat map -> BGR uint8 picture (jet colour map over the image)."""
    gray = cv2.resize((np.clip(image, 0, 1) * 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_AREA)
    colour = cv2.applyColorMap(cv2.resize((heat * 255).astype(np.uint8), (size, size)), cv2.COLORMAP_JET)
    return cv2.addWeighted(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), 1 - alpha, colour, alpha, 0)
