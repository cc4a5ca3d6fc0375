"""XrayManifestDataset over a CSV manifest of PNG and DICOM radiographs built in ``tmp_path``."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmmed_datasets.xray.xray_cache import XrayImageCache
from mmmed_datasets.demo.xray_demo import ENCODINGS, build_dicom, encode_display
from mmmed_datasets.xray.xray_image import ImageReadError
from mmmed_datasets.xray.xray_manifest import XrayManifestDataset
from mmmed_datasets.xray.xray_qa import SampleError

GREY = (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8)  # 32 x 32: stored without resizing
DEEP = (np.arange(32 * 32).reshape(32, 32) * 37 % 65536).astype(np.uint16)
DISPLAY = np.linspace(0.0, 1.0, 32 * 32).reshape(32, 32)  # what the DICOM file should decode to
DICOM_ENCODING = ENCODINGS[1]  # MONOCHROME1, 12-bit, rescale and a window: every pipeline step matters


def write_dicom(path, view: str) -> None:
    header = {
        "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.1",
        "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.2",
        "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.3",
        "PatientName": "Test^Patient",
        "PatientID": "TEST0001",
        "ViewPosition": view,
    }
    build_dicom(encode_display(DISPLAY, DICOM_ENCODING), DICOM_ENCODING, header).save_as(path, enforce_file_format=True)


@pytest.fixture
def root(tmp_path):
    """``tmp_path/data`` with images under ``img/`` and one image outside it, named by absolute path."""
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    Image.fromarray(GREY).save(data / "img" / "grey.png")
    Image.fromarray(DEEP).save(data / "img" / "deep.png")
    Image.fromarray(np.full((64, 32), 255, dtype=np.uint8)).save(data / "img" / "tall.png")  # 64 rows x 32 cols
    write_dicom(data / "img" / "chest.dcm", "PA")
    write_dicom(data / "img" / "side.dcm", "LL")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(GREY).save(outside / "abs.png")
    return data


ROWS = [
    # path, question, answer, split, label, view
    ("img/grey.png", "Is the lung clear?", "Yes.", "train", "NORMAL", ""),
    ("img/deep.png", "<xray>\nDescribe the film.", "Clear lungs.", "train", "", "ap"),
    ("img/chest.dcm", "Which side?", "Left.", "test", "LEFT", ""),
    ("img/side.dcm", "Which side?", "None", "test", "RIGHT", ""),  # "None" stays text, not NaN
    ("ABS", "What view?", "Lateral.", "train", "", "LATERAL"),
    ("img/tall.png", "Any effusion? <xray>", "No.", "validate", "NORMAL", "PA"),
]


def write_manifest(root, rows=ROWS, name="manifest.csv", columns=("path", "question", "answer", "split", "label", "view")) -> str:
    absolute = str(root.parent / "elsewhere" / "abs.png")
    table = pd.DataFrame([[absolute if v == "ABS" else v for v in row] for row in rows],
                         columns=["path", "question", "answer", "split", "label", "view"])
    table[list(columns)].to_csv(root / name, index=False)
    return name


def build(root, tmp_path, csv="manifest.csv", split=None, views=None, on_error="raise"):
    return XrayManifestDataset(
        root=str(root),
        csv=csv,
        split=split,
        views=views,
        on_error=on_error,
        images=XrayImageCache(str(tmp_path / "cache"), size=32, apply_voi=True,
            no_window="percentile", percentiles=[0.5, 99.5], workers=1),
    )


def test_every_row_is_a_sample(root, tmp_path):
    write_manifest(root)
    ds = build(root, tmp_path)
    assert [ds[i]["id"] for i in range(len(ds))] == [f"manifest/{i}" for i in range(6)]
    assert [ds[i]["answer"] for i in range(len(ds))] == ["Yes.", "Clear lungs.", "Left.", "None", "Lateral.", "No."]
    assert [ds[i]["label"] for i in range(len(ds))] == ["NORMAL", None, "LEFT", "RIGHT", None, "NORMAL"]
    assert [s.view for s in ds.samples] == [None, "AP", None, None, "LATERAL", "PA"]
    assert ds.stats == {"samples": 6, "skipped": 0, "filtered_view": 0}


def test_question_gets_tag_unless_present(root, tmp_path):
    write_manifest(root)
    ds = build(root, tmp_path)
    assert [ds[i]["question"] for i in range(len(ds))] == [
        "<xray>\nIs the lung clear?",
        "<xray>\nDescribe the film.",
        "<xray>\nWhich side?",
        "<xray>\nWhich side?",
        "<xray>\nWhat view?",
        "Any effusion? <xray>",
    ]


def test_relative_and_absolute_paths(root, tmp_path):
    write_manifest(root)
    ds = build(root, tmp_path)
    assert ds.samples[0].path == root / "img" / "grey.png"
    assert ds.samples[4].path == tmp_path / "elsewhere" / "abs.png"
    np.testing.assert_array_equal(ds[4]["signals"]["xray"][0], ds[0]["signals"]["xray"][0])


def test_split_keeps_matching_rows_with_their_ids(root, tmp_path):
    write_manifest(root)
    assert [s.id for s in build(root, tmp_path, split="train").samples] == ["manifest/0", "manifest/1", "manifest/4"]
    assert [s.id for s in build(root, tmp_path, split="test").samples] == ["manifest/2", "manifest/3"]
    assert [s.id for s in build(root, tmp_path, split="validate").samples] == ["manifest/5"]
    with pytest.raises(ValueError, match=re.escape(f"{root / 'manifest.csv'}: no rows in split 'val'")):
        build(root, tmp_path, split="val")


def test_split_without_split_column(root, tmp_path):
    write_manifest(root, columns=("path", "question", "answer"))
    message = f"{root / 'manifest.csv'}: split 'train' requested but the manifest has no 'split' column"
    with pytest.raises(ValueError, match=re.escape(message)):
        build(root, tmp_path, split="train")
    ds = build(root, tmp_path)  # optional columns absent: no labels, views from DICOM headers only
    assert [ds[i]["label"] for i in range(len(ds))] == [None] * 6
    assert [s.view for s in ds.samples] == [None] * 6


def test_missing_required_columns(root, tmp_path):
    write_manifest(root, columns=("path", "split"))
    with pytest.raises(ValueError, match=re.escape(f"{root / 'manifest.csv'}: missing columns ['question', 'answer']")):
        build(root, tmp_path)


def test_view_filter_uses_column_then_dicom_header(root, tmp_path):
    write_manifest(root)
    ds = build(root, tmp_path, views=["PA", "AP"])
    # Kept: deep.png (column AP), chest.dcm (header PA), tall.png (column PA).
    # Dropped: grey.png (no view anywhere), side.dcm (header LL), abs.png (column LATERAL).
    assert [s.id for s in ds.samples] == ["manifest/1", "manifest/2", "manifest/5"]
    assert ds.stats == {"samples": 3, "skipped": 0, "filtered_view": 3}


def test_images_match_independent_decoding(root, tmp_path):
    write_manifest(root)
    ds = build(root, tmp_path)
    grey, deep, chest, side, _, tall = (ds[i]["signals"]["xray"][0] for i in range(len(ds)))
    assert all(tuple(im.shape) == (1, 32, 32) for im in (grey, deep, chest, side, tall))
    # The cache stores float16; a 32 x 32 image is not resized.
    np.testing.assert_array_equal(grey[0].numpy(), (GREY / 255.0).astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(deep[0].numpy(), (DEEP / 65535.0).astype(np.float16).astype(np.float32))
    # DICOM: stored values round to integers and the window spans 1800, so recovery is within ~1e-3.
    np.testing.assert_allclose(chest[0].numpy(), DISPLAY, atol=2e-3)
    # 64 x 32 padded to 64 x 64 then halved: the white column band is 8..24, the sides black.
    assert tall[0, 16, 16] == 1.0
    np.testing.assert_array_equal(tall[0, :, :7].numpy(), np.zeros((32, 7), np.float32))
    np.testing.assert_array_equal(tall[0, :, 25:].numpy(), np.zeros((32, 7), np.float32))
    np.testing.assert_array_equal(tall[0, :, 9:23].numpy(), np.ones((32, 14), np.float32))


@pytest.mark.parametrize("column", ["answer", "question"])
def test_empty_field_raises_with_csv_and_row(root, tmp_path, column):
    rows = [list(r) for r in ROWS]
    rows[3][{"question": 1, "answer": 2}[column]] = "   "
    write_manifest(root, rows=rows)
    with pytest.raises(SampleError, match=re.escape(f"{root / 'manifest.csv'}: row 3: empty {column}")):
        build(root, tmp_path)


def test_empty_answer_skipped_and_counted(root, tmp_path):
    rows = [list(r) for r in ROWS]
    rows[3][2] = ""
    write_manifest(root, rows=rows)
    ds = build(root, tmp_path, on_error="skip")
    assert [s.id for s in ds.samples] == ["manifest/0", "manifest/1", "manifest/2", "manifest/4", "manifest/5"]
    assert ds.stats == {"samples": 5, "skipped": 1, "filtered_view": 0}


def test_corrupt_image_raises_or_is_skipped(root, tmp_path):
    corrupt = root / "img" / "broken.png"
    corrupt.write_bytes(np.random.default_rng(0).bytes(300))
    write_manifest(root, rows=[*ROWS, ("img/broken.png", "Anything?", "No.", "train", "", "")])
    with pytest.raises(ImageReadError, match=re.escape(f"{corrupt}: unreadable image file (UnidentifiedImageError)")):
        build(root, tmp_path)
    ds = build(root, tmp_path, on_error="skip")
    assert [s.id for s in ds.samples] == [f"manifest/{i}" for i in range(6)]
    assert ds.stats == {"samples": 6, "skipped": 1, "filtered_view": 0}


def test_missing_image_file_is_named(root, tmp_path):
    write_manifest(root, rows=[*ROWS, ("img/gone.png", "Anything?", "No.", "train", "", "")])
    with pytest.raises(ImageReadError, match=re.escape(f"{root / 'img' / 'gone.png'}: file not found")):
        build(root, tmp_path)
