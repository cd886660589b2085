"""The SAM-X sorter (phase 2): the DeepCluster backbone with its head replaced by the named
regions, trained supervised on the weak labels, as a fit / predict estimator.

It abstains: an image whose features are far from every training image (another modality, a
photo, an anatomy nobody named) is reported as unsure instead of being forced into a class.
The score is the distance to the k-th nearest training image (Sun et al. 2022, "Out-of-
distribution detection with deep nearest neighbors") in the pooled features of all four ResNet
stages, each stage scaled to unit mean norm on the training images (the feature ensemble of Lee
et al. 2018); its threshold is the ``coverage`` quantile of the same score on validation images,
so that share of in-distribution images is kept (``calibrate``). The last stage alone does not
do: it keeps only what separates the named classes, and on phantoms noise images scored below
real validation images there; the early stages see that noise has no anatomy. A softmax
threshold would not do either: a network is often most confident far from its data."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from training.embeddings import FlatIndex, l2_normalize
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from clustering.augment import AugmentedImages, training_transform
from imaging.files import save_torch_atomic
from training import distributed, engine
from training.backbone import Backbone
from training.engine import Progress, train_one_epoch

UNSURE = -1


@dataclass
class SorterConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    arch: str = "resnet18"
    width: int = 32
    sobel: bool = True
    hflip: bool = False  # off: a flip turns a left hand into a right hand
    knn: int = 5  # neighbours behind the out-of-distribution score
    ood_reference: int = 20_000  # training images kept for that score (a random subset beyond this)
    coverage: float = 0.99  # share of in-distribution validation images the sorter must accept
    seed: int = 0
    device: str = "auto"  # training: this rank's GPU when there is one ("cpu", "cuda:1", ... to choose)


@dataclass(kw_only=True)
class EpochLog(engine.EpochLog):
    train_accuracy: float


@dataclass
class Abstention:
    """Unsure when the k-th nearest training embedding is farther than ``threshold``."""

    k: int
    threshold: float
    coverage: float
    val_scores: list = field(default_factory=list)  # kept for the report's histogram


@dataclass
class Predictions:
    """Row-aligned. ``label`` is the class index, or UNSURE (-1) where the sorter abstains;
    ``top`` holds the two best classes, forced (abstention ignored)."""

    label: np.ndarray
    proba: np.ndarray  # (n, C) class probabilities
    ood_score: np.ndarray
    embeddings: np.ndarray  # L2-normalised pooled features (similar cases use them)

    @property
    def top(self) -> np.ndarray:
        return np.argsort(-self.proba, axis=1, kind="stable")[:, :2]

    @property
    def top_proba(self) -> np.ndarray:
        return np.take_along_axis(self.proba, self.top, 1)

    @property
    def abstained(self) -> np.ndarray:
        return self.label == UNSURE


class SorterNet(nn.Module):
    def __init__(self, backbone: Backbone, n_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def train_network(net: SorterNet, images: np.ndarray, y: np.ndarray, weights: np.ndarray, cfg: SorterConfig,
                  progress: Progress | None = None) -> tuple[dict, list[EpochLog]]:
    """Supervised training on the weak labels; under torchrun it runs on every rank, each on its
    share of every epoch. Returns the trained weights (on the CPU) and the epoch log."""
    dev = distributed.device(cfg.device)
    if distributed.active():  # the same network everywhere, other augmentations on each rank
        torch.manual_seed(cfg.seed + distributed.rank())
    model = distributed.wrap(net.to(dev), dev)
    loss_fn = nn.CrossEntropyLoss(weight=torch.from_numpy(weights).to(dev))
    data = AugmentedImages(images, y, training_transform(images.shape[-1], cfg.hflip))
    sampler = DistributedSampler(data, seed=cfg.seed) if distributed.active() else None
    loader = DataLoader(data, batch_size=distributed.local_batch(cfg.batch_size),
                        shuffle=sampler is None, sampler=sampler,
                        generator=torch.Generator().manual_seed(cfg.seed) if sampler is None else None)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=max(cfg.epochs, 1),
                                                steps_per_epoch=max(1, len(loader)), pct_start=0.15)

    def step(module: nn.Module, x: torch.Tensor, target: torch.Tensor):
        logits = module(x)
        return loss_fn(logits, target), {"correct": int((logits.argmax(1) == target).sum())}

    history: list[EpochLog] = []
    for epoch in range(cfg.epochs):
        if progress:
            progress(epoch, cfg.epochs, f"epoch {epoch + 1}/{cfg.epochs}")
        run = train_one_epoch(model, opt, loader, dev, epoch, step=step, scheduler=sched,
                              min_batch=2,  # BatchNorm cannot train on one image (same on every rank: equal shares)
                              check_finite=False)  # as it always has, a diverging run logs NaN losses
        history.append(EpochLog(epoch=epoch, loss=run.loss, train_accuracy=run.rates.get("correct", 0.0),
                                seconds=run.seconds))
    return {k: v.detach().cpu() for k, v in distributed.unwrap(model).state_dict().items()}, history


class Sorter:
    """``fit(images, y)`` with images an (n, S, S) array in [0, 1] and ``y`` indices into
    ``classes``. After fit: ``net_``, ``history_``, ``reference_`` (pooled features of training
    images, for the out-of-distribution score); after ``calibrate``: ``abstention_``."""

    def __init__(self, classes: Sequence[str], config: SorterConfig | None = None, **overrides):
        if len(classes) < 2:
            raise ValueError(f"a sorter needs at least two classes, got {list(classes)}")
        self.classes = list(classes)
        self.config = SorterConfig(**{**asdict(config or SorterConfig()), **overrides})
        self.abstention_: Abstention | None = None

    # -- training ---------------------------------------------------------------------------
    def fit(self, images: np.ndarray, y: np.ndarray, *, init: Backbone | None = None,
            progress: Progress | None = None) -> "Sorter":
        """``init``: a trained DeepCluster backbone to start from (its weights are copied)."""
        cfg = self.config
        y = np.asarray(y, dtype=np.int64)
        if len(images) != len(y) or len(y) == 0:
            raise ValueError(f"{len(images)} images and {len(y)} labels")
        if y.min() < 0 or y.max() >= len(self.classes):
            raise ValueError("labels must be indices into classes")
        torch.manual_seed(cfg.seed)
        if init is not None:
            cfg.arch, cfg.width, cfg.sobel = init.config["arch"], init.config["width"], init.config["sobel"]
        backbone = Backbone(cfg.arch, cfg.width, cfg.sobel)
        if init is not None:
            backbone.load_state_dict(init.state_dict())
        net = SorterNet(backbone, len(self.classes))
        present = np.unique(y)
        # Class imbalance: "balanced" loss weights (n / (C * n_c)); a class absent here weighs 0.
        weights = np.zeros(len(self.classes), np.float32)
        weights[present] = compute_class_weight("balanced", classes=present, y=y)
        state, self.history_ = distributed.run(train_network, net, images, y, weights, cfg,
                                               local={"progress": progress})
        net.cpu().load_state_dict(state)
        net.eval()
        self.net_ = net
        keep = np.arange(len(y))
        if len(keep) > cfg.ood_reference:
            keep = np.sort(np.random.default_rng(cfg.seed).choice(len(y), cfg.ood_reference, replace=False))
        self.stage_scale_ = np.ones(4, np.float32)
        stages = self._forward(images[keep])[2]
        self.stage_scale_ = np.array([np.linalg.norm(st, axis=1).mean() for st in stages], np.float32)
        self.reference_ = self._ood_features(stages)
        return self

    def calibrate(self, images: np.ndarray) -> "Sorter":
        """Set the abstention threshold from in-distribution validation images (never seen in fit)."""
        cfg = self.config
        scores = self._ood_scores(self._ood_features(self._forward(images)[2]))
        threshold = float(np.quantile(scores, cfg.coverage)) if len(scores) else float("inf")
        self.abstention_ = Abstention(self._k(), threshold, cfg.coverage, [round(float(s), 5) for s in scores])
        return self

    # -- using it ---------------------------------------------------------------------------
    @torch.no_grad()
    def _forward(self, images: np.ndarray, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """(pooled features, logits, pooled features of each of the four ResNet stages)."""
        self.net_.eval()
        backbone, net = self.net_.backbone, self.net_.backbone.net
        logits, stages = [], [[], [], [], []]
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.asarray(images[start : start + batch_size], dtype=np.float32))[:, None]
            h = net.maxpool(net.relu(net.bn1(net.conv1(backbone.sobel(x)))))  # ResNet.forward, stage by stage
            for i, layer in enumerate((net.layer1, net.layer2, net.layer3, net.layer4)):
                h = layer(h)
                stages[i].append(h.mean((2, 3)).numpy())
            logits.append(self.net_.head(torch.from_numpy(stages[3][-1])).numpy())
        if not logits:  # no images: the shapes of one, without it
            shape = tuple(np.shape(images)[1:]) or (32, 32)
            feats, logit, one = self._forward(np.zeros((1, *shape), np.float32))
            return feats[:0], logit[:0], [st[:0] for st in one]
        stages = [np.concatenate(st) for st in stages]
        return stages[3], np.concatenate(logits), stages

    def _ood_features(self, stages: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([st / scale for st, scale in zip(stages, self.stage_scale_)], axis=1).astype(np.float32)

    def embed(self, images: np.ndarray) -> np.ndarray:
        return l2_normalize(self._forward(images)[0])

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return torch.softmax(torch.from_numpy(self._forward(images)[1]), 1).numpy()

    def predict(self, images: np.ndarray) -> Predictions:
        feats, logits, stages = self._forward(images)
        emb = l2_normalize(feats)
        proba = torch.softmax(torch.from_numpy(logits), 1).numpy()
        score = self._ood_scores(self._ood_features(stages))
        label = proba.argmax(1)
        if self.abstention_ is not None:
            label[score > self.abstention_.threshold] = UNSURE
        return Predictions(label, proba, score, emb)

    def _k(self) -> int:
        return max(1, min(self.config.knn, len(self.reference_)))

    def _ood_scores(self, feats: np.ndarray) -> np.ndarray:
        """Euclidean distance to the k-th nearest training image in pooled-feature space."""
        if len(feats) == 0:
            return np.zeros(0, np.float32)
        dist, _ = FlatIndex(self.reference_).search(feats, self._k())
        return np.sqrt(np.maximum(dist[:, -1], 0.0)).astype(np.float32)

    def label_names(self, labels: np.ndarray) -> list[str | None]:
        """Class names, None for unsure."""
        return [None if int(i) == UNSURE else self.classes[int(i)] for i in labels]

    # -- persistence --------------------------------------------------------------------------
    def state(self) -> dict:
        return {"classes": self.classes, "config": asdict(self.config), "net": self.net_.state_dict(),
                "reference": self.reference_, "stage_scale": self.stage_scale_,
                "abstention": asdict(self.abstention_) if self.abstention_ else None,
                "history": [asdict(h) for h in self.history_]}

    def save(self, path: str | Path) -> Path:
        return save_torch_atomic(self.state(), path)

    @classmethod
    def load(cls, path: str | Path) -> "Sorter":
        state = torch.load(path, map_location="cpu", weights_only=False)
        model = cls(state["classes"], SorterConfig(**state["config"]))
        cfg = model.config
        model.net_ = SorterNet(Backbone(cfg.arch, cfg.width, cfg.sobel), len(model.classes))
        model.net_.load_state_dict(state["net"])
        model.net_.eval()
        model.reference_, model.stage_scale_ = state["reference"], state["stage_scale"]
        model.abstention_ = Abstention(**state["abstention"]) if state["abstention"] else None
        model.history_ = [EpochLog(**h) for h in state["history"]]
        return model
