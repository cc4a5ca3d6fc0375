"""Read a manifest of patient records (CSV or JSONL, by suffix): one row per question about one patient.

Columns (JSONL: keys of one object per line; blank lines are ignored):

* ``patient_id``, ``question``, ``answer`` (required, non-empty);
* ``label`` (optional): a class, or one class per scored part. CSV: ``SR``, or ``rhythm=SR;finding=LEFT``;
  JSONL: a string or an object ``{"rhythm": "SR", "finding": "LEFT"}``. Blank: no label;
* ``note`` (optional): free text the question comes with (``patient_records.py`` says where it goes);
* ``facts`` (optional): numbers measured from the record, never shown to the model; self-training's checkers
  compare a rationale's stated values with them (``mmmed/selftrain/filtering.py``). CSV: ``heart_rate=82.4;qrs_ms=96``;
  JSONL: an object ``{"heart_rate": 82.4}``. Blank: none;
* ``split`` (optional): ``train``, ``val`` or ``test`` on every row; a patient in two splits is an error.
  Without the column, a patient's split comes from the sha256 of its id and ``split_fractions``, so one
  patient never spans two splits and the assignment never depends on the manifest's order or length;
* one column per modality, named by the modality (``ecg``, ``xray``): file paths relative to the manifest's
  folder (or absolute), several separated by ``|`` (JSONL: also a list); blank or absent: the patient has
  none of that modality. A WFDB record may be named without its suffix (``rec`` for ``rec.hea``).

A column that is neither of these nor one of the run's modalities is an error listing it: a typo such as
``xrays`` must not silently drop the X-rays. The same holds for a manifest column naming a modality the run
does not read.

Errors name the manifest and the line. Missing or unknown columns, a blank ``patient_id`` or ``split``, an
unknown split and a patient in two splits always stop (they decide the splits, which are never guessed).
A row problem (blank question or answer, a malformed label or path list, a file that does not exist, a
question whose tags disagree with the row's files, a row with neither files nor a note) stops too under
``on_error: raise``, or is returned for the caller to count under ``skip``.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmmed.model.prompts import TAG_SHAPE

REQUIRED = ("patient_id", "question", "answer")
OPTIONAL = ("label", "note", "split", "facts")
SPLITS = ("train", "val", "test")
ON_ERROR = ("raise", "skip")
PATH_SEPARATOR = "|"
NOTE_MARKER = "<note>"  # where a question wants its note (patient_records.compose_question)


class RecordError(ValueError):
    """A problem with one manifest row (or the manifest itself), naming the file and line."""

    def __init__(self, manifest: str | Path, line: int | None, problem: str) -> None:
        where = f"{manifest}" if line is None else f"{manifest}, line {line}"
        super().__init__(f"{where}: {problem}")
        self.manifest, self.line, self.problem = str(manifest), line, problem


@dataclass(frozen=True)
class PatientRecord:
    """One manifest row: a question about one patient, with the files of each modality the patient has."""

    row: int  # 0-based data row of the manifest (header excluded, blank JSONL lines skipped), before any filter
    line: int  # 1-based line of the manifest where the row starts
    patient_id: str
    split: str
    question: str
    answer: str
    label: str | dict[str, str] | None
    note: str
    signals: dict[str, tuple[str, ...]] = field(default_factory=dict)  # modality -> paths; present modalities only
    facts: dict[str, float] = field(default_factory=dict)  # measured values (``facts`` column), for checkers only


def check_on_error(on_error: str) -> None:
    """``raise`` or ``skip``, else a ValueError."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")


def check_split_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """``{train, val, test}`` fractions (any subset), each >= 0, summing to 1; returned in that order."""
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise ValueError(f"split_fractions names {unknown}; splits are {list(SPLITS)}")
    ordered = {name: float(fractions[name]) for name in SPLITS if name in fractions}
    if any(not math.isfinite(v) or v < 0 for v in ordered.values()) or not math.isclose(sum(ordered.values()), 1.0,
                                                                                            abs_tol=1e-6):
        raise ValueError(f"split_fractions must be non-negative and sum to 1, not {dict(fractions)}")
    return ordered


def hash_split(patient_id: str, fractions: Mapping[str, float]) -> str:
    """The split of ``patient_id``: sha256 of the id as a number in [0, 1), cut at the cumulative fractions."""
    ordered = check_split_fractions(fractions)
    position = int.from_bytes(hashlib.sha256(patient_id.encode("utf-8")).digest()[:8], "big") / 2**64
    total = 0.0
    for name, fraction in ordered.items():
        total += fraction
        if position < total:
            return name
    return next(name for name, fraction in reversed(ordered.items()) if fraction > 0)  # rounding at the top end


def path_exists(path: Path) -> bool:
    """A file or folder, or a record named without its suffix (WFDB ``rec`` for ``rec.hea``)."""
    return path.exists() or any(True for _ in path.parent.glob(glob.escape(path.name) + ".*"))


def read_record_manifest(
    manifest: str | Path,
    modalities: Sequence[str],
    split: str | None = None,
    split_fractions: Mapping[str, float] | None = None,
    on_error: str = "raise",
) -> tuple[list[PatientRecord], list[RecordError]]:
    """The rows of ``split`` (None: all) as records, and the row problems skipped under ``on_error: skip``.

    Args:
        manifest: a ``.csv`` or ``.jsonl`` file; relative paths in it start from its folder.
        modalities: the run's modality names, in the run's order (records list their files in this order).
        split: keep this split's rows; None keeps every row.
        split_fractions: ``{train: 0.8, val: 0.1, test: 0.1}``, used when the manifest has no split column.
        on_error: ``raise`` stops at the first row problem; ``skip`` returns the problems instead.

    Raises:
        FileNotFoundError: no manifest; RecordError: see the module docstring; ValueError: bad arguments.
    """
    check_on_error(on_error)
    manifest = Path(manifest).expanduser().absolute()  # record paths stay valid whatever the working folder
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, not {split!r}")
    reserved = sorted(set(modalities) & set(REQUIRED + OPTIONAL))
    if reserved:
        raise ValueError(f"modality name(s) {reserved} collide with the manifest columns {list(REQUIRED + OPTIONAL)}")
    if not manifest.is_file():
        raise FileNotFoundError(f"patient manifest not found: {manifest}")
    suffix = manifest.suffix.lower()
    if suffix == ".csv":
        columns, rows = _read_csv(manifest)
    elif suffix == ".jsonl":
        columns, rows = _read_jsonl(manifest)
    else:
        raise ValueError(f"{manifest}: a patient manifest is a .csv or .jsonl file, not {manifest.suffix or 'no suffix'}")
    _check_columns(manifest, columns, rows, modalities, suffix == ".jsonl")

    has_split = "split" in columns
    if not has_split and split_fractions is None:
        raise ValueError(f"{manifest} has no split column: give split_fractions (e.g. train: 0.8, val: 0.1, test: 0.1)")
    splits = _assign_splits(manifest, rows, has_split, split_fractions)

    records, problems = [], []
    for row, ((line, cells), row_split) in enumerate(zip(rows, splits)):
        if split is not None and row_split != split:
            continue
        try:
            records.append(_record(manifest, row, line, cells, row_split, modalities))
        except RecordError as err:
            if on_error == "raise":
                raise
            problems.append(err)
    return records, problems


# ---- reading ---------------------------------------------------------------------------------------------
def _read_csv(manifest: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Header and ``(line, cells)`` rows; every cell a string (an answer such as ``None`` stays text)."""
    with open(manifest, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise RecordError(manifest, None, "empty file (no header row)")
        header = [name.strip() for name in header]
        duplicated = sorted({name for name in header if header.count(name) > 1})
        if duplicated:
            raise RecordError(manifest, 1, f"column(s) {duplicated} appear more than once in the header")
        rows, line = [], reader.line_num + 1
        for cells in reader:
            if not any(cell.strip() for cell in cells):  # a blank line
                line = reader.line_num + 1
                continue
            if len(cells) > len(header):
                raise RecordError(manifest, line, f"{len(cells)} cells but the header has {len(header)} columns")
            rows.append((line, dict(zip(header, cells + [""] * (len(header) - len(cells))))))
            line = reader.line_num + 1  # a quoted cell may span lines: the next row starts after them
    return header, rows


def _read_jsonl(manifest: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Every key used on any line (first-seen order) and ``(line, object)`` rows."""
    columns: dict[str, None] = {}
    rows = []
    with open(manifest, encoding="utf-8-sig") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                cells = json.loads(text)
            except json.JSONDecodeError as err:
                raise RecordError(manifest, line, f"not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(cells, dict):
                raise RecordError(manifest, line, f"a line must hold a JSON object, not {type(cells).__name__}")
            columns.update(dict.fromkeys(cells))
            rows.append((line, cells))
    return list(columns), rows


def _check_columns(manifest: Path, columns: list[str], rows: list[tuple[int, dict]], modalities: Sequence[str],
                   per_row: bool) -> None:
    """Required columns present (JSONL: on every line), no column the run does not know."""
    known = set(REQUIRED + OPTIONAL) | set(modalities)
    unknown = [name for name in columns if name not in known]
    if unknown:
        first = next((line for line, cells in rows if set(cells) & set(unknown)), 1) if per_row else 1
        raise RecordError(manifest, first, f"unknown column(s) {unknown}: the columns are {list(REQUIRED)}, optional "
                          f"{list(OPTIONAL)}, and one per modality of this run ({', '.join(modalities) or 'none'}); "
                          "a modality the run does not read must be added to modality=[...]")
    missing = [name for name in REQUIRED if name not in columns]
    if missing:
        raise RecordError(manifest, 1, f"missing required column(s) {missing}")
    if per_row:
        for line, cells in rows:
            absent = [name for name in REQUIRED if name not in cells]
            if absent:
                raise RecordError(manifest, line, f"missing required key(s) {absent}")


def _text(manifest: Path, line: int, cells: dict, column: str) -> str:
    """A cell as stripped text: absent or null is empty; anything but a string (JSONL) is a row problem."""
    value = cells.get(column)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RecordError(manifest, line, f"{column} must be a string, not {type(value).__name__} {value!r}")
    return value.strip()


def _assign_splits(manifest: Path, rows: list[tuple[int, dict]], has_split: bool,
                   split_fractions: Mapping[str, float] | None) -> list[str]:
    """Every row's split (column or hash), checking that no patient spans two splits."""
    if not has_split:
        check_split_fractions(split_fractions)
    splits, seen = [], {}  # patient_id -> (split, line first seen)
    for line, cells in rows:
        patient = _text(manifest, line, cells, "patient_id")
        if not patient:
            raise RecordError(manifest, line, "empty patient_id (splits are made by patient)")
        if not has_split:
            splits.append(hash_split(patient, split_fractions))
            continue
        value = _text(manifest, line, cells, "split")
        if value not in SPLITS:
            raise RecordError(manifest, line, f"split {value!r} is not one of {list(SPLITS)} (the manifest has a "
                              "split column, so every row needs one)")
        first = seen.setdefault(patient, (value, line))
        if first[0] != value:
            raise RecordError(manifest, line, f"patient {patient!r} is in split {value!r} here but in {first[0]!r} "
                              f"on line {first[1]}: one patient must stay in one split")
        splits.append(value)
    return splits


# ---- one row ---------------------------------------------------------------------------------------------
def _record(manifest: Path, row: int, line: int, cells: dict, split: str, modalities: Sequence[str]) -> PatientRecord:
    def problem(text: str) -> RecordError:
        return RecordError(manifest, line, text)

    question, answer = _text(manifest, line, cells, "question"), _text(manifest, line, cells, "answer")
    for column, value in (("question", question), ("answer", answer)):
        if not value:
            raise problem(f"empty {column}")
    note = _text(manifest, line, cells, "note")
    label = _label(manifest, line, cells.get("label"))
    facts = _facts(manifest, line, cells.get("facts"))
    signals = {}
    for modality in modalities:
        paths = _paths(manifest, line, cells.get(modality), modality)
        if paths:
            signals[modality] = paths
    if not signals and not note:
        raise problem("no files of any modality and no note: nothing to answer from")
    _check_tags(question, signals, modalities, problem)
    return PatientRecord(row=row, line=line, patient_id=_text(manifest, line, cells, "patient_id"), split=split,
                         question=question, answer=answer, label=label, note=note, signals=signals, facts=facts)


def _facts(manifest: Path, line: int, value: Any) -> dict[str, float]:
    """``{name: number}`` from a JSON object or ``name=value;name=value``; blank or null is none."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        pairs = [item.partition("=") for item in value.split(";")]
        if any(not name.strip() or not sep for name, sep, _ in pairs):
            raise RecordError(manifest, line, f"facts {value!r}: write them as name=number;name=number")
        value = {name.strip(): number.strip() for name, _, number in pairs}
    if not isinstance(value, dict):
        raise RecordError(manifest, line, f"facts must be an object of name: number, not {value!r}")
    facts = {}
    for name, number in value.items():
        try:
            facts[str(name)] = float(number)
        except (TypeError, ValueError):
            raise RecordError(manifest, line, f"fact {name!r}: {number!r} is not a number") from None
        if not math.isfinite(facts[str(name)]):
            raise RecordError(manifest, line, f"fact {name!r}: {number!r} is not finite")
    return facts


def _label(manifest: Path, line: int, value: Any) -> str | dict[str, str] | None:
    """A class, ``{part: class}``, or None: from a string (``part=CLASS;part=CLASS``) or a JSON object."""
    if value is None:
        return None
    if isinstance(value, dict):
        parts = {}
        for part, cls in value.items():
            if not isinstance(cls, str) or not part.strip() or not cls.strip():
                raise RecordError(manifest, line, f"label part {part!r}: {cls!r} must name a class (a non-empty string)")
            parts[part.strip()] = cls.strip()
        return parts or None
    if not isinstance(value, str):
        raise RecordError(manifest, line, f"label must be a string or an object of part: class, not {value!r}")
    value = value.strip()
    if "=" not in value:
        return value or None
    parts = {}
    for item in value.split(";"):
        part, _, cls = item.partition("=")
        if not part.strip() or not cls.strip() or "=" in cls:
            raise RecordError(manifest, line, f"label {value!r}: write parts as part=CLASS;part=CLASS")
        if part.strip() in parts:
            raise RecordError(manifest, line, f"label {value!r} names part {part.strip()!r} twice")
        parts[part.strip()] = cls.strip()
    return parts


def _paths(manifest: Path, line: int, value: Any, modality: str) -> tuple[str, ...]:
    """A modality cell as resolved paths that exist: ``a|b`` or a JSON list; blank or null is none."""
    if value is None:
        return ()
    if isinstance(value, str):
        items = value.split(PATH_SEPARATOR) if value.strip() else []
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = value
    else:
        raise RecordError(manifest, line, f"{modality} must be a path, paths joined by '{PATH_SEPARATOR}' or a list "
                          f"of paths, not {value!r}")
    paths = []
    for item in items:
        if not item.strip():
            raise RecordError(manifest, line, f"empty entry in the {modality} paths {value!r}")
        path = Path(item.strip()).expanduser()
        path = path if path.is_absolute() else manifest.parent / path
        if not path_exists(path):
            raise RecordError(manifest, line, f"{modality} file not found: {path}")
        paths.append(str(path))
    return tuple(paths)


def _check_tags(question: str, signals: dict[str, tuple[str, ...]], modalities: Sequence[str], problem) -> None:
    """Tags name the run's modalities (or the note); when a question has any, one per file of each modality."""
    known = {f"<{name}>" for name in modalities} | {NOTE_MARKER}
    strangers = sorted(set(TAG_SHAPE.findall(question)) - known)
    if strangers:
        raise problem(f"question has tag(s) {strangers} naming no modality of this run ({', '.join(modalities)})")
    if question.count(NOTE_MARKER) > 1:
        raise problem(f"question has {question.count(NOTE_MARKER)} {NOTE_MARKER} markers; one places the note")
    counts = {name: question.count(f"<{name}>") for name in modalities}
    if any(counts.values()):
        wrong = {name: (found, len(signals.get(name, ()))) for name, found in counts.items()
                 if found != len(signals.get(name, ()))}
        if wrong:
            detail = ", ".join(f"{found} <{name}> tag(s) for {files} file(s)" for name, (found, files) in wrong.items())
            raise problem(f"question has {detail}")
