"""The ROI masker on synthetic radiographs with the usual clutter."""

import cv2
import numpy as np
import pytest

from imaging.roi import ClassicRoi, make_roi
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


def test_make_roi():
    assert isinstance(make_roi(None), ClassicRoi)
    assert isinstance(make_roi("classic"), ClassicRoi)
    for spec in ("sam:whatever", "attention:/path/dino_deitsmall8_pretrain.pth", ""):
        with pytest.raises(ValueError, match="unknown ROI spec"):
            make_roi(spec)
