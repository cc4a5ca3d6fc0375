"""How unsure the model is about a question: the entropy of its sampled final answers, and the threshold above
which it retrieves (Med-Gemini's uncertainty-guided search).

Several answers are sampled; each is reduced to the answer it *means* (:class:`AnswerKey`: the class its
``answer_classes`` pattern names, else its set of items), and the Shannon entropy, in bits, of the distribution of
those keys is the uncertainty. Five samples that all say "yes" give 0 bits; 3 "yes" and 2 "no" give 0.971 bits; five
different answers give log2(5) = 2.32 bits. For closed answers this is enough (FACTS.md: semantic-entropy clustering
adds nothing when answers are classes). A completion that does not parse is its own answer, ``unparsed``: a model
that cannot state an answer is unsure.

The threshold is given, or calibrated on validation questions for a target retrieval rate (:func:`calibrate_threshold`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

from mmmed.eval.metrics import UNPARSED, AnswerClassifier, answer_items
from mmmed.eval.rationale import parse_rationale


class AnswerKey:
    """What an answer means, for counting agreement: its class (``answer_classes``) or its item set."""

    def __init__(self, answer_classes: Mapping[str, str] | None):
        self.classifier = AnswerClassifier(dict(answer_classes)) if answer_classes else None

    def __call__(self, completion: str) -> str:
        """The key of one completion: ``Reasoning: ... Answer: X`` is read as X; plain text as itself."""
        rationale = parse_rationale(completion)
        answer = rationale.answer if rationale else completion
        if not answer.strip() or (completion.lstrip().startswith("Reasoning:") and rationale is None):
            return UNPARSED
        if self.classifier is not None:
            return self.classifier(answer)
        items = answer_items(answer)
        return "; ".join(sorted(items)) if items else UNPARSED


def answer_entropy(keys: Sequence[str]) -> float:
    """Shannon entropy in bits of the empirical distribution of ``keys`` (0 for one distinct key)."""
    if not keys:
        raise ValueError("the entropy of no answers is undefined")
    n = len(keys)
    return max(0.0, -sum(c / n * math.log2(c / n) for c in Counter(keys).values()))


def majority(keys: Sequence[str]) -> str:
    """The most frequent key; a tie goes to the key sampled first (so the greedy-like first sample decides)."""
    counts = Counter(keys)
    best = max(counts.values())
    return next(k for k in keys if counts[k] == best)


def calibrate_threshold(entropies: Sequence[float], target_rate: float) -> tuple[float, float]:
    """The smallest threshold whose retrieval rate (share of ``entropies`` strictly above it) is at most
    ``target_rate``; returns ``(threshold, achieved rate)``.

    Entropies of N samples take few distinct values, so the achieved rate can be below the target: the threshold
    is always one of the observed entropies (or 0 when even retrieving for every uncertain question stays within
    the target), never a value between two of them that would depend on how ties are broken.
    """
    if not entropies:
        raise ValueError("calibrating a threshold needs at least one validation entropy")
    if not 0.0 <= target_rate <= 1.0:
        raise ValueError(f"target retrieval rate {target_rate} is not in [0, 1]")
    n = len(entropies)
    for threshold in sorted({0.0, *entropies}):
        rate = sum(e > threshold for e in entropies) / n
        if rate <= target_rate:
            return float(threshold), rate
    raise AssertionError("unreachable: the largest entropy retrieves for no question")
