"""eval.py and predict.py with reasoning= on a nano model (the real embedded SmolLM2) trained briefly on the
criterion demo: the table's rows are recomputed from the per-question record it writes, and every retrieved
passage is traced back to the knowledge index."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import eval as eval_script
import predict as predict_script
from mmmed.infer.inference import load
from mmmed.knowledge.__main__ import main as knowledge_main
from mmmed.knowledge.bm25_index import KnowledgeIndex, KnowledgeIndexError
from mmmed.knowledge.cases import Case, CaseIndex, record_embeddings
from mmmed.knowledge.documents import read_chunks
from mmmed.reasoning.measure import ROWS
from mmmed.reasoning.metrics import risk_coverage
from mmmed.reasoning.uncertainty import AnswerKey, answer_entropy, majority
from tests.conftest import compose_app
from train import train

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
YES_NO = {"YES": "^\\W*yes\\b", "NO": "^\\W*no\\b"}


@pytest.fixture(scope="module")
def criterion_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(run folder, knowledge index, ECG demo folder): 24 training steps on the criterion demo over 30 demo patients
    (3 val and 3 test records: 6 questions each), and the shipped cards indexed."""
    out = tmp_path_factory.mktemp("criterion")
    cfg = compose_app("train", ["experiment=criterion_demo", "stage=align", f"data.root={out / 'criteria'}",
                                f"data.prepare.ptbxl.root={out / 'demo'}", f"ecg_signal.cache.cache_dir={out / 'cache'}",
                                "data.prepare.ptbxl.num_patients=30", "data.prepare.ptbxl.heldout_patients=0",
                                "trainer.max_steps=24", "trainer.val_check_interval=24", "logger=csv",
                                "scheduler.warmup_steps=4", "test_after_fit=false"], out / "run", resolve=True)
    train(cfg)
    index = KnowledgeIndex.build(read_chunks(REPO / "knowledge" / "cards", 120), 1.5, 0.75, "lucene", "en")
    index.save(out / "index")
    return out / "run", out / "index", out / "demo"


def run_eval(run: Path, out: Path, *overrides: str) -> dict:
    # 40 new tokens hold a worked answer (~35); the briefly trained model often runs on, and a full 64 costs minutes
    cfg = compose_app("eval", [f"ckpt={run}", "logger=csv", "num_pictures=0", "search.max_new_tokens=40", *overrides],
                      out, resolve=True)
    return eval_script.evaluate(cfg)


def test_the_uncertainty_table_is_what_its_answers_say(criterion_run, tmp_path):
    run, index_dir, _ = criterion_run
    report = run_eval(run, tmp_path, "reasoning=uncertainty_search", f"search.index={index_dir}", "search.target_rate=0.5")
    written = json.loads((tmp_path / "reasoning.json").read_text())
    assert (tmp_path / "reasoning.png").stat().st_size > 0
    assert list(report["rows"]) == list(ROWS) and written["rows"] == json.loads(json.dumps(report["rows"]))
    answers = written["answers"]
    n = len(answers)
    assert n == 6 and all(row["n"] == n for row in report["rows"].values())
    key = AnswerKey(YES_NO)
    index = KnowledgeIndex.load(index_dir)
    chunks = {c.chunk_id: c for c in index.chunks}

    # none: the greedy answers eval.py scores without reasoning=
    plain = run_eval(run, tmp_path / "plain")
    assert report["rows"]["none"]["accuracy"] == pytest.approx(plain["metrics"]["accuracy"])
    # sample: the majority of the round-0 samples
    votes = [majority([key(s) for s in a["sample"]["samples"]]) for a in answers]
    assert report["rows"]["sample"]["accuracy"] == pytest.approx(sum(v == a["label"] for v, a in zip(votes, answers)) / n)

    threshold = report["threshold"]
    assert threshold["calibrated"] and threshold["val_rate"] <= 0.5
    for row in ("uncertainty", "always", "random_trigger", "placebo"):
        results = [a[row] for a in answers]
        accuracy = sum(r["answer_key"] == a["label"] for r, a in zip(results, answers)) / n
        assert report["rows"][row]["accuracy"] == pytest.approx(accuracy)
        assert report["rows"][row]["retrieval_rate"] == pytest.approx(sum(r["rounds"] > 0 for r in results) / n)
        for r, a in zip(results, answers):
            # every row starts from the same round-0 samples, so their entropy is the same
            assert r["entropies"][0] == pytest.approx(answer_entropy([key(s) for s in a["sample"]["samples"]]))
            assert r["rounds"] <= 2 and len(r["entropies"]) == r["rounds"] + 1 and len(r["queries"]) == r["rounds"]
            assert bool(r["passages"]) == (r["rounds"] > 0)
            for passage in r["passages"]:  # every source is a real chunk of the index, cited as the index has it
                chunk = chunks[passage["id"]]
                assert (passage["title"], passage["source"], passage["licence"]) == (chunk.title, chunk.source, chunk.licence)
            if row in ("uncertainty", "placebo"):
                assert (r["rounds"] > 0) == (r["entropies"][0] > threshold["threshold"])
                if r["rounds"] > 0 and r["entropies"][1] > threshold["threshold"]:
                    assert r["rounds"] == 2  # still unsure after one round: it retrieves again
            if row == "always":
                assert r["rounds"] == 1
            if row == "placebo" and r["rounds"]:
                related = {p.chunk.doc_id for q in r["queries"][0] for p in index.search(q, k=2)}
                assert not related & {chunks[p["id"]].doc_id for p in r["passages"][:2]}
    retrieved = sum(a["random_trigger"]["rounds"] > 0 for a in answers)
    assert retrieved == round(report["rows"]["uncertainty"]["retrieval_rate"] * n)

    entropy = [answer_entropy([key(s) for s in a["sample"]["samples"]]) for a in answers]
    expected = risk_coverage([-e for e in entropy], [v == a["label"] for v, a in zip(votes, answers)])
    assert report["uncertainty"]["risk_coverage"]["aurc"] == pytest.approx(expected["aurc"])


def test_predict_prints_the_passages_an_answer_used(criterion_run, tmp_path, capsys):
    run, index_dir, demo = criterion_run
    record = demo / "records100" / "00000" / "00001_lr.hea"
    question = "Does this ECG meet the criteria for sinus tachycardia?"
    cfg = compose_app("predict", [f"ckpt={run}", f"input={str(record)[:-4]}", f"question={question}",
                                  "reasoning=uncertainty_search", f"search.index={index_dir}", "search.threshold=-1",
                                  "search.max_rounds=1", "pictures=false"], tmp_path, resolve=True)
    predict_script.main.__wrapped__(cfg)
    printed = capsys.readouterr().out
    [row] = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert row["rounds"] == 1 and len(row["passages"]) == 2  # threshold -1: every question retrieves
    assert row["passages"][0]["id"].startswith("ecg-sinus-tachycardia#")
    assert row["queries"][0][0] == question
    for n, passage in enumerate(row["passages"], start=1):
        assert f"[{n}] {passage['title']}" in printed and passage["source"] in printed
    assert row["answer"] in printed and not math.isnan(row["entropies"][0])


def test_a_missing_index_fails_before_any_answer_is_sampled(criterion_run, tmp_path):
    run, _, _ = criterion_run
    with pytest.raises(KnowledgeIndexError, match=f"{tmp_path / 'nowhere'}: no knowledge index there"):
        run_eval(run, tmp_path / "out", "reasoning=uncertainty_search", f"search.index={tmp_path / 'nowhere'}")
    assert not (tmp_path / "out" / "reasoning.json").exists()


def test_the_case_index_holds_training_cases_only_and_finds_a_record_itself(criterion_run, tmp_path):
    run, index_dir, _ = criterion_run
    knowledge_main(["cases", f"ckpt={run}", f"out={tmp_path / 'cases'}"])
    cases = CaseIndex.load(tmp_path / "cases")
    manifest = [json.loads(line) for line in (run.parent / "criteria" / "records.jsonl").read_text().splitlines()]
    split_of = {row["patient_id"]: row["split"] for row in manifest}
    assert len(cases.cases) == sum(row["split"] == "train" for row in manifest)  # every training question, once
    assert {split_of[c.patient_id] for c in cases.cases} == {"train"}  # no validation or test patient
    heldout = {p for p, s in split_of.items() if s != "train"}
    assert heldout and not heldout & {c.patient_id for c in cases.cases}

    # a training record's own embedding finds it (or a question on the same record) at cosine 1
    predictor = load(run)
    first = next(row for row in manifest if row["split"] == "train")
    record = predictor.record_inputs(first["ecg"])[0]
    [(nearest, similarity)] = cases.search(record_embeddings(predictor.model, [record])[0], k=1)
    assert nearest.patient_id == first["patient_id"] and similarity == pytest.approx(1.0, abs=1e-5)

    # eval with cases: retrieval rounds carry cited cases next to the cards
    report = run_eval(run, tmp_path / "eval", "reasoning=uncertainty_search", f"search.index={index_dir}",
                      f"search.cases={tmp_path / 'cases'}", "search.cases_k=1", "search.threshold=-1",
                      "search.num_samples=2")
    answers = json.loads((tmp_path / "eval" / "reasoning.json").read_text())["answers"]
    for answer in answers:
        ids = [p["id"] for p in answer["uncertainty"]["passages"]]
        # cases_k=1: the record's nearest case, once (a second round finds the same one, already in the prompt)
        assert sum(i.startswith("case:") for i in ids) == min(answer["uncertainty"]["rounds"], 1)
        assert all(split_of[i.split(":", 1)[1].split("/")[0]] == "train" for i in ids if i.startswith("case:"))
    assert all(not p["id"].startswith("case:") for a in answers for p in a["placebo"]["passages"])
    assert report["rows"]["uncertainty"]["retrieval_rate"] == 1.0  # threshold -1: every question retrieves

    with pytest.raises(ValueError, match="training cases only"):
        CaseIndex.build(np.ones((1, 4), dtype=np.float32), [Case("x", "p", "test", "q", "a", None)], {})
