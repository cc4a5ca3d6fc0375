"""Read an ECG from a WFDB record, checked: every storage format wfdb reads, single- or multi-segment.

The header is checked against the signal files before wfdb reads them, because wfdb reads a file
longer than its header says without complaint, and reports a shorter one with assorted exceptions.
Every failure names the record and the problem; nothing returns a silently wrong array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import wfdb
from wfdb.io._signal import BYTES_PER_SAMPLE, _required_byte_num

from mmmed_datasets.ecg_signal import CANONICAL_LEADS, ECGRecordError, RawECG

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


def read_wfdb(record: str | Path) -> RawECG:
    """Physical signal of a WFDB record (``path/to/name``, with or without ``.hea``), in mV.

    Multi-segment records are joined into one signal (gaps between segments become NaN, which the
    NaN policy then handles); channels whose units are not a voltage are left out. Raises
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
        rec = wfdb.rdrecord(str(record), m2s=True)
    except FileNotFoundError as err:
        raise ECGRecordError(record, f"signal file missing ({err.filename or err})") from err
    except Exception as err:  # truncation and corruption surface with assorted exception types
        raise ECGRecordError(record, f"unreadable ({type(err).__name__}: {err})") from err

    signal = rec.p_signal  # (T, C)
    if signal is None or signal.ndim != 2 or signal.shape[1] == 0:
        raise ECGRecordError(record, "no physical signal in the record")
    if rec.sig_len is not None and signal.shape[0] != rec.sig_len:
        raise ECGRecordError(record, f"data holds {signal.shape[0]} samples but the header says {rec.sig_len}")
    if not rec.fs or rec.fs <= 0:
        raise ECGRecordError(record, f"header gives no valid sampling rate ({rec.fs})")
    # Channels in other units (respiration, blood pressure, ...) cannot be ECG leads; they are left
    # out here, so a mislabelled one shows up as a missing lead instead of a wrongly scaled one.
    keep = [k for k, unit in enumerate(rec.units) if str(unit).strip().lower() in TO_MILLIVOLT]
    scale = np.array([TO_MILLIVOLT[str(rec.units[k]).strip().lower()] for k in keep])
    physical = signal[:, keep].T.astype(np.float64) * scale[:, None]  # (C, T)
    return RawECG(physical, [str(rec.sig_name[k]) for k in keep], float(rec.fs), str(record))
