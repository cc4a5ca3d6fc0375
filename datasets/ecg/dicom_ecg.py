"""Read an ECG from a DICOM waveform object (12-lead ECG or General ECG Waveform Storage), in mV.

A waveform object holds one or more multiplex groups. Cardiographs typically store the full
recording (label ``RHYTHM``, originality ``ORIGINAL``) and a ``MEDIAN BEAT`` group: one averaged
beat of ~1.2 s computed from the rhythm. The encoder must see the recording itself, so the reader
takes the ``RHYTHM`` group, else the first ``ORIGINAL`` group, else the first group, and never a
median beat. Lead names come from each channel's source code (MDC or SCP-ECG), else its meaning.
Every failure is an ECGRecordError naming the file and the problem; header values that identify
the patient never appear in messages.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.waveforms.numpy_handler import WAVEFORM_DTYPES

from mmmed_datasets.ecg.ecg_signal import ECGRecordError, RawECG

# UCUM unit codes (case-sensitive: "MV" would be megavolt) as a factor to millivolts.
TO_MILLIVOLT = {"V": 1e3, "mV": 1.0, "uV": 1e-3, "nV": 1e-6}
# Lead numbers shared by ISO/IEEE 11073-10101 MDC_ECG_LEAD_* ("2:N", DICOM CID 3001) and SCP-ECG
# ("5.6.3-9-N"); checked against pydicom's CID 3001 table (pydicom/sr/_concepts_dict.py).
LEAD_NUMBERS = {1: "I", 2: "II", 61: "III", 62: "aVR", 63: "aVL", 64: "aVF",
                3: "V1", 4: "V2", 5: "V3", 6: "V4", 7: "V5", 8: "V6"}  # fmt: skip
CODE_PREFIXES = {"MDC": "2:", "SCPECG": "5.6.3-9-"}
COMPANDED = ("MB", "AB")  # mu-law / A-law: pydicom returns the 8-bit codes without expanding them


def lead_name(channel: Dataset, index: int) -> str:
    """A channel's lead name: "I", "aVR", "V1", ... from its source code, else from its meaning."""
    source = channel.get("ChannelSourceSequence")
    if not source:
        return str(channel.get("ChannelLabel") or f"channel {index + 1}")
    code = source[0]
    prefix = CODE_PREFIXES.get(str(code.get("CodingSchemeDesignator", "")).strip())
    value = str(code.get("CodeValue", "")).strip()
    number = value[len(prefix) :] if prefix and value.startswith(prefix) else ""
    if number.isdigit() and int(number) in LEAD_NUMBERS:
        return LEAD_NUMBERS[int(number)]
    # "Lead I (Einthoven)" -> "I"; "aVR, augmented voltage, right" -> "aVR"
    meaning = re.sub(r"\(.*?\)", "", str(code.get("CodeMeaning", ""))).split(",")[0].strip()
    return re.sub(r"^lead\s+", "", meaning, flags=re.IGNORECASE) or f"channel {index + 1}"


def choose_group(groups: list[Dataset]) -> int:
    """Index of the rhythm group: RHYTHM label, else first ORIGINAL, else first; never a median beat."""
    labels = [str(g.get("MultiplexGroupLabel", "")).strip().upper() for g in groups]
    candidates = [k for k, label in enumerate(labels) if label != "MEDIAN BEAT"]
    for k in candidates:
        if labels[k] == "RHYTHM":
            return k
    for k in candidates:
        if str(groups[k].get("WaveformOriginality", "")).strip().upper() == "ORIGINAL":
            return k
    return candidates[0] if candidates else -1


def read_dicom_ecg(path: str | Path) -> RawECG:
    """Physical signal (C, T) in mV of the rhythm group of a DICOM ECG waveform object."""
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except FileNotFoundError as err:
        raise ECGRecordError(path, "file not found") from err
    except InvalidDicomError as err:
        raise ECGRecordError(path, "not a DICOM file (no DICM prefix after the 128-byte preamble)") from err
    except Exception as err:  # truncated or corrupt files surface with assorted exception types
        problem = f"unreadable DICOM file, truncated or corrupt ({type(err).__name__}: {err})"
        raise ECGRecordError(path, problem) from err
    groups = list(ds.get("WaveformSequence") or [])
    if not groups:
        sop_uid = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
        sop = getattr(sop_uid, "name", "unknown SOP class")
        if "Waveform" in sop:  # a waveform object that lost its data: most likely a truncated file
            raise ECGRecordError(path, f"no waveform data: the {sop} object has no WaveformSequence")
        raise ECGRecordError(path, f"no waveform data: not a waveform object ({sop})")
    index = choose_group(groups)
    if index < 0:
        raise ECGRecordError(path, "only a median beat group (derived, one averaged beat); no rhythm waveform")
    group = groups[index]
    where = f"multiplex group {index} ({str(group.get('MultiplexGroupLabel', '')).strip() or 'unlabelled'})"

    channels = list(group.get("ChannelDefinitionSequence") or [])
    n_channels = int(group.get("NumberOfWaveformChannels") or 0)
    n_samples = int(group.get("NumberOfWaveformSamples") or 0)
    bits, kind = int(group.get("WaveformBitsAllocated") or 0), str(group.get("WaveformSampleInterpretation", ""))
    if n_channels == 0 or n_samples == 0:
        raise ECGRecordError(path, f"{where} has {n_channels} channels x {n_samples} samples")
    if len(channels) != n_channels:
        raise ECGRecordError(path, f"{where} defines {len(channels)} channels but says it holds {n_channels}")
    if kind in COMPANDED or (bits, kind) not in WAVEFORM_DTYPES:
        raise ECGRecordError(path, f"{where}: unsupported sample encoding ({bits} bits, {kind or 'no interpretation'})")
    data = group.get("WaveformData") or b""
    need = n_channels * n_samples * bits // 8
    if len(data) not in (need, need + need % 2):  # DICOM pads an odd-length value with one byte
        raise ECGRecordError(
            path,
            f"{where}: WaveformData holds {len(data)} bytes but {n_channels} channels x {n_samples} samples x "
            f"{bits} bits need {need} (truncated file, or a header that disagrees with the data)",
        )

    scale = np.empty(n_channels)
    for k, channel in enumerate(channels):
        # pydicom silently uses 1.0 for a missing sensitivity, which would read raw counts as volts.
        if channel.get("ChannelSensitivity") in (None, ""):
            raise ECGRecordError(path, f"{where}, channel {k + 1} ({lead_name(channel, k)}): no ChannelSensitivity")
        units = channel.get("ChannelSensitivityUnitsSequence")
        unit = str(units[0].get("CodeValue", "")).strip() if units else ""
        if unit not in TO_MILLIVOLT:
            problem = f"units {unit!r} are not a voltage (UCUM V, mV, uV or nV)" if unit else "no units"
            raise ECGRecordError(path, f"{where}, channel {k + 1} ({lead_name(channel, k)}): {problem}")
        scale[k] = TO_MILLIVOLT[unit]
    try:
        physical = ds.waveform_array(index)  # (T, C) raw x sensitivity x correction + baseline, in `unit`
    except Exception as err:  # pydicom's size/format failures: ValueError, KeyError, ...
        raise ECGRecordError(path, f"{where}: undecodable waveform ({type(err).__name__}: {err})") from err
    signal = physical.T.astype(np.float64) * scale[:, None]  # (C, T) mV
    padding = group.get("WaveformPaddingValue")
    if padding:  # samples equal to the padding value were not recorded: NaN, for the NaN policy
        raw = np.frombuffer(data[:need], dtype=WAVEFORM_DTYPES[(bits, kind)]).reshape(n_samples, n_channels)
        pad = np.frombuffer(bytes(padding)[: bits // 8], dtype=raw.dtype)[0]
        signal[(raw == pad).T] = np.nan
    fs = float(group.get("SamplingFrequency") or 0)
    if fs <= 0:
        raise ECGRecordError(path, f"{where} gives no valid SamplingFrequency")
    return RawECG(signal, [lead_name(c, k) for k, c in enumerate(channels)], fs, str(path))
