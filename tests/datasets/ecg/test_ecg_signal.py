"""Lead mapping, resampling, filters, windows, z-scores, crop/pad and NaN policies, against independent references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import butter, filtfilt, iirnotch, sosfiltfilt

from mmmed_datasets.ecg.ecg_signal import (
    TooFewLeadsError,
    bandpass,
    map_leads,
    notch,
    parse_aliases,
    repair_nans,
    resample,
    window_offsets,
    zscore,
)
from mmmed_datasets.ecg.wfdb_ecg import CANONICAL_LEADS, ECGRecordError

FS = 500
MIDDLE = slice(4 * FS, -4 * FS)


def sines(freqs: list[float], seconds: float = 10, fs: float = FS) -> np.ndarray:
    """(len(freqs), T): one unit sine per row, so each row tests one frequency."""
    t = np.arange(int(seconds * fs)) / fs
    return np.stack([np.sin(2 * np.pi * f * t) for f in freqs])


def amplitude(x: np.ndarray, fs: float = FS) -> np.ndarray:
    """Peak amplitude per row in the middle 2 s (a 0.5 Hz high-pass rings for seconds at the edges)."""
    return np.abs(x[:, MIDDLE]).max(-1)


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


HOLTER_ALIASES = {"MLI": "I", "MLII": "II", "MLIII": "III", "-aVR": "-aVR"}  # as conf/ecg_signal/default.yaml


def test_holter_names_map_through_aliases():
    names = ["MLII", "V5"]  # MIT-BIH / Holter: modified lead II and V5
    out, present = map_leads(labelled(names), names, "mitdb/100", missing="zero", aliases=HOLTER_ALIASES)
    assert present.tolist() == [lead in ("II", "V5") for lead in CANONICAL_LEADS]
    assert out[1, 0] == 1 and out[10, 0] == 2 and out[~present].sum() == 0


def test_aliases_match_case_insensitively_and_strip_whitespace():
    names = [" mlii ", "mli", "v5"]
    out, present = map_leads(labelled(names), names, "rec", missing="zero", aliases={"MLII ": "II", "MLI": "i"})
    assert present.tolist() == [lead in ("I", "II", "V5") for lead in CANONICAL_LEADS]
    assert out[0, 0] == 2 and out[1, 0] == 1 and out[10, 0] == 3


def test_cabrera_minus_avr_is_negated_to_avr():
    names = list(CANONICAL_LEADS[:3]) + ["-aVR"] + list(CANONICAL_LEADS[4:])
    out, present = map_leads(labelled(names), names, "cabrera", aliases=HOLTER_ALIASES)
    assert present.all() and out[3, 0] == -4  # the stored -aVR channel (4th, value 4), negated
    assert out[:, 0].tolist() == [1, 2, 3, -4] + list(range(5, 13))
    # Without the alias "-aVR" is no lead: a sign error is never silent
    with pytest.raises(ECGRecordError, match=r"lead\(s\) \['aVR'\] not found"):
        map_leads(labelled(names), names, "cabrera")


def test_no_configured_lead_is_an_error_naming_the_channels_even_with_zero_filling():
    names = ["vx", "vy", "vz"]  # Frank leads only
    for missing in ("zero", "error"):
        with pytest.raises(TooFewLeadsError) as info:
            map_leads(labelled(names), names, "ptb/s0010_re", missing=missing, aliases=HOLTER_ALIASES)
        assert str(info.value) == (
            "ECG record ptb/s0010_re: 0 of the 12 leads found (min_real_leads=1); its channels are "
            "['vx', 'vy', 'vz']; map them with ecg_signal.preprocessing.lead_aliases"
        )
        assert isinstance(info.value, ECGRecordError) and info.value.channels == names


def test_min_present_counts_leads_found_after_aliases():
    names = ["MLII", "V5", "vx"]
    _, present = map_leads(labelled(names), names, "rec", missing="zero", aliases=HOLTER_ALIASES, min_present=2)
    assert present.sum() == 2
    with pytest.raises(TooFewLeadsError, match=r"^ECG record rec: 2 of the 12 leads found \(min_real_leads=3\)"):
        map_leads(labelled(names), names, "rec", missing="zero", aliases=HOLTER_ALIASES, min_present=3)


def test_an_alias_and_a_stored_lead_of_the_same_name_are_ambiguous():
    names = ["II", "MLII"]
    with pytest.raises(ECGRecordError, match=r"\['ii'\] appear more than once in \['II', 'MLII'\]"):
        map_leads(labelled(names), names, "rec", missing="zero", aliases=HOLTER_ALIASES)


def test_parse_aliases():
    assert parse_aliases(HOLTER_ALIASES) == {"mli": ("i", 1.0), "mlii": ("ii", 1.0), "mliii": ("iii", 1.0),
                                             "-avr": ("avr", -1.0)}
    assert parse_aliases(None) == {}
    with pytest.raises(ValueError, match=r"lead alias 'mlii' is given twice"):
        parse_aliases({"MLII": "II", "mlii": "II"})
    with pytest.raises(ValueError, match=r"lead alias 'X': '-' needs a channel name and a lead name"):
        parse_aliases({"X": "-"})


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


def test_bandpass_is_butterworth_sos_forward_backward():
    x = sines([0.05, 10, 150])  # baseline drift, in band, above the band
    x[0] += 0.3  # the drift sits on a DC offset
    y = bandpass(x, FS, 0.5, 40, order=4)
    assert y.shape == x.shape and y.dtype == np.float32
    reference = sosfiltfilt(butter(4, [0.5, 40], btype="bandpass", fs=FS, output="sos"), x, axis=-1)
    np.testing.assert_array_equal(y, reference.astype(np.float32))
    gain = amplitude(y)
    assert gain[0] < 0.01 and abs(gain[1] - 1) < 0.01 and gain[2] < 0.01  # zero phase: no delay, no loss in band
    np.testing.assert_allclose(y[1, MIDDLE], x[1, MIDDLE], atol=0.01)


@pytest.mark.parametrize("low,high", [(0, 40), (40, 0.5), (10, 10), (0.5, 250), (0.5, 300)])
def test_bandpass_out_of_range(low, high):
    with pytest.raises(ValueError) as info:
        bandpass(sines([10]), FS, low, high, order=4)
    assert str(info.value) == f"band-pass {low}-{high} Hz needs 0 < low < high < Nyquist (250 Hz)"


def test_notch_is_iirnotch_forward_backward():
    x = sines([50, 10])
    y = notch(x, FS, 50, 30)
    assert y.shape == x.shape and y.dtype == np.float32
    b, a = iirnotch(50, 30, fs=FS)
    np.testing.assert_array_equal(y, filtfilt(b, a, x, axis=-1).astype(np.float32))
    assert amplitude(y)[0] < 0.01  # mains removed
    np.testing.assert_allclose(y[1, MIDDLE], x[1, MIDDLE], atol=0.01)  # the rest kept, in phase


@pytest.mark.parametrize("freq", [0, 250, 300])
def test_notch_out_of_range(freq):
    with pytest.raises(ValueError) as info:
        notch(sines([10]), FS, freq, 30)
    assert str(info.value) == f"notch at {freq} Hz needs 0 < freq < Nyquist (250 Hz)"


def test_window_offsets_are_evenly_spaced_and_flush():
    assert window_offsets(20, 10, 3) == [0, 5, 10]
    assert window_offsets(20, 10, 4) == [0, 3, 7, 10]  # 10/3 and 20/3 rounded
    assert window_offsets(1000, 250, 5) == [0, 188, 375, 562, 750]  # 187.5 and 562.5 round to even
    assert window_offsets(20, 10, 1) == [5]  # a single window is centred
    assert window_offsets(21, 10, 1) == [5]
    assert window_offsets(10, 10, 3) == [0, 0, 0]
    for count in (2, 7):
        offsets = window_offsets(5000, 1000, count)
        assert offsets[0] == 0 and offsets[-1] == 4000 and len(offsets) == count
        np.testing.assert_allclose(np.diff(offsets), 4000 / (count - 1), atol=1)


@pytest.mark.parametrize("total,length,count", [(9, 10, 1), (20, 10, 0)])
def test_window_offsets_impossible(total, length, count):
    with pytest.raises(ValueError) as info:
        window_offsets(total, length, count)
    assert str(info.value) == f"cannot place {count} windows of {length} samples in {total}"


def test_zscore_per_record():
    rng = np.random.default_rng(0)
    x = (rng.normal(0, 1, size=(3, 400)) * [[0.5], [2.0], [1.0]] + [[1.0], [-3.0], [0.0]]).astype(np.float32)
    x[2] = -3.7  # a lost electrode at a DC offset
    y = zscore(x)
    assert y.dtype == np.float32
    x64 = x.astype(np.float64)
    reference = (x64[:2] - x64[:2].mean(-1, keepdims=True)) / x64[:2].std(-1, keepdims=True)
    np.testing.assert_allclose(y[:2], reference, rtol=0, atol=1e-5)
    assert (y[2] == 0).all()  # not rounding residue divided by a floor


def test_zscore_with_given_statistics():
    x = np.array([[1.0, 2.0, 4.0], [0.5, 0.5, 0.5], [3.0, -1.0, 0.0]], dtype=np.float32)
    mean, std = np.array([1.0, 0.5, -2.0]), np.array([2.0, 0.25, 0.0])
    y = zscore(x, mean, std)
    assert y.dtype == np.float32
    expected = [[0.0, 0.5, 1.5], [0.0, 0.0, 0.0], [5e6, 1e6, 2e6]]  # std 0 is floored at 1e-6
    np.testing.assert_allclose(y, expected, rtol=1e-6)
