"""The lesion detector: a torchvision Faster R-CNN as a fit / predict estimator.

Images are 2-D float32 [0, 1] radiographs of any size; boxes are [x, y, w, h] in their pixels.
Inside, every image is resized so its long side is ``config.size`` and replicated to three
channels (so detection weights trained on RGB, e.g. torchvision's COCO ones, can be the start),
and every prediction is mapped back to the original pixels. The network starts from random
weights, a whole saved detector (``init_weights``), or pretrained weights for its backbone alone
(``backbone_weights``: ImageNet from the torch hub cache, a torchvision state dict, or a samx
model such as the DeepCluster network, whose shape resnet18_fpn's body then takes).

Small lesions are the hard part. MobileNetV3-FPN's finest feature map has a stride of 16 px at
``size``: a lesion of 10 px there (a typical benign phantom lesion at 512) is below it, and
from scratch, on whole images, neither it nor ResNet50-FPN (stride 4) found the phantoms'
lesions in the runs tried. What learned them on a CPU: ``arch="resnet18_fpn"`` (stride 4,
light) trained on lesion-centred ``tile``s of the input (ml_backend.models.tiles), predicting whole
images. Training is deterministic given ``seed`` on the CPU (not with cuDNN's autotuned
kernels)."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.models import detection as tvdet
from torchvision.models.detection.anchor_utils import AnchorGenerator

from imaging.files import save_torch_atomic
from imaging.tensor_cache import InputRecipe
from training import distributed, engine
from training.embeddings import l2_normalize
from training.engine import Progress, train_one_epoch
from training.weights import backbone_config_of, load_into

from .augment import as_sample, detection_transform
from .boxes import Detections, xywh_to_xyxy, xyxy_to_xywh
from .preprocess import check_image, resize_long_side
from .resnet18_fpn import BOX_HEADS, fasterrcnn_resnet18_fpn
from .schedule import one_cycle
from .tiles import random_tile
from .uncertainty import detection_uncertainty, mirror

FILE_FORMAT = "samx.lesion_detector/1"
#: torchvision's network under each detector's FPN: its ImageNet weights, and what a file must fit.
BACKBONE_ARCH = {"mobilenet_v3": "mobilenet_v3_large", "mobilenet_v3_320": "mobilenet_v3_large",
                 "resnet18_fpn": "resnet18", "resnet50_fpn": "resnet50", "resnet50_fpn_v2": "resnet50"}

BUILDERS = {
    "mobilenet_v3": tvdet.fasterrcnn_mobilenet_v3_large_fpn,  # the CPU default
    "mobilenet_v3_320": tvdet.fasterrcnn_mobilenet_v3_large_320_fpn,  # 320 px, fewer proposals: fastest
    "resnet18_fpn": fasterrcnn_resnet18_fpn,  # stride 4 on a CPU budget: small lesions (with ``tile``)
    "resnet50_fpn": tvdet.fasterrcnn_resnet50_fpn,  # for a GPU
    "resnet50_fpn_v2": tvdet.fasterrcnn_resnet50_fpn_v2,
}


@dataclass
class DetectorConfig:
    arch: str = "mobilenet_v3"
    size: int | None = None  # long side the network sees, a multiple of 32 (None: 320 for *_320, else 512)
    # Lesions are small: torchvision's anchors (32..512) are too big for most of them.
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    box_head: str = "mlp"  # resnet18_fpn's box head: "mlp" or "conv_gn" (for AdamW; ml_backend.models.resnet18_fpn)
    epochs: int = 20
    batch_size: int = 4
    tile: int | None = None  # train on tile x tile crops of the input (a multiple of 32, <= size); None: whole images
    tile_focus: float = 0.75  # share of tiles placed around a lesion (on images that have one)
    tiles_per_image: int = 4  # tiles drawn from each image per epoch, afresh every epoch
    optimizer: str = "sgd"  # or "adamw"
    lr: float = 0.02  # peak of the one-cycle schedule
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup: float = 0.1  # share of the steps spent warming up
    grad_clip: float = 10.0  # from scratch, the first steps' gradients can explode
    bn_images: int = 256  # training images the BatchNorm statistics are recomputed on after fit (0: off)
    hflip: bool = True
    scale_jitter: float = 0.2
    brightness: float = 0.2
    contrast: float = 0.2
    gamma: tuple[float, float] = (0.7, 1.4)
    rois_per_image: int = 128  # proposals sampled per image for the box head's loss (torchvision: 512)
    proposals: int | None = None  # RPN proposals kept per image (None: the architecture's default)
    score_threshold: float = 0.05  # predictions below are not returned
    detections_per_image: int = 100
    predict_batch_size: int = 8
    init_weights: str | None = None  # a state_dict file (or a saved LesionDetector) to start from
    #: Pretrained weights for the backbone alone: "imagenet" (torchvision's, from the torch hub cache)
    #: or a file, a torchvision state dict or a saved samx model (DeepCluster's network: resnet18_fpn
    #: then takes its shape, ``backbone``). Ignored with ``init_weights``, which sets every tensor.
    backbone_weights: str | None = None
    #: resnet18_fpn's body as a training.backbone config ({"arch", "width", "sobel"}); None:
    #: torchvision's resnet18 on three channels (also what ImageNet weights load into).
    backbone: dict | None = None
    device: str = "auto"  # "auto": cuda when there is one
    workers: int = 0  # DataLoader workers
    seed: int = 0
    # The input recipe (imaging.tensor_cache.InputRecipe) besides ``size``: saved with the weights,
    # so serving prepares images exactly as training did. Files saved before it load with these.
    input_method: str = "fhe"  # foreground-aware histogram equalisation of the whole image
    input_crop_to_body: bool = False  # lesions may lie anywhere on the film

    def __post_init__(self):
        if self.arch not in BUILDERS:
            raise ValueError(f"arch must be one of {sorted(BUILDERS)}, not {self.arch!r}")
        if self.size is None:
            self.size = 320 if self.arch.endswith("_320") else 512
        if self.size % 32 or self.size < 64:
            raise ValueError(f"size must be a multiple of 32 and at least 64, not {self.size}")
        if self.tile is not None and (self.tile % 32 or not 64 <= self.tile <= self.size):
            raise ValueError(f"tile must be a multiple of 32 between 64 and size ({self.size}), not {self.tile}")
        if not 0.0 <= self.tile_focus <= 1.0 or self.tiles_per_image < 1:
            raise ValueError("tile_focus must be in [0, 1] and tiles_per_image at least 1")
        if self.box_head not in BOX_HEADS:
            raise ValueError(f"box_head must be one of {BOX_HEADS}, not {self.box_head!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {self.optimizer!r}")
        self.anchor_sizes, self.gamma = tuple(self.anchor_sizes), tuple(self.gamma)
        if self.backbone is not None and self.arch != "resnet18_fpn":
            raise ValueError(f"only resnet18_fpn takes a samx backbone shape, not {self.arch}")
        for name in ("init_weights", "backbone_weights"):  # a Path in the saved config would make the file unloadable (weights_only)
            if getattr(self, name) is not None:
                setattr(self, name, str(getattr(self, name)))
        _ = self.input_recipe  # an unknown enhancement fails here, not at the first prediction

    @property
    def input_recipe(self) -> InputRecipe:
        """Whole images, long side ``size``, aspect kept: boxes scale by one factor per axis."""
        return InputRecipe(self.size, self.input_method, crop_to_body=self.input_crop_to_body, square=False)


@dataclass(kw_only=True)
class EpochLog(engine.EpochLog):
    parts: dict  # the four Faster R-CNN losses, averaged over the epoch
    lr: float  # at the epoch's last step
    val_map50: float | None = None


@dataclass
class Analysis:
    """What the labeling loop needs per image, from one pass: pre-annotations, uncertainty and
    an embedding, row-aligned."""

    detections: list[Detections]
    uncertainty: np.ndarray  # (n,) >= 0: summed score entropy, about the number of doubtful boxes
    embeddings: np.ndarray  # (n, d) float32, L2-normalised
    flipped: list[Detections] = field(default_factory=list)  # mirrored predictions, mirrored back


def build_model(arch: str, num_classes: int, cfg: DetectorConfig) -> tvdet.FasterRCNN:
    extra = {} if cfg.proposals is None else {
        f"rpn_{when}_nms_top_n_{mode}": cfg.proposals for when in ("pre", "post") for mode in ("train", "test")}
    if arch == "resnet18_fpn":
        extra["box_head"], extra["backbone"] = cfg.box_head, cfg.backbone
    model = BUILDERS[arch](weights=None, weights_backbone=None, num_classes=num_classes,
                           min_size=cfg.size, max_size=cfg.size,  # images arrive at that size: no second resize
                           box_score_thresh=0.001, box_detections_per_img=cfg.detections_per_image,
                           box_batch_size_per_image=cfg.rois_per_image, **extra)
    old = model.rpn.anchor_generator
    per_level = len(old.sizes[0])
    needed = len(old.sizes) if per_level == 1 else per_level
    if len(cfg.anchor_sizes) != needed:  # the RPN head is built for that many anchors per location
        raise ValueError(f"{arch} needs {needed} anchor sizes, got {cfg.anchor_sizes}")
    sizes = (tuple((s,) for s in cfg.anchor_sizes) if per_level == 1  # one size per FPN level (ResNet)
             else (tuple(cfg.anchor_sizes),) * len(old.sizes))  # every size on every level (MobileNet)
    model.rpn.anchor_generator = AnchorGenerator(sizes, old.aspect_ratios)
    set_input_size(model, cfg.size)
    return model


def set_input_size(model: tvdet.FasterRCNN, size: int) -> None:
    """The images arrive at ``size`` (whole images at their long side, or tiles): no second resize,
    and every batch is padded to size x size, so an image's result does not depend on its batch mates."""
    model.transform.min_size, model.transform.max_size, model.transform.size_divisible = (size,), size, size


def load_init_weights(model: torch.nn.Module, path: str | Path) -> dict:
    """Copy every tensor of ``path`` whose name and shape fit. The box predictor may differ
    (another class count: it stays freshly initialised); any other misfit is an error, as is a
    file that fits nothing."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # a saved LesionDetector
        state = state["state_dict"]
    elif isinstance(state, dict) and isinstance(state.get("model"), dict):  # torchvision references' checkpoint
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state_dict")
    own = model.state_dict()
    misfit = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    bad = [k for k in misfit if not k.startswith("roi_heads.box_predictor.")]
    if bad:
        shown = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in bad[:4])
        raise ValueError(f"{path}: {len(bad)} tensors have the wrong shape for this architecture ({shown})")
    usable = {k: v for k, v in state.items() if k in own and k not in misfit}
    if not usable:
        raise ValueError(f"{path}: no tensor matches this architecture's names (is it a {type(model).__name__}?)")
    model.load_state_dict(usable, strict=False)
    return {"loaded": len(usable), "reinitialised": misfit, "missing": len(own) - len(usable) - len(misfit),
            "unused": len([k for k in state if k not in own])}


def backbone_shape(cfg: DetectorConfig) -> dict | None:
    """resnet18_fpn's body for ``cfg.backbone_weights``: a samx model's own shape (DeepCluster's
    width and Sobel input; its weights fit nothing else), else ``cfg.backbone``."""
    if cfg.arch != "resnet18_fpn" or not cfg.backbone_weights:
        return cfg.backbone
    return backbone_config_of(cfg.backbone_weights) or cfg.backbone


def load_backbone_weights(model: tvdet.FasterRCNN, cfg: DetectorConfig) -> dict:
    """Pretrained weights into the body under the FPN (training.weights: names, 3 -> 1 channel
    kernels, a clear error for another architecture). The FPN and heads start fresh."""
    arch = cfg.backbone["arch"] if cfg.backbone else BACKBONE_ARCH[cfg.arch]
    return {**load_into(model.backbone.body, cfg.backbone_weights, arch=arch).to_dict(), "part": "backbone"}


class _TrainSet(Dataset):
    """Resizes on the fly, so ``images`` may be a lazy sequence over files. With ``cfg.tile``,
    every image appears ``tiles_per_image`` times per epoch, each time as a fresh random tile."""

    def __init__(self, images, boxes_xyxy, labels, cfg: DetectorConfig, transform):
        self.images, self.boxes, self.labels, self.cfg, self.transform = images, boxes_xyxy, labels, cfg, transform

    def __len__(self) -> int:
        return len(self.images) * (self.cfg.tiles_per_image if self.cfg.tile else 1)

    def __getitem__(self, i: int):
        i %= len(self.images)
        small, (sx, sy) = resize_long_side(check_image(self.images[i], i), self.cfg.size)
        boxes, labels = self.boxes[i] * np.array([sx, sy, sx, sy], np.float32), self.labels[i]
        if self.cfg.tile:
            small, boxes, labels = random_tile(small, boxes, labels, self.cfg.tile, self.cfg.tile_focus)
        sample = as_sample(torch.from_numpy(small)[None], torch.from_numpy(boxes), torch.from_numpy(labels))
        img, target = self.transform(*sample)
        return img.as_subclass(torch.Tensor), {"boxes": target["boxes"].as_subclass(torch.Tensor).reshape(-1, 4),
                                               "labels": target["labels"]}


def _collate(batch):
    return tuple(zip(*batch))


class LesionDetector:
    """``fit(images, boxes, labels)`` then ``predict`` / ``uncertainty`` / ``embed`` /
    ``analyse``. After fit: ``model_``, ``history_`` (one EpochLog per epoch), ``init_report_``."""

    def __init__(self, classes: Sequence[str], config: DetectorConfig | None = None, **overrides):
        classes = [str(c) for c in classes]
        if not classes or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be distinct and not empty, got {classes}")
        self.classes = classes
        self.config = DetectorConfig(**{**asdict(config or DetectorConfig()), **overrides})
        self.history_: list[EpochLog] = []
        self.init_report_: dict | None = None

    @property
    def device(self) -> torch.device:
        want = self.config.device
        return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if want == "auto" else want)

    # -- training ---------------------------------------------------------------------------
    def _targets(self, images, boxes, labels) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Validated xyxy boxes in original pixels and class indices (1-based: 0 is background)."""
        if not len(images) == len(boxes) == len(labels):
            raise ValueError(f"{len(images)} images, {len(boxes)} box lists, {len(labels)} label lists")
        index = {c: i + 1 for i, c in enumerate(self.classes)}
        out_b, out_l = [], []
        for i, (b, lab) in enumerate(zip(boxes, labels)):
            b = np.asarray(b, np.float32).reshape(-1, 4)
            if len(b) != len(lab):
                raise ValueError(f"image {i}: {len(b)} boxes but {len(lab)} labels")
            unknown = sorted({str(x) for x in lab} - set(index))
            if unknown:
                raise ValueError(f"image {i}: unknown classes {unknown}; the detector knows {self.classes}")
            if len(b) and (not np.isfinite(b).all() or (b[:, 2:] <= 0).any()):
                raise ValueError(f"image {i}: boxes need finite coordinates and positive width and height")
            out_b.append(xywh_to_xyxy(b))
            out_l.append(np.array([index[str(x)] for x in lab], np.int64))
        return out_b, out_l

    def fit(self, images: Sequence[np.ndarray], boxes: Sequence, labels: Sequence[Sequence[str]], *,
            val: tuple | None = None, progress: Progress | None = None) -> "LesionDetector":
        """``val``: (images, boxes, labels) scored (mAP@0.5) after every epoch, into history_."""
        boxes_xyxy, label_idx = self._targets(images, boxes, labels)
        if len(images) == 0:
            raise ValueError("no training images")
        if val is not None:
            self._targets(*val)
            val = (val[0], [Detections(b, None, lab) for b, lab in zip(val[1], val[2])])
        previous = self.__dict__.get("model_")
        try:
            self._train(images, boxes_xyxy, label_idx, val, progress)
        except BaseException:  # a failed fit leaves the detector as it was, not half-trained
            if previous is None:
                self.__dict__.pop("model_", None)
            else:
                self.model_ = previous
            raise
        return self

    def _train(self, images, boxes_xyxy, label_idx, val, progress) -> None:
        cfg = self.config
        if not cfg.init_weights:
            cfg.backbone = backbone_shape(cfg)
        with torch.random.fork_rng():  # seed without disturbing the caller's random state
            torch.manual_seed(cfg.seed)
            model = build_model(cfg.arch, len(self.classes) + 1, cfg)
            if cfg.init_weights:
                self.init_report_ = load_init_weights(model, cfg.init_weights)
            elif cfg.backbone_weights:
                self.init_report_ = load_backbone_weights(model, cfg)
            self.model_ = model  # still on the CPU: under torchrun it is sent to every rank, which moves it

            def judge(log: EpochLog) -> None:
                if val is not None:
                    from .metrics import detection_map  # pycocotools only when asked

                    pred = self.predict(val[0], score_threshold=0.001)
                    log.val_map50 = detection_map(val[1], pred, self.classes)["map50"]

            self.history_ = distributed.run(train_network, model, images, boxes_xyxy, label_idx, cfg,
                                            local={"progress": progress, "on_epoch": judge})
            if cfg.bn_images:
                self._recompute_bn(images)
        model.eval()

    @torch.no_grad()
    def _recompute_bn(self, images) -> None:
        """From scratch the BatchNorm layers train on batch statistics, and their running averages
        lag far behind the weights after a short run: eval-mode predictions are then poor. The
        statistics of the final weights, on un-augmented training images, replace them."""
        cfg, model = self.config, self.model_
        keep = np.arange(len(images))
        if len(keep) > cfg.bn_images:
            keep = np.sort(np.random.default_rng(cfg.seed).choice(len(keep), cfg.bn_images, replace=False))
        model.eval()  # only the transform is used here; update_bn puts the backbone in train mode itself

        def batches():
            for start in range(0, len(keep), cfg.predict_batch_size):
                x = [torch.from_numpy(resize_long_side(check_image(images[int(i)], int(i)), cfg.size)[0])
                     .to(self.device)[None].expand(3, -1, -1) for i in keep[start : start + cfg.predict_batch_size]]
                yield model.transform(x)[0].tensors

        torch.optim.swa_utils.update_bn(batches(), model.backbone)

    # -- using it ---------------------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "model_"):
            raise RuntimeError("the detector is not trained: call fit() or LesionDetector.load()")

    @torch.no_grad()
    def _forward(self, images: Sequence[np.ndarray], flip: bool = False,
                 score_threshold: float | None = None) -> tuple[list[Detections], np.ndarray, list[tuple]]:
        """Detections in original pixels, pooled features and original (h, w), batch by batch.
        ``flip``: predict the mirrored images (boxes stay in the mirrored frame)."""
        self._check_fitted()
        cfg, model, dev = self.config, self.model_, self.device
        thr = cfg.score_threshold if score_threshold is None else score_threshold
        model.eval()
        dets, embs, shapes = [], [], []
        for start in range(0, len(images), cfg.predict_batch_size):
            smalls, scales = [], []
            for i in range(start, min(start + cfg.predict_batch_size, len(images))):
                img = check_image(images[i], i)
                shapes.append(img.shape)
                small, scale = resize_long_side(img, cfg.size)
                smalls.append(torch.from_numpy(small[:, ::-1].copy() if flip else small))
                scales.append(scale)
            x = [s.to(dev)[None].expand(3, -1, -1) for s in smalls]
            # GeneralizedRCNN.forward, unrolled to keep the backbone features for the embedding.
            image_list, _ = model.transform(x)
            feats = model.backbone(image_list.tensors)
            proposals, _ = model.rpn(image_list, feats)
            out, _ = model.roi_heads(feats, proposals, image_list.image_sizes)
            out = model.transform.postprocess(out, image_list.image_sizes, [s.shape for s in smalls])
            embs.append(self._pool(feats, image_list.image_sizes, image_list.tensors.shape[-2:]))
            for o, (sx, sy) in zip(out, scales):
                keep = o["scores"] >= thr
                b = o["boxes"][keep].cpu().numpy() / np.array([sx, sy, sx, sy], np.float32)
                dets.append(Detections(xyxy_to_xywh(b), o["scores"][keep].cpu().numpy(),
                                       [self.classes[int(k) - 1] for k in o["labels"][keep]]))
        if not embs:
            return [], np.zeros((0, self.embedding_dim), np.float32), []
        return dets, np.concatenate(embs), shapes

    @staticmethod
    def _pool(feats: dict, sizes: list[tuple[int, int]], padded: tuple[int, int]) -> np.ndarray:
        """Mean of every FPN level over the image's own area (not the black padding), concatenated."""
        rows = []
        for i, (h, w) in enumerate(sizes):
            parts = []
            for f in feats.values():
                fh = max(1, math.ceil(h * f.shape[-2] / padded[0]))
                fw = max(1, math.ceil(w * f.shape[-1] / padded[1]))
                parts.append(f[i, :, :fh, :fw].mean((1, 2)))
            rows.append(torch.cat(parts))
        return torch.stack(rows).float().cpu().numpy()

    @property
    def embedding_dim(self) -> int:
        return self.model_.backbone.out_channels * len(self.model_.rpn.anchor_generator.sizes)

    def predict(self, images: Sequence[np.ndarray], *, score_threshold: float | None = None) -> list[Detections]:
        """Boxes [x, y, w, h] in each image's own pixels, scores, class names; best first."""
        return self._forward(images, score_threshold=score_threshold)[0]

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(n, d) float32, L2-normalised pooled backbone features: what diversity sampling compares."""
        return l2_normalize(self._forward(images)[1])

    def uncertainty(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(n,) >= 0: the detections' summed score entropy, as is and mirrored (ml_backend.models.uncertainty)."""
        return self.analyse(images).uncertainty

    def analyse(self, images: Sequence[np.ndarray]) -> Analysis:
        """Predictions, uncertainty and embeddings in two passes (as is and mirrored)."""
        dets, emb, shapes = self._forward(images)
        flipped = self._forward(images, flip=True)[0]
        back = [mirror(f, shape[1]) for f, shape in zip(flipped, shapes)]
        u = np.array([detection_uncertainty(d, b) for d, b in zip(dets, back)], np.float32)
        return Analysis(dets, u, l2_normalize(emb), back)

    # -- persistence --------------------------------------------------------------------------
    def state(self) -> dict:
        self._check_fitted()
        return {"format": FILE_FORMAT, "classes": self.classes, "config": asdict(self.config),
                "state_dict": {k: v.detach().cpu() for k, v in self.model_.state_dict().items()},
                "history": [asdict(h) for h in self.history_], "init_report": self.init_report_}

    def save(self, path: str | Path) -> Path:
        return save_torch_atomic(self.state(), path)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "LesionDetector":
        state = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and dicts: no pickle code
        if not isinstance(state, dict) or state.get("format") != FILE_FORMAT:
            raise ValueError(f"{path}: not a samx lesion detector file")
        det = cls(state["classes"], DetectorConfig(**state["config"]))
        if device is not None:
            det.config.device = device
        det.model_ = build_model(det.config.arch, len(det.classes) + 1, det.config)
        det.model_.load_state_dict(state["state_dict"])
        det.model_.to(det.device).eval()
        det.history_ = [EpochLog(**h) for h in state["history"]]
        det.init_report_ = state["init_report"]
        return det


def train_network(model: torch.nn.Module, images, boxes_xyxy, label_idx, cfg: DetectorConfig, *,
                  progress: Progress | None = None, on_epoch: Callable[[EpochLog], None] | None = None
                  ) -> list[EpochLog]:
    """torchvision's references/detection training (training.engine), on ``model`` in place; one
    EpochLog per epoch (``on_epoch`` may add to it before it is kept). Under torchrun every rank
    runs it (training.distributed) on its share of each epoch's images or tiles, other
    augmentations on each, and DistributedDataParallel keeps the weights the same everywhere."""
    dev = distributed.device(cfg.device)
    if distributed.active():
        torch.manual_seed(cfg.seed + distributed.rank())
    model.to(dev)
    net = distributed.wrap(model, dev)
    transform = detection_transform(cfg.hflip, cfg.scale_jitter, cfg.brightness, cfg.contrast, cfg.gamma)
    data = _TrainSet(images, boxes_xyxy, label_idx, cfg, transform)
    sampler = DistributedSampler(data, seed=cfg.seed) if distributed.active() else None
    loader = DataLoader(data, batch_size=distributed.local_batch(cfg.batch_size), shuffle=sampler is None,
                        sampler=sampler, num_workers=cfg.workers, collate_fn=_collate,
                        generator=torch.Generator().manual_seed(cfg.seed))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
           if cfg.optimizer == "sgd" else torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay))
    sched, total = one_cycle(opt, cfg.lr, cfg.epochs * len(loader), cfg.warmup, cfg.optimizer == "sgd")
    history: list[EpochLog] = []
    done = 0
    for epoch in range(cfg.epochs):
        set_input_size(model, cfg.tile or cfg.size)
        run = train_one_epoch(net, opt, loader, dev, epoch, step=_detection_losses, scheduler=sched,
                              grad_clip=cfg.grad_clip, progress=progress, epochs=cfg.epochs,
                              first_step=done, total_steps=total)
        done += run.steps
        set_input_size(model, cfg.size)  # predictions see whole images
        log = EpochLog(epoch=epoch, loss=run.loss, parts=run.parts, lr=run.lr, seconds=run.seconds)
        if on_epoch is not None:
            on_epoch(log)
        history.append(log)
    return history


def _detection_losses(net: torch.nn.Module, images: list[torch.Tensor], targets: list[dict]) -> dict:
    """A batch through Faster R-CNN in train mode: its four losses. The grayscale images are
    replicated to three channels here, on the device (a view: no copy)."""
    return net([im.expand(3, -1, -1) for im in images], targets)
