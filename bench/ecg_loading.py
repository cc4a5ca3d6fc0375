"""ECG loading speed: WFDB reads, preparation, the signal cache, and the loader against a nano training step.

    python bench/ecg_loading.py                      # 400 records: 12 leads, 10 s, 500 Hz, format 16
    python bench/ecg_loading.py --records 1000 --workers 2 --steps 10 data.batch_size=16

Writes synthetic PTB-XL-style records (wfdb.wrsamp, format 16, 1000 adu/mV) into a temporary
folder, then times, single-process unless a row says otherwise:
  (1) raw: read_wfdb alone, and ECGPreprocessing.prepare (read, leads by name, NaNs, resample,
      filters) at 500 Hz unfiltered, at 100 Hz unfiltered (conf/ecg_signal/default.yaml, the
      only row that resamples), and at 500 Hz with a 0.5-40 Hz band-pass and a 50 Hz notch (a
      50 Hz notch needs a rate above 100 Hz: at 100 Hz it sits on the Nyquist frequency);
  (2) cached: building ECGSignalCache from an empty folder (with --workers processes, a spawned
      pool from POOL_MIN_RECORDS records on; then in this process), and
      ECGSampleDataset.__getitem__ in random order over the memory-mapped cache vs. cache=None;
  (3) the DataLoader train.py builds (num_workers 0, the real MultimodalCollator and nano tokenizer)
      over the cached dataset vs. a training step of the model train.py builds (encoder=ecg
      model=nano): forward, backward and AdamW step.
The cached rows read a file the build has just written, so they measure the OS page cache, not the
disk. A benchmark, not a test: run it on an otherwise idle machine.
"""

from __future__ import annotations

# Only light imports at module level: the cache's build workers are spawned processes, which
# re-import this script's top level; torch, Hydra and mmmed are imported inside main().
import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import scipy
import wfdb

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmmed_datasets.ecg.ecg_cache import POOL_MIN_RECORDS, ECGSignalCache  # noqa: E402
from mmmed_datasets.ecg.ecg_preprocess import ECGPreprocessing  # noqa: E402
from mmmed_datasets.ecg.wfdb_ecg import read_wfdb  # noqa: E402

FS, SECONDS = 500, 10
LEAD_NAMES = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]  # PTB-XL's spelling
RHYTHMS = [("Sinus bradycardia", 40, 55), ("Normal sinus rhythm", 65, 95), ("Sinus tachycardia", 105, 140)]


def synthetic_ecg(rng: np.random.Generator, heart_rate: float) -> np.ndarray:
    """A 12-lead ECG-like signal in mV: Gaussian P/QRS/T beats, baseline wander, 50 Hz hum, noise. (T, 12)

    Reading and filtering cost the same for any content; this only keeps values in a real ECG's range.
    """
    t = np.arange(FS * SECONDS) / FS
    phase = (t * heart_rate / 60) % 1.0  # position within the beat
    beat = (0.15 * np.exp(-(((phase - 0.15) / 0.025) ** 2)) + 1.0 * np.exp(-(((phase - 0.3) / 0.012) ** 2))
            + 0.3 * np.exp(-(((phase - 0.55) / 0.05) ** 2)))
    gains = rng.uniform(-1.2, 1.5, size=12)
    wander = 0.1 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 2 * np.pi, size=(12, 1)))
    hum = 0.02 * np.sin(2 * np.pi * 50 * t)
    signal = gains[:, None] * beat + wander + hum + 0.01 * rng.standard_normal((12, t.size))  # (12, T)
    return signal.T


def write_records(folder: Path, count: int) -> tuple[list[str], list[str]]:
    """``count`` records under ``folder``; returns their paths (no suffix) and each record's report."""
    rng = np.random.default_rng(0)
    paths, reports = [], []
    for i in range(count):
        wording, low, high = RHYTHMS[i % len(RHYTHMS)]
        heart_rate = rng.uniform(low, high)
        name = f"{i + 1:05d}_hr"
        wfdb.wrsamp(name, fs=FS, units=["mV"] * 12, sig_name=LEAD_NAMES, p_signal=synthetic_ecg(rng, heart_rate),
                    fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(folder))
        paths.append(str(folder / name))
        reports.append(f"{wording} at {round(heart_rate)} bpm.")
    return paths, reports


def preprocessing(base: dict, **changes) -> ECGPreprocessing:
    """The configured pipeline with some settings changed."""
    return ECGPreprocessing(**{**base, **changes})


def timed(work: Callable[[object], object], items: Iterable) -> np.ndarray:
    """Seconds of each call of ``work``, over ``items`` in order. (N,)"""
    seconds = []
    for item in items:
        start = time.perf_counter()
        work(item)
        seconds.append(time.perf_counter() - start)
    return np.asarray(seconds)


def timed_batches(loader: Iterable) -> tuple[list, np.ndarray]:
    """The batches of one pass over ``loader`` and the seconds each took to arrive. (N,)"""
    batches, seconds, iterator = [], [], iter(loader)
    while True:
        start = time.perf_counter()
        batch = next(iterator, None)
        if batch is None:
            return batches, np.asarray(seconds)
        seconds.append(time.perf_counter() - start)
        batches.append(batch)


def clock(work: Callable[[], object]) -> float:
    """Seconds one call of ``work()`` takes."""
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def row(stage: str, seconds: np.ndarray | float, unit: str = "records", note: str = "", count: int | None = None) -> None:
    """One table line: rate and mean time from the total, the median per call (robust to a busy machine), note.

    ``seconds`` holds one duration per item, or one total for ``count`` items (then no median).
    """
    per_item = np.atleast_1d(seconds)
    count = count or per_item.size
    total = float(per_item.sum())
    median = f"{1000 * float(np.median(per_item)):9.2f} ms" if per_item.size == count else f"{'-':>12}"
    print(f"  {stage:<44} {count / total:10.2f} {unit + '/s':<10} {1000 * total / count:9.2f} ms {median}  {note}")


def header(title: str) -> None:
    """A table section's title line with the column names."""
    print(f"\n  {title:<44} {'rate':>21} {'mean':>12} {'median':>12}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=400, help="records to write and read")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes for the pooled cache build (default: all cores, as ecg_signal.cache.workers=null)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.batch_size=16")
    args = parser.parse_args()

    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader
    from transformers.utils import logging as hf_logging

    from mmmed.train.build import build_run, parameter_counts
    from mmmed.model.collate import MultimodalCollator
    from mmmed.config_dir import config_dir
    from mmmed_datasets.ecg.ecg_samples import ECGSample, ECGSampleDataset

    hf_logging.disable_progress_bar()  # the checkpoint-loading bar would split the table
    workers = args.workers if args.workers is not None else os.cpu_count() or 1
    print(f"machine          {platform.machine()}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), "
          f"torch threads {torch.get_num_threads()} (inter-op {torch.get_num_interop_threads()}), "
          f"load average {os.getloadavg()[0]:.2f} at start")
    print(f"software         python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
          f"scipy {scipy.__version__}, wfdb {wfdb.__version__}")

    with tempfile.TemporaryDirectory(prefix="mmmed-ecg-bench-") as tmp:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            # No Hydra run here: give the run-dir interpolations a concrete place.
            fixed = ["encoder=ecg", "model=nano", "logger=csv", f"paths.output_dir={tmp}/run"]
            cfg = compose("train", overrides=[*fixed, *args.overrides])
        torch.manual_seed(cfg.seed)
        configured = OmegaConf.to_container(cfg.ecg_signal.preprocessing, resolve=True)
        configured.pop("_target_")
        folder = Path(tmp) / "records"
        folder.mkdir()
        start = time.perf_counter()
        paths, reports = write_records(folder, args.records)
        megabytes = sum(Path(p + ".dat").stat().st_size for p in paths) / len(paths) / 1e6
        print(f"records          {len(paths)} x 12 leads x {SECONDS} s at {FS} Hz, format 16, {megabytes:.2f} MB each "
              f"(written in {time.perf_counter() - start:.1f} s)")

        # ---- (1) raw: every epoch's work without a cache ---------------------------------------------
        header("(1) raw, per record")
        row("read_wfdb", timed(read_wfdb, paths), note="header checks + wfdb.rdrecord -> mV")
        settings = [
            ("prepare 500 Hz, no filter", {"sampling_rate": 500, "bandpass": None, "notch": None}, "no resampling"),
            ("prepare 100 Hz, no filter (configured)", {"sampling_rate": 100, "bandpass": None, "notch": None},
             "resample_poly 500 -> 100 Hz"),
            ("prepare 500 Hz, band-pass 0.5-40 + notch 50", {"sampling_rate": 500, "bandpass": [0.5, 40], "notch": 50},
             f"order {configured['filter_order']}, Q {configured['notch_quality']:g}, zero-phase"),
        ]
        for stage, changes, note in settings:
            row(stage, timed(preprocessing(configured, **changes).prepare, paths), note=note)

        # ---- (2) cached: built once, then read per item ------------------------------------------------
        pipeline = instantiate(cfg.ecg_signal.preprocessing)  # what train.py's data sets use
        question = cfg.data.dataset.question
        samples = [ECGSample(f"bench/{i}", (p,), question, r, None) for i, (p, r) in enumerate(zip(paths, reports))]
        header(f"(2) cached ({pipeline.sampling_rate:g} Hz, as configured)")
        pooled = ECGSignalCache(Path(tmp) / "cache-pool", workers=workers)
        pool_note = ("spawned process pool" if workers > 1 and len(paths) >= POOL_MIN_RECORDS
                     else "in process" if workers <= 1 else f"in process (< {POOL_MIN_RECORDS} records)")
        row(f"cache build, workers={workers}", clock(lambda: pooled.build(pipeline, paths)), note=pool_note,
            count=len(paths))
        single = ECGSignalCache(Path(tmp) / "cache-single", workers=0)
        row("cache build, in process", clock(lambda: single.build(pipeline, paths)), note="workers=0", count=len(paths))
        row("cache open, already built", clock(lambda: single.build(pipeline, paths)), note="hash file stats + memmap",
            count=len(paths))
        cached = ECGSampleDataset(samples, pipeline, train=True, on_error="raise", cache=single, source="bench")
        fly = ECGSampleDataset(samples, pipeline, train=True, on_error="raise", cache=None, source="bench")
        stats = cached.fit_normalization()  # None unless normalize=dataset; the DataModule does the same
        cached.set_normalization(stats)
        fly.set_normalization(stats)
        order = np.random.default_rng(0).permutation(len(samples)).tolist()
        _ = fly[0], cached[0]  # untimed first items: lazy imports, first page faults
        item_cached = timed(cached.__getitem__, order)
        item_fly = timed(fly.__getitem__, order)
        row("__getitem__, cached (memmap)", item_cached, "items", "random order; crop + z-score")
        row("__getitem__, cache=None", item_fly, "items", f"cached is {item_fly.sum() / item_cached.sum():.0f}x faster")

        # ---- (3) the loader against the training step ---------------------------------------------------
        run = build_run(cfg)
        collate = MultimodalCollator(run.formatter)
        batch_size = cfg.data.batch_size
        loaders = {name: DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0,
                                    collate_fn=collate) for name, dataset in (("cached", cached), ("cache=None", fly))}
        next(iter(loaders["cached"]))  # untimed: the tokenizer's first call
        batches, seconds = {}, {}
        for name, loader in loaders.items():
            batches[name], seconds[name] = timed_batches(loader)
        items = [[cached[i] for i in order[k : k + batch_size]] for k in range(0, len(order) - batch_size + 1, batch_size)]
        collate_seconds = timed(collate, items)

        model = run.module.model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(batch: dict) -> None:
            loss, _ = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["labels"], batch["signals"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        train_batches = [batches["cached"][k % len(batches["cached"])] for k in range(args.warmup + args.steps)]
        for batch in train_batches[: args.warmup]:
            step(batch)
        step_seconds = timed(step, train_batches[args.warmup :])

        llm_dtype = str(next(model.llm.parameters()).dtype).replace("torch.", "")
        tokens = max(b["input_ids"].shape[1] for b in batches["cached"])
        counts = parameter_counts(model)
        print(f"\nmodel            {run.llm.identity}: {counts['params/trainable']:,} of {counts['params/total']:,} "
              f"parameters train")
        header(f"(3) batch {batch_size} x {tokens} tokens, LLM {llm_dtype}")
        row("DataLoader, cached, num_workers 0", seconds["cached"], "batches", "items + collate")
        row("DataLoader, cache=None, num_workers 0", seconds["cache=None"], "batches", "every item read + prepared")
        row("collate only (tokenise, pad, stack)", collate_seconds, "batches", "MultimodalCollator")
        row("training step (fwd + bwd + AdamW)", step_seconds, "steps", "encoder=ecg model=nano")
        # Ratios of the means (throughput); the medians above show how much a busy machine skewed them.
        step_mean = step_seconds.mean()
        print(f"\nloader is {step_mean / seconds['cached'].mean():.0f}x faster than the step (cached, num_workers 0; "
              f"{step_mean / seconds['cache=None'].mean():.0f}x with cache=None); "
              f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
