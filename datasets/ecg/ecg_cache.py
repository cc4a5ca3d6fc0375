"""Prepared ECG signals (pipeline steps 1-6), in memory-mapped files built once per split and settings.

Reading a 10 s 500 Hz WFDB record takes a few ms; resampling and filtering it costs more. The cache
runs those steps once for a split's records and stores the results back to back in one float32
file, memory-mapped on later runs (``np.memmap``: the OS pages in what a batch touches, and
DataLoader workers share it). A cache folder is named by

  * a hash of the settings the prepared signal depends on (``ECGPreprocessing.prepare_settings``), and
  * a hash of the split's record files: their paths, sizes and modification times,

so changing a setting or a file builds a new one instead of serving a stale one. Records that fail
are stored as their error (the problem, without the path), and the dataset applies its skip policy to them. A folder is
written under a temporary name and renamed into place under a lock (``mmmed.atomic_files``), so an
interrupted build leaves nothing a later run would read, and processes building the same folder at
once (DDP ranks) prepare it once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import wfdb

from mmmed.atomic_files import build_folder_once
from mmmed_datasets.ecg.ecg_preprocess import ECGPreprocessing, PreparedECG
from mmmed_datasets.ecg.ecg_signal import ECGRecordError, TooFewLeadsError

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: stored channel names per record (channels.json), for the leads-seen counts
POOL_MIN_RECORDS = 2000  # below this, spawning workers (each re-imports torch, seconds) costs more than it saves


def record_files(path: str | Path) -> list[Path]:
    """The files a record's content comes from: the DICOM file, or the WFDB header and its signal files.

    The usual single-file record (``name.hea`` + ``name.dat``) is answered without parsing the header;
    otherwise (multi-segment records, signal files with other names) the header says which files.
    """
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return [path]
    base = path.with_suffix("") if path.suffix in (".hea", ".dat") else path
    header, dat = base.parent / f"{base.name}.hea", base.parent / f"{base.name}.dat"
    if dat.is_file() or not header.is_file():
        return [header, dat]
    try:
        parsed = wfdb.rdheader(str(base))
    except Exception:  # an unreadable header: its own bytes are the content; reading it reports the error
        return [header]
    if getattr(parsed, "seg_name", None) is not None:
        segments = [name for name in parsed.seg_name if name != "~"]
        return [header] + [f for name in segments for f in record_files(base.parent / name)]
    return [header] + [base.parent / name for name in dict.fromkeys(parsed.file_name or [])]


def records_key(paths: list[str]) -> str:
    """A hash of the records' paths, sizes and modification times (missing files count as missing)."""
    digest = hashlib.sha256()
    for path in paths:
        for file in record_files(path):
            try:
                stat = file.stat()
                digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            except FileNotFoundError:
                digest.update(f"{file}\0missing\n".encode())
    return digest.hexdigest()[:16]


class PreparedSignals:
    """Prepared records of one split, by index: ``get(i) -> PreparedECG``; ``errors[i]`` for failed ones."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray, lead_masks: np.ndarray, nan_samples: np.ndarray,
                 errors: dict[int, str], num_leads: int, channels: list[tuple[str, ...] | None],
                 too_few_leads: set[int]) -> None:
        self.data = data  # flat float32: record i is data[offsets[i]:offsets[i+1]] as (L, T_i)
        self.offsets = offsets  # (N + 1,) int64
        self.lead_masks = lead_masks  # (N, L) bool
        self.nan_samples = nan_samples  # (N,) int64
        self.errors = errors
        self.num_leads = num_leads
        self.channels = channels  # (N,): stored channel names, None where the record could not be read
        self.too_few_leads = too_few_leads  # failed records that had fewer leads than min_real_leads

    def __len__(self) -> int:
        return len(self.nan_samples)

    def get(self, index: int) -> PreparedECG:
        if index in self.errors:
            raise RuntimeError(f"record {index} failed to prepare: {self.errors[index]}")
        flat = self.data[self.offsets[index] : self.offsets[index + 1]]
        return PreparedECG(np.asarray(flat).reshape(self.num_leads, -1), self.lead_masks[index],
                           int(self.nan_samples[index]), self.channels[index])


def _prepare_one(job: tuple[ECGPreprocessing, str]) -> PreparedECG | tuple[str, list[str] | None]:
    """A prepared record, or its problem and (for too few leads) its stored channel names."""
    preprocessing, path = job
    try:
        return preprocessing.prepare(path)
    except TooFewLeadsError as err:  # a tuple, not the exception: it crosses process boundaries
        return err.problem, err.channels
    except ECGRecordError as err:
        return err.problem, None


class ECGSignalCache:
    """Builds or opens the prepared signals of a list of records.

    Args:
        cache_dir: root folder; entries go under ``<cache_dir>/ecg/``.
        workers: processes for building (None: all cores; 0: in this process). Small builds
            (< POOL_MIN_RECORDS records) always run in this process.
    """

    def __init__(self, cache_dir: str | os.PathLike, workers: int | None = None) -> None:
        self.root = Path(cache_dir).expanduser() / "ecg"
        self.workers = workers

    def folder(self, preprocessing: ECGPreprocessing, paths: list[str]) -> Path:
        """Where the prepared signals of these records under these settings live."""
        return self.root / f"v{CACHE_VERSION}-{preprocessing.settings_key()}" / records_key(paths)

    def build(self, preprocessing: ECGPreprocessing, paths: list[str]) -> PreparedSignals:
        """Open the cached signals of ``paths``, preparing and storing them first if needed."""
        folder = self.folder(preprocessing, paths)
        self._write(folder, preprocessing, paths)  # returns at once when the folder is complete
        return self._open(folder, preprocessing)

    def _jobs(self, preprocessing: ECGPreprocessing, paths: list[str]):
        workers = (os.cpu_count() or 1) if self.workers is None else self.workers
        jobs = [(preprocessing, str(path)) for path in paths]
        if workers <= 1 or len(paths) < POOL_MIN_RECORDS:
            yield from map(_prepare_one, jobs)
            return
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            yield from pool.map(_prepare_one, jobs, chunksize=32)

    def _write(self, folder: Path, preprocessing: ECGPreprocessing, paths: list[str]) -> None:
        """Prepare ``paths`` into ``folder`` once, even when several processes (DDP ranks) ask at once."""
        def build(tmp: Path) -> None:
            log.info("Preparing %d ECG records into %s", len(paths), folder)
            self._fill(tmp, preprocessing, paths)

        build_folder_once(folder, build, is_complete=lambda entry: (entry / "index.npz").is_file())

    def _fill(self, tmp: Path, preprocessing: ECGPreprocessing, paths: list[str]) -> None:
        """Prepare every record into the (temporary, not yet visible) folder ``tmp``."""
        num_leads = len(preprocessing.leads)
        offsets, masks, nans, errors = [0], [], [], {}
        channels: list[tuple[str, ...] | None] = []
        too_few: list[int] = []
        with open(tmp / "signals.f32", "wb") as out:
            for index, result in enumerate(self._jobs(preprocessing, paths)):
                if isinstance(result, tuple):
                    errors[index], names = result
                    channels.append(None if names is None else tuple(names))
                    if names is not None:
                        too_few.append(index)
                    masks.append(np.zeros(num_leads, dtype=bool))
                    nans.append(0)
                    offsets.append(offsets[-1])
                    continue
                out.write(np.ascontiguousarray(result.signal, dtype=np.float32).tobytes())
                offsets.append(offsets[-1] + result.signal.size)
                masks.append(result.lead_mask)
                nans.append(result.nan_samples)
                channels.append(tuple(result.channels))
        np.savez(
            tmp / "index.npz",
            offsets=np.asarray(offsets, dtype=np.int64),
            lead_masks=np.asarray(masks, dtype=bool).reshape(len(paths), num_leads),
            nan_samples=np.asarray(nans, dtype=np.int64),
        )
        (tmp / "errors.json").write_text(json.dumps({str(k): v for k, v in errors.items()}))
        # Channel lists repeat across a data set: store each distinct list once, and an index per record.
        distinct = list(dict.fromkeys(names for names in channels if names is not None))
        position = {names: i for i, names in enumerate(distinct)}
        (tmp / "channels.json").write_text(json.dumps({
            "lists": [list(names) for names in distinct],
            "record_list": [-1 if names is None else position[names] for names in channels],  # -1: unreadable
            "too_few_leads": too_few,
        }))
        (tmp / "settings.json").write_text(json.dumps(preprocessing.prepare_settings(), indent=1))

    def _open(self, folder: Path, preprocessing: ECGPreprocessing) -> PreparedSignals:
        index = np.load(folder / "index.npz")
        offsets = index["offsets"]
        size = int(offsets[-1])
        data = (
            np.memmap(folder / "signals.f32", dtype=np.float32, mode="r", shape=(size,))
            if size
            else np.zeros(0, dtype=np.float32)  # np.memmap refuses an empty file
        )
        errors = {int(k): v for k, v in json.loads((folder / "errors.json").read_text()).items()}
        stored = json.loads((folder / "channels.json").read_text())
        lists = [tuple(names) for names in stored["lists"]]
        channels = [None if k < 0 else lists[k] for k in stored["record_list"]]
        return PreparedSignals(data, offsets, index["lead_masks"], index["nan_samples"], errors,
                               len(preprocessing.leads), channels, set(stored["too_few_leads"]))
