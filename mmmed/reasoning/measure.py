"""The measured table for ``eval.py reasoning=uncertainty_search``: each row answers the same test questions, and
the rows differ only in when and what they retrieve.

Rows:

* ``none``: one greedy answer per question (what eval.py scores without ``reasoning=``);
* ``sample``: ``num_samples`` sampled answers, majority vote, no retrieval (``reasoning=sample``);
* ``uncertainty``: the loop (``mmmed.reasoning.search``) with the threshold given or calibrated on validation;
* ``always``: retrieve once for every question;
* ``random_trigger``: retrieve for a random set of questions as large as ``uncertainty``'s retrieval rate;
* ``placebo``: trigger as ``uncertainty``, but put unrelated passages in the prompt.

Every sampled row starts from the same round-0 samples (drawn once, seeded), so the rows are paired: a difference
between two of them comes from retrieval, not from drawing new samples. Each row reports accuracy with a
bootstrap interval, its retrieval rate, mean retrieval rounds and mean seconds per question; the round-0 entropy
is scored as a confidence: risk-coverage curve, AURC, error AUROC and calibration (ECE, with the majority's share
of the samples as the confidence).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from mmmed.reasoning.metrics import accuracy_with_ci, error_auroc, expected_calibration_error, risk_coverage
from mmmed.reasoning.search import SearchResult, SearchSettings, UncertaintyGuidedSearch
from mmmed.reasoning.uncertainty import AnswerKey, answer_entropy, calibrate_threshold, majority

log = logging.getLogger(__name__)

ROWS = ("none", "sample", "always", "uncertainty", "random_trigger", "placebo")
TRIGGER_OF_ROW = {"always": "always", "uncertainty": "uncertainty", "random_trigger": "random", "placebo": "placebo"}


@dataclasses.dataclass
class Questions:
    """One split's questions: text, encoder inputs, and the reference class each is scored against."""

    ids: list[str]
    questions: list[str]
    records: list  # per question, {modality: [encoder input, ...]}
    labels: list[str]


def calibrate(first: list[list[str]], key: AnswerKey, target_rate: float) -> dict:
    """The threshold chosen on validation samples ``first`` for ``target_rate``, and the rate it gives there."""
    entropies = [answer_entropy([key(c) for c in samples]) for samples in first]
    value, rate = calibrate_threshold(entropies, target_rate)
    return {"threshold": value, "calibrated": True, "target_rate": target_rate, "val_rate": rate}


def measure(questions: Questions, greedy: Callable[[list[str], list], list[str]], sample: Callable, index,
            key: AnswerKey, settings: SearchSettings, first: list[list[str]], num_bootstrap: int,
            confidence: float, ece_bins: int, rows_wanted: tuple[str, ...] = ROWS,
            case_lookup: Callable | None = None, write_queries: Callable | None = None) -> dict:
    """Every row of the table on ``questions``, from their round-0 samples ``first``; returns the report.

    ``greedy`` and ``sample`` take all questions at once (and batch them themselves), so that ``random_trigger``
    picks its questions among all of them.
    """
    rows: dict[str, dict] = {}
    per_question: dict[str, list] = {}

    start = time.perf_counter()
    greedy_answers = greedy(questions.questions, questions.records)
    seconds = (time.perf_counter() - start) / len(questions.questions)
    none_keys = [key(a) for a in greedy_answers]
    rows["none"] = _row([k == y for k, y in zip(none_keys, questions.labels)], 0.0, 0.0, seconds, num_bootstrap,
                        confidence)
    log.info("row none: accuracy %.3f, %.2f s/question", rows["none"]["accuracy"], seconds)
    per_question["none"] = [{"answer": a, "answer_key": k} for a, k in zip(greedy_answers, none_keys)]

    first_keys = [[key(c) for c in samples] for samples in first]
    votes = [majority(keys) for keys in first_keys]
    rows["sample"] = _row([v == y for v, y in zip(votes, questions.labels)], 0.0, 0.0, None, num_bootstrap, confidence)
    per_question["sample"] = [{"answer_key": v, "samples": s} for v, s in zip(votes, first)]

    uncertainty_rate = None
    for row in [r for r in ("uncertainty", "always", "random_trigger", "placebo") if r in rows_wanted]:
        # uncertainty first: random_trigger retrieves for as many questions as it did
        row_settings = dataclasses.replace(settings, trigger=TRIGGER_OF_ROW[row],
                                           random_rate=uncertainty_rate if row == "random_trigger" else 0.0)
        search = UncertaintyGuidedSearch(_replaying(sample, first, questions), index, key, row_settings,
                                         write_queries=_on_records(write_queries, questions),
                                         case_lookup=case_lookup)  # records are question indices here
        start = time.perf_counter()
        results: list[SearchResult] = search.run(questions.questions, list(range(len(questions.questions))))
        seconds = (time.perf_counter() - start) / len(questions.questions)
        correct = [r.key == y for r, y in zip(results, questions.labels)]
        rate = sum(r.retrieved for r in results) / len(results)
        rows[row] = _row(correct, rate, sum(r.rounds for r in results) / len(results), seconds, num_bootstrap,
                         confidence)
        log.info("row %s: accuracy %.3f, retrieval rate %.2f, %.2f s/question", row, rows[row]["accuracy"], rate,
                 seconds)
        per_question[row] = [r.to_json() for r in results]
        if row == "uncertainty":
            uncertainty_rate = rate
    rows["sample"]["seconds_per_question"] = None  # its samples are the sampled rows' round 0, drawn once
    rows = {row: rows[row] for row in ROWS if row in rows}

    entropy = [answer_entropy(keys) for keys in first_keys]
    share = [keys.count(v) / len(keys) for keys, v in zip(first_keys, votes)]
    sample_correct = [v == y for v, y in zip(votes, questions.labels)]
    uncertainty_report = {
        "scored": "round-0 samples: the entropy of their answers (uncertainty) against the majority answer's correctness",
        "risk_coverage": risk_coverage([-e for e in entropy], sample_correct),
        "error_auroc": error_auroc(entropy, sample_correct),
        "calibration": expected_calibration_error(share, sample_correct, ece_bins),
    }
    return {"rows": rows, "uncertainty": uncertainty_report, "per_question": per_question}


def _row(correct: list[bool], rate: float, rounds: float, seconds: float | None, num_bootstrap: int,
         confidence: float) -> dict:
    return {**accuracy_with_ci(correct, num_bootstrap, confidence, seed=0), "retrieval_rate": rate,
            "mean_rounds": rounds, "seconds_per_question": seconds}


def _on_records(write_queries: Callable | None, questions: Questions) -> Callable | None:
    """A query writer over question indices (the loop's records here) calling one over encoder inputs."""
    if write_queries is None:
        return None
    return lambda texts, indices: write_queries(texts, [questions.records[i] for i in indices])


def _replaying(sample: Callable, first: list[list[str]], questions: Questions) -> Callable:
    """A sampler for the loop over question *indices*: round 0 replays ``first``, later rounds sample anew."""
    asked: dict[int, int] = {}

    def replay(prompts: list[str], indices: list[int]) -> list[list[str]]:
        out: list[list[str] | None] = []
        fresh_prompts, fresh_records, fresh_at = [], [], []
        for position, (prompt, i) in enumerate(zip(prompts, indices)):
            if asked.get(i, 0) == 0 and prompt == questions.questions[i]:
                out.append(first[i])
            else:
                out.append(None)
                fresh_prompts.append(prompt)
                fresh_records.append(questions.records[i])
                fresh_at.append(position)
            asked[i] = asked.get(i, 0) + 1
        if fresh_prompts:
            for position, samples in zip(fresh_at, sample(fresh_prompts, fresh_records)):
                out[position] = samples
        return out

    return replay
