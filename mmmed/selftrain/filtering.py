"""Which sampled rationales are kept: parsed, right by the evaluation's rule, and passed by every checker.

A checker (``conf/selftrain`` lists them, built with Hydra) reads the rationale's reasoning and the record's
known facts (``facts``: values measured from the record, e.g. the demo ECG's heart rate) and may drop it: a
rationale that reaches the right answer through a wrong reading ("the rate is 60 bpm, so no" for a record at
95 bpm with a threshold of 100) must not be learned from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

from mmmed.eval.metrics import AnswerClassifier
from mmmed.eval.scoring import AnswerScorer
from mmmed.eval.rationale import Rationale, parse_rationale


@dataclass(frozen=True)
class Verdict:
    """One checker's judgement of one rationale: ``keep``, and why (written to rationales.jsonl)."""

    checker: str
    keep: bool
    detail: str


class Checker(Protocol):
    """Drops rationales whose reasoning contradicts what is known about the record."""

    name: str

    def __call__(self, rationale: Rationale, facts: Mapping[str, float]) -> Verdict:
        ...


class StatedValueChecker:
    """Drops a rationale that states a value more than ``tolerance`` away from the record's measured ``fact``.

    Every number the reasoning states in ``pattern`` (its first group) is compared; one outside the tolerance
    drops the rationale. A rationale that states none, or a record without the fact, is kept (nothing to check).

    Args:
        name: the checker's name in verdicts.
        fact: the key of the measured value in a record's ``facts`` (``heart_rate``).
        pattern: a regular expression whose first group is the stated number (``(\\d+(?:\\.\\d+)?)\\s*bpm``).
        tolerance: the largest accepted |stated - measured|, in the fact's unit.
    """

    def __init__(self, name: str, fact: str, pattern: str, tolerance: float) -> None:
        self.name, self.fact, self.tolerance = name, fact, float(tolerance)
        self.pattern = re.compile(pattern, re.IGNORECASE)
        if self.pattern.groups < 1:
            raise ValueError(f"checker {name}: pattern {pattern!r} needs a group around the number")

    def __call__(self, rationale: Rationale, facts: Mapping[str, float]) -> Verdict:
        measured = facts.get(self.fact)
        stated = [float(m.group(1)) for m in self.pattern.finditer(rationale.reasoning)]
        if measured is None or not stated:
            reason = f"no measured {self.fact}" if measured is None else f"states no {self.fact}"
            return Verdict(self.name, True, reason)
        worst = max(stated, key=lambda value: abs(value - measured))
        keep = abs(worst - measured) <= self.tolerance
        return Verdict(self.name, keep, f"states {worst:g}, measured {measured:g} (tolerance {self.tolerance:g})")


class ComparisonChecker:
    """Drops a rationale whose answer disagrees with its own reading: the value it states (``pattern``) compared with
    the record's ``fact`` (the question's threshold) must give the answer's class, ``above`` when greater, else
    ``below``. "The heart rate is 48 bpm, above 54, so yes" for a record at 56 bpm reaches the right answer through a
    wrong comparison; learning from it would teach the comparison wrong. A rationale that states no value, or a
    record without the fact (another data set's: the checker then has nothing to check), is kept.

    Args:
        name: the checker's name in verdicts.
        fact: the key of the compared value in a record's ``facts`` (``threshold``).
        pattern: a regular expression whose first group is the stated number (the first match is the reading).
        above, below: the answer classes for a reading above the fact and for one not above it.
        classes: class -> regular expression naming it in an answer (the data's ``answer_classes``).
    """

    def __init__(self, name: str, fact: str, pattern: str, above: str, below: str, classes: Mapping[str, str]) -> None:
        self.name, self.fact, self.above, self.below = name, fact, above, below
        self.pattern = re.compile(pattern, re.IGNORECASE)
        if self.pattern.groups < 1:
            raise ValueError(f"checker {name}: pattern {pattern!r} needs a group around the number")
        self.classes = sorted(classes)
        self.classify = AnswerClassifier(dict(classes))

    def __call__(self, rationale: Rationale, facts: Mapping[str, float]) -> Verdict:
        bound = facts.get(self.fact)
        stated = self.pattern.search(rationale.reasoning)
        if bound is None or stated is None:
            return Verdict(self.name, True, f"no {self.fact}" if bound is None else "states no value")
        if {self.above, self.below} - set(self.classes):  # checked here: data without the fact never reach it
            raise ValueError(f"checker {self.name}: {self.above!r} and {self.below!r} must be answer classes, the data's "
                             f"are {self.classes}")
        value = float(stated.group(1))
        expected = self.above if value > bound else self.below
        answered = self.classify(rationale.answer)
        return Verdict(self.name, answered == expected,
                       f"states {value:g}, {self.fact} {bound:g}: expects {expected}, answers {answered}")


@dataclass
class Judged:
    """A completion after the filter: kept or not, why, its parsed rationale and the checkers' verdicts."""

    kept: bool
    reason: str  # kept | unparsed | wrong_answer | checker:<name>
    rationale: Rationale | None
    verdicts: list[Verdict] = field(default_factory=list)

    def verdicts_json(self) -> list[dict]:
        return [asdict(v) for v in self.verdicts]


def judge(completion: str, reference: str, reference_label, facts: Mapping[str, float], scorer: AnswerScorer,
          checkers: Sequence[Checker]) -> Judged:
    """Keep ``completion`` only if it parses, its answer is right by ``scorer`` and every checker keeps it."""
    rationale = parse_rationale(completion)
    if rationale is None:
        return Judged(False, "unparsed", None)
    if not scorer.is_correct(rationale.answer, reference, reference_label):
        return Judged(False, "wrong_answer", rationale)
    verdicts = [checker(rationale, facts) for checker in checkers]
    dropped = next((v for v in verdicts if not v.keep), None)
    return Judged(dropped is None, "kept" if dropped is None else f"checker:{dropped.checker}", rationale, verdicts)
