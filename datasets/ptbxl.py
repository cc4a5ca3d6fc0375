"""PTB-XL (Wagner et al. 2020): ``ptbxl_database.csv`` + WFDB records, split by ``strat_fold``.

Follows the published protocol: folds 1-8 train, 9 validation, 10 test (patient-disjoint, as the
dataset's authors stratified them); 100 Hz records from ``filename_lr`` or 500 Hz from ``filename_hr``.
The same class reads a real PTB-XL download and the generated demo set.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from mmmed_datasets.wfdb_ecg import CANONICAL_LEADS, ECGRecordError, read_ecg_record

RECORD_COLUMN = {100: "filename_lr", 500: "filename_hr"}


class PTBXLDataset(Dataset):
    """Question/answer samples over PTB-XL records; the answer is the record's free-text report.

    Args:
        root: folder holding ``ptbxl_database.csv``.
        folds: ``strat_fold`` values to include.
        sampling_rate: 100 or 500 (which record set to read).
        question: the user turn; ``<ecg>`` marks where the ECG goes.
        label_codes: SCP codes that name the class of a record for accuracy (first one present wins).
        normalize: ``zscore`` (per record and lead) or ``none``.
        seconds: record length the configuration expects.
    """

    def __init__(
        self,
        root: str,
        folds: list[int],
        sampling_rate: int,
        question: str,
        label_codes: list[str],
        normalize: str,
        seconds: int = 10,
    ) -> None:
        if sampling_rate not in RECORD_COLUMN:
            raise ValueError(f"PTB-XL has 100 Hz and 500 Hz records, not {sampling_rate} Hz")
        if normalize not in ("zscore", "none"):
            raise ValueError(f"normalize must be 'zscore' or 'none', not {normalize!r}")
        self.root = Path(root).expanduser()
        table_path = self.root / "ptbxl_database.csv"
        if not table_path.is_file():
            raise FileNotFoundError(f"PTB-XL table not found: {table_path}")
        table = pd.read_csv(table_path, index_col="ecg_id")
        self.table = table[table["strat_fold"].isin(folds)]
        if self.table.empty:
            raise ValueError(f"{table_path}: no records in folds {folds}")
        self.sampling_rate = sampling_rate
        self.num_samples = sampling_rate * seconds
        self.question = question
        self.label_codes = list(label_codes)
        self.normalize = normalize

    def __len__(self) -> int:
        return len(self.table)

    def label_of(self, scp_codes: str) -> str | None:
        """The first of ``label_codes`` present in a record's ``scp_codes`` dict, else None."""
        codes = ast.literal_eval(scp_codes)
        return next((code for code in self.label_codes if code in codes), None)

    def __getitem__(self, index: int) -> dict:
        ecg_id = int(self.table.index[index])
        row = self.table.iloc[index]
        record = self.root / row[RECORD_COLUMN[self.sampling_rate]]
        report = row["report"]
        if not isinstance(report, str) or not report.strip():
            raise ECGRecordError(record, f"ecg_id {ecg_id} has an empty report")
        signal = read_ecg_record(record, self.sampling_rate, self.num_samples, CANONICAL_LEADS)  # (12, T)
        if self.normalize == "zscore":
            # Per record and lead (ECGFounder). A flat lead (e.g. a lost electrode at a DC offset) becomes
            # exactly zero: dividing its float rounding residue by a tiny floor would invent a constant.
            mean, std = signal.mean(1, keepdims=True), signal.std(1, keepdims=True)
            signal = np.where(std > 1e-6, (signal - mean) / np.maximum(std, 1e-6), 0.0).astype(np.float32)
        return {
            "id": f"ptbxl/{ecg_id}",
            "signals": {"ecg": [torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32))]},
            "question": self.question,
            "answer": report.strip(),
            "label": self.label_of(row["scp_codes"]),
        }
