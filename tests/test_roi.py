"""ROI maskers: the classic one on synthetic radiographs with the usual clutter, and the DINO
attention one with random ViT-S/8 weights (real weights cannot be downloaded here)."""

import argparse

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imaging import vit_attention
from imaging.roi import AttentionRoi, ClassicRoi, make_roi
from tests.factories import forearm

H, W = 480, 400


def radiograph(h=H, w=W, seed=0):
    return forearm(h, w, seed)


def edge_bands(shape, **depths):
    """Mask of bands along the named edges, depth as a fraction of that dimension."""
    h, w = shape
    m = np.zeros(shape, bool)
    if "top" in depths:
        m[: round(depths["top"] * h)] = True
    if "bottom" in depths:
        m[h - round(depths["bottom"] * h) :] = True
    if "left" in depths:
        m[:, : round(depths["left"] * w)] = True
    if "right" in depths:
        m[:, w - round(depths["right"] * w) :] = True
    return m


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def collimated():
    img, body = radiograph()
    band = edge_bands(img.shape, top=0.2, right=0.15)
    img[band] = np.clip(0.97 + np.random.default_rng(1).normal(0, 0.005, band.sum()), 0, 1)
    return img, body, band


def shuttered():
    img, body = radiograph()
    band = edge_bands(img.shape, left=0.15, bottom=0.12)
    img[band] = 0.0  # electronic shutter: exactly black, no noise
    return img, body, band


def marked():
    img, body = radiograph()
    marker = np.zeros(img.shape, np.uint8)
    cv2.putText(marker, "L", (20, 90), cv2.FONT_HERSHEY_SIMPLEX, 2.5, 1, 7)
    img[marker > 0] = 1.0
    return img, body, marker > 0


def tilted_collimation():
    img, body = radiograph()
    yy, xx = np.mgrid[0:H, 0:W]
    band = (yy + 0.15 * xx) < 0.22 * H
    img[band] = 0.96
    return img, body, band


@pytest.mark.parametrize("case", [collimated, shuttered, marked, tilted_collimation])
def test_classic_roi_finds_the_body_despite_clutter(case):
    img, body, clutter = case()
    mask = ClassicRoi()(img)
    assert mask.dtype == bool and mask.shape == img.shape
    assert iou(mask, body) > 0.8
    assert (mask & clutter).sum() < 0.01 * clutter.sum()


def test_classic_roi_on_a_plain_image():
    img, body = radiograph()
    assert iou(ClassicRoi()(img), body) > 0.8


def test_classic_roi_on_a_large_non_square_image():
    img, body = radiograph(1500, 900)
    assert iou(ClassicRoi()(img), body) > 0.8


def test_collimation_touching_the_body_is_cut_off():
    img, body = radiograph()
    band = edge_bands(img.shape, top=0.4)  # covers the top of the body
    img[band] = 0.97
    assert iou(ClassicRoi()(img), body & ~band) > 0.8


def collimation_with_a_marker_on_its_edge():
    """A burned-in side marker box hanging off the blade's inner edge (seen on phantoms: the
    blade was then taken for a body outline and the frame became the "body")."""
    img, body, band = tilted_collimation()
    yy, xx = np.mgrid[0:H, 0:W]
    box = (xx > 20) & (xx < 70) & (yy > 0.22 * H - 0.15 * xx - 5) & (yy < 0.22 * H - 0.15 * xx + 40)
    img[box] = 0.96
    return img, body, band | box


def collimation_as_bright_as_bone():
    """After the display curve the unexposed band can be no brighter than cortical bone."""
    img, body = radiograph()
    band = edge_bands(img.shape, top=0.15, bottom=0.15)
    level = float(np.percentile(img[body & ~band], 97))
    img[band] = np.clip(level + np.random.default_rng(2).normal(0, 0.004, band.sum()), 0, 1)
    return img, body, band


@pytest.mark.parametrize(
    "case, expected",
    [(collimated, 0.9), (shuttered, 0.9), (tilted_collimation, 0.85), (collimation_with_a_marker_on_its_edge, 0.8),
     (collimation_as_bright_as_bone, 0.9)],
)
def test_borders_are_the_bands(case, expected):
    img, _, band = case()
    assert iou(ClassicRoi().borders(img), band) > expected


def test_noisy_dark_background_is_not_a_shutter():
    img, _ = radiograph()
    assert not ClassicRoi().borders(img).any()


@pytest.mark.parametrize(
    "img",
    [
        np.zeros((300, 200), np.float32),
        np.full((300, 200), 0.5, np.float32),
        np.ones((300, 200), np.float32),
        np.random.default_rng(0).random((300, 200), dtype=np.float32),
        np.random.default_rng(1).random((7, 5), dtype=np.float32),
    ],
    ids=["zeros", "grey", "ones", "noise", "tiny"],
)
def test_classic_roi_is_never_empty(img):
    mask = ClassicRoi()(img)
    assert mask.dtype == bool and mask.shape == img.shape and mask.any()


# --- AttentionRoi -----------------------------------------------------------------------

D, HEADS, MLP, PATCH = 384, 6, 1536, 8
SIZE = 128  # model input for the tests: 16x16 patches; 224 (the default) is 3x slower on CPU
GRID = SIZE // PATCH


def random_dino_state_dict(dim=D, mlp=MLP, image_size=SIZE, seed=0):
    """ViT-S/8 weights in facebookresearch/dino key naming. q/k weights are large enough for
    peaked (not uniform) attention, so comparisons below mean something."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    n = (image_size // PATCH) ** 2
    sd = {
        "cls_token": r(1, 1, dim),
        "pos_embed": r(1, n + 1, dim, std=0.2),
        "patch_embed.proj.weight": r(dim, 3, PATCH, PATCH, std=0.05),
        "patch_embed.proj.bias": r(dim),
        "norm.weight": 1 + r(dim),
        "norm.bias": r(dim),
    }
    for i in range(12):
        p = f"blocks.{i}."
        sd |= {
            p + "norm1.weight": 1 + r(dim),
            p + "norm1.bias": r(dim),
            p + "attn.qkv.weight": r(3 * dim, dim, std=0.1),
            p + "attn.qkv.bias": r(3 * dim),
            p + "attn.proj.weight": r(dim, dim),
            p + "attn.proj.bias": r(dim),
            p + "norm2.weight": 1 + r(dim),
            p + "norm2.bias": r(dim),
            p + "mlp.fc1.weight": r(mlp, dim),
            p + "mlp.fc1.bias": r(mlp),
            p + "mlp.fc2.weight": r(dim, mlp),
            p + "mlp.fc2.bias": r(dim),
        }
    return sd


def dino_reference_attention(sd, x):
    """DINO's own ViT forward (vision_transformer.py), written out independently of torchvision:
    last block's CLS attention over patches, (heads, n_patches)."""
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
    t = torch.cat([sd["cls_token"], t.flatten(2).transpose(1, 2)], dim=1) + sd["pos_embed"]
    for i in range(12):
        p = f"blocks.{i}."
        y = F.layer_norm(t, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        qkv = F.linear(y, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(1, -1, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (D // HEADS) ** -0.5).softmax(-1)
        if i == 11:
            return attn[0, :, 0, 1:]
        t = t + F.linear(
            (attn @ v).transpose(1, 2).reshape(1, -1, D), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"]
        )
        y = F.layer_norm(t, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        y = F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
        t = t + F.linear(y, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])


@pytest.fixture(scope="module")
def dino_weights(tmp_path_factory):
    sd = random_dino_state_dict()
    path = tmp_path_factory.mktemp("vit") / "dino_deitsmall8_pretrain.pth"
    torch.save(sd, path)
    return path, sd


@pytest.fixture(scope="module")
def dino_roi(dino_weights):
    return AttentionRoi(dino_weights[0], image_size=SIZE)


def test_attention_roi_matches_dino_reference(dino_weights, dino_roi):
    img, _ = radiograph()
    with torch.inference_mode():
        ref = dino_reference_attention(dino_weights[1], vit_attention.to_model_input(img, SIZE))
    ref = ref.mean(0).reshape(GRID, GRID).numpy()
    att = dino_roi.attention(img)
    assert att.shape == (GRID, GRID)
    assert ref.max() > 5 * ref.mean()  # peaked, so agreement is not trivial
    np.testing.assert_allclose(att, ref, rtol=1e-3, atol=1e-6)


def test_attention_roi_mask(dino_roi):
    img, _ = radiograph()
    kept = dino_roi.patch_mask(img)
    assert kept.shape == (GRID, GRID)
    assert abs(kept.mean() - 0.3) < 0.01
    mask = dino_roi(img)
    assert mask.dtype == bool and mask.shape == img.shape and mask.any()


def test_attention_roi_accepts_torchvision_naming_and_wrapped_checkpoints(tmp_path, dino_roi):
    img, _ = radiograph()
    expected = dino_roi.attention(img)

    tv = tmp_path / "torchvision.pth"
    head = {"heads.head.weight": torch.zeros(1000, D), "heads.head.bias": torch.zeros(1000)}
    torch.save(dino_roi.model.state_dict() | head, tv)  # a classifier head is ignored
    np.testing.assert_allclose(
        AttentionRoi(tv, image_size=SIZE).attention(img), expected, rtol=1e-5, atol=1e-8
    )

    # DINO's training checkpoint: DDP + MultiCropWrapper prefixes, a projection head, args.
    sd = random_dino_state_dict()
    wrapped = {"module.backbone." + k: v for k, v in sd.items()}
    wrapped["module.head.last_layer.weight"] = torch.zeros(4, D)
    ckpt = tmp_path / "checkpoint.pth"
    torch.save({"teacher": wrapped, "epoch": 3, "args": argparse.Namespace(arch="vit_small")}, ckpt)
    np.testing.assert_allclose(
        AttentionRoi(ckpt, image_size=SIZE).attention(img), expected, rtol=1e-5, atol=1e-8
    )


def test_attention_roi_other_image_size_interpolates_positions(dino_weights):
    roi = AttentionRoi(dino_weights[0], image_size=SIZE + 32)
    img, _ = radiograph()
    mask = roi(img)
    assert mask.shape == img.shape and mask.any()
    pos = roi.model.encoder.pos_embedding
    assert pos.shape == (1, (GRID + 4) ** 2 + 1, D)
    assert torch.equal(pos[0, 0], dino_weights[1]["pos_embed"][0, 0])  # CLS position kept as is


def test_bad_weights_give_a_clear_error(tmp_path, dino_weights):
    sd = dict(dino_weights[1])
    del sd["norm.weight"]
    sd["decoder.weight"] = torch.zeros(1)
    path = tmp_path / "wrong_keys.pth"
    torch.save(sd, path)
    with pytest.raises(
        ValueError, match=r"missing keys encoder\.ln\.weight.*unexpected keys decoder\.weight"
    ):
        AttentionRoi(path, image_size=SIZE)

    tiny = tmp_path / "vit_tiny.pth"  # right names, wrong model (ViT-Ti: 192 wide)
    torch.save(random_dino_state_dict(dim=192, mlp=768), tiny)
    with pytest.raises(ValueError, match="tensor shapes do not fit"):
        AttentionRoi(tiny, image_size=SIZE)

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="cannot read ViT weights"):
        AttentionRoi(junk, image_size=SIZE)


def test_make_roi(dino_weights):
    assert isinstance(make_roi(None), ClassicRoi)
    assert isinstance(make_roi("classic"), ClassicRoi)
    roi = make_roi(f"attention:{dino_weights[0]}")
    assert isinstance(roi, AttentionRoi)
    with pytest.raises(ValueError, match="unknown ROI spec"):
        make_roi("sam:whatever")
