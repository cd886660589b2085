"""Thumbnails and the training tensor cache: shapes, formats, atomic writes, cache hits."""

import io
import threading

import numpy as np
import pytest
from PIL import Image

from imaging import files
from imaging.enhance import enhance
from imaging.tensor_cache import TensorCache
from imaging.thumbnails import encode_thumbnail, thumbnail, write_thumbnail

KEY = "3f" + "a1" * 31  # a sha256-like hex digest


def radiograph(h=480, w=400, seed=0):
    """Bright ellipse (body) with a denser bar (bone) on a dark noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    body = ((yy - h / 2) / (0.35 * h)) ** 2 + ((xx - w / 2) / (0.3 * w)) ** 2 <= 1
    img = np.where(body, 0.35, 0.08) + rng.normal(0, 0.01, (h, w))
    img[(np.abs(xx - w / 2) < 0.05 * w) & (np.abs(yy - h / 2) < 0.3 * h)] = 0.75
    return np.clip(img, 0, 1).astype(np.float32), body


@pytest.mark.parametrize(
    "shape, expected", [((480, 400), (256, 213)), ((300, 600), (128, 256)), ((100, 80), (256, 205))]
)
def test_thumbnail_long_side_and_aspect(shape, expected):
    img, _ = radiograph(*shape)
    thumb = thumbnail(img, size=256)
    assert thumb.dtype == np.uint8 and thumb.shape == expected


def test_thumbnail_is_enhanced_first():
    img, body = radiograph()
    thumb = thumbnail(img, size=240, method="fhe")
    small_body = np.asarray(Image.fromarray(body.astype(np.uint8) * 255).resize(thumb.shape[::-1])) > 127
    assert thumb[small_body].mean() > 100 > thumb[~small_body].mean()
    assert thumb.max() == 255  # full range: the body's histogram was stretched
    assert not np.array_equal(thumbnail(img, size=240, method="naive8"), thumb)


@pytest.mark.parametrize("fmt", ["webp", "png"])
def test_encode_decodes_back(fmt):
    thumb = thumbnail(radiograph()[0], size=128)
    data = encode_thumbnail(thumb, fmt)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == fmt.upper()
    back = np.asarray(decoded.convert("L"))
    assert back.shape == thumb.shape
    if fmt == "png":
        np.testing.assert_array_equal(back, thumb)
    else:
        assert np.abs(back.astype(int) - thumb).mean() < 4  # lossy but faithful


def test_encode_rejects_bad_input():
    with pytest.raises(ValueError, match="format"):
        encode_thumbnail(np.zeros((4, 4), np.uint8), "gif")
    with pytest.raises(ValueError, match="uint8"):
        encode_thumbnail(np.zeros((4, 4), np.float32))


def test_write_thumbnail_leaves_only_the_file(tmp_path):
    path = write_thumbnail(radiograph()[0], tmp_path / "sub" / "a.webp", size=64)
    assert path == tmp_path / "sub" / "a.webp"
    assert [p.name for p in path.parent.iterdir()] == ["a.webp"]
    assert Image.open(path).size == (53, 64)


def test_failed_write_keeps_the_old_thumbnail_and_no_temp_file(tmp_path, monkeypatch):
    img, _ = radiograph()
    path = write_thumbnail(img, tmp_path / "a.png", size=64)
    before = path.read_bytes()

    def crash(*_):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_thumbnail(1 - img, path, size=64)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_tensor_cache_round_trip_and_hit(tmp_path):
    img, _ = radiograph()
    calls = []

    def load():
        calls.append(1)
        return img

    cache = TensorCache(tmp_path, size=128, method="fhe")
    assert not cache.has(KEY)
    first = cache.get(KEY, load)
    assert cache.has(KEY) and cache.path(KEY) == tmp_path / "fhe_128_v2" / KEY[:2] / f"{KEY}.npy"
    assert first.dtype == np.float16 and first.shape == (128, 128)
    assert isinstance(first, np.memmap)
    second = cache.get(KEY, load)
    assert len(calls) == 1
    np.testing.assert_array_equal(first, second)
    assert [p.name for p in cache.path(KEY).parent.iterdir()] == [f"{KEY}.npy"]


def test_tensor_cache_letterboxes(tmp_path):
    img, _ = radiograph(200, 400)  # landscape: 50 x 100 content centred on a 100 x 100 square
    out = np.asarray(TensorCache(tmp_path, size=100, method="he").get(KEY, lambda: img))
    assert out.shape == (100, 100)
    assert (out[:25] == 0).all() and (out[75:] == 0).all()
    content = out[25:75].astype(np.float32)
    assert content.min() >= 0 and content.max() <= 1 and content.std() > 0.1
    # Same picture as 4x4 box-averaging the enhanced image, within float16 precision.
    expected = enhance(img, "he").reshape(50, 4, 100, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(content, expected, atol=1e-3)


def test_tensor_cache_methods_and_sizes_are_separate(tmp_path):
    img, _ = radiograph()
    a = TensorCache(tmp_path, size=64, method="fhe").get(KEY, lambda: img)
    b = TensorCache(tmp_path, size=64, method="naive8").get(KEY, lambda: img)
    assert not np.array_equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fhe_64_v2", "naive8_64_v2"]


def test_tensor_cache_concurrent_writers_of_one_key(tmp_path):
    img, _ = radiograph()
    both_loading = threading.Barrier(2)

    def load():
        both_loading.wait(timeout=10)  # force both threads to miss and write
        return img

    cache = TensorCache(tmp_path, size=64)
    results = [None, None]

    def worker(i):
        results[i] = np.asarray(cache.get(KEY, load))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(np.load(cache.path(KEY)), results[0])
    assert [p.name for p in cache.path(KEY).parent.iterdir()] == [f"{KEY}.npy"]


def test_tensor_cache_rejects_non_hex_keys(tmp_path):
    cache = TensorCache(tmp_path)
    for key in ("../etc/passwd", "ABC", "x", ""):
        with pytest.raises(ValueError, match="hex"):
            cache.path(key)
    with pytest.raises(ValueError, match="unknown enhancement"):
        TensorCache(tmp_path, method="magic")


def test_imaging_has_one_resize_and_one_letterbox():
    """Thumbnails, the ROI's working image and the tensor cache share imaging.resize; the old
    import paths (imaging.thumbnails.resize_long_side, imaging.tensor_cache.letterbox) still work."""
    from imaging import resize, roi, tensor_cache, thumbnails

    assert thumbnails.resize_long_side is resize.resize_long_side is roi.resize_long_side
    assert tensor_cache.resize_long_side is resize.resize_long_side
    assert tensor_cache.letterbox is resize.letterbox
    img = np.random.default_rng(0).random((300, 120), dtype=np.float32)
    assert resize.resize_long_side(img, 100).shape == (100, 40)
    boxed = resize.letterbox(img, 100)
    assert boxed.shape == (100, 100) and not boxed[:, :30].any() and not boxed[:, 70:].any()
