"""ECGPreprocessing: filters at the target rate, config checks, window starts, normalisation, the settings key."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
import wfdb
from scipy.signal import butter, filtfilt, iirnotch, resample_poly, sosfiltfilt

from mmmed_datasets.ecg.dicom_ecg import read_dicom_ecg
from mmmed_datasets.ecg import ecg_preprocess
from mmmed_datasets.ecg.ecg_preprocess import ECGPreprocessing, read_raw_ecg
from mmmed_datasets.ecg.ecg_signal import CANONICAL_LEADS, RawECG, TooFewLeadsError

SETTINGS = dict(leads=list(CANONICAL_LEADS), lead_aliases=None, min_real_leads=1,
                sampling_rate=250, seconds=2, missing_leads="error",
                nan_policy="interpolate", short_records="error", bandpass=None, filter_order=4, notch=None,
                notch_quality=30, normalize="none", eval_crop="center", eval_crops=1)


def pipeline(**overrides) -> ECGPreprocessing:
    """The pipeline with SETTINGS, changed by ``overrides``."""
    return ECGPreprocessing(**{**SETTINGS, **overrides})


def hummed_signal(samples: int, fs: float, seed: int = 0) -> np.ndarray:
    """(samples, 12) mV: noise, a per-lead offset, 0.3 Hz drift and 50 Hz mains hum."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples)[:, None] / fs
    return (rng.normal(0, 0.3, size=(samples, 12)) + np.arange(12) * 0.25 + 0.5 * np.sin(2 * np.pi * 0.3 * t)
            + 0.2 * np.sin(2 * np.pi * 50 * t))


def write(path: Path, signal: np.ndarray, fs: float) -> Path:
    """A 12-lead format-16 record, 1000 adu/mV, baseline 0."""
    wfdb.wrsamp(path.name, fs=fs, units=["mV"] * 12, sig_name=list(CANONICAL_LEADS), p_signal=signal,
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(path.parent))
    return path


def f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32)


def reference_filters(x: np.ndarray, fs: float) -> np.ndarray:
    """Band-pass 0.5-40 Hz (order 4) then a 50 Hz notch (Q 30), zero-phase, at ``fs``, float32 between steps."""
    sos = butter(4, [0.5, 40], btype="bandpass", fs=fs, output="sos")
    x = f32(sosfiltfilt(sos, x.astype(np.float64), axis=-1))
    b, a = iirnotch(50, 30, fs=fs)
    return f32(filtfilt(b, a, x.astype(np.float64), axis=-1))


# ---- steps 1-6 --------------------------------------------------------------------------------


def test_filters_run_after_resampling_at_the_target_rate(tmp_path):
    signal = hummed_signal(4000, 1000)  # 4 s at 1000 Hz
    path = write(tmp_path / "rec", signal, 1000)
    prepared = pipeline(sampling_rate=250, seconds=4, bandpass=[0.5, 40], notch=50).prepare(path)
    quantised = np.round(signal * 1000).T / 1000  # (12, 4000) as stored
    at_250 = f32(resample_poly(f32(quantised).astype(np.float64), 1, 4, axis=-1))
    np.testing.assert_array_equal(prepared.signal, reference_filters(at_250, 250))
    assert prepared.signal.shape == (12, 1000) and prepared.lead_mask.all()


def test_short_record_is_padded_after_filtering(tmp_path):
    signal = hummed_signal(375, 250, seed=1)  # 1.5 s; the window is 2 s
    path = write(tmp_path / "short", signal, 250)
    prepared = pipeline(bandpass=[0.5, 40], notch=50, short_records="pad").prepare(path)
    filtered = reference_filters(f32(np.round(signal * 1000).T / 1000), 250)
    np.testing.assert_array_equal(prepared.signal[:, :375], filtered)
    assert prepared.signal.shape == (12, 500) and (prepared.signal[:, 375:] == 0).all()


def test_read_raw_ecg_picks_the_reader_by_suffix(tmp_path):
    path = write(tmp_path / "rec", hummed_signal(500, 250), 250)
    for spelled in (path, path.with_suffix(".hea"), str(path)):
        raw = read_raw_ecg(spelled)
        assert raw.fs == 250.0 and raw.signal.shape == (12, 500)
    dicom = tmp_path / "ecg.DCM"
    shutil.copy(pydicom.data.get_testdata_file("waveform_ecg.dcm"), dicom)
    raw, reference = read_raw_ecg(dicom), read_dicom_ecg(dicom)
    assert raw.lead_names == reference.lead_names and raw.fs == reference.fs
    np.testing.assert_array_equal(raw.signal, reference.signal)


# ---- lead aliases and min_real_leads -----------------------------------------------------------


def raw_ecg(names: list[str]) -> RawECG:
    """2 s at 250 Hz; channel k holds the constant k + 1 mV."""
    return RawECG(np.repeat(np.arange(1.0, len(names) + 1)[:, None], 500, axis=1), names, 250.0, "rec/holter")


def test_aliases_and_ignored_channels_are_noted_once(caplog, monkeypatch):
    monkeypatch.setattr(ecg_preprocess, "_NOTED_CHANNELS", set())  # notes are once per process
    caplog.set_level(logging.INFO, logger="mmmed_datasets.ecg.ecg_preprocess")
    names = ["MLII", "v5", "vx", "vy", "vz"]
    p = pipeline(lead_aliases={"mlii": "II"}, missing_leads="zero")
    for _ in range(2):
        prepared = p.prepare_raw(raw_ecg(names))
    assert prepared.lead_mask.tolist() == [lead in ("II", "V5") for lead in CANONICAL_LEADS]
    assert prepared.signal[1].tolist() == [1.0] * 500 and prepared.signal[10].tolist() == [2.0] * 500
    assert prepared.channels == tuple(names)
    notes = [r.getMessage() for r in caplog.records]
    assert [n.split(" is none")[0] for n in notes] == ["ECG channel 'vx'", "ECG channel 'vy'", "ECG channel 'vz'"]
    assert notes[0] == (f"ECG channel 'vx' is none of the configured leads {list(CANONICAL_LEADS)} and is "
                        "ignored (map it with ecg_signal.preprocessing.lead_aliases); the run's leads_seen counts "
                        "show how often")


@pytest.mark.parametrize("missing", ["zero", "error"])
def test_too_few_real_leads_is_an_error_even_when_missing_leads_are_zeros(missing):
    with pytest.raises(TooFewLeadsError) as info:
        pipeline(missing_leads=missing, min_real_leads=3).prepare_raw(raw_ecg(["MLII", "V5", "vx"]))
    assert str(info.value) == ("ECG record rec/holter: 1 of the 12 leads found (min_real_leads=3); its channels are "
                               "['MLII', 'V5', 'vx']; map them with ecg_signal.preprocessing.lead_aliases")
    prepared = pipeline(missing_leads="zero", min_real_leads=2, lead_aliases={"MLII": "II"}).prepare_raw(
        raw_ecg(["MLII", "V5", "vx"]))
    assert prepared.lead_mask.sum() == 2


# ---- configuration checks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(sampling_rate=100, notch=50), "ecg_signal.notch=50 Hz must lie between 0 and the Nyquist frequency "
         "(50 Hz) of sampling_rate=100; above it, resampling already removes the hum: set notch: null"),
        (dict(sampling_rate=100, notch=60), "ecg_signal.notch=60 Hz must lie between 0 and the Nyquist frequency "
         "(50 Hz) of sampling_rate=100; above it, resampling already removes the hum: set notch: null"),
        (dict(sampling_rate=100, bandpass=[0.5, 50]),
         "ecg_signal.bandpass=[0.5, 50] must be [low, high] with 0 < low < high < 50 Hz"),
        (dict(bandpass=[40, 0.5]), "ecg_signal.bandpass=[40, 0.5] must be [low, high] with 0 < low < high < 125 Hz"),
        (dict(bandpass=[0, 40]), "ecg_signal.bandpass=[0, 40] must be [low, high] with 0 < low < high < 125 Hz"),
        (dict(bandpass=[0.5]), "ecg_signal.bandpass=[0.5] must be [low, high] with 0 < low < high < 125 Hz"),
        (dict(leads=["I", "II", "i"]), "ecg_signal.leads names a lead twice: ['I', 'II', 'i']"),
        (dict(missing_leads="drop"), "ecg_signal.missing_leads must be one of ('error', 'zero'), not 'drop'"),
        (dict(nan_policy="ignore"),
         "ecg_signal.nan_policy must be one of ('interpolate', 'zero', 'reject'), not 'ignore'"),
        (dict(short_records="crop"), "ecg_signal.short_records must be one of ('error', 'pad'), not 'crop'"),
        (dict(normalize="batch"), "ecg_signal.normalize must be one of ('record', 'dataset', 'none'), not 'batch'"),
        (dict(eval_crop="random"), "ecg_signal.eval_crop must be one of ('center', 'start', 'multi'), not 'random'"),
        (dict(eval_crop="multi", eval_crops=0), "ecg_signal.eval_crops must be >= 1, not 0"),
        (dict(seconds=0.001), "ecg_signal.seconds=0.001 at 250 Hz gives no samples"),
        (dict(min_real_leads=0), "ecg_signal.min_real_leads must lie in 1..12, not 0"),
        (dict(leads=["II", "V5"], min_real_leads=3), "ecg_signal.min_real_leads must lie in 1..2, not 3"),
        (dict(lead_aliases={"MLII": "II", "mlii": "II"}),
         "ecg_signal.lead_aliases: lead alias 'mlii' is given twice (aliases match case-insensitively)"),
        (dict(lead_aliases={"X": ""}),
         "ecg_signal.lead_aliases: lead alias 'X': '' needs a channel name and a lead name"),
    ],
)
def test_invalid_configuration(overrides, message):
    with pytest.raises(ValueError) as info:
        pipeline(**overrides)
    assert str(info.value) == message


def test_valid_edges_are_accepted():
    assert pipeline(sampling_rate=100, notch=49.9, bandpass=[0.01, 49.9]).notch == 49.9
    assert pipeline(eval_crops=5).eval_crops == 1  # K windows only with eval_crop=multi
    assert pipeline(eval_crop="multi", eval_crops=5).eval_crops == 5
    assert pipeline(seconds=2.5, sampling_rate=100).num_samples == 250


# ---- step 7: window starts --------------------------------------------------------------------


def test_training_starts_reach_every_valid_offset_and_only_those():
    p = pipeline(sampling_rate=100, seconds=1)  # windows of 100 samples
    rng = np.random.default_rng(0)
    starts = [p.window_starts(106, True, rng) for _ in range(300)]
    assert all(len(s) == 1 for s in starts)
    assert {s[0] for s in starts} == set(range(7))
    assert p.window_starts(100, True, rng) == [0]


def test_evaluation_starts():
    assert pipeline(sampling_rate=100, seconds=1, eval_crop="center").window_starts(107, False, None) == [3]
    assert pipeline(sampling_rate=100, seconds=1, eval_crop="start").window_starts(107, False, None) == [0]
    multi = pipeline(sampling_rate=100, seconds=1, eval_crop="multi", eval_crops=4)
    assert multi.window_starts(130, False, None) == [0, 10, 20, 30]  # evenly spaced, first and last flush
    assert multi.window_starts(110, False, None) == [0, 3, 7, 10]
    assert multi.window_starts(100, False, None) == [0, 0, 0, 0]
    assert len(multi.window_starts(130, True, np.random.default_rng(0))) == 1  # training: one random crop


def test_window_start_errors():
    p = pipeline(sampling_rate=100, seconds=1)
    with pytest.raises(ValueError) as info:
        p.window_starts(99, False, None)
    assert str(info.value) == "prepared record of 99 samples is shorter than a window (100)"
    with pytest.raises(ValueError) as info:
        p.window_starts(150, True, None)
    assert str(info.value) == "training crops need an rng"


# ---- step 8: normalisation --------------------------------------------------------------------

LEADS3 = ["I", "II", "V1"]
MASK = np.array([True, False, True])  # II missing


@pytest.fixture
def window() -> np.ndarray:
    """(3, 200) float32 with II filled with zeros, as prepare leaves a missing lead."""
    rng = np.random.default_rng(7)
    x = (rng.normal(0, 1, size=(3, 200)) * [[0.4], [1.0], [1.5]] + [[0.2], [0.0], [-1.0]]).astype(np.float32)
    x[1] = 0.0
    return x


def test_normalise_record(window):
    out = pipeline(leads=LEADS3, normalize="record").normalise(window, MASK, None)
    assert out.dtype == np.float32
    x = window[[0, 2]].astype(np.float64)
    np.testing.assert_allclose(out[[0, 2]], (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True), atol=1e-5)
    assert (out[1] == 0).all()


def test_normalise_dataset(window):
    stats = {"leads": LEADS3, "mean": [0.1, 0.5, -0.9], "std": [0.5, 2.0, 1.25]}
    out = pipeline(leads=LEADS3, normalize="dataset").normalise(window, MASK, stats)
    expected = (window.astype(np.float64) - np.array([[0.1], [0.5], [-0.9]])) / np.array([[0.5], [2.0], [1.25]])
    np.testing.assert_allclose(out[[0, 2]], expected[[0, 2]], rtol=1e-6)
    assert (out[1] == 0).all()  # not (0 - 0.5) / 2: a missing lead stays exactly zero


def test_normalise_none_keeps_millivolts(window):
    noisy = window.copy()
    noisy[1] = 3.0  # whatever a missing lead's row holds, it is served as zeros
    out = pipeline(leads=LEADS3, normalize="none").normalise(noisy, MASK, None)
    np.testing.assert_array_equal(out, window)


def test_normalise_dataset_without_statistics(window):
    with pytest.raises(RuntimeError) as info:
        pipeline(leads=LEADS3, normalize="dataset").normalise(window, MASK, None)
    assert str(info.value) == (
        "ecg_signal.normalize=dataset needs the training split's statistics; the DataModule computes them in "
        "setup() (or restores them from the checkpoint)"
    )


# ---- the settings key (names cache folders) ---------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [dict(leads=list(reversed(CANONICAL_LEADS))), dict(leads=list(CANONICAL_LEADS[:8])), dict(sampling_rate=500),
     dict(seconds=3), dict(missing_leads="zero"), dict(nan_policy="zero"), dict(short_records="pad"),
     dict(bandpass=[0.5, 40]), dict(filter_order=2), dict(notch=50), dict(notch_quality=10),
     dict(lead_aliases={"MLII": "II"}), dict(min_real_leads=2)],
)
def test_settings_key_changes_with_every_prepare_setting(change):
    base = pipeline().settings_key()
    assert len(base) == 12 and int(base, 16) >= 0
    assert pipeline(**change).settings_key() != base


@pytest.mark.parametrize(
    "change",
    [dict(normalize="record"), dict(normalize="dataset"), dict(eval_crop="start"),
     dict(eval_crop="multi", eval_crops=5)],
)
def test_settings_key_ignores_per_item_settings(change):
    assert pipeline(**change).settings_key() == pipeline().settings_key()


def test_a_checkpoint_from_before_lead_aliases_restores_its_pipeline(tmp_path):
    """Checkpoints store ``ecg_preprocessing``; one written before lead_aliases/min_real_leads existed lacks them."""
    old = {k: v for k, v in SETTINGS.items() if k not in ("lead_aliases", "min_real_leads")}
    restored = ecg_preprocess.saved_preprocessing(old)
    assert restored.prepare_settings() == pipeline(lead_aliases={}, min_real_leads=1).prepare_settings()
    path = write(tmp_path / "rec", hummed_signal(600, 250), 250)
    np.testing.assert_array_equal(restored.prepare(path).signal, pipeline().prepare(path).signal)
