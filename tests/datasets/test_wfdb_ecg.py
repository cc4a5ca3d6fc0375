"""read_ecg_record: leads selected by name into canonical order, every bad record rejected by name."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import wfdb

from mmmed_datasets.wfdb_ecg import CANONICAL_LEADS, ECGRecordError, read_ecg_record

FS = 100
T = 1000  # 10 s at 100 Hz


def quantise(x: np.ndarray) -> np.ndarray:
    """What a format-16, 1000 adu/mV, baseline-0 record stores."""
    return np.round(x * 1000) / 1000


def signal_for(names: list[str], seed: int = 0, n: int = T) -> np.ndarray:
    """(n, len(names)) mV; column k gets a lead-specific offset so a wrong lead order cannot pass."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.5, size=(n, len(names))) + np.arange(len(names)) * 0.25


def write(path: Path, signal: np.ndarray, names: list[str], fs: int = FS) -> Path:
    wfdb.wrsamp(
        path.name,
        fs=fs,
        units=["mV"] * len(names),
        sig_name=names,
        p_signal=signal,
        fmt=["16"] * len(names),
        adc_gain=[1000.0] * len(names),
        baseline=[0] * len(names),
        write_dir=str(path.parent),
    )
    return path


@pytest.fixture
def good(tmp_path) -> tuple[Path, np.ndarray]:
    names = list(CANONICAL_LEADS)
    signal = signal_for(names)
    return write(tmp_path / "rec", signal, names), signal


def test_reads_canonical_record_exactly(good):
    path, signal = good
    out = read_ecg_record(path, FS, T)
    assert out.shape == (12, T) and out.dtype == np.float32
    np.testing.assert_allclose(out, quantise(signal).T, rtol=0, atol=1e-6)
    # str path works the same
    np.testing.assert_array_equal(read_ecg_record(str(path), FS, T), out)


def test_shuffled_mixed_case_leads_come_back_in_canonical_order(tmp_path):
    perm = np.random.default_rng(1).permutation(12)
    # Stored order is shuffled; names use other capitalisations than CANONICAL_LEADS.
    spelled = {"aVR": "avr", "aVL": "AVL", "aVF": "Avf", "V1": "v1", "I": "i"}
    stored = [spelled.get(CANONICAL_LEADS[k], CANONICAL_LEADS[k]) for k in perm]
    canonical = signal_for(list(CANONICAL_LEADS), seed=2)  # column k = lead CANONICAL_LEADS[k]
    path = write(tmp_path / "shuffled", canonical[:, perm], stored)
    assert wfdb.rdheader(str(path)).sig_name == stored  # the file really is shuffled
    out = read_ecg_record(path, FS, T)
    np.testing.assert_allclose(out, quantise(canonical).T, rtol=0, atol=1e-6)


def test_custom_lead_order_is_honoured(good):
    path, signal = good
    leads = tuple(reversed(CANONICAL_LEADS))
    out = read_ecg_record(path, FS, T, leads=leads)
    np.testing.assert_allclose(out, quantise(signal[:, ::-1]).T, rtol=0, atol=1e-6)


# ---- each bad input: ECGRecordError naming the record and the problem ---------------------------


def expect_error(path: Path, problem: str, **kwargs) -> ECGRecordError:
    args = {"sampling_rate": FS, "num_samples": T, **kwargs}
    with pytest.raises(ECGRecordError, match=re.escape(f"ECG record {path}: {problem}")) as info:
        read_ecg_record(path, **args)
    assert info.value.record == str(path)
    assert isinstance(info.value, ValueError)
    return info.value


def test_missing_header(tmp_path):
    err = expect_error(tmp_path / "nothing", "header file nothing.hea not found")
    assert err.problem == "header file nothing.hea not found"


def test_missing_dat(good):
    path, _ = good
    path.with_suffix(".dat").unlink()
    err = expect_error(path, "signal file missing (")
    assert str(path.with_suffix(".dat")) in err.problem


def test_truncated_dat(good):
    path, _ = good
    dat = path.with_suffix(".dat")
    data = dat.read_bytes()
    dat.write_bytes(data[: len(data) // 2])
    err = expect_error(path, "unreadable (")
    assert "ValueError" in err.problem


def test_truncated_dat_mid_frame(good):
    path, _ = good
    dat = path.with_suffix(".dat")
    data = dat.read_bytes()
    dat.write_bytes(data[: len(data) // 2 + 7])  # not a whole frame, not even a whole sample
    expect_error(path, "unreadable (")


def test_wrong_lead_count(tmp_path):
    names = list(CANONICAL_LEADS[:11])
    path = write(tmp_path / "eleven", signal_for(names), names)
    expect_error(path, f"has 11 signals {names}, expected 12 leads {list(CANONICAL_LEADS)}")


def test_missing_lead_name(tmp_path):
    names = list(CANONICAL_LEADS[:11]) + ["X1"]
    path = write(tmp_path / "renamed", signal_for(names), names)
    expect_error(path, f"lead(s) ['V6'] not found among {names}")


def test_duplicate_lead_does_not_stand_in_for_missing_one(tmp_path):
    names = list(CANONICAL_LEADS[:11]) + ["v5"]  # V5 twice (case differs), V6 absent
    path = write(tmp_path / "dup", signal_for(names), names)
    expect_error(path, f"lead name(s) ['v5'] appear more than once in {names}")


def test_wrong_sampling_rate(tmp_path):
    names = list(CANONICAL_LEADS)
    path = write(tmp_path / "fs500", signal_for(names, n=5000), names, fs=500)
    expect_error(path, "sampled at 500 Hz, configuration expects 100 Hz")
    # and the right configuration reads it
    assert read_ecg_record(path, 500, 5000).shape == (12, 5000)


def test_wrong_length(tmp_path):
    names = list(CANONICAL_LEADS)
    path = write(tmp_path / "short", signal_for(names, n=500), names)
    expect_error(path, "500 samples (5 s), expected 1000")


def test_nan_samples(tmp_path):
    names = list(CANONICAL_LEADS)
    signal = signal_for(names)
    signal[10:13, 7] = np.nan  # 3 in V2
    signal[50, 0] = np.nan  # 1 in I
    path = write(tmp_path / "nan", signal, names)
    # wfdb stores NaN as format 16's sentinel -32768 (check the bytes, so the test knows what it tests)
    raw = np.fromfile(path.with_suffix(".dat"), dtype="<i2").reshape(T, 12)
    assert (raw == -32768).sum() == 4 and raw[10, 7] == -32768 and raw[50, 0] == -32768
    expect_error(path, "4 NaN samples (most in lead V2)")


def test_nan_sentinel_patched_into_bytes_reports_lead_in_canonical_order(tmp_path):
    # Shuffled storage: the reported lead must be the canonical name of the NaN column, not its index.
    perm = np.random.default_rng(3).permutation(12)
    stored = [CANONICAL_LEADS[k] for k in perm]
    path = write(tmp_path / "patched", signal_for(list(CANONICAL_LEADS))[:, perm], stored)
    dat = path.with_suffix(".dat")
    raw = np.fromfile(dat, dtype="<i2").reshape(T, 12).copy()
    col = stored.index("aVL")
    raw[100:105, col] = -32768
    raw[7, stored.index("V3")] = -32768
    raw.astype("<i2").tofile(dat)
    expect_error(path, "6 NaN samples (most in lead aVL)")
