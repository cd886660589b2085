"""imaging.body_crop: what the clustering and sorting networks see."""
from __future__ import annotations

import numpy as np
import pytest

from imaging.body_crop import body_box, body_crop, body_mask
from imaging.phantoms import render_phantom
from imaging.roi import ClassicRoi, large_components, largest_component


def test_large_components_keeps_every_big_piece_and_drops_specks():
    mask = np.zeros((40, 40), bool)
    mask[2:12, 2:12] = True  # 100 px
    mask[20:28, 20:28] = True  # 64 px: a second vertebra
    mask[35, 35] = True  # a speck
    assert largest_component(mask).sum() == 100
    kept = large_components(mask, 0.05)
    assert kept.sum() == 164 and not kept[35, 35]
    assert not large_components(np.zeros((5, 5), bool), 0.05).any()


REGIONS = ("spine", "hand", "chest", "knee", "pelvis", "skull", "foot", "wrist")


def _bone_coverage(roi=None) -> np.ndarray:
    out = []
    for seed in range(1, 5):
        for region in REGIONS:
            ph = render_phantom(seed, region, size=256)
            keep = body_mask(ph.displayed(), roi)
            out.append((keep & ph.bone_mask).sum() / ph.bone_mask.sum())
    return np.array(out)


def test_crop_keeps_the_anatomy_better_than_a_plain_threshold():
    """Bone coverage over 32 phantoms (bone_mask includes bone hidden by the collimator, so 1.0
    is not always reachable), against Otsu's largest piece with no background test."""
    ours = _bone_coverage()
    plain = _bone_coverage(ClassicRoi(max_background_spread=float("inf")))
    assert np.median(ours) >= 0.98 and (ours >= 0.85).mean() >= 0.9, ours.round(2)
    assert (ours >= 0.85).mean() > (plain >= 0.85).mean() and ours.mean() > plain.mean()


@pytest.mark.parametrize("seed", [27, 40, 55])
def test_a_chest_filling_the_field_keeps_its_ribs(seed):
    """No background to threshold against: Otsu alone splits bone from soft tissue and the
    crop shrinks to the spine (the sorter then called these chests 'spine')."""
    ph = render_phantom(seed, "chest", size=256)
    bone = ph.bone_mask.sum()
    plain = body_mask(ph.displayed(), ClassicRoi(keep_components=0.05, max_background_spread=float("inf")))
    assert (plain & ph.bone_mask).sum() < 0.6 * bone, "the case this test is about"
    assert (body_mask(ph.displayed()) & ph.bone_mask).sum() > 0.9 * bone


def test_a_body_part_filling_the_image_is_all_body():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:200, 0:160]
    img = 0.25 + 0.2 * np.exp(-((xx - 80) ** 2) / 4000.0)  # soft tissue, thickest in the middle
    img = img + 0.5 * ((np.abs(xx - 80) < 12) | (np.abs((yy % 40) - 20) < 4))  # spine and ribs
    img = np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1).astype(np.float32)
    assert body_mask(img).mean() > 0.95
    assert body_mask(img, ClassicRoi(max_background_spread=float("inf"))).mean() < 0.7


@pytest.mark.parametrize("region", REGIONS)
def test_crop_is_the_box_of_the_mask_and_zero_outside(region):
    img = render_phantom(7, region, size=256).displayed()
    keep = body_mask(img)
    top, bottom, left, right = body_box(keep)
    out = body_crop(img)
    assert out.shape == (bottom - top, right - left)
    assert out.min() >= 0 and out.max() <= 1 and out.max() > 0.5
    assert np.all(out[~keep[top:bottom, left:right]] == 0), "nothing off the body reaches the network"


def test_collimation_frame_does_not_survive():
    rng = np.random.default_rng(0)
    img = np.full((200, 160), 0.95, np.float32)  # bright, unexposed collimator border
    img[30:170, 25:135] = rng.uniform(0.05, 0.1, (140, 110))  # exposed background
    img[60:140, 60:100] = rng.uniform(0.5, 0.7, (80, 40))  # the body part
    out = body_crop(img)
    assert out.shape[0] < 120 and out.shape[1] < 70, "cropped to the body, not the field"
    assert (out > 0.9).mean() < 0.2, "the bright frame is gone"
