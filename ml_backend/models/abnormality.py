"""Image-level normal / abnormal classifier, the first half of VinDr-SpineXR's decision fusion.

training.backbone's ResNet with a two-class head, on letterboxed grayscale images. From
scratch it is torchvision's ResNet18 with a one-channel first convolution; it can start from
ImageNet weights or from a samx model's backbone (DeepCluster's, trained on every unlabelled
image, or the sorter's), taking that backbone's shape (width, Sobel input) so every tensor fits.
Abnormal images are usually the minority, so the loss is class-weighted ("balanced")."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.utils.data import DataLoader, Dataset

from imaging.files import save_torch_atomic
from training import engine
from training.backbone import Backbone
from training.engine import Progress, train_one_epoch
from training.weights import IMAGENET, backbone_config_of, load_into

from .augment import classification_transform
from .preprocess import check_image, letterbox
from .schedule import one_cycle

FILE_FORMAT = "samx.abnormality/2"
#: Files of the first format hold torchvision's resnet18 (``conv1.weight`` ... ``fc.bias``): the
#: scratch backbone below with other key names, mapped on load.
OLD_FORMAT = "samx.abnormality/1"
#: The backbone from scratch and for ImageNet weights: torchvision's ResNet18, one input channel.
SCRATCH = {"arch": "resnet18", "width": 64, "sobel": False}


@dataclass
class AbnormalityConfig:
    size: int = 224  # side of the letterboxed square the network sees
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3  # AdamW, one-cycle
    weight_decay: float = 1e-4
    hflip: bool = True
    scale_jitter: float = 0.15
    predict_batch_size: int = 64
    bn_images: int = 1024  # training images BatchNorm statistics are recomputed on after fit
    device: str = "auto"
    seed: int = 0
    #: Start from pretrained weights: "imagenet" (torchvision's ResNet18) or a file, a torchvision
    #: resnet18 state dict or a saved samx model (DeepCluster, sorter, classifier) whose backbone
    #: it takes (training.weights). None: random weights.
    weights: str | None = None
    #: The training.backbone.Backbone config {"arch", "width", "sobel"}; None: SCRATCH, or the
    #: one a samx model in ``weights`` was built with (set by fit, saved with the classifier).
    backbone: dict | None = None


@dataclass(kw_only=True)
class EpochLog(engine.EpochLog):
    val_auroc: float | None = None


class AbnormalityNet(nn.Module):
    def __init__(self, backbone: dict):
        super().__init__()
        self.backbone = Backbone(**backbone)
        self.head = nn.Linear(self.backbone.out_dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def backbone_for(cfg: AbnormalityConfig) -> dict:
    """A samx model's backbone shape wins over ``cfg.backbone``: its weights fit nothing else.
    ImageNet weights are torchvision's ResNet18 at width 64 without Sobel input."""
    if cfg.weights and str(cfg.weights).lower() in IMAGENET:
        return dict(SCRATCH)
    return (backbone_config_of(cfg.weights) if cfg.weights else None) or dict(cfg.backbone or SCRATCH)


def _old_layout(state: dict) -> dict:
    """A first-format file's torchvision resnet18 keys as AbnormalityNet names them."""
    return {f"head.{k[3:]}" if k.startswith("fc.") else f"backbone.net.{k}": v for k, v in state.items()}


class _Images(Dataset):
    def __init__(self, images, y, size: int, transform):
        self.images, self.y, self.size, self.transform = images, y, size, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = torch.from_numpy(letterbox(check_image(self.images[i], i), self.size))[None]
        return self.transform(x).as_subclass(torch.Tensor), int(self.y[i])


class AbnormalityClassifier:
    """``fit(images, y)`` with y 1 = abnormal; ``predict_proba(images)`` -> (n,) p(abnormal)."""

    def __init__(self, config: AbnormalityConfig | None = None, **overrides):
        self.config = AbnormalityConfig(**{**asdict(config or AbnormalityConfig()), **overrides})
        self.history_: list[EpochLog] = []
        self.init_report_: dict | None = None  # what the pretrained start loaded (None: from scratch)

    @property
    def device(self) -> torch.device:
        want = self.config.device
        return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if want == "auto" else want)

    def fit(self, images: Sequence[np.ndarray], y, *, val: tuple | None = None,
            progress: Progress | None = None) -> "AbnormalityClassifier":
        """``val``: (images, y), scored (AUROC) after every epoch into history_."""
        cfg = self.config
        y = np.asarray(y).astype(np.int64).reshape(-1)
        if len(images) != len(y) or len(y) == 0:
            raise ValueError(f"{len(images)} images and {len(y)} labels")
        if not set(np.unique(y)) <= {0, 1}:
            raise ValueError("labels must be 0 (normal) or 1 (abnormal)")
        dev = self.device
        with torch.random.fork_rng():  # seed without disturbing the caller's random state
            torch.manual_seed(cfg.seed)
            cfg.backbone = backbone_for(cfg)
            net = AbnormalityNet(cfg.backbone)
            self.init_report_ = None
            if cfg.weights:
                self.init_report_ = load_into(net.backbone, cfg.weights, arch=cfg.backbone["arch"]).to_dict()
            self.net_ = net = net.to(dev)
            present = np.unique(y)
            weights = np.zeros(2, np.float32)
            weights[present] = compute_class_weight("balanced", classes=present, y=y)
            loss_fn = nn.CrossEntropyLoss(weight=torch.from_numpy(weights).to(dev))
            opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            loader = DataLoader(_Images(images, y, cfg.size, classification_transform(cfg.hflip, cfg.scale_jitter)),
                                batch_size=cfg.batch_size, shuffle=True,
                                generator=torch.Generator().manual_seed(cfg.seed))
            sched, total = one_cycle(opt, cfg.lr, cfg.epochs * len(loader), 0.15)
            self.history_, done = [], 0

            def step(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                return loss_fn(model(x), target)

            for epoch in range(cfg.epochs):
                run = train_one_epoch(net, opt, loader, dev, epoch, step=step, scheduler=sched,
                                      min_batch=2,  # BatchNorm cannot train on one image
                                      progress=progress, epochs=cfg.epochs, first_step=done, total_steps=total)
                done += run.steps
                log = EpochLog(epoch=epoch, loss=run.loss, seconds=run.seconds)
                if val is not None:
                    from .metrics import auroc_ci

                    log.val_auroc = auroc_ci(val[1], self.predict_proba(val[0]), n_boot=0)["auroc"]
                self.history_.append(log)
            self._recompute_bn(images)
        net.eval()
        return self

    @torch.no_grad()
    def _recompute_bn(self, images) -> None:
        """BatchNorm's running averages lag behind the weights after a short run from scratch (the
        eval-mode scores are then poor): recompute them for the final weights on (up to
        ``bn_images``) un-augmented training images."""
        cfg = self.config
        keep = np.arange(len(images))
        if len(keep) > cfg.bn_images:
            keep = np.sort(np.random.default_rng(cfg.seed).choice(len(keep), cfg.bn_images, replace=False))
        batches = (torch.from_numpy(np.stack([letterbox(check_image(images[int(i)], int(i)), cfg.size)
                                              for i in keep[start : start + cfg.predict_batch_size]]))[:, None]
                   for start in range(0, len(keep), cfg.predict_batch_size))
        torch.optim.swa_utils.update_bn(batches, self.net_, device=self.device)

    @torch.no_grad()
    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if not hasattr(self, "net_"):
            raise RuntimeError("the classifier is not trained: call fit() or AbnormalityClassifier.load()")
        cfg = self.config
        self.net_.eval()
        out = []
        for start in range(0, len(images), cfg.predict_batch_size):
            x = np.stack([letterbox(check_image(images[i], i), cfg.size)
                          for i in range(start, min(start + cfg.predict_batch_size, len(images)))])
            out.append(torch.softmax(self.net_(torch.from_numpy(x)[:, None].to(self.device)), 1)[:, 1].cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def state(self) -> dict:
        return {"format": FILE_FORMAT, "config": asdict(self.config),
                "state_dict": {k: v.detach().cpu() for k, v in self.net_.state_dict().items()},
                "history": [asdict(h) for h in self.history_], "init_report": self.init_report_}

    def save(self, path: str | Path) -> Path:
        return save_torch_atomic(self.state(), path)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "AbnormalityClassifier":
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") not in (FILE_FORMAT, OLD_FORMAT):
            raise ValueError(f"{path}: not a samx abnormality classifier file")
        clf = cls(AbnormalityConfig(**state["config"]))
        if device is not None:
            clf.config.device = device
        clf.net_ = AbnormalityNet(clf.config.backbone or SCRATCH)
        old = state["format"] == OLD_FORMAT
        clf.net_.load_state_dict(_old_layout(state["state_dict"]) if old else state["state_dict"])
        clf.net_.to(clf.device).eval()
        clf.history_ = [EpochLog(**h) for h in state["history"]]
        clf.init_report_ = state.get("init_report")
        return clf
