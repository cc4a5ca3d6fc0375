"""Read an ECG from a WFDB record, checked: every storage format wfdb reads, single- or multi-segment.

The header is checked against the signal files before wfdb reads them, because wfdb reads a file
longer than its header says without complaint, and reports a shorter one with assorted exceptions.
Every failure names the record and the problem; nothing returns a silently wrong array.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import wfdb
from scipy.signal import resample_poly
from wfdb.io._signal import BYTES_PER_SAMPLE, _required_byte_num

from mmmed_datasets.ecg.ecg_signal import CANONICAL_LEADS, ECGRecordError, RawECG

__all__ = ["CANONICAL_LEADS", "ECGRecordError", "read_wfdb"]

# Physical units WFDB headers use for ECG channels, as a factor to millivolts.
TO_MILLIVOLT = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}
COMPRESSED_FORMATS = {"508", "516", "524"}  # FLAC: no fixed size per sample


def _check_signal_files(header, folder: Path, record: Path) -> None:
    """Every signal file exists and its size matches what the header's signals, length and format need."""
    if getattr(header, "seg_name", None) is not None:  # multi-segment: check each stored segment
        for name, length in zip(header.seg_name, header.seg_len):
            if name == "~" or length == 0:  # a gap, or the layout header of a variable-layout record
                continue
            if not (folder / f"{name}.hea").is_file():
                raise ECGRecordError(record, f"segment header {name}.hea not found")
            _check_signal_files(wfdb.rdheader(str(folder / name)), folder, record)
        return
    if header.sig_len is None or header.n_sig == 0:
        return
    files: dict[str, list[int]] = {}
    for k, file_name in enumerate(header.file_name):
        files.setdefault(file_name, []).append(k)
    for file_name, channels in files.items():
        path = folder / file_name
        if not path.is_file():
            raise ECGRecordError(record, f"signal file missing ({path})")
        fmts = {header.fmt[k] for k in channels}
        if len(fmts) != 1 or next(iter(fmts)) in COMPRESSED_FORMATS:
            continue
        fmt = next(iter(fmts))
        if fmt not in BYTES_PER_SAMPLE:
            raise ECGRecordError(record, f"unsupported WFDB storage format {fmt}")
        samples = header.sig_len * sum(header.samps_per_frame[k] or 1 for k in channels)
        offset = int(header.byte_offset[channels[0]] or 0)
        low = offset + _required_byte_num("read", fmt, samples)
        high = offset + _required_byte_num("write", fmt, samples)
        size = path.stat().st_size
        if not low <= size <= high:
            raise ECGRecordError(
                record,
                f"signal file {path.name} holds {size} bytes but the header's {len(channels)} signal(s) x "
                f"{header.sig_len} samples in format {fmt} need {low} bytes (truncated file, or a header whose "
                f"length or channel count disagrees with the data)",
            )


def _to_common_rate(channels: list[np.ndarray], spf: list[int], frames: int) -> np.ndarray:
    """Expanded channels (channel k: ``frames * spf[k]`` samples) -> (C, frames * max(spf)) at the highest rate.

    Polyphase resampling by the exact ratio max(spf) / spf[k] (integers, so no rate is rounded), with
    the ends extended along their trend (``padtype="line"``) rather than by zeros, which would ring. NaN
    samples (segment gaps) are bridged linearly for the filter only, then put back as NaN at every
    output sample next to a stored NaN, for the NaN policy to count and handle.
    """
    top = max(spf)
    out = np.empty((len(channels), frames * top))  # (C, T) at fs * max(spf)
    for k, (values, n) in enumerate(zip(channels, spf)):
        values = np.asarray(values, dtype=np.float64)  # (frames * n,)
        bad = np.isnan(values)
        if n == top or bad.all():
            out[k] = values if n == top else np.nan
            continue
        if bad.any():
            time = np.arange(len(values))
            values = np.where(bad, np.interp(time, time[~bad], values[~bad]), values)
        gcd = math.gcd(top, n)
        up, down = top // gcd, n // gcd
        out[k] = resample_poly(values, up, down, padtype="line")[: frames * top]  # exactly frames * top samples
        if bad.any():  # output sample j lies at input position j * down / up, between two stored samples
            position = np.arange(frames * top) * down / up
            below = np.floor(position).astype(int)
            above = np.minimum(np.ceil(position).astype(int), len(bad) - 1)
            out[k, bad[below] | bad[above]] = np.nan
    return out


def read_wfdb(record: str | Path) -> RawECG:
    """Physical signal of a WFDB record (``path/to/name``, with or without ``.hea``), in mV, at its true rate.

    Frames are read expanded (``smooth_frames=False``): a lead stored with several samples per frame
    keeps its own rate (frame rate x samples per frame) instead of wfdb's frame averages, and every
    lead is brought to the highest of those rates (see ``_to_common_rate``), which ``RawECG.fs``
    reports. Multi-segment records are joined into one signal (gaps between segments become NaN,
    which the NaN policy then handles); channels whose units are not a voltage are left out. Raises
    ECGRecordError for a missing or truncated file or a header that disagrees with its data.
    """
    record = Path(record)
    if record.suffix in (".hea", ".dat"):
        record = record.with_suffix("")
    header_path = record.parent / f"{record.name}.hea"
    if not header_path.is_file():
        raise ECGRecordError(record, f"header file {header_path.name} not found")
    try:
        header = wfdb.rdheader(str(record))
    except Exception as err:  # wfdb raises assorted types for malformed headers
        raise ECGRecordError(record, f"unreadable header ({type(err).__name__}: {err})") from err
    _check_signal_files(header, record.parent, record)
    try:
        # smooth_frames=False: wfdb's default averages each frame's samples down to the frame rate.
        # For multi-segment records m2s joins the segments' expanded signals (NaN in gaps).
        rec = wfdb.rdrecord(str(record), m2s=True, smooth_frames=False)
    except FileNotFoundError as err:
        raise ECGRecordError(record, f"signal file missing ({err.filename or err})") from err
    except Exception as err:  # truncation and corruption surface with assorted exception types
        raise ECGRecordError(record, f"unreadable ({type(err).__name__}: {err})") from err

    channels = rec.e_p_signal  # list of C arrays; channel k holds sig_len * samps_per_frame[k] samples
    if not channels:
        raise ECGRecordError(record, "no physical signal in the record")
    if not rec.fs or rec.fs <= 0:
        raise ECGRecordError(record, f"header gives no valid sampling rate ({rec.fs})")
    spf = [int(n or 1) for n in rec.samps_per_frame]
    frames = len(channels[0]) // spf[0]
    for k, values in enumerate(channels):
        if np.ndim(values) != 1 or len(values) != frames * spf[k]:
            raise ECGRecordError(record, f"channel {rec.sig_name[k]} holds {np.shape(values)} samples, not "
                                         f"{frames} frames x {spf[k]} samples per frame")
    if rec.sig_len is not None and frames != rec.sig_len:
        raise ECGRecordError(record, f"data holds {frames} samples but the header says {rec.sig_len}")
    # Channels in other units (respiration, blood pressure, ...) cannot be ECG leads; they are left
    # out here, so a mislabelled one shows up as a missing lead instead of a wrongly scaled one.
    keep = [k for k, unit in enumerate(rec.units) if str(unit).strip().lower() in TO_MILLIVOLT]
    if not keep:
        raise ECGRecordError(record, f"no voltage channel among {list(rec.sig_name)} (units {list(rec.units)})")
    scale = np.array([TO_MILLIVOLT[str(rec.units[k]).strip().lower()] for k in keep])
    physical = _to_common_rate([channels[k] for k in keep], [spf[k] for k in keep], frames) * scale[:, None]  # (C, T)
    fs = float(rec.fs) * max(spf[k] for k in keep)
    return RawECG(physical, [str(rec.sig_name[k]) for k in keep], fs, str(record))
