"""Augmentations that keep what makes a radiograph what it is.

No horizontal flip by default: it erases laterality (a left hand flipped is a right hand).
Small patches are blanked or burned in at random, so the network learns that a marker letter or
a ruler in a corner says nothing about the anatomy."""
from __future__ import annotations

import torch
from torchvision.transforms import v2


class BurnInPatch(torch.nn.Module):
    """Paint a few small bright or dark rectangles: stand-ins for burned-in markers and text."""

    def __init__(self, p: float = 0.5, max_patches: int = 3, max_frac: float = 0.12):
        super().__init__()
        self.p, self.max_patches, self.max_frac = p, max_patches, max_frac

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return x
        x = x.clone()
        h, w = x.shape[-2:]
        for _ in range(int(torch.randint(1, self.max_patches + 1, ()))):
            ph = max(2, int(h * self.max_frac * float(torch.rand(()))))
            pw = max(2, int(w * self.max_frac * float(torch.rand(()))))
            top, left = int(torch.randint(0, h - ph + 1, ())), int(torch.randint(0, w - pw + 1, ()))
            x[..., top : top + ph, left : left + pw] = float(torch.rand(()) < 0.7)
        return x


class QuarterTurn(torch.nn.Module):
    """0, 90, 180 or 270 degrees: films are hung, scanned and stitched in any orientation (a
    forearm lies across one film and along the next), none of which changes the region."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rot90(x, int(torch.randint(0, 4, ())), dims=(-2, -1))


def training_transform(size: int, hflip: bool = False, *, crop_scale: float = 0.6, rotation: float = 10,
                       quarter_turns: bool = False) -> v2.Compose:
    steps = [
        v2.RandomResizedCrop(size, scale=(crop_scale, 1.0), ratio=(0.8, 1.25), antialias=True),
        v2.RandomRotation(rotation),
        v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2)], p=0.8),
        BurnInPatch(),
    ]
    if quarter_turns:
        steps.insert(1, QuarterTurn())
    if hflip:
        steps.insert(1, v2.RandomHorizontalFlip())
    return v2.Compose(steps)


class AugmentedImages(torch.utils.data.Dataset):
    """(n, S, S) array of [0, 1] images -> (1, S, S) float tensors, augmented, with a target."""

    def __init__(self, images, targets, transform):
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.images[i].astype("float32"))[None]
        return self.transform(x), int(self.targets[i])
