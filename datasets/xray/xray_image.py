"""Read one chest radiograph (DICOM, or PNG/JPEG as in CheXpert) into a float image in [0, 1].

DICOM follows the standard's pixel pipeline, in this order (PS3.3 C.11 / PS3.4 N.2):
stored values -> Modality LUT (RescaleSlope/Intercept, or a Modality LUT Sequence) -> VOI LUT
Sequence, else the first WindowCenter/WindowWidth -> normalise by the range that stage can
produce -> invert for MONOCHROME1. So 1.0 is always "white" (dense) whichever way the file was
stored. Without a VOI LUT or window the standard leaves the display to the reader, and
``no_window`` decides:

- ``full_range``: normalise the Modality LUT output over the range it can produce (derived from
  BitsStored, PixelRepresentation and the rescale, never from the image's own values): a 12-bit
  image in a 16-bit container fills [0, 1], but a low-contrast image (a nuclear-medicine frame whose
  values span 0.4% of its signed 16-bit range) comes out nearly flat.
- ``percentile``: window the Modality LUT output to the image's own ``percentiles`` (e.g. 0.5 and
  99.5 of its values, linear interpolation), as viewers do for files without a window; a flat
  image, whose percentiles coincide, keeps the full range.

``apply_voi=False`` ignores the file's VOI and ``no_window`` alike: the full Modality LUT range.

Compressed transfer syntaxes decode through pydicom's plugins (pylibjpeg-openjpeg for JPEG 2000
and HTJ2K, pylibjpeg-libjpeg for JPEG baseline/extended/lossless and JPEG-LS, pylibjpeg-rle or
pydicom for RLE); a file whose syntax has no installed decoder names the package to install.

Errors name the file and the problem and never quote header values: a header may carry patient
identity (PatientName, PatientID, ...), which must not reach logs. Truncated files, encrypted
files, objects that are not images and undecodable syntaxes each get their own message.
"""

from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
# Image Pixel Module attributes the decode and the normalisation need (PS3.3 C.7.6.3).
PIXEL_DESCRIPTION = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "PhotometricInterpretation")
DICOM_SUFFIXES = (".dcm", ".dicom", "")
NO_WINDOW_POLICIES = ("percentile", "full_range")
# Checkpoints from before the ``no_window`` knob decoded windowless files over the full range.
LEGACY_NO_WINDOW = "full_range"

# The pip packages whose pydicom plugin decodes each compressed transfer syntax (pydicom 3.0's
# pylibjpeg decoder needs pylibjpeg itself plus the codec plugin).
_OPENJPEG = "pylibjpeg pylibjpeg-openjpeg"
_LIBJPEG = "pylibjpeg pylibjpeg-libjpeg"
DECODER_PACKAGES = {
    JPEG2000Lossless: _OPENJPEG,
    JPEG2000: _OPENJPEG,
    HTJ2KLossless: _OPENJPEG,
    HTJ2KLosslessRPCL: _OPENJPEG,
    HTJ2K: _OPENJPEG,
    JPEGBaseline8Bit: _LIBJPEG,
    JPEGExtended12Bit: _LIBJPEG,
    JPEGLossless: _LIBJPEG,
    JPEGLosslessSV1: _LIBJPEG,
    JPEGLSLossless: _LIBJPEG,
    JPEGLSNearLossless: _LIBJPEG,
    RLELossless: "pylibjpeg pylibjpeg-rle",
}
UNDEFINED_LENGTH = 0xFFFFFFFF
# pydicom 3 warns with this, and drops the element, when a file ends inside a value of undefined
# length (encapsulated pixel data, a sequence) before its delimiter.
EOF_BEFORE_DELIMITER = "End of file reached before delimiter"
# A Secure DICOM File (PS3.10 7.4) is a CMS envelope: DER SEQUENCE, then the OID of
# id-envelopedData (1.2.840.113549.1.7.3) within its first bytes.
CMS_ENVELOPED_DATA_OID = bytes.fromhex("06092a864886f70d010703")


class DataFileError(ValueError):
    """A data file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class ImageReadError(DataFileError):
    """An image that cannot be decoded (not DICOM, truncated, colour, multi-frame, ...)."""


@dataclass
class DecodedImage:
    """A decoded grayscale image: ``pixels`` (H, W) float32 in [0, 1], 1 = white; ``view`` from the header."""

    pixels: np.ndarray
    view: str | None


def modality_output_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """The range the Modality LUT stage can produce, as the standard defines it (PS3.3 C.11.1).

    Stored values span BitsStored bits (signed when PixelRepresentation is 1); a Modality LUT
    Sequence outputs its descriptor's bit depth; a rescale maps the stored range linearly. This is
    also the output range pydicom's windowing maps a window onto.
    """
    if "ModalityLUTSequence" in ds:
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.BitsStored)
    if int(ds.PixelRepresentation) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return lo, hi


def _voi_lut_valid(ds: pydicom.Dataset) -> bool:
    seq = ds.get("VOILUTSequence")
    return bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]


def _window_valid(ds: pydicom.Dataset) -> bool:
    return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None



def check_no_window(no_window: str, percentiles: Sequence[float] | None) -> tuple[float, float] | None:
    """Validate the ``no_window`` policy; returns the percentiles as floats (None for ``full_range``)."""
    if no_window not in NO_WINDOW_POLICIES:
        raise ValueError(f"no_window must be one of {NO_WINDOW_POLICIES}, not {no_window!r}")
    if no_window == "full_range":
        return None
    bounds = tuple(float(p) for p in percentiles) if percentiles is not None else ()
    if len(bounds) != 2 or not 0.0 <= bounds[0] < bounds[1] <= 100.0:
        raise ValueError(f"no_window=percentile needs percentiles [low, high] with 0 <= low < high <= 100, not {percentiles!r}")
    return bounds


def decode_settings(saved: Mapping) -> dict:
    """The decode knobs a checkpoint recorded, with ``no_window`` as it was before the knob existed."""
    no_window = saved.get("no_window", LEGACY_NO_WINDOW)
    return {"apply_voi": saved["apply_voi"], "no_window": no_window, "percentiles": saved.get("percentiles")}


def _is_cms_envelope(path: str | Path) -> bool:
    with open(path, "rb") as handle:
        start = handle.read(64)
    return start[:1] == b"\x30" and CMS_ENVELOPED_DATA_OID in start


def _read_dataset(path: str | Path) -> tuple[pydicom.Dataset, bool]:
    """The parsed file and whether it ended inside a value of undefined length."""
    try:
        # pydicom warns about odd header values and quotes them (headers may hold identity): record, never show.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path)
    except InvalidDicomError:
        if _is_cms_envelope(path):
            raise ImageReadError(path, "encrypted file (Secure DICOM File Format, CMS enveloped data): decrypt before use") from None
        raise ImageReadError(path, "not a DICOM file (no 'DICM' preamble or file meta header)") from None
    except (struct.error, EOFError):
        # A short read while parsing an element's tag, VR or length: the file stops mid-element.
        raise ImageReadError(path, "truncated: the file ends inside a data element's header") from None
    except Exception as err:  # pydicom raises many types on damaged headers; the file's name and type suffice
        raise ImageReadError(path, f"unreadable DICOM header ({type(err).__name__})") from None
    return ds, any(str(w.message).startswith(EOF_BEFORE_DELIMITER) for w in caught)


def _not_an_image(ds: pydicom.Dataset) -> str:
    """Why a dataset without pixel data is no image, by its SOP class (a standard UID, not identity)."""
    sop = ds.get("SOPClassUID")
    if sop is None:
        return "no pixel data and no SOP class: not an image object"
    name = sop.name  # the UID itself when pydicom does not know it (e.g. a private class)
    if "Image" in name:
        return f"no pixel data in an image object ({name})"
    return f"{name.removesuffix(' Storage')} object, not an image (no pixel data)"


def _parse_stopped_early(path: str | Path, ds: pydicom.Dataset) -> bool:
    """True if bytes follow the last element pydicom parsed: it stops silently on a short element header."""
    last = ds.get_item(max(ds.keys())) if len(ds) else None
    length = getattr(last, "length", UNDEFINED_LENGTH)
    if last is None or length == UNDEFINED_LENGTH or last.value_tell is None:
        return False  # a sequence of undefined length: its end is not recorded, so claim nothing
    return last.value_tell + length < Path(path).stat().st_size


def _check_pixel_data_complete(path: str | Path, ds: pydicom.Dataset, ended_early: bool) -> None:
    """Raise if the file is cut inside its pixel data or holds no image at all."""
    if "PixelData" not in ds:
        if ended_early:  # pydicom dropped the unterminated element
            raise ImageReadError(
                path, "truncated: the file ends inside an encapsulated value (no sequence delimiter); pixel data incomplete"
            )
        if _parse_stopped_early(path, ds):
            raise ImageReadError(path, "truncated: the file ends inside a data element's header")
        raise ImageReadError(path, _not_an_image(ds))
    raw = ds.get_item("PixelData")
    declared = getattr(raw, "length", None)  # the element's length field, as written before the cut
    if declared is not None and declared != UNDEFINED_LENGTH and len(raw.value) < declared:
        raise ImageReadError(path, f"truncated: the file ends inside its pixel data ({len(raw.value)} of {declared} bytes)")


def _check_native_length(path: str | Path, ds: pydicom.Dataset, frames: int, samples: int) -> None:
    """Uncompressed pixel data must hold every frame the pixel description declares (PS3.5 8.1.1)."""
    if ds["PixelData"].is_undefined_length:
        return  # encapsulated: fragments are checked by the decoder
    needed = math.ceil(int(ds.Rows) * int(ds.Columns) * samples * frames * int(ds.BitsAllocated) / 8)
    held = len(ds.PixelData)
    if held < needed:
        raise ImageReadError(path, f"truncated pixel data: {held} bytes where the pixel description needs {needed}")


def _check_decoder(path: str | Path, ds: pydicom.Dataset) -> None:
    """Raise, naming what to install, if no installed plugin decodes the file's transfer syntax."""
    uid = ds.file_meta.get("TransferSyntaxUID")
    if uid is None:
        return  # pydicom guesses the syntax from the data; the decode reports any failure
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise ImageReadError(
            path, f"unsupported transfer syntax {uid.name}: pydicom {pydicom.__version__} has no decoder for it; "
            "convert the file to an uncompressed transfer syntax"
        ) from None
    if not decoder.is_available:
        install = DECODER_PACKAGES.get(uid) or " or ".join(decoder.missing_dependencies)
        raise ImageReadError(path, f"unsupported transfer syntax {uid.name}: no decoder installed; pip install {install}")


def read_dicom(
    path: str | Path, apply_voi: bool, no_window: str, percentiles: Sequence[float] | None
) -> DecodedImage:
    """Decode a single-frame grayscale DICOM image into [0, 1] following the standard's pipeline.

    Args:
        path: the file.
        apply_voi: apply the VOI LUT Sequence, else the first window, when the file has one
            (False: normalise the Modality LUT output over its full range, whatever ``no_window`` says).
        no_window: with ``apply_voi`` and a file without VOI: ``percentile`` windows to the image's
            ``percentiles``; ``full_range`` normalises over the Modality LUT's range.
        percentiles: ``[low, high]`` in 0..100 for ``percentile`` (unused by ``full_range``).

    Raises:
        ImageReadError: not DICOM, encrypted, truncated, not an image, multi-frame, colour, an
            undecodable transfer syntax or corrupt pixel data.
        ValueError: an invalid ``no_window`` / ``percentiles`` setting.
    """
    bounds = check_no_window(no_window, percentiles)
    ds, ended_early = _read_dataset(path)
    if "EncryptedAttributesSequence" in ds:  # PS3.15 attribute-level confidentiality
        raise ImageReadError(path, "encrypted attributes (EncryptedAttributesSequence): decrypt before use")
    _check_pixel_data_complete(path, ds, ended_early)
    missing = [k for k in PIXEL_DESCRIPTION if ds.get(k) is None]
    if missing:
        raise ImageReadError(path, f"missing required pixel attributes: {', '.join(missing)}")
    frames = int(ds.get("NumberOfFrames") or 1)
    samples = int(ds.get("SamplesPerPixel") or 1)
    _check_native_length(path, ds, frames, samples)
    if frames != 1:
        raise ImageReadError(path, f"multi-frame object ({frames} frames); expected one radiograph")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in GRAYSCALE or samples != 1:
        raise ImageReadError(
            path, f"colour or non-grayscale image (PhotometricInterpretation {photometric or 'missing'}, {samples} samples)"
        )
    _check_decoder(path, ds)
    syntax = getattr(ds.file_meta.get("TransferSyntaxUID"), "name", "unknown transfer syntax")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = ds.pixel_array
    except NotImplementedError:
        raise ImageReadError(path, f"unsupported transfer syntax {syntax}") from None
    except ValueError as err:
        # pydicom's own size checks: "The number of bytes of pixel data is less than expected ..."
        raise ImageReadError(path, f"truncated or inconsistent pixel data ({err})") from None
    except RuntimeError:
        raise ImageReadError(path, f"pixel data could not be decoded ({syntax}): corrupt or truncated") from None
    except (AttributeError, KeyError, TypeError) as err:
        raise ImageReadError(path, f"inconsistent pixel description ({type(err).__name__})") from None
    if stored.ndim != 2:
        raise ImageReadError(path, f"expected a 2D image, decoded shape {stored.shape}")

    values = apply_modality_lut(stored, ds)  # (H, W) in modality units
    lo, hi = modality_output_range(ds)
    if apply_voi and _voi_lut_valid(ds):
        # A VOI LUT takes integer modality values (PS3.3 C.11.2.1.1); its entries span the descriptor's bits.
        values = apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0, prefer_lut=True)
        lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif apply_voi and _window_valid(ds):
        values = apply_voi_lut(values, ds, index=0, prefer_lut=False)  # first window; output spans [lo, hi]
    elif apply_voi and bounds is not None:
        low, high = (float(v) for v in np.percentile(values, bounds))  # linear interpolation
        if high > low:  # a flat image has no contrast to stretch: it keeps the full range
            lo, hi = low, high
    if hi <= lo:
        raise ImageReadError(path, f"empty value range ({lo} to {hi}); check BitsStored and the rescale")
    pixels = np.clip((values.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels  # MONOCHROME1 stores white as the minimum
    view = str(ds.get("ViewPosition", "") or "").strip().upper() or None
    return DecodedImage(pixels.astype(np.float32), view)


def read_bitmap(path: str | Path) -> DecodedImage:
    """Read a PNG/JPEG radiograph (e.g. CheXpert) into [0, 1]; 16-bit PNGs keep their depth."""
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L"):
                pixels = np.asarray(image, dtype=np.float64) / 65535.0
            elif mode == "L":
                pixels = np.asarray(image, dtype=np.float64) / 255.0
            elif mode in ("RGB", "RGBA"):
                rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
                if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                    raise ImageReadError(path, "colour image; a radiograph must be grayscale")
                pixels = rgb[..., 0] / 255.0
            else:
                raise ImageReadError(path, f"unsupported image mode {mode}")
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(path, f"unreadable image file ({type(err).__name__})") from None
    return DecodedImage(pixels.astype(np.float32), None)


def read_radiograph(
    path: str | Path, apply_voi: bool, no_window: str, percentiles: Sequence[float] | None
) -> DecodedImage:
    """Decode a DICOM file (``.dcm``/``.dicom``/no suffix) or a bitmap (``.png``/``.jpg``); see ``read_dicom``."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    if path.suffix.lower() in DICOM_SUFFIXES:
        return read_dicom(path, apply_voi, no_window, percentiles)
    return read_bitmap(path)


def letterbox(pixels: np.ndarray, size: int) -> np.ndarray:
    """Pad to a square (centred, with 0 = black), then resize to ``size`` (antialiased bilinear).

    Keeps the aspect ratio: a portrait film is not squashed. Pillow, not torch, so cache-filling
    worker processes never start an OpenMP pool. (H, W) -> (1, size, size) float32
    """
    height, width = pixels.shape
    side = max(height, width)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = pixels
    if side != size:
        square = np.asarray(Image.fromarray(square, mode="F").resize((size, size), Image.BILINEAR), dtype=np.float32)
    return np.clip(square, 0.0, 1.0)[None]  # (1, size, size)
