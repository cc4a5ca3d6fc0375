"""The ECG modality: WFDB records and DICOM ECG waveforms through the shared ECG pipeline (conf/modality/ecg.yaml).

Every file goes through one ``ECGPreprocessing`` (conf/ecg_signal/): prepared once (read, leads by name, NaNs,
resample, filters, short records; cached per split by ``ECGSignalCache``), then windowed and normalised per
item. Inference (:meth:`ECGModality.read`) serves every evaluation window of a record, so several windows
vote exactly as in evaluation; a data set draws one window per item from :meth:`ECGModality.open`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID

from mmmed.model.modality import ModalityPlugin, Signal, _plain
from mmmed_datasets.ecg.ecg_cache import ECGSignalCache
from mmmed_datasets.ecg.ecg_preprocess import LEGACY_LEAD_SETTINGS, ECGPreprocessing
from mmmed_datasets.ecg.ecg_samples import (
    OnTheFlySignals,
    check_normalization,
    ecg_picture,
    ecg_window,
    fit_lead_statistics,
    record_stats,
)
from mmmed_datasets.ecg.ecg_signal import ECGRecordError

DICM_OFFSET = 128  # a DICOM file: 128-byte preamble, then "DICM", then the file meta header (PS3.10 7.1)
# 12-lead, General and Ambulatory ECG Waveform Storage: the SOP classes read_dicom_ecg reads as an ECG.
ECG_WAVEFORM_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.9.1.1", "1.2.840.10008.5.1.4.1.1.9.1.2",
                                  "1.2.840.10008.5.1.4.1.1.9.1.3"})
WFDB_SUFFIXES = (".hea", ".dat")


def dicom_sop_class(path: str | Path) -> UID | None:
    """A DICOM file's SOP class from its file meta header (no pixels or waveforms read); None when the file
    is no DICOM file (no ``DICM`` after the preamble), unreadable, or names no SOP class."""
    try:
        with open(path, "rb") as handle:
            if handle.read(DICM_OFFSET + 4)[DICM_OFFSET:] != b"DICM":
                return None
        uid = read_file_meta_info(path).get("MediaStorageSOPClassUID")
        if not uid:  # a meta header without it (not standard): the dataset's own SOPClassUID, large values skipped
            ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size=1024, specific_tags=["SOPClassUID"])
            uid = ds.get("SOPClassUID")
    except (OSError, InvalidDicomError, ValueError, EOFError, KeyError, TypeError, AttributeError):
        return None  # claims() must never raise: a damaged header is simply not claimed
    return UID(str(uid)) if uid else None


def preprocessing_kwargs(pipeline: ECGPreprocessing) -> dict[str, Any]:
    """The constructor arguments (with ``_target_``) that rebuild ``pipeline``: JSON-able."""
    return {
        "_target_": f"{ECGPreprocessing.__module__}.{ECGPreprocessing.__qualname__}",
        "leads": list(pipeline.leads),
        "lead_aliases": dict(pipeline.lead_aliases),
        "min_real_leads": pipeline.min_real_leads,
        "sampling_rate": pipeline.sampling_rate,
        "seconds": pipeline.num_samples / pipeline.sampling_rate,  # round(seconds * rate) gives num_samples back
        "missing_leads": pipeline.missing_leads,
        "nan_policy": pipeline.nan_policy,
        "short_records": pipeline.short_records,
        "bandpass": None if pipeline.bandpass is None else list(pipeline.bandpass),
        "filter_order": pipeline.filter_order,
        "notch": pipeline.notch,
        "notch_quality": pipeline.notch_quality,
        "normalize": pipeline.normalize,
        "eval_crop": pipeline.eval_crop,
        "eval_crops": pipeline.eval_crops,
    }


def construct(node: Any, cls: type, defaults: Mapping | None = None) -> Any:
    """``cls`` from a Hydra node or plain dict (``_target_`` absent or naming ``cls``), an instance as-is, None as None.

    Only ``cls`` itself is built: a node from an exported model's JSON never imports what it names.
    """
    if node is None or isinstance(node, cls):
        return node
    kwargs = _plain(node)
    target = kwargs.pop("_target_", None)
    expected = f"{cls.__module__}.{cls.__qualname__}"
    if target not in (None, expected):
        raise ValueError(f"expected a {expected} node, not _target_: {target}")
    return cls(**{**(defaults or {}), **kwargs})


class ECGSignals:
    """An ECG :class:`~mmmed.model.modality.SignalSource`: a split's records prepared once (cached, or scanned on the fly).

    Records are kept in sorted path order, as ``ECGSampleDataset`` keeps them, so both use one cache folder.
    ``errors``: path -> problem; ``stats``: ``records`` (prepared), ``nan_samples`` and ``records_missing_leads``
    over those, ``records_too_few_leads`` and ``leads_seen`` (stored channel name -> records) over all.
    ``eval_views``: evaluation windows per record (``get(..., crop=k)`` for k < eval_views).
    """

    def __init__(self, preprocessing: ECGPreprocessing, paths: list[str], cache: ECGSignalCache | None,
                 source: str) -> None:
        self.preprocessing = preprocessing
        self.source = source
        self.paths = sorted(dict.fromkeys(str(path) for path in paths))
        self.index = {path: i for i, path in enumerate(self.paths)}
        if cache is not None:
            self.signals = cache.build(preprocessing, self.paths)
        else:
            self.signals = OnTheFlySignals(preprocessing, self.paths)
            self.signals.scan()  # every record read once: the bad ones are known up front, as with the cache
        failed = self.signals.errors
        self.errors = {self.paths[i]: problem for i, problem in sorted(failed.items())}
        self.prepared = [i for i in range(len(self.paths)) if i not in failed]
        self.stats = record_stats(self.signals, self.prepared)
        self.eval_views = preprocessing.eval_crops
        self.normalization: dict | None = None

    def get(self, path: str, train: bool, rng: np.random.Generator | None, crop: int = 0) -> Signal:
        """One normalised window of ``path``: a random crop from ``rng`` when ``train``, else eval window ``crop``."""
        index = self.index.get(str(path))
        if index is None:
            raise KeyError(f"{self.source}: {path} is not among the opened records")
        if index in self.signals.errors:
            raise ECGRecordError(path, self.signals.errors[index])
        prepared = self.signals.get(index)
        starts = self.preprocessing.window_starts(prepared.signal.shape[1], train, rng)
        return ecg_window(self.preprocessing, prepared, starts[0 if train else crop], self.normalization)

    def fit_normalization(self) -> dict | None:
        """Per-lead mean and std over every prepared record (``normalize: dataset``), else None."""
        return fit_lead_statistics(self.preprocessing, (self.signals.get(i) for i in self.prepared), self.source)

    def set_normalization(self, stats: dict | None) -> None:
        """Use the training split's statistics (from ``fit_normalization`` or a checkpoint)."""
        check_normalization(self.preprocessing, stats)
        self.normalization = stats


class ECGModality(ModalityPlugin):
    """12-lead ECGs from WFDB records (any format, multi-segment) or DICOM ECG waveform objects.

    Args:
        name, description, trainable, net: see :class:`~mmmed.model.modality.ModalityPlugin`.
        preprocessing: the ECG pipeline: an ``ECGPreprocessing`` node (``ecg_signal.preprocessing``), its
            keyword arguments as a checkpoint saved them (older ones without the lead settings included), or
            the object itself.
        cache: the prepared-signal cache: an ``ECGSignalCache`` node or object, or None to prepare on the fly.
    """

    def __init__(self, name: str, description: str, trainable: bool, net: Mapping, preprocessing: Any,
                 cache: Any = None, resolve: Callable[[str], Callable[..., Any]] | None = None) -> None:
        super().__init__(name, description, trainable, net, resolve)
        self.preprocessing: ECGPreprocessing = construct(preprocessing, ECGPreprocessing, LEGACY_LEAD_SETTINGS)
        self.cache: ECGSignalCache | None = construct(cache, ECGSignalCache)

    def claims(self, path: str | Path) -> bool:
        """A WFDB record (its name, ``.hea`` or ``.dat``, with the header present) or a ``.dcm`` ECG waveform object."""
        path = Path(path)
        if path.suffix.lower() == ".dcm":  # read_raw_ecg reads .dcm files as DICOM, anything else as WFDB
            return dicom_sop_class(path) in ECG_WAVEFORM_CLASSES
        if path.suffix in WFDB_SUFFIXES:
            return path.with_suffix(".hea").is_file()
        return path.parent.joinpath(f"{path.name}.hea").is_file()

    def read(self, path: str | Path, normalization: dict | None = None) -> list[Signal]:
        """Every evaluation window of the record: ``{"signal": (L, T) float32, "lead_mask": (L,) bool}`` each."""
        check_normalization(self.preprocessing, normalization)
        prepared = self.preprocessing.prepare(path)  # (L, T_record) at the training rate, filtered
        starts = self.preprocessing.window_starts(prepared.signal.shape[1], train=False, rng=None)
        return [ecg_window(self.preprocessing, prepared, start, normalization) for start in starts]

    def open(self, paths: list[str], train: bool) -> ECGSignals:
        """The records prepared through the cache (or on the fly); ``train`` changes nothing here: ``get`` decides."""
        return ECGSignals(self.preprocessing, paths, self.cache, self.name)

    def picture(self, path: str | Path) -> dict[str, Any]:
        """The record in millivolts as prepared (before windowing and normalising), with leads and lead mask."""
        return ecg_picture(self.preprocessing, self.preprocessing.prepare(path))

    def draw(self, inputs: dict[str, Any], path: str | Path, *, question: str, reference: str, answer: str) -> Path:
        """The 12-lead grid of ``inputs`` (from :meth:`picture`) with the question and answers, as a PNG."""
        from mmmed_datasets.ecg.ecg_plot import plot_ecg  # matplotlib only when drawing

        return plot_ecg(inputs["signal"], inputs["sampling_rate"], inputs["leads"], question=question,
                        reference=reference, answer=answer, path=path, lead_mask=inputs.get("lead_mask"))

    def settings(self) -> dict[str, Any]:
        """The pipeline's arguments; no cache (inference prepares each file on its own)."""
        return {"preprocessing": preprocessing_kwargs(self.preprocessing), "cache": None}

    @classmethod
    def config_problems(cls, node: dict[str, Any], where: str) -> list[str]:
        """The encoder's ``in_leads`` equals the number of leads the pipeline selects."""
        problems = super().config_problems(node, where)
        in_leads, leads = (node.get("net") or {}).get("in_leads"), (node.get("preprocessing") or {}).get("leads")
        if in_leads is not None and leads is not None and in_leads != len(leads):
            problems.append(f"{where}.net.in_leads={in_leads} but ecg_signal.preprocessing.leads lists {len(leads)} "
                            f"leads ({', '.join(map(str, leads))}): set {where}.net.in_leads={len(leads)}, or list "
                            f"{in_leads} leads.")
        return problems

    @classmethod
    def legacy_settings(cls, saved: dict[str, Any]) -> dict[str, Any]:
        """mmmed 0.1 stored the pipeline's arguments as ``ecg_preprocessing`` (before lead aliases existed: the
        constructor fills those with ``LEGACY_LEAD_SETTINGS``)."""
        return {"preprocessing": dict(saved["ecg_preprocessing"]), "cache": None}
