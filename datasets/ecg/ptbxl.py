"""PTB-XL (Wagner et al. 2020): ``ptbxl_database.csv`` + WFDB records, split by ``strat_fold``.

Follows the published protocol: folds 1-8 train, 9 validation, 10 test (patient-disjoint, as the
data set's authors stratified them); 100 Hz records from ``filename_lr`` or 500 Hz from
``filename_hr`` (either is then resampled to ``ecg_signal.sampling_rate``). Tasks:

* ``report``: answer with the record's free-text report (many are German, as recorded).
* ``superclass``: answer with the diagnostic superclasses (NORM, MI, STTC, CD, HYP). Every key of
  ``scp_codes``, whatever its likelihood, that ``scp_statements.csv`` marks ``diagnostic == 1``
  contributes its ``diagnostic_class``, as in Strodthoff et al. 2021 (the PTB-XL benchmark) and the
  data set's own example code; records with none are left out (counted as ``no_superclass``).
* ``qa``: free questions from a CSV (``ecg_id, question, answer[, label]``), one sample per row.

The same class reads a real PTB-XL download and the generated demo set.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd

from mmmed_datasets.ecg.ecg_cache import ECGSignalCache
from mmmed_datasets.ecg.ecg_preprocess import ECGPreprocessing
from mmmed_datasets.ecg.ecg_samples import ECGSample, ECGSampleDataset, check_on_error
from mmmed_datasets.ecg.ecg_signal import ECGRecordError

RECORD_COLUMN = {100: "filename_lr", 500: "filename_hr"}
SUPERCLASSES = ("NORM", "MI", "STTC", "CD", "HYP")
TASKS = ("report", "superclass", "qa")


def load_superclass_map(path: Path) -> dict[str, str]:
    """SCP code -> diagnostic superclass, for the statements ``scp_statements.csv`` marks diagnostic."""
    if not path.is_file():
        raise FileNotFoundError(f"PTB-XL statements table not found: {path} (needed by task=superclass)")
    table = pd.read_csv(path, index_col=0)
    diagnostic = table[table["diagnostic"] == 1]
    return {str(code): str(cls) for code, cls in diagnostic["diagnostic_class"].items() if isinstance(cls, str)}


def superclasses_of(scp_codes: dict, superclass_of: dict[str, str]) -> list[str]:
    """The record's superclasses, in the fixed order NORM, MI, STTC, CD, HYP."""
    found = {superclass_of[code] for code in scp_codes if code in superclass_of}
    return [cls for cls in SUPERCLASSES if cls in found]


class PTBXLDataset(ECGSampleDataset):
    """Question/answer samples over PTB-XL records.

    Args:
        root: folder holding ``ptbxl_database.csv`` (and ``scp_statements.csv`` for ``superclass``).
        folds: ``strat_fold`` values to include.
        record_rate: 100 or 500: which record set to read.
        task: ``report``, ``superclass`` or ``qa``.
        question: the user turn for ``report``/``superclass``; ``<ecg>`` marks where the ECG goes.
        questions_csv: the ``qa`` task's questions (relative to ``root`` or absolute), else None.
        label_codes: SCP codes that name a record's class for accuracy (first one present wins).
        preprocessing: the shared ECG pipeline.
        train: training split (random crops) or not.
        on_error: ``raise`` or ``skip`` for bad records and empty reports.
        cache: the prepared-signal cache, or None.
    """

    def __init__(
        self,
        root: str,
        folds: list[int],
        record_rate: int,
        task: str,
        question: str | None,
        questions_csv: str | None,
        label_codes: list[str],
        preprocessing: ECGPreprocessing,
        train: bool,
        on_error: str,
        cache: ECGSignalCache | None,
    ) -> None:
        if record_rate not in RECORD_COLUMN:
            raise ValueError(f"PTB-XL has 100 Hz and 500 Hz records, not {record_rate} Hz")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {task!r}")
        check_on_error(on_error)
        self.root = Path(root).expanduser()
        table_path = self.root / "ptbxl_database.csv"
        if not table_path.is_file():
            raise FileNotFoundError(f"PTB-XL table not found: {table_path}")
        table = pd.read_csv(table_path, index_col="ecg_id")
        self.table = table[table["strat_fold"].isin(folds)]
        if self.table.empty:
            raise ValueError(f"{table_path}: no records in folds {folds}")
        self.label_codes = list(label_codes)
        self.task = task
        superclass_of = load_superclass_map(self.root / "scp_statements.csv") if task == "superclass" else {}
        samples, skipped, no_superclass = [], [], 0
        rows = self._questions(questions_csv) if task == "qa" else None
        for ecg_id, row in self.table.iterrows():
            record = str(self.root / row[RECORD_COLUMN[record_rate]])
            codes = ast.literal_eval(row["scp_codes"])
            label = self.label_of(codes)
            if task == "report":
                report = row["report"]
                if not isinstance(report, str) or not report.strip():
                    error = ECGRecordError(record, f"ecg_id {ecg_id} has an empty report in {table_path.name}")
                    if on_error == "raise":
                        raise error
                    skipped.append(error)
                    continue
                samples.append(ECGSample(f"ptbxl/{ecg_id}", (record,), question, report.strip(), label))
            elif task == "superclass":
                classes = superclasses_of(codes, superclass_of)
                if not classes:
                    no_superclass += 1
                    continue
                samples.append(ECGSample(f"ptbxl/{ecg_id}", (record,), question, ", ".join(classes), None))
            else:
                for k, (q, a, qa_label) in enumerate(rows.get(int(ecg_id), [])):
                    samples.append(ECGSample(f"ptbxl/{ecg_id}/q{k}", (record,), q, a, qa_label))
        if not samples and task == "qa":
            raise ValueError(f"{questions_csv}: no questions about records in folds {folds}")
        super().__init__(samples, preprocessing, train, on_error, cache, f"PTB-XL folds {list(folds)}", skipped)
        if task == "superclass":
            self.stats["no_superclass"] = no_superclass

    def _questions(self, questions_csv: str | None) -> dict[int, list[tuple[str, str, str | None]]]:
        """ecg_id -> [(question, answer, label)] from the ``qa`` task's CSV, checked."""
        if not questions_csv:
            raise ValueError("task=qa needs questions_csv (columns ecg_id, question, answer[, label])")
        path = Path(questions_csv).expanduser()
        path = path if path.is_absolute() else self.root / path
        table = pd.read_csv(path, dtype={"question": str, "answer": str}, keep_default_na=False)
        missing = {"ecg_id", "question", "answer"} - set(table.columns)
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        out: dict[int, list[tuple[str, str, str | None]]] = {}
        for line, row in enumerate(table.itertuples(index=False), start=2):
            if "<ecg>" not in row.question:
                raise ValueError(f"{path}, line {line}: question has no <ecg> tag: {row.question!r}")
            if not row.answer.strip():
                raise ValueError(f"{path}, line {line}: empty answer")
            label = getattr(row, "label", None) or None
            out.setdefault(int(row.ecg_id), []).append((row.question, row.answer.strip(), label))
        return out

    def label_of(self, codes: dict) -> str | None:
        """The first of ``label_codes`` present in a record's ``scp_codes``, else None."""
        return next((code for code in self.label_codes if code in codes), None)
