"""Pure functions that bring an ECG as stored into the shape an encoder expects.

Lead selection by name, NaN handling, resampling, filtering, window placement and z-scoring, each
with an explicit policy and an error that names the record. ``ecg_preprocess.ECGPreprocessing``
chains them; nothing here touches files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy.signal import butter, filtfilt, iirnotch, resample_poly, sosfiltfilt

# The canonical order mmmed feeds encoders (PTB-XL's order, with standard capitalisation).
CANONICAL_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


@dataclass
class RawECG:
    """An ECG as a reader found it: physical values in mV, the stored channel names, the stored rate."""

    signal: np.ndarray  # (C, T) float64, mV
    lead_names: list[str]
    fs: float
    source: str  # the file it came from, for messages


class ECGRecordError(ValueError):
    """An ECG record that cannot be read as the signal the configuration asks for."""

    def __init__(self, record: str, problem: str) -> None:
        super().__init__(f"ECG record {record}: {problem}")
        self.record = str(record)
        self.problem = problem


class TooFewLeadsError(ECGRecordError):
    """A record with fewer of the configured leads than ``min_real_leads``; ``channels`` are its stored names."""

    def __init__(self, record: str, problem: str, channels: list[str]) -> None:
        super().__init__(record, problem)
        self.channels = list(channels)


def parse_aliases(aliases: Mapping[str, str] | None) -> dict[str, tuple[str, float]]:
    """Check ``lead_aliases`` (stored channel name -> ``[-]lead``) and key it by the stripped, lower-case name.

    Returns ``{stored name lowered: (lead lowered, sign)}``. A leading ``-`` on the lead says the
    channel holds that lead negated (Cabrera's ``-aVR``), so reading it multiplies by -1.
    """
    parsed: dict[str, tuple[str, float]] = {}
    for stored, target in (aliases or {}).items():
        key, target = str(stored).strip().lower(), str(target).strip()
        lead = target[1:].strip() if target.startswith("-") else target
        if not key or not lead:
            raise ValueError(f"lead alias {stored!r}: {target!r} needs a channel name and a lead name")
        if key in parsed:
            raise ValueError(f"lead alias {stored!r} is given twice (aliases match case-insensitively)")
        parsed[key] = (lead.lower(), -1.0 if target.startswith("-") else 1.0)
    return parsed


def resolve_channels(names: list[str], aliases: Mapping[str, str] | None = None) -> list[tuple[str, float]]:
    """Which lead each stored channel holds: ``(lead name lowered, sign)``, through ``aliases`` first.

    A name without an alias stands for itself (case-insensitive, whitespace stripped), sign +1.
    """
    parsed = parse_aliases(aliases)
    return [parsed.get(name.strip().lower(), (name.strip().lower(), 1.0)) for name in names]


def map_leads(
    signal: np.ndarray,
    names: list[str],
    record: str,
    leads: tuple[str, ...] = CANONICAL_LEADS,
    missing: str = "error",
    aliases: Mapping[str, str] | None = None,
    min_present: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Select ``leads`` by name, case-insensitively, from (C, T); channels not asked for are dropped.

    ``aliases`` maps stored channel names to leads (``MLII: II``; ``-aVR: -aVR`` negates a Cabrera
    channel back to aVR). Returns ``(signal (len(leads), T), present (len(leads),) bool)``. Fewer
    than ``min_present`` leads found raises, whatever ``missing`` says; otherwise with
    ``missing="zero"`` an absent lead becomes zeros and ``present`` says so, with ``"error"`` it raises.
    """
    if missing not in ("error", "zero"):
        raise ValueError(f"missing must be 'error' or 'zero', not {missing!r}")
    if signal.ndim != 2 or signal.shape[0] != len(names):
        raise ECGRecordError(record, f"signal has shape {signal.shape} but {len(names)} channel names")
    resolved = resolve_channels(names, aliases)
    lowered = [lead for lead, _ in resolved]
    duplicates = {name for name in lowered if lowered.count(name) > 1 and name in {lead.lower() for lead in leads}}
    if duplicates:
        raise ECGRecordError(record, f"lead name(s) {sorted(duplicates)} appear more than once in {names}")
    out = np.zeros((len(leads), signal.shape[1]), dtype=np.float32)
    present = np.zeros(len(leads), dtype=bool)
    for i, lead in enumerate(leads):
        if lead.lower() in lowered:
            k = lowered.index(lead.lower())
            out[i] = resolved[k][1] * signal[k]
            present[i] = True
    if present.sum() < min_present:
        # Without this, a record whose channels all have other names (MLII, vx) trains as zeros.
        raise TooFewLeadsError(
            record,
            f"{int(present.sum())} of the {len(leads)} leads found (min_real_leads={min_present}); its channels "
            f"are {list(names)}; map them with ecg_signal.preprocessing.lead_aliases",
            channels=list(names),
        )
    if missing == "error" and not present.all():
        absent = [lead for lead, ok in zip(leads, present) if not ok]
        raise ECGRecordError(record, f"lead(s) {absent} not found among {names}")
    return out, present


def resample(signal: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Polyphase resampling along time, (C, T) -> (C, round(T * fs_out / fs_in)), anti-aliased."""
    if fs_in <= 0 or fs_out <= 0:
        raise ValueError(f"sampling rates must be positive, got {fs_in} -> {fs_out}")
    if fs_in == fs_out:
        return signal.astype(np.float32, copy=False)
    ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
    out = resample_poly(signal.astype(np.float64), ratio.numerator, ratio.denominator, axis=-1)
    return out.astype(np.float32)


def bandpass(signal: np.ndarray, fs: float, low: float, high: float, order: int) -> np.ndarray:
    """Zero-phase Butterworth band-pass (forward-backward, so no delay) along time: (C, T) -> (C, T)."""
    if not 0 < low < high < fs / 2:
        raise ValueError(f"band-pass {low}-{high} Hz needs 0 < low < high < Nyquist ({fs / 2:g} Hz)")
    sos = butter(order, [low, high], btype="bandpass", fs=fs, output="sos")
    return sosfiltfilt(sos, signal.astype(np.float64), axis=-1).astype(np.float32)


def notch(signal: np.ndarray, fs: float, freq: float, quality: float) -> np.ndarray:
    """Zero-phase notch at ``freq`` (mains hum, 50 or 60 Hz) with quality factor ``quality``: (C, T) -> (C, T)."""
    if not 0 < freq < fs / 2:
        raise ValueError(f"notch at {freq} Hz needs 0 < freq < Nyquist ({fs / 2:g} Hz)")
    b, a = iirnotch(freq, quality, fs=fs)
    return filtfilt(b, a, signal.astype(np.float64), axis=-1).astype(np.float32)


def window_offsets(total: int, length: int, count: int) -> list[int]:
    """``count`` evenly spaced window starts covering a record of ``total`` samples (first and last flush)."""
    if count < 1 or total < length:
        raise ValueError(f"cannot place {count} windows of {length} samples in {total}")
    if count == 1:
        return [(total - length) // 2]
    return [round(k * (total - length) / (count - 1)) for k in range(count)]


def zscore(signal: np.ndarray, mean: np.ndarray | None = None, std: np.ndarray | None = None) -> np.ndarray:
    """Standardise each lead of (C, T) by its own mean/std, or by given per-lead (C,) statistics.

    Per record, a lead with no spread (a lost electrode at a DC offset) becomes exactly zero:
    dividing its float rounding residue by a tiny floor would invent a signal.
    """
    if mean is None or std is None:
        mean, std = signal.mean(-1, keepdims=True), signal.std(-1, keepdims=True)
        return np.where(std > 1e-6, (signal - mean) / np.maximum(std, 1e-6), 0.0).astype(np.float32)
    mean, std = np.asarray(mean, dtype=np.float64)[:, None], np.asarray(std, dtype=np.float64)[:, None]
    return ((signal - mean) / np.maximum(std, 1e-6)).astype(np.float32)


def repair_nans(
    signal: np.ndarray, policy: str, record: str, lead_names: tuple[str, ...] = CANONICAL_LEADS
) -> tuple[np.ndarray, int]:
    """Handle NaN samples in (C, T): ``interpolate`` (linear in time), ``zero``, or ``reject``.

    Returns ``(signal, number of NaN samples found)``. A lead that is entirely NaN cannot be
    interpolated and raises under every policy but ``zero``.
    """
    if policy not in ("interpolate", "zero", "reject"):
        raise ValueError(f"policy must be 'interpolate', 'zero' or 'reject', not {policy!r}")
    bad = np.isnan(signal)
    count = int(bad.sum())
    if count == 0:
        return signal, 0
    if policy == "reject":
        worst = lead_names[int(bad.sum(-1).argmax())]
        raise ECGRecordError(record, f"{count} NaN samples (most in lead {worst})")
    if policy == "zero":
        return np.where(bad, 0.0, signal).astype(signal.dtype), count
    out = signal.copy()
    time = np.arange(signal.shape[-1])
    for lead in range(signal.shape[0]):
        if bad[lead].all():
            raise ECGRecordError(record, f"lead {lead_names[lead]} is entirely NaN; nothing to interpolate from")
        if bad[lead].any():
            out[lead, bad[lead]] = np.interp(time[bad[lead]], time[~bad[lead]], signal[lead, ~bad[lead]])
    return out, count
