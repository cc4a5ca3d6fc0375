"""Patient-record manifests: CSV and JSONL read alike, path lists, labels, splits by patient, clear errors."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from mmmed_datasets.common.record_manifest import (
    RecordError,
    check_split_fractions,
    hash_split,
    read_record_manifest,
)

MODALITIES = ["ecg", "xray"]
FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def base_row(**overrides) -> dict:
    return {"patient_id": "p1", "question": "What rhythm?", "answer": "Sinus rhythm.", **overrides}


def test_csv_and_jsonl_give_the_same_records(tmp_path):
    touch(tmp_path, "p1/ecg.hea", "p1/a.dcm", "p1/b.dcm", "p2/ecg.hea")
    absolute = tmp_path / "p2" / "ecg.hea"
    csv_rows = [
        base_row(ecg="p1/ecg.hea", xray="p1/a.dcm|p1/b.dcm", label="rhythm=SR;finding=LEFT", note=" Age 70. ",
                 split="train"),
        base_row(patient_id="p2", ecg=str(absolute), xray="", label="SR", note="", split="test"),
    ]
    json_rows = [
        base_row(ecg="p1/ecg.hea", xray=["p1/a.dcm", "p1/b.dcm"], label={"rhythm": "SR", "finding": "LEFT"},
                 note="Age 70.", split="train"),
        base_row(patient_id="p2", ecg=str(absolute), label="SR", split="test"),  # xray and note absent
    ]
    from_csv, skipped_csv = read_record_manifest(write_csv(tmp_path / "m.csv", csv_rows), MODALITIES)
    from_jsonl, skipped_jsonl = read_record_manifest(write_jsonl(tmp_path / "m.jsonl", json_rows), MODALITIES)
    assert skipped_csv == skipped_jsonl == []
    fields = lambda r: (r.row, r.patient_id, r.split, r.question, r.answer, r.label, r.note, r.signals)  # noqa: E731
    assert [fields(r) for r in from_csv] == [fields(r) for r in from_jsonl]
    first, second = from_csv
    assert first.signals == {"ecg": (str(tmp_path / "p1/ecg.hea"),),
                             "xray": (str(tmp_path / "p1/a.dcm"), str(tmp_path / "p1/b.dcm"))}  # relative: manifest's folder
    assert first.label == {"rhythm": "SR", "finding": "LEFT"} and first.note == "Age 70."
    assert second.signals == {"ecg": (str(absolute),)} and second.label == "SR"  # no xray entry at all
    assert (first.line, second.line) == (2, 3)


def test_facts_are_numbers_read_alike_from_csv_and_jsonl_and_bad_ones_name_the_line(tmp_path):
    touch(tmp_path, "e.hea")
    csv_rows = [base_row(ecg="e.hea", facts="heart_rate=82.4; qrs_ms=96"), base_row(patient_id="p2", ecg="e.hea", facts="")]
    json_rows = [base_row(ecg="e.hea", facts={"heart_rate": 82.4, "qrs_ms": 96}), base_row(patient_id="p2", ecg="e.hea")]
    split = {"train": 1.0, "val": 0.0, "test": 0.0}
    from_csv, _ = read_record_manifest(write_csv(tmp_path / "m.csv", csv_rows), MODALITIES, split_fractions=split)
    from_jsonl, _ = read_record_manifest(write_jsonl(tmp_path / "m.jsonl", json_rows), MODALITIES, split_fractions=split)
    assert [r.facts for r in from_csv] == [r.facts for r in from_jsonl] == [{"heart_rate": 82.4, "qrs_ms": 96.0}, {}]
    for bad, expected in [("heart_rate", "name=number"), ("heart_rate=fast", "'fast' is not a number"),
                          ("heart_rate=nan", "not finite")]:
        path = write_csv(tmp_path / "bad.csv", [base_row(ecg="e.hea", facts=bad)])
        with pytest.raises(RecordError, match=rf"bad\.csv, line 2: .*{expected}"):
            read_record_manifest(path, MODALITIES, split_fractions=split)
    with pytest.raises(RecordError, match="facts must be an object"):
        read_record_manifest(write_jsonl(tmp_path / "bad.jsonl", [base_row(ecg="e.hea", facts=[82])]), MODALITIES,
                             split_fractions=split)


def test_split_filter_keeps_row_numbers(tmp_path):
    touch(tmp_path, "e.hea")
    rows = [base_row(patient_id=f"p{i}", ecg="e.hea", split=s) for i, s in enumerate(["train", "test", "train"])]
    records, _ = read_record_manifest(write_csv(tmp_path / "m.csv", rows), MODALITIES, split="train")
    assert [(r.row, r.line, r.patient_id) for r in records] == [(0, 2, "p0"), (2, 4, "p2")]


def test_a_wfdb_record_may_be_named_without_its_suffix(tmp_path):
    touch(tmp_path, "rec/100.hea", "rec/100.dat")
    records, _ = read_record_manifest(write_csv(tmp_path / "m.csv", [base_row(ecg="rec/100", split="val")]), MODALITIES)
    assert records[0].signals == {"ecg": (str(tmp_path / "rec/100"),)}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_an_unknown_column_is_an_error_listing_it(tmp_path, suffix):
    touch(tmp_path, "e.hea", "x.dcm")
    rows = [base_row(ecg="e.hea", split="train"), base_row(patient_id="p2", ecg="e.hea", xrays="x.dcm", split="train")]
    path = write_csv(tmp_path / "m.csv", rows) if suffix == ".csv" else write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(RecordError, match=r"unknown column\(s\) \['xrays'\].*ecg, xray") as err:
        read_record_manifest(path, MODALITIES)
    assert err.value.line == (1 if suffix == ".csv" else 2) and str(path) in str(err.value)
    # A modality the run does not read is not silently dropped either.
    with pytest.raises(RecordError, match=r"unknown column\(s\) \['xray'\].*modality=\["):
        read_record_manifest(write_csv(tmp_path / "n.csv", [base_row(ecg="e.hea", xray="x.dcm", split="val")]), ["ecg"])


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_missing_required_columns_name_the_file_and_line(tmp_path, suffix):
    touch(tmp_path, "e.hea")
    rows = [{"patient_id": "p1", "question": "Q?", "ecg": "e.hea", "split": "train"}]
    path = write_csv(tmp_path / "m.csv", rows) if suffix == ".csv" else write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(RecordError, match=r"line 1: missing required (column|key)\(s\) \['answer'\]") as err:
        read_record_manifest(path, MODALITIES)
    assert str(path) in str(err.value)


def test_row_problems_name_the_line_and_are_returned_under_skip(tmp_path):
    touch(tmp_path, "e.hea")
    rows = [
        base_row(patient_id="ok", ecg="e.hea"),
        base_row(patient_id="blank-q", question="  ", ecg="e.hea"),
        base_row(patient_id="blank-a", answer="", ecg="e.hea"),
        base_row(patient_id="missing", ecg="e.hea|gone.hea"),
        base_row(patient_id="nothing"),  # no files and no note
        base_row(patient_id="note-only", note="Age 70, cough."),
        base_row(patient_id="bad-label", ecg="e.hea", label="rhythm=SR;finding"),
        base_row(patient_id="tags", ecg="e.hea", question="<ecg> <xray> What?"),
        base_row(patient_id="stranger", ecg="e.hea", question="<lab> What?"),
        base_row(patient_id="empty-entry", ecg="e.hea||e.hea"),
    ]
    path = write_csv(tmp_path / "m.csv", [{**r, "split": "train"} for r in rows],
                     ["patient_id", "question", "answer", "label", "note", "split", "ecg"])
    with pytest.raises(RecordError, match=r"m\.csv, line 3: empty question"):
        read_record_manifest(path, MODALITIES)
    records, problems = read_record_manifest(path, MODALITIES, on_error="skip")
    assert [r.patient_id for r in records] == ["ok", "note-only"]
    assert records[1].signals == {} and records[1].note == "Age 70, cough."
    messages = [str(p) for p in problems]
    assert [p.line for p in problems] == [3, 4, 5, 6, 8, 9, 10, 11]
    for text, expected in zip(messages, ["empty question", "empty answer", f"ecg file not found: {tmp_path / 'gone.hea'}",
                                         "no files of any modality and no note", "part=CLASS;part=CLASS",
                                         "1 <xray> tag(s) for 0 file(s)", "['<lab>']", "empty entry"]):
        assert expected in text and str(path) in text


def test_hash_splits_keep_every_patient_in_one_split_whatever_the_order(tmp_path):
    touch(tmp_path, "e.hea")
    rng = random.Random(0)
    rows = [base_row(patient_id=f"patient-{i}", ecg="e.hea") for i in range(1500) for _ in range(rng.randint(1, 3))]
    rng.shuffle(rows)
    records, _ = read_record_manifest(write_csv(tmp_path / "m.csv", rows), MODALITIES, split_fractions=FRACTIONS)
    splits = defaultdict(set)
    for record in records:
        splits[record.patient_id].add(record.split)
    assert all(len(s) == 1 for s in splits.values()) and len(splits) == 1500  # never two splits
    counts = Counter(next(iter(s)) for s in splits.values())
    assert abs(counts["train"] / 1500 - 0.8) < 0.04 and abs(counts["test"] / 1500 - 0.1) < 0.03
    # The same patient gets the same split in another manifest, in another order, split by split.
    rows.reverse()
    again = write_csv(tmp_path / "again.csv", rows)
    for split in ("train", "val", "test"):
        chosen, _ = read_record_manifest(again, MODALITIES, split=split, split_fractions=FRACTIONS)
        assert {r.patient_id for r in chosen} == {p for p, s in splits.items() if s == {split}}
    assert hash_split("patient-7", {"test": 0.1, "train": 0.8, "val": 0.1}) == hash_split("patient-7", FRACTIONS)
    assert hash_split("anyone", {"train": 1.0}) == "train"


def test_bad_split_fractions_and_a_missing_split_source_are_refused(tmp_path):
    with pytest.raises(ValueError, match="sum to 1"):
        check_split_fractions({"train": 0.8, "val": 0.1})
    with pytest.raises(ValueError, match=r"\['valid'\]"):
        check_split_fractions({"train": 0.9, "valid": 0.1})
    touch(tmp_path, "e.hea")
    with pytest.raises(ValueError, match="no split column: give split_fractions"):
        read_record_manifest(write_csv(tmp_path / "m.csv", [base_row(ecg="e.hea")]), MODALITIES)


def test_a_patient_in_two_splits_is_an_error_naming_it(tmp_path):
    touch(tmp_path, "e.hea")
    rows = [base_row(patient_id="p1", ecg="e.hea", split="train"), base_row(patient_id="p2", ecg="e.hea", split="test"),
            base_row(patient_id="p1", ecg="e.hea", split="test")]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    for on_error in ("raise", "skip"):  # the splits are never guessed, whatever the policy
        with pytest.raises(RecordError, match=r"line 3: patient 'p1' is in split 'test' here but in 'train' on line 1"):
            read_record_manifest(path, MODALITIES, split="val", on_error=on_error)


def test_split_values_and_patient_ids_must_be_given(tmp_path):
    touch(tmp_path, "e.hea")
    with pytest.raises(RecordError, match=r"line 2: split 'validate' is not one of"):
        read_record_manifest(write_csv(tmp_path / "a.csv", [base_row(ecg="e.hea", split="validate")]), MODALITIES)
    with pytest.raises(RecordError, match=r"line 2: empty patient_id"):
        read_record_manifest(write_csv(tmp_path / "b.csv", [base_row(patient_id=" ", ecg="e.hea", split="train")]),
                             MODALITIES, on_error="skip")


def test_wrong_file_types_and_modality_names(tmp_path):
    (tmp_path / "m.tsv").write_text("patient_id\tquestion\tanswer\n")
    with pytest.raises(ValueError, match=r"\.csv or \.jsonl"):
        read_record_manifest(tmp_path / "m.tsv", MODALITIES)
    with pytest.raises(FileNotFoundError):
        read_record_manifest(tmp_path / "absent.csv", MODALITIES)
    with pytest.raises(ValueError, match="collide"):
        read_record_manifest(tmp_path / "m.tsv", ["ecg", "note"])
    (tmp_path / "bad.jsonl").write_text('{"patient_id": "p1"}\n[1, 2]\n')
    with pytest.raises(RecordError, match="line 2: a line must hold a JSON object"):
        read_record_manifest(tmp_path / "bad.jsonl", MODALITIES)
