"""``eval.py reasoning=sample|uncertainty_search``: run the rows of ``mmmed.reasoning.measure`` on a split, write
``reasoning.json`` (the table, the uncertainty figures, every answer with its sources) and ``reasoning.png``
(risk-coverage and reliability), and print the table."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from torch.utils.data import Dataset

from mmmed.eval.metrics import CROP_SEPARATOR
from mmmed.knowledge.bm25_index import KnowledgeIndex
from mmmed.knowledge.cases import CaseIndex, case_passages, record_embeddings
from mmmed.model.generation import GenerationSettings
from mmmed.reasoning.measure import ROWS, Questions, calibrate, measure
from mmmed.reasoning.sampling import greedy_answers, longer_prompts, model_queries, sampled_answers
from mmmed.reasoning.search import QUERY_INSTRUCTION, SearchSettings
from mmmed.reasoning.uncertainty import AnswerKey

log = logging.getLogger(__name__)
MODES = ("none", "sample", "uncertainty_search")


def split_questions(dataset: Dataset, name: str) -> Questions:
    """The questions of a split that carry a class label (the others cannot be scored by class: counted, logged)."""
    ids, questions, records, labels, unlabelled = [], [], [], [], 0
    for index in range(len(dataset)):
        item = dataset[index]
        if CROP_SEPARATOR in item["id"]:
            raise ValueError(f"{name}: item {item['id']} is one of several evaluation views of a record; "
                             "reasoning= scores one answer per record (set the modality's eval_crops: 1)")
        if not isinstance(item["label"], str):
            unlabelled += 1
            continue
        ids.append(item["id"])
        questions.append(item["question"])
        records.append(item["signals"])
        labels.append(item["label"])
    if unlabelled:
        log.info("%s: %d questions without a class label are not scored by reasoning=", name, unlabelled)
    if not questions:
        raise ValueError(f"{name}: no question has a class label; reasoning= scores answers by class (answer_classes)")
    return Questions(ids, questions, records, labels)


def run_reasoning_eval(mode: str, search_cfg: Mapping, predictor, test: Questions, val: Questions | None,
                       answer_classes: Mapping[str, str], max_new_tokens: int, out_dir: Path) -> dict:
    """The table for ``mode`` (``sample``: none and sample rows; ``uncertainty_search``: every row)."""
    if mode not in MODES[1:]:
        raise ValueError(f"reasoning must be one of {MODES}, not {mode!r}")
    with longer_prompts(predictor, search_cfg["max_prompt_tokens"]):
        return _run_reasoning_eval(mode, search_cfg, predictor, test, val, answer_classes, max_new_tokens, out_dir)


def _run_reasoning_eval(mode: str, search_cfg: Mapping, predictor, test: Questions, val: Questions | None,
                        answer_classes: Mapping[str, str], max_new_tokens: int, out_dir: Path) -> dict:
    key = AnswerKey(answer_classes)
    generation = GenerationSettings(max_new_tokens=search_cfg["max_new_tokens"] or max_new_tokens, do_sample=True,
                                    temperature=search_cfg["temperature"], top_p=search_cfg["top_p"],
                                    num_samples=search_cfg["num_samples"], use_cache=True)
    sample = sampled_answers(predictor, generation, search_cfg["batch_size"], search_cfg["seed"])
    greedy = greedy_answers(predictor, search_cfg["batch_size"])
    report: dict = {"mode": mode, "search": dict(search_cfg), "num_questions": len(test.questions)}
    if mode == "sample":
        index, threshold = None, {"threshold": float("inf"), "calibrated": False}
    else:
        index = KnowledgeIndex.load(search_cfg["index"])
        if search_cfg["threshold"] == "calibrate":
            if val is None:
                raise ValueError("search.threshold=calibrate needs the validation split")
            log.info("calibrating the threshold: %d validation questions x %d samples", len(val.questions),
                     generation.num_samples)
            val_first = sample(val.questions, val.records)
            threshold = calibrate(val_first, key, search_cfg["target_rate"])
            log.info("threshold %.3f bits (validation retrieval rate %.2f)", threshold["threshold"],
                     threshold["val_rate"])
        else:
            threshold = {"threshold": float(search_cfg["threshold"]), "calibrated": False}
    report["threshold"] = threshold
    case_lookup, cases_k = None, 0
    if mode == "uncertainty_search" and search_cfg.get("cases"):
        cases = CaseIndex.load(search_cfg["cases"])
        vectors = record_embeddings(predictor.model, test.records)  # (N, D): each test record's own embedding
        case_lookup, cases_k = (lambda i, k: case_passages(cases, vectors[i], k)), search_cfg["cases_k"]
    settings = SearchSettings(threshold=threshold["threshold"], max_rounds=search_cfg["max_rounds"],
                              max_queries=search_cfg["max_queries"], top_k=search_cfg["top_k"],
                              queries=search_cfg["queries"], seed=search_cfg["seed"], cases_k=cases_k)
    log.info("round 0: %d test questions x %d samples", len(test.questions), generation.num_samples)
    first = sample(test.questions, test.records)
    writer = model_queries(predictor, QUERY_INSTRUCTION, search_cfg["batch_size"]) if search_cfg["queries"] == "model" else None
    measured = measure(test, greedy, sample, index, key, settings, first, search_cfg["num_bootstrap"],
                       search_cfg["confidence"], search_cfg["ece_bins"],
                       rows_wanted=("none", "sample") if mode == "sample" else ROWS, case_lookup=case_lookup,
                       write_queries=writer)
    report.update(rows=measured["rows"], uncertainty=measured["uncertainty"])
    out_dir.mkdir(parents=True, exist_ok=True)
    answers = [{"id": i, "question": q, "label": y, **{row: per[n] for row, per in measured["per_question"].items()}}
               for n, (i, q, y) in enumerate(zip(test.ids, test.questions, test.labels))]
    (out_dir / "reasoning.json").write_text(json.dumps({**report, "answers": answers}, indent=1))
    plot_uncertainty(report, out_dir / "reasoning.png")
    return report


def format_table(report: dict) -> str:
    """The rows as a Markdown table (accuracy with its interval, retrieval rate, rounds, latency)."""
    lines = ["| row | accuracy | 95% CI | retrieval rate | mean rounds | s/question |", "|---|---|---|---|---|---|"]
    for row, r in report["rows"].items():
        seconds = "-" if r["seconds_per_question"] is None else f"{r['seconds_per_question']:.2f}"
        lines.append(f"| {row} | {r['accuracy']:.3f} | [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | "
                     f"{r['retrieval_rate']:.2f} | {r['mean_rounds']:.2f} | {seconds} |")
    u = report["uncertainty"]
    lines.append("")
    lines.append(f"round-0 entropy as confidence: AURC {u['risk_coverage']['aurc']:.3f}, error AUROC "
                 f"{u['error_auroc']:.3f}, ECE {u['calibration']['ece']:.3f}; threshold {report['threshold']['threshold']:.3f} bits")
    return "\n".join(lines)


def plot_uncertainty(report: dict, path: Path) -> Path:
    """Risk-coverage curve (left) and reliability diagram (right) of the round-0 samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    u = report["uncertainty"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    rc = u["risk_coverage"]
    left.step([0.0] + rc["coverage"], [rc["risk"][0]] + rc["risk"], where="post")
    left.set(xlabel="coverage (answered, most certain first)", ylabel="risk (error rate)",
             title=f"risk-coverage, AURC {rc['aurc']:.3f}", xlim=(0, 1), ylim=(0, max(0.05, max(rc["risk"]) * 1.1)))
    bins = u["calibration"]["bins"]
    right.plot([0, 1], [0, 1], linestyle=":", color="grey")
    right.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o")
    right.set(xlabel="confidence (majority share of samples)", ylabel="accuracy",
              title=f"reliability, ECE {u['calibration']['ece']:.3f}", xlim=(0, 1), ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
