"""ECG-QA (Oh et al., NeurIPS 2023 Datasets & Benchmarks), PTB-XL version: questions about one or two ECGs.

Layout (github.com/Jwoo5/ecg-qa, ``ecgqa/ptbxl/{paraphrased,template}``): one folder per split
(``train``, ``valid``, ``test``) holding JSON files, each a list of samples

  ``{template_id, question_id, sample_id, question_type, attribute_type, question, answer: [str],
  ecg_id: [int] (1, or 2 for comparison questions, in the order the question refers to them), attribute}``

The ``ecg_id`` values are PTB-XL's; ``ptbxl_database.csv`` maps them to WFDB records. ECG-QA's split
follows PTB-XL's ``strat_fold`` (1-8 train, 9 valid, 10 test), so pair it with the same PTB-XL release.

Each sample becomes one ``ECGSample`` whose question carries one ``<ecg>`` tag per ECG, in ``ecg_id``
order, through a configurable template (``{question}`` is ECG-QA's question text)::

  single_template:     "<ecg>\\n{question}"
  comparison_template: "First ECG: <ecg>\\nSecond ECG: <ecg>\\n{question}"

A template without any ``<ecg>`` tag is accepted too: the ChatFormatter then puts every ECG's tag first,
each on its own line, in ``ecg_id`` order (mmmed/model/prompts.py).

The answer is ECG-QA's answer list joined with ``", "`` in the given order; ECG-QA scores exact match
of the answer set, which ``mmmed.eval.metrics.exact_match`` computes (it compares comma-separated item
sets, so the order does not matter; an option that itself contains commas, such as "bigeminal
pattern (unknown origin, supraventricular, or ventricular)", splits the same way on both sides).
Verify questions (``*-verify``: yes / no / not sure) also get their answer as ``label``, so the
run's ``accuracy`` is the verify-question accuracy; other questions are scored by exact match only.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd

from mmmed_datasets.ecg.ecg_cache import ECGSignalCache
from mmmed_datasets.ecg.ecg_preprocess import ECGPreprocessing
from mmmed_datasets.ecg.ecg_samples import MODALITY, ECGSample, ECGSampleDataset, check_on_error
from mmmed_datasets.ecg.ecg_signal import ECGRecordError

RECORD_COLUMN = {100: "filename_lr", 500: "filename_hr"}
SPLIT_DIRS = ("train", "valid", "test")
QUESTION_TYPES = (
    "single-verify",
    "single-choose",
    "single-query",
    "comparison_consecutive-verify",
    "comparison_consecutive-query",
    "comparison_irrelevant-verify",
    "comparison_irrelevant-query",
)
ECGS_PER_FAMILY = {"single": 1, "comparison": 2}  # question_type's part before "_" or "-"
VERIFY_ANSWERS = ("yes", "no", "not sure")
REQUIRED_KEYS = ("sample_id", "question_type", "question", "answer", "ecg_id")
TAG = f"<{MODALITY}>"


def ecgs_per_question(question_type: str) -> int | None:
    """How many ECGs a question type refers to (1 single, 2 comparison), None for an unknown type."""
    return ECGS_PER_FAMILY.get(question_type.replace("-", "_").split("_")[0])


def selected_types(prefixes: list[str] | None) -> tuple[str, ...]:
    """The question types that ``prefixes`` keep (None: all); a prefix that keeps none is a typo."""
    if prefixes is None:
        return QUESTION_TYPES
    for prefix in prefixes:
        if not any(qtype.startswith(prefix) for qtype in QUESTION_TYPES):
            raise ValueError(f"question_types prefix {prefix!r} matches none of ECG-QA's types {list(QUESTION_TYPES)}")
    return tuple(qtype for qtype in QUESTION_TYPES if qtype.startswith(tuple(prefixes)))


def check_template(template: str, ecgs: int, name: str) -> None:
    """A question template holds ``{question}`` once and one ``<ecg>`` tag per ECG, or none (ECGs go first)."""
    if template.count("{question}") != 1 or template.count(TAG) not in (0, ecgs):
        raise ValueError(f"{name} must contain '{{question}}' once and {TAG} {ecgs} time(s) (or not at all: "
                         f"the ECGs then go first), got {template!r}")


def load_qa_file(path: Path) -> list[dict]:
    """One ECG-QA JSON file: a list of sample objects, each with the keys this reader uses."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of ECG-QA samples, got {type(data).__name__}")
    for index, sample in enumerate(data):
        missing = [key for key in REQUIRED_KEYS if not isinstance(sample, dict) or key not in sample]
        if missing:
            raise ValueError(f"{path}: entry {index} lacks key(s) {missing}")
    return data


class ECGQADataset(ECGSampleDataset):
    """ECG-QA questions over PTB-XL records, one or two ECGs per sample.

    Args:
        root: the ECG-QA folder holding the split folders (e.g. ``ecgqa/ptbxl/paraphrased``).
        split_dir: ``train``, ``valid`` or ``test``.
        ptbxl_root: PTB-XL's folder with ``ptbxl_database.csv`` and the records.
        record_rate: 100 or 500: read ``filename_lr`` or ``filename_hr``.
        question_types: prefixes of the question types to keep (e.g. ``[single]``,
            ``[comparison_irrelevant-verify]``), or None for all.
        single_template: user turn of a one-ECG question; ``{question}`` is ECG-QA's text.
        comparison_template: user turn of a two-ECG question, ``<ecg>`` tags in ``ecg_id`` order.
        preprocessing: the shared ECG pipeline.
        train: training split (random crops) or not.
        on_error: ``raise`` or ``skip`` for bad records and bad samples (an ``ecg_id`` not in
            PTB-XL, an empty answer, an ECG count that does not fit the question type).
        cache: the prepared-signal cache, or None.
    """

    def __init__(
        self,
        root: str,
        split_dir: str,
        ptbxl_root: str,
        record_rate: int,
        question_types: list[str] | None,
        single_template: str,
        comparison_template: str,
        preprocessing: ECGPreprocessing,
        train: bool,
        on_error: str,
        cache: ECGSignalCache | None,
    ) -> None:
        if split_dir not in SPLIT_DIRS:
            raise ValueError(f"split_dir must be one of {SPLIT_DIRS}, not {split_dir!r}")
        if record_rate not in RECORD_COLUMN:
            raise ValueError(f"PTB-XL has 100 Hz and 500 Hz records, not {record_rate} Hz")
        check_on_error(on_error)
        check_template(single_template, 1, "single_template")
        check_template(comparison_template, 2, "comparison_template")
        self.templates = {1: single_template, 2: comparison_template}
        self.keep = selected_types(question_types)
        folder = Path(root).expanduser() / split_dir
        files = sorted(folder.glob("*.json"), key=lambda p: (len(p.stem), p.stem))  # 80000 before 120000
        if not files:
            raise FileNotFoundError(f"no ECG-QA JSON files in {folder}")
        self.ptbxl_root = Path(ptbxl_root).expanduser()
        self.table_path = self.ptbxl_root / "ptbxl_database.csv"
        if not self.table_path.is_file():
            raise FileNotFoundError(f"PTB-XL table not found: {self.table_path}")
        column = RECORD_COLUMN[record_rate]
        table = pd.read_csv(self.table_path, index_col="ecg_id", usecols=["ecg_id", column])
        self.records = {int(ecg_id): str(self.ptbxl_root / name) for ecg_id, name in table[column].items()}

        samples, skipped, filtered = [], [], 0
        self.question_type: dict[str, str] = {}  # sample id -> ECG-QA question type
        first_file: dict[str, Path] = {}
        for path in files:
            for entry in load_qa_file(path):
                if entry["question_type"] in QUESTION_TYPES and entry["question_type"] not in self.keep:
                    filtered += 1
                    continue
                sample_id = f"ecgqa/{split_dir}/{entry['sample_id']}"
                if sample_id in first_file:  # ids group evaluation answers, so they must be unique
                    raise ValueError(f"{path}: sample_id {entry['sample_id']} also appears in {first_file[sample_id]}")
                first_file[sample_id] = path
                try:
                    samples.append(self._sample(sample_id, entry, path))
                except ECGRecordError as error:
                    if on_error == "raise":
                        raise
                    skipped.append(error)
                    continue
                self.question_type[sample_id] = entry["question_type"]
        if not samples and not skipped:
            raise ValueError(f"{folder}: no questions of types {list(self.keep)}")
        super().__init__(samples, preprocessing, train, on_error, cache, f"ECG-QA {split_dir}", skipped)
        self.stats["filtered"] = filtered  # questions of other types, left out by question_types
        counts = Counter(self.question_type[sample.id] for sample in self.samples)
        self.stats.update({f"type/{qtype}": counts[qtype] for qtype in self.keep})

    def _sample(self, sample_id: str, entry: dict, path: Path) -> ECGSample:
        """One checked sample; ECGRecordError names the JSON file and the sample when it is unusable."""

        def bad(problem: str) -> ECGRecordError:
            return ECGRecordError(str(path), f"sample_id {entry['sample_id']}: {problem}")

        question_type = entry["question_type"]
        if question_type not in QUESTION_TYPES:
            raise bad(f"unknown question_type {question_type!r}")
        ecgs = ecgs_per_question(question_type)
        ecg_ids = entry["ecg_id"]
        if not isinstance(ecg_ids, list) or len(ecg_ids) != ecgs:
            raise bad(f"{question_type} question needs {ecgs} ecg_id(s), got {ecg_ids!r}")
        missing = [ecg_id for ecg_id in ecg_ids if not isinstance(ecg_id, int) or ecg_id not in self.records]
        if missing:
            raise bad(f"ecg_id {missing} not in {self.table_path}")
        answer = entry["answer"]
        items = [item.strip() for item in answer if isinstance(item, str)] if isinstance(answer, list) else []
        if not items or not all(items) or len(items) != len(answer):
            raise bad(f"empty or malformed answer {answer!r}")
        text = entry["question"].strip() if isinstance(entry["question"], str) else ""
        if not text or TAG in text:  # a tag in the text would make the ECG count disagree
            raise bad(f"question text is empty or already holds {TAG}: {entry['question']!r}")
        question = self.templates[ecgs].replace("{question}", text)
        answer_text = ", ".join(items)
        label = answer_text if question_type.endswith("-verify") and answer_text in VERIFY_ANSWERS else None
        return ECGSample(sample_id, tuple(self.records[ecg_id] for ecg_id in ecg_ids), question, answer_text, label)
