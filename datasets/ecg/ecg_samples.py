"""Question/answer samples over ECGs, shared by every ECG source (PTB-XL, MIMIC-IV-ECG, ECG-QA).

A source turns its own layout into ``ECGSample`` rows, each naming one or more record files (an
ECG-QA comparison question carries two ECGs, each spliced at its own ``<ecg>`` tag, in order).
``ECGSampleDataset`` prepares every record once (through the signal cache, or on the fly), applies
the error policy, and serves items

  ``{"signals": {"ecg": [{"signal": (L, T), "lead_mask": (L,)}, ...]}, question, answer, label, id}``.

Error policy (``on_error``): ``raise`` stops at the first bad record or sample with its file and
reason; ``skip`` drops the sample, logs file and reason, and counts it in ``stats`` (the run writes
the counts to its metrics). A sample is dropped when any of its records fails. With the cache,
``stats`` also counts the records that failed for having fewer than ``min_real_leads`` leads, and
``leads_seen``: how many of the split's records that were read (prepared, or failed for too few
leads) store each channel name (``MLII``, ``vx``), which shows at a glance whether a source needs
``lead_aliases``.

With ``eval_crop: multi`` an evaluation split serves each record K times (one window each, ids
``<id>#crop<k>``); the evaluation votes over a record's windows.

The per-record steps (a window, its normalisation statistics, the counts, a picture) are functions here,
shared with the ECG modality plugin (``ecg_modality.py``), so both serve identical inputs.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from mmmed.eval.metrics import CROP_SEPARATOR
from mmmed_datasets.ecg.ecg_cache import ECGSignalCache, PreparedSignals, _prepare_one
from mmmed_datasets.ecg.ecg_preprocess import ECGPreprocessing, PreparedECG
from mmmed_datasets.ecg.ecg_signal import ECGRecordError

log = logging.getLogger(__name__)

MODALITY = "ecg"  # questions mark each ECG with <ecg>
ON_ERROR = ("raise", "skip")
LOGGED_SKIPS = 50  # skips logged one by one; the rest are counted


@dataclass(frozen=True)
class ECGSample:
    """One question about one or more ECG records (WFDB paths without suffix, or ``.dcm`` files)."""

    id: str
    records: tuple[str, ...]
    question: str
    answer: str
    label: str | None


def count_leads_seen(channels: list[tuple[str, ...] | None]) -> dict[str, int]:
    """Stored channel name -> number of records holding it (unreadable records, None, count nowhere)."""
    counts = Counter(name.strip() for names in channels if names is not None for name in dict.fromkeys(names))
    return dict(sorted(counts.items()))


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")


class OnTheFlySignals:
    """Prepared records without a cache, by index: each read and prepared when asked for.

    ``scan`` prepares every record once to find the bad ones, and fills the same per-record counts a
    cache (``PreparedSignals``) holds, so ``record_stats`` reads either.
    """

    def __init__(self, preprocessing: ECGPreprocessing, paths: list[str]) -> None:
        self.preprocessing, self.paths = preprocessing, paths
        self.errors: dict[int, str] = {}
        self.nan_samples = np.zeros(len(paths), dtype=np.int64)  # (N,)
        self.lead_masks = np.zeros((len(paths), len(preprocessing.leads)), dtype=bool)  # (N, L)
        self.channels: list[tuple[str, ...] | None] = [None] * len(paths)
        self.too_few_leads: set[int] = set()

    def scan(self) -> dict[int, str]:
        """Prepare every record once: which ones fail, and why (index -> problem)."""
        for index, path in enumerate(self.paths):
            result = _prepare_one((self.preprocessing, path))  # the cache's own per-record step
            if isinstance(result, tuple):
                self.errors[index], names = result
                if names is not None:
                    self.channels[index] = tuple(names)
                    self.too_few_leads.add(index)
                continue
            self.nan_samples[index], self.lead_masks[index] = result.nan_samples, result.lead_mask
            self.channels[index] = tuple(result.channels)
        return self.errors

    def get(self, index: int) -> PreparedECG:
        return self.preprocessing.prepare(self.paths[index])


def record_stats(signals: PreparedSignals | OnTheFlySignals, used: list[int]) -> dict:
    """The counts a run logs for prepared records: over ``used`` (records, NaN samples, missing leads), and
    over every record of the split (too few leads, leads seen)."""
    return {"records": len(used), "nan_samples": sum(int(signals.nan_samples[i]) for i in used),
            "records_missing_leads": sum(int(not signals.lead_masks[i].all()) for i in used),
            "records_too_few_leads": len(signals.too_few_leads), "leads_seen": count_leads_seen(signals.channels)}


def fit_lead_statistics(preprocessing: ECGPreprocessing, records: Iterable[PreparedECG], source: str) -> dict | None:
    """Per-lead mean and std over every sample of prepared training records (present leads only).

    None unless ``normalize: dataset``. Computed in float64 over the full prepared records.
    """
    if preprocessing.normalize != "dataset":
        return None
    leads = len(preprocessing.leads)
    total, square, count = np.zeros(leads), np.zeros(leads), np.zeros(leads)
    for prepared in records:
        x = prepared.signal.astype(np.float64)  # (L, T)
        mask = prepared.lead_mask
        total[mask] += x[mask].sum(1)
        square[mask] += (x[mask] ** 2).sum(1)
        count[mask] += x.shape[1]
    if (count == 0).any():
        absent = [lead for lead, n in zip(preprocessing.leads, count) if n == 0]
        raise ValueError(f"{source}: lead(s) {absent} are missing in every training record; no statistics")
    mean = total / count
    std = np.sqrt(np.maximum(square / count - mean**2, 0.0))
    return {"leads": list(preprocessing.leads), "mean": mean.tolist(), "std": std.tolist(),
            "settings": preprocessing.prepare_settings()}


def check_normalization(preprocessing: ECGPreprocessing, stats: dict | None) -> None:
    """Statistics (None, or from ``fit_lead_statistics`` / a checkpoint) must be for the pipeline's leads."""
    if stats is not None and list(stats["leads"]) != list(preprocessing.leads):
        raise ValueError(f"normalisation statistics are for leads {stats['leads']}, not {list(preprocessing.leads)}")


def ecg_window(preprocessing: ECGPreprocessing, prepared: PreparedECG, start: int, stats: dict | None) -> dict:
    """The encoder input at ``start``: ``{"signal": (L, T) float32, "lead_mask": (L,) bool}`` tensors, normalised."""
    window = prepared.signal[:, start : start + preprocessing.num_samples]  # (L, T)
    window = preprocessing.normalise(window, prepared.lead_mask, stats)
    return {"signal": torch.from_numpy(np.ascontiguousarray(window)),
            "lead_mask": torch.from_numpy(np.asarray(prepared.lead_mask, dtype=bool).copy())}


def ecg_picture(preprocessing: ECGPreprocessing, prepared: PreparedECG) -> dict:
    """What a picture of a record shows: the signal in millivolts, prepared (resampled, filtered) but not
    normalised, with lead names and mask (drawn by the modality plugin's ``draw``)."""
    return {"kind": "ecg", "signal": prepared.signal, "sampling_rate": preprocessing.sampling_rate,
            "leads": list(preprocessing.leads), "lead_mask": np.asarray(prepared.lead_mask, dtype=bool)}


class ECGSampleDataset(Dataset):
    """Serves prepared ECG windows with their question and answer.

    Args:
        samples: rows from a source.
        preprocessing: the shared ECG pipeline (conf/ecg_signal/).
        train: whether this is the training split (random crops) or an evaluation split.
        on_error: ``raise`` or ``skip`` for bad records and samples.
        cache: the prepared-signal cache, or None to prepare every record on the fly (then, with
            ``on_error: skip``, every record is read once up front to find the bad ones).
        source: the source's name, for logs.
        skipped: failures the source already met and skipped (e.g. empty reports), counted here.
    """

    def __init__(
        self,
        samples: list[ECGSample],
        preprocessing: ECGPreprocessing,
        train: bool,
        on_error: str,
        cache: ECGSignalCache | None,
        source: str,
        skipped: list[ECGRecordError] | None = None,
    ) -> None:
        check_on_error(on_error)
        self.preprocessing = preprocessing
        self.train = train
        self.source = source
        self.normalization: dict | None = None
        skipped = list(skipped or [])
        paths = sorted({path for sample in samples for path in sample.records})
        position = {path: i for i, path in enumerate(paths)}
        if cache is not None:
            self.signals = cache.build(preprocessing, paths)
            errors = self.signals.errors
        else:
            self.signals = OnTheFlySignals(preprocessing, paths)
            errors = self.signals.scan() if on_error == "skip" else {}
        self.samples: list[ECGSample] = []
        self.record_index: list[tuple[int, ...]] = []
        for sample in samples:
            indices = tuple(position[path] for path in sample.records)
            failed = next((i for i in indices if i in errors), None)
            if failed is not None:
                error = ECGRecordError(paths[failed], errors[failed])
                if on_error == "raise":
                    raise error
                skipped.append(error)
                continue
            self.samples.append(sample)
            self.record_index.append(indices)
        for err in skipped[:LOGGED_SKIPS]:
            log.warning("%s: skipped %s: %s", source, err.record, err.problem)
        if len(skipped) > LOGGED_SKIPS:  # at MIMIC-IV-ECG scale, thousands of lines would bury the rest
            log.warning("%s: ... and %d more skipped (the first %d are listed above)", source,
                        len(skipped) - LOGGED_SKIPS, LOGGED_SKIPS)
        used = sorted({i for indices in self.record_index for i in indices})
        self.stats = {"samples": len(self.samples), "skipped": len(skipped)}
        if cache is not None:  # known up front only when every record was prepared
            self.stats.update(record_stats(self.signals, used))
        log.info("%s: %d samples over %d records, %d skipped", source, len(self.samples), len(used), len(skipped))
        if not self.samples:
            raise ValueError(f"{source}: no usable samples ({len(skipped)} skipped)")

    # ---- normalisation with training-split statistics ---------------------------------------
    def fit_normalization(self) -> dict | None:
        """``{"ecg": per-lead mean and std of the prepared training records}`` (``fit_lead_statistics``; keyed by
        modality, as every data set's statistics are); None unless ``normalize: dataset``."""
        used = sorted({i for indices in self.record_index for i in indices})
        stats = fit_lead_statistics(self.preprocessing, (self.signals.get(i) for i in used), self.source)
        return None if stats is None else {MODALITY: stats}

    def set_normalization(self, stats: dict | None) -> None:
        """Use the training split's statistics, keyed by modality (from ``fit_normalization`` or a checkpoint)."""
        mine = (stats or {}).get(MODALITY)
        check_normalization(self.preprocessing, mine)
        self.normalization = mine

    # ---- items -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples) * (1 if self.train else self.preprocessing.eval_crops)

    def item_id(self, index: int) -> str:
        """Item ``index``'s id without loading its signal (self-training maps rationales to items by id)."""
        crops = 1 if self.train else self.preprocessing.eval_crops
        sample_index, crop = divmod(index, crops)
        return self.samples[sample_index].id if crops == 1 else f"{self.samples[sample_index].id}{CROP_SEPARATOR}{crop}"

    def plot_inputs(self, index: int) -> dict:
        """What a picture of item ``index`` shows: its first ECG in millivolts, prepared (resampled,
        filtered) but not normalised, with lead names and mask (drawn by the modality plugin's ``draw``)."""
        sample_index = index // (1 if self.train else self.preprocessing.eval_crops)
        return ecg_picture(self.preprocessing, self.signals.get(self.record_index[sample_index][0]))

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        # The training sampler passes (index, item seed): a crop then depends on (run seed, epoch,
        # position) only, which makes a resumed run draw exactly the crops of an uninterrupted one.
        index, item_seed = index if isinstance(index, tuple) else (index, None)
        crops = 1 if self.train else self.preprocessing.eval_crops
        sample_index, crop = divmod(index, crops)
        sample = self.samples[sample_index]
        if item_seed is None and self.train:  # indexed directly: torch's generator (seed_everything) decides
            item_seed = int(torch.randint(0, 2**31 - 1, ()))
        rng = np.random.default_rng(item_seed if self.train else 0)
        signals = []
        for record in self.record_index[sample_index]:
            prepared = self.signals.get(record)
            start = self.preprocessing.window_starts(prepared.signal.shape[1], self.train, rng)[crop]
            signals.append(ecg_window(self.preprocessing, prepared, start, self.normalization))
        return {
            "id": self.item_id(index),
            "signals": {MODALITY: signals},
            "question": sample.question,
            "answer": sample.answer,
            "label": sample.label,
        }
