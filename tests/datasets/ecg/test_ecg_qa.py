"""ECGQADataset over a hand-built miniature PTB-XL + ECG-QA layout, through collation and the model splice;
the ECG-QA-format demo; and a short training run on data=ecg_qa_demo."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import wfdb

from mmmed.model.adapters import MLPProjector
from mmmed.model.collate import MultimodalCollator
from mmmed.model.multimodal_lm import MultimodalLM
from mmmed.model.prompts import ChatFormatter, Modality
from mmmed_datasets.demo.demo_folder import MANIFEST
from mmmed_datasets.ecg.ecg_cache import ECGSignalCache
from mmmed_datasets.demo.ecg_demo import PTBXL_LEAD_NAMES, record_paths, write_ptbxl_record
from mmmed_datasets.ecg.ecg_preprocess import ECGPreprocessing
from mmmed_datasets.ecg.ecg_qa import ECGQADataset
from mmmed_datasets.demo.ecg_qa_demo import ensure_demo_ecg_qa
from mmmed_datasets.ecg.ecg_signal import CANONICAL_LEADS, ECGRecordError
from tests.conftest import NANO_SOURCE

SINGLE = "<ecg>\n{question}"
COMPARISON = "First ECG: <ecg>\nSecond ECG: <ecg>\n{question}"
SHUFFLED = 1003  # written with its leads in another order, so only selection by name passes
BROKEN = 2002  # its .dat file is cut short

# Two ECG-QA files of one split: singles of three kinds and comparisons, ecg_ids not in sorted order.
FILES = {
    "00000.json": [
        {"sample_id": 0, "question_type": "single-verify", "question": "Does this ECG show sinus rhythm?",
         "answer": ["yes"], "ecg_id": [5]},
        {"sample_id": 1, "question_type": "comparison_irrelevant-query",
         "question": "What rhythms of the second ECG are absent in the first ECG?",
         "answer": ["sinus rhythm", "left axis deviation"], "ecg_id": [1003, 5]},
        {"sample_id": 2, "question_type": "single-query", "question": "What kind of noise does this ECG show?",
         "answer": ["none"], "ecg_id": [17]},
    ],
    "10000.json": [
        {"sample_id": 10000, "question_type": "comparison_consecutive-verify",
         "question": "Is there a change in the heart axis?", "answer": ["not sure"], "ecg_id": [17, 1003]},
        {"sample_id": 10001, "question_type": "single-choose",
         "question": "Which rhythm, sinus rhythm or atrial fibrillation, does this ECG show?",
         "answer": ["sinus rhythm"], "ecg_id": [1003]},
    ],
}
IDS = ["ecgqa/train/0", "ecgqa/train/1", "ecgqa/train/2", "ecgqa/train/10000", "ecgqa/train/10001"]


def make_signal(ecg_id: int, fs: int) -> np.ndarray:
    """(10 s * fs, 12) mV, different per record, rate and lead."""
    rng = np.random.default_rng(ecg_id * 1000 + fs)
    t = np.arange(10 * fs) / fs
    return np.sin(2 * np.pi * (1 + ecg_id % 7) * t)[:, None] * np.linspace(0.2, 2.0, 12) + rng.normal(0, 0.1, (10 * fs, 12))


def full(entry: dict) -> dict:
    """An ECG-QA sample with the keys this reader ignores too, as in the real files."""
    return {"template_id": 1, "question_id": 0, "attribute_type": "scp_code", "attribute": None, **entry}


def write_qa(root: Path, split: str, files: dict[str, list[dict]]) -> Path:
    (root / split).mkdir(parents=True, exist_ok=True)
    for name, entries in files.items():
        (root / split / name).write_text(json.dumps([full(e) for e in entries]))
    return root


@pytest.fixture(scope="module")
def ptbxl(tmp_path_factory) -> Path:
    """ecg_ids 5, 17, 1003 (leads stored shuffled) and 2002 (truncated) at 100 and 500 Hz."""
    root = tmp_path_factory.mktemp("ptbxl")
    rows = []
    for ecg_id in (5, 17, SHUFFLED, BROKEN):
        filename_lr, filename_hr = record_paths(ecg_id)
        for fs, rel in ((100, filename_lr), (500, filename_hr)):
            if ecg_id == SHUFFLED:
                order = np.random.default_rng(0).permutation(12)
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                wfdb.wrsamp(Path(rel).name, fs=fs, units=["mV"] * 12, sig_name=[PTBXL_LEAD_NAMES[k] for k in order],
                            p_signal=make_signal(ecg_id, fs)[:, order], fmt=["16"] * 12, adc_gain=[1000.0] * 12,
                            baseline=[0] * 12, write_dir=str((root / rel).parent))
            else:
                write_ptbxl_record(root, rel, make_signal(ecg_id, fs), fs)
            if ecg_id == BROKEN:
                dat = root / f"{rel}.dat"
                dat.write_bytes(dat.read_bytes()[:1000])
        rows.append({"ecg_id": ecg_id, "strat_fold": 1, "filename_lr": filename_lr, "filename_hr": filename_hr})
    pd.DataFrame(rows).set_index("ecg_id").to_csv(root / "ptbxl_database.csv")
    return root


@pytest.fixture(scope="module")
def qa(tmp_path_factory) -> Path:
    return write_qa(tmp_path_factory.mktemp("ecgqa"), "train", FILES)


def preprocessing(fs: int) -> ECGPreprocessing:
    """No resampling, whole 10 s records, per-record z-score: what ``read_independently`` computes."""
    return ECGPreprocessing(list(CANONICAL_LEADS), None, 1, fs, 10, "error", "reject", "error", None, 4, None, 30, "record", "center", 1)


def dataset(qa: Path, ptbxl: Path, split: str = "train", fs: int = 100, types=None, on_error="raise", cache=None,
            single: str = SINGLE, comparison: str = COMPARISON) -> ECGQADataset:
    return ECGQADataset(str(qa), split, str(ptbxl), fs, types, single, comparison, preprocessing(fs), False, on_error, cache)


def read_independently(ptbxl: Path, ecg_id: int, fs: int) -> np.ndarray:
    """The record read with wfdb itself, leads put in canonical order by name, z-scored per lead: (12, T) float64."""
    rel = record_paths(ecg_id)[0 if fs == 100 else 1]
    record = wfdb.rdrecord(str(ptbxl / rel))
    names = [name.lower() for name in record.sig_name]
    x = record.p_signal.T[[names.index(lead.lower()) for lead in CANONICAL_LEADS]]  # (12, T)
    return (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)


# ---- samples -------------------------------------------------------------------------------
def test_items_questions_answers_and_labels(qa, ptbxl):
    ds = dataset(qa, ptbxl)
    items = [ds[i] for i in range(len(ds))]
    assert [item["id"] for item in items] == IDS
    assert [item["question"] for item in items] == [
        "<ecg>\nDoes this ECG show sinus rhythm?",
        "First ECG: <ecg>\nSecond ECG: <ecg>\nWhat rhythms of the second ECG are absent in the first ECG?",
        "<ecg>\nWhat kind of noise does this ECG show?",
        "First ECG: <ecg>\nSecond ECG: <ecg>\nIs there a change in the heart axis?",
        "<ecg>\nWhich rhythm, sinus rhythm or atrial fibrillation, does this ECG show?",
    ]
    assert [item["answer"] for item in items] == ["yes", "sinus rhythm, left axis deviation", "none", "not sure", "sinus rhythm"]
    assert [item["label"] for item in items] == ["yes", None, None, "not sure", None]  # verify questions only
    assert [len(item["signals"]["ecg"]) for item in items] == [1, 2, 1, 2, 1]
    assert [item["question"].count("<ecg>") for item in items] == [1, 2, 1, 2, 1]
    assert ds.stats == {"samples": 5, "skipped": 0, "filtered": 0, "type/single-verify": 1, "type/single-choose": 1,
                        "type/single-query": 1, "type/comparison_consecutive-verify": 1, "type/comparison_consecutive-query": 0,
                        "type/comparison_irrelevant-verify": 0, "type/comparison_irrelevant-query": 1}


@pytest.mark.parametrize("fs", [100, 500])
@pytest.mark.parametrize("cached", [False, True])
def test_comparison_carries_both_records_in_ecg_id_order(qa, ptbxl, tmp_path, fs, cached):
    ds = dataset(qa, ptbxl, fs=fs, cache=ECGSignalCache(tmp_path, workers=0) if cached else None)
    item = ds[IDS.index("ecgqa/train/1")]  # ecg_id [1003, 5]
    first, second = item["signals"]["ecg"]
    for got, ecg_id in ((first, SHUFFLED), (second, 5)):
        assert got["signal"].shape == (12, 10 * fs) and got["signal"].dtype == torch.float32
        assert got["lead_mask"].tolist() == [True] * 12
        np.testing.assert_allclose(got["signal"].numpy(), read_independently(ptbxl, ecg_id, fs), rtol=0, atol=2e-5)
    assert not np.allclose(first["signal"].numpy(), second["signal"].numpy(), atol=0.1)


# ---- batches and the splice ----------------------------------------------------------------
N_TOKENS = 8


def formatter_for(tiny_llm) -> ChatFormatter:
    return ChatFormatter(tiny_llm.tokenizer, [Modality("ecg", N_TOKENS)], "Be brief.", max_length=256)


def placeholder_runs(ids: torch.Tensor, pid: int) -> list[torch.Tensor]:
    """Positions of each contiguous run of placeholder tokens in one row."""
    where = (ids == pid).nonzero().squeeze(1)
    breaks = (torch.diff(where) != 1).nonzero().squeeze(1) + 1
    return list(torch.tensor_split(where, breaks.tolist()))


def mixed_batch(qa, ptbxl, tiny_llm):
    ds = dataset(qa, ptbxl)
    items = [ds[IDS.index("ecgqa/train/1")], ds[IDS.index("ecgqa/train/2")]]  # comparison (1003, 5), single (17)
    formatter = formatter_for(tiny_llm)
    return items, formatter, MultimodalCollator(formatter)(items)


def test_collated_signals_follow_placeholder_order(qa, ptbxl, tiny_llm):
    items, formatter, batch = mixed_batch(qa, ptbxl, tiny_llm)
    expected = [items[0]["signals"]["ecg"][0], items[0]["signals"]["ecg"][1], items[1]["signals"]["ecg"][0]]
    signals = batch["signals"]["ecg"]
    assert signals["signal"].shape == (3, 12, 1000) and signals["lead_mask"].shape == (3, 12)
    for k, sig in enumerate(expected):
        assert torch.equal(signals["signal"][k], sig["signal"]) and torch.equal(signals["lead_mask"][k], sig["lead_mask"])
    pid = formatter.placeholder_ids["ecg"]
    assert [len(placeholder_runs(batch["input_ids"][row], pid)) for row in range(2)] == [2, 1]
    assert all(len(run) == N_TOKENS for row in range(2) for run in placeholder_runs(batch["input_ids"][row], pid))


def test_second_ecg_tokens_land_at_the_second_placeholder_run(qa, ptbxl, tiny_llm):
    from mmmed_encoders.ecg_cnn import ECGCNNEncoder

    items, formatter, batch = mixed_batch(qa, ptbxl, tiny_llm)
    encoder = ECGCNNEncoder(in_leads=12, widths=[8, 16], kernel_size=5, num_tokens=N_TOKENS, lead_mask_input=True)
    model = MultimodalLM(tiny_llm.model, {"ecg": encoder}, MLPProjector, formatter.placeholder_ids).eval()
    embeds = model.embed(batch["input_ids"], batch["signals"])  # (2, L, D)

    def tokens_of(sig: dict) -> torch.Tensor:  # one signal through encoder and adapter on its own: (N, D)
        return model.adapters["ecg"](model.encoders["ecg"](sig["signal"][None], sig["lead_mask"][None]))[0]

    pid = formatter.placeholder_ids["ecg"]
    first_run, second_run = placeholder_runs(batch["input_ids"][0], pid)
    (single_run,) = placeholder_runs(batch["input_ids"][1], pid)
    first, second = tokens_of(items[0]["signals"]["ecg"][0]), tokens_of(items[0]["signals"]["ecg"][1])
    with torch.no_grad():
        torch.testing.assert_close(embeds[0, first_run], first, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(embeds[0, second_run], second, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(embeds[1, single_run], tokens_of(items[1]["signals"]["ecg"][0]), rtol=1e-5, atol=1e-6)
        assert (first - second).abs().max() > 1e-3  # swapped ECGs could not pass


# ---- selection and errors ------------------------------------------------------------------
@pytest.mark.parametrize(
    "types, ids",
    [
        (["single"], ["ecgqa/train/0", "ecgqa/train/2", "ecgqa/train/10001"]),
        (["comparison"], ["ecgqa/train/1", "ecgqa/train/10000"]),
        (["comparison_irrelevant", "single-verify"], ["ecgqa/train/0", "ecgqa/train/1"]),
        (["single-choose"], ["ecgqa/train/10001"]),
    ],
)
def test_question_type_prefixes_select_samples(qa, ptbxl, types, ids):
    ds = dataset(qa, ptbxl, types=types)
    assert [s.id for s in ds.samples] == ids
    assert ds.stats["filtered"] == 5 - len(ids) and ds.stats["samples"] == len(ids)
    assert sum(v for k, v in ds.stats.items() if k.startswith("type/")) == len(ids)
    assert all(key.removeprefix("type/").startswith(tuple(types)) for key in ds.stats if key.startswith("type/"))


def test_untagged_templates_are_accepted_and_leave_the_ecgs_to_the_formatter(qa, ptbxl):
    """No tag at all: the question is ECG-QA's text and the ChatFormatter puts the ECGs first (mmmed/model/prompts.py)."""
    ds = dataset(qa, ptbxl, single="{question}", comparison="Compare them. {question}")
    items = [ds[i] for i in range(len(ds))]
    assert [item["question"] for item in items][:2] == [
        "Does this ECG show sinus rhythm?", "Compare them. What rhythms of the second ECG are absent in the first ECG?"]
    assert [len(item["signals"]["ecg"]) for item in items] == [1, 2, 1, 2, 1]


def test_question_type_typo_and_bad_templates(qa, ptbxl):
    with pytest.raises(ValueError, match=re.escape("question_types prefix 'single-choice' matches none of ECG-QA's types")):
        dataset(qa, ptbxl, types=["single-choice"])
    with pytest.raises(ValueError, match=re.escape("single_template must contain '{question}' once and <ecg> 1 time(s)")):
        dataset(qa, ptbxl, single="<ecg><ecg>\n{question}")
    with pytest.raises(ValueError, match=re.escape("comparison_template must contain '{question}' once and <ecg> 2 time(s)")):
        dataset(qa, ptbxl, comparison="<ecg>\n{question}")
    with pytest.raises(FileNotFoundError, match=re.escape(f"no ECG-QA JSON files in {qa / 'valid'}")):
        dataset(qa, ptbxl, split="valid")


BAD = {
    "missing ecg_id": ({"question_type": "comparison_irrelevant-verify", "answer": ["yes"], "ecg_id": [5, 99999]},
                       "ecg_id [99999] not in {table}"),
    "empty answer": ({"question_type": "single-query", "answer": [], "ecg_id": [5]}, "empty or malformed answer []"),
    "blank answer": ({"question_type": "single-query", "answer": [" "], "ecg_id": [5]}, "empty or malformed answer [' ']"),
    "two ECGs for a single question": ({"question_type": "single-verify", "answer": ["no"], "ecg_id": [5, 17]},
                                       "single-verify question needs 1 ecg_id(s), got [5, 17]"),
    "one ECG for a comparison": ({"question_type": "comparison_consecutive-query", "answer": ["none"], "ecg_id": [5]},
                                 "comparison_consecutive-query question needs 2 ecg_id(s), got [5]"),
    "unknown type": ({"question_type": "single-explain", "answer": ["no"], "ecg_id": [5]}, "unknown question_type 'single-explain'"),
    "tag in the text": ({"question_type": "single-verify", "answer": ["no"], "ecg_id": [5], "question": "Is <ecg> normal?"},
                        "question text is empty or already holds <ecg>: 'Is <ecg> normal?'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_sample_raises_naming_file_and_sample_or_is_counted(ptbxl, tmp_path, case):
    entry, problem = BAD[case]
    good = {"sample_id": 0, "question_type": "single-verify", "question": "Is this ECG normal?", "answer": ["yes"], "ecg_id": [17]}
    root = write_qa(tmp_path, "valid", {"00000.json": [good, {"sample_id": 7, "question": "Q?", **entry}]})
    path = root / "valid" / "00000.json"
    message = f"ECG record {path}: sample_id 7: " + problem.format(table=ptbxl / "ptbxl_database.csv")
    with pytest.raises(ECGRecordError, match=re.escape(message)):
        dataset(root, ptbxl, split="valid")
    ds = dataset(root, ptbxl, split="valid", on_error="skip")
    assert [s.id for s in ds.samples] == ["ecgqa/valid/0"]
    assert ds.stats["skipped"] == 1 and ds.stats["samples"] == 1


def test_a_bad_record_drops_the_whole_comparison(ptbxl, tmp_path):
    entries = [
        {"sample_id": 0, "question_type": "comparison_irrelevant-verify", "question": "Same rhythm?", "answer": ["no"], "ecg_id": [5, BROKEN]},
        {"sample_id": 1, "question_type": "comparison_irrelevant-verify", "question": "Same rhythm?", "answer": ["yes"], "ecg_id": [5, 17]},
    ]
    root = write_qa(tmp_path, "test", {"00000.json": entries})
    ds = dataset(root, ptbxl, split="test", on_error="skip", cache=ECGSignalCache(tmp_path / "cache", workers=0))
    assert [s.id for s in ds.samples] == ["ecgqa/test/1"] and ds.stats["skipped"] == 1
    with pytest.raises(ECGRecordError, match=re.escape(f"ECG record {ptbxl / record_paths(BROKEN)[0]}: signal file")):
        dataset(root, ptbxl, split="test", cache=ECGSignalCache(tmp_path / "cache", workers=0))


def test_duplicate_sample_ids_are_refused(ptbxl, tmp_path):
    entry = {"sample_id": 3, "question_type": "single-verify", "question": "Normal?", "answer": ["yes"], "ecg_id": [5]}
    root = write_qa(tmp_path, "train", {"00000.json": [entry], "10000.json": [entry]})
    with pytest.raises(ValueError, match=re.escape(f"{root / 'train' / '10000.json'}: sample_id 3 also appears in {root / 'train' / '00000.json'}")):
        dataset(root, ptbxl)


def test_config_answer_classes_score_exactly_the_verify_labels(compose, tmp_path):
    from mmmed.eval.metrics import UNPARSED, AnswerClassifier
    from mmmed_datasets.ecg.ecg_qa import VERIFY_ANSWERS

    cfg = compose(["encoder=ecg", "data=ecg_qa", "data.root=/data/ecgqa/ptbxl/paraphrased"], tmp_path)
    classify = AnswerClassifier(dict(cfg.data.answer_classes))
    assert set(cfg.data.answer_classes) == set(VERIFY_ANSWERS)  # labels are these answers, verbatim
    answers = ["yes", "Yes.", "no", "No, it does not.", "not sure", "Not sure.", "none", "sinus rhythm", "yes, no"]
    assert [classify(a) for a in answers] == ["yes", "yes", "no", "no", "not sure", "not sure", UNPARSED, UNPARSED, "yes"]


# ---- the demo ------------------------------------------------------------------------------
# A demo-style PTB-XL table only: the question generator reads nothing else.
DEMO_ROWS = [  # ecg_id, patient_id, rhythm code, heart rate, strat_fold
    (1, 10.0, "SBRAD", 45.0, 1), (2, 11.0, "SR", 70.0, 1), (3, 12.0, "STACH", 120.0, 2), (4, 12.0, "STACH", 118.0, 2),
    (5, 13.0, "SR", 80.0, 8), (6, 14.0, "SBRAD", 50.0, 9), (7, 15.0, "STACH", 130.0, 9), (8, 16.0, "SR", 90.0, 9),
    (9, 17.0, "SR", 66.0, 10), (10, 18.0, "SBRAD", 52.0, 10), (11, 19.0, "STACH", 110.0, 10),
]
NAMES = {"SBRAD": "sinus bradycardia", "SR": "sinus rhythm", "STACH": "sinus tachycardia"}


@pytest.fixture
def demo_table(tmp_path) -> Path:
    rows = [{"ecg_id": e, "patient_id": p, "scp_codes": str({"NORM": 100.0, c: 0.0}), "heart_rate": hr, "strat_fold": f,
             "filename_lr": record_paths(e)[0], "filename_hr": record_paths(e)[1]} for e, p, c, hr, f in DEMO_ROWS]
    pd.DataFrame(rows).set_index("ecg_id").to_csv(tmp_path / "ptbxl_database.csv")
    (tmp_path / MANIFEST).write_text(json.dumps({"num_patients": 10}))
    return tmp_path


def test_demo_questions_are_true_and_split_by_fold(demo_table, tmp_path):
    root = ensure_demo_ecg_qa(tmp_path / "qa", demo_table, seed=3)
    table = pd.read_csv(demo_table / "ptbxl_database.csv", index_col="ecg_id")
    rhythm = {e: NAMES[next(c for c in NAMES if c in ast.literal_eval(s))] for e, s in table["scp_codes"].items()}
    for split, folds in {"train": range(1, 9), "valid": [9], "test": [10]}.items():
        samples = json.loads((root / split / "00000.json").read_text())
        assert [s["sample_id"] for s in samples] == list(range(len(samples)))
        ecgs = {e for s in samples for e in s["ecg_id"]}
        assert ecgs == set(table.index[table["strat_fold"].isin(folds)])  # ECG-QA's rule: train 1-8, valid 9, test 10
        for s in samples:
            ids = s["ecg_id"]
            if s["question_type"] == "single-verify":
                asked = re.fullmatch(r"Does this ECG show (.+)\?", s["question"])[1]
                assert s["answer"] == ["yes" if rhythm[ids[0]] == asked else "no"]
            elif s["question_type"] == "single-query":
                assert s["question"] == "What is the rhythm of this ECG?" and s["answer"] == [rhythm[ids[0]]]
            else:
                assert s["question_type"] == "comparison_irrelevant-verify" and s["attribute"] is None
                assert len(ids) == 2 and table.loc[ids[0], "patient_id"] != table.loc[ids[1], "patient_id"]
                if s["question"] == "Do both ECGs show the same rhythm?":
                    assert s["answer"] == ["yes" if rhythm[ids[0]] == rhythm[ids[1]] else "no"]
                else:
                    assert s["question"] == "Does the first ECG have a faster heart rate than the second?"
                    rates = table.loc[ids, "heart_rate"].tolist()
                    assert abs(rates[0] - rates[1]) >= 10 and s["answer"] == ["yes" if rates[0] > rates[1] else "no"]
        # every record gets a verify and a query question
        assert sorted(s["ecg_id"][0] for s in samples if s["question_type"].startswith("single")) == sorted(2 * list(ecgs))


def test_demo_is_reproducible_and_refuses_other_settings(demo_table, tmp_path):
    a = ensure_demo_ecg_qa(tmp_path / "a", demo_table, seed=3)
    b = ensure_demo_ecg_qa(tmp_path / "b", demo_table, seed=3)
    for split in ("train", "valid", "test"):
        assert (a / split / "00000.json").read_text() == (b / split / "00000.json").read_text()
    assert ensure_demo_ecg_qa(a, demo_table, seed=3) == a
    with pytest.raises(ValueError, match="was generated with"):
        ensure_demo_ecg_qa(a, demo_table, seed=4)


# ---- a training run on the demo config -----------------------------------------------------
def test_training_smoke_run_on_the_demo_config(compose, tmp_path):
    from train import train

    cache = tmp_path / "cache"
    overrides = [
        "encoder=ecg", "data=ecg_qa_demo", "model=tiny", "logger=csv", "trainer.max_steps=2",
        "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        f"paths.cache_dir={cache}", "data.prepare.num_patients=30",
        f"model.llm.tokenizer_from.cache_dir={NANO_SOURCE['cache_dir']}",  # reuse the converted tokenizer
    ]
    cfg = compose(overrides, tmp_path / "run")
    metrics = train(cfg)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics
    qa_root = cache / "demo" / "ecgqa-demo-p30x1-seed0"
    for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        samples = [s for f in sorted((qa_root / name).glob("*.json")) for s in json.loads(f.read_text())]
        assert metrics[f"data/{split}/samples"] == len(samples) and metrics[f"data/{split}/skipped"] == 0
        for qtype in ("single-verify", "single-query", "comparison_irrelevant-verify"):
            assert metrics[f"data/{split}/type/{qtype}"] == sum(s["question_type"] == qtype for s in samples)
    test_samples = [s for f in (qa_root / "test").glob("*.json") for s in json.loads(f.read_text())]
    assert len(test_samples) <= cfg.data.eval_batch_size  # one test batch holds them all
    assert metrics["test/num_scored"] == sum(s["question_type"].endswith("-verify") for s in test_samples)
    assert 0 <= metrics["test/exact_match"] <= 1
