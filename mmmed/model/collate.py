"""Batch chat samples that carry signals: padding, attention masks, positions and labels.

Masks are built from sequence lengths, never from the pad id: in ChatML models the pad token is
often the end-of-turn token, which the model must still see and learn to emit.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from mmmed.model.prompts import IGNORE_INDEX, ChatFormatter

log = logging.getLogger(__name__)


def pad_sequences(seqs: list[list[int]], pad_value: int, side: str, multiple_of: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to a common length on ``side``; returns ``(values (B, L), attention_mask (B, L))``."""
    longest = max(len(s) for s in seqs)
    length = -(-longest // multiple_of) * multiple_of
    values = torch.full((len(seqs), length), pad_value, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, seq in enumerate(seqs):
        span = slice(0, len(seq)) if side == "right" else slice(length - len(seq), length)
        values[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return values, mask


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting only real tokens (left padding starts real tokens at 0). (B, L)"""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def stack_signals(signals: list[torch.Tensor | dict[str, torch.Tensor]]) -> torch.Tensor | dict[str, torch.Tensor]:
    """Stack one modality's signals: tensors into (M, ...), dicts of tensors key by key."""
    if isinstance(signals[0], dict):
        return {key: torch.stack([sig[key] for sig in signals]) for key in signals[0]}
    return torch.stack(signals)


class MultimodalCollator:
    """Collate dataset items ``{signals: {modality: [tensor]}, question, answer, label, id}``.

    The training view is right-padded with labels; with ``generation_inputs`` the batch also carries
    a left-padded prompt-only view for batched generation, plus the references.
    """

    def __init__(self, formatter: ChatFormatter, generation_inputs: bool = False, pad_to_multiple_of: int = 8) -> None:
        self.formatter = formatter
        self.generation_inputs = generation_inputs
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_id = formatter.tokenizer.pad_token_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        counts = [{name: len(sigs) for name, sigs in item["signals"].items()} for item in items]
        encoded = []
        for item, count in zip(items, counts):
            try:
                encoded.append(self.formatter.encode(item["question"], item["answer"], count))
            except ValueError as err:
                raise ValueError(f"Sample {item['id']}: {err}") from err
        truncated = sum(e.truncated for e in encoded)
        if truncated:
            log.warning("%d of %d answers truncated to data.max_length=%d", truncated, len(items), self.formatter.max_length)

        input_ids, attention_mask = pad_sequences([e.input_ids for e in encoded], self.pad_id, "right", self.pad_to_multiple_of)
        labels, _ = pad_sequences([e.labels for e in encoded], IGNORE_INDEX, "right", self.pad_to_multiple_of)
        batch: dict[str, Any] = {
            "input_ids": input_ids,  # (B, L)
            "attention_mask": attention_mask,  # (B, L)
            "position_ids": positions_from_mask(attention_mask),  # (B, L)
            "labels": labels,  # (B, L)
            # Every signal of a modality, in the order its placeholders appear in the batch. {m: (M, C, T)}
            # or, for encoders taking several inputs, {m: {"signal": (M, C, T), "lead_mask": (M, C)}}.
            "signals": {
                name: stack_signals([sig for item in items for sig in item["signals"].get(name, [])])
                for name in sorted({n for item in items for n in item["signals"]})
            },
            "ids": [item["id"] for item in items],
        }
        if self.generation_inputs:
            prompts = [e.input_ids[: e.prompt_length] for e in encoded]
            prompt_ids, prompt_mask = pad_sequences(prompts, self.pad_id, "left")
            batch.update(
                prompt_input_ids=prompt_ids,  # (B, P)
                prompt_attention_mask=prompt_mask,  # (B, P)
                prompt_position_ids=positions_from_mask(prompt_mask),  # (B, P)
                questions=[item["question"] for item in items],
                references=[item["answer"] for item in items],
                reference_labels=[item.get("label") for item in items],
            )
        return batch
