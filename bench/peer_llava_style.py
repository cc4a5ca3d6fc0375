"""The trainer a careful engineer writes by hand, LLaVA-style: the peer ``bench/compare.py`` measures mmmed against.

Same frozen LLM (its own copy, with Hugging Face's default SDPA attention), same encoder and adapter weights, optimizer,
data and dtypes as mmmed's training step; what differs is how a batch goes through the LLM, as in LLaVA's
``prepare_inputs_labels_for_multimodal``:

* the encoder and adapter run once on the batch's signals (as mmmed does);
* each sample is then spliced on its own: its text embeddings cut at the placeholder runs and concatenated with
  its encoder tokens, a Python loop over samples;
* the spliced sequences are right-padded to the batch's longest (no rounding up);
* the LLM computes logits at every position and Hugging Face's causal-LM loss (``labels=``) averages the
  cross-entropy over the answer tokens.

The loss is the same quantity as mmmed's (``tests`` of mmmed check its masking); the work per step is what differs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mmmed.model.prompts import IGNORE_INDEX


class LlavaStyleTrainer:
    """One optimizer step at a time on mmmed's collated batches, the per-sample splice way."""

    def __init__(self, model: nn.Module, lr: float) -> None:
        """``model``: a ``MultimodalLM`` to copy (encoders, adapters and frozen LLM, all deep-copied)."""
        self.model = copy.deepcopy(model).train()
        # Hugging Face's default attention, as a hand-written trainer gets it (mmmed picks its own per device).
        self.model.llm.set_attn_implementation("sdpa")
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=lr)
        self.modality_of = {pid: name for name, pid in self.model.placeholder_ids.items()}

    def splice(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor,
               signals: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample splice, then right padding to the longest: (B, L, D) embeddings, (B, L) mask, (B, L) labels."""
        embed = self.model.llm.get_input_embeddings()
        tokens = {name: self.model._tokens(name, signal) for name, signal in signals.items()}  # {m: (M, N, D)}
        used = {name: 0 for name in tokens}
        sequences, targets = [], []
        for ids, lab, mask in zip(input_ids, labels, attention_mask):
            ids, lab = ids[mask.bool()], lab[mask.bool()]  # this sample's own tokens
            pieces, start, position = [], 0, 0
            while position < len(ids):
                name = self.modality_of.get(int(ids[position]))
                if name is None:
                    position += 1
                    continue
                pieces.append(embed(ids[start:position]))
                features = tokens[name][used[name]]  # (N, D)
                used[name] += 1
                pieces.append(features.to(pieces[-1].dtype))
                position += features.shape[0]
                start = position
            pieces.append(embed(ids[start:]))
            sequences.append(torch.cat(pieces))
            targets.append(lab)
        longest = max(len(s) for s in sequences)
        width = sequences[0].shape[1]
        embeds = torch.zeros(len(sequences), longest, width, dtype=sequences[0].dtype)
        mask = torch.zeros(len(sequences), longest, dtype=torch.long)
        padded_labels = torch.full((len(sequences), longest), IGNORE_INDEX, dtype=torch.long)
        for row, (sequence, target) in enumerate(zip(sequences, targets)):
            embeds[row, : len(sequence)] = sequence
            mask[row, : len(sequence)] = 1
            padded_labels[row, : len(target)] = target
        return embeds, mask, padded_labels

    def step(self, batch: dict) -> float:
        """One forward, backward and optimizer step; the loss."""
        embeds, mask, labels = self.splice(batch["input_ids"], batch["labels"], batch["attention_mask"], batch["signals"])
        loss = self.model.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    @staticmethod
    def padding(batch: dict) -> tuple[int, int]:
        """(real tokens, positions) of this batch once right-padded to its longest sample."""
        lengths = batch["attention_mask"].sum(1)
        return int(lengths.sum()), int(lengths.max()) * len(lengths)
