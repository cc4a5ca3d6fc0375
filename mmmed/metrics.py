"""Score generated answers by the class they name (e.g. the rhythm in an ECG report)."""

from __future__ import annotations

import re

UNPARSED = "unparsed"


class AnswerClassifier:
    """Map free text to one class by case-insensitive regular expressions, one per class.

    An answer that matches no pattern, or the patterns of several classes, is ``unparsed`` and
    counts as wrong: a hedging answer must not score.
    """

    def __init__(self, patterns: dict[str, str]) -> None:
        self.patterns = {label: re.compile(pattern, re.IGNORECASE) for label, pattern in patterns.items()}

    def __call__(self, text: str) -> str:
        hits = [label for label, pattern in self.patterns.items() if pattern.search(text)]
        return hits[0] if len(hits) == 1 else UNPARSED


def class_accuracy(predicted: list[str], references: list[str | None]) -> tuple[float, int]:
    """Fraction of predicted classes equal to the reference class; ``(accuracy, scored count)``.

    Samples without a reference class are not scored; with none scored the accuracy is NaN.
    """
    pairs = [(p, r) for p, r in zip(predicted, references) if r is not None]
    if not pairs:
        return float("nan"), 0
    return sum(p == r for p, r in pairs) / len(pairs), len(pairs)
