"""Generate the offline demo chest X-ray set: synthetic radiographs as real DICOM, MIMIC-CXR layout.

Each study has one frontal film (PA or AP) and, for about half, a lateral one (which the default
view filter drops). The learnable finding is written into the report: no finding, or a focal
opacity in the left or right lower lobe. Radiographs are displayed with the patient's left on the
viewer's right (PA and AP alike), so a left-lung opacity is drawn on the image's right half, next
to the heart shadow's side.

The files exercise the decoding pitfalls a reader must get right; every study cycles through
``ENCODINGS``: MONOCHROME1 and MONOCHROME2, 12-bit (BitsStored 12 in 16 allocated) and 16-bit,
rescale slope/intercept, several windows (only the first is right), a VOI LUT Sequence, and
JPEG 2000, JPEG-LS and RLE compression. Each encoding inverts the standard's pixel pipeline, so a
correct reader recovers the drawn image (to quantisation) and a reader that skips a step does not.

Layout: ``files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.dcm`` + ``sXXXXXXXX.txt`` reports,
``mimic-cxr-2.0.0-split.csv.gz``, ``mimic-cxr-2.0.0-metadata.csv.gz`` and ``mmmed-demo-labels.csv``
(study_id, label). Patients are split 80/10/10 into train/validate/test, balanced by finding.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLSLossless,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from mmmed_datasets.demo.demo_folder import build_once

log = logging.getLogger(__name__)

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root: deterministic demo UIDs via entropy sources

# label -> (findings sentences to choose from, impression)
FINDINGS = {
    "NORMAL": (
        ["The lungs are clear. The cardiomediastinal silhouette is normal. No pleural effusion or pneumothorax.",
         "Lungs are well expanded and clear. Heart size is normal. No effusion or pneumothorax."],
        "No acute cardiopulmonary process.",
    ),
    "LEFT": (
        ["There is a focal opacity in the left lower lobe. The right lung is clear. Heart size is normal.",
         "Focal left basilar opacity. No pleural effusion. The cardiomediastinal silhouette is normal."],
        "Left lower lobe opacity, concerning for pneumonia.",
    ),
    "RIGHT": (
        ["There is a focal opacity in the right lower lobe. The left lung is clear. Heart size is normal.",
         "Focal right basilar opacity. No pleural effusion. The cardiomediastinal silhouette is normal."],
        "Right lower lobe opacity, concerning for pneumonia.",
    ),
}


@dataclass
class Encoding:
    """How a drawn image (display values in [0, 1], 1 = white) is stored in a DICOM file."""

    name: str
    photometric: str
    bits_stored: int
    syntax: str
    rescale: tuple[float, float] | None = None  # (slope, intercept)
    windows: list[tuple[float, float]] = field(default_factory=list)  # (center, width); the first is used
    voi_lut_gamma: float | None = None  # VOI LUT Sequence: output = max * (x / (n - 1)) ** gamma


ENCODINGS = [
    Encoding("mono2-16bit-windows", "MONOCHROME2", 16, ExplicitVRLittleEndian, windows=[(30000.0, 40000.0), (20000.0, 8000.0)]),
    Encoding("mono1-12bit-rescale-window", "MONOCHROME1", 12, ExplicitVRLittleEndian, rescale=(0.5, -100.0), windows=[(900.0, 1800.0)]),
    Encoding("mono2-12bit-jpeg2000", "MONOCHROME2", 12, JPEG2000Lossless),
    Encoding("mono2-16bit-voilut-rle", "MONOCHROME2", 16, RLELossless, voi_lut_gamma=0.5),
    Encoding("mono1-12bit-window-jpegls", "MONOCHROME1", 12, JPEGLSLossless, windows=[(2048.0, 3600.0), (1000.0, 500.0)]),
]
VOI_LUT_ENTRIES = 4096


def encode_display(display: np.ndarray, enc: Encoding) -> np.ndarray:
    """Stored pixel values that a standard-conformant reader decodes back to ``display``. (H, W) uint16"""
    target = 1.0 - display if enc.photometric == "MONOCHROME1" else display  # before the MONOCHROME1 inversion
    top = 2**enc.bits_stored - 1
    if enc.voi_lut_gamma is not None:
        # LUT[x] = 65535 * (x / (n-1)) ** gamma over x in [0, n-1]: invert it.
        modality = (VOI_LUT_ENTRIES - 1) * target ** (1.0 / enc.voi_lut_gamma)
    elif enc.windows:
        # PS3.3 C.11.2.1.2 (LINEAR): y = ((x - (c - 0.5)) / (w - 1) + 0.5), as a fraction of the output range.
        center, width = enc.windows[0]
        modality = (target - 0.5) * (width - 1) + center - 0.5
    else:
        # No VOI: the Modality LUT output is normalised over its full range.
        lo, hi = 0.0, float(top)
        if enc.rescale is not None:
            slope, intercept = enc.rescale
            lo, hi = sorted((intercept, top * slope + intercept))
        modality = lo + target * (hi - lo)
    stored = modality if enc.rescale is None else (modality - enc.rescale[1]) / enc.rescale[0]
    stored = np.rint(stored)
    if stored.min() < 0 or stored.max() > top:
        raise ValueError(f"{enc.name}: stored values {stored.min()}..{stored.max()} exceed {enc.bits_stored} bits")
    return stored.astype(np.uint16)


def voi_lut_item(gamma: float) -> pydicom.Dataset:
    """A VOI LUT Sequence item: 4096 entries, first mapped value 0, 16-bit output."""
    item = pydicom.Dataset()
    item.LUTDescriptor = [VOI_LUT_ENTRIES, 0, 16]
    x = np.arange(VOI_LUT_ENTRIES) / (VOI_LUT_ENTRIES - 1)
    item.LUTData = np.rint(65535 * x**gamma).astype(np.uint16).tolist()
    item["LUTData"].VR = "US"
    item.LUTExplanation = f"GAMMA {gamma}"
    return item


def build_dicom(stored: np.ndarray, enc: Encoding, header: dict[str, str]) -> FileDataset:
    """A single-frame DX image object holding ``stored`` (uncompressed or compressed per ``enc``)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = header["SOPInstanceUID"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = DX_FOR_PRESENTATION
    for key, value in header.items():
        setattr(ds, key, value)
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = enc.photometric
    ds.BitsAllocated = 16
    ds.BitsStored = enc.bits_stored
    ds.HighBit = enc.bits_stored - 1
    ds.PixelRepresentation = 0
    if enc.rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (f"{v:g}" for v in enc.rescale)
        ds.RescaleType = "US"
    if enc.windows:
        ds.WindowCenter = [f"{c:g}" for c, _ in enc.windows] if len(enc.windows) > 1 else f"{enc.windows[0][0]:g}"
        ds.WindowWidth = [f"{w:g}" for _, w in enc.windows] if len(enc.windows) > 1 else f"{enc.windows[0][1]:g}"
    if enc.voi_lut_gamma is not None:
        ds.VOILUTSequence = [voi_lut_item(enc.voi_lut_gamma)]
    if enc.syntax == ExplicitVRLittleEndian:
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
    else:
        ds.compress(enc.syntax, stored, generate_instance_uid=False)  # keep the deterministic UID
    return ds


def draw_chest(rng: np.random.Generator, rows: int, cols: int, finding: str, view: str) -> np.ndarray:
    """A chest-like radiograph, display values in [0, 1] (1 = dense). (rows, cols) float64"""
    y, x = np.mgrid[0:rows, 0:cols]
    y, x = y / rows, x / cols
    cx = 0.5 + rng.uniform(-0.03, 0.03)
    cy = 0.5 + rng.uniform(-0.03, 0.03)
    scale = rng.uniform(0.92, 1.05) * (1.06 if view == "AP" else 1.0)

    def ellipse(x0: float, y0: float, rx: float, ry: float) -> np.ndarray:
        return ((x - x0) / rx) ** 2 + ((y - y0) / ry) ** 2

    image = np.full((rows, cols), 0.04)
    body = ellipse(cx, cy + 0.05, 0.46 * scale, 0.6 * scale)
    image[body < 1] = 0.5
    if view == "LATERAL":
        lung = ellipse(cx, cy - 0.02, 0.26 * scale, 0.3 * scale) < 1
        image[lung] = 0.22
        image[ellipse(cx + 0.12, cy + 0.12, 0.14, 0.14) < 1] = 0.62  # heart, seen from the side
        image[np.abs(x - (cx - 0.3 * scale)) < 0.04] = 0.8  # spine behind
    else:
        lung_dx, lung_rx, lung_ry = 0.19 * scale, 0.13 * scale, 0.3 * scale
        lungs = np.zeros((rows, cols), dtype=bool)
        for side in (-1, 1):
            lungs |= (ellipse(cx + side * lung_dx, cy - 0.03, lung_rx, lung_ry) < 1) & (y < cy + 0.22 * scale)
        image[lungs] = 0.2
        image += 0.06 * lungs * (np.sin(2 * np.pi * (y * 9 + 0.8 * np.abs(x - cx))) > 0.6)  # ribs
        # Heart: on the patient's left, i.e. the image's right; kept medial so the lower lobes stay visible.
        image[ellipse(cx + 0.04 * scale, cy + 0.13 * scale, 0.11 * scale, 0.1 * scale) < 1] = 0.68
        image[np.abs(x - cx) < 0.035] = 0.75  # spine and mediastinum
        if finding in ("LEFT", "RIGHT"):
            side = 1 if finding == "LEFT" else -1  # patient's left = image right
            ox = cx + side * (lung_dx + rng.uniform(0.02, 0.05) * scale)
            oy = cy + rng.uniform(0.02, 0.1) * scale
            sigma = rng.uniform(0.04, 0.06)
            image += rng.uniform(0.3, 0.42) * np.exp(-(((x - ox) ** 2 + (y - oy) ** 2) / (2 * sigma**2)))
    image += rng.normal(0, 0.015, image.shape)
    return np.clip(image, 0.0, 1.0)


def report_text(rng: np.random.Generator, label: str, views: list[str]) -> str:
    """A MIMIC-CXR-style report whose FINDINGS and IMPRESSION name the finding."""
    findings, impression = FINDINGS[label]
    exam = "CHEST (PA AND LAT)" if "LATERAL" in views else f"CHEST ({views[0]})"
    return (
        "                                 FINAL REPORT\n"
        f" EXAMINATION:  {exam}\n \n"
        " INDICATION:  ___ with cough, evaluate for pneumonia.\n \n"
        f" TECHNIQUE:  {' and '.join(v.lower() if v == 'LATERAL' else v for v in views)} views of the chest.\n \n"
        " COMPARISON:  None.\n \n"
        f" FINDINGS: \n \n {findings[int(rng.integers(len(findings)))]}\n \n"
        f" IMPRESSION: \n \n {impression}\n"
    )


def _dicom_id(rng: np.random.Generator) -> str:
    """MIMIC-CXR-style dicom_id: five dash-separated 8-hex-digit groups."""
    return "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, 5))


def ensure_demo_mimic_cxr(root: str | os.PathLike, num_patients: int, rows: int, cols: int, seed: int) -> Path:
    """Create the demo set at ``root`` unless a complete one with the same settings is there."""
    settings = {"num_patients": num_patients, "rows": rows, "cols": cols, "seed": seed, "version": 1}
    log.info("Demo chest X-rays (%d studies) at %s", num_patients, root)
    return build_once(root, settings, lambda folder: _write_demo(folder, num_patients, rows, cols, seed))


def _write_demo(root: Path, num_patients: int, rows: int, cols: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = [list(FINDINGS)[i % len(FINDINGS)] for i in range(num_patients)]
    rng.shuffle(labels)
    dealt = {label: 0 for label in FINDINGS}
    split_rows, meta_rows, label_rows = [], [], []
    image_index = 0
    for patient in range(num_patients):
        label = labels[patient]
        # 8 of every 10 patients of a finding train, 1 validates, 1 tests.
        split = {8: "validate", 9: "test"}.get(dealt[label] % 10, "train")
        dealt[label] += 1
        subject_id, study_id = 10000001 + patient, 50000001 + patient
        views = ["PA" if rng.random() < 0.7 else "AP"] + (["LATERAL"] if rng.random() < 0.5 else [])
        study_dir = root / "files" / f"p{str(subject_id)[:2]}" / f"p{subject_id}" / f"s{study_id}"
        study_dir.mkdir(parents=True)
        study_uid = generate_uid(UID_ROOT, entropy_srcs=[str(seed), "study", str(study_id)])
        for view in views:
            dicom_id = _dicom_id(rng)
            enc = ENCODINGS[image_index % len(ENCODINGS)]
            image_index += 1
            display = draw_chest(rng, rows, cols, label, view)
            header = {
                "SOPInstanceUID": generate_uid(UID_ROOT, entropy_srcs=[str(seed), dicom_id]),
                "StudyInstanceUID": study_uid,
                "SeriesInstanceUID": generate_uid(UID_ROOT, entropy_srcs=[str(seed), "series", dicom_id]),
                "PatientName": f"Demo^Patient{patient:04d}",
                "PatientID": f"DEMO{subject_id}",
                "PatientBirthDate": "19700101",
                "PatientSex": "O",
                "StudyDate": "21800101",
                "ViewPosition": "LL" if view == "LATERAL" else view,
            }
            build_dicom(encode_display(display, enc), enc, header).save_as(study_dir / f"{dicom_id}.dcm", enforce_file_format=True)
            split_rows.append({"dicom_id": dicom_id, "study_id": study_id, "subject_id": subject_id, "split": split})
            meta_rows.append({"dicom_id": dicom_id, "subject_id": subject_id, "study_id": study_id,
                              "ViewPosition": header["ViewPosition"], "Rows": rows, "Columns": cols})
        (study_dir.parent / f"s{study_id}.txt").write_text(report_text(rng, label, views))
        label_rows.append({"study_id": study_id, "label": label})
    pd.DataFrame(split_rows).to_csv(root / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    pd.DataFrame(meta_rows).to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    pd.DataFrame(label_rows).to_csv(root / "mmmed-demo-labels.csv", index=False)
