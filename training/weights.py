"""Pretrained weights the way users have them: torchvision's by name, from the torch hub cache
(downloaded only when the machine is online and the file is not there), or a file: a state dict
in torchvision's layout, or a saved samx model whose backbone it holds.

Radiographs are one channel; ImageNet networks take three. A pretrained first convolution is
adapted by summing its kernels over the colour channels: a grey image fed as R = G = B gives
exactly the same response, so nothing the network learned is lost."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models import get_model_weights

from training.backbone import ARCHS

#: Names that mean torchvision's pretrained weights of the architecture (its DEFAULT entry).
IMAGENET = ("imagenet", "torchvision", "default")
#: Keys of a saved samx model under which its backbone's state dict lies (DeepCluster, sorter).
BACKBONE_KEYS = ("backbone", "state_dict", "net", "model")
#: A classifier head a file may bring and a backbone has no place for: left out, not an error.
HEADS = ("fc.", "classifier.", "head.", "heads.")


# samx's own model files carry numpy arrays (DeepCluster's centroids and whitening) beside the
# tensors: these globals rebuild plain arrays and nothing else, so loading stays weights-only.
NUMPY_ARRAYS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype,
                *{type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_)}]


class WeightsError(ValueError):
    """Weights that cannot be had or do not fit, with what to do about it."""


@dataclass
class LoadReport:
    """What a load did, for the model version's metadata and the user."""

    source: str
    loaded: int = 0
    adapted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # the model's tensors the file did not have
    unused: list[str] = field(default_factory=list)  # the file's tensors the model has no place for

    def to_dict(self) -> dict:
        return {"source": self.source, "loaded": self.loaded, "adapted": self.adapted,
                "missing": self.missing, "unused": self.unused}


def hub_file(arch: str) -> Path:
    """Where torchvision's API keeps (and looks for) the ImageNet weights of ``arch``: place the
    file there on an offline machine ($TORCH_HOME/hub/checkpoints/, ~/.cache/torch by default)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(_torchvision_weights(arch).url).name


def _torchvision_weights(arch: str):
    try:
        return get_model_weights(arch).DEFAULT
    except (ValueError, KeyError):
        raise WeightsError(f"torchvision has no pretrained weights for {arch!r}") from None


def state_dict_of(spec: str | Path, arch: str, *, allow_download: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, where it came from) for ``spec``: a name in IMAGENET, or a file path."""
    if str(spec).lower() in IMAGENET:
        weights, path = _torchvision_weights(arch), hub_file(arch)
        if not path.is_file() and not allow_download:
            raise WeightsError(f"{weights} is not on this machine: place {path.name} in {path.parent} "
                               f"(from {weights.url})")
        try:  # torchvision's API: the hub cache when the file is there, else a download
            return weights.get_state_dict(progress=False, check_hash=False), f"torchvision {weights}"
        except OSError as exc:  # offline (URLError is an OSError), or an unreadable file
            raise WeightsError(f"could not get {weights} ({exc}): on an offline machine place {path.name} "
                               f"(from {weights.url}) in {path.parent}") from None
    path, state = _read(spec)
    for key in BACKBONE_KEYS:  # a saved samx model: its backbone
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no state dict")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, str(path)


def _read(spec: str | Path) -> tuple[Path, object]:
    path = Path(os.path.expanduser(str(spec)))
    if not path.is_file():
        raise WeightsError(f"no weights file {path}; give a file or one of {', '.join(IMAGENET)}")
    try:
        with torch.serialization.safe_globals(NUMPY_ARRAYS):  # tensors, arrays and plain data: no pickle code
            return path, torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path} is not a PyTorch weights file ({type(exc).__name__}: {exc})") from None


def backbone_config_of(spec: str | Path) -> dict | None:
    """The training.backbone.Backbone config ({"arch", "width", "sobel"}) a saved samx model was
    built with (DeepCluster and the sorter keep it in their config, the abnormality classifier
    under config["backbone"]), so a model starting from it can take the same shape; None for
    ImageNet and plain state dicts, whose shape the caller decides."""
    if str(spec).lower() in IMAGENET:
        return None
    state = _read(spec)[1]
    config = state.get("config") if isinstance(state, dict) else None
    config = (config.get("backbone") or config) if isinstance(config, dict) else {}
    if isinstance(config, dict) and config.get("arch") in ARCHS and {"width", "sobel"} <= set(config):
        return {"arch": config["arch"], "width": int(config["width"]), "sobel": bool(config["sobel"])}
    return None


def _strip(state: dict[str, torch.Tensor], own: set[str]) -> dict[str, torch.Tensor]:
    """Keys as ``module`` names them: a saved file's prefix (``net.``, ``module.``) taken off or put on."""
    if own & set(state):
        return state
    for prefix in ("module.", "net.", "backbone.", "body.", "features."):  # features.: MobileNet's body
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if own & set(stripped):
            return stripped
        added = {prefix + k: v for k, v in state.items()}
        if own & set(added):
            return added
    return state


def load_into(module: nn.Module, spec: str | Path, *, arch: str, allow_download: bool = True) -> LoadReport:
    """Copy ``spec``'s tensors into ``module`` where names and shapes fit, adapting a 3-channel
    first convolution to the module's channels; refuse weights of another architecture."""
    state, source = state_dict_of(spec, arch, allow_download=allow_download)
    own = module.state_dict()
    state = _strip(state, set(own))
    report = LoadReport(source)
    fitting: dict[str, torch.Tensor] = {}
    wrong: list[str] = []
    for name, value in state.items():
        if name not in own:
            report.unused.append(name)
            continue
        target = own[name]
        if value.shape == target.shape:
            fitting[name] = value
        elif value.ndim == 4 and value.shape[1] == 3 and target.shape == (value.shape[0], 1, *value.shape[2:]):
            # grey input: R = G = B, so the summed kernel answers as the colour one did
            fitting[name] = value.sum(dim=1, keepdim=True)
            report.adapted.append(f"{name}: 3 -> 1 input channel (kernels summed)")
        else:
            wrong.append(f"{name} {tuple(value.shape)} (the model's: {tuple(target.shape)})")
    stray = [k for k in report.unused if not any(f".{head}" in f".{k}" for head in HEADS)
             and not k.endswith("num_batches_tracked")]  # a frozen BatchNorm keeps no count
    if stray:
        wrong.append(f"{len(stray)} tensors this {arch} has no place for, e.g. {', '.join(stray[:3])}")
    if wrong:
        raise WeightsError(f"{source} does not fit this {arch}: " + "; ".join(wrong[:3])
                           + " (weights of another architecture or width)")
    if not fitting:
        raise WeightsError(f"{source}: no tensor matches a {arch} by name")
    module.load_state_dict(fitting, strict=False)
    report.loaded = len(fitting)
    report.missing = sorted(k for k in own if k not in fitting and not k.endswith("num_batches_tracked"))
    return report
