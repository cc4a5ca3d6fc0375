"""Self-training data: seed/round rationale files are checked, questions ask for reasoning, the mixture's share."""

from __future__ import annotations

import json

import pytest
from torch.utils.data import Dataset

from mmmed.selftrain.data import FixedSeeds, RationaleMixture, item_ids, read_rationales, write_jsonl

INSTRUCTION = "Answer with your reasoning first, as 'Reasoning: ...', then 'Answer: ...'."


class Questions(Dataset):
    """A training split of four questions; an item remembers the item seed it was read with."""

    def __init__(self) -> None:
        self.ids = ["p1/0", "p1/1", "p2/2", "p3/3"]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index):
        index, seed = index if isinstance(index, tuple) else (index, None)
        return {"id": self.ids[index], "question": f"Is the heart rate above {70 + index} bpm?", "answer": "Yes.",
                "label": "YES", "signals": {}, "seed": seed}


def rows() -> list[dict]:
    return [{"id": "p2/2", "question": "Is the heart rate above 72 bpm?", "rationale": "The heart rate is 80 bpm, above 72, so yes.",
             "answer": "Yes.", "source": "seed"}]


def test_the_mixture_holds_every_answer_only_item_and_rationales_at_their_share():
    split = Questions()
    mixture = RationaleMixture(split, rows(), INSTRUCTION, rationale_share=0.5)
    assert len(mixture) == 8  # 4 answer-only + 4 rationale items: half
    assert [mixture[i]["answer"] for i in range(4)] == ["Yes."] * 4
    rationale = mixture[(5, 11)]
    assert rationale["question"] == "Is the heart rate above 72 bpm?\n" + INSTRUCTION
    assert rationale["answer"] == "Reasoning: The heart rate is 80 bpm, above 72, so yes.\nAnswer: Yes."
    assert rationale["id"] == "p2/2#rationale0" and rationale["seed"] == 11  # the sampler's item seed passes through
    assert len(RationaleMixture(split, rows(), INSTRUCTION, 0.2)) == 5  # 1 / (4 + 1) = 0.2
    assert len(RationaleMixture(split, [], INSTRUCTION, 0.5)) == 4  # nothing kept: answers alone
    with pytest.raises(ValueError, match="outside the training split"):
        RationaleMixture(split, [{**rows()[0], "id": "p9/9"}], INSTRUCTION, 0.5)


def test_rationale_files_refuse_ids_outside_training_and_unparseable_rows(tmp_path):
    path = tmp_path / "seeds.jsonl"
    write_jsonl(path, rows())
    assert read_rationales(path, item_ids(Questions())) == rows()
    write_jsonl(path, [{**rows()[0], "id": "val-record/7"}])
    with pytest.raises(ValueError, match=r"seeds.jsonl:1: id 'val-record/7' is not a training item"):
        read_rationales(path, item_ids(Questions()))
    write_jsonl(path, [rows()[0], {**rows()[0], "rationale": "Line one.\nAnswer: No."}])
    with pytest.raises(ValueError, match=r"seeds.jsonl:2: .*do not make a parseable rationale"):
        read_rationales(path)
    path.write_text(json.dumps({**rows()[0], "answer": " "}) + "\n")
    with pytest.raises(ValueError, match=r"seeds.jsonl:1: missing or empty answer"):
        read_rationales(path)


def test_fixed_seeds_read_every_item_with_the_same_seed_each_time():
    view = FixedSeeds(Questions(), seed=3)
    first = [view[i]["seed"] for i in range(4)]
    assert first == [view[i]["seed"] for i in range(4)] and len(set(first)) == 4
    assert first != [FixedSeeds(Questions(), seed=4)[i]["seed"] for i in range(4)]
