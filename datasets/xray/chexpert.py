"""CheXpert (Irvin et al. 2019): yes/no questions, one per image and finding, from the label CSV.

Layout (``root`` = the folder holding the CSV; real CheXpert's ``Path`` column starts with the
release folder, so ``image_root`` is ``root``'s parent)::

    CheXpert-v1.0-small/train.csv     # Path, Sex, Age, Frontal/Lateral, AP/PA, 14 findings
    CheXpert-v1.0-small/valid.csv
    CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg

Protocol: each finding column is coded 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or blank.
CheXpert's labeler leaves a finding the report does not mention blank, so blank means negative.
Uncertain labels follow one of the paper's policies: ``positive`` (U-Ones), ``negative`` (U-Zeros)
or ``exclude`` (U-Ignore: that finding is not asked about for that image). The answer is "Yes." or
"No." and the label "yes" or "no". The view is the ``AP/PA`` column for frontal rows and
``LATERAL`` for lateral ones; a frontal row with a blank ``AP/PA`` has no view, so a view filter
drops it (the images are JPEGs, without a header to fall back on).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mmmed_datasets.xray.xray_cache import XrayImageCache
from mmmed_datasets.xray.xray_qa import XrayQADataset, XraySample, check_on_error

FINDINGS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
UNCERTAIN = ("positive", "negative", "exclude")  # U-Ones, U-Zeros, U-Ignore
POSITIVE, NEGATIVE, UNCERTAIN_CODE = 1.0, 0.0, -1.0
ANSWERS = {True: ("Yes.", "yes"), False: ("No.", "no")}


def parse_code(value: str) -> float | None:
    """A finding cell as 1.0, 0.0 or -1.0, None when blank; anything else raises ValueError."""
    if not value.strip():
        return None
    try:
        code = float(value)
    except ValueError:
        code = None
    if code not in (POSITIVE, NEGATIVE, UNCERTAIN_CODE):
        raise ValueError(f"value {value!r} is not 1, 0, -1 or blank")
    return code


def row_view(frontal_lateral: str, ap_pa: str) -> str | None:
    """``LATERAL`` for lateral rows, the upper-cased ``AP/PA`` value for frontal ones (None when blank)."""
    kind = frontal_lateral.strip().lower()
    if kind == "lateral":
        return "LATERAL"
    if kind == "frontal":
        return ap_pa.strip().upper() or None
    raise ValueError(f"value {frontal_lateral!r} is not Frontal or Lateral")


class CheXpertDataset(XrayQADataset):
    """"Is there <finding>?" over CheXpert images, answered from the CSV's labels.

    Args:
        root: folder holding the CSV.
        csv: the label file, relative to ``root`` (``train.csv``, ``valid.csv``).
        image_root: folder the CSV's ``Path`` column is relative to; for real CheXpert that is
            ``root``'s parent, since paths start with ``CheXpert-v1.0-small/``.
        findings: the finding columns to ask about (e.g. ``[Cardiomegaly, Edema]``).
        uncertain: ``positive``, ``negative`` or ``exclude`` for -1.0 labels.
        question: the user turn with ``{finding}``, filled with the lower-cased finding name;
            ``<xray>`` marks the image.
        views: view values to keep (``PA``, ``AP``, ``LATERAL``); None keeps all.
        on_error: ``raise`` or ``skip`` for unreadable images.
        images: the decode cache.
    """

    def __init__(
        self,
        root: str,
        csv: str,
        image_root: str,
        findings: list[str],
        uncertain: str,
        question: str,
        views: list[str] | None,
        on_error: str,
        images: XrayImageCache,
    ) -> None:
        check_on_error(on_error)
        if uncertain not in UNCERTAIN:
            raise ValueError(f"uncertain must be one of {UNCERTAIN}, not {uncertain!r}")
        if "{finding}" not in question:
            raise ValueError(f"question must contain '{{finding}}': {question!r}")
        findings = list(findings)
        if not findings or len(set(findings)) != len(findings):
            raise ValueError(f"findings must be a non-empty list without repeats, not {findings}")
        self.root = Path(root).expanduser()
        csv_path = self.root / csv
        if not csv_path.is_file():
            raise FileNotFoundError(f"CheXpert label file not found: {csv_path}")
        # Strings throughout: blank stays "" (not NaN) and a stray value reaches the check as written.
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
        missing = [c for c in ["Path", "Frontal/Lateral", "AP/PA", *findings] if c not in table.columns]
        if missing:
            raise ValueError(f"{csv_path}: missing columns {missing}")

        image_dir = Path(image_root).expanduser()
        samples = []
        excluded = 0
        for _, row in table.iterrows():
            rel = row["Path"]
            try:
                view = row_view(row["Frontal/Lateral"], row["AP/PA"])
            except ValueError as err:
                raise ValueError(f"{csv_path}: row {rel} column 'Frontal/Lateral': {err}") from None
            for finding in findings:
                try:
                    code = parse_code(row[finding])
                except ValueError as err:
                    raise ValueError(f"{csv_path}: row {rel} column {finding!r}: {err}") from None
                if code == UNCERTAIN_CODE and uncertain == "exclude":
                    excluded += 1
                    continue
                positive = code == POSITIVE or (code == UNCERTAIN_CODE and uncertain == "positive")
                answer, label = ANSWERS[positive]
                samples.append(
                    XraySample(
                        id=f"chexpert/{rel}/{finding}",
                        path=image_dir / rel,
                        question=question.format(finding=finding.lower()),
                        answer=answer,
                        label=label,
                        view=view,
                    )
                )
        super().__init__(samples, images, views, on_error, f"CheXpert {csv}")
        self.stats["uncertain_excluded"] = excluded  # counted before the view filter and image errors
