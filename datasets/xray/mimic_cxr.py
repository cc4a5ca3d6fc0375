"""MIMIC-CXR (Johnson et al. 2019), DICOM release: one sample per image, the answer a report section.

Layout (``root`` = the release folder)::

    files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.dcm
    files/p10/p10000032/s50414267.txt            # the study's free-text report
    mimic-cxr-2.0.0-split.csv.gz                 # dicom_id, study_id, subject_id, split
    mimic-cxr-2.0.0-metadata.csv.gz              # optional: dicom_id, ..., ViewPosition

Protocol: the official split file (train / validate / test, split by patient); frontal views (PA,
AP) by default; the answer is the report's FINDINGS or IMPRESSION section, parsed from the
upper-case section headers. Studies whose report lacks the section are left out and counted
(standard practice in report generation); a missing or empty report file is an error (or a
counted skip). Without the metadata file, ViewPosition is read from each DICOM header.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from mmmed_datasets.xray.xray_cache import XrayImageCache
from mmmed_datasets.xray.xray_qa import SampleError, XrayQADataset, XraySample, check_on_error

SECTION_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z &/]*[A-Z]):", re.MULTILINE)
SPLITS = ("train", "validate", "test")


def parse_report_sections(text: str) -> dict[str, str]:
    """Split a report into ``{HEADER: text}``; whitespace inside a section collapses to single spaces.

    Text before the first header (e.g. "FINAL REPORT") is dropped. A header repeated later keeps
    the first occurrence's text extended by the later one.
    """
    sections: dict[str, str] = {}
    matches = list(SECTION_HEADER.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = " ".join(text[match.end() : end].split())
        name = match.group(1).strip()
        sections[name] = f"{sections[name]} {body}".strip() if name in sections else body
    return sections


def study_paths(root: Path, subject_id: int, study_id: int) -> tuple[Path, Path]:
    """The study folder and its report file."""
    patient = root / "files" / f"p{str(subject_id)[:2]}" / f"p{subject_id}"
    return patient / f"s{study_id}", patient / f"s{study_id}.txt"


class MIMICCXRDataset(XrayQADataset):
    """Report-section generation (or a question answered by a section) over MIMIC-CXR images.

    Args:
        root: the MIMIC-CXR folder (holding ``files/``).
        split: ``train``, ``validate`` or ``test`` (the official split file's names).
        section: ``FINDINGS`` or ``IMPRESSION`` (any upper-case header the reports use).
        question: the user turn; ``<xray>`` marks the image.
        split_csv: the official split file, relative to ``root``.
        metadata_csv: the metadata file with ViewPosition, relative to ``root``, or None.
        labels_csv: optional ``study_id,label`` file naming each study's class for accuracy.
        views: ViewPosition values to keep; None keeps all.
        on_error: ``raise`` or ``skip`` for unreadable images and missing/empty reports.
        images: the decode cache.
    """

    def __init__(
        self,
        root: str,
        split: str,
        section: str,
        question: str,
        split_csv: str,
        metadata_csv: str | None,
        labels_csv: str | None,
        views: list[str] | None,
        on_error: str,
        images: XrayImageCache,
    ) -> None:
        check_on_error(on_error)
        if split not in SPLITS:
            raise ValueError(f"MIMIC-CXR splits are {SPLITS}, not {split!r}")
        self.root = Path(root).expanduser()
        split_path = self.root / split_csv
        if not split_path.is_file():
            raise FileNotFoundError(f"MIMIC-CXR split file not found: {split_path}")
        table = pd.read_csv(split_path, dtype={"dicom_id": str})
        missing = {"dicom_id", "study_id", "subject_id", "split"} - set(table.columns)
        if missing:
            raise ValueError(f"{split_path}: missing columns {sorted(missing)}")
        table = table[table["split"] == split]
        if table.empty:
            raise ValueError(f"{split_path}: no images in split {split!r}")
        view_of: dict[str, str] = {}
        if metadata_csv is not None:
            if not (self.root / metadata_csv).is_file():
                raise FileNotFoundError(
                    f"MIMIC-CXR metadata file not found: {self.root / metadata_csv} "
                    "(metadata_csv=null reads ViewPosition from the DICOM headers instead)"
                )
            meta = pd.read_csv(self.root / metadata_csv, dtype={"dicom_id": str}, usecols=["dicom_id", "ViewPosition"])
            view_of = {d: str(v).strip().upper() for d, v in zip(meta["dicom_id"], meta["ViewPosition"]) if isinstance(v, str) and v.strip()}
        label_of: dict[int, str] = {}
        if labels_csv is not None:
            labels = pd.read_csv(self.root / labels_csv)
            label_of = dict(zip(labels["study_id"].astype(int), labels["label"].astype(str)))

        section = section.upper()
        samples, skipped, answers = [], [], {}
        no_section = 0
        for dicom_id, study_id, subject_id in zip(table["dicom_id"], table["study_id"], table["subject_id"]):
            study_dir, report_path = study_paths(self.root, int(subject_id), int(study_id))
            if study_id not in answers:
                answers[study_id] = self._read_section(report_path, section, on_error, skipped)
            answer = answers[study_id]
            if answer is None:
                continue
            if answer == "":
                no_section += 1
                continue
            samples.append(
                XraySample(
                    id=f"mimic-cxr/s{study_id}/{dicom_id}",
                    path=study_dir / f"{dicom_id}.dcm",
                    question=question,
                    answer=answer,
                    label=label_of.get(int(study_id)),
                    view=view_of.get(dicom_id) if metadata_csv is not None else None,
                )
            )
        super().__init__(samples, images, views, on_error, f"MIMIC-CXR {split}", skipped)
        self.stats["no_section"] = no_section

    @staticmethod
    def _read_section(report_path: Path, section: str, on_error: str, skipped: list[SampleError]) -> str | None:
        """The section's text, ``""`` when the report lacks it, None when the report is unusable (skipped)."""
        try:
            if not report_path.is_file():
                raise SampleError(report_path, "report file not found")
            text = report_path.read_text(encoding="utf-8", errors="replace")
            if not text.strip():
                raise SampleError(report_path, "empty report")
        except SampleError as err:
            if on_error == "raise":
                raise
            skipped.append(err)
            return None
        return parse_report_sections(text).get(section, "")
