"""PTBXLDataset over a hand-built miniature PTB-XL layout (table + WFDB records at 100 and 500 Hz)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from mmmed_datasets.ecg_demo import PTBXL_LEAD_NAMES, record_paths, write_ptbxl_record
from mmmed_datasets.ptbxl import PTBXLDataset
from mmmed_datasets.wfdb_ecg import CANONICAL_LEADS, ECGRecordError

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
    return root, signals


def dataset(root, folds, fs=100, normalize="none", labels=LABELS, **kw) -> PTBXLDataset:
    return PTBXLDataset(str(root), folds, fs, QUESTION, labels, normalize, **kw)


def test_record_paths_match_ptbxl_layout():
    assert record_paths(5) == ("records100/00000/00005_lr", "records500/00000/00005_hr")
    assert record_paths(1003) == ("records100/01000/01003_lr", "records500/01000/01003_hr")
    assert record_paths(21837) == ("records100/21000/21837_lr", "records500/21000/21837_hr")
    # the demo writer's lead names are PTB-XL's, which are the canonical leads up to case
    assert [n.lower() for n in PTBXL_LEAD_NAMES] == [n.lower() for n in CANONICAL_LEADS]


def test_fold_selection(root):
    root, _ = root
    assert list(dataset(root, [1]).table.index) == [5, 17]
    assert list(dataset(root, [9, 10]).table.index) == [1003, 1004]
    assert list(dataset(root, [10, 1]).table.index) == [5, 17, 1004]  # table order, not fold order
    assert len(dataset(root, list(range(1, 11)))) == 6
    assert [dataset(root, [1])[i]["id"] for i in range(2)] == ["ptbxl/5", "ptbxl/17"]


@pytest.mark.parametrize("fs", [100, 500])
def test_none_returns_written_values_from_the_right_file(root, fs):
    root, signals = root
    ds = dataset(root, [1, 9, 10], fs=fs)
    assert ds.num_samples == 10 * fs
    for i, ecg_id in enumerate([5, 17, 1003, 1004]):
        ecg = ds[i]["signals"]["ecg"][0]
        assert ecg.shape == (12, 10 * fs) and ecg.dtype == torch.float32
        np.testing.assert_allclose(ecg.numpy(), quantise(signals[ecg_id, fs]).T, rtol=0, atol=1e-6)
        other = 600 - fs  # the other rate's signal differs, so reading the wrong file cannot pass
        assert signals[ecg_id, other].shape[0] != 10 * fs


def zscore64(x: np.ndarray) -> np.ndarray:
    """Independent per-lead z-score of (12, T) in float64 (population std, as np.std)."""
    return (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)


def test_zscore_is_per_record_and_lead(root):
    root, signals = root
    ds = dataset(root, [1, 9], fs=500, normalize="zscore")
    for i, ecg_id in enumerate([5, 17, 1003]):
        x = quantise(signals[ecg_id, 500]).T  # (12, T) float64
        leads = slice(0, 10) if ecg_id == 17 else slice(0, 12)  # 17's V5/V6 are flat: see below
        got = ds[i]["signals"]["ecg"][0].numpy()
        np.testing.assert_allclose(got[leads], zscore64(x[leads]), rtol=0, atol=2e-5)
        np.testing.assert_allclose(got[leads].mean(1), 0, atol=1e-5)
        np.testing.assert_allclose(got[leads].std(1), 1, atol=1e-5)


def _flat_leads(root):
    got = dataset(root, [1], fs=500, normalize="zscore")[1]["signals"]["ecg"][0].numpy()
    assert np.isfinite(got).all()
    return got[10], got[11]


def test_zscore_flat_lead_at_zero_stays_zero(root):
    root, _ = root
    _, v6 = _flat_leads(root)
    np.testing.assert_array_equal(v6, 0.0)


def test_zscore_flat_lead_at_offset_stays_zero(root):
    # ptbxl.py promises "a flat lead stays zero instead of dividing by zero". A lead flat at -3.7 mV
    # (e.g. electrode off with a DC offset) must z-score to 0 too, not to float32 rounding / 1e-6.
    root, _ = root
    v5, _ = _flat_leads(root)
    np.testing.assert_allclose(v5, 0.0, rtol=0, atol=1e-6)


def test_label_of_picks_first_listed_code_present(root):
    root, _ = root
    ds = dataset(root, [1])
    assert ds.label_of("{'STACH': 0.0, 'SR': 0.0}") == "SR"  # order of label_codes, not of the dict
    assert ds.label_of("{'NORM': 100.0, 'SBRAD': 0.0}") == "SBRAD"
    assert ds.label_of("{'LVH': 50.0}") is None
    assert ds.label_of("{}") is None
    reverse = dataset(root, [1], labels=list(reversed(LABELS)))
    assert reverse.label_of("{'STACH': 0.0, 'SR': 0.0}") == "STACH"


def test_item_format(root):
    root, signals = root
    ds = dataset(root, [1, 9, 10])
    items = [ds[i] for i in range(len(ds))]
    for item in items:
        assert set(item) == {"id", "signals", "question", "answer", "label"}
        assert set(item["signals"]) == {"ecg"}
        assert isinstance(item["signals"]["ecg"], list) and len(item["signals"]["ecg"]) == 1
        assert isinstance(item["signals"]["ecg"][0], torch.Tensor)
        assert item["signals"]["ecg"][0].is_contiguous()
        assert item["question"] == QUESTION
    assert [item["id"] for item in items] == ["ptbxl/5", "ptbxl/17", "ptbxl/1003", "ptbxl/1004"]
    assert [item["answer"] for item in items] == [
        "Sinus bradycardia at 50 bpm.",
        "Normal sinus rhythm at 70 bpm.",  # stripped
        "Sinus tachycardia at 120 bpm.",
        "Left ventricular hypertrophy.",
    ]
    assert [item["label"] for item in items] == ["SBRAD", "SR", "SR", None]


@pytest.mark.parametrize("fold, ecg_id", [(7, 2001), (8, 2002)])
def test_empty_report_raises_naming_the_record(root, fold, ecg_id):
    root, _ = root
    ds = dataset(root, [fold], fs=500)
    record = root / f"records500/02000/{ecg_id:05d}_hr"
    with pytest.raises(ECGRecordError, match=re.escape(f"ECG record {record}: ecg_id {ecg_id} has an empty report")):
        ds[0]


def test_bad_record_error_propagates(root, tmp_path):
    # A configuration that expects 5 s records rejects the 10 s ones, naming the file.
    root, _ = root
    ds = dataset(root, [1], fs=100, seconds=5)
    record = root / "records100/00000/00005_lr"
    with pytest.raises(ECGRecordError, match=re.escape(f"ECG record {record}: 1000 samples (10 s), expected 500")):
        ds[0]


@pytest.mark.parametrize("fs", [250, 0, 1000])
def test_unknown_sampling_rate(root, fs):
    root, _ = root
    with pytest.raises(ValueError, match=re.escape(f"PTB-XL has 100 Hz and 500 Hz records, not {fs} Hz")):
        dataset(root, [1], fs=fs)


@pytest.mark.parametrize("folds", [[], [2], [3, 4, 5, 6]])
def test_empty_fold_set(root, folds):
    root, _ = root
    with pytest.raises(ValueError, match=re.escape(f"no records in folds {folds}")):
        dataset(root, folds)


def test_bad_normalize_and_missing_table(root, tmp_path):
    root, _ = root
    with pytest.raises(ValueError, match="normalize must be 'zscore' or 'none', not 'minmax'"):
        dataset(root, [1], normalize="minmax")
    with pytest.raises(FileNotFoundError, match=re.escape(f"PTB-XL table not found: {tmp_path / 'ptbxl_database.csv'}")):
        dataset(tmp_path, [1])
