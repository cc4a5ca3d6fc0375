"""The data self-training reads and writes: the reasoning instruction, seed and kept rationales, and the mixture a
round fine-tunes on.

* **Asking for reasoning.** A question asks for a rationale when ``instruction`` follows it on a new line
  (``"Is the heart rate above 75 bpm?\\nGive your reasoning, then the answer, as 'Reasoning: ...' and 'Answer: ...'."``).
  The same text is used when sampling, in rationale training items, and when the evaluation scores a self-trained
  model (``mmmed.eval.rationale.AskingForReasoning``); the plain question still asks for the plain answer.
* **Rationale rows** (``rationale_seeds.jsonl`` and ``round_<n>/rationales.jsonl``): ``id`` (the training item's
  id), ``question``, ``rationale`` (the reasoning, without its label), ``answer`` and ``source`` (``seed``,
  ``sampled`` or ``hinted``); round files add ``checkers``, ``round`` and ``model_hash``.
* **The mixture** (:class:`RationaleMixture`): every answer-only training item once, plus rationale items drawn in
  turn from the kept rationales so that they make ``rationale_share`` of the whole.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from mmmed.atomic_files import write_file_atomic

from mmmed.eval.rationale import ask_for_reasoning, format_rationale

SOURCES = ("seed", "sampled", "hinted")


def item_ids(dataset: Dataset) -> list[str]:
    """Every item's id in index order (``dataset.item_id(i)`` where the dataset has it: no signal is loaded)."""
    if hasattr(dataset, "item_id"):
        return [dataset.item_id(i) for i in range(len(dataset))]
    # With a fixed item seed: a training split indexed alone would draw its crop from the global random stream.
    return [dataset[(i, 0)]["id"] for i in range(len(dataset))]


def read_rationales(path: str | Path, known_ids: Sequence[str] | None = None) -> list[dict]:
    """Rationale rows of a JSON-lines file, checked: every field present, a parseable rationale, a known id.

    Raises ValueError naming the file and line of the first bad row; ``known_ids`` (the training split's) makes
    an id from another split (or a typo) an error instead of a silently ignored row.
    """
    path = Path(path)
    known = set(known_ids) if known_ids is not None else None
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not JSON ({err})") from err
        missing = [key for key in ("id", "question", "rationale", "answer") if not str(row.get(key, "")).strip()]
        if missing:
            raise ValueError(f"{path}:{number}: missing or empty {', '.join(missing)}")
        try:
            format_rationale(row["rationale"], row["answer"])
        except ValueError as err:
            raise ValueError(f"{path}:{number}: {err}") from err
        if known is not None and row["id"] not in known:
            raise ValueError(f"{path}:{number}: id {row['id']!r} is not a training item (rationales are learned from "
                             f"the training split only)")
        row.setdefault("source", "seed")
        if row["source"] not in SOURCES:
            raise ValueError(f"{path}:{number}: source {row['source']!r} is not one of {SOURCES}")
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    """Rows as JSON lines, written to a temporary file and renamed: a kill leaves the old file or the new one."""
    text = "".join(json.dumps(row) + "\n" for row in rows).encode()
    write_file_atomic(path, lambda handle: handle.write(text))


class FixedSeeds(Dataset):
    """A training split read with a fixed item seed per index (from ``seed``): the crop or augmentation each
    sampled question shows the model is the same in a resumed run as in an uninterrupted one."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[(index, (self.seed * 1_000_003 + index) % (2**31 - 1))]


class RationaleMixture(Dataset):
    """Answer-only training items plus rationale items, the latter ``rationale_share`` of all items.

    Index ``i < len(answer_only)`` is the answer-only item ``i``; later indices cycle through ``rationales``, each
    the training item of its ``id`` with the reasoning question and the rationale (``Reasoning: ... Answer: ...``)
    as its answer. Indices may come as ``(index, item_seed)`` (the resumable sampler's), passed on unchanged.

    Args:
        answer_only: the training split.
        rationales: kept rationale rows (see module docstring); empty: the answer-only items alone.
        instruction: the reasoning instruction.
        rationale_share: the share of rationale items, in [0, 1).
    """

    def __init__(self, answer_only: Dataset, rationales: Sequence[dict], instruction: str, rationale_share: float) -> None:
        if not 0 <= rationale_share < 1:
            raise ValueError(f"rationale_share must be in [0, 1), not {rationale_share}")
        self.answer_only, self.rationales, self.instruction = answer_only, list(rationales), instruction
        index_of = {item_id: i for i, item_id in enumerate(item_ids(answer_only))}
        unknown = sorted({row["id"] for row in self.rationales} - set(index_of))
        if unknown:
            raise ValueError(f"{len(unknown)} rationale(s) name items outside the training split, e.g. {unknown[:3]}")
        self.positions = [index_of[row["id"]] for row in self.rationales]
        n = len(answer_only)
        self.num_rationale_items = round(rationale_share / (1 - rationale_share) * n) if self.rationales else 0

    def __len__(self) -> int:
        return len(self.answer_only) + self.num_rationale_items

    def __getattr__(self, name: str):
        if name in ("answer_only", "rationales", "instruction", "positions", "num_rationale_items"):
            raise AttributeError(name)
        return getattr(self.answer_only, name)

    def __getitem__(self, index):
        index, item_seed = index if isinstance(index, tuple) else (index, None)
        n = len(self.answer_only)
        if index < n:
            return self.answer_only[(index, item_seed) if item_seed is not None else index]
        k = (index - n) % len(self.rationales)
        row, position = self.rationales[k], self.positions[k]
        item = dict(self.answer_only[(position, item_seed) if item_seed is not None else position])
        if item["id"] != row["id"]:
            raise RuntimeError(f"training item {position} is {item['id']!r}, the rationale names {row['id']!r}")
        item["question"] = ask_for_reasoning(item["question"], self.instruction)
        item["answer"] = format_rationale(row["rationale"], row["answer"])
        item["id"] = f"{row['id']}#rationale{k}"
        return item
