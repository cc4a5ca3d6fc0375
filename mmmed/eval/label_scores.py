"""Per-label probabilities from the likelihoods of candidate answers, for label-set AUROC.

A generated answer is one point on the ROC curve; AUROC needs a score per label. The score comes from
the model's likelihood of each answer that asserts the label (``mmmed.model.generation.score_options``):

* ``set``: the answer lists the labels present, in the order of ``labels``, joined by ``separator``
  (PTB-XL superclasses: ``"MI, STTC"``). Every non-empty subset written that way is a candidate
  answer (plus ``empty_answer`` when one is given). The model's probabilities over these well-formed
  answers (a softmax of their log-likelihoods) give each label's probability of being listed: the
  sum over the candidates that list it.
* ``yes_no``: each question asks about one label named in it (CheXpert: "Is there edema in this chest
  X-ray?"), answered ``yes`` or ``no``; the score is P(yes) of the two-way softmax.
"""

from __future__ import annotations

import math
from itertools import combinations

from mmmed.eval.metrics import answer_items

MODES = ("set", "yes_no")
MAX_SET_LABELS = 10  # 2^10 - 1 candidate answers per sample


def softmax(values: list[float]) -> list[float]:
    """Probabilities from log-likelihoods, computed stably."""
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


class LabelScoring:
    """Candidate answers per question and the per-label probabilities and targets they give.

    Args:
        mode: ``set`` or ``yes_no`` (see the module docstring).
        labels: the labels, in the order a ``set`` answer lists them.
        separator: joins labels in a ``set`` answer.
        empty_answer: a ``set`` answer naming no label (e.g. "None."), or None when every sample has one.
        yes: the positive answer of ``yes_no`` questions, as the model was trained to give it.
        no: the negative answer.
    """

    def __init__(self, mode: str, labels: list[str], separator: str, empty_answer: str | None, yes: str,
                 no: str) -> None:
        if mode not in MODES:
            raise ValueError(f"label_scores.mode must be one of {MODES}, not {mode!r}")
        if not labels or len(set(labels)) != len(labels):
            raise ValueError(f"label_scores.labels must name distinct labels, got {labels}")
        if mode == "set" and len(labels) > MAX_SET_LABELS:
            raise ValueError(f"label_scores: {len(labels)} labels make {2 ** len(labels) - 1} candidate answers per "
                             f"sample; at most {MAX_SET_LABELS} labels are supported in set mode")
        self.mode, self.labels, self.separator = mode, list(labels), separator
        self.empty_answer, self.yes, self.no = empty_answer, yes, no
        if mode == "set":
            subsets = [combo for size in range(1, len(labels) + 1) for combo in combinations(self.labels, size)]
            self._candidates = [(separator.join(combo), frozenset(combo)) for combo in subsets]
            if empty_answer is not None:
                self._candidates.append((empty_answer, frozenset()))
        self._by_length = sorted(self.labels, key=len, reverse=True)

    def label_of_question(self, question: str) -> str:
        """``yes_no``: the label a question asks about (the longest label named in it)."""
        text = question.lower()
        for label in self._by_length:
            if label.lower() in text:
                return label
        raise ValueError(f"label_scores: the question names none of the labels {self.labels}: {question!r}")

    def options(self, question: str) -> list[str]:
        """The candidate answers to score for one question."""
        if self.mode == "set":
            return [text for text, _ in self._candidates]
        return [self.yes, self.no]

    def probabilities(self, question: str, option_logprobs: list[float]) -> dict[str, float]:
        """Each applicable label's probability from the candidates' log-likelihoods (in ``options`` order)."""
        probs = softmax(option_logprobs)
        if self.mode == "yes_no":
            return {self.label_of_question(question): probs[0]}
        return {label: sum(p for p, (_, listed) in zip(probs, self._candidates) if label in listed)
                for label in self.labels}

    def targets(self, question: str, reference: str) -> dict[str, float]:
        """Each applicable label's truth (1.0 present, 0.0 absent) from the reference answer."""
        items = answer_items(reference)
        if self.mode == "set":
            known = {label.lower() for label in self.labels}
            if self.empty_answer is not None and items == answer_items(self.empty_answer):
                items = frozenset()
            unknown = items - known
            if unknown:
                raise ValueError(f"label_scores: reference {reference!r} lists {sorted(unknown)}, not among {self.labels}")
            return {label: float(label.lower() in items) for label in self.labels}
        for value, answer in ((1.0, self.yes), (0.0, self.no)):
            if items == answer_items(answer):
                return {self.label_of_question(question): value}
        raise ValueError(f"label_scores: reference {reference!r} is neither {self.yes!r} nor {self.no!r}")
