"""MIMIC-CXR source: report sections, official split, view filter, labels, error policy; and the demo set."""

from __future__ import annotations

import gzip
import re
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from mmmed_datasets.xray.mimic_cxr import MIMICCXRDataset, parse_report_sections
from mmmed_datasets.xray.xray_cache import XrayImageCache
from mmmed_datasets.demo.xray_demo import ENCODINGS, FINDINGS, ensure_demo_mimic_cxr
from mmmed_datasets.xray.xray_image import ImageReadError, read_dicom
from mmmed_datasets.xray.xray_qa import SampleError

REAL_STYLE_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 
 INDICATION:  ___F with new onset ascites  // eval for infection
 
 TECHNIQUE:  Chest PA and lateral
 
 COMPARISON:  None.
 
 FINDINGS: 
 
 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.
 
 IMPRESSION: 
 
 No acute cardiopulmonary process.
"""


def test_report_sections_are_parsed_and_whitespace_collapsed():
    sections = parse_report_sections(REAL_STYLE_REPORT)
    assert list(sections) == ["EXAMINATION", "INDICATION", "TECHNIQUE", "COMPARISON", "FINDINGS", "IMPRESSION"]
    assert sections["FINDINGS"] == (
        "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral "
        "nodular opacities that most likely represent nipple shadows."
    )
    assert sections["IMPRESSION"] == "No acute cardiopulmonary process."
    assert sections["INDICATION"] == "___F with new onset ascites // eval for infection"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return ensure_demo_mimic_cxr(tmp_path_factory.mktemp("cxr") / "demo", num_patients=30, rows=96, cols=80, seed=0)


def dataset(root: Path, cache: Path, **overrides) -> MIMICCXRDataset:
    kwargs = dict(
        root=str(root),
        split="train",
        section="IMPRESSION",
        question="<xray>\nWhat is the impression?",
        split_csv="mimic-cxr-2.0.0-split.csv.gz",
        metadata_csv="mimic-cxr-2.0.0-metadata.csv.gz",
        labels_csv="mmmed-demo-labels.csv",
        views=["PA", "AP"],
        on_error="raise",
        images=XrayImageCache(str(cache), size=32, apply_voi=True, no_window="full_range", percentiles=None, workers=1),
    )
    kwargs.update(overrides)
    return MIMICCXRDataset(**kwargs)


def test_demo_layout_follows_mimic_cxr(demo):
    split = pd.read_csv(demo / "mimic-cxr-2.0.0-split.csv.gz", dtype={"dicom_id": str})
    for row in split.itertuples():
        study = demo / "files" / f"p{str(row.subject_id)[:2]}" / f"p{row.subject_id}" / f"s{row.study_id}"
        assert (study / f"{row.dicom_id}.dcm").is_file() and study.with_suffix(".txt").is_file()
        assert re.fullmatch(r"([0-9a-f]{8}-){4}[0-9a-f]{8}", row.dicom_id)
    # Patient-disjoint splits, 8/1/1 per finding, every finding in every split.
    assert split.groupby("subject_id")["split"].nunique().max() == 1
    labels = pd.read_csv(demo / "mmmed-demo-labels.csv")
    per_split = split.drop_duplicates("study_id").merge(labels, on="study_id").groupby("split")["label"].apply(Counter)
    assert {s: dict(per_split[s]) for s in ("train", "validate", "test")} == {
        "train": {"NORMAL": 8, "LEFT": 8, "RIGHT": 8},
        "validate": {"NORMAL": 1, "LEFT": 1, "RIGHT": 1},
        "test": {"NORMAL": 1, "LEFT": 1, "RIGHT": 1},
    }


def test_demo_files_cover_every_encoding_pitfall(demo):
    seen = set()
    for path in sorted(demo.glob("files/**/*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        seen.add((ds.PhotometricInterpretation, ds.BitsStored, ds.file_meta.TransferSyntaxUID,
                  "RescaleSlope" in ds, "WindowCenter" in ds, "VOILUTSequence" in ds))
    expected = {(e.photometric, e.bits_stored, e.syntax, e.rescale is not None, bool(e.windows), e.voi_lut_gamma is not None)
                for e in ENCODINGS}
    assert seen == expected


def test_demo_finding_lies_on_the_named_side(demo):
    """Patient's left is the viewer's right: a LEFT opacity brightens the image's right lower lung."""
    split = pd.read_csv(demo / "mimic-cxr-2.0.0-split.csv.gz", dtype={"dicom_id": str})
    meta = pd.read_csv(demo / "mimic-cxr-2.0.0-metadata.csv.gz", dtype={"dicom_id": str})
    labels = pd.read_csv(demo / "mmmed-demo-labels.csv").set_index("study_id")["label"]
    frontal = split.merge(meta[["dicom_id", "ViewPosition"]], on="dicom_id").query("ViewPosition in ['PA', 'AP']")
    asymmetry = {"LEFT": [], "RIGHT": [], "NORMAL": []}
    for row in frontal.itertuples():
        path = demo / "files" / f"p{str(row.subject_id)[:2]}" / f"p{row.subject_id}" / f"s{row.study_id}" / f"{row.dicom_id}.dcm"
        pixels = read_dicom(path, apply_voi=True, no_window="full_range", percentiles=None).pixels
        rows, cols = pixels.shape
        band = pixels[rows // 2 : int(rows * 0.65)]  # lower lung zone, lateral to the heart
        image_right, image_left = band[:, int(cols * 0.68) : int(cols * 0.8)], band[:, int(cols * 0.2) : int(cols * 0.32)]
        asymmetry[labels[row.study_id]].append(image_right.mean() - image_left.mean())
    assert min(asymmetry["LEFT"]) > max(asymmetry["NORMAL"]) > max(asymmetry["RIGHT"])


def test_generation_is_deterministic_and_refuses_other_settings(demo, tmp_path):
    again = ensure_demo_mimic_cxr(tmp_path / "again", num_patients=30, rows=96, cols=80, seed=0)
    first = sorted(p.relative_to(demo) for p in demo.glob("files/**/*.*"))
    assert first == sorted(p.relative_to(again) for p in again.glob("files/**/*.*"))
    assert all((demo / p).read_bytes() == (again / p).read_bytes() for p in first)
    with pytest.raises(ValueError, match="generated with"):
        ensure_demo_mimic_cxr(demo, num_patients=31, rows=96, cols=80, seed=0)


def test_split_views_answers_and_labels(demo, tmp_path):
    ds = dataset(demo, tmp_path / "cache", split="validate")
    split = pd.read_csv(demo / "mimic-cxr-2.0.0-split.csv.gz", dtype={"dicom_id": str})
    meta = pd.read_csv(demo / "mimic-cxr-2.0.0-metadata.csv.gz", dtype={"dicom_id": str})
    rows = split[split["split"] == "validate"].merge(meta[["dicom_id", "ViewPosition"]], on="dicom_id")
    frontal = rows[rows["ViewPosition"].isin(["PA", "AP"])]
    assert len(ds) == len(frontal) == 3
    assert ds.stats == {"samples": 3, "skipped": 0, "filtered_view": len(rows) - 3, "no_section": 0}
    labels = pd.read_csv(demo / "mmmed-demo-labels.csv").set_index("study_id")["label"]
    for i, row in enumerate(frontal.itertuples()):
        item = ds[i]
        assert item["id"] == f"mimic-cxr/s{row.study_id}/{row.dicom_id}"
        assert item["label"] == labels[row.study_id]
        assert item["answer"] == FINDINGS[item["label"]][1]  # the impression
        assert item["question"] == "<xray>\nWhat is the impression?"
        assert item["signals"]["xray"][0].shape == (1, 32, 32)


def test_views_from_headers_when_there_is_no_metadata_file(demo, tmp_path):
    with_meta = dataset(demo, tmp_path / "cache")
    from_headers = dataset(demo, tmp_path / "cache", metadata_csv=None)
    assert [s.id for s in from_headers.samples] == [s.id for s in with_meta.samples]
    assert from_headers.stats == with_meta.stats
    everything = dataset(demo, tmp_path / "cache", views=None)
    assert len(everything) == len(with_meta) + with_meta.stats["filtered_view"]


def test_findings_section_and_reports_without_it(tmp_path, demo):
    root = tmp_path / "copy"
    shutil.copytree(demo, root)
    ds = dataset(root, tmp_path / "cache", split="test", section="findings")
    assert all(item.answer.startswith(("The lungs", "Lungs", "There is", "Focal")) for item in ds.samples)
    report = sorted(root.glob("files/*/*/s*.txt"))[0]
    study_id = int(report.stem[1:])
    report.write_text(report.read_text().split(" IMPRESSION:")[0])  # a study with findings only
    split = pd.read_csv(root / "mimic-cxr-2.0.0-split.csv.gz")
    which = split.loc[split["study_id"] == study_id, "split"].iloc[0]
    frontal_of_study = dataset(root, tmp_path / "cache", split=which, views=None, section="FINDINGS")
    images_of_study = sum(s.id.startswith(f"mimic-cxr/s{study_id}/") for s in frontal_of_study.samples)
    ds = dataset(root, tmp_path / "cache", split=which, views=None)
    assert ds.stats["no_section"] == images_of_study >= 1
    assert not any(s.id.startswith(f"mimic-cxr/s{study_id}/") for s in ds.samples)


def test_missing_report_and_unreadable_image_raise_or_are_counted(tmp_path, demo):
    root = tmp_path / "copy"
    shutil.copytree(demo, root)
    split = pd.read_csv(root / "mimic-cxr-2.0.0-split.csv.gz", dtype={"dicom_id": str})
    train = split[split["split"] == "train"]
    first, second = train.drop_duplicates("study_id").iloc[:2].itertuples()
    report = root / "files" / f"p{str(first.subject_id)[:2]}" / f"p{first.subject_id}" / f"s{first.study_id}.txt"
    report.unlink()
    with pytest.raises(SampleError) as caught:
        dataset(root, tmp_path / "cache")
    assert str(caught.value) == f"{report}: report file not found"

    image = root / "files" / f"p{str(second.subject_id)[:2]}" / f"p{second.subject_id}" / f"s{second.study_id}" / f"{second.dicom_id}.dcm"
    image.write_bytes(image.read_bytes()[:1000])  # cut inside the pixel data
    ds = dataset(root, tmp_path / "cache", on_error="skip", views=None)
    lost = len(train[train["study_id"] == first.study_id])  # every image of the study without a report
    assert ds.stats["skipped"] == 2 and len(ds) == len(train) - lost - 1
    report.write_text(REAL_STYLE_REPORT)
    with pytest.raises(ImageReadError) as caught:
        dataset(root, tmp_path / "cache", views=None, on_error="raise")
    assert caught.value.path == str(image)


def test_empty_report_is_an_error(tmp_path, demo):
    root = tmp_path / "copy"
    shutil.copytree(demo, root)
    report = sorted(root.glob("files/*/*/s*.txt"))[0]
    report.write_text("  \n")
    split = pd.read_csv(root / "mimic-cxr-2.0.0-split.csv.gz")
    which = split.loc[split["study_id"] == int(report.stem[1:]), "split"].iloc[0]
    with pytest.raises(SampleError, match="empty report"):
        dataset(root, tmp_path / "cache", split=which)


def test_split_file_must_exist_and_name_known_splits(tmp_path, demo):
    with pytest.raises(FileNotFoundError, match="split file not found"):
        dataset(demo, tmp_path / "cache", split_csv="absent.csv")
    with pytest.raises(ValueError, match="splits are"):
        dataset(demo, tmp_path / "cache", split="val")
    with gzip.open(demo / "mimic-cxr-2.0.0-split.csv.gz", "rt") as handle:
        assert handle.readline().strip() == "dicom_id,study_id,subject_id,split"
