"""Score generated answers by the class they name (e.g. the rhythm in an ECG report)."""

from __future__ import annotations

import re
from collections import Counter

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


def answer_items(text: str) -> frozenset[str]:
    """An answer as a set of items: lower-cased, split at commas/semicolons, edge punctuation removed.

    ``"MI, STTC."`` and ``"sttc, mi"`` are the same answer; a list answer (ECG-QA, superclasses)
    matches only when every item matches.
    """
    items = (item.strip().strip(".!?\"'").strip() for item in re.split(r"[,;]", text.lower()))
    return frozenset(item for item in items if item)


def exact_match(predicted: list[str], references: list[str]) -> float:
    """Fraction of answers whose item sets equal the reference's (ECG-QA's exact-match accuracy)."""
    if not references:
        return float("nan")
    return sum(answer_items(p) == answer_items(r) for p, r in zip(predicted, references)) / len(references)


def vote(values: list[str]) -> str:
    """The most frequent value; a tie between the most frequent is ``unparsed`` (counts as wrong)."""
    counts = Counter(values).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return UNPARSED
    return counts[0][0]


CROP_SEPARATOR = "#crop"  # ids of a record's evaluation windows: "<record id>#crop<k>"


def aggregate_crops(outputs: list[dict]) -> list[dict]:
    """One row per record from rows per evaluation window (``id`` ending ``#crop<k>``), by majority vote.

    Rows without a crop suffix pass through. A record's ``predicted_label`` is the vote over its
    windows' classes, and its ``answer`` the answer of the first window whose item set won the vote
    (a tie is ``unparsed``, so it scores wrong).
    """
    groups: dict[str, list[dict]] = {}
    for row in outputs:
        groups.setdefault(row["id"].split(CROP_SEPARATOR)[0], []).append(row)
    merged = []
    for record_id, rows in groups.items():
        if len(rows) == 1 and CROP_SEPARATOR not in rows[0]["id"]:
            merged.append(rows[0])
            continue
        keys = ["|".join(sorted(answer_items(row["answer"]))) for row in rows]
        winner = vote(keys)
        answer = next((row["answer"] for row, key in zip(rows, keys) if key == winner), UNPARSED)
        merged.append({**rows[0], "id": record_id, "answer": answer, "predicted_label": vote([r["predicted_label"] for r in rows]), "crops": len(rows)})
    return merged
