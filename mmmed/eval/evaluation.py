"""Score a split's answers: the one code path behind validation during training and ``eval.py``.

Per batch (``Evaluator.batch_rows``): greedy answers, their class, and, when the data names a label
set, each label's probability from the likelihoods of the candidate answers (``label_scores.py``).
Per split (``Evaluator.summarize``), on records (several evaluation windows of one ECG vote):

* closed questions: accuracy over the answer classes, per-class precision/recall/F1, exact match;
* label sets: per-label and macro AUROC with bootstrap confidence intervals;
* free text (``report_metrics``): BLEU-1/4 and ROUGE-L; CheXbert/RadGraph F1 only with their weights;
* measured values (``answer_values``, e.g. the heart rate in "Sinus tachycardia at 123 bpm."): the mean absolute
  error between the number an answer states and the reference's, over references that state one; an answer
  that states none is counted (``missing``) and left out of the mean.

A model asked for reasoning (``reasoning=True``: a self-trained model, ``mmmed/selftrain``) writes
``Reasoning: ... Answer: ...``; its answer is what the strict parser (``rationale.py``) finds after ``Answer:``,
and a completion it cannot parse has no answer (scored wrong). Rows keep the whole completion and the reasoning.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import numpy as np
import torch

from mmmed.eval.classification_metrics import auroc_with_ci, per_class_prf
from mmmed.model.generation import GenerationSettings, generate_answers, score_options, signals_per_sample
from mmmed.eval.label_scores import LabelScoring
from mmmed.eval.metrics import CROP_SEPARATOR, aggregate_crops, class_accuracy, exact_match
from mmmed.eval.rationale import parse_rationale
from mmmed.eval.scoring import AnswerScorer
from mmmed.model.multimodal_lm import MultimodalLM
from mmmed.model.prompts import ChatFormatter
from mmmed.eval.text_metrics import clinical_metrics, report_metrics


class Evaluator:
    """Turns batches into scored rows and rows into a split's metrics.

    Args:
        formatter: the chat formatter of the model being scored.
        answer_classes: class -> regular expression naming it in an answer ({} when answers are not classes).
        generation: decoding settings (greedy for scoring).
        label_scores: the label set for AUROC, or None.
        report_metrics: ``text`` for free-text reports (BLEU-1/4, ROUGE-L), ``radiology`` to add CheXbert and
            RadGraph F1 (with their weights), None for short answers.
        bootstrap: ``{"resamples": int, "confidence": float, "seed": int}`` for AUROC intervals.
        option_batch_size: candidate answers teacher-forced per forward pass.
        chexbert_weights: local CheXbert weights for CheXbert F1, or None (skipped, with the reason).
        radgraph_weights: local RadGraph weights for RadGraph F1, or None.
        answer_parts: for answers with several parts (a patient's rhythm *and* X-ray finding): part -> {class ->
            regular expression}; each sample's label is then ``{part: class}`` for the parts its question asks,
            each part is scored on its own (``parts.<part>``), and ``accuracy`` is the share of samples with every
            asked part right.
        reasoning: whether the questions ask for a rationale (module docstring): the answer is then parsed from
            after ``Answer:``.
        answer_values: value name -> regular expression whose first group is the number an answer states (the
            same expression reads the reference); each is scored by its mean absolute error.
    """

    def __init__(self, formatter: ChatFormatter, answer_classes: dict[str, str], generation: GenerationSettings,
                 label_scores: LabelScoring | None, report_metrics: str | None, bootstrap: dict, option_batch_size: int,
                 chexbert_weights: str | None, radgraph_weights: str | None, *,
                 answer_parts: dict[str, dict[str, str]] | None = None, reasoning: bool = False,
                 answer_values: dict[str, str] | None = None) -> None:
        if generation.do_sample:
            raise ValueError("evaluation decodes greedily: scores of sampled answers change from run to run")
        self.formatter = formatter
        self.scorer = AnswerScorer(answer_classes, answer_parts)  # the rule the self-training filter also uses
        self.classes, self.classifier = self.scorer.classes, self.scorer.classifier
        self.parts, self.part_classes = self.scorer.part_classifiers, self.scorer.part_classes
        self.generation = generation
        self.label_scores = label_scores
        self.report_metrics = report_metrics
        self.bootstrap = dict(bootstrap)
        self.option_batch_size = option_batch_size
        self.chexbert_weights = chexbert_weights
        self.radgraph_weights = radgraph_weights
        self.reasoning = reasoning
        self.values = {name: re.compile(pattern, re.IGNORECASE) for name, pattern in (answer_values or {}).items()}
        odd = [name for name, pattern in self.values.items() if pattern.groups < 1]
        if odd:
            raise ValueError(f"data.answer_values: {odd} must capture the number in a group, e.g. '(\\d+) bpm'")

    @torch.no_grad()
    def batch_rows(self, model: MultimodalLM, batch: dict, with_label_scores: bool = True) -> list[dict]:
        """One row per sample: id, question, reference, answer, classes, and label probabilities/targets."""
        completions = [samples[0] for samples in generate_answers(
            model, self.formatter, batch["prompt_input_ids"], batch["prompt_attention_mask"], batch["signals"],
            self.generation)]
        rows = self.answer_rows(batch, completions)
        if self.label_scores is not None and with_label_scores:
            scoring = self.label_scores
            per_sample = signals_per_sample(batch["prompt_input_ids"], batch["signals"], self.formatter)
            options = [scoring.options(q) for q in batch["questions"]]
            logprobs = score_options(model, self.formatter, batch["questions"], per_sample, options,
                                     self.option_batch_size, batch["prompt_input_ids"].device)
            for row, scores in zip(rows, logprobs):
                row["label_probs"] = scoring.probabilities(row["question"], scores)
                row["label_targets"] = scoring.targets(row["question"], row["reference"])
        return rows

    def answer_rows(self, batch: dict, completions: list[str]) -> list[dict]:
        """Rows of a batch's generated completions: the answer (after ``Answer:`` when asking for reasoning), its
        class and parts."""
        rows = [{"id": batch["ids"][i], "question": batch["questions"][i], "reference": batch["references"][i],
                 "answer": text, "reference_label": batch["reference_labels"][i]} for i, text in enumerate(completions)]
        for row in rows:
            if self.reasoning:
                parsed = parse_rationale(row["answer"])
                row["completion"], row["reasoning"] = row["answer"], parsed.reasoning if parsed else None
                row["answer"] = parsed.answer if parsed else ""  # no answer found: wrong, never guessed
            row["predicted_label"] = self.classifier(row["answer"])
            if self.parts:
                row["predicted_parts"] = self.scorer.parts(row["answer"])
        return rows

    def summarize(self, rows: list[dict]) -> dict:
        """The split's metrics (JSON-serialisable) from its rows; records with several windows vote first."""
        records = merge_crops(rows)
        predicted = [r["predicted_label"] for r in records]
        summary: dict = {"num_samples": len(records), "skipped": {}}
        if self.classes:
            accuracy, scored = class_accuracy(predicted, [r["reference_label"] for r in records])
            summary.update(accuracy=accuracy, num_scored=scored)
            if scored:
                summary["classes"] = per_class_prf(predicted, [r["reference_label"] for r in records], self.classes)
        if self.parts:
            summary.update(self._part_scores(records))
        summary["exact_match"] = exact_match([r["answer"] for r in records], [r["reference"] for r in records])
        scored_rows = [r for r in records if "label_probs" in r]
        if self.label_scores is not None and scored_rows:
            labels = self.label_scores.labels
            scores = np.array([[r["label_probs"].get(label, 0.0) for label in labels] for r in scored_rows])  # (N, C)
            targets = np.array([[r["label_targets"].get(label, math.nan) for label in labels]
                                for r in scored_rows])  # (N, C): NaN where a row does not ask about the label
            summary["auroc"] = auroc_with_ci(scores, targets, labels, self.bootstrap["resamples"],
                                             self.bootstrap["confidence"], self.bootstrap["seed"])
        if self.values:
            summary["values"] = {name: value_error([r["answer"] for r in records], [r["reference"] for r in records],
                                                   pattern) for name, pattern in self.values.items()}
        if self.report_metrics:
            answers, references = [r["answer"] for r in records], [r["reference"] for r in records]
            summary["report"] = report_metrics(answers, references)
            if self.report_metrics == "radiology":  # CheXbert and RadGraph read radiology reports only
                clinical, skipped = clinical_metrics(answers, references, self.chexbert_weights, self.radgraph_weights)
                summary["report"].update(clinical)
                summary["skipped"].update(skipped)
        return summary


    def _part_scores(self, records: list[dict]) -> dict:
        """Per part: accuracy and per-class P/R/F1 over the samples whose label asks that part; overall: every
        asked part right."""
        labelled = [r for r in records if isinstance(r["reference_label"], dict) and r["reference_label"]]
        for r in labelled:  # from the record's answer: after several windows voted, that is the voted one
            r["predicted_parts"] = self.scorer.parts(r["answer"])
        parts = {}
        for part, classes in self.part_classes.items():
            asked = [r for r in labelled if part in r["reference_label"]]
            predicted = [r["predicted_parts"][part] for r in asked]
            references = [r["reference_label"][part] for r in asked]
            accuracy, scored = class_accuracy(predicted, references)
            parts[part] = {"accuracy": accuracy, "num_scored": scored}
            if scored:
                parts[part]["classes"] = per_class_prf(predicted, references, classes)
        all_right = [self.scorer.is_correct(r["answer"], r["reference"], r["reference_label"]) for r in labelled]
        return {"parts": parts, "accuracy": float(np.mean(all_right)) if all_right else math.nan,
                "num_scored": len(all_right)}


def stated_value(text: str, pattern: re.Pattern) -> float | None:
    """The first number ``pattern`` finds in ``text`` (its first group), or None."""
    found = pattern.search(text)
    return float(found.group(1)) if found else None


def value_error(answers: list[str], references: list[str], pattern: re.Pattern) -> dict:
    """Mean absolute error of the stated values over the references that state one; ``missing``: answers to
    those that state none (left out of the mean, which is NaN when no answer states one)."""
    errors, missing = [], 0
    for answer, reference in zip(answers, references):
        truth = stated_value(reference, pattern)
        if truth is None:
            continue
        said = stated_value(answer, pattern)
        if said is None:
            missing += 1
        else:
            errors.append(abs(said - truth))
    return {"mae": float(np.mean(errors)) if errors else math.nan, "num_scored": len(errors) + missing,
            "missing": missing}


def merge_crops(rows: list[dict]) -> list[dict]:
    """Records from rows per evaluation window: answers vote (``aggregate_crops``), label probabilities average."""
    records = aggregate_crops(rows)
    probs: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if "label_probs" in row:
            probs[row["id"].split(CROP_SEPARATOR)[0]].append(row)
    for record in records:
        windows = probs.get(record["id"].split(CROP_SEPARATOR)[0])
        if windows:
            record["label_probs"] = {label: float(np.mean([w["label_probs"][label] for w in windows]))
                                     for label in windows[0]["label_probs"]}
            record["label_targets"] = windows[0]["label_targets"]
    return records


def scalar_metrics(summary: dict) -> dict[str, float]:
    """The numbers worth a curve: accuracy, exact match, macro F1 and AUROC, text scores (no prefix)."""
    scalars = {key: float(summary[key]) for key in ("accuracy", "num_scored", "exact_match") if key in summary}
    for part, scores in summary.get("parts", {}).items():
        scalars[f"{part}_accuracy"] = float(scores["accuracy"])
    if "classes" in summary:
        scalars["macro_f1"] = float(summary["classes"]["macro"]["f1"])
    if "auroc" in summary:
        scalars["macro_auroc"] = float(summary["auroc"]["macro_auroc"])
    for name, scores in summary.get("values", {}).items():
        if math.isfinite(scores["mae"]):  # no answer stated a value: nothing to chart (summary keeps the counts)
            scalars[f"{name}_mae"] = float(scores["mae"])
    for key, value in summary.get("report", {}).items():
        if isinstance(value, (int, float)) and key != "count":
            scalars[key] = float(value)
    return scalars


def json_safe(value):
    """``value`` with NaN/inf floats as None: strict JSON readers refuse ``NaN`` (undefined AUROC, no scored rows)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
