"""Read one 12-lead ECG from a WFDB record, checked, with leads selected by name.

Every failure names the record and the problem; nothing returns a silently wrong array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import wfdb

from mmmed_datasets.ecg_signal import CANONICAL_LEADS, ECGRecordError, map_leads, repair_nans

__all__ = ["CANONICAL_LEADS", "ECGRecordError", "read_ecg_record"]


def read_ecg_record(
    record: str | Path,
    sampling_rate: int,
    num_samples: int,
    leads: tuple[str, ...] = CANONICAL_LEADS,
) -> np.ndarray:
    """Physical signal in mV, leads in ``leads`` order: (len(leads), num_samples) float32.

    Raises ECGRecordError when files are missing or truncated, the rate or length differs from the
    configuration, lead names are missing or the count is wrong, or samples are NaN.
    """
    record = Path(record)
    header = record.with_suffix(".hea")
    if not header.is_file():
        raise ECGRecordError(record, f"header file {header.name} not found")
    try:
        rec = wfdb.rdrecord(str(record))
    except FileNotFoundError as err:
        raise ECGRecordError(record, f"signal file missing ({err.filename or err})") from err
    except Exception as err:  # wfdb reports truncation and corruption with assorted exception types
        raise ECGRecordError(record, f"unreadable ({type(err).__name__}: {err})") from err

    if rec.fs != sampling_rate:
        raise ECGRecordError(record, f"sampled at {rec.fs} Hz, configuration expects {sampling_rate} Hz")
    signal = rec.p_signal  # (T, C)
    if signal is None or signal.ndim != 2:
        raise ECGRecordError(record, "no physical signal in the record")
    if signal.shape[0] != rec.sig_len:
        raise ECGRecordError(record, f"data holds {signal.shape[0]} samples but the header says {rec.sig_len}")
    if signal.shape[0] != num_samples:
        raise ECGRecordError(
            record, f"{signal.shape[0]} samples ({signal.shape[0] / rec.fs:g} s), expected {num_samples}"
        )
    if len(rec.sig_name) != len(leads):
        raise ECGRecordError(record, f"has {len(rec.sig_name)} signals {rec.sig_name}, expected {len(leads)} leads {list(leads)}")
    out, _ = map_leads(signal.T, rec.sig_name, str(record), leads, missing="error")  # (leads, T)
    out, _ = repair_nans(out, "reject", str(record), leads)
    return out
