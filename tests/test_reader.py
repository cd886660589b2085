"""read_radiograph: every real sample file decodes correctly or is rejected with a reason."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_fragments

from imaging.errors import ImageRejected
from imaging.reader import read_radiograph
from tests.conftest import pydicom_data_radiographs, pydicom_test_files
from tests.factories import dicom_bytes

REJECTION_CODES = {"not_image", "no_pixel_data", "truncated", "corrupt", "unsupported_transfer_syntax",
                   "decode_failed", "too_large", "unreadable"}


def _modality_values(path: Path) -> np.ndarray | None:
    """pydicom's own decode + modality LUT, the reference our voi='none' output must match."""
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(path, force=True)
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    if arr.ndim != 2:
        return None
    return apply_modality_lut(arr, ds).astype(np.float64)


@pytest.mark.parametrize("path", pydicom_test_files() + pydicom_data_radiographs(), ids=lambda p: p.name)
def test_every_sample_file_is_imported_correctly_or_rejected_with_a_reason(path: Path):
    try:
        rad = read_radiograph(path, voi="none")
    except ImageRejected as exc:
        assert exc.code in REJECTION_CODES, exc
        assert len(exc.reason) > 10 and "\n" not in exc.reason
        return
    px = rad.pixels
    assert px.dtype == np.float32 and px.ndim == 2
    assert np.isfinite(px).all() and px.min() >= 0.0 and px.max() <= 1.0
    assert (rad.meta.rows, rad.meta.columns) == px.shape
    if rad.meta.format == "dicom" and "converted_from" not in rad.meta.extra:
        ref = _modality_values(path)
        if ref is not None and ref.std() > 0:
            # voi="none" is a linear map of the modality values: correlation is exactly +-1,
            # negative for MONOCHROME1 (we invert so bone is bright).
            r = np.corrcoef(ref.ravel(), px.ravel().astype(np.float64))[0, 1]
            expected = -1.0 if rad.meta.photometric == "MONOCHROME1" else 1.0
            assert r == pytest.approx(expected, abs=1e-4)
    # The default VOI path must also produce a valid image.
    auto = read_radiograph(path)
    assert auto.pixels.shape == px.shape and 0.0 <= auto.pixels.min() <= auto.pixels.max() <= 1.0


@pytest.mark.parametrize("name,code", [
    ("rtplan.dcm", "no_pixel_data"),
    ("README.txt", "not_image"),
    ("MR_truncated.dcm", "truncated"),
    ("JPEG-lossy.dcm", "decode_failed"),
])
def test_known_bad_samples_get_the_right_reason(name: str, code: str):
    path = next(p for p in pydicom_test_files() if p.name == name)
    with pytest.raises(ImageRejected) as err:
        read_radiograph(path)
    assert err.value.code == code


def test_compressed_transfer_syntaxes_decode_to_the_uncompressed_reference():
    files = {p.stem: p for p in pydicom_data_radiographs()}
    assert {"RG1_J2KR", "RG1_UNCR", "RG3_J2KR", "RG3_UNCR", "RG3_J2KI"} <= set(files)
    for stem in ("RG1", "RG3"):
        lossless = read_radiograph(files[f"{stem}_J2KR"]).pixels
        reference = read_radiograph(files[f"{stem}_UNCR"]).pixels
        assert np.array_equal(lossless, reference)
        lossy = read_radiograph(files[f"{stem}_J2KI"]).pixels
        assert np.abs(lossy - read_radiograph(files[f"{stem}_UNCI"]).pixels).mean() < 0.02


@pytest.mark.parametrize("stem", ["RG3_UNCR", "RG3_UNCI", "RG3_J2KR", "RG3_J2KI"])
def test_rg3_monochrome1_extremity_has_bone_bright_and_background_dark(stem: str):
    path = next(p for p in pydicom_data_radiographs() if p.stem == stem)
    rad = read_radiograph(path)
    assert rad.meta.photometric == "MONOCHROME1" and rad.meta.bits_stored == 10
    px = rad.pixels
    background = px[700:900, 500:620].mean()  # direct exposure beside the leg
    bone = px[700:900, 820:940].mean()  # tibial shaft
    assert background < 0.2 and bone > 0.5, (background, bone)
    assert rad.meta.body_part == "EXTREMITY"


# ----------------------------------------------------------------- synthetic DICOM


GRADIENT = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (64, 1))  # 64 x 256, 12-bit ramp


def test_monochrome1_is_inverted_and_window_applied():
    mono2 = read_radiograph(dicom_bytes(GRADIENT, WindowCenter=2048, WindowWidth=4096)).pixels
    mono1 = read_radiograph(dicom_bytes(GRADIENT, WindowCenter=2048, WindowWidth=4096,
                                   PhotometricInterpretation="MONOCHROME1")).pixels
    assert mono2[0, 0] < 0.01 and mono2[0, -1] > 0.99
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_voi_choice_window_versus_full_range_keeps_full_bit_depth():
    data = dicom_bytes(GRADIENT, WindowCenter=1024, WindowWidth=512)
    windowed = read_radiograph(data, voi="window")
    full = read_radiograph(data, voi="none")
    assert windowed.meta.voi == "window" and full.meta.voi == "none"
    assert (windowed.pixels >= 1.0).mean() > 0.6  # most of the ramp is above the window
    assert len(np.unique(full.pixels)) == 256  # every 12-bit step kept, no 8-bit squeeze
    np.testing.assert_allclose(full.pixels[0], np.linspace(0, 1, 256), atol=1e-6)


def test_rescale_slope_intercept_is_applied_before_windowing():
    # Stored 0..4080; HU-like = stored * 2 - 1000 -> window [-1000, 7160] covers all.
    rad = read_radiograph(dicom_bytes(GRADIENT, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=3080, WindowWidth=8160))
    assert rad.pixels[0, 0] == pytest.approx(0.0, abs=1e-3) and rad.pixels[0, -1] == pytest.approx(1.0, abs=1e-3)


def test_voi_lut_sequence_is_used_when_present():
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.LUTData = [4095 - i for i in range(4096)]  # a LUT that inverts
    lut["LUTData"].VR = "US"
    rad = read_radiograph(dicom_bytes(GRADIENT, VOILUTSequence=[lut]))
    assert rad.meta.voi == "lut"
    assert rad.pixels[0, 0] > 0.99 and rad.pixels[0, -1] < 0.01


def test_metadata_a_radiologist_cares_about():
    rad = read_radiograph(dicom_bytes(GRADIENT, BodyPartExamined="KNEE", ViewPosition="AP", ImageLaterality="L",
                                 PixelSpacing=[0.143, 0.143], Manufacturer="ACME", StudyInstanceUID="1.2.3.4"))
    m = rad.meta
    assert (m.modality, m.body_part, m.view_position, m.laterality) == ("DX", "KNEE", "AP", "L")
    assert m.pixel_spacing == (0.143, 0.143) and m.bits_stored == 12 and m.manufacturer == "ACME"
    assert m.study_uid == "1.2.3.4" and m.format == "dicom"


def test_truncated_dicom_pixel_data():
    data = dicom_bytes(GRADIENT)
    with pytest.raises(ImageRejected) as err:
        read_radiograph(data[: len(data) - 1000])
    assert err.value.code in ("truncated", "corrupt")


def test_header_claiming_a_gigantic_image_is_refused_before_decoding():
    ds_bytes = dicom_bytes(np.zeros((4, 4), np.uint16))
    ds = pydicom.dcmread(io.BytesIO(ds_bytes))
    ds.Rows, ds.Columns = 60000, 60000
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(ImageRejected) as err:
        read_radiograph(buf.getvalue())
    assert err.value.code == "too_large" and "decompression" in err.value.reason


def test_non_image_bytes_are_rejected():
    for data in (b"", b"hello world" * 50, bytes(range(256)) * 10, b"\x89PNG\r\n\x1a\n" + b"\x00" * 40):
        with pytest.raises(ImageRejected) as err:
            read_radiograph(data)
        assert err.value.code in REJECTION_CODES


# ----------------------------------------------------------------- raster formats


def _encode(arr: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format=fmt) if mode else Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def test_png_8_and_16_bit_keep_their_depth():
    ramp16 = np.tile(np.arange(0, 65536, 257, dtype=np.uint16), (8, 1))
    r16 = read_radiograph(_encode(ramp16, "PNG"))
    assert r16.meta.bits_stored == 16 and r16.meta.format == "png"
    np.testing.assert_allclose(r16.pixels[0], ramp16[0] / 65535.0, atol=1e-6)
    ramp12 = (np.tile(np.arange(4096, dtype=np.uint16), (4, 1)))
    r12 = read_radiograph(_encode(ramp12, "PNG"))
    assert r12.meta.bits_stored == 12 and len(np.unique(r12.pixels)) == 4096
    ramp8 = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    r8 = read_radiograph(_encode(ramp8, "PNG"))
    assert r8.meta.bits_stored == 8
    np.testing.assert_allclose(r8.pixels[0], ramp8[0] / 255.0, atol=1e-6)


def test_jpeg_tiff_and_colour_inputs():
    img = (np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8)
    jpg = read_radiograph(_encode(img, "JPEG"))
    assert jpg.meta.format == "jpeg" and jpg.pixels.shape == (40, 50)
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, (img.astype(np.uint16) * 16))
    tif = read_radiograph(buf.getvalue())
    assert tif.meta.format == "tiff" and tif.meta.bits_stored == 12
    rgb = np.stack([img, img, img], -1)
    col = read_radiograph(_encode(rgb, "PNG"))
    assert col.meta.extra["converted_from"] == "RGB"
    np.testing.assert_allclose(col.pixels, img / 255.0, atol=1e-2)


def test_truncated_png_is_rejected_not_crashing():
    data = _encode((np.random.default_rng(1).random((200, 200)) * 65535).astype(np.uint16), "PNG")
    with pytest.raises(ImageRejected) as err:
        read_radiograph(data[: len(data) // 2])
    assert err.value.code in ("truncated", "corrupt")


def test_png_bomb_is_refused_from_its_header():
    # A valid PNG header claiming 100,000 x 100,000 pixels with almost no data.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    with pytest.raises(ImageRejected) as err:
        read_radiograph(png)
    assert err.value.code == "too_large"


# ----------------------------------------------------------------- rejection codes of cut files
# The code comes from exception types and the file's own structure (pixel data length against
# the header, end markers, where the strips lie), never from a decoder's message text: these
# files are cut or damaged here, and each must keep its code whatever pydicom, PIL or tifffile
# say about it.


def _sample(name: str) -> bytes:
    return Path(get_testdata_file(name)).read_bytes()


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
@pytest.mark.parametrize("kept", [0.0, 0.1, 0.5, 0.99])
def test_native_dicom_cut_inside_its_pixel_data_is_truncated(name: str, kept: float):
    data = _sample(name)
    value = bytes(pydicom.dcmread(io.BytesIO(data)).PixelData)
    start = data.rindex(value)  # CT_small.dcm has elements after its pixel data
    with pytest.raises(ImageRejected) as err:
        read_radiograph(data[: start + int(kept * len(value))])
    assert err.value.code == "truncated", err.value
    assert "pixel data shorter than the header says" in err.value.reason


def test_native_shortfall_is_found_before_decoding(monkeypatch):
    """The truncation is the reader's own check (pixel data length against Rows x Columns x
    samples x bits x frames), not an interpretation of what the decoder raises."""
    import pydicom.pixels

    def no_decoding(*args, **kwargs):
        raise AssertionError("the decoder must not be asked")

    monkeypatch.setattr(pydicom.pixels, "pixel_array", no_decoding)
    data = dicom_bytes(GRADIENT)
    with pytest.raises(ImageRejected) as err:
        read_radiograph(data[:-1000])
    assert err.value.code == "truncated"
    assert f"{GRADIENT.nbytes - 1000:,} of {GRADIENT.nbytes:,} bytes" in err.value.reason


def test_native_pixel_data_of_odd_length_and_padded_is_not_truncated():
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.zeros((3, 5), np.uint16))))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.arange(15, dtype=np.uint8).tobytes()  # 15 bytes, written with a pad byte
    buf = io.BytesIO()
    ds.save_as(buf)
    assert read_radiograph(buf.getvalue(), voi="none").pixels.shape == (3, 5)


def test_dicom_cut_inside_a_sequence_item_header_is_truncated():
    data = _sample("JPEG2000.dcm")
    with pytest.raises(ImageRejected) as err:
        read_radiograph(data[:1000])  # pydicom raises OSError: no item tag to read
    assert err.value.code == "truncated"


RAMP = (np.random.default_rng(3).random((64, 64)) * 65535).astype(np.uint16)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_cut_png_and_jpeg_are_truncated(fraction: float):
    for data in (_encode(RAMP, "PNG"), _encode((RAMP >> 8).astype(np.uint8), "JPEG")):
        with pytest.raises(ImageRejected) as err:
            read_radiograph(data[: int(len(data) * fraction)])
        assert err.value.code == "truncated", err.value


def test_whole_png_and_jpeg_with_bad_data_are_corrupt():
    png = bytearray(_encode(RAMP, "PNG"))
    mid = len(png) // 2
    png[mid : mid + 16] = bytes(16)  # inside the compressed image data; the IEND chunk is intact
    with pytest.raises(ImageRejected) as err:
        read_radiograph(bytes(png))
    assert err.value.code == "corrupt"
    jpg = bytearray(_encode((RAMP >> 8).astype(np.uint8), "JPEG"))
    # Start-of-frame markers whose lengths run past the end: PIL reports "Truncated File Read",
    # but the file is whole (it ends with its EOI marker), so the data is bad, not missing.
    jpg[200:400] = b"\xff\xc0" * 100
    with pytest.raises(ImageRejected) as err:
        read_radiograph(bytes(jpg))
    assert err.value.code == "corrupt"


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_cut_tiff_is_truncated_and_bad_strip_data_is_corrupt(compression):
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, RAMP, compression=compression)
    data = buf.getvalue()
    for fraction in (0.5, 0.99):
        with pytest.raises(ImageRejected) as err:
            read_radiograph(data[: int(len(data) * fraction)])  # the strip runs past the end
        assert err.value.code == "truncated", err.value
    if compression:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            start = int(tif.pages[0].dataoffsets[0])
        bad = bytearray(data)
        bad[start + 10 : start + 40] = b"\xff" * 30
        with pytest.raises(ImageRejected) as err:
            read_radiograph(bytes(bad))
        assert err.value.code == "corrupt"


def test_encapsulated_data_no_installed_plugin_can_decode_is_decode_failed():
    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    frame = bytearray(next(f for f in generate_fragments(ds.PixelData) if len(f) > 64))
    frame[-500:] = b"\x80" * 500  # RLE no-op bytes: the segments decode too short
    ds.PixelData = encapsulate([bytes(frame)])
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(ImageRejected) as err:
        read_radiograph(buf.getvalue())
    assert err.value.code == "decode_failed"
