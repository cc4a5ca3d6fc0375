"""ECGSignalCache: stores exactly what prepare returns, reuses it, and rebuilds when settings or files change."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import wfdb

import mmmed_datasets.ecg.ecg_cache as ecg_cache
from mmmed_datasets.ecg.ecg_cache import ECGSignalCache
from mmmed_datasets.ecg.ecg_preprocess import ECGPreprocessing
from mmmed_datasets.ecg.ecg_signal import CANONICAL_LEADS

FS = 200  # stored rate; the pipeline resamples to 100 Hz


def pipeline(**overrides) -> ECGPreprocessing:
    """12 leads at 100 Hz, 2 s windows, missing leads as zeros."""
    settings = dict(leads=list(CANONICAL_LEADS), lead_aliases=None, min_real_leads=1,
                    sampling_rate=100, seconds=2, missing_leads="zero",
                    nan_policy="interpolate", short_records="error", bandpass=None, filter_order=4, notch=None,
                    notch_quality=30, normalize="none", eval_crop="center", eval_crops=1)
    return ECGPreprocessing(**{**settings, **overrides})


def write(path: Path, seconds: float, seed: int, names: tuple[str, ...] | list[str] = CANONICAL_LEADS,
          nans: int = 0) -> str:
    """A format-16 record of ``seconds`` at FS with ``names``; the first ``nans`` samples of lead 0 are NaN."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(0, 0.5, size=(int(seconds * FS), len(names))) + np.arange(len(names)) * 0.25
    signal[:nans, 0] = np.nan
    wfdb.wrsamp(path.name, fs=FS, units=["mV"] * len(names), sig_name=list(names), p_signal=signal,
                fmt=["16"] * len(names), adc_gain=[1000.0] * len(names), baseline=[0] * len(names),
                write_dir=str(path.parent))
    return str(path)


@pytest.fixture
def records(tmp_path) -> list[str]:
    """Four records of different lengths; one lacks V4, one has 5 NaN samples."""
    folder = tmp_path / "records"
    folder.mkdir()
    no_v4 = [lead for lead in CANONICAL_LEADS if lead != "V4"]
    return [write(folder / "a", 2.0, 0), write(folder / "b", 3.0, 1, names=no_v4),
            write(folder / "c", 2.5, 2, nans=5), write(folder / "d", 4.0, 3)]


def refuse_to_prepare(monkeypatch) -> None:
    """From now on, preparing a record in this process fails the test."""
    def refuse(self, path):
        raise AssertionError(f"prepared {path} again")
    monkeypatch.setattr(ECGPreprocessing, "prepare", refuse)


def entries(root: Path) -> list[str]:
    """Every settings/records folder (and anything else but the folders' lock files) under the cache root, relative."""
    return sorted(str(p.relative_to(root)) for p in root.glob("ecg/*/*") if p.suffix != ".lock")


def assert_same(a, b) -> None:
    """Two PreparedSignals hold the same records, errors included."""
    assert len(a) == len(b) and a.errors == b.errors
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))
    np.testing.assert_array_equal(a.lead_masks, b.lead_masks)
    np.testing.assert_array_equal(a.nan_samples, b.nan_samples)
    assert a.channels == b.channels and a.too_few_leads == b.too_few_leads


# ---- building and reopening -------------------------------------------------------------------


def test_build_stores_exactly_what_prepare_returns(tmp_path, records):
    p = pipeline()
    signals = ECGSignalCache(tmp_path / "cache", workers=0).build(p, records)
    assert len(signals) == 4 and signals.errors == {}
    assert isinstance(signals.data, np.memmap) and signals.data.dtype == np.float32
    lengths = []
    for i, path in enumerate(records):
        expected = p.prepare(path)
        got = signals.get(i)
        assert got.signal.dtype == np.float32 and got.signal.shape == expected.signal.shape
        np.testing.assert_array_equal(got.signal, expected.signal)
        np.testing.assert_array_equal(got.lead_mask, expected.lead_mask)
        assert got.nan_samples == expected.nan_samples and got.channels == expected.channels
        lengths.append(expected.signal.shape[1])
    assert lengths == [200, 300, 250, 400]
    assert signals.get(1).lead_mask.tolist() == [lead != "V4" for lead in CANONICAL_LEADS]
    assert [signals.get(i).nan_samples for i in range(4)] == [0, 0, 5, 0]
    folder = ECGSignalCache(tmp_path / "cache").folder(p, records)
    assert sorted(f.name for f in folder.iterdir()) == ["channels.json", "errors.json", "index.npz", "settings.json",
                                                          "signals.f32"]
    assert (folder / "signals.f32").stat().st_size == 4 * 12 * sum(lengths)
    assert json.loads((folder / "settings.json").read_text()) == json.loads(json.dumps(p.prepare_settings()))


def test_second_build_opens_the_folder_without_preparing(tmp_path, records, monkeypatch):
    cache = ECGSignalCache(tmp_path / "cache", workers=0)
    first = cache.build(pipeline(), records)
    before = entries(tmp_path / "cache")
    refuse_to_prepare(monkeypatch)
    second = ECGSignalCache(tmp_path / "cache", workers=0).build(pipeline(), records)
    assert_same(first, second)
    assert entries(tmp_path / "cache") == before and len(before) == 1
    # per-item settings do not touch the prepared signals either
    assert_same(cache.build(pipeline(normalize="dataset", eval_crop="multi", eval_crops=3), records), first)


def test_a_changed_setting_builds_a_new_folder(tmp_path, records):
    cache = ECGSignalCache(tmp_path / "cache", workers=0)
    cache.build(pipeline(), records)
    changed = pipeline(sampling_rate=50)
    assert cache.folder(changed, records) != cache.folder(pipeline(), records)
    signals = cache.build(changed, records)
    assert len(entries(tmp_path / "cache")) == 2
    np.testing.assert_array_equal(signals.get(3).signal, changed.prepare(records[3]).signal)
    assert signals.get(3).signal.shape == (12, 200)


def test_a_touched_or_rewritten_record_builds_a_new_folder(tmp_path, records):
    cache = ECGSignalCache(tmp_path / "cache", workers=0)
    p = pipeline()
    cache.build(p, records)
    first = cache.folder(p, records)

    dat = Path(records[0] + ".dat")
    stat = dat.stat()
    os.utime(dat, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, newer mtime
    touched = cache.folder(p, records)
    assert touched != first and touched.parent == first.parent
    cache.build(p, records)
    assert len(entries(tmp_path / "cache")) == 2

    write(Path(records[0]), 3.5, seed=99)  # different content and size
    rewritten = cache.folder(p, records)
    assert rewritten not in (first, touched)
    signals = cache.build(p, records)
    assert signals.get(0).signal.shape == (12, 350)
    np.testing.assert_array_equal(signals.get(0).signal, p.prepare(records[0]).signal)


def test_a_rewritten_segment_builds_a_new_folder(tmp_path):
    for k in range(2):
        write(tmp_path / f"seg{k}", 2.0, seed=k)
    (tmp_path / "multi.hea").write_text("multi/2 12 200 800\nseg0 400\nseg1 400\n")
    cache, p = ECGSignalCache(tmp_path / "cache", workers=0), pipeline()
    paths = [str(tmp_path / "multi")]
    cache.build(p, paths)
    write(tmp_path / "seg1", 2.0, seed=7)  # new values, same size
    dat = tmp_path / "seg1.dat"
    stat = dat.stat()
    os.utime(dat, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    np.testing.assert_array_equal(cache.build(p, paths).get(0).signal, p.prepare(paths[0]).signal)


# ---- failures ---------------------------------------------------------------------------------


def test_failed_records_are_stored_as_their_problem(tmp_path, records, monkeypatch):
    Path(records[1] + ".dat").unlink()
    short = write(Path(records[0]).parent / "short", 1.0, seed=5)  # 1 s, window 2 s
    paths = records + [short]
    cache = ECGSignalCache(tmp_path / "cache", workers=0)
    signals = cache.build(pipeline(), paths)
    problems = {
        1: f"signal file missing ({records[1]}.dat)",
        4: "1 s long (100 samples at 100 Hz), shorter than the 2 s window (ecg_signal.short_records=pad pads it)",
    }
    assert signals.errors == problems
    for index, problem in problems.items():
        with pytest.raises(RuntimeError) as info:
            signals.get(index)
        assert str(info.value) == f"record {index} failed to prepare: {problem}"
        assert not signals.lead_masks[index].any() and signals.nan_samples[index] == 0
    for i in (0, 2, 3):
        np.testing.assert_array_equal(signals.get(i).signal, pipeline().prepare(paths[i]).signal)
    refuse_to_prepare(monkeypatch)
    assert_same(cache.build(pipeline(), paths), signals)  # errors come back from disk too


def test_channel_names_and_too_few_leads_are_stored_per_record(tmp_path, records, monkeypatch):
    folder = Path(records[0]).parent
    frank = write(folder / "frank", 2.0, seed=6, names=["vx", "vy", "vz"])
    holter = write(folder / "holter", 2.0, seed=7, names=["MLII", "V5"])
    Path(records[3] + ".dat").unlink()
    paths = records + [frank, holter]
    cache, p = ECGSignalCache(tmp_path / "cache", workers=0), pipeline(lead_aliases={"MLII": "II"})
    signals = cache.build(p, paths)
    no_v4 = tuple(lead for lead in CANONICAL_LEADS if lead != "V4")
    assert signals.channels == [CANONICAL_LEADS, no_v4, CANONICAL_LEADS, None, ("vx", "vy", "vz"), ("MLII", "V5")]
    assert signals.too_few_leads == {4} and set(signals.errors) == {3, 4}
    assert signals.errors[4] == ("0 of the 12 leads found (min_real_leads=1); its channels are ['vx', 'vy', 'vz']; "
                                 "map them with ecg_signal.preprocessing.lead_aliases")
    assert signals.get(5).channels == ("MLII", "V5") == p.prepare(holter).channels
    # Each distinct channel list is stored once; records point at it (-1: unreadable)
    stored = json.loads((cache.folder(p, paths) / "channels.json").read_text())
    assert stored == {"lists": [list(CANONICAL_LEADS), list(no_v4), ["vx", "vy", "vz"], ["MLII", "V5"]],
                      "record_list": [0, 1, 0, -1, 2, 3], "too_few_leads": [4]}
    refuse_to_prepare(monkeypatch)
    assert_same(cache.build(p, paths), signals)


def test_an_interrupted_build_leaves_nothing_behind(tmp_path, records, monkeypatch):
    calls = []
    real_prepare = ECGPreprocessing.prepare

    def interrupted(self, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_prepare(self, path)

    monkeypatch.setattr(ECGPreprocessing, "prepare", interrupted)
    cache, p = ECGSignalCache(tmp_path / "cache", workers=0), pipeline()
    with pytest.raises(KeyboardInterrupt):
        cache.build(p, records)
    assert len(calls) == 3
    folder = cache.folder(p, records)
    assert [f.name for f in folder.parent.iterdir()] == [folder.name + ".lock"]  # no folder, no temporary folder
    monkeypatch.setattr(ECGPreprocessing, "prepare", real_prepare)
    signals = cache.build(p, records)
    np.testing.assert_array_equal(signals.get(3).signal, p.prepare(records[3]).signal)


def test_pool_build_equals_the_in_process_build(tmp_path, records, monkeypatch):
    Path(records[2] + ".dat").unlink()  # a failure travels back from a worker too
    p = pipeline()
    in_process = ECGSignalCache(tmp_path / "serial", workers=2).build(p, records)  # < POOL_MIN_RECORDS: here
    monkeypatch.setattr(ecg_cache, "POOL_MIN_RECORDS", 2)
    refuse_to_prepare(monkeypatch)  # spawned workers import the real prepare; this process must not prepare
    pooled = ECGSignalCache(tmp_path / "pool", workers=2).build(p, records)
    assert_same(pooled, in_process)
    assert pooled.errors == {2: f"signal file missing ({records[2]}.dat)"}


# ---- processes building the same folder at once --------------------------------------------------

# Builds the cache for the records in argv[2] with conf/ecg_signal/default.yaml's pipeline. Preparing
# the first record waits until the other process has logged that it waits for the folder's lock, so
# the two really collide (prepare itself is the real one).
RACER = """
import hashlib, json, logging, os, sys, time
from pathlib import Path
os.umask(0o022)
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from hydra.utils import instantiate
from omegaconf import OmegaConf
from mmmed_datasets.ecg.ecg_cache import ECGSignalCache
from mmmed_datasets.ecg.ecg_preprocess import ECGPreprocessing

cache_dir, paths, waiting, me = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
preprocessing = instantiate(OmegaConf.load("conf/ecg_signal/default.yaml").preprocessing)

class MarkWaiting(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("Waiting for another process building"):
            (waiting / me).touch()

logging.getLogger("mmmed.atomic_files").addHandler(MarkWaiting())
real_prepare = ECGPreprocessing.prepare

def prepare_after_the_other_waits(self, path):
    deadline = time.monotonic() + 240  # hang guard only
    while not any(waiting.iterdir()):
        if time.monotonic() > deadline:
            raise TimeoutError("the other process never waited for the lock")
        time.sleep(0.01)
    return real_prepare(self, path)

ECGPreprocessing.prepare = prepare_after_the_other_waits
cache = ECGSignalCache(cache_dir, workers=0)
signals = cache.build(preprocessing, paths)
folder = cache.folder(preprocessing, paths)
files = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}
print(json.dumps({"folder": str(folder), "files": files, "records": len(signals)}))
"""


def test_two_processes_building_the_same_records_at_once_both_succeed_with_one_build(tmp_path):
    import pandas as pd
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mmmed_datasets.demo.ecg_demo import ensure_demo_ptbxl

    repo = Path(__file__).resolve().parents[3]
    root = ensure_demo_ptbxl(tmp_path / "ptbxl", num_patients=2, records_per_patient=1, seed=0, workers=1)
    paths = [str(root / name) for name in pd.read_csv(root / "ptbxl_database.csv")["filename_hr"]]  # 500 Hz, 10 s
    waiting = tmp_path / "waiting"
    waiting.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(RACER), str(tmp_path / "cache"), json.dumps(paths),
                               str(waiting), me], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for me in ("a", "b")]
    outputs = [proc.communicate(timeout=300) for proc in procs]  # hang guard; each child takes a few seconds
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    reports = [json.loads(out) for out, _ in outputs]
    assert reports[0] == reports[1] and reports[0]["records"] == 2
    assert sum(err.count("Preparing 2 ECG records") for _, err in outputs) == 1  # prepared once
    assert len(list(waiting.iterdir())) == 1  # the other process waited on the lock, then reused the folder

    # The stored signals are exactly what the yaml's pipeline prepares, computed here independently.
    p = instantiate(OmegaConf.load(repo / "conf" / "ecg_signal" / "default.yaml").preprocessing)
    folder = Path(reports[0]["folder"])
    assert folder == ECGSignalCache(tmp_path / "cache").folder(p, paths)
    assert reports[0]["files"] == {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}
    signals = ECGSignalCache(tmp_path / "cache", workers=0).build(p, paths)
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(signals.get(i).signal, p.prepare(path).signal)
    found = {f.name: stat.S_IMODE(f.stat().st_mode) for f in [folder, *folder.iterdir()]}
    assert found == {folder.name: 0o755, **{name: 0o644 for name in reports[0]["files"]}}  # umask 022
    assert sorted(f.name for f in folder.parent.iterdir()) == [folder.name, folder.name + ".lock"]
