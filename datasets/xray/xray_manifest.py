"""Any radiograph question/answer set listed in a CSV manifest: one row per sample.

Columns: ``path``, ``question``, ``answer`` (required); ``split``, ``label``, ``view`` (optional).
``path`` is relative to ``root`` unless absolute and may name a DICOM, PNG or JPEG file. A question
without the ``<xray>`` tag gets ``"<xray>\\n"`` prepended, so the image comes before the text. Blank
``label`` / ``view`` cells mean none; a row without a view takes the DICOM header's ViewPosition.
A row with a blank path, question or answer is an error (or a counted skip under ``on_error: skip``);
errors and ids name the row by its 0-based index among the CSV's data rows (the header excluded),
counted before the split filter so ids do not change with the split.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mmmed_datasets.common.manifest_table import read_manifest
from mmmed_datasets.xray.xray_cache import XrayImageCache
from mmmed_datasets.xray.xray_qa import MODALITY, SampleError, XrayQADataset, XraySample, check_on_error

REQUIRED = ("path", "question", "answer")
TAG = f"<{MODALITY}>"


class XrayManifestDataset(XrayQADataset):
    """Question/answer samples from a CSV manifest of radiograph files.

    Args:
        root: folder the manifest's relative paths start from.
        csv: the manifest, relative to ``root``.
        split: keep rows whose ``split`` column equals this; None keeps every row.
        views: ViewPosition values to keep; None keeps all.
        on_error: ``raise`` or ``skip`` for unreadable images and rows with a blank field.
        images: the decode cache.
    """

    def __init__(
        self,
        root: str,
        csv: str,
        split: str | None,
        views: list[str] | None,
        on_error: str,
        images: XrayImageCache,
    ) -> None:
        check_on_error(on_error)
        self.root = Path(root).expanduser()
        csv_path = self.root / csv
        table = read_manifest(csv_path, REQUIRED, split, "X-ray")
        samples, skipped = [], []
        for index, row in table.iterrows():
            try:
                samples.append(self._sample(csv_path, index, row))
            except SampleError as err:
                if on_error == "raise":
                    raise
                skipped.append(err)
        name = f"manifest {csv}" + (f" {split}" if split is not None else "")
        super().__init__(samples, images, views, on_error, name, skipped)

    def _sample(self, csv_path: Path, index: int, row: pd.Series) -> XraySample:
        """One row as a sample; a blank path, question or answer raises SampleError."""
        for column in REQUIRED:
            if not row[column].strip():
                raise SampleError(csv_path, f"row {index}: empty {column}")
        path = Path(row["path"].strip()).expanduser()
        question = row["question"].strip()
        if TAG not in question:
            question = f"{TAG}\n{question}"
        label = row.get("label", "").strip() or None
        view = row.get("view", "").strip().upper() or None
        return XraySample(
            id=f"manifest/{index}",
            path=path if path.is_absolute() else self.root / path,
            question=question,
            answer=row["answer"].strip(),
            label=label,
            view=view,
        )
