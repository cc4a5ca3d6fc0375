"""read_dicom_ecg: pydicom's real 12-lead ECG read exactly; leads by code or meaning; every bad file named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from scipy.signal import resample_poly

from mmmed_datasets.ecg.dicom_ecg import read_dicom_ecg
from mmmed_datasets.ecg.ecg_preprocess import ECGPreprocessing, read_raw_ecg
from mmmed_datasets.ecg.ecg_signal import CANONICAL_LEADS, ECGRecordError, map_leads

REAL = Path(get_testdata_file("waveform_ecg.dcm"))
T, C = 10000, 12  # the real file's rhythm group: 10 s at 1000 Hz, 12 leads (plus a 1.2 s median beat group)


def real() -> Dataset:
    return pydicom.dcmread(REAL)


def raw_counts(ds: Dataset, group: int = 0) -> np.ndarray:
    """(T, C) int16 samples of a group, decoded with numpy alone (interleaved C1S1, C2S1, ..., little endian)."""
    return np.frombuffer(ds.WaveformSequence[group].WaveformData, dtype="<i2").reshape(T, C)


def expected_mv() -> np.ndarray:
    """(C, T) mV of the real file: every channel is 1.25 uV per count, correction 1, baseline 0."""
    return raw_counts(real()).T.astype(np.float64) * 1.25 / 1000


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path)
    return path


def message(path: Path, problem: str) -> str:
    return f"ECG record {path}: {problem}"


def test_real_file_header_is_what_the_expectations_assume():
    group = real().WaveformSequence[0]
    assert (group.MultiplexGroupLabel, group.NumberOfWaveformSamples, group.SamplingFrequency) == ("RHYTHM", T, 1000)
    for channel in group.ChannelDefinitionSequence:
        assert (channel.ChannelSensitivity, channel.ChannelSensitivityCorrectionFactor, channel.ChannelBaseline) == (
            1.25, 1, 0,
        )  # fmt: skip
        assert channel.ChannelSensitivityUnitsSequence[0].CodeValue == "uV"


def test_real_file_reads_exactly():
    raw = read_dicom_ecg(REAL)
    assert raw.lead_names == list(CANONICAL_LEADS)
    assert raw.fs == 1000.0 and raw.source == str(REAL)
    assert raw.signal.shape == (C, T) and raw.signal.dtype == np.float64  # the rhythm group, not the median beat
    np.testing.assert_allclose(raw.signal, expected_mv(), rtol=1e-12, atol=0)


def test_read_raw_ecg_dispatches_dcm_files(tmp_path):
    upper = save(real(), tmp_path / "ECG.DCM")  # the suffix is matched case-insensitively
    for path in (REAL, upper):
        raw = read_raw_ecg(path)
        assert raw.source == str(path) and raw.lead_names == list(CANONICAL_LEADS)
        np.testing.assert_allclose(raw.signal, expected_mv(), rtol=1e-12, atol=0)


def test_end_to_end_through_preprocessing():
    prep = ECGPreprocessing(
        leads=list(CANONICAL_LEADS), lead_aliases=None, min_real_leads=1,
        sampling_rate=500, seconds=10, missing_leads="error", nan_policy="reject",
        short_records="error", bandpass=None, filter_order=4, notch=None, notch_quality=30.0, normalize="none",
        eval_crop="center", eval_crops=1,
    )  # fmt: skip
    out = prep.prepare(REAL)
    assert out.signal.shape == (12, 5000) and out.signal.dtype == np.float32
    assert out.lead_mask.all() and out.nan_samples == 0
    want = resample_poly(expected_mv(), 1, 2, axis=-1)  # 1000 Hz -> 500 Hz
    np.testing.assert_allclose(out.signal, want, rtol=0, atol=1e-6)


# ---- files built from the real one ---------------------------------------------------------------

MDC = {"I": "2:1", "II": "2:2", "III": "2:61", "aVR": "2:62", "aVL": "2:63", "aVF": "2:64",
       "V1": "2:3", "V2": "2:4", "V3": "2:5", "V4": "2:6", "V5": "2:7", "V6": "2:8"}  # fmt: skip


def permuted(perm: list[int]) -> Dataset:
    """The real file with the rhythm group's channel definitions and data columns in order ``perm``."""
    ds = real()
    group = ds.WaveformSequence[0]
    channels = list(group.ChannelDefinitionSequence)
    group.ChannelDefinitionSequence = Sequence([channels[k] for k in perm])
    group.WaveformData = np.ascontiguousarray(raw_counts(ds)[:, perm]).astype("<i2").tobytes()
    return ds


@pytest.mark.parametrize(
    "unit, sensitivity", [("uV", "1.25"), ("mV", "0.00125"), ("V", "0.00000125"), ("nV", "1250")]
)
def test_reordered_leads_and_units_become_canonical_mv(tmp_path, unit, sensitivity):
    perm = list(range(11, -1, -1))  # V6 ... aVF, aVL, aVR, III, II, I: aVF before aVL, as MIMIC stores them
    ds = permuted(perm)
    for channel in ds.WaveformSequence[0].ChannelDefinitionSequence:
        channel.ChannelSensitivity = sensitivity
        channel.ChannelSensitivityUnitsSequence[0].CodeValue = unit
    raw = read_dicom_ecg(save(ds, tmp_path / "reordered.dcm"))
    assert raw.lead_names == [CANONICAL_LEADS[k] for k in perm]
    np.testing.assert_allclose(raw.signal, expected_mv()[perm], rtol=1e-12, atol=0)
    canonical, present = map_leads(raw.signal, raw.lead_names, raw.source)
    assert present.all()
    np.testing.assert_allclose(canonical, expected_mv().astype(np.float32), rtol=0, atol=0)


def test_baseline_and_correction_factor_are_applied(tmp_path):
    ds = real()
    first = ds.WaveformSequence[0].ChannelDefinitionSequence[0]
    first.ChannelSensitivityCorrectionFactor, first.ChannelBaseline = "2", "500"  # baseline in uV, like the sensitivity
    raw = read_dicom_ecg(save(ds, tmp_path / "baseline.dcm"))
    want = expected_mv()
    want[0] = raw_counts(real())[:, 0] * 1.25 * 2 / 1000 + 0.5
    np.testing.assert_allclose(raw.signal, want, rtol=1e-12, atol=0)


def test_mdc_codes_name_the_leads(tmp_path):
    perm = [0, 1, 2, 3, 5, 4, 6, 7, 8, 9, 10, 11]  # aVF before aVL
    ds = permuted(perm)
    for k, channel in zip(perm, ds.WaveformSequence[0].ChannelDefinitionSequence):
        code = channel.ChannelSourceSequence[0]
        code.CodingSchemeDesignator, code.CodeValue = "MDC", MDC[CANONICAL_LEADS[k]]
        code.CodeMeaning = "misleading meaning"  # a known code wins over the meaning
    raw = read_dicom_ecg(save(ds, tmp_path / "mdc.dcm"))
    assert raw.lead_names == ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
    np.testing.assert_allclose(raw.signal, expected_mv()[perm], rtol=1e-12, atol=0)


def test_unknown_codes_fall_back_to_the_meaning(tmp_path):
    ds = real()
    meanings = ["Lead I (Einthoven)", "Lead II", "lead III", "aVR, augmented voltage, right", "Lead aVL", "Lead aVF"]
    for channel, meaning in zip(ds.WaveformSequence[0].ChannelDefinitionSequence, meanings):
        code = channel.ChannelSourceSequence[0]
        code.CodingSchemeDesignator, code.CodeValue, code.CodeMeaning = "99LOCAL", "X", meaning
    raw = read_dicom_ecg(save(ds, tmp_path / "local.dcm"))
    assert raw.lead_names == list(CANONICAL_LEADS)


def test_rhythm_group_is_chosen_wherever_it_is(tmp_path):
    ds = real()
    ds.WaveformSequence = Sequence(list(reversed(ds.WaveformSequence)))  # median beat first
    raw = read_dicom_ecg(save(ds, tmp_path / "median_first.dcm"))
    assert raw.signal.shape == (C, T)
    np.testing.assert_allclose(raw.signal, expected_mv(), rtol=1e-12, atol=0)
    for group in ds.WaveformSequence:  # no labels: the ORIGINAL group, not the DERIVED one before it
        del group.MultiplexGroupLabel
    raw = read_dicom_ecg(save(ds, tmp_path / "unlabelled.dcm"))
    np.testing.assert_allclose(raw.signal, expected_mv(), rtol=1e-12, atol=0)


def test_padding_value_marks_missing_samples_as_nan(tmp_path):
    ds = real()
    group = ds.WaveformSequence[0]
    counts = raw_counts(ds).copy()
    counts[100:110, 2] = -32768
    group.WaveformData = counts.astype("<i2").tobytes()
    group.add_new("WaveformPaddingValue", "OW", np.array([-32768], dtype="<i2").tobytes())  # OW for 16-bit data
    raw = read_dicom_ecg(save(ds, tmp_path / "padded.dcm"))
    want = expected_mv()
    want[2, 100:110] = np.nan
    np.testing.assert_allclose(raw.signal, want, rtol=1e-12, atol=0)  # NaNs must match position for position


# ---- bad files: one ECGRecordError each, naming the file and the problem -------------------------


def test_text_file_is_not_dicom(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("12-lead ECG, see attached\n")
    with pytest.raises(ECGRecordError) as err:
        read_dicom_ecg(path)
    assert str(err.value) == message(path, "not a DICOM file (no DICM prefix after the 128-byte preamble)")
    assert err.value.record == str(path)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.dcm"
    with pytest.raises(ECGRecordError) as err:
        read_dicom_ecg(path)
    assert str(err.value) == message(path, "file not found")


def test_image_without_waveform():
    path = Path(get_testdata_file("CT_small.dcm"))
    with pytest.raises(ECGRecordError) as err:
        read_dicom_ecg(path)
    assert str(err.value) == message(path, "no waveform data: not a waveform object (CT Image Storage)")


def test_truncated_waveform_data(tmp_path):
    ds = real()
    ds.WaveformSequence[0].WaveformData = ds.WaveformSequence[0].WaveformData[:-100]
    path = save(ds, tmp_path / "short.dcm")
    with pytest.raises(ECGRecordError) as err:
        read_dicom_ecg(path)
    assert str(err.value) == message(
        path,
        "multiplex group 0 (RHYTHM): WaveformData holds 239900 bytes but 12 channels x 10000 samples x 16 bits "
        "need 240000 (truncated file, or a header that disagrees with the data)",
    )
    # pydicom on its own fails with a bare reshape error here, and silently ignores surplus bytes
    with pytest.raises(ValueError, match="cannot reshape"):
        pydicom.dcmread(path).waveform_array(0)


def test_surplus_waveform_data(tmp_path):
    ds = real()
    ds.WaveformSequence[0].WaveformData += bytes(24)  # one more frame than the header's 10000 samples
    path = save(ds, tmp_path / "long.dcm")
    with pytest.raises(ECGRecordError, match="WaveformData holds 240024 bytes but 12 channels x 10000 samples"):
        read_dicom_ecg(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.dcm"
    path.write_bytes(REAL.read_bytes()[:-1000])
    with pytest.raises(ECGRecordError) as err:
        read_dicom_ecg(path)
    assert str(err.value).startswith(message(path, "unreadable DICOM file, truncated or corrupt (OSError: "))
    path.write_bytes(REAL.read_bytes()[:200])  # only the file meta header survives
    with pytest.raises(ECGRecordError) as err:
        read_dicom_ecg(path)
    assert str(err.value) == message(
        path, "no waveform data: the 12-lead ECG Waveform Storage object has no WaveformSequence"
    )


@pytest.mark.parametrize(
    "change, problem",
    [
        (
            lambda ch: setattr(ch[2].ChannelSensitivityUnitsSequence[0], "CodeValue", "mmHg"),
            "multiplex group 0 (RHYTHM), channel 3 (III): units 'mmHg' are not a voltage (UCUM V, mV, uV or nV)",
        ),
        (
            lambda ch: setattr(ch[4].ChannelSensitivityUnitsSequence[0], "CodeValue", "MV"),  # megavolt in UCUM
            "multiplex group 0 (RHYTHM), channel 5 (aVL): units 'MV' are not a voltage (UCUM V, mV, uV or nV)",
        ),
        (
            lambda ch: delattr(ch[6], "ChannelSensitivityUnitsSequence"),
            "multiplex group 0 (RHYTHM), channel 7 (V1): no units",
        ),
        (
            lambda ch: delattr(ch[0], "ChannelSensitivity"),
            "multiplex group 0 (RHYTHM), channel 1 (I): no ChannelSensitivity",
        ),
    ],
)
def test_channel_calibration_problems(tmp_path, change, problem):
    ds = real()
    change(ds.WaveformSequence[0].ChannelDefinitionSequence)
    path = save(ds, tmp_path / "calibration.dcm")
    with pytest.raises(ECGRecordError) as err:
        read_dicom_ecg(path)
    assert str(err.value) == message(path, problem)


def test_group_problems(tmp_path):
    ds = real()
    ds.WaveformSequence[0].NumberOfWaveformChannels = 0
    path = save(ds, tmp_path / "empty.dcm")
    with pytest.raises(ECGRecordError) as err:
        read_dicom_ecg(path)
    assert str(err.value) == message(path, "multiplex group 0 (RHYTHM) has 0 channels x 10000 samples")

    ds = real()
    del ds.WaveformSequence[0]  # only the median beat is left
    path = save(ds, tmp_path / "median_only.dcm")
    with pytest.raises(ECGRecordError) as err:
        read_dicom_ecg(path)
    assert str(err.value) == message(
        path, "only a median beat group (derived, one averaged beat); no rhythm waveform"
    )

    ds = real()
    ds.WaveformSequence[0].WaveformSampleInterpretation = "MB"  # mu-law companded 8-bit
    ds.WaveformSequence[0].WaveformBitsAllocated = 8
    path = save(ds, tmp_path / "mulaw.dcm")
    with pytest.raises(ECGRecordError) as err:
        read_dicom_ecg(path)
    assert str(err.value) == message(path, "multiplex group 0 (RHYTHM): unsupported sample encoding (8 bits, MB)")


def test_messages_carry_no_patient_identity(tmp_path):
    ds = real()
    ds.WaveformSequence[0].WaveformData = ds.WaveformSequence[0].WaveformData[:-2]
    ds.WaveformSequence[0].ChannelDefinitionSequence[1].ChannelSensitivityUnitsSequence[0].CodeValue = "mmHg"
    path = save(ds, tmp_path / "phi.dcm")
    with pytest.raises(ECGRecordError) as err:
        read_dicom_ecg(path)
    for value in (str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate)):
        assert value not in str(err.value)
