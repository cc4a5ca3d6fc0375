"""ECGSampleDataset: error policy and stats, multi-record samples, windows, normalisation statistics."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import wfdb

from mmmed.train.datamodule import MultimodalDataModule
from mmmed_datasets.ecg.ecg_cache import ECGSignalCache
from mmmed_datasets.ecg.ecg_preprocess import ECGPreprocessing
from mmmed_datasets.ecg.ecg_samples import ECGSample, ECGSampleDataset
from mmmed_datasets.ecg.ecg_signal import CANONICAL_LEADS, ECGRecordError, window_offsets

FS = 100  # stored rate = pipeline rate, so prepared signals are the stored values
WINDOW = 200  # 2 s
SOURCE = "test source"
NO_V4 = [lead for lead in CANONICAL_LEADS if lead != "V4"]


def pipeline(**overrides) -> ECGPreprocessing:
    """12 leads at 100 Hz, 2 s windows, missing leads as zeros, mV out."""
    settings = dict(leads=list(CANONICAL_LEADS), lead_aliases=None, min_real_leads=1,
                    sampling_rate=FS, seconds=WINDOW / FS, missing_leads="zero",
                    nan_policy="interpolate", short_records="error", bandpass=None, filter_order=4, notch=None,
                    notch_quality=30, normalize="none", eval_crop="center", eval_crops=1)
    return ECGPreprocessing(**{**settings, **overrides})


def write(path: Path, samples: int, seed: int, names: tuple[str, ...] | list[str] = CANONICAL_LEADS,
          nans: int = 0) -> str:
    """A format-16 record at FS; the first ``nans`` samples of lead 0 are NaN."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(0, 0.5, size=(samples, len(names))) + np.arange(len(names)) * 0.25
    signal[:nans, 0] = np.nan
    wfdb.wrsamp(path.name, fs=FS, units=["mV"] * len(names), sig_name=list(names), p_signal=signal,
                fmt=["16"] * len(names), adc_gain=[1000.0] * len(names), baseline=[0] * len(names),
                write_dir=str(path.parent))
    return str(path)


@pytest.fixture(scope="module")
def rec(tmp_path_factory) -> dict[str, str]:
    """a: 2.5 s; b: 3 s without V4; c: 2.7 s with 4 NaN samples; bad: no .dat; short: 1 s."""
    folder = tmp_path_factory.mktemp("records")
    paths = {"a": write(folder / "a", 250, 0), "b": write(folder / "b", 300, 1, names=NO_V4),
             "c": write(folder / "c", 270, 2, nans=4), "bad": write(folder / "bad", 250, 3),
             "short": write(folder / "short", 100, 4)}
    Path(paths["bad"] + ".dat").unlink()
    return paths


def sample(id: str, *records: str) -> ECGSample:
    return ECGSample(id, tuple(records), "<ecg>" * len(records) + " What rhythm?", f"answer {id}", f"label {id}")


@pytest.fixture
def samples(rec) -> list[ECGSample]:
    """Three good samples (s2 with two records) and three that fail through one of their records."""
    return [sample("s0", rec["a"]), sample("s1", rec["b"]), sample("s2", rec["a"], rec["c"]),
            sample("s3", rec["bad"]), sample("s4", rec["c"], rec["bad"]), sample("s5", rec["short"], rec["a"])]


def dataset(samples, tmp_path, cache=True, on_error="skip", train=False, **overrides) -> ECGSampleDataset:
    store = ECGSignalCache(tmp_path / "cache", workers=0) if cache else None
    return ECGSampleDataset(samples, pipeline(**overrides), train, on_error, store, SOURCE)


def prepared(path: str, **overrides) -> np.ndarray:
    """The record after steps 1-6, computed without the dataset."""
    return pipeline(**overrides).prepare(path).signal


BAD_PROBLEM = "signal file missing ({}.dat)"
SHORT_PROBLEM = "1 s long (100 samples at 100 Hz), shorter than the 2 s window (ecg_signal.short_records=pad pads it)"


# ---- error policy and stats -------------------------------------------------------------------


def test_raise_stops_at_the_first_bad_sample(samples, rec, tmp_path):
    with pytest.raises(ECGRecordError) as info:
        dataset(samples, tmp_path, on_error="raise")
    assert str(info.value) == f"ECG record {rec['bad']}: {BAD_PROBLEM.format(rec['bad'])}"


def test_skip_drops_logs_and_counts(samples, rec, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="mmmed_datasets.ecg.ecg_samples")
    earlier = ECGRecordError("table.csv", "row 7 has an empty report")
    ds = ECGSampleDataset(samples, pipeline(), False, "skip", ECGSignalCache(tmp_path / "cache", workers=0), SOURCE,
                          skipped=[earlier])
    assert [s.id for s in ds.samples] == ["s0", "s1", "s2"]  # a sample goes when either of its records fails
    # leads_seen: records a, c (12 leads) and b (no V4); bad and short failed before their leads were read
    seen = {lead: 2 if lead == "V4" else 3 for lead in sorted(CANONICAL_LEADS)}
    assert ds.stats == {"samples": 3, "skipped": 4, "records": 3, "nan_samples": 4, "records_missing_leads": 1,
                        "records_too_few_leads": 0, "leads_seen": seen}
    bad = BAD_PROBLEM.format(rec["bad"])
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{SOURCE}: skipped table.csv: row 7 has an empty report",
        f"{SOURCE}: skipped {rec['bad']}: {bad}",
        f"{SOURCE}: skipped {rec['bad']}: {bad}",
        f"{SOURCE}: skipped {rec['short']}: {SHORT_PROBLEM}",
    ]


def test_without_cache_skip_scans_every_record(samples, tmp_path):
    ds = dataset(samples, tmp_path, cache=False)
    assert [s.id for s in ds.samples] == ["s0", "s1", "s2"]
    assert ds.stats == {"samples": 3, "skipped": 3}  # record-level counts need the cache
    cached = dataset(samples, tmp_path)
    for i in range(len(ds)):
        for ours, theirs in zip(ds[i]["signals"]["ecg"], cached[i]["signals"]["ecg"]):
            assert torch.equal(ours["signal"], theirs["signal"]) and torch.equal(ours["lead_mask"], theirs["lead_mask"])


def test_without_cache_raise_fails_when_the_bad_item_is_read(samples, rec, tmp_path):
    ds = dataset(samples, tmp_path, cache=False, on_error="raise")
    assert len(ds) == 6 and ds.stats == {"samples": 6, "skipped": 0}
    ds[0]
    with pytest.raises(ECGRecordError) as info:
        ds[3]
    assert str(info.value) == f"ECG record {rec['bad']}: {BAD_PROBLEM.format(rec['bad'])}"


def test_no_usable_samples(rec, tmp_path):
    with pytest.raises(ValueError) as info:
        dataset([sample("x", rec["bad"]), sample("y", rec["short"])], tmp_path)
    assert str(info.value) == f"{SOURCE}: no usable samples (2 skipped)"


def test_unknown_error_policy(samples, tmp_path):
    with pytest.raises(ValueError) as info:
        dataset(samples, tmp_path, on_error="ignore")
    assert str(info.value) == "on_error must be one of ('raise', 'skip'), not 'ignore'"


# ---- records with too few real leads ----------------------------------------------------------

FRANK_PROBLEM = ("0 of the 12 leads found (min_real_leads=1); its channels are ['vx', 'vy', 'vz']; "
                 "map them with ecg_signal.preprocessing.lead_aliases")


@pytest.fixture(scope="module")
def frank(tmp_path_factory) -> dict[str, str]:
    """frank: 2.5 s of Frank leads vx, vy, vz only; holter: 2.5 s of MLII and V5 (a Holter record)."""
    folder = tmp_path_factory.mktemp("frank")
    return {"frank": write(folder / "frank", 250, 5, names=["vx", "vy", "vz"]),
            "holter": write(folder / "holter", 250, 6, names=["MLII", "V5"])}


def test_record_without_leads_is_a_counted_logged_skip(rec, frank, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="mmmed_datasets.ecg.ecg_samples")
    rows = [sample("s0", rec["a"]), sample("f", frank["frank"]), sample("h", frank["holter"])]
    ds = dataset(rows, tmp_path, lead_aliases={"MLII": "II"})  # missing_leads: zero, on_error: skip
    assert [s.id for s in ds.samples] == ["s0", "h"]
    assert [r.getMessage() for r in caplog.records] == [f"{SOURCE}: skipped {frank['frank']}: {FRANK_PROBLEM}"]
    seen = {**{lead: 1 for lead in CANONICAL_LEADS}, "MLII": 1, "V5": 2, "vx": 1, "vy": 1, "vz": 1}
    assert ds.stats == {"samples": 2, "skipped": 1, "records": 2, "nan_samples": 0, "records_missing_leads": 1,
                        "records_too_few_leads": 1, "leads_seen": dict(sorted(seen.items()))}
    assert ds[1]["signals"]["ecg"][0]["lead_mask"].tolist() == [lead in ("II", "V5") for lead in CANONICAL_LEADS]
    without_cache = dataset(rows, tmp_path, cache=False, lead_aliases={"MLII": "II"})
    assert [s.id for s in without_cache.samples] == ["s0", "h"] and without_cache.stats["skipped"] == 1


def test_record_without_leads_raises_in_strict_mode(frank, tmp_path):
    with pytest.raises(ECGRecordError) as info:
        dataset([sample("f", frank["frank"])], tmp_path, on_error="raise")
    assert str(info.value) == f"ECG record {frank['frank']}: {FRANK_PROBLEM}"
    lazy = dataset([sample("f", frank["frank"])], tmp_path, cache=False, on_error="raise")
    with pytest.raises(ECGRecordError) as info:
        lazy[0]  # without the cache a record is read when its item is
    assert str(info.value) == f"ECG record {frank['frank']}: {FRANK_PROBLEM}"


def test_leads_seen_reach_the_run_metrics_one_number_per_name(rec, frank, tmp_path):
    splits = {"train": [sample("s0", rec["a"]), sample("h", frank["holter"])], "val": [sample("f", frank["frank"]),
                                                                                    sample("s1", rec["b"])]}
    module = MultimodalDataModule(
        root="", dataset=lambda split: dataset(splits[split], tmp_path, lead_aliases={"MLII": "II"}),
        splits={"train": {"split": "train"}, "val": {"split": "val"}}, prepare=None, batch_size=1, eval_batch_size=1,
        num_workers=0, max_length=64, answer_classes={}, max_new_tokens=4, label_scores=None, report_metrics=None,
        seed=0)
    module.setup()
    stats = module.data_stats()
    assert stats["data/train/leads_seen/MLII"] == 1 and stats["data/train/leads_seen/V5"] == 2
    assert stats["data/val/leads_seen/vx"] == 1 and stats["data/val/leads_seen/I"] == 1
    assert "data/val/leads_seen/V4" not in stats  # b has no V4 and the Frank record none of the 12
    assert stats["data/val/records_too_few_leads"] == 1 and stats["data/train/records_too_few_leads"] == 0
    assert all(isinstance(value, int) for value in stats.values())
    assert sorted(k for k in stats if k.startswith("data/val/leads_seen/")) == sorted(
        f"data/val/leads_seen/{name}" for name in NO_V4 + ["vx", "vy", "vz"])


# ---- items and windows ------------------------------------------------------------------------


def test_item_layout_and_center_windows(samples, rec, tmp_path):
    ds = dataset(samples, tmp_path)
    assert len(ds) == 3
    item = ds[2]
    assert item["id"] == "s2" and item["question"] == "<ecg><ecg> What rhythm?"
    assert item["answer"] == "answer s2" and item["label"] == "label s2"
    ecgs = item["signals"]["ecg"]
    assert len(ecgs) == 2
    for ecg, name, total in zip(ecgs, ("a", "c"), (250, 270)):
        start = (total - WINDOW) // 2
        assert ecg["signal"].dtype == torch.float32 and ecg["lead_mask"].dtype == torch.bool
        np.testing.assert_array_equal(ecg["signal"].numpy(), prepared(rec[name])[:, start : start + WINDOW])
    assert ds[1]["signals"]["ecg"][0]["lead_mask"].tolist() == [lead != "V4" for lead in CANONICAL_LEADS]


def test_multi_crop_serves_each_window_as_an_item(samples, rec, tmp_path):
    ds = dataset(samples, tmp_path, eval_crop="multi", eval_crops=3)
    assert len(ds) == 3 * 3
    assert [ds[i]["id"] for i in range(9)] == [f"s{s}#crop{k}" for s in range(3) for k in range(3)]
    for k, start in enumerate(window_offsets(300, WINDOW, 3)):  # s1 -> record b, 300 samples
        np.testing.assert_array_equal(ds[3 + k]["signals"]["ecg"][0]["signal"].numpy(),
                                      prepared(rec["b"])[:, start : start + WINDOW])
    assert window_offsets(300, WINDOW, 3) == [0, 50, 100]
    for k, (start_a, start_c) in enumerate(zip([0, 25, 50], [0, 35, 70])):  # s2 -> a (250), c (270)
        ecgs = ds[6 + k]["signals"]["ecg"]
        np.testing.assert_array_equal(ecgs[0]["signal"].numpy(), prepared(rec["a"])[:, start_a : start_a + WINDOW])
        np.testing.assert_array_equal(ecgs[1]["signal"].numpy(), prepared(rec["c"])[:, start_c : start_c + WINDOW])


def crop_start(window: torch.Tensor, record: np.ndarray) -> int:
    """Where in the prepared (L, T) record a served (L, WINDOW) window begins (exactly one place)."""
    window = window.numpy()
    starts = [s for s in range(record.shape[1] - WINDOW + 1) if np.array_equal(record[:, s : s + WINDOW], window)]
    assert len(starts) == 1
    return starts[0]


def test_training_crops_are_random_and_reproducible_under_torch_seed(samples, rec, tmp_path):
    ds = dataset(samples, tmp_path, train=True, eval_crop="multi", eval_crops=3)
    assert len(ds) == 3 and ds[0]["id"] == "s0"  # training: one random window per sample
    record_b = prepared(rec["b"])

    def starts(seed: int) -> list[int]:
        torch.manual_seed(seed)
        return [crop_start(ds[1]["signals"]["ecg"][0]["signal"], record_b) for _ in range(20)]

    first = starts(3)
    assert starts(3) == first
    assert starts(4) != first
    assert len(set(first)) > 5 and all(0 <= s <= 100 for s in first)


# ---- dataset-level normalisation --------------------------------------------------------------


def test_fit_normalization_matches_numpy_over_present_leads(samples, rec, tmp_path):
    ds = dataset(samples, tmp_path, train=True, normalize="dataset")
    keyed = ds.fit_normalization()
    assert list(keyed) == ["ecg"]  # statistics are keyed by modality, as a patient record's are
    stats = keyed["ecg"]
    assert stats["leads"] == list(CANONICAL_LEADS) and stats["settings"] == pipeline().prepare_settings()
    records = [prepared(rec[name]) for name in ("a", "b", "c")]  # the records the kept samples use
    for k, lead in enumerate(CANONICAL_LEADS):
        # b has no V4: its zeros must not pull V4's statistics
        values = np.concatenate([r[k] for r, name in zip(records, "abc") if not (name == "b" and lead == "V4")])
        values = values.astype(np.float64)
        assert stats["mean"][k] == pytest.approx(values.mean(), rel=1e-12)
        assert stats["std"][k] == pytest.approx(values.std(), rel=1e-9)
    assert dataset(samples, tmp_path).fit_normalization() is None  # normalize=none needs none


def test_dataset_normalization_serves_standardised_windows(samples, rec, tmp_path):
    ds = dataset(samples, tmp_path, normalize="dataset")
    ds.set_normalization(ds.fit_normalization())
    stats = ds.normalization
    window = ds[1]["signals"]["ecg"][0]["signal"].numpy()  # record b, centre window
    raw = prepared(rec["b"])[:, 50:250].astype(np.float64)
    expected = (raw - np.array(stats["mean"])[:, None]) / np.array(stats["std"])[:, None]
    present = [lead != "V4" for lead in CANONICAL_LEADS]
    np.testing.assert_allclose(window[present], expected[present], rtol=1e-5, atol=1e-6)
    assert (window[CANONICAL_LEADS.index("V4")] == 0).all()


def test_set_normalization_refuses_other_leads(samples, tmp_path):
    ds = dataset(samples, tmp_path, normalize="dataset")
    other = list(reversed(CANONICAL_LEADS))
    with pytest.raises(ValueError) as info:
        ds.set_normalization({"ecg": {"leads": other, "mean": [0.0] * 12, "std": [1.0] * 12}})
    assert str(info.value) == f"normalisation statistics are for leads {other}, not {list(CANONICAL_LEADS)}"


def test_dataset_normalization_without_statistics_raises(samples, tmp_path):
    ds = dataset(samples, tmp_path, normalize="dataset")
    with pytest.raises(RuntimeError, match="ecg_signal.normalize=dataset needs the training split's statistics"):
        ds[0]
