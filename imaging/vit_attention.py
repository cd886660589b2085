"""DINO ViT-S/8 rebuilt as a torchvision VisionTransformer, and its last block's CLS attention.

torchvision gives a maintained ViT; DINO checkpoints only need their keys renamed. Weights are
never downloaded: the caller supplies a file.
"""

from __future__ import annotations

import argparse
import re
import threading
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

HIDDEN_DIM, NUM_HEADS, NUM_LAYERS, MLP_DIM = 384, 6, 12, 1536  # ViT-S
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINO was trained on ImageNet-normalised RGB
IMAGENET_STD = (0.229, 0.224, 0.225)

_WRAPPERS = ("teacher", "student", "model", "state_dict")
_PREFIXES = ("module.", "backbone.")
_DINO_TOP = {
    "cls_token": "class_token",
    "pos_embed": "encoder.pos_embedding",
    "patch_embed.proj.weight": "conv_proj.weight",
    "patch_embed.proj.bias": "conv_proj.bias",
    "norm.weight": "encoder.ln.weight",
    "norm.bias": "encoder.ln.bias",
}
_DINO_BLOCK = {
    "norm1": "ln_1",
    "attn.qkv.weight": "self_attention.in_proj_weight",  # both stack q, k, v in that order
    "attn.qkv.bias": "self_attention.in_proj_bias",
    "attn.proj": "self_attention.out_proj",
    "norm2": "ln_2",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.3",
}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)$")
_HOOK_LOCK = threading.Lock()  # a hook sees every forward through the module, any thread's


def build_vit(image_size: int = 224, patch_size: int = 8) -> VisionTransformer:
    """A randomly initialised ViT-S without classifier head, in eval mode."""
    model = VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        num_layers=NUM_LAYERS,
        num_heads=NUM_HEADS,
        hidden_dim=HIDDEN_DIM,
        mlp_dim=MLP_DIM,
    )
    model.heads = nn.Identity()  # only attention is used; a 1000-class head would be dead weight
    return model.eval()


def state_dict_from_checkpoint(obj) -> dict[str, torch.Tensor]:
    """Unwrap DINO/Lightning/DDP checkpoints down to a flat ``name -> tensor`` dict."""
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise ValueError(f"expected a state dict, got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        out[key] = value
    return out


def dino_to_torchvision(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename DINO (timm-style) keys; unknown keys pass through so they are reported."""
    out = OrderedDict()
    for key, value in sd.items():
        if key.startswith("head."):
            continue  # DINO projection head / linear classifier: not part of the backbone
        if key in _DINO_TOP:
            out[_DINO_TOP[key]] = value
            continue
        m = _BLOCK_KEY.match(key)
        if m:
            i, name, kind = m.groups()
            full = f"{name}.{kind}"
            if full in _DINO_BLOCK:
                out[f"encoder.layers.encoder_layer_{i}.{_DINO_BLOCK[full]}"] = value
                continue
            if name in _DINO_BLOCK:
                out[f"encoder.layers.encoder_layer_{i}.{_DINO_BLOCK[name]}.{kind}"] = value
                continue
        out[key] = value
    return out


def _is_torchvision(sd: dict) -> bool:
    return any(k.startswith(("conv_proj.", "encoder.", "class_token")) for k in sd)


def _read(path: Path):
    # weights_only keeps a user-supplied file from running code; DINO's full training
    # checkpoints also pickle their argparse.Namespace, which is safe to allow.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def load_vit(weights_path: str | Path, image_size: int = 224, patch_size: int = 8) -> VisionTransformer:
    """ViT-S/``patch_size`` with weights from a DINO- or torchvision-named file.

    Position embeddings are interpolated when the file was trained at another image size.
    Raises ValueError (naming missing/unexpected keys or bad shapes) when the weights don't fit.
    """
    path = Path(weights_path)
    try:
        raw = _read(path)
    except Exception as exc:  # torch raises many types for unreadable/foreign files
        raise ValueError(f"cannot read ViT weights from {path}: {exc}") from exc
    sd = state_dict_from_checkpoint(raw)
    if not _is_torchvision(sd):
        sd = dino_to_torchvision(sd)
    sd = OrderedDict((k, v) for k, v in sd.items() if not k.startswith("heads."))

    model = build_vit(image_size, patch_size)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path} is not a ViT-S/{patch_size} state dict (DINO or torchvision naming): "
            f"missing keys {_short(missing)}; unexpected keys {_short(unexpected)}"
        )
    try:
        if sd["encoder.pos_embedding"].shape != expected["encoder.pos_embedding"].shape:
            sd = interpolate_embeddings(image_size, patch_size, sd)
        model.load_state_dict(sd, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{path}: tensor shapes do not fit ViT-S/{patch_size}: {exc}") from exc
    return model


def _short(keys: list[str], n: int = 8) -> str:
    return (
        "[]" if not keys else ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")
    )


def to_model_input(img: np.ndarray, image_size: int) -> torch.Tensor:
    """Grey [0, 1] image -> (1, 3, S, S) ImageNet-normalised tensor (square resize)."""
    h, w = img.shape
    interp = cv2.INTER_AREA if max(h, w) > image_size else cv2.INTER_LINEAR
    small = cv2.resize(img.astype(np.float32), (image_size, image_size), interpolation=interp)
    x = torch.from_numpy(small)[None, None].expand(1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def cls_attention(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Last block's CLS->patch attention, (B, heads, grid, grid).

    torchvision's EncoderBlock asks for ``need_weights=False``, so the weights are recomputed
    from the last block's normalised input (captured by a hook) and its q/k projections.
    """
    block = model.encoder.layers[-1]
    captured: dict[str, torch.Tensor] = {}
    with _HOOK_LOCK:
        handle = block.ln_1.register_forward_hook(lambda _m, _i, out: captured.__setitem__("tokens", out))
        try:
            with torch.inference_mode():
                model(x)
        finally:
            handle.remove()
    tokens = captured["tokens"]
    attn = block.self_attention
    b, n, d = tokens.shape
    heads = attn.num_heads
    bias = None if attn.in_proj_bias is None else attn.in_proj_bias[: 2 * d]
    with torch.inference_mode():
        q, k = F.linear(tokens, attn.in_proj_weight[: 2 * d], bias).split(d, dim=-1)
        q = q[:, :1].reshape(b, 1, heads, d // heads).transpose(1, 2)  # only the CLS query is needed
        k = k.reshape(b, n, heads, d // heads).transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-2, -1) * (d // heads) ** -0.5, dim=-1)
    grid = int(round((n - 1) ** 0.5))
    return weights[:, :, 0, 1:].reshape(b, heads, grid, grid)
