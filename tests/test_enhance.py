"""Contrast enhancement: the acceptance test is that a collimation border, which drags global
HE around, leaves foreground HE's rendering of the body nearly unchanged."""

import numpy as np
import pytest

from imaging.enhance import ENHANCERS, clahe, enhance, foreground_he, global_he, naive_8bit
from tests.factories import forearm

BITS = 12


def radiograph(h=480, w=400, seed=0):
    return forearm(h, w, seed)


def collimate(img, top=0.2, right=0.15, value=0.97, seed=1):
    """Bright, slightly noisy collimation bands along the top and right edges."""
    h, w = img.shape
    band = np.zeros(img.shape, bool)
    band[: round(top * h)] = True
    band[:, w - round(right * w) :] = True
    out = img.copy()
    out[band] = np.clip(value + np.random.default_rng(seed).normal(0, 0.005, band.sum()), 0, 1)
    return out, band


def test_collimation_moves_global_he_but_not_foreground_he():
    img, body = radiograph()
    bordered, band = collimate(img)
    assert 0.25 <= band.mean() <= 0.35 and not (band & body).any()

    he_change = float(np.abs(global_he(bordered) - global_he(img))[body].mean())
    fhe_change = float(np.abs(foreground_he(bordered) - foreground_he(img))[body].mean())
    print(
        f"\nmean |change| inside the body from a {band.mean():.0%} collimation border: "
        f"global HE {he_change:.4f}, foreground HE {fhe_change:.4f}"
    )
    assert he_change > 0.1
    assert fhe_change < 0.02


def test_foreground_he_saturates_pixels_outside_the_roi_range():
    img, body = radiograph()
    bordered, band = collimate(img)
    out = foreground_he(bordered, mask=body)
    assert out[band].min() == 1.0  # collimation is brighter than all of the body
    assert out[body].min() < 0.05 and out[body].max() == 1.0  # the body gets the full range


def test_foreground_he_uses_the_given_roi_callable():
    img, body = radiograph()
    np.testing.assert_array_equal(foreground_he(img, roi=lambda _: body), foreground_he(img, mask=body))
    with pytest.raises(ValueError, match="mask shape"):
        foreground_he(img, mask=body[:-1])


@pytest.mark.parametrize("method", sorted(ENHANCERS))
def test_every_enhancer_returns_float32_in_unit_range(method):
    img, _ = radiograph(300, 220)
    out = enhance(img, method)
    assert out.dtype == np.float32 and out.shape == img.shape
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert out.std() > 0.1  # the image was actually rendered, not flattened


@pytest.mark.parametrize("method", sorted(ENHANCERS))
@pytest.mark.parametrize("value", [0.0, 0.4, 1.0])
def test_constant_image_gives_no_nan(method, value):
    out = enhance(np.full((64, 48), value, np.float32), method)
    assert out.dtype == np.float32 and out.shape == (64, 48)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("method", sorted(ENHANCERS))
@pytest.mark.parametrize("spread", [3e-8, 2e-5, 1e-4])
def test_nearly_flat_image_is_rendered_not_refused(method, spread):
    """Found by the fuzz test: a flat image resampled to a thumbnail carries float rounding
    noise, and 4096 float32 histogram bins over such a range made numpy raise."""
    img = (0.3 + np.random.default_rng(0).random((300, 300)) * spread).astype(np.float32)
    out = enhance(img, method)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_foreground_he_is_monotonic():
    img, body = radiograph()
    bordered, _ = collimate(img)
    for out in (foreground_he(bordered), foreground_he(bordered, mask=body)):
        order = np.argsort(bordered.ravel(), kind="stable")
        assert (np.diff(out.ravel()[order]) >= 0).all()


def test_foreground_he_keeps_more_than_8_bits():
    img, _ = radiograph()
    assert len(np.unique(img)) > 1000  # the 12-bit input really has the levels
    assert len(np.unique(foreground_he(img))) > 256
    assert len(np.unique(clahe(img))) > 256
    assert len(np.unique(enhance(img, "naive8"))) <= 256  # what the test guards against


def test_naive_8bit_is_min_max_uint8():
    img, _ = radiograph()
    out = naive_8bit(img * 0.5 + 0.2)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    np.testing.assert_array_equal(naive_8bit(np.full((5, 5), 0.3, np.float32)), 0)


def test_clahe_raises_local_contrast_more_with_a_higher_clip_limit():
    img, body = radiograph()
    # Contrast inside the soft tissue, away from bone: the part CLAHE is meant to lift.
    soft = body & (img < 0.5)
    low, high = clahe(img, clip_limit=0.002), clahe(img, clip_limit=0.05)
    assert high[soft].std() > low[soft].std() > 0


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="unknown enhancement"):
        enhance(np.zeros((4, 4), np.float32), "magic")
