"""read_wfdb and ECGPreprocessing.prepare on real WFDB files: formats, rates, lead names, NaNs, segments, bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import wfdb
from omegaconf import OmegaConf
from scipy.signal import resample_poly

from mmmed_datasets.ecg.ecg_preprocess import ECGPreprocessing
from mmmed_datasets.ecg.ecg_signal import CANONICAL_LEADS, ECGRecordError
from mmmed_datasets.ecg.wfdb_ecg import read_wfdb

PTB_NAMES = ["i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6", "vx", "vy", "vz"]
MIMIC_NAMES = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
SIZE_HINT = "(truncated file, or a header whose length or channel count disagrees with the data)"


def signal_for(channels: int, samples: int, seed: int = 0) -> np.ndarray:
    """(samples, channels) mV; channel k carries an offset of 0.25 k mV, so a wrong lead order cannot pass."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.5, size=(samples, channels)) + np.arange(channels) * 0.25


def quantise(x: np.ndarray, gain: float = 1000.0) -> np.ndarray:
    """The physical values a record with this ADC gain stores (NaN stays NaN)."""
    return np.round(x * gain) / gain


def write(path: Path, signal: np.ndarray, names: list[str], fs: float, fmt: str = "16", gain: float = 1000.0,
          baseline: int = 0, units: list[str] | None = None) -> Path:
    """A WFDB record at ``path`` (no suffix) holding (T, C) ``signal``."""
    channels = len(names)
    wfdb.wrsamp(path.name, fs=fs, units=units or ["mV"] * channels, sig_name=names, p_signal=signal,
                fmt=[fmt] * channels, adc_gain=[gain] * channels, baseline=[baseline] * channels,
                write_dir=str(path.parent))
    return path


def pipeline(**overrides) -> ECGPreprocessing:
    """The default pipeline (12 canonical leads, mV out, no filters), with ``overrides``."""
    settings = dict(leads=list(CANONICAL_LEADS), lead_aliases=None, min_real_leads=1,
                    sampling_rate=500, seconds=2, missing_leads="error",
                    nan_policy="interpolate", short_records="error", bandpass=None, filter_order=4, notch=None,
                    notch_quality=30, normalize="none", eval_crop="center", eval_crops=1)
    return ECGPreprocessing(**{**settings, **overrides})


def resampled(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """Reference resampling of (C, T): the pipeline holds selected leads as float32, resamples in float64."""
    return resample_poly(x.astype(np.float32).astype(np.float64), up, down, axis=-1).astype(np.float32)


def expect_error(call, record: Path, problem: str) -> ECGRecordError:
    """``call()`` raises ECGRecordError with exactly this record and problem."""
    with pytest.raises(ECGRecordError) as info:
        call()
    assert str(info.value) == f"ECG record {record}: {problem}"
    assert info.value.record == str(record) and info.value.problem == problem
    return info.value


@pytest.fixture
def canonical(tmp_path) -> tuple[Path, np.ndarray]:
    """A PTB-XL-style 12-lead record, 2 s at 500 Hz, format 16."""
    signal = signal_for(12, 1000)
    return write(tmp_path / "rec", signal, list(CANONICAL_LEADS), 500), signal


# ---- reading: formats, rates and lead names -------------------------------------------------


def test_canonical_record_reads_exactly(canonical):
    path, signal = canonical
    raw = read_wfdb(path)
    assert raw.lead_names == list(CANONICAL_LEADS) and raw.fs == 500.0 and raw.source == str(path)
    assert raw.signal.dtype == np.float64
    np.testing.assert_array_equal(raw.signal, quantise(signal).T)
    for spelled in (path.with_suffix(".hea"), path.with_suffix(".dat"), str(path)):
        np.testing.assert_array_equal(read_wfdb(spelled).signal, raw.signal)


def test_ptb_lower_case_names_frank_leads_and_1000_hz(tmp_path):
    signal = signal_for(15, 2000, seed=1)  # 2 s at 1000 Hz, PTB's 15 channels
    path = write(tmp_path / "s0010_re", signal, PTB_NAMES, 1000)
    raw = read_wfdb(path)
    assert raw.lead_names == PTB_NAMES and raw.fs == 1000.0  # the reader keeps every voltage channel
    prepared = pipeline(sampling_rate=500, seconds=2).prepare(path)
    order = [PTB_NAMES.index(lead.lower()) for lead in CANONICAL_LEADS]
    expected = resampled(quantise(signal)[:, order].T, 1, 2)
    assert prepared.signal.shape == (12, 1000) and prepared.signal.dtype == np.float32
    np.testing.assert_array_equal(prepared.signal, expected)
    assert prepared.lead_mask.tolist() == [True] * 12 and prepared.nan_samples == 0


@pytest.fixture
def mit_212(tmp_path) -> tuple[Path, np.ndarray]:
    """A MIT-BIH-style record: format 212, 200 adu/mV, baseline 1024, 360 Hz, 10 s, leads II and V1."""
    signal = signal_for(2, 3600, seed=2)
    return write(tmp_path / "100", signal, ["II", "V1"], 360, fmt="212", gain=200.0, baseline=1024), signal


def test_format_212_reads_exactly(mit_212):
    path, signal = mit_212
    assert wfdb.rdheader(str(path)).fmt == ["212", "212"]
    assert path.with_suffix(".dat").stat().st_size == 3600 * 2 * 3 // 2  # 12 bits a sample
    raw = read_wfdb(path)
    assert raw.lead_names == ["II", "V1"] and raw.fs == 360.0
    np.testing.assert_array_equal(raw.signal, quantise(signal, 200.0).T)


def test_format_212_at_360_hz_resamples_to_500(mit_212):
    path, signal = mit_212
    prepared = pipeline(leads=["II", "V1"], seconds=10).prepare(path)
    assert prepared.signal.shape == (2, 5000)
    np.testing.assert_array_equal(prepared.signal, resampled(quantise(signal, 200.0).T, 25, 18))  # 500/360 = 25/18


def test_missing_leads_become_zeros_with_a_mask(mit_212):
    path, signal = mit_212
    prepared = pipeline(seconds=10, missing_leads="zero").prepare(path)
    present = [lead in ("II", "V1") for lead in CANONICAL_LEADS]
    assert prepared.lead_mask.dtype == bool and prepared.lead_mask.tolist() == present
    expected = np.zeros((12, 5000), dtype=np.float32)
    expected[[1, 6]] = resampled(quantise(signal, 200.0).T, 25, 18)
    np.testing.assert_array_equal(prepared.signal, expected)


def test_missing_leads_error_lists_them(mit_212):
    path, _ = mit_212
    absent = [lead for lead in CANONICAL_LEADS if lead not in ("II", "V1")]
    expect_error(lambda: pipeline(seconds=10).prepare(path), path, f"lead(s) {absent} not found among ['II', 'V1']")


def test_mimic_lead_order_comes_back_canonical(tmp_path):
    signal = signal_for(12, 1000, seed=3)
    path = write(tmp_path / "40689238", signal, MIMIC_NAMES, 500)
    assert read_wfdb(path).lead_names == MIMIC_NAMES  # stored order: aVF before aVL
    prepared = pipeline().prepare(path)
    order = [MIMIC_NAMES.index(lead) for lead in CANONICAL_LEADS]
    assert order[4:6] == [5, 4]
    np.testing.assert_array_equal(prepared.signal, quantise(signal)[:, order].T.astype(np.float32))


def test_non_voltage_channels_are_dropped_and_microvolts_scaled(tmp_path):
    signal = signal_for(3, 1000, seed=4)
    path = write(tmp_path / "mixed", signal, ["I", "RESP", "II"], 500, units=["mV", "Ohm", "uV"])
    raw = read_wfdb(path)
    assert raw.lead_names == ["I", "II"]
    np.testing.assert_array_equal(raw.signal[0], quantise(signal[:, 0]))
    np.testing.assert_array_equal(raw.signal[1], quantise(signal[:, 2]) * 1e-3)
    expect_error(lambda: pipeline(leads=["I", "RESP"]).prepare(path), path,
                 "lead(s) ['RESP'] not found among ['I', 'II']")


def test_unknown_lead_in_config_is_a_missing_lead(canonical):
    path, _ = canonical
    expect_error(lambda: pipeline(leads=["I", "X7"]).prepare(path), path,
                 f"lead(s) ['X7'] not found among {list(CANONICAL_LEADS)}")


# ---- NaN samples ------------------------------------------------------------------------------


@pytest.fixture
def holed(tmp_path) -> tuple[Path, np.ndarray]:
    """12 leads, 2 s at 500 Hz, NaN runs: V2 [100, 110), I [0, 3) (at the edge) and I [500]."""
    signal = signal_for(12, 1000, seed=5)
    signal[100:110, 7] = np.nan
    signal[0:3, 0] = np.nan
    signal[500, 0] = np.nan
    return write(tmp_path / "holed", signal, list(CANONICAL_LEADS), 500), signal


def test_nan_is_stored_as_the_format_16_sentinel_and_read_back(holed):
    path, signal = holed
    stored = np.fromfile(path.with_suffix(".dat"), dtype="<i2").reshape(1000, 12)
    assert ((stored == -32768) == np.isnan(signal)).all() and (stored == -32768).sum() == 14
    raw = read_wfdb(path)
    np.testing.assert_array_equal(np.isnan(raw.signal), np.isnan(signal).T)
    np.testing.assert_array_equal(raw.signal, quantise(signal).T)  # NaNs compare equal here


def test_nan_interpolate(holed):
    path, signal = holed
    prepared = pipeline(nan_policy="interpolate").prepare(path)
    expected = quantise(signal).T.astype(np.float32)
    time = np.arange(1000)
    for lead in (0, 7):
        bad = np.isnan(expected[lead])
        expected[lead, bad] = np.interp(time[bad], time[~bad], expected[lead, ~bad])
    assert expected[0, 0] == expected[0, 1] == expected[0, 3]  # before the first sample: the first value
    np.testing.assert_array_equal(prepared.signal, expected)
    assert prepared.nan_samples == 14


def test_nan_zero(holed):
    path, signal = holed
    prepared = pipeline(nan_policy="zero").prepare(path)
    np.testing.assert_array_equal(prepared.signal, np.nan_to_num(quantise(signal).T, nan=0.0).astype(np.float32))
    assert prepared.nan_samples == 14


def test_nan_reject(holed):
    path, _ = holed
    expect_error(lambda: pipeline(nan_policy="reject").prepare(path), path, "14 NaN samples (most in lead V2)")


# ---- multi-segment records --------------------------------------------------------------------


def test_fixed_layout_multi_segment_is_the_concatenation(tmp_path):
    segments = [signal_for(12, 1000, seed=10 + k) for k in range(3)]
    for k, segment in enumerate(segments):
        write(tmp_path / f"seg{k}", segment, list(CANONICAL_LEADS), 500)
    (tmp_path / "multi.hea").write_text("multi/3 12 500 3000\nseg0 1000\nseg1 1000\nseg2 1000\n")
    whole = quantise(np.concatenate(segments)).T  # (12, 3000)
    raw = read_wfdb(tmp_path / "multi")
    assert raw.lead_names == list(CANONICAL_LEADS) and raw.fs == 500.0
    np.testing.assert_array_equal(raw.signal, whole)
    prepared = pipeline().prepare(tmp_path / "multi")
    np.testing.assert_array_equal(prepared.signal, whole.astype(np.float32))
    assert prepared.nan_samples == 0


@pytest.fixture
def variable_layout(tmp_path) -> tuple[Path, np.ndarray]:
    """Leads I, II: segment a (500 samples), a 250-sample gap "~", b stored as [II, I] (500), c with I only (250)."""
    a, b, c = signal_for(2, 500, seed=20), signal_for(2, 500, seed=21), signal_for(1, 250, seed=22)
    write(tmp_path / "seg_a", a, ["I", "II"], 500)
    write(tmp_path / "seg_b", b, ["II", "I"], 500)
    write(tmp_path / "seg_c", c, ["I"], 500)
    (tmp_path / "var_layout.hea").write_text(
        "var_layout 2 500 0\n~ 0 1000.0(0)/mV 16 0 0 0 0 I\n~ 0 1000.0(0)/mV 16 0 0 0 0 II\n"
    )
    (tmp_path / "var.hea").write_text("var/5 2 500 1500\nvar_layout 0\nseg_a 500\n~ 250\nseg_b 500\nseg_c 250\n")
    expected = np.full((2, 1500), np.nan)  # (leads I, II; T)
    expected[:, :500] = quantise(a).T
    expected[:, 750:1250] = quantise(b).T[::-1]
    expected[0, 1250:] = quantise(c)[:, 0]
    return tmp_path / "var", expected


def test_variable_layout_gaps_read_as_nan(variable_layout):
    path, expected = variable_layout
    raw = read_wfdb(path)
    assert raw.lead_names == ["I", "II"]
    np.testing.assert_array_equal(raw.signal, expected)


def test_variable_layout_gaps_count_as_nan_samples(variable_layout):
    path, expected = variable_layout
    zeroed = pipeline(leads=["I", "II"], seconds=3, nan_policy="zero").prepare(path)
    np.testing.assert_array_equal(zeroed.signal, np.nan_to_num(expected, nan=0.0).astype(np.float32))
    assert zeroed.nan_samples == 2 * 250 + 250 == int(np.isnan(expected).sum())
    interpolated = pipeline(leads=["I", "II"], seconds=3, nan_policy="interpolate").prepare(path)
    reference = expected.astype(np.float32)
    time = np.arange(1500)
    for lead in range(2):
        bad = np.isnan(reference[lead])
        reference[lead, bad] = np.interp(time[bad], time[~bad], reference[lead, ~bad])
    np.testing.assert_array_equal(interpolated.signal, reference)


# ---- bad input: each one an ECGRecordError naming the record and the problem -----------------


def test_missing_header(tmp_path):
    expect_error(lambda: read_wfdb(tmp_path / "nothing"), tmp_path / "nothing", "header file nothing.hea not found")


def test_missing_dat(canonical):
    path, _ = canonical
    path.with_suffix(".dat").unlink()
    expect_error(lambda: read_wfdb(path), path, f"signal file missing ({path.with_suffix('.dat')})")


@pytest.mark.parametrize("size", [1000 * 12 * 2 // 2, 1000 * 12 * 2 - 1, 1000 * 12 * 2 + 1, 1000 * 12 * 2 + 24])
def test_dat_size_disagreeing_with_the_header(canonical, size):
    path, _ = canonical
    dat = path.with_suffix(".dat")
    data = dat.read_bytes()
    assert len(data) == 1000 * 12 * 2  # 12 leads x 1000 samples x 2 bytes
    dat.write_bytes((data + bytes(24))[:size])  # truncated, or longer than the header says
    expect_error(lambda: read_wfdb(path), path,
                 f"signal file rec.dat holds {size} bytes but the header's 12 signal(s) x 1000 samples in format 16 "
                 f"need 24000 bytes {SIZE_HINT}")


def test_header_with_fewer_channels_than_the_data(canonical):
    path, _ = canonical
    header = path.with_suffix(".hea")
    lines = header.read_text().splitlines()
    assert lines[0] == "rec 12 500 1000" and len(lines) == 13
    header.write_text("\n".join(["rec 11 500 1000"] + lines[1:12]) + "\n")  # V6's line removed
    expect_error(lambda: read_wfdb(path), path,
                 f"signal file rec.dat holds 24000 bytes but the header's 11 signal(s) x 1000 samples in format 16 "
                 f"need 22000 bytes {SIZE_HINT}")


def test_header_longer_than_the_data(canonical):
    path, _ = canonical
    header = path.with_suffix(".hea")
    header.write_text(header.read_text().replace("rec 12 500 1000", "rec 12 500 1200", 1))
    expect_error(lambda: read_wfdb(path), path,
                 f"signal file rec.dat holds 24000 bytes but the header's 12 signal(s) x 1200 samples in format 16 "
                 f"need 28800 bytes {SIZE_HINT}")


def test_missing_and_truncated_segments(tmp_path):
    for k in range(2):
        write(tmp_path / f"seg{k}", signal_for(2, 100, seed=k), ["I", "II"], 500)
    (tmp_path / "multi.hea").write_text("multi/3 2 500 300\nseg0 100\nseg1 100\nseg2 100\n")
    expect_error(lambda: read_wfdb(tmp_path / "multi"), tmp_path / "multi", "segment header seg2.hea not found")
    write(tmp_path / "seg2", signal_for(2, 100, seed=2), ["I", "II"], 500)
    dat = tmp_path / "seg1.dat"
    dat.write_bytes(dat.read_bytes()[:-4])
    expect_error(lambda: read_wfdb(tmp_path / "multi"), tmp_path / "multi",
                 f"signal file seg1.dat holds 396 bytes but the header's 2 signal(s) x 100 samples in format 16 "
                 f"need 400 bytes {SIZE_HINT}")


def test_short_record_error_or_pad(tmp_path):
    signal = signal_for(12, 750, seed=6)  # 1.5 s at 500 Hz; the window is 2 s
    path = write(tmp_path / "short", signal, list(CANONICAL_LEADS), 500)
    expect_error(lambda: pipeline().prepare(path), path,
                 "1.5 s long (750 samples at 500 Hz), shorter than the 2 s window "
                 "(ecg_signal.short_records=pad pads it)")
    padded = pipeline(short_records="pad").prepare(path)
    expected = np.zeros((12, 1000), dtype=np.float32)
    expected[:, :750] = quantise(signal).T
    np.testing.assert_array_equal(padded.signal, expected)


def test_record_error_is_a_value_error_with_the_path(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"ECG record {tmp_path / 'x'}: header file x.hea not found")):
        read_wfdb(tmp_path / "x.hea")


# ---- several samples per frame: every lead at its true rate ----------------------------------

FRAME_RATE = 125  # Hz; leads with 4 samples per frame are 500 Hz leads
RICH_HZ = np.array([1.1, 4.7, 9.3, 17.9, 26.3, 39.1])  # ECG-like band, all below the frame rate's Nyquist
RICH_MV = np.array([0.6, 0.4, 0.3, 0.2, 0.15, 0.1])


def rich(t: np.ndarray, lead: int) -> np.ndarray:
    """A smooth but rich known signal (mV) at times ``t`` (s): six sinusoids up to 39 Hz, phases per lead."""
    phases = lead * (1 + np.arange(len(RICH_HZ)))[:, None]
    return (RICH_MV[:, None] * np.sin(2 * np.pi * RICH_HZ[:, None] * t[None] + phases)).sum(0)


def lead_times(frames: int, spf: int, first_frame: int = 0) -> np.ndarray:
    """Sample times (s) of a lead with ``spf`` samples per frame over ``frames`` frames."""
    return (first_frame * spf + np.arange(frames * spf)) / (FRAME_RATE * spf)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def write_frames(path: Path, names: list[str], spf: list[int], frames: int, first_frame: int = 0) -> Path:
    """A format-16 record written by wfdb from expanded signals: lead k is ``rich(., k)`` at FRAME_RATE * spf[k]."""
    expanded = [rich(lead_times(frames, n, first_frame), k) for k, n in enumerate(spf)]
    wfdb.wrsamp(path.name, fs=FRAME_RATE, units=["mV"] * len(names), sig_name=names, e_p_signal=expanded,
                samps_per_frame=spf, fmt=["16"] * len(names), adc_gain=[1000.0] * len(names),
                baseline=[0] * len(names), write_dir=str(path.parent))
    return path


SPF_NAMES, SPF = ["I", "II", "V1", "V2"], [4, 4, 4, 1]  # three 500 Hz leads and one 125 Hz lead


@pytest.fixture
def multi_rate(tmp_path) -> Path:
    """2 s: leads I, II, V1 at 4 samples per 125 Hz frame (500 Hz), V2 at 1 sample per frame (125 Hz)."""
    return write_frames(tmp_path / "holter", SPF_NAMES, SPF, 250)


def test_samples_per_frame_are_read_at_the_true_rate(multi_rate):
    header = wfdb.rdheader(str(multi_rate))
    assert header.fs == FRAME_RATE and header.samps_per_frame == SPF  # wfdb's writer stored 4 per frame
    raw = read_wfdb(multi_rate)
    assert raw.fs == 500.0 and raw.signal.shape == (4, 1000) and raw.lead_names == SPF_NAMES
    truth = np.stack([rich(lead_times(250, 4), k) for k in range(4)])  # (4, 1000) at 500 Hz
    for k in range(3):  # stored at 500 Hz: exactly the stored values, no frame averaging
        np.testing.assert_array_equal(raw.signal[k], quantise(truth[k]))
    # The 125 Hz lead, brought to 500 Hz: resample_poly by 4 of what it stores (ends extended along
    # their trend), computed here independently.
    stored_v2 = quantise(rich(lead_times(250, 1), 3))
    np.testing.assert_array_equal(raw.signal[3], resample_poly(stored_v2, 4, 1, padtype="line"))
    for k in range(4):
        # measured: 0.99999988 for the 500 Hz leads, 0.99995 for the lead upsampled from 125 Hz
        assert correlation(raw.signal[k], truth[k]) >= 0.999


def test_frame_averages_would_fail_the_same_check(multi_rate):
    """wfdb's default read (smooth_frames=True, what mmmed used before) averages 4 samples per frame."""
    smoothed = wfdb.rdrecord(str(multi_rate)).p_signal.T  # (4, 250) at the 125 Hz frame rate
    assert smoothed.shape == (4, 250)
    truth = rich(lead_times(250, 4), 0)
    # measured 0.9864: the 4-sample average damps 39 Hz by 15% and delays every lead by 3 ms
    assert correlation(resample_poly(smoothed[0], 4, 1), truth) < 0.995
    assert correlation(read_wfdb(multi_rate).signal[0], truth) >= 0.999


def test_samples_per_frame_after_resampling_to_the_target_rate(multi_rate):
    prepared = pipeline(leads=SPF_NAMES, sampling_rate=100, seconds=2).prepare(multi_rate)
    assert prepared.signal.shape == (4, 200)
    truth = np.stack([rich(lead_times(250, 4), k) for k in range(4)])  # (4, 1000) at 500 Hz
    # The 500 Hz leads: exactly the independent resampling of their stored values, 500 -> 100 Hz.
    np.testing.assert_array_equal(prepared.signal[:3], resampled(quantise(truth[:3]), 1, 5))
    reference = resample_poly(truth, 1, 5, axis=-1)  # (4, 200): the true signal at 100 Hz
    for k in range(4):
        # measured: 0.99999997 for the 500 Hz leads and 0.999998 for the 125 Hz lead
        assert correlation(prepared.signal[k], reference[k]) >= 0.999
    # measured away from the edges: at most 4.2e-4 mV for the 500 Hz leads (the 1 uV storage step,
    # filtered), 1.05e-3 mV for V2 (from 125 Hz); 5e-3 leaves about 5x margin
    np.testing.assert_allclose(prepared.signal[:, 20:-20], reference[:, 20:-20], rtol=0, atol=5e-3)


def test_fixed_layout_segments_with_samples_per_frame(tmp_path):
    """Two segments written by wfdb.MultiRecord: lead I at 4 samples per frame, II at 1; the signal runs on."""
    for name, frames, first in (("fix_1", 150, 0), ("fix_2", 100, 150)):
        write_frames(tmp_path / name, ["I", "II"], [4, 1], frames, first)
    segments = [wfdb.rdrecord(str(tmp_path / name), physical=False, smooth_frames=False) for name in ("fix_1", "fix_2")]
    wfdb.MultiRecord(record_name="fix", fs=FRAME_RATE, n_sig=2, sig_len=250, seg_name=["fix_1", "fix_2"],
                     seg_len=[150, 100], segments=segments, layout="fixed").wrsamp(expanded=True,
                                                                                    write_dir=str(tmp_path))
    raw = read_wfdb(tmp_path / "fix")
    assert raw.fs == 500.0 and raw.signal.shape == (2, 1000) and raw.lead_names == ["I", "II"]
    np.testing.assert_array_equal(raw.signal[0], quantise(rich(lead_times(250, 4), 0)))
    # measured 0.99998 (II is upsampled from 125 Hz)
    assert correlation(raw.signal[1], rich(lead_times(250, 4), 1)) >= 0.999


def test_variable_layout_segments_with_samples_per_frame_and_a_gap(tmp_path):
    """Segment a (100 frames), a 50-frame gap "~", segment b (100 frames); I at 4 samples per frame, II at 1."""
    write_frames(tmp_path / "var_a", ["I", "II"], [4, 1], 100, 0)
    write_frames(tmp_path / "var_b", ["I", "II"], [4, 1], 100, 150)
    # wfdb's writer refuses the layout header's "~" file name, so it is written as wfdb writes one;
    # "0x4": no storage format, 4 samples per frame.
    (tmp_path / "var_layout.hea").write_text(
        "var_layout 2 125 0\n~ 0x4 1000.0(0)/mV 16 0 0 0 0 I\n~ 0 1000.0(0)/mV 16 0 0 0 0 II\n")
    (tmp_path / "var.hea").write_text("var/4 2 125 250\nvar_layout 0\nvar_a 100\n~ 50\nvar_b 100\n")
    assert wfdb.rdheader(str(tmp_path / "var_layout")).samps_per_frame == [4, 1]
    raw = read_wfdb(tmp_path / "var")
    assert raw.fs == 500.0 and raw.signal.shape == (2, 1000)
    expected_i = quantise(rich(lead_times(250, 4), 0))
    expected_i[400:600] = np.nan  # frames 100-149 at 4 samples per frame
    np.testing.assert_array_equal(raw.signal[0], expected_i)
    # II (125 Hz) upsampled: NaN wherever an output sample lies next to a stored gap sample, i.e.
    # 500 Hz samples 397-599 (397-399 sit between stored frame 99 and the gap's first frame 100).
    assert np.flatnonzero(np.isnan(raw.signal[1])).tolist() == list(range(397, 600))
    truth_ii = rich(lead_times(250, 4), 1)
    for part in (slice(0, 360), slice(640, 1000)):  # away from the bridged gap
        # measured 0.999999 and 0.99994
        assert correlation(raw.signal[1, part], truth_ii[part]) >= 0.999
    zeroed = pipeline(leads=["I", "II"], nan_policy="zero").prepare(tmp_path / "var")
    assert zeroed.nan_samples == 200 + 203 and zeroed.signal.shape == (2, 1000)


# ---- lead names through conf/ecg_signal/default.yaml's lead_aliases ----------------------------


def shipped(**overrides) -> ECGPreprocessing:
    """``pipeline`` with the lead_aliases and min_real_leads the default config ships."""
    conf = OmegaConf.load(Path(__file__).parents[3] / "conf" / "ecg_signal" / "default.yaml").preprocessing
    settings = dict(lead_aliases=OmegaConf.to_container(conf.lead_aliases), min_real_leads=conf.min_real_leads)
    return pipeline(**{**settings, **overrides})


def test_holter_mlii_v5_record_gives_ii_and_v5(tmp_path):
    signal = signal_for(2, 3600, seed=2)
    path = write(tmp_path / "mitdb_100", signal, ["MLII", "V5"], 360, fmt="212", gain=200.0, baseline=1024)
    prepared = shipped(seconds=10, missing_leads="zero").prepare(path)
    assert prepared.lead_mask.tolist() == [lead in ("II", "V5") for lead in CANONICAL_LEADS]
    expected = np.zeros((12, 5000), dtype=np.float32)
    expected[[1, 10]] = resampled(quantise(signal, 200.0).T, 25, 18)
    np.testing.assert_array_equal(prepared.signal, expected)
    assert prepared.channels == ("MLII", "V5")


def test_cabrera_minus_avr_record_is_negated(tmp_path):
    signal = signal_for(12, 1000, seed=7)
    names = [lead if lead != "aVR" else "-aVR" for lead in CANONICAL_LEADS]
    stored = signal.copy()
    stored[:, 3] = -signal[:, 3]  # a Cabrera device stores -aVR
    path = write(tmp_path / "cabrera", stored, names, 500)
    prepared = shipped().prepare(path)
    np.testing.assert_array_equal(prepared.signal, quantise(signal).T.astype(np.float32))
    expect_error(lambda: pipeline().prepare(path), path, f"lead(s) ['aVR'] not found among {names}")


@pytest.mark.parametrize("missing", ["zero", "error"])
def test_frank_only_record_names_the_file_and_its_channels(tmp_path, missing):
    path = write(tmp_path / "frank", signal_for(3, 1000, seed=8), ["vx", "vy", "vz"], 500)
    expect_error(lambda: shipped(missing_leads=missing).prepare(path), path,
                 "0 of the 12 leads found (min_real_leads=1); its channels are ['vx', 'vy', 'vz']; "
                 "map them with ecg_signal.preprocessing.lead_aliases")


def test_record_without_a_voltage_channel(tmp_path):
    path = write(tmp_path / "resp", signal_for(1, 1000, seed=9), ["RESP"], 500, units=["Ohm"])
    expect_error(lambda: read_wfdb(path), path, "no voltage channel among ['RESP'] (units ['Ohm'])")
