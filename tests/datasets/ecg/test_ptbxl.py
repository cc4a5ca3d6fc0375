"""PTBXLDataset over a hand-built miniature PTB-XL layout (table + WFDB records at 100 and 500 Hz)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from mmmed_datasets.demo.ecg_demo import PTBXL_LEAD_NAMES, record_paths, write_ptbxl_record
from scipy.signal import resample_poly

from mmmed_datasets.ecg.ecg_cache import ECGSignalCache
from mmmed_datasets.ecg.ecg_preprocess import ECGPreprocessing
from mmmed_datasets.ecg.ptbxl import PTBXLDataset, superclasses_of
from mmmed_datasets.ecg.wfdb_ecg import CANONICAL_LEADS, ECGRecordError

QUESTION = "<ecg>\nWhat is the rhythm?"
LABELS = ["SBRAD", "SR", "STACH"]

# ecg_id -> (patient_id, report, scp_codes, strat_fold)
ROWS = {
    5: (101.0, "Sinus bradycardia at 50 bpm.", "{'NORM': 100.0, 'SBRAD': 0.0}", 1),
    17: (102.0, "  Normal sinus rhythm at 70 bpm.\n", "{'SR': 0.0, 'NORM': 100.0}", 1),
    1003: (103.0, "Sinus tachycardia at 120 bpm.", "{'STACH': 0.0, 'SR': 0.0}", 9),
    1004: (104.0, "Left ventricular hypertrophy.", "{'LVH': 50.0}", 10),
    2001: (105.0, "", "{'NORM': 100.0, 'SR': 0.0}", 7),  # empty report
    2002: (106.0, "   ", "{'NORM': 100.0, 'SR': 0.0}", 8),  # whitespace-only report
}


def quantise(x: np.ndarray) -> np.ndarray:
    return np.round(x * 1000) / 1000


def make_signal(ecg_id: int, fs: int) -> np.ndarray:
    """(10 s * fs, 12) mV, different per record and rate, with per-lead offsets and scales."""
    rng = np.random.default_rng(ecg_id * 1000 + fs)
    t = np.arange(10 * fs) / fs
    base = np.sin(2 * np.pi * (1 + ecg_id % 7) * t)[:, None] * np.linspace(0.2, 2.0, 12)
    return base + rng.normal(0, 0.1, size=(10 * fs, 12)) + np.linspace(-1.0, 1.0, 12)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ptbxl")
    table = []
    signals = {}
    for ecg_id, (patient, report, codes, fold) in ROWS.items():
        filename_lr = f"records100/{ecg_id // 1000 * 1000:05d}/{ecg_id:05d}_lr"
        filename_hr = f"records500/{ecg_id // 1000 * 1000:05d}/{ecg_id:05d}_hr"
        for fs, rel in ((100, filename_lr), (500, filename_hr)):
            signals[ecg_id, fs] = make_signal(ecg_id, fs)
            if ecg_id == 17:
                signals[ecg_id, fs][:, 11] = 0.0  # flat V6
                signals[ecg_id, fs][:, 10] = -3.7  # flat V5 at a nonzero offset
            write_ptbxl_record(root, rel, signals[ecg_id, fs], fs)
        table.append(
            {
                "ecg_id": ecg_id,
                "patient_id": patient,
                "report": report,
                "scp_codes": codes,
                "strat_fold": fold,
                "filename_lr": filename_lr,
                "filename_hr": filename_hr,
            }
        )
    pd.DataFrame(table).set_index("ecg_id").to_csv(root / "ptbxl_database.csv")
    # A slice of PTB-XL's scp_statements.csv: diagnostic statements carry a class, rhythm ones don't.
    pd.DataFrame(
        [
            ("NORM", 1.0, "NORM", None),
            ("LVH", 1.0, "HYP", 1.0),
            ("IMI", 1.0, "MI", None),
            ("NDT", 1.0, "STTC", None),
            ("SR", None, None, None),
            ("SBRAD", None, None, None),
            ("STACH", None, None, None),
        ],
        columns=["code", "diagnostic", "diagnostic_class", "form"],
    ).set_index("code").rename_axis(None).to_csv(root / "scp_statements.csv")
    (root / "questions.csv").write_text(
        "ecg_id,question,answer,label\n"
        '5,"<ecg>\nIs the rate below 60 bpm?",yes,yes\n'
        '5,"<ecg>\nWhat is the rhythm?",sinus bradycardia,\n'
        '1003,"<ecg>\nIs the rate below 60 bpm?",no,no\n'
    )
    return root, signals


def prep(**overrides) -> ECGPreprocessing:
    settings = dict(
        leads=list(CANONICAL_LEADS), lead_aliases=None, min_real_leads=1,
        sampling_rate=100, seconds=10, missing_leads="error", nan_policy="reject",
        short_records="error", bandpass=None, filter_order=4, notch=None, notch_quality=30, normalize="none",
        eval_crop="center", eval_crops=1,
    )
    return ECGPreprocessing(**{**settings, **overrides})


def dataset(root, folds, fs=100, task="report", labels=LABELS, on_error="raise", cache=None, questions_csv=None, **signal) -> PTBXLDataset:
    return PTBXLDataset(
        str(root), folds, fs, task, QUESTION, questions_csv, labels, prep(**signal), train=False, on_error=on_error, cache=cache
    )


def ecg(item, k=0) -> np.ndarray:
    return item["signals"]["ecg"][k]["signal"].numpy()


def test_record_paths_match_ptbxl_layout():
    assert record_paths(5) == ("records100/00000/00005_lr", "records500/00000/00005_hr")
    assert record_paths(1003) == ("records100/01000/01003_lr", "records500/01000/01003_hr")
    assert record_paths(21837) == ("records100/21000/21837_lr", "records500/21000/21837_hr")
    # the demo writer's lead names are PTB-XL's, which are the canonical leads up to case
    assert [n.lower() for n in PTBXL_LEAD_NAMES] == [n.lower() for n in CANONICAL_LEADS]


def test_fold_selection(root):
    root, _ = root
    assert [s.id for s in dataset(root, [1]).samples] == ["ptbxl/5", "ptbxl/17"]
    assert [s.id for s in dataset(root, [9, 10]).samples] == ["ptbxl/1003", "ptbxl/1004"]
    assert [s.id for s in dataset(root, [10, 1]).samples] == ["ptbxl/5", "ptbxl/17", "ptbxl/1004"]  # table order
    assert len(dataset(root, [1, 9, 10])) == 4
    assert [dataset(root, [1])[i]["id"] for i in range(2)] == ["ptbxl/5", "ptbxl/17"]


@pytest.mark.parametrize("fs", [100, 500])
def test_native_rate_returns_written_values_from_the_right_file(root, fs):
    root, signals = root
    ds = dataset(root, [1, 9, 10], fs=fs, sampling_rate=fs)
    for i, ecg_id in enumerate([5, 17, 1003, 1004]):
        x = ds[i]["signals"]["ecg"][0]["signal"]
        assert x.shape == (12, 10 * fs) and x.dtype == torch.float32
        np.testing.assert_allclose(x.numpy(), quantise(signals[ecg_id, fs]).T, rtol=0, atol=1e-6)
        other = 600 - fs  # the other rate's signal differs, so reading the wrong file cannot pass
        assert signals[ecg_id, other].shape[0] != 10 * fs


def test_500_hz_records_resampled_to_100_hz(root):
    root, signals = root
    ds = dataset(root, [9], fs=500, sampling_rate=100)
    expected = resample_poly(quantise(signals[1003, 500]).T, 1, 5, axis=-1)  # (12, 1000)
    np.testing.assert_allclose(ecg(ds[0]), expected, rtol=0, atol=1e-5)


def zscore64(x: np.ndarray) -> np.ndarray:
    """Independent per-lead z-score of (12, T) in float64 (population std, as np.std)."""
    return (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)


def test_record_zscore_is_per_record_and_lead(root):
    root, signals = root
    ds = dataset(root, [1, 9], fs=500, sampling_rate=500, normalize="record")
    for i, ecg_id in enumerate([5, 17, 1003]):
        x = quantise(signals[ecg_id, 500]).T  # (12, T) float64
        leads = slice(0, 10) if ecg_id == 17 else slice(0, 12)  # 17's V5/V6 are flat: see below
        got = ecg(ds[i])
        np.testing.assert_allclose(got[leads], zscore64(x[leads]), rtol=0, atol=2e-5)
        np.testing.assert_allclose(got[leads].mean(1), 0, atol=1e-5)
        np.testing.assert_allclose(got[leads].std(1), 1, atol=1e-5)


def test_flat_leads_at_zero_and_at_an_offset_z_score_to_exactly_zero(root):
    # A lead flat at -3.7 mV (electrode off with a DC offset) must z-score to 0, not to float32
    # rounding residue / 1e-6.
    root, _ = root
    got = ecg(dataset(root, [1], fs=500, sampling_rate=500, normalize="record")[1])
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[10], 0.0, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got[11], 0.0)


def test_label_of_picks_first_listed_code_present(root):
    root, _ = root
    ds = dataset(root, [1])
    assert ds.label_of({"STACH": 0.0, "SR": 0.0}) == "SR"  # order of label_codes, not of the dict
    assert ds.label_of({"NORM": 100.0, "SBRAD": 0.0}) == "SBRAD"
    assert ds.label_of({"LVH": 50.0}) is None
    assert ds.label_of({}) is None
    reverse = dataset(root, [1], labels=list(reversed(LABELS)))
    assert reverse.label_of({"STACH": 0.0, "SR": 0.0}) == "STACH"


def test_item_format(root):
    root, _ = root
    ds = dataset(root, [1, 9, 10])
    items = [ds[i] for i in range(len(ds))]
    for item in items:
        assert set(item) == {"id", "signals", "question", "answer", "label"}
        assert set(item["signals"]) == {"ecg"} and len(item["signals"]["ecg"]) == 1
        signal = item["signals"]["ecg"][0]
        assert set(signal) == {"signal", "lead_mask"} and signal["signal"].is_contiguous()
        assert signal["lead_mask"].dtype == torch.bool and signal["lead_mask"].tolist() == [True] * 12
        assert item["question"] == QUESTION
    assert [item["id"] for item in items] == ["ptbxl/5", "ptbxl/17", "ptbxl/1003", "ptbxl/1004"]
    assert [item["answer"] for item in items] == [
        "Sinus bradycardia at 50 bpm.",
        "Normal sinus rhythm at 70 bpm.",  # stripped
        "Sinus tachycardia at 120 bpm.",
        "Left ventricular hypertrophy.",
    ]
    assert [item["label"] for item in items] == ["SBRAD", "SR", "SR", None]


def test_superclasses_follow_scp_statements_whatever_the_likelihood():
    table = {"NORM": "NORM", "LVH": "HYP", "IMI": "MI", "NDT": "STTC"}
    assert superclasses_of({"NDT": 0.0, "IMI": 15.0, "SR": 0.0}, table) == ["MI", "STTC"]  # fixed order
    assert superclasses_of({"LVH": 50.0, "NORM": 100.0}, table) == ["NORM", "HYP"]
    assert superclasses_of({"SR": 0.0, "STACH": 0.0}, table) == []


def test_superclass_task_answers_and_leaves_out_records_without_one(root):
    root, _ = root
    ds = dataset(root, [1, 9, 10], task="superclass")
    assert [(s.id, s.answer) for s in ds.samples] == [("ptbxl/5", "NORM"), ("ptbxl/17", "NORM"), ("ptbxl/1004", "HYP")]
    assert ds.stats["no_superclass"] == 1  # 1003 has rhythm statements only
    assert all(s.label is None for s in ds.samples)  # scored by exact match, not by a class


def test_qa_task_reads_questions_per_record(root):
    root, _ = root
    ds = dataset(root, [1, 9], task="qa", questions_csv="questions.csv")
    got = [(s.id, s.question, s.answer, s.label) for s in ds.samples]
    assert got == [
        ("ptbxl/5/q0", "<ecg>\nIs the rate below 60 bpm?", "yes", "yes"),
        ("ptbxl/5/q1", "<ecg>\nWhat is the rhythm?", "sinus bradycardia", None),
        ("ptbxl/1003/q0", "<ecg>\nIs the rate below 60 bpm?", "no", "no"),
    ]
    np.testing.assert_array_equal(ecg(ds[0]), ecg(ds[1]))  # one record, two questions


def test_qa_questions_without_a_tag_are_refused(root, tmp_path):
    root, _ = root
    bad = tmp_path / "q.csv"
    bad.write_text("ecg_id,question,answer\n5,What is the rhythm?,sinus bradycardia\n")
    with pytest.raises(ValueError, match=re.escape(f"{bad}, line 2: question has no <ecg> tag")):
        dataset(root, [1], task="qa", questions_csv=str(bad))


@pytest.mark.parametrize("fold, ecg_id", [(7, 2001), (8, 2002)])
def test_empty_report_raises_naming_the_record(root, fold, ecg_id):
    root, _ = root
    record = root / f"records500/02000/{ecg_id:05d}_hr"
    message = f"ECG record {record}: ecg_id {ecg_id} has an empty report in ptbxl_database.csv"
    with pytest.raises(ECGRecordError, match=re.escape(message)):
        dataset(root, [fold], fs=500)


def test_empty_reports_are_counted_skips_under_skip(root, caplog):
    root, _ = root
    ds = dataset(root, [1, 7, 8], on_error="skip")
    assert [s.id for s in ds.samples] == ["ptbxl/5", "ptbxl/17"]
    assert ds.stats["skipped"] == 2 and ds.stats["samples"] == 2
    assert "ecg_id 2001 has an empty report" in caplog.text


def test_record_shorter_than_the_window_names_the_file(root, tmp_path):
    root, _ = root
    record = root / "records100/00000/00005_lr"
    message = f"ECG record {record}: 10 s long (1000 samples at 100 Hz), shorter than the 20 s window"
    with pytest.raises(ECGRecordError, match=re.escape(message)):
        dataset(root, [1], seconds=20, cache=ECGSignalCache(tmp_path))
    with pytest.raises(ECGRecordError, match=re.escape(message)):  # on the fly: when the item is read
        dataset(root, [1], seconds=20)[0]
    for cache in (ECGSignalCache(tmp_path), None):  # skipping finds them up front, cached or not
        with pytest.raises(ValueError, match=re.escape("PTB-XL folds [1]: no usable samples (2 skipped)")):
            dataset(root, [1], seconds=20, on_error="skip", cache=cache)


@pytest.mark.parametrize("fs", [250, 0, 1000])
def test_unknown_record_rate(root, fs):
    root, _ = root
    with pytest.raises(ValueError, match=re.escape(f"PTB-XL has 100 Hz and 500 Hz records, not {fs} Hz")):
        dataset(root, [1], fs=fs)


@pytest.mark.parametrize("folds", [[], [2], [3, 4, 5, 6]])
def test_empty_fold_set(root, folds):
    root, _ = root
    with pytest.raises(ValueError, match=re.escape(f"no records in folds {folds}")):
        dataset(root, folds)


def test_bad_task_and_missing_tables(root, tmp_path):
    root, _ = root
    with pytest.raises(ValueError, match="task must be one of"):
        dataset(root, [1], task="captioning")
    with pytest.raises(FileNotFoundError, match=re.escape(f"PTB-XL table not found: {tmp_path / 'ptbxl_database.csv'}")):
        dataset(tmp_path, [1])
