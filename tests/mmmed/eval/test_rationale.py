"""The rationale parser: exactly the documented shape is read; everything else is None (counted wrong)."""

from __future__ import annotations

import pytest

from torch.utils.data import Dataset

from mmmed.eval.rationale import AskingForReasoning, Rationale, ask_for_reasoning, format_rationale, parse_rationale


@pytest.mark.parametrize("text, expected", [
    ("Reasoning: The heart rate is 82 bpm, above 75.\nAnswer: Yes.", Rationale("The heart rate is 82 bpm, above 75.", "Yes.")),
    ("  Reasoning:\nRR interval 0.6 s.\nSo the rate is 100 bpm.\nAnswer:   No  \n\n",
     Rationale("RR interval 0.6 s.\nSo the rate is 100 bpm.", "No")),
    ("Reasoning: QRS 130 ms is wide.\n  Answer: yes", Rationale("QRS 130 ms is wide.", "yes")),  # indented answer line
    ("Reasoning: the answer: yes, because...\nAnswer: yes", Rationale("the answer: yes, because...", "yes")),  # inline
])
def test_the_documented_shape_parses(text, expected):
    assert parse_rationale(text) == expected


@pytest.mark.parametrize("text, why", [
    ("Yes.", "no reasoning, no answer line"),
    ("Reasoning: rate 82 bpm.", "no answer line"),
    ("Answer: yes", "no reasoning"),
    ("The rate is fast.\nReasoning: 110 bpm.\nAnswer: yes", "text before the reasoning"),
    ("reasoning: 110 bpm.\nanswer: yes", "labels spelled otherwise"),
    ("Reasoning: 110 bpm.\nAnswer: yes\nAnswer: no", "two answers"),
    ("Reasoning: 110 bpm.\nAnswer:   \n", "an empty answer"),
    ("Reasoning:   \nAnswer: yes", "an empty reasoning"),
    ("Reasoning: 110 bpm.\nAnswer: yes\nBut it could also be 90 bpm.", "text after the answer"),
    ("", "nothing"),
])
def test_anything_else_is_none(text, why):
    assert parse_rationale(text) is None, why


def test_format_writes_what_parse_reads_and_refuses_what_it_could_not():
    text = format_rationale(" The rate is 82 bpm, above 75, so yes. ", "Yes.")
    assert text == "Reasoning: The rate is 82 bpm, above 75, so yes.\nAnswer: Yes."
    assert parse_rationale(text).text() == text
    for reasoning, answer in [("", "yes"), ("fast", ""), ("fast\nAnswer: no", "yes"), ("fast", "yes\nno")]:
        with pytest.raises(ValueError, match="parseable rationale"):
            format_rationale(reasoning, answer)


class Questions(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> dict:
        return {"id": str(index), "question": f"Is the heart rate above {70 + index} bpm?  ", "answer": "Yes."}


def test_a_question_asks_for_reasoning_with_the_instruction_on_its_own_line():
    instruction = "Answer with your reasoning first, as 'Reasoning: ...', then 'Answer: ...'."
    assert ask_for_reasoning("Is the heart rate above 71 bpm?  ", f" {instruction}") == \
        f"Is the heart rate above 71 bpm?\n{instruction}"
    view = AskingForReasoning(Questions(), instruction)
    assert view[1] == {"id": "1", "question": f"Is the heart rate above 71 bpm?\n{instruction}", "answer": "Yes."}
    assert len(view) == 2
