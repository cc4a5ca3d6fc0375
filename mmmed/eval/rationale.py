"""The rationale format the model is asked for, and its strict parser.

A completion is read only if it has exactly this shape (whitespace around it ignored)::

    Reasoning: <one or more lines of reasoning>
    Answer: <the final answer, on one line>

* it starts with ``Reasoning:`` (that exact spelling) followed by some text;
* exactly one line starts with ``Answer:``; the answer is the rest of that line, stripped, and must not be empty;
* nothing but whitespace follows the answer line (a model that keeps writing after its answer has not answered).

Anything else (no ``Answer:`` line, two of them, an empty answer or reasoning, text after the answer) parses to
None, and the self-training filter counts None as a wrong answer: a completion is never rescued by guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REASONING = "Reasoning:"
ANSWER = "Answer:"
_ANSWER_LINE = re.compile(rf"^[ \t]*{re.escape(ANSWER)}(.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Rationale:
    """A parsed completion: the reasoning (without its ``Reasoning:`` label) and the final answer."""

    reasoning: str
    answer: str

    def text(self) -> str:
        """The completion this rationale is written as (a training target): ``Reasoning: ...\\nAnswer: ...``."""
        return format_rationale(self.reasoning, self.answer)


def format_rationale(reasoning: str, answer: str) -> str:
    """``Reasoning: <reasoning>\\nAnswer: <answer>``; refuses parts that would not parse back to themselves."""
    reasoning, answer = reasoning.strip(), answer.strip()
    text = f"{REASONING} {reasoning}\n{ANSWER} {answer}"
    parsed = parse_rationale(text)
    if parsed is None or parsed != Rationale(reasoning, answer):
        raise ValueError(f"reasoning {reasoning!r} and answer {answer!r} do not make a parseable rationale "
                         f"(empty, an answer over several lines, or an '{ANSWER}' line inside the reasoning)")
    return text


def parse_rationale(text: str) -> Rationale | None:
    """The reasoning and final answer of a completion of the documented shape (module docstring), else None."""
    text = text.strip()
    if not text.startswith(REASONING):
        return None
    answers = list(_ANSWER_LINE.finditer(text))
    if len(answers) != 1:
        return None
    line = answers[0]
    reasoning = text[len(REASONING):line.start()].strip()
    answer = line.group(1).strip()
    if not reasoning or not answer or text[line.end():].strip():
        return None
    return Rationale(reasoning, answer)
