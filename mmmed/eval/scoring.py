"""Whether one answer is right, by the rule the evaluation scores with: the class it names (``answer_classes``),
every asked part's class (``answer_parts``), or, without a label, ECG-QA's exact match of answer items.

The evaluation (``evaluation.Evaluator``) classifies answers with this object, and the self-training filter keeps
a rationale only if its final answer is right by :meth:`AnswerScorer.is_correct`: the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping

from mmmed.eval.metrics import AnswerClassifier, answer_items


class AnswerScorer:
    """Classes (or per-part classes) named by answers, and whether an answer matches its reference.

    Args:
        answer_classes: class -> regular expression naming it in an answer ({}: answers are not classes).
        answer_parts: part -> {class -> regular expression} for answers with several parts, or None.
    """

    def __init__(self, answer_classes: Mapping[str, str], answer_parts: Mapping[str, Mapping[str, str]] | None = None):
        if answer_classes and answer_parts:
            raise ValueError("give answer_classes (one class per answer) or answer_parts (several), not both")
        self.classes = list(answer_classes)
        self.classifier = AnswerClassifier(dict(answer_classes))
        self.part_classes = {part: list(classes) for part, classes in (answer_parts or {}).items()}
        self.part_classifiers = {part: AnswerClassifier(dict(classes)) for part, classes in (answer_parts or {}).items()}

    def parts(self, answer: str) -> dict[str, str]:
        """The class each part's patterns find in ``answer`` (``unparsed`` where none or several match)."""
        return {part: classify(answer) for part, classify in self.part_classifiers.items()}

    def is_correct(self, answer: str, reference: str, reference_label: str | Mapping[str, str] | None) -> bool:
        """Right by the evaluation's rule: with parts, every part the label asks; with classes, the label's class;
        without a label, the same set of answer items as the reference (case and edge punctuation ignored)."""
        if self.part_classifiers and isinstance(reference_label, Mapping) and reference_label:
            found = self.parts(answer)
            return all(found.get(part) == cls for part, cls in reference_label.items())
        if self.classes and reference_label is not None:
            return self.classifier(answer) == reference_label
        return answer_items(answer) == answer_items(reference)
