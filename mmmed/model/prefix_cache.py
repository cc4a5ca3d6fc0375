"""The keys and values of the prompt's shared start, computed once for a frozen LLM and reused every step.

Every training sample starts with the same tokens: the system prompt and the user turn's opening, up to the first
signal placeholder (``<|im_start|>system\\nYou are a cardiology assistant. ...<|im_end|>\\n<|im_start|>user\\n``:
14 of the ECG demo's ~53 tokens). A causal LLM's keys and values at those positions depend on those tokens and the
LLM's weights only; with the weights frozen they are the same at every step. So they are computed once (no
gradient), kept, and each step runs the LLM on the rest of the sequence with them as its past: the same attention
over the same keys, a quarter less work forward and backward.

Generation does the same for left-padded prompts (``prompt_prefix_first``): each row's padding moves to just after
the shared start, so the start sits at the same positions in every row and its cached keys and values serve the
whole batch. Positions come from the attention mask, so every token keeps its position and attends to the same
tokens as before.

Exact up to floating-point rounding (the prefix's projections computed for one row instead of inside the batch);
``tests/mmmed/model/test_prefix_cache.py`` compares loss and gradients with and without. Used only where it is
exact: no LLM weight trains (no LoRA, no full fine-tuning: their keys and values change every step), and no
gradient checkpointing is active (Hugging Face's checkpointed layers drop a given past). ``MultimodalLM`` clears
it whenever weights are loaded.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from transformers import DynamicCache, PreTrainedModel

from mmmed.model.prompts import IGNORE_INDEX


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                         placeholder_ids: list[int]) -> int:
    """How many leading positions every row of the batch shares: same token, attended, before any placeholder,
    and no target up to one past it (the position before an answer predicts its first token). (B, L) inputs."""
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)  # (L,)
    for pid in placeholder_ids:
        same &= input_ids[0] != pid
    no_target = (labels == IGNORE_INDEX).all(0)  # (L,)
    # Position t's logits predict labels[t + 1]: a prefix of length P needs labels[:, :P + 1] all ignored.
    same[:-1] &= no_target[1:]
    same[-1] = False  # at least one position is left to run
    return int(same.long().cumprod(0).sum())


def prompt_prefix_first(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                        placeholder_ids: list[int]) -> tuple[int, torch.Tensor, torch.Tensor]:
    """For left-padded prompts (B, L): ``(P, ids, mask)`` where every row's first P real tokens are the same (no
    placeholder among them, at least one token left after them) and the returned rows hold those P tokens first,
    then the row's padding, then the rest of its prompt. P is 0 (and the prompts come back as they are) when no
    such start exists or a row is not left-padded."""
    lengths = prompt_mask.sum(1)  # (B,)
    width = prompt_ids.shape[1]
    pads = width - lengths
    columns = torch.arange(width, device=prompt_ids.device)[None]  # (1, L)
    if not bool((prompt_mask.bool() == (columns >= pads[:, None])).all()):
        return 0, prompt_ids, prompt_mask
    shortest = int(lengths.min())
    aligned = prompt_ids.gather(1, columns[:, :shortest] + pads[:, None])  # (B, shortest): the real tokens
    same = (aligned == aligned[:1]).all(0)
    for pid in placeholder_ids:
        same &= aligned[0] != pid
    same[-1] = False
    start = int(same.long().cumprod(0).sum())
    if start == 0:
        return 0, prompt_ids, prompt_mask
    pads = pads[:, None]
    source = torch.where(columns < start, columns + pads, torch.where(columns < start + pads, columns - start, columns))
    return start, prompt_ids.gather(1, source), prompt_mask.gather(1, source)


class PrefixCache:
    """Keys and values per shared prefix (a few kept, least recently used dropped), for one frozen LLM."""

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()

    def clear(self) -> None:
        """Forget every entry (the LLM's weights, dtype or device changed)."""
        self.entries.clear()

    def past(self, llm: PreTrainedModel, prefix_ids: torch.Tensor, batch_size: int) -> DynamicCache:
        """A cache holding ``prefix_ids``' keys and values, repeated for ``batch_size`` rows.

        ``prefix_ids``: (P,). The cache is the LLM's past for a forward over positions ``P..``; it grows during that
        forward, the stored entry does not.
        """
        weight = llm.get_input_embeddings().weight
        key = (tuple(prefix_ids.tolist()), weight.device, weight.dtype, llm.config._attn_implementation)
        layers = self.entries.get(key)
        if layers is None:
            with torch.no_grad():
                out = llm(input_ids=prefix_ids[None], position_ids=torch.arange(len(prefix_ids), device=weight.device)[None],
                          use_cache=True)
            layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]  # each (1, H_kv, P, D_head)
            self.entries[key] = layers
            while len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)
        self.entries.move_to_end(key)
        expanded = [(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1)) for k, v in layers]
        return DynamicCache(ddp_cache_data=expanded, config=llm.config)
