"""ECGManifestDataset: WFDB and DICOM waveform ECGs listed in a CSV, one or two per sample."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pydicom
import pytest
import wfdb
from pydicom.data import get_testdata_file
from scipy.signal import resample_poly

from mmmed_datasets.ecg.ecg_cache import ECGSignalCache
from mmmed_datasets.ecg.ecg_manifest import ECGManifestDataset
from mmmed_datasets.ecg.ecg_preprocess import ECGPreprocessing
from mmmed_datasets.ecg.ecg_signal import CANONICAL_LEADS, ECGRecordError

MIMIC_ORDER = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]


def prep(**overrides) -> ECGPreprocessing:
    settings = dict(
        leads=list(CANONICAL_LEADS), lead_aliases=None, min_real_leads=1,
        sampling_rate=100, seconds=10, missing_leads="error", nan_policy="reject",
        short_records="error", bandpass=None, filter_order=4, notch=None, notch_quality=30, normalize="none",
        eval_crop="center", eval_crops=1,
    )
    return ECGPreprocessing(**{**settings, **overrides})


def dicom_mv(path) -> np.ndarray:
    """The rhythm group of waveform_ecg.dcm decoded from its bytes: (12, 10000) mV, stored lead order."""
    group = pydicom.dcmread(path).WaveformSequence[0]
    raw = np.frombuffer(group.WaveformData, dtype="<i2").reshape(10000, 12)
    return raw.T * 1.25 / 1000  # sensitivity 1.25 uV, correction 1, baseline 0 (asserted in test_dicom_ecg)


@pytest.fixture
def root(tmp_path):
    shutil.copy(get_testdata_file("waveform_ecg.dcm"), tmp_path / "hospital.dcm")
    rng = np.random.default_rng(3)
    signal = rng.normal(0, 0.5, size=(5000, 12)).round(3)  # 10 s at 500 Hz, MIMIC's lead order
    (tmp_path / "wfdb").mkdir()
    wfdb.wrsamp("rec1", fs=500, units=["mV"] * 12, sig_name=MIMIC_ORDER, p_signal=signal, fmt=["16"] * 12,
                adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path / "wfdb"))
    (tmp_path / "manifest.csv").write_text(
        "path,question,answer,split,label\n"
        "hospital.dcm,What rhythm is this?,Sinus rhythm,train,SR\n"
        "wfdb/rec1,<ecg> Rate?,72 bpm,train,\n"
        'hospital.dcm|wfdb/rec1,"First: <ecg> Second: <ecg> Same rhythm?",no,val,\n'
        "wfdb/rec1,Is this None?,None,test,\n"
    )
    return tmp_path, signal


def test_wfdb_and_dicom_rows_in_canonical_order_at_the_configured_rate(root):
    root, signal = root
    ds = ECGManifestDataset(str(root), "manifest.csv", "train", prep(), True, "raise", None)
    dicom, wfdb_item = ds[0], ds[1]
    assert dicom["question"] == "<ecg>\nWhat rhythm is this?" and dicom["label"] == "SR"
    expected = resample_poly(dicom_mv(root / "hospital.dcm"), 1, 10, axis=-1)  # 1000 -> 100 Hz; already canonical
    np.testing.assert_allclose(dicom["signals"]["ecg"][0]["signal"].numpy(), expected, rtol=0, atol=1e-5)
    canonical = signal[:, [MIMIC_ORDER.index(lead) for lead in CANONICAL_LEADS]].T  # (12, 5000)
    got = wfdb_item["signals"]["ecg"][0]["signal"].numpy()
    np.testing.assert_allclose(got, resample_poly(canonical, 1, 5, axis=-1), rtol=0, atol=1e-5)
    assert wfdb_item["question"] == "<ecg> Rate?" and wfdb_item["label"] is None


def test_two_ecgs_in_one_sample_keep_their_order(root, tmp_path_factory):
    root, _ = root
    cache = ECGSignalCache(tmp_path_factory.mktemp("cache"))
    pair = ECGManifestDataset(str(root), "manifest.csv", "val", prep(), False, "raise", cache)[0]
    singles = ECGManifestDataset(str(root), "manifest.csv", "train", prep(), False, "raise", None)
    assert pair["id"] == "manifest/2" and len(pair["signals"]["ecg"]) == 2
    for k in range(2):
        np.testing.assert_array_equal(pair["signals"]["ecg"][k]["signal"], singles[k]["signals"]["ecg"][0]["signal"])


def test_text_answers_stay_text_and_split_filter(root):
    root, _ = root
    ds = ECGManifestDataset(str(root), "manifest.csv", "test", prep(), False, "raise", None)
    assert [s.answer for s in ds.samples] == ["None"]
    assert len(ECGManifestDataset(str(root), "manifest.csv", None, prep(), False, "raise", None)) == 4


@pytest.mark.parametrize(
    "row, problem",
    [
        ("wfdb/rec1,<ecg> <ecg> Twice?,yes,train", "row 0: question has 2 <ecg> tag(s) for 1 ECG(s)"),
        ("wfdb/rec1|hospital.dcm,Which?,first,train", "row 0: question has 0 <ecg> tag(s) for 2 ECG(s)"),
        ("wfdb/rec1, ,yes,train", "row 0: empty question"),
        ("wfdb/rec1,<ecg> Rate?,  ,train", "row 0: empty answer"),
    ],
)
def test_bad_rows_name_the_manifest_and_row(root, row, problem):
    root, _ = root
    (root / "bad.csv").write_text(f"path,question,answer,split\n{row}\nwfdb/rec1,<ecg> Rate?,72,train\n")
    with pytest.raises(ECGRecordError, match=re.escape(f"ECG record {root / 'bad.csv'}: {problem}")):
        ECGManifestDataset(str(root), "bad.csv", "train", prep(), True, "raise", None)
    ds = ECGManifestDataset(str(root), "bad.csv", "train", prep(), True, "skip", None)
    assert ds.stats == {"samples": 1, "skipped": 1} and ds.samples[0].id == "manifest/1"


def test_a_missing_record_is_skipped_with_its_whole_sample(root, tmp_path_factory, caplog):
    root, _ = root
    (root / "wfdb" / "rec1.dat").unlink()
    cache = ECGSignalCache(tmp_path_factory.mktemp("cache"))
    ds = ECGManifestDataset(str(root), "manifest.csv", None, prep(), False, "skip", cache)
    assert [s.id for s in ds.samples] == ["manifest/0"]  # rows 1-3 all need rec1
    assert ds.stats["skipped"] == 3 and ds.stats["records"] == 1
    assert f"signal file missing ({root / 'wfdb' / 'rec1.dat'})" in caplog.text
    with pytest.raises(ECGRecordError, match=re.escape(f"ECG record {root / 'wfdb' / 'rec1'}: signal file missing")):
        ECGManifestDataset(str(root), "manifest.csv", None, prep(), False, "raise", cache)
