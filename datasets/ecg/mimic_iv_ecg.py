"""MIMIC-IV-ECG 1.0 (Gow et al. 2023): ``record_list.csv`` + ``machine_measurements.csv`` + WFDB records.

Layout: ``files/p1000/p10000032/s40689238/40689238`` (``.hea``/``.dat``; the first folder is ``p`` and
the subject id's first 4 digits), 10 s, 12 leads stored as I, II, III, aVR, **aVF, aVL**, V1..V6 at
500 Hz, WFDB format 16 (NaN samples stored as the format's sentinel -32768, read back as NaN). The
shared pipeline selects leads by name, so the stored order never reaches the encoder.

``record_list.csv`` (subject_id, study_id, path, ...) and ``machine_measurements.csv`` (subject_id,
study_id, report_0..report_17, ...) are joined on ``study_id``; both must agree on the subject.

Answer: the machine's report. Rule: the non-blank ``report_<k>`` statements in column order ``k``,
each stripped; a statement that does not already end in ``.``, ``!`` or ``?`` gets a ``.``; the
statements are joined with one space. ``["Sinus rhythm", "Normal ECG"]`` -> ``"Sinus rhythm. Normal
ECG."``. A study whose statements are all blank, or that machine_measurements.csv lacks, is an
ECGRecordError, raised or skipped and counted under ``on_error``.

Splits: the data set has none, so each subject goes to train/val/test by a stable hash of
``f"{split_seed}:{subject_id}"`` (sha256 -> [0, 1) against the cumulative ``split_fractions``).
Splits are therefore patient-disjoint, identical on every machine, and a subject keeps its split
when other subjects are added or removed.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from mmmed_datasets.ecg.ecg_cache import ECGSignalCache
from mmmed_datasets.ecg.ecg_preprocess import ECGPreprocessing
from mmmed_datasets.ecg.ecg_samples import ECGSample, ECGSampleDataset, check_on_error
from mmmed_datasets.ecg.ecg_signal import ECGRecordError

RECORD_LIST = "record_list.csv"
MEASUREMENTS = "machine_measurements.csv"
SPLITS = ("train", "val", "test")
_REPORT_COLUMN = re.compile(r"report_(\d+)")
_SENTENCE_END = (".", "!", "?")


def split_of(subject_id: int, fractions: tuple[float, float, float], seed: int) -> str:
    """The split a subject belongs to: sha256 of ``"{seed}:{subject_id}"`` mapped to [0, 1)."""
    digest = hashlib.sha256(f"{seed}:{int(subject_id)}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1), independent of other subjects
    cumulative = 0.0
    for name, fraction in zip(SPLITS, fractions):
        cumulative += fraction
        if u < cumulative:
            return name
    return SPLITS[-1]  # float rounding of a sum that should be 1


def check_fractions(fractions) -> tuple[float, float, float]:
    """``[train, val, test]``: three non-negative numbers summing to 1."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"split_fractions must be [train, val, test], non-negative, summing to 1; got {list(values)}")
    return values


def join_statements(statements) -> str:
    """A report from machine statements: non-blank ones stripped, each ending in a period, space-joined."""
    out = []
    for statement in statements:
        text = statement.strip() if isinstance(statement, str) else ""
        if text:
            out.append(text if text.endswith(_SENTENCE_END) else text + ".")
    return " ".join(out)


def _read_table(path: Path, required: set[str], **kwargs) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"MIMIC-IV-ECG table not found: {path}")
    columns = list(pd.read_csv(path, nrows=0).columns)
    missing = required - set(columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    return pd.read_csv(path, **kwargs)


def _unique_studies(table: pd.DataFrame, path: Path) -> None:
    duplicated = table["study_id"][table["study_id"].duplicated()]
    if len(duplicated):
        raise ValueError(f"{path}: study_id(s) {sorted(set(duplicated.tolist()))[:5]} appear more than once")


class MIMICIVECGDataset(ECGSampleDataset):
    """Report samples over MIMIC-IV-ECG records, split by patient.

    Args:
        root: folder holding ``record_list.csv``, ``machine_measurements.csv`` and ``files/``.
        split: ``train``, ``val`` or ``test``.
        split_fractions: ``[train, val, test]`` fractions of subjects.
        split_seed: seed of the subject hash; changing it reshuffles every subject.
        question: the user turn; ``<ecg>`` marks where the ECG goes.
        label_patterns: class -> regular expression (case-insensitive) searched in the report; the
            first class in listed order that matches is the sample's label for accuracy, else None.
        preprocessing: the shared ECG pipeline.
        train: training split (random crops) or not.
        on_error: ``raise`` or ``skip`` for bad records, empty reports and studies without measurements.
        cache: the prepared-signal cache, or None.
    """

    def __init__(
        self,
        root: str,
        split: str,
        split_fractions: list[float],
        split_seed: int,
        question: str,
        label_patterns: dict[str, str] | None,
        preprocessing: ECGPreprocessing,
        train: bool,
        on_error: str,
        cache: ECGSignalCache | None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        check_on_error(on_error)
        fractions = check_fractions(split_fractions)
        self.root = Path(root).expanduser()
        self.label_patterns = {}
        for name, pattern in dict(label_patterns or {}).items():
            try:
                self.label_patterns[str(name)] = re.compile(str(pattern), re.IGNORECASE)
            except re.error as err:
                raise ValueError(f"label_patterns[{name!r}] is not a valid regular expression: {err}") from err

        records_path = self.root / RECORD_LIST
        records = _read_table(records_path, {"subject_id", "study_id", "path"},
                              usecols=["subject_id", "study_id", "path"], dtype={"path": str})
        _unique_studies(records, records_path)
        subjects = records["subject_id"].drop_duplicates()
        in_split = {s for s in subjects.tolist() if split_of(s, fractions, split_seed) == split}
        records = records[records["subject_id"].isin(in_split)]
        if records.empty:
            raise ValueError(f"{records_path}: no subjects fall in split {split!r} (fractions {list(fractions)})")
        measurements = self._measurements(set(records["study_id"].tolist()))

        samples, skipped, reasons, subject_of = [], [], Counter(), {}
        for subject_id, study_id, rel in records[["subject_id", "study_id", "path"]].itertuples(index=False):
            record = str(self.root / rel)
            row = measurements.get(study_id)
            problem, reason = None, None
            if row is None:
                problem, reason = f"study_id {study_id} is not in {MEASUREMENTS}", "missing_measurements"
            elif row[0] != subject_id:
                problem = (f"study_id {study_id} belongs to subject_id {subject_id} in {RECORD_LIST} but to "
                           f"subject_id {row[0]} in {MEASUREMENTS}")
                reason = "subject_mismatch"
            elif not row[1]:
                problem, reason = f"study_id {study_id} has an empty report (all report_* blank) in {MEASUREMENTS}", "empty_report"
            if problem is not None:
                error = ECGRecordError(record, problem)
                if on_error == "raise":
                    raise error
                skipped.append(error)
                reasons[reason] += 1
                continue
            samples.append(ECGSample(f"mimic-iv-ecg/{study_id}", (record,), question, row[1], self.label_of(row[1])))
            subject_of[samples[-1].id] = subject_id
        super().__init__(samples, preprocessing, train, on_error, cache, f"MIMIC-IV-ECG {split}", skipped)
        self.stats["subjects"] = len({subject_of[sample.id] for sample in self.samples})  # patients actually served
        for reason in ("missing_measurements", "subject_mismatch", "empty_report"):
            self.stats[reason] = reasons[reason]

    def _measurements(self, study_ids: set[int]) -> dict[int, tuple[int, str]]:
        """study_id -> (subject_id, joined report) for the given studies, read in chunks to bound memory."""
        path = self.root / MEASUREMENTS
        header = _read_table(path, {"subject_id", "study_id"}, nrows=0).columns
        report_columns = sorted((c for c in header if _REPORT_COLUMN.fullmatch(c)), key=lambda c: int(c[7:]))
        if not report_columns:
            raise ValueError(f"{path}: no report_<k> columns")
        chunks = pd.read_csv(
            path,
            usecols=["subject_id", "study_id", *report_columns],
            dtype={c: str for c in report_columns},
            keep_default_na=False,  # a statement is text; blank cells stay "" (and "NA" stays "NA")
            chunksize=200_000,
        )
        parts = [chunk[chunk["study_id"].isin(study_ids)] for chunk in chunks]
        table = pd.concat(parts) if parts else pd.DataFrame(columns=["subject_id", "study_id", *report_columns])
        _unique_studies(table, path)
        statements = table[report_columns].to_numpy(dtype=object)
        return {
            int(study): (int(subject), join_statements(row))
            for study, subject, row in zip(table["study_id"].tolist(), table["subject_id"].tolist(), statements)
        }

    def label_of(self, report: str) -> str | None:
        """The first class of ``label_patterns`` whose pattern occurs in the report, else None."""
        return next((name for name, pattern in self.label_patterns.items() if pattern.search(report)), None)
