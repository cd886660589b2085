"""Training augmentations: what differs between radiographs of the same lesion.

Horizontal flip is on here (unlike the sorter's): a lesion looks the same on the left and the
right limb, and laterality is not what the detector is asked. Scale jitter is a zoom on a fixed
canvas (RandomAffine), so the detector's own resize does not undo it; brightness, contrast and
gamma stand in for the exposure and processing curves of different machines."""
from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


class RandomGamma(v2.Transform):
    """v2 has no gamma jitter (only the functional), so this wraps ``F.adjust_gamma``; boxes pass
    through untouched."""

    def __init__(self, gamma: tuple[float, float] = (0.7, 1.4), p: float = 0.5):
        super().__init__()
        self.gamma, self.p = gamma, p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        apply = bool(torch.rand(()) < self.p)
        lo, hi = torch.log(torch.tensor(self.gamma, dtype=torch.float64))
        return {"gamma": float(torch.exp(lo + (hi - lo) * torch.rand((), dtype=torch.float64))) if apply else 1.0}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["gamma"] == 1.0:
            return inpt
        return self._call_kernel(F.adjust_gamma, inpt, gamma=params["gamma"])


def photometric(brightness: float, contrast: float, gamma: tuple[float, float]) -> list[v2.Transform]:
    return [v2.RandomApply([v2.ColorJitter(brightness=brightness, contrast=contrast)], p=0.8),
            RandomGamma(gamma)]


def detection_transform(hflip: bool = True, scale_jitter: float = 0.2, brightness: float = 0.2,
                        contrast: float = 0.2, gamma: tuple[float, float] = (0.7, 1.4)) -> v2.Compose:
    """For ``(tv_tensors.Image, {"boxes": BoundingBoxes, "labels": tensor})``. Boxes pushed off
    the canvas are clipped, and dropped (with their labels) when less than 1 px remains."""
    steps: list[v2.Transform] = []
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if scale_jitter > 0:
        steps.append(v2.RandomAffine(degrees=0, translate=(0.05, 0.05), scale=(1 - scale_jitter, 1 + scale_jitter)))
    steps += photometric(brightness, contrast, gamma)
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1)]
    return v2.Compose(steps)


def classification_transform(hflip: bool = True, scale_jitter: float = 0.15) -> v2.Compose:
    """For a (1, S, S) image tensor: normal / abnormal does not change under these."""
    steps: list[v2.Transform] = [v2.RandomHorizontalFlip()] if hflip else []
    steps.append(v2.RandomAffine(degrees=7, translate=(0.05, 0.05), scale=(1 - scale_jitter, 1 + scale_jitter)))
    steps += photometric(0.2, 0.2, (0.7, 1.4))
    return v2.Compose(steps)


def as_sample(img: torch.Tensor, boxes_xyxy: torch.Tensor, labels: torch.Tensor) -> tuple:
    """The (image, target) pair the transforms above expect."""
    h, w = img.shape[-2:]
    return tv_tensors.Image(img), {
        "boxes": tv_tensors.BoundingBoxes(boxes_xyxy, format="XYXY", canvas_size=(h, w)), "labels": labels}
