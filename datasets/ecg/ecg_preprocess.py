"""The ECG pipeline every data source shares, configured once (conf/ecg_signal/): file -> encoder input.

Order, per record:
  1. read (WFDB any format or multi-segment, or a DICOM waveform) -> physical mV at the stored rate
  2. select leads by name (through ``lead_aliases``) into ``leads`` order; fewer than
     ``min_real_leads`` found is an error; other missing leads: error, or zeros and a lead mask
  3. NaN samples: interpolate, zero or reject (counted)
  4. resample to ``sampling_rate`` (polyphase, anti-aliased)
  5. optional zero-phase band-pass and notch filters, at the new rate
  6. records shorter than a window: error, or zero-pad
  -- steps 1-6 are deterministic and are what the signal cache stores --
  7. window: a random crop for training; centre, start, or several evenly spaced crops for evaluation
  8. normalise: per window (z-score), with per-lead statistics of the training split, or not at all
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmmed_datasets.ecg.ecg_signal import (
    ECGRecordError,
    RawECG,
    bandpass,
    map_leads,
    notch,
    parse_aliases,
    repair_nans,
    resample,
    resolve_channels,
    window_offsets,
    zscore,
)

# bump when steps 1-6 change what they produce for the same settings
# 2: WFDB leads stored with several samples per frame are read at their own rate, not as frame averages
PREPARE_VERSION = 2

log = logging.getLogger(__name__)
_NOTED_CHANNELS: set[str] = set()  # ignored channel names already logged by this process


def read_raw_ecg(path: str | Path) -> RawECG:
    """Read a record by its kind: ``.dcm`` is a DICOM waveform object, anything else a WFDB record."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        from mmmed_datasets.ecg.dicom_ecg import read_dicom_ecg

        return read_dicom_ecg(path)
    from mmmed_datasets.ecg.wfdb_ecg import read_wfdb

    return read_wfdb(path)


# What a checkpoint written before ``lead_aliases`` and ``min_real_leads`` existed (PREPARE_VERSION 1) gets:
# no aliases (it matched stored names only) and at least one real lead (it would have read a record with none
# as twelve masked zero leads, the silent failure those settings end).
LEGACY_LEAD_SETTINGS = {"lead_aliases": {}, "min_real_leads": 1}


def saved_preprocessing(saved: dict) -> "ECGPreprocessing":
    """The pipeline a checkpoint recorded (``ecg_preprocessing``), older checkpoints included."""
    return ECGPreprocessing(**{**LEGACY_LEAD_SETTINGS, **saved})


@dataclass
class PreparedECG:
    """A record after steps 1-6."""

    signal: np.ndarray  # (L, T) float32 at the configured rate, T >= one window
    lead_mask: np.ndarray  # (L,) bool: False where a lead was missing and filled with zeros
    nan_samples: int  # NaN samples found (and repaired) in the stored signal
    channels: tuple[str, ...]  # the record's stored channel names (voltage channels), for the leads-seen count


class ECGPreprocessing:
    """Every setting of the ECG pipeline (see the module docstring for the order).

    Args:
        leads: lead names in the order the encoder sees them (matched case-insensitively).
        lead_aliases: stored channel name -> the lead it holds (``MLII: II``), matched
            case-insensitively; a leading ``-`` on the lead (``"-aVR": "-aVR"``, Cabrera's inverted
            aVR) says the channel holds that lead negated, so it is multiplied by -1. Channels that
            are no configured lead (Frank leads vx, vy, vz, ...) are ignored and logged once.
        min_real_leads: a record with fewer of ``leads`` found (after aliases) is an ECGRecordError
            naming its channels, whatever ``missing_leads`` says (1..len(leads)).
        sampling_rate: the rate (Hz) the encoder sees.
        seconds: window length fed to the encoder.
        missing_leads: ``error``, or ``zero`` (zeros plus ``lead_mask`` False).
        nan_policy: ``interpolate`` (linear in time), ``zero``, or ``reject``.
        short_records: a record shorter than a window: ``error``, or ``pad`` with zeros at the end.
        bandpass: ``[low, high]`` Hz for a zero-phase Butterworth band-pass, or None.
        filter_order: order of that Butterworth filter.
        notch: mains frequency (50 or 60 Hz) to remove with a zero-phase notch, or None.
        notch_quality: the notch's quality factor (centre / bandwidth).
        normalize: ``record`` (z-score per window and lead), ``dataset`` (per-lead mean/std of the
            training split, saved with the run), or ``none`` (mV).
        eval_crop: ``center``, ``start``, or ``multi`` (``eval_crops`` evenly spaced windows, each a sample).
        eval_crops: number of windows per record with ``eval_crop: multi``.
    """

    def __init__(
        self,
        leads: list[str],
        lead_aliases: dict[str, str] | None,
        min_real_leads: int,
        sampling_rate: float,
        seconds: float,
        missing_leads: str,
        nan_policy: str,
        short_records: str,
        bandpass: list[float] | None,
        filter_order: int,
        notch: float | None,
        notch_quality: float,
        normalize: str,
        eval_crop: str,
        eval_crops: int,
    ) -> None:
        choices = {
            "missing_leads": (missing_leads, ("error", "zero")),
            "nan_policy": (nan_policy, ("interpolate", "zero", "reject")),
            "short_records": (short_records, ("error", "pad")),
            "normalize": (normalize, ("record", "dataset", "none")),
            "eval_crop": (eval_crop, ("center", "start", "multi")),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"ecg_signal.{name} must be one of {allowed}, not {value!r}")
        self.leads = tuple(str(lead) for lead in leads)
        if len({lead.lower() for lead in self.leads}) != len(self.leads):
            raise ValueError(f"ecg_signal.leads names a lead twice: {list(self.leads)}")
        self.lead_aliases = {str(k): str(v) for k, v in (lead_aliases or {}).items()}
        try:
            parse_aliases(self.lead_aliases)
        except ValueError as err:
            raise ValueError(f"ecg_signal.lead_aliases: {err}") from err
        # 0 would let a record with none of the leads train as all zeros, the failure this guards against.
        if not 1 <= int(min_real_leads) <= len(self.leads):
            raise ValueError(f"ecg_signal.min_real_leads must lie in 1..{len(self.leads)}, not {min_real_leads}")
        self.min_real_leads = int(min_real_leads)
        self.sampling_rate = float(sampling_rate)
        self.num_samples = int(round(seconds * sampling_rate))
        if self.num_samples < 1:
            raise ValueError(f"ecg_signal.seconds={seconds} at {sampling_rate} Hz gives no samples")
        nyquist = self.sampling_rate / 2
        if bandpass is not None and not (len(bandpass) == 2 and 0 < bandpass[0] < bandpass[1] < nyquist):
            raise ValueError(f"ecg_signal.bandpass={list(bandpass)} must be [low, high] with 0 < low < high < {nyquist:g} Hz")
        if notch is not None and not 0 < notch < nyquist:
            raise ValueError(
                f"ecg_signal.notch={notch} Hz must lie between 0 and the Nyquist frequency ({nyquist:g} Hz) of "
                f"sampling_rate={sampling_rate:g}; above it, resampling already removes the hum: set notch: null"
            )
        if eval_crops < 1:
            raise ValueError(f"ecg_signal.eval_crops must be >= 1, not {eval_crops}")
        self.missing_leads = missing_leads
        self.nan_policy = nan_policy
        self.short_records = short_records
        self.bandpass = None if bandpass is None else (float(bandpass[0]), float(bandpass[1]))
        self.filter_order = int(filter_order)
        self.notch = None if notch is None else float(notch)
        self.notch_quality = float(notch_quality)
        self.normalize = normalize
        self.eval_crop = eval_crop
        self.eval_crops = int(eval_crops) if eval_crop == "multi" else 1

    # ---- steps 1-6: deterministic, cacheable ----------------------------------------------
    def prepare_settings(self) -> dict:
        """Everything steps 1-6 depend on: a change here invalidates cached signals."""
        return {
            "version": PREPARE_VERSION,
            "leads": list(self.leads),
            "lead_aliases": dict(sorted(self.lead_aliases.items())),
            "min_real_leads": self.min_real_leads,
            "sampling_rate": self.sampling_rate,
            "num_samples": self.num_samples,
            "missing_leads": self.missing_leads,
            "nan_policy": self.nan_policy,
            "short_records": self.short_records,
            "bandpass": self.bandpass,
            "filter_order": self.filter_order,
            "notch": self.notch,
            "notch_quality": self.notch_quality,
        }

    def settings_key(self) -> str:
        """A short hash of ``prepare_settings()``."""
        return hashlib.sha256(json.dumps(self.prepare_settings(), sort_keys=True).encode()).hexdigest()[:12]

    def prepare(self, path: str | Path) -> PreparedECG:
        """Steps 1-6 for one record file. Raises ECGRecordError naming the file and the problem."""
        raw = read_raw_ecg(path)
        return self.prepare_raw(raw)

    def prepare_raw(self, raw: RawECG) -> PreparedECG:
        """Steps 2-6 on a signal already read."""
        signal, present = map_leads(raw.signal, raw.lead_names, raw.source, self.leads, self.missing_leads,
                                    self.lead_aliases, self.min_real_leads)  # (L, T)
        self._note_ignored(raw.lead_names)
        if signal.shape[1] == 0:
            raise ECGRecordError(raw.source, "record holds no samples")
        # A missing lead is zeros already; only stored leads can carry NaNs.
        signal, nan_samples = repair_nans(signal, self.nan_policy, raw.source, self.leads)
        signal = resample(signal, raw.fs, self.sampling_rate)
        if self.bandpass is not None:
            signal = bandpass(signal, self.sampling_rate, *self.bandpass, order=self.filter_order)
        if self.notch is not None:
            signal = notch(signal, self.sampling_rate, self.notch, self.notch_quality)
        if signal.shape[1] < self.num_samples:
            seconds = signal.shape[1] / self.sampling_rate
            if self.short_records == "error":
                raise ECGRecordError(
                    raw.source,
                    f"{seconds:g} s long ({signal.shape[1]} samples at {self.sampling_rate:g} Hz), shorter than "
                    f"the {self.num_samples / self.sampling_rate:g} s window (ecg_signal.short_records=pad pads it)",
                )
            signal = np.pad(signal, ((0, 0), (0, self.num_samples - signal.shape[1])))
        signal = np.where(present[:, None], signal, 0.0).astype(np.float32)  # filters leave missing leads at 0
        return PreparedECG(np.ascontiguousarray(signal), present, nan_samples, tuple(raw.lead_names))

    def _note_ignored(self, names: list[str]) -> None:
        """Log, once per name and process, stored channels that are none of the configured leads."""
        wanted = {lead.lower() for lead in self.leads}
        for name, (lead, _) in zip(names, resolve_channels(names, self.lead_aliases)):
            if lead not in wanted and name not in _NOTED_CHANNELS:
                _NOTED_CHANNELS.add(name)
                log.info("ECG channel %r is none of the configured leads %s and is ignored (map it with "
                         "ecg_signal.preprocessing.lead_aliases); the run's leads_seen counts show how often", name,
                         list(self.leads))

    # ---- steps 7-8: per item ----------------------------------------------------------------
    def window_starts(self, length: int, train: bool, rng: np.random.Generator | None) -> list[int]:
        """Window offsets into a prepared record of ``length`` samples: one for training, 1..K for evaluation."""
        if length < self.num_samples:
            raise ValueError(f"prepared record of {length} samples is shorter than a window ({self.num_samples})")
        if train:
            if rng is None:
                raise ValueError("training crops need an rng")
            return [int(rng.integers(0, length - self.num_samples + 1))]
        if self.eval_crop == "start":
            return [0]
        if self.eval_crop == "center":
            return [(length - self.num_samples) // 2]
        return window_offsets(length, self.num_samples, self.eval_crops)

    def normalise(self, window: np.ndarray, lead_mask: np.ndarray, stats: dict | None) -> np.ndarray:
        """Step 8 on one (L, T) window; missing leads stay exactly zero."""
        if self.normalize == "record":
            out = zscore(window)
        elif self.normalize == "dataset":
            if stats is None:
                raise RuntimeError(
                    "ecg_signal.normalize=dataset needs the training split's statistics; the DataModule "
                    "computes them in setup() (or restores them from the checkpoint)"
                )
            out = zscore(window, np.asarray(stats["mean"]), np.asarray(stats["std"]))
        else:
            out = window.astype(np.float32, copy=False)
        return np.where(lead_mask[:, None], out, 0.0).astype(np.float32)
