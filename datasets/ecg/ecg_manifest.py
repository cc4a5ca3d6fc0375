"""Any ECG question/answer set listed in a CSV manifest: one row per sample.

Columns: ``path``, ``question``, ``answer`` (required); ``split``, ``label`` (optional). ``path``
names a WFDB record (``dir/name``, with or without ``.hea``) or a DICOM waveform file (``.dcm``),
relative to ``root`` unless absolute; several ECGs in one sample are separated by ``|`` and the
question then carries one ``<ecg>`` tag per ECG, in order. A single-ECG question without the tag
gets ``"<ecg>\\n"`` prepended. A row with a blank field or a tag count that disagrees with its
paths is an error (or a counted skip under ``on_error: skip``); errors and ids name the row by its
0-based index among the CSV's data rows, counted before the split filter.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mmmed_datasets.common.manifest_table import read_manifest
from mmmed_datasets.ecg.ecg_cache import ECGSignalCache
from mmmed_datasets.ecg.ecg_preprocess import ECGPreprocessing
from mmmed_datasets.ecg.ecg_samples import MODALITY, ECGSample, ECGSampleDataset, check_on_error
from mmmed_datasets.ecg.ecg_signal import ECGRecordError

REQUIRED = ("path", "question", "answer")
TAG = f"<{MODALITY}>"


class ECGManifestDataset(ECGSampleDataset):
    """Question/answer samples from a CSV manifest of ECG files.

    Args:
        root: folder the manifest's relative paths start from.
        csv: the manifest, relative to ``root``.
        split: keep rows whose ``split`` column equals this; None keeps every row.
        preprocessing: the shared ECG pipeline.
        train: training split (random crops) or not.
        on_error: ``raise`` or ``skip`` for bad records and rows.
        cache: the prepared-signal cache, or None.
    """

    def __init__(
        self,
        root: str,
        csv: str,
        split: str | None,
        preprocessing: ECGPreprocessing,
        train: bool,
        on_error: str,
        cache: ECGSignalCache | None,
    ) -> None:
        check_on_error(on_error)
        self.root = Path(root).expanduser()
        csv_path = self.root / csv
        table = read_manifest(csv_path, REQUIRED, split, "ECG")
        samples, skipped = [], []
        for index, row in table.iterrows():
            try:
                samples.append(self._sample(csv_path, index, row))
            except ECGRecordError as err:
                if on_error == "raise":
                    raise
                skipped.append(err)
        name = f"manifest {csv}" + (f" {split}" if split is not None else "")
        super().__init__(samples, preprocessing, train, on_error, cache, name, skipped)

    def _sample(self, csv_path: Path, index: int, row: pd.Series) -> ECGSample:
        """One row as a sample; a blank field or a tag/path count mismatch raises ECGRecordError."""
        for column in REQUIRED:
            if not row[column].strip():
                raise ECGRecordError(csv_path, f"row {index}: empty {column}")
        paths = [Path(p.strip()).expanduser() for p in row["path"].split("|")]
        if any(not str(p) or str(p) == "." for p in paths):
            raise ECGRecordError(csv_path, f"row {index}: empty entry in path list {row['path']!r}")
        question = row["question"].strip()
        tags = question.count(TAG)
        if tags == 0 and len(paths) == 1:
            question, tags = f"{TAG}\n{question}", 1
        if tags != len(paths):
            raise ECGRecordError(csv_path, f"row {index}: question has {tags} {TAG} tag(s) for {len(paths)} ECG(s)")
        return ECGSample(
            id=f"manifest/{index}",
            records=tuple(str(p if p.is_absolute() else self.root / p) for p in paths),
            question=question,
            answer=row["answer"].strip(),
            label=row.get("label", "").strip() or None,
        )
