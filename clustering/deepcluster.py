"""DeepCluster (Caron et al. 2018) for grayscale radiographs, as a fit/transform estimator.

Each epoch: features of every image (unshuffled, no augmentation) -> PCA-whitening + L2 ->
faiss k-means with a fresh seed -> a new classifier head -> one epoch of training the network
to predict those pseudo-labels, drawing uniformly over clusters. The NMI between consecutive
epochs' assignments is logged: it rises as the clustering stabilises."""
from __future__ import annotations

import io
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score
from torch import nn
from torch.utils.data import DataLoader

from clustering.augment import AugmentedImages, training_transform
from clustering.features import Whitening, extract
from clustering.kmeans import kmeans, predict
from clustering.sampler import UniformClusterSampler
from clustering.stats import weighted_purity
from imaging.files import write_atomic
from training import distributed, engine
from training.backbone import Backbone
from training.engine import Progress, train_one_epoch
from training.weights import IMAGENET, WeightsError, load_into

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


@dataclass
class DeepClusterConfig:
    k: int = 50
    epochs: int = 30
    arch: str = "resnet18"
    width: int = 32  # 64 = the full torchvision ResNet; 32 trains ~4x faster on a CPU
    pca_dim: int | None = None  # None: auto_pca_dim(n, k); the paper's 256 suits ImageNet-sized runs
    batch_size: int = 64
    lr: float = 0.05
    lr_schedule: str = "cosine"  # "cosine" (to lr/10 by the last epoch) or "constant" (the paper)
    momentum: float = 0.9
    weight_decay: float = 1e-5
    sobel: bool = True
    hflip: bool = False  # off: a flip turns a left hand into a right hand
    crop_scale: float = 0.6  # smallest share of the image a training crop keeps
    rotation: float = 10  # degrees of random rotation
    quarter_turns: bool = False  # also turn by multiples of 90 degrees
    kmeans_iter: int = 20
    epoch_samples: int | None = None  # draws per epoch; None = one per image
    seed: int = 0
    device: str = "auto"  # this rank's GPU when there is one ("cpu", "cuda:1", ... to choose)
    #: Start from pretrained weights instead of random ones: "imagenet" (torchvision's, from the
    #: torch hub cache) or a file (training.weights). Pretrained filters see intensities, so the
    #: Sobel input is off then, and ImageNet weights need torchvision's width, 64.
    weights: str | None = None

    def __post_init__(self):
        if self.weights:
            self.sobel = False


@dataclass(kw_only=True)
class EpochLog(engine.EpochLog):
    nmi_prev: float | None  # NMI between this epoch's and the previous epoch's assignments
    kmeans_objective: float
    extra: dict = field(default_factory=dict)


def auto_pca_dim(n_images: int, k: int) -> int:
    """Whitening blows every kept direction up to unit variance. With few images the tail
    directions are noise, and with few clusters the fine ones drown the coarse split: on 2,000
    phantoms, weighted purity at K=50 was 0.81 with the paper's 256 dims and 0.93 with 32, and
    the NMI at K=8 rose from 0.51 (32 dims) to 0.79 (8 dims). At ImageNet scale this is 256."""
    return int(min(256, max(8, n_images // 64), max(8, k // 2)))


class DeepCluster:
    """``fit(images)`` with images an (n, S, S) array in [0, 1] (e.g. from imaging.TensorCache).

    After fit: ``labels_``, ``embeddings_`` (L2-normalised), ``centroids_``, ``distances_``,
    ``history_`` (one EpochLog per epoch), ``backbone_``, ``whitening_``."""

    def __init__(self, config: DeepClusterConfig | None = None, **overrides):
        self.config = DeepClusterConfig(**{**asdict(config or DeepClusterConfig()), **overrides})
        if self.config.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown lr_schedule {self.config.lr_schedule!r}; choose cosine or constant")

    # -- training ---------------------------------------------------------------------------
    def fit(self, images: np.ndarray, *, checkpoint_dir: str | Path | None = None,
            progress: Progress | None = None, truth: np.ndarray | None = None) -> "DeepCluster":
        """``truth`` (optional, benchmarks only) adds the NMI against known labels to the log.
        Under torchrun every rank trains; only the leader clusters, logs and checkpoints."""
        if self.config.k > len(images):
            raise ValueError(f"k={self.config.k} is larger than the number of images ({len(images)})")
        return distributed.run(self._fit, images, checkpoint_dir, local={"progress": progress, "truth": truth})

    def _fit(self, images: np.ndarray, checkpoint_dir: str | Path | None, progress: Progress | None = None,
             truth: np.ndarray | None = None) -> "DeepCluster":
        cfg = self.config
        leader = distributed.is_leader()
        dev = distributed.device(cfg.device)
        torch.manual_seed(cfg.seed)
        backbone = Backbone(cfg.arch, cfg.width, cfg.sobel)
        self.init_report_ = None
        if cfg.weights:
            if str(cfg.weights).lower() in IMAGENET and cfg.width != 64:
                raise WeightsError(f"width {cfg.width} cannot take torchvision's ImageNet weights: their ResNet has "
                                   "width 64 (--width 64)")
            self.init_report_ = load_into(backbone, cfg.weights, arch=cfg.arch).to_dict()
        backbone = backbone.to(dev)
        opt = torch.optim.SGD(backbone.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        history: list[EpochLog] = []
        prev: np.ndarray | None = None
        start = 0
        ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
        if ckpt and ckpt.is_file():  # every rank resumes from the same file; only the leader writes it
            start, prev, history = self._resume(ckpt, backbone, opt, len(images))
            log.info("resuming DeepCluster at epoch %d from %s", start, ckpt)
        if distributed.active():  # the same network everywhere, other augmentations on each rank
            torch.manual_seed(cfg.seed * 1000 + start + distributed.rank())
        transform = training_transform(images.shape[-1], cfg.hflip, crop_scale=cfg.crop_scale, rotation=cfg.rotation,
                                       quarter_turns=cfg.quarter_turns)
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = self._lr(epoch)
            km = nmi_prev = None
            if leader:
                if progress:
                    progress(epoch, cfg.epochs, f"epoch {epoch + 1}/{cfg.epochs}: clustering")
                emb = self._embed_fresh(backbone, images)
                km = kmeans(emb, cfg.k, seed=cfg.seed * 1000 + epoch, niter=cfg.kmeans_iter)
                nmi_prev = None if prev is None else float(normalized_mutual_info_score(prev, km.assignments))
                if progress:
                    progress(epoch, cfg.epochs, f"epoch {epoch + 1}/{cfg.epochs}: training")
            prev = distributed.broadcast(km.assignments if leader else None)
            loss = self._train_epoch(backbone, opt, images, prev, transform, epoch, dev)
            if not leader:
                continue
            extra = {}
            if truth is not None:
                extra["nmi_truth"] = float(normalized_mutual_info_score(truth, km.assignments))
                extra["purity_truth"] = weighted_purity(km.assignments, truth)
            history.append(EpochLog(epoch=epoch, loss=loss, nmi_prev=nmi_prev, kmeans_objective=km.objective,
                                    seconds=time.perf_counter() - t0, extra=extra))
            log.info("epoch %d: loss %.4f, NMI(t-1, t) %s, %.1fs %s", epoch, loss,
                     "-" if nmi_prev is None else f"{nmi_prev:.3f}", history[-1].seconds, extra or "")
            if ckpt:
                self._checkpoint(ckpt, epoch + 1, backbone, opt, prev, history, len(images))
        if not leader:  # a follower's part ends with the training
            return self
        if progress:
            progress(cfg.epochs, cfg.epochs, "final clustering")
        backbone.cpu()
        feats = extract(backbone, images)
        self.whitening_ = Whitening.fit(feats, self._pca_dim(len(images)), cfg.seed)
        self.embeddings_ = self.whitening_.transform(feats)
        # The clusters people will name: best of three k-means starts (the per-epoch ones need only one).
        km = kmeans(self.embeddings_, cfg.k, seed=cfg.seed * 1000 + cfg.epochs, niter=cfg.kmeans_iter, nredo=3)
        self.labels_, self.centroids_, self.distances_ = km.assignments, km.centroids, km.distances
        self.backbone_, self.history_ = backbone, history
        return self

    def _embed_fresh(self, backbone: Backbone, images: np.ndarray) -> np.ndarray:
        feats = extract(backbone, images)
        return Whitening.fit(feats, self._pca_dim(len(images)), self.config.seed).transform(feats)

    def _pca_dim(self, n_images: int, k: int | None = None) -> int:
        return self.config.pca_dim or auto_pca_dim(n_images, k or self.config.k)

    def recluster(self, images: np.ndarray, k: int, *, nredo: int = 5) -> np.ndarray:
        """The trained network's images in ``k`` clusters (e.g. one per expected region), with
        the whitening chosen for that ``k``; the run's own clusters stay as they are."""
        feats = extract(self.backbone_, images)
        emb = Whitening.fit(feats, self._pca_dim(len(images), k), self.config.seed).transform(feats)
        return kmeans(emb, k, seed=self.config.seed, niter=self.config.kmeans_iter, nredo=nredo).assignments

    def _lr(self, epoch: int) -> float:
        """Cosine decay: with tens of epochs (not the paper's hundreds) a constant rate keeps the
        clusters wobbling; on 2,000 phantoms purity swung by +-0.01 from epoch to epoch."""
        cfg = self.config
        if cfg.lr_schedule == "constant":
            return cfg.lr
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * epoch / max(cfg.epochs, 1))))

    def _train_epoch(self, backbone: Backbone, opt, images, pseudo, transform, epoch: int, dev: torch.device) -> float:
        cfg = self.config
        head = nn.Linear(backbone.out_dim, cfg.k)  # re-initialised: last epoch's clusters mean nothing now
        nn.init.normal_(head.weight, 0, 0.01)
        nn.init.zeros_(head.bias)
        head_opt = torch.optim.SGD(head.parameters(), lr=self._lr(epoch), weight_decay=cfg.weight_decay)
        model = distributed.wrap(nn.Sequential(backbone, head).to(dev), dev)
        sampler = UniformClusterSampler(pseudo, cfg.epoch_samples or len(images), seed=cfg.seed,
                                        rank=distributed.rank(), world=distributed.world_size())
        loader = DataLoader(AugmentedImages(images, pseudo, transform), sampler=sampler,
                            batch_size=distributed.local_batch(cfg.batch_size), drop_last=len(images) > cfg.batch_size)
        return train_one_epoch(model, [opt, head_opt], loader, dev, epoch, step=_cross_entropy,
                               check_finite=False).loss  # as it always has, a diverging run logs NaN losses

    # -- checkpoints ------------------------------------------------------------------------
    def _checkpoint(self, path: Path, epoch: int, backbone, opt, assignments, history, n: int) -> None:
        buf = io.BytesIO()
        torch.save({"epoch": epoch, "config": asdict(self.config), "n_images": n, "backbone": backbone.state_dict(),
                    "optimizer": opt.state_dict(), "assignments": assignments,
                    "history": [asdict(h) for h in history]}, buf)
        write_atomic(path, buf.getvalue())  # a kill mid-write leaves the previous checkpoint intact

    def _resume(self, path: Path, backbone, opt, n: int):
        state = torch.load(path, map_location="cpu", weights_only=False)
        if {**asdict(DeepClusterConfig()), **state["config"]} != asdict(self.config) or state["n_images"] != n:
            raise ValueError(f"{path} belongs to another run (different settings or images); "
                             "delete it or pick another checkpoint folder")
        backbone.load_state_dict(state["backbone"])
        opt.load_state_dict(state["optimizer"])
        return state["epoch"], state["assignments"], [EpochLog(**h) for h in state["history"]]

    # -- using a trained model --------------------------------------------------------------
    def transform(self, images: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings of new images, comparable with ``embeddings_``."""
        return self.whitening_.transform(extract(self.backbone_, images))

    def predict(self, images: np.ndarray) -> np.ndarray:
        return predict(self.transform(images), self.centroids_)[0]

    def save(self, path: str | Path) -> Path:
        buf = io.BytesIO()
        torch.save({"config": asdict(self.config), "backbone": self.backbone_.state_dict(),
                    "whitening": self.whitening_.state(), "centroids": self.centroids_,
                    "history": [asdict(h) for h in self.history_],
                    "init_report": getattr(self, "init_report_", None)}, buf)
        return write_atomic(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "DeepCluster":
        state = torch.load(path, map_location="cpu", weights_only=False)
        model = cls(DeepClusterConfig(**state["config"]))
        cfg = model.config
        model.backbone_ = Backbone(cfg.arch, cfg.width, cfg.sobel)
        model.backbone_.load_state_dict(state["backbone"])
        model.backbone_.eval()
        model.whitening_ = Whitening(**state["whitening"])
        model.centroids_ = state["centroids"]
        model.history_ = [EpochLog(**h) for h in state["history"]]
        model.init_report_ = state.get("init_report")  # what the pretrained start loaded (None: from scratch)
        return model


def _cross_entropy(model: nn.Module, x: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), pseudo)
