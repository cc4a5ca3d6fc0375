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
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from mmmed.metrics import CROP_SEPARATOR
from mmmed_datasets.ecg_cache import ECGSignalCache
from mmmed_datasets.ecg_preprocess import ECGPreprocessing, PreparedECG
from mmmed_datasets.ecg_signal import ECGRecordError

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


class _OnTheFly:
    """Prepared records without a cache: each read and prepared when asked for."""

    def __init__(self, preprocessing: ECGPreprocessing, paths: list[str]) -> None:
        self.preprocessing, self.paths = preprocessing, paths

    def get(self, index: int) -> PreparedECG:
        return self.preprocessing.prepare(self.paths[index])


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
            self.signals = _OnTheFly(preprocessing, paths)
            errors = self._scan(paths) if on_error == "skip" else {}
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
        nan_samples = sum(int(self.signals.nan_samples[i]) for i in used) if cache is not None else 0
        missing = sum(int(not self.signals.lead_masks[i].all()) for i in used) if cache is not None else 0
        self.stats = {"samples": len(self.samples), "skipped": len(skipped)}
        if cache is not None:  # known up front only when every record was prepared
            self.stats.update(records=len(used), nan_samples=nan_samples, records_missing_leads=missing,
                              records_too_few_leads=len(self.signals.too_few_leads),
                              leads_seen=count_leads_seen(self.signals.channels))
        log.info("%s: %d samples over %d records, %d skipped", source, len(self.samples), len(used), len(skipped))
        if not self.samples:
            raise ValueError(f"{source}: no usable samples ({len(skipped)} skipped)")

    def _scan(self, paths: list[str]) -> dict[int, str]:
        """Prepare every record once (no cache, skip policy): which ones fail, and why."""
        errors = {}
        for i, path in enumerate(paths):
            try:
                self.preprocessing.prepare(path)
            except ECGRecordError as err:
                errors[i] = err.problem
        return errors

    # ---- normalisation with training-split statistics ---------------------------------------
    def fit_normalization(self) -> dict | None:
        """Per-lead mean and std over every sample of the prepared training records (present leads only).

        None unless ``normalize: dataset``. Computed in float64 over the full prepared records.
        """
        if self.preprocessing.normalize != "dataset":
            return None
        leads = len(self.preprocessing.leads)
        total, square, count = np.zeros(leads), np.zeros(leads), np.zeros(leads)
        for i in sorted({i for indices in self.record_index for i in indices}):
            prepared = self.signals.get(i)
            x = prepared.signal.astype(np.float64)  # (L, T)
            mask = prepared.lead_mask
            total[mask] += x[mask].sum(1)
            square[mask] += (x[mask] ** 2).sum(1)
            count[mask] += x.shape[1]
        if (count == 0).any():
            absent = [lead for lead, n in zip(self.preprocessing.leads, count) if n == 0]
            raise ValueError(f"{self.source}: lead(s) {absent} are missing in every training record; no statistics")
        mean = total / count
        std = np.sqrt(np.maximum(square / count - mean**2, 0.0))
        return {"leads": list(self.preprocessing.leads), "mean": mean.tolist(), "std": std.tolist(),
                "settings": self.preprocessing.prepare_settings()}

    def set_normalization(self, stats: dict | None) -> None:
        """Use the training split's statistics (from ``fit_normalization`` or a checkpoint)."""
        if stats is not None and list(stats["leads"]) != list(self.preprocessing.leads):
            raise ValueError(f"normalisation statistics are for leads {stats['leads']}, not {list(self.preprocessing.leads)}")
        self.normalization = stats

    # ---- items -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples) * (1 if self.train else self.preprocessing.eval_crops)

    def plot_inputs(self, index: int) -> dict:
        """What a picture of item ``index`` shows: its first ECG in millivolts, prepared (resampled,
        filtered) but not normalised, with lead names and mask (``mmmed.plots.plot_sample``)."""
        sample_index = index // (1 if self.train else self.preprocessing.eval_crops)
        prepared = self.signals.get(self.record_index[sample_index][0])
        return {"kind": "ecg", "signal": prepared.signal, "sampling_rate": self.preprocessing.sampling_rate,
                "leads": list(self.preprocessing.leads), "lead_mask": np.asarray(prepared.lead_mask, dtype=bool)}

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
            window = prepared.signal[:, start : start + self.preprocessing.num_samples]  # (L, T)
            window = self.preprocessing.normalise(window, prepared.lead_mask, self.normalization)
            signals.append({"signal": torch.from_numpy(np.ascontiguousarray(window)),
                            "lead_mask": torch.from_numpy(np.asarray(prepared.lead_mask, dtype=bool).copy())})
        return {
            "id": sample.id if crops == 1 else f"{sample.id}{CROP_SEPARATOR}{crop}",
            "signals": {MODALITY: signals},
            "question": sample.question,
            "answer": sample.answer,
            "label": sample.label,
        }
