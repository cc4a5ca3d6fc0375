"""The rationale format the model is asked for, and its strict parser.

A completion is read only if it has exactly this shape (whitespace around it ignored)::

    Reasoning: <one or more lines of reasoning>
    Answer: <the final answer, on one line>

* it starts with ``Reasoning:`` (that exact spelling) followed by some text;
* exactly one line starts with ``Answer:``; the answer is the rest of that line, stripped, and must not be empty;
* nothing but whitespace follows the answer line (a model that keeps writing after its answer has not answered).

A question asks for this shape when the model's reasoning instruction follows it on its own line
(:func:`ask_for_reasoning`; a self-trained model's instruction is in its run config, ``selftrain.instruction``).

Anything else (no ``Answer:`` line, two of them, an empty answer or reasoning, text after the answer) parses to
None, and the self-training filter counts None as a wrong answer: a completion is never rescued by guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch.utils.data import Dataset

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


def shown_answer(result: dict, show_reasoning: bool) -> str:
    """An answer as printed and pictured: with its rationale (``reasoning``) when the model gave one and
    ``show_reasoning``; a completion that does not parse is shown as such rather than as an empty answer."""
    if show_reasoning and result.get("reasoning"):
        return f"{result['answer']}\n(Reasoning: {result['reasoning']})"
    if result.get("completion") is not None and not result["answer"]:
        return f"(no answer found in: {result['completion']!r})"
    return result["answer"]


def ask_for_reasoning(question: str, instruction: str) -> str:
    """The question followed by the reasoning instruction on its own line."""
    return f"{question.rstrip()}\n{instruction.strip()}"


class AskingForReasoning(Dataset):
    """An evaluation split whose questions ask for reasoning; references and labels stay the plain answers."""

    def __init__(self, dataset: Dataset, instruction: str) -> None:
        self.dataset, self.instruction = dataset, instruction

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):  # stats, plot_inputs, normalisation: the wrapped split's
        if name in ("dataset", "instruction"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index):
        item = dict(self.dataset[index])
        item["question"] = ask_for_reasoning(item["question"], self.instruction)
        return item
