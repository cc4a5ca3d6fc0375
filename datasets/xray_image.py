"""Read one chest radiograph (DICOM, or PNG/JPEG as in CheXpert) into a float image in [0, 1].

DICOM follows the standard's pixel pipeline, in this order (PS3.3 C.11 / PS3.4 N.2):
stored values -> Modality LUT (RescaleSlope/Intercept, or a Modality LUT Sequence) -> VOI LUT
Sequence, else the first WindowCenter/WindowWidth -> normalise by the range that stage can
produce (derived from BitsStored, PixelRepresentation and the rescale, as the standard defines it,
never from the image's own min/max) -> invert for MONOCHROME1. So 1.0 is always "white" (dense)
whichever way the file was stored, and a 12-bit image in a 16-bit container fills [0, 1].

Compressed transfer syntaxes decode through pydicom's plugins (pylibjpeg-openjpeg for JPEG 2000,
pylibjpeg-libjpeg for JPEG lossless/extended and JPEG-LS, pylibjpeg-rle / pydicom for RLE).

Errors name the file and the problem and never quote header values: a header may carry patient
identity (PatientName, PatientID, ...), which must not reach logs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
# Image Pixel Module attributes the decode and the normalisation need (PS3.3 C.7.6.3).
PIXEL_DESCRIPTION = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "PhotometricInterpretation")
DICOM_SUFFIXES = (".dcm", ".dicom", "")


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


def read_dicom(path: str | Path, apply_voi: bool) -> DecodedImage:
    """Decode a single-frame grayscale DICOM image into [0, 1] following the standard's pipeline.

    Args:
        path: the file.
        apply_voi: apply the VOI LUT Sequence, else the first window, when the file has one
            (False: normalise the Modality LUT output over its full range).

    Raises:
        ImageReadError: not DICOM, no pixel data, multi-frame, colour, truncated or undecodable.
    """
    try:
        with warnings.catch_warnings():
            # pydicom warns about odd header values and quotes them; headers may hold identity.
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise ImageReadError(path, "not a DICOM file (no 'DICM' preamble or file meta header)") from None
    except Exception as err:  # pydicom raises many types on damaged headers; the file's name and type suffice
        raise ImageReadError(path, f"unreadable DICOM header ({type(err).__name__})") from None
    if "PixelData" not in ds:
        sop = getattr(ds.get("SOPClassUID"), "name", "unknown SOP class")
        raise ImageReadError(path, f"no pixel data: not an image object ({sop})")
    missing = [k for k in PIXEL_DESCRIPTION if ds.get(k) is None]
    if missing:
        raise ImageReadError(path, f"missing required pixel attributes: {', '.join(missing)}")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames != 1:
        raise ImageReadError(path, f"multi-frame object ({frames} frames); expected one radiograph")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    samples = int(ds.get("SamplesPerPixel") or 1)
    if photometric not in GRAYSCALE or samples != 1:
        raise ImageReadError(
            path, f"colour or non-grayscale image (PhotometricInterpretation {photometric or 'missing'}, {samples} samples)"
        )
    syntax = getattr(ds.file_meta.get("TransferSyntaxUID"), "name", "unknown transfer syntax")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = ds.pixel_array
    except NotImplementedError:
        raise ImageReadError(path, f"unsupported transfer syntax: {syntax}") from None
    except ValueError as err:
        # pydicom's size checks: "The number of bytes of pixel data is less than expected ..."
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


def read_radiograph(path: str | Path, apply_voi: bool) -> DecodedImage:
    """Decode a DICOM file (``.dcm``/``.dicom``/no suffix) or a bitmap (``.png``/``.jpg``)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    if path.suffix.lower() in DICOM_SUFFIXES:
        return read_dicom(path, apply_voi)
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
