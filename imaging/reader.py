"""Read any radiograph file (DICOM, PNG, JPEG, TIFF) into a float32 [0, 1] array plus metadata.

Every way a file can fail becomes an :class:`ImageRejected` with a short code and one line a
person can act on; nothing else escapes (the ingest of a 50,000-file dump must not die on one).
"""
from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from imaging.errors import ImageRejected, one_line
from imaging.radiograph import Radiograph, RadiographMeta

if TYPE_CHECKING:
    from imaging.deidentify import Deidentifier

Voi = Literal["auto", "lut", "window", "none"]

#: Decompression-bomb guard: ~ 8 times a large CR plate (3500 x 4300).
MAX_PIXELS = 120_000_000
#: Files larger than this are refused before they are read into memory.
MAX_FILE_BYTES = 2 * 1024**3

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC
_JPEG_END = b"\xff\xd9"  # EOI marker


def sniff_format(head: bytes) -> str | None:
    """Format from magic bytes; extensions lie in real dumps (``IM0001``, ``.dcm`` PNGs)."""
    if len(head) >= 132 and head[128:132] == b"DICM":  # first: a DICOM preamble may look like TIFF
        return "dicom"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head[:4] in _TIFF_MAGICS:
        return "tiff"
    return None


def read_radiograph(
    source: str | Path | bytes,
    *,
    voi: Voi = "auto",
    deidentifier: "Deidentifier | None" = None,
    max_pixels: int = MAX_PIXELS,
) -> Radiograph:
    """Decode a radiograph with bone bright and the full bit depth kept.

    ``voi`` picks the DICOM intensity transform: ``auto`` (VOI LUT, else window, else full
    range), ``lut``, ``window`` or ``none`` (full modality-LUT range). With a ``deidentifier``
    the metadata is taken from the de-identified dataset, so no PHI leaves this function.
    """
    data = read_bytes(source)
    fmt = sniff_format(data[:132])
    try:
        if fmt in ("png", "jpeg"):
            return _read_pil(data, fmt, max_pixels)
        if fmt == "tiff":
            return _read_tiff(data, max_pixels)
        return _read_dicom(data, voi, deidentifier, max_pixels, has_preamble=fmt == "dicom")
    except ImageRejected:
        raise
    except MemoryError:
        raise ImageRejected("too_large", "not enough memory to decode the image") from None
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    # A decoder bug on hostile bytes must still end as a reason. BaseException, not Exception:
    # the Rust decoders (pylibjpeg-rle) panic with pyo3's PanicException, a BaseException.
    except BaseException as exc:
        raise ImageRejected("corrupt", f"{type(exc).__name__}: {one_line(str(exc))}") from None


def read_bytes(source: str | Path | bytes) -> bytes:
    """The file's bytes, or ImageRejected (too large to read, unreadable)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    path = Path(source)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImageRejected("too_large", f"file is {size / 1024**3:.1f} GiB")
        return path.read_bytes()
    except ImageRejected:
        raise
    except OSError as exc:
        raise ImageRejected("unreadable", f"cannot read file: {exc.strerror or exc}") from None


def _check_size(rows: int, cols: int, frames: int, samples: int, max_pixels: int) -> None:
    total = rows * cols * max(frames, 1) * max(samples, 1)
    if rows <= 0 or cols <= 0:
        raise ImageRejected("no_pixel_data", f"image has {rows} x {cols} pixels")
    if total > max_pixels:
        raise ImageRejected(
            "too_large",
            f"{cols} x {rows} x {frames} frames x {samples} samples = {total:,} values "
            f"exceeds the limit of {max_pixels:,} (decompression-bomb guard)",
        )


def _normalise(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _to_gray(arr: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Colour inputs become luminance (ITU-R BT.601), recorded so the sorter can flag them."""
    if arr.ndim == 2:
        return arr, None
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3].astype(np.float32)
        return rgb @ np.array([0.299, 0.587, 0.114], np.float32), "RGB"
    if arr.ndim == 3 and arr.shape[-1] == 2:  # grey + alpha
        return arr[..., 0], "LA"
    raise ImageRejected("not_image", f"unexpected pixel array shape {arr.shape}")


def _significant_bits(max_value: int, container_bits: int) -> int:
    """Real 16-bit PNG/TIFF exports often hold 10/12/14-bit data; scale by what is used."""
    for bits in (8, 10, 12, 14, 16):
        if bits <= container_bits and max_value < 2**bits:
            return bits
    return container_bits


# --------------------------------------------------------------------------- raster files


def _read_pil(data: bytes, fmt: str, max_pixels: int) -> Radiograph:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_size(img.height, img.width, getattr(img, "n_frames", 1), 1, max_pixels)
            img.load()
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_large", one_line(str(exc))) from None
    except UnidentifiedImageError:
        raise ImageRejected("not_image", f"not a readable {fmt.upper()} file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # PIL raises OSError for a short file and for bad data alike: the end marker says which.
        code = "truncated" if _raster_ends_early(data, fmt) else "corrupt"
        raise ImageRejected(code, f"{fmt.upper()} decoder: {one_line(str(exc))}") from None

    mode = img.mode
    converted = None
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.uint16)
        container = 16
    elif mode == "I":
        arr = np.asarray(img, dtype=np.int64)
        container = 16 if arr.min() >= 0 and arr.max() < 65536 else 32
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        container = 0
    elif mode in ("L", "1"):
        arr = np.asarray(img.convert("L"), dtype=np.uint8)
        container = 8
    else:  # P, RGB, RGBA, CMYK, LA, YCbCr ...
        arr, converted = _to_gray(np.asarray(img.convert("RGB"), dtype=np.uint8))
        container = 8
    return _raster_radiograph(arr, fmt, container, converted)


def _read_tiff(data: bytes, max_pixels: int) -> Radiograph:
    import tifffile

    data_end = None  # where the first page's strips/tiles end, once its IFD is read
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            shape = page.shape
            samples = shape[2] if len(shape) == 3 else 1
            _check_size(shape[0], shape[1], 1, samples, max_pixels)
            data_end = _tiff_data_end(page)
            arr = page.asarray()
    except ImageRejected:
        raise
    except Exception as exc:
        # tifffile and its codecs raise ValueError, zlib.error, TiffFileError ... for a short file
        # and for bad data alike: whether the page's data lies inside the file says which.
        code = "truncated" if data_end is not None and data_end > len(data) else "corrupt"
        raise ImageRejected(code, f"TIFF decoder: {one_line(str(exc))}") from None
    arr, converted = _to_gray(arr)
    if arr.dtype.kind == "f":
        container = 0
    else:
        container = arr.dtype.itemsize * 8
    return _raster_radiograph(arr, "tiff", container, converted)


def _raster_ends_early(data: bytes, fmt: str) -> bool:
    """Whether a PNG/JPEG file lacks its end marker (PNG: the IEND chunk; JPEG: EOI, trailing
    zero padding allowed), i.e. was cut short, rather than complete with bad data inside."""
    if fmt == "png":
        return _PNG_END not in data
    return not data.rstrip(b"\x00").endswith(_JPEG_END)


def _tiff_data_end(page) -> int | None:
    """One past the last byte of the page's strips or tiles, by its IFD; None if unknown."""
    try:
        ends = [int(o) + int(c) for o, c in zip(page.dataoffsets, page.databytecounts)]
    except Exception:  # an IFD too broken to say; the decoder's own error then stands
        return None
    return max(ends) if ends else None


def _raster_radiograph(arr: np.ndarray, fmt: str, container: int, converted: str | None) -> Radiograph:
    if arr.ndim != 2 or arr.size == 0:
        raise ImageRejected("not_image", f"unexpected pixel array shape {arr.shape}")
    if container == 0:  # float data has no fixed range
        lo, hi, bits = float(np.nanmin(arr)), float(np.nanmax(arr)), 32
    elif container > 16:
        lo, hi, bits = float(arr.min()), float(arr.max()), container
    else:
        bits = _significant_bits(int(arr.max()), container) if container > 8 else 8
        lo, hi = 0.0, float(2**bits - 1)
    meta = RadiographMeta(
        format=fmt, rows=int(arr.shape[0]), columns=int(arr.shape[1]), bits_stored=bits, voi="none"
    )
    if converted:
        meta.extra["converted_from"] = converted
    return Radiograph(_normalise(arr, lo, hi), meta)


# --------------------------------------------------------------------------- DICOM


def _read_dicom(
    data: bytes, voi: Voi, deidentifier: "Deidentifier | None", max_pixels: int, has_preamble: bool
) -> Radiograph:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
    except InvalidDicomError:
        raise ImageRejected("not_image", "not a DICOM, PNG, JPEG or TIFF file") from None
    except (EOFError, OSError) as exc:
        raise ImageRejected("truncated", f"DICOM file ends early: {one_line(str(exc))}") from None
    except Exception as exc:
        if has_preamble:
            raise ImageRejected("corrupt", f"DICOM header unreadable: {one_line(str(exc))}") from None
        raise ImageRejected("not_image", "not a DICOM, PNG, JPEG or TIFF file") from None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # forced parses of junk warn per element
        if not has_preamble and not _looks_like_dicom(ds):
            raise ImageRejected("not_image", "not a DICOM, PNG, JPEG or TIFF file")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        what = str(ds.get("SOPClassUID", "")) and getattr(ds.SOPClassUID, "name", str(ds.SOPClassUID))
        raise ImageRejected("no_pixel_data", f"DICOM object without pixel data ({what or 'unknown SOP class'})")

    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    _check_size(rows, cols, frames, samples, max_pixels)

    arr = _decode_pixels(ds, frames)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    extra: dict = {}
    if frames > 1:
        extra["frames"] = frames
        extra["frame_used"] = 0
    if samples > 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        arr, voi_used = _colour_to_gray(arr, ds, photometric), "none"
        extra["converted_from"] = photometric
    else:
        if arr.ndim != 2:
            raise ImageRejected("not_image", f"unexpected pixel array shape {arr.shape}")
        arr, voi_used = _grayscale_to_unit(arr, ds, voi)
        inverse = str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
        if (photometric == "MONOCHROME1") != inverse:
            arr = 1.0 - arr

    source_ds = deidentifier.dataset(ds) if deidentifier is not None else ds
    meta = _dicom_meta(source_ds, ds, arr.shape, photometric, voi_used, extra)
    return Radiograph(arr.astype(np.float32, copy=False), meta)


def _looks_like_dicom(ds) -> bool:
    """``force=True`` parses almost any bytes; demand a few real image-module elements."""
    wanted = {0x00280010, 0x00280011, 0x7FE00010, 0x00080016, 0x00080060}
    return len(set(ds.keys()) & wanted) >= 2


def _decode_pixels(ds, frames: int) -> np.ndarray:
    from pydicom.pixels import get_decoder, pixel_array
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ts = ds.file_meta.get("TransferSyntaxUID")
    if ts is None and ds.original_encoding[1] is not None:  # no file meta: infer from the encoding
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
        ts = ds.file_meta.TransferSyntaxUID
    ts_name = getattr(ts, "name", str(ts)) if ts else "implicit (no file meta)"
    if not ts:
        raise ImageRejected("unsupported_transfer_syntax", "no (0002,0010) Transfer Syntax UID to decode by")
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise ImageRejected("unsupported_transfer_syntax", f"no decoder exists for {ts_name}") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise ImageRejected("unsupported_transfer_syntax", f"no installed decoder for {ts_name} ({missing})")
    if decoder.is_native:
        shortfall = _native_shortfall(ds, frames)
        if shortfall:
            actual, expected = shortfall
            raise ImageRejected(
                "truncated", f"pixel data shorter than the header says: {actual:,} of {expected:,} bytes"
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(ds, index=0 if frames > 1 else None, raw=False)
    except NotImplementedError as exc:  # e.g. an element with an unknown VR met while decoding
        raise ImageRejected(
            "unsupported_transfer_syntax", f"no installed decoder for {ts_name}: {one_line(str(exc))}"
        ) from None
    except RuntimeError as exc:  # pydicom: every installed plugin for this syntax raised
        raise ImageRejected(
            "decode_failed", f"the installed {ts_name} decoders failed: {one_line(str(exc))}"
        ) from None
    except (ValueError, EOFError, AttributeError, KeyError, TypeError) as exc:
        raise ImageRejected(
            "corrupt", f"pixel data cannot be decoded ({ts_name}): {one_line(str(exc))}"
        ) from None
    return np.asarray(arr)


#: Bits Allocated values a native decoder accepts; others are the decoder's to reject.
_NATIVE_BITS = (1, 8, 16, 32, 64)


def _native_shortfall(ds, frames: int) -> tuple[int, int] | None:
    """(actual, expected) byte counts when native (uncompressed) pixel data is shorter than
    Rows x Columns x Samples per Pixel x Bits Allocated / 8 x frames (PS3.5 8.1.1), i.e. the file
    was cut inside its pixel data; None when it is long enough or the header is too broken to
    say (the decoder then rejects it with its own error)."""
    keyword = next((k for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in ds), None)
    if keyword is None:
        return None
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples, bits = int(ds.SamplesPerPixel), int(ds.BitsAllocated)
        photometric = str(ds.PhotometricInterpretation).strip().upper()
        actual = len(ds[keyword].value or b"")
    except Exception:  # missing or unreadable values
        return None
    if rows <= 0 or cols <= 0 or frames < 1 or samples not in (1, 3) or bits not in _NATIVE_BITS:
        return None
    expected = -(-rows * cols * samples * frames * bits // 8)  # 1-bit data is packed, not padded
    if photometric == "YBR_FULL_422":  # two luminance samples share one chroma pair (PS3.3 C.7.6.3.1.2)
        expected = expected // 3 * 2
    return (actual, expected) if actual < expected else None


def _colour_to_gray(arr: np.ndarray, ds, photometric: str) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, convert_color_space

    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    elif photometric.startswith("YBR"):  # pydicom returns RGB for most YBR data already
        if photometric in ("YBR_FULL", "YBR_FULL_422") and arr.ndim == 3:
            arr = convert_color_space(arr, photometric, "RGB")
    gray, _ = _to_gray(arr) if arr.ndim == 3 else (arr, None)
    bits = int(ds.get("BitsStored", 8) or 8) if photometric != "PALETTE COLOR" else 16
    hi = float(2**bits - 1) if gray.max() <= 2**bits - 1 else float(gray.max())
    return _normalise(gray, 0.0, hi)


def _grayscale_to_unit(arr: np.ndarray, ds, voi: Voi) -> tuple[np.ndarray, str]:
    """Modality LUT, then the chosen VOI transform, to [0, 1] in float (no 8-bit step)."""
    from pydicom.pixels import apply_modality_lut

    try:
        values = apply_modality_lut(arr, ds).astype(np.float64, copy=False)
    except Exception:  # a broken Modality LUT/rescale header: fall back to stored values
        values = arr.astype(np.float64)
    has_lut = bool(ds.get("VOILUTSequence"))
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    if voi in ("auto", "lut") and has_lut:
        out = _apply_voi_lut(values, ds)
        if out is not None:
            return out, "lut"
    if voi in ("auto", "window") and has_window:
        out = _apply_window(values, ds)
        if out is not None:
            return out, "window"
    lo, hi = float(values.min()), float(values.max())
    return _normalise(values, lo, hi), "none"


def _apply_voi_lut(values: np.ndarray, ds) -> np.ndarray | None:
    from pydicom.pixels import apply_voi

    try:
        item = ds.VOILUTSequence[0]
        if np.array_equal(values, np.round(values)):  # a LUT is indexed by integers
            values = values.astype(np.int64)
        out = apply_voi(values, ds).astype(np.float64)
        lut_max = float(np.max(item.LUTData)) if "LUTData" in item else float(out.max())
    except Exception:
        return None
    return _normalise(out, 0.0, lut_max) if lut_max > 0 else None


def _first(value) -> float:
    """Window Center/Width may be multi-valued (alternative views); the first is the default."""
    from pydicom.multival import MultiValue

    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0]
    return float(value)


def _apply_window(values: np.ndarray, ds) -> np.ndarray | None:
    """PS3.3 C.11.2.1.2 in float, straight to [0, 1]: pydicom's version maps to the stored
    range, which would need undoing."""
    try:
        center = _first(ds.WindowCenter)
        width = _first(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        return None
    func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if func == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif func == "LINEAR_EXACT":
        out = (values - center) / width + 0.5
    else:
        if width < 1:
            return None
        out = (values - (center - 0.5)) / max(width - 1, 1e-6) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _text(ds, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:
        return None
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _dicom_meta(ds, raw_ds, shape, photometric: str, voi_used: str, extra: dict) -> RadiographMeta:
    spacing = None
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = raw_ds.get(key)
            if value is not None and len(value) == 2:
                spacing = (float(value[0]), float(value[1]))
                break
        except (TypeError, ValueError):
            continue
    ts = raw_ds.file_meta.get("TransferSyntaxUID") if hasattr(raw_ds, "file_meta") else None
    laterality = _text(ds, "ImageLaterality") or _text(ds, "Laterality")
    try:
        bits = int(raw_ds.get("BitsStored", 0) or 0) or 8
    except (TypeError, ValueError):
        bits = 8
    return RadiographMeta(
        format="dicom",
        rows=int(shape[0]),
        columns=int(shape[1]),
        bits_stored=bits,
        photometric=photometric,
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        view_position=_text(ds, "ViewPosition"),
        laterality=laterality,
        pixel_spacing=spacing,
        manufacturer=_text(ds, "Manufacturer"),
        transfer_syntax=str(ts) if ts else None,
        patient_id=_text(ds, "PatientID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        sop_uid=_text(ds, "SOPInstanceUID"),
        study_date=_text(ds, "StudyDate"),
        voi=voi_used,
        extra=extra,
    )
