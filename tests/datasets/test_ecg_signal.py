"""Lead mapping, resampling, crop/pad and NaN policies, checked against independent references."""

from __future__ import annotations

import numpy as np
import pytest

from mmmed_datasets.ecg_signal import fix_length, map_leads, repair_nans, resample
from mmmed_datasets.wfdb_ecg import CANONICAL_LEADS, ECGRecordError

MIMIC_ORDER = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]


def labelled(names: list[str], length: int = 5) -> np.ndarray:
    """Channel k holds the constant k + 1, so every row says where it came from."""
    return np.repeat(np.arange(1, len(names) + 1, dtype=np.float32)[:, None], length, axis=1)


def test_mimic_order_is_reordered_by_name():
    out, present = map_leads(labelled(MIMIC_ORDER), MIMIC_ORDER, "rec")
    source_index = [MIMIC_ORDER.index(lead) for lead in CANONICAL_LEADS]
    assert out[:, 0].tolist() == [i + 1 for i in source_index]
    assert out[4, 0] == 6 and out[5, 0] == 5  # aVL came 6th, aVF 5th in MIMIC-IV-ECG
    assert present.all()


def test_lower_case_names_and_extra_frank_leads():
    names = ["i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6", "vx", "vy", "vz"]
    out, present = map_leads(labelled(names), names, "ptb/s0010_re")
    assert out.shape == (12, 5) and out[:, 0].tolist() == list(range(1, 13)) and present.all()


def test_missing_lead_is_an_error_or_zeros_with_a_mask():
    names = [n for n in CANONICAL_LEADS if n != "V4"]
    with pytest.raises(ECGRecordError, match=r"ECG record rec7: lead\(s\) \['V4'\] not found"):
        map_leads(labelled(names), names, "rec7")
    out, present = map_leads(labelled(names), names, "rec7", missing="zero")
    assert present.tolist() == [lead != "V4" for lead in CANONICAL_LEADS]
    assert (out[9] == 0).all() and out[10, 0] == 10  # V5 was the 10th stored channel


def test_duplicate_lead_names_are_an_error():
    names = list(CANONICAL_LEADS[:-1]) + ["v5"]
    with pytest.raises(ECGRecordError, match=r"\['v5'\] appear more than once"):
        map_leads(labelled(names), names, "dup")


@pytest.mark.parametrize("fs_in,fs_out", [(1000, 500), (360, 500), (250, 100), (400, 500), (500, 500)])
def test_resampling_matches_the_analytic_signal(fs_in, fs_out):
    seconds = 4
    wave = lambda t: np.sin(2 * np.pi * 5 * t) + 0.5 * np.cos(2 * np.pi * 17 * t)  # well under every Nyquist
    x = wave(np.arange(seconds * fs_in) / fs_in)[None, :]
    y = resample(x, fs_in, fs_out)
    assert y.shape == (1, seconds * fs_out) and y.dtype == np.float32
    t_out = np.arange(seconds * fs_out) / fs_out
    inner = slice(fs_out // 4, -fs_out // 4)  # polyphase filters ring at the edges
    np.testing.assert_allclose(y[0, inner], wave(t_out)[inner], atol=5e-3)


def test_resampling_removes_content_above_the_new_nyquist():
    fs_in, fs_out = 500, 100
    t = np.arange(5 * fs_in) / fs_in
    y = resample(np.sin(2 * np.pi * 80 * t)[None, :], fs_in, fs_out)  # 80 Hz > 50 Hz Nyquist
    assert np.abs(y[0, 50:-50]).max() < 0.05  # not aliased down to 20 Hz


def test_crop_and_pad():
    x = np.arange(10, dtype=np.float32)[None, :]
    assert fix_length(x, 4, "center")[0].tolist() == [3, 4, 5, 6]
    assert fix_length(x, 4, "start")[0].tolist() == [0, 1, 2, 3]
    assert fix_length(x, 13, "center")[0].tolist() == [0] + list(range(10)) + [0, 0]
    assert fix_length(x, 12, "start")[0].tolist() == list(range(10)) + [0, 0]
    offsets = {int(fix_length(x, 4, "random", np.random.default_rng(seed))[0, 0]) for seed in range(50)}
    assert offsets == set(range(7))  # every valid window, and only those
    with pytest.raises(ValueError, match="random crops need an rng"):
        fix_length(x, 4, "random")


def test_nan_policies():
    ramp = np.tile(np.linspace(-1, 1, 11, dtype=np.float32), (2, 1))
    holed = ramp.copy()
    holed[0, [2, 3, 7]] = np.nan
    fixed, count = repair_nans(holed, "interpolate", "r")
    assert count == 3
    np.testing.assert_allclose(fixed, ramp, atol=1e-6)  # a line interpolated linearly is itself
    zeroed, count = repair_nans(holed, "zero", "r")
    assert count == 3 and zeroed[0, [2, 3, 7]].tolist() == [0, 0, 0] and np.array_equal(zeroed[1], ramp[1])
    with pytest.raises(ECGRecordError, match=r"ECG record r: 3 NaN samples \(most in lead I\)"):
        repair_nans(holed, "reject", "r")
    holed[1] = np.nan
    with pytest.raises(ECGRecordError, match="lead II is entirely NaN"):
        repair_nans(holed, "interpolate", "r")
    assert repair_nans(ramp, "reject", "r")[1] == 0
