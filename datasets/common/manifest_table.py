"""Read a CSV manifest of samples (X-ray or ECG): required columns checked, optional split filter.

Cells are read as strings throughout: an answer such as "None" or "NA" must stay text, not NaN.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def read_manifest(csv_path: Path, required: tuple[str, ...], split: str | None, kind: str) -> pd.DataFrame:
    """The manifest's rows (index = 0-based data row, counted before the split filter).

    Raises FileNotFoundError for a missing file, ValueError for missing columns, a split requested
    from a manifest without a ``split`` column, or a split with no rows.
    """
    if not csv_path.is_file():
        raise FileNotFoundError(f"{kind} manifest not found: {csv_path}")
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing columns {missing}")
    if split is not None:
        if "split" not in table.columns:
            raise ValueError(f"{csv_path}: split {split!r} requested but the manifest has no 'split' column")
        table = table[table["split"].str.strip() == split]
        if table.empty:
            raise ValueError(f"{csv_path}: no rows in split {split!r}")
    return table
