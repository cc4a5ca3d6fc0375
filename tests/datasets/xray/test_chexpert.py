"""CheXpertDataset over a hand-written CheXpert-style CSV and small PNG radiographs."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from mmmed_datasets.xray.chexpert import FINDINGS, CheXpertDataset
from mmmed_datasets.xray.xray_cache import XrayImageCache
from mmmed_datasets.xray.xray_image import ImageReadError

QUESTION = "<xray>\nIs there {finding}?"
ASKED = ["Cardiomegaly", "Edema", "Pleural Effusion"]
RELEASE = "CheXpert-v1.0-small"
FRONTAL_AP = f"{RELEASE}/train/patient00001/study1/view1_frontal.png"  # 8-bit, constant white, square
FRONTAL_PA = f"{RELEASE}/train/patient00002/study1/view1_frontal.png"  # 8-bit, wide: letterboxed
LATERAL = f"{RELEASE}/train/patient00002/study1/view2_lateral.png"  # 16-bit
FRONTAL_NO_VIEW = f"{RELEASE}/train/patient00003/study1/view1_frontal.png"  # frontal, blank AP/PA

# Path -> (Frontal/Lateral, AP/PA, {finding: code}); unlisted findings are blank.
ROWS = {
    FRONTAL_AP: ("Frontal", "AP", {"Cardiomegaly": "1.0", "Edema": "-1.0", "Support Devices": "1.0"}),
    FRONTAL_PA: ("Frontal", "PA", {"No Finding": "1.0", "Cardiomegaly": "0.0", "Pleural Effusion": "0.0"}),
    LATERAL: ("Lateral", "", {"No Finding": "1.0", "Cardiomegaly": "0.0", "Pleural Effusion": "-1.0"}),
    FRONTAL_NO_VIEW: ("Frontal", "", {"Cardiomegaly": "-1.0", "Edema": "1.0", "Pleural Effusion": "1.0"}),
}
LATERAL_PIXELS = (np.arange(32 * 32).reshape(32, 32) * 61 % 65536).astype(np.uint16)


def write_csv(path, rows: dict) -> None:
    """A CheXpert CSV as the release writes it: floats as 1.0/0.0/-1.0, blank for unmentioned."""
    lines = [",".join(["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *FINDINGS])]
    for rel, (kind, ap_pa, codes) in rows.items():
        lines.append(",".join([rel, "Female", "68", kind, ap_pa, *(codes.get(f, "") for f in FINDINGS)]))
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def layout(tmp_path):
    """``tmp_path/data`` is image_root; the CSVs sit in ``data/CheXpert-v1.0-small``."""
    data = tmp_path / "data"
    (data / RELEASE).mkdir(parents=True)
    images = {
        FRONTAL_AP: Image.fromarray(np.full((64, 64), 255, dtype=np.uint8)),  # resized 64 -> 32
        FRONTAL_PA: Image.fromarray(np.full((16, 32), 255, dtype=np.uint8)),  # 16 rows x 32 cols
        LATERAL: Image.fromarray(LATERAL_PIXELS),  # mode I;16
        FRONTAL_NO_VIEW: Image.fromarray(np.full((32, 32), 128, dtype=np.uint8)),
    }
    for rel, image in images.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(data / rel)
    assert Image.open(data / LATERAL).mode == "I;16"
    write_csv(data / RELEASE / "train.csv", ROWS)
    return data


def build(layout, tmp_path, csv="train.csv", findings=ASKED, uncertain="positive", views=None, on_error="raise"):
    return CheXpertDataset(
        root=str(layout / RELEASE),
        csv=csv,
        image_root=str(layout),
        findings=findings,
        uncertain=uncertain,
        question=QUESTION,
        views=views,
        on_error=on_error,
        images=XrayImageCache(str(tmp_path / "cache"), size=32, apply_voi=True,
            no_window="percentile", percentiles=[0.5, 99.5], workers=1),
    )


def triples(ds) -> list[tuple[str, str, str]]:
    return [(ds[i]["id"], ds[i]["answer"], ds[i]["label"]) for i in range(len(ds))]


def expected(policy_uncertain: str | None) -> list[tuple[str, str, str]]:
    """(id, answer, label) per (row, asked finding); ``policy_uncertain`` None drops uncertain ones."""
    yes, no = ("Yes.", "yes"), ("No.", "no")
    unc = {"positive": yes, "negative": no, None: None}[policy_uncertain]
    table = [
        (FRONTAL_AP, "Cardiomegaly", yes), (FRONTAL_AP, "Edema", unc), (FRONTAL_AP, "Pleural Effusion", no),
        (FRONTAL_PA, "Cardiomegaly", no), (FRONTAL_PA, "Edema", no), (FRONTAL_PA, "Pleural Effusion", no),
        (LATERAL, "Cardiomegaly", no), (LATERAL, "Edema", no), (LATERAL, "Pleural Effusion", unc),
        (FRONTAL_NO_VIEW, "Cardiomegaly", unc), (FRONTAL_NO_VIEW, "Edema", yes), (FRONTAL_NO_VIEW, "Pleural Effusion", yes),
    ]
    return [(f"chexpert/{rel}/{f}", *answer) for rel, f, answer in table if answer is not None]


def test_uncertain_positive_counts_minus_one_as_yes(layout, tmp_path):
    ds = build(layout, tmp_path, uncertain="positive")
    assert triples(ds) == expected("positive")
    assert ds.stats == {"samples": 12, "skipped": 0, "filtered_view": 0, "uncertain_excluded": 0}


def test_uncertain_negative_counts_minus_one_as_no(layout, tmp_path):
    ds = build(layout, tmp_path, uncertain="negative")
    assert triples(ds) == expected("negative")


def test_uncertain_exclude_drops_only_those_questions(layout, tmp_path):
    ds = build(layout, tmp_path, uncertain="exclude")
    assert triples(ds) == expected(None)
    assert len(ds) == 9
    assert ds.stats["uncertain_excluded"] == 3


def test_blank_is_negative(layout, tmp_path):
    # FRONTAL_AP leaves Pleural Effusion blank, FRONTAL_PA leaves Edema blank.
    ds = build(layout, tmp_path, findings=["Pleural Effusion", "Edema"])
    by_id = {ds[i]["id"]: (ds[i]["answer"], ds[i]["label"]) for i in range(len(ds))}
    assert by_id[f"chexpert/{FRONTAL_AP}/Pleural Effusion"] == ("No.", "no")
    assert by_id[f"chexpert/{FRONTAL_PA}/Edema"] == ("No.", "no")


def test_question_fills_lower_cased_finding(layout, tmp_path):
    ds = build(layout, tmp_path, findings=["Pleural Effusion"])
    assert [ds[i]["question"] for i in range(len(ds))] == ["<xray>\nIs there pleural effusion?"] * 4


def test_view_filter_drops_lateral_and_frontal_without_ap_pa(layout, tmp_path):
    ds = build(layout, tmp_path, views=["PA", "AP"])
    assert [s.view for s in ds.samples] == ["AP"] * 3 + ["PA"] * 3
    assert triples(ds) == expected("positive")[:6]
    # 3 questions about the lateral image + 3 about the frontal one whose view is unknown.
    assert ds.stats["filtered_view"] == 6
    assert ds.stats["samples"] == 6


def test_views_from_csv(layout, tmp_path):
    ds = build(layout, tmp_path, findings=["Edema"])
    assert [(s.id, s.view) for s in ds.samples] == [
        (f"chexpert/{FRONTAL_AP}/Edema", "AP"),
        (f"chexpert/{FRONTAL_PA}/Edema", "PA"),
        (f"chexpert/{LATERAL}/Edema", "LATERAL"),
        (f"chexpert/{FRONTAL_NO_VIEW}/Edema", None),
    ]


def test_images_decoded_and_letterboxed(layout, tmp_path):
    ds = build(layout, tmp_path, findings=["Edema"])
    images = [ds[i]["signals"]["xray"][0] for i in range(len(ds))]
    assert all(tuple(im.shape) == (1, 32, 32) for im in images)
    white, wide, lateral, grey = (im[0].numpy() for im in images)
    # Constant 255 resized from 64 to 32: 1.0 everywhere, the centre included.
    assert white[16, 16] == 1.0
    np.testing.assert_array_equal(white, np.ones((32, 32), np.float32))
    # 16 x 32 padded to 32 x 32 (no resize): 8 black rows above and below the white band.
    band = np.zeros((32, 32), np.float32)
    band[8:24] = 1.0
    np.testing.assert_array_equal(wide, band)
    # 16-bit PNG: value / 65535, stored in the cache as float16.
    np.testing.assert_array_equal(lateral, (LATERAL_PIXELS / 65535.0).astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(grey, np.full((32, 32), np.float16(128 / 255), np.float32))


def test_bad_value_names_file_row_and_column(layout, tmp_path):
    rows = dict(ROWS)
    rows[LATERAL] = ("Lateral", "", {"Edema": "2.0"})
    write_csv(layout / RELEASE / "bad.csv", rows)
    csv_path = layout / RELEASE / "bad.csv"
    message = f"{csv_path}: row {LATERAL} column 'Edema': value '2.0' is not 1, 0, -1 or blank"
    with pytest.raises(ValueError, match=re.escape(message)):
        build(layout, tmp_path, csv="bad.csv")


def test_non_numeric_value_rejected(layout, tmp_path):
    rows = dict(ROWS)
    rows[FRONTAL_PA] = ("Frontal", "PA", {"Cardiomegaly": "yes"})
    write_csv(layout / RELEASE / "bad.csv", rows)
    message = f"{layout / RELEASE / 'bad.csv'}: row {FRONTAL_PA} column 'Cardiomegaly': value 'yes' is not 1, 0, -1 or blank"
    with pytest.raises(ValueError, match=re.escape(message)):
        build(layout, tmp_path, csv="bad.csv")


def test_missing_finding_column(layout, tmp_path):
    message = f"{layout / RELEASE / 'train.csv'}: missing columns ['Hernia', 'Nodule']"
    with pytest.raises(ValueError, match=re.escape(message)):
        build(layout, tmp_path, findings=["Cardiomegaly", "Hernia", "Nodule"])


def test_bad_arguments(layout, tmp_path):
    with pytest.raises(ValueError, match=re.escape("uncertain must be one of ('positive', 'negative', 'exclude'), not 'ones'")):
        build(layout, tmp_path, uncertain="ones")
    with pytest.raises(ValueError, match=re.escape("on_error must be one of ('raise', 'skip'), not 'ignore'")):
        build(layout, tmp_path, on_error="ignore")
    with pytest.raises(FileNotFoundError, match=re.escape(str(layout / RELEASE / "valid.csv"))):
        build(layout, tmp_path, csv="valid.csv")


def test_corrupt_image_raises_or_is_skipped(layout, tmp_path):
    corrupt = layout / FRONTAL_PA
    corrupt.write_bytes(np.random.default_rng(0).bytes(500))
    message = f"{corrupt}: unreadable image file (UnidentifiedImageError)"
    with pytest.raises(ImageReadError, match=re.escape(message)):
        build(layout, tmp_path)
    ds = build(layout, tmp_path, on_error="skip")
    # Every question about the corrupt image is skipped: one per asked finding.
    assert ds.stats["skipped"] == 3
    assert triples(ds) == [t for t in expected("positive") if FRONTAL_PA not in t[0]]
