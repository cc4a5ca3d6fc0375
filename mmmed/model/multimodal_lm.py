"""The multimodal model: modality encoders -> projection adapters -> a (usually frozen) causal LLM.

Encoder tokens are spliced into the token embeddings at placeholder positions with one
``masked_scatter`` per modality: no per-sample Python loop, shapes fixed by the batch, so the same
code serves packing, a KV cache and ``torch.compile``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from mmmed.model.lora import is_lora_parameter
from mmmed.model.prefix_cache import PrefixCache, prompt_prefix_first, shared_prefix_length
from mmmed.model.prompts import IGNORE_INDEX


class MultimodalLM(nn.Module):
    """A causal LLM that reads signals through per-modality encoders and adapters.

    Args:
        llm: the causal language model.
        encoders: one encoder per modality; each exposes ``out_dim`` and ``num_tokens``.
        adapter_factory: builds an adapter from ``in_dim`` and ``out_dim``, derived here.
        placeholder_ids: token id of each modality's placeholder.
        train_llm: whether the LLM's weights train (False: frozen, no weight gradients, eval mode).
        train_encoders: whether the encoders' weights train: one answer for all, or one per modality.
    """

    def __init__(
        self,
        llm: PreTrainedModel,
        encoders: dict[str, nn.Module],
        adapter_factory: Callable[..., nn.Module],
        placeholder_ids: dict[str, int],
        train_llm: bool = False,
        train_encoders: bool | dict[str, bool] = True,
    ) -> None:
        super().__init__()
        if set(encoders) != set(placeholder_ids):
            raise ValueError(f"Encoders {sorted(encoders)} and placeholders {sorted(placeholder_ids)} differ")
        self.llm = llm
        self.encoders = nn.ModuleDict(encoders)
        hidden = llm.get_input_embeddings().embedding_dim
        self.adapters = nn.ModuleDict(
            {name: adapter_factory(in_dim=enc.out_dim, out_dim=hidden) for name, enc in encoders.items()}
        )
        self.placeholder_ids = dict(placeholder_ids)
        self.train_llm = train_llm
        if isinstance(train_encoders, bool):
            train_encoders = {name: train_encoders for name in encoders}
        if set(train_encoders) != set(encoders):
            raise ValueError(f"train_encoders names {sorted(train_encoders)}, the encoders are {sorted(encoders)}")
        self.trained_encoders = {name for name, trains in train_encoders.items() if trains}
        # A PEFT-wrapped LLM trains its LoRA weights while the base stays frozen.
        self.has_lora = any(is_lora_parameter(name) for name, _ in llm.named_parameters())
        self.llm.requires_grad_(train_llm)
        if self.has_lora:
            for name, param in self.llm.named_parameters():
                if is_lora_parameter(name):
                    param.requires_grad_(True)
        for name, encoder in self.encoders.items():
            encoder.requires_grad_(name in self.trained_encoders)
        self.adapters.requires_grad_(True)
        # Distributed training sets this (the Lightning module, when world size > 1): see ``embed``.
        self.every_modality_in_graph = False
        # The shared prompt start's keys and values, reused while no LLM weight trains (``use_prefix_cache``).
        self.prefix_cache: PrefixCache | None = None
        # The LLM's forward through torch.compile for the loss (``compile_llm``); a function, not a module, so the
        # state dict keeps its keys.
        self.compiled_llm_forward = None
        # Fires however the LLM's weights are loaded: directly, or through this model or a Lightning module.
        self.llm.register_load_state_dict_pre_hook(self._forget_prefix)
        self.train()

    def use_prefix_cache(self, enabled: bool) -> None:
        """Compute the keys and values of the prompt start every sample shares once, where that is exact
        (``mmmed/model/prefix_cache.py``): a frozen LLM without LoRA and without active gradient checkpointing."""
        self.prefix_cache = PrefixCache() if enabled else None

    def compile_llm(self, enabled: bool) -> None:
        """Run the LLM's forward for the loss through ``torch.compile`` (dynamic shapes: batch lengths vary).
        Generation keeps the eager forward: its one-token steps would compile again for little gain."""
        self.compiled_llm_forward = torch.compile(self.llm.forward, dynamic=True) if enabled else None

    def _prefix_cache_applies(self) -> bool:
        if self.prefix_cache is None or any(p.requires_grad for p in self.llm.parameters()):
            return False
        return not any(isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing and m.training
                       for m in self.llm.modules())

    def _forget_prefix(self, *_) -> None:
        """Cached prefix keys and values belong to the weights they came from: loading any into the LLM drops them."""
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    def train(self, mode: bool = True) -> "MultimodalLM":
        """Like ``nn.Module.train``, but frozen parts stay in eval mode (no dropout, fixed norms)."""
        super().train(mode)
        if not self.train_llm and not self.has_lora:
            self.llm.eval()
            # HF recomputes a layer in backward only while that layer is in training mode: switch on
            # just the checkpointing layers' own flag (their attention/MLP stay in eval: no dropout),
            # or gradient checkpointing would never run for a frozen LLM and save no memory.
            for module in self.llm.modules():
                if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
                    module.training = mode
        for name, encoder in self.encoders.items():
            if name not in self.trained_encoders:
                encoder.eval()
        return self

    def _is_trained(self, key: str) -> bool:
        if key.startswith("adapters."):
            return True
        if key.startswith("encoders."):
            return key.split(".")[1] in self.trained_encoders
        if key.startswith("llm."):
            return self.train_llm or (self.has_lora and is_lora_parameter(key))
        return False

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights that train (and buffers of trained modules): what a checkpoint must hold.

        A frozen LLM is never saved; with LoRA only the adapter weights of the LLM are.
        """
        return {k: v for k, v in self.state_dict().items() if self._is_trained(k)}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by part: ``encoder``, ``adapter``, ``lora``, ``llm`` (empty parts left out)."""
        groups: dict[str, list[nn.Parameter]] = {"encoder": [], "adapter": [], "lora": [], "llm": []}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith("encoders."):
                groups["encoder"].append(param)
            elif name.startswith("adapters."):
                groups["adapter"].append(param)
            elif is_lora_parameter(name):
                groups["lora"].append(param)
            else:
                groups["llm"].append(param)
        return {part: params for part, params in groups.items() if params}

    def embed(self, input_ids: torch.Tensor, signals: dict[str, torch.Tensor | dict[str, torch.Tensor]]) -> torch.Tensor:
        """Token embeddings with each modality's adapter output scattered into its placeholders. (B, L, D)"""
        embed_layer = self.llm.get_input_embeddings()
        is_placeholder = torch.zeros_like(input_ids, dtype=torch.bool)
        for pid in self.placeholder_ids.values():
            is_placeholder |= input_ids == pid
        # Placeholder ids may lie beyond the LLM's vocabulary; look up id 0 there, then overwrite.
        embeds = embed_layer(input_ids.masked_fill(is_placeholder, 0))  # (B, L, D)
        for name, pid in self.placeholder_ids.items():
            mask = input_ids == pid  # (B, L)
            signal = signals.get(name)
            if signal is None:
                if mask.any():
                    raise ValueError(f"Batch has {name} placeholders but no {name} signals")
                if self.every_modality_in_graph and torch.is_grad_enabled():
                    embeds = embeds + self._absent_modality_term(name).to(embeds.dtype)
                continue
            tokens = self._tokens(name, signal)  # (M, N, D)
            if mask.sum() != tokens.shape[0] * tokens.shape[1]:
                raise ValueError(
                    f"{name}: {int(mask.sum())} placeholder tokens in the batch but {tokens.shape[0]} signals x "
                    f"{tokens.shape[1]} tokens from its encoder and adapter"
                )
            embeds = embeds.masked_scatter(mask.unsqueeze(-1), tokens.to(embeds.dtype))
        return embeds

    def _absent_modality_term(self, name: str) -> torch.Tensor:
        """Zero that depends on every weight of a modality's encoder and adapter: a batch without that modality
        still gives them a (zero) gradient. Under DDP every rank must produce every trained parameter's gradient
        (or the all-reduce waits for it), and under FSDP every rank must run each unit's forward; a rank whose
        records lack a modality runs its encoder once on the encoder's ``example_input(1)`` instead. The other
        ranks' gradients are then averaged with zeros, as DDP's ``find_unused_parameters`` would, without its
        extra graph traversal each step. A scalar (the adapter output's sum times 0); the modules' buffers (BatchNorm
        statistics) are left as they were."""
        with torch.random.fork_rng(devices=[]):  # a random example must not move the run's CPU random stream
            example = self.encoders[name].example_input(1)
        device = self.llm.get_input_embeddings().weight.device
        example = {k: v.to(device) for k, v in example.items()} if isinstance(example, dict) else example.to(device)
        # In eval mode: BatchNorm in training mode would fold the made-up example into its running statistics.
        modes = [(module, module.training) for part in (self.encoders[name], self.adapters[name])
                 for module in part.modules()]
        for module, _ in modes:
            module.training = False
        try:
            return self._tokens(name, example).sum() * 0.0
        finally:
            for module, training in modes:
                module.training = training

    def modality_tokens(self, name: str, signal: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """The LLM-space tokens a modality's signals become (what the prompt's placeholders receive). (M, N, D)"""
        return self._tokens(name, signal)

    def _tokens(self, name: str, signal: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """A modality's signals through its encoder and adapter. (M, N, D)"""
        # An encoder taking several inputs (an ECG and its lead mask) gets them as keywords.
        features = self.encoders[name](**signal) if isinstance(signal, dict) else self.encoders[name](signal)
        return self.adapters[name](features)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        labels: torch.Tensor,
        signals: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, int]:
        """Mean cross-entropy over answer tokens; returns ``(loss, number of answer tokens)``."""
        logits, targets = self._answer_logits(input_ids, attention_mask, position_ids, labels, signals)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        return loss, int((targets != IGNORE_INDEX).sum())

    def _answer_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                       labels: torch.Tensor, signals: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Float logits at the positions where some sample has an answer target, and those targets. (B, K, V), (B, K)"""
        embeds = self.embed(input_ids, signals)
        targets = labels[:, 1:]  # (B, L-1): the token each position predicts
        # The LM head runs only where some sample has a target: a big saving with a 49k vocabulary.
        keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)  # (K,)
        start, past = 0, None  # positions [0, start) come from the prefix cache, when it applies
        if self._prefix_cache_applies():
            start = shared_prefix_length(input_ids, attention_mask, labels, list(self.placeholder_ids.values()))
            past = self.prefix_cache.past(self.llm, input_ids[0, :start], len(input_ids)) if start else None
        out = (self.compiled_llm_forward or self.llm)(
            inputs_embeds=embeds[:, start:],
            attention_mask=attention_mask,  # (B, L): the past's positions and these
            position_ids=position_ids[:, start:],
            past_key_values=past,
            logits_to_keep=keep - start,
            use_cache=False,
        )
        return out.logits.float(), targets[:, keep]

    @torch.no_grad()
    def answer_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        labels: torch.Tensor,
        signals: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Log-probability of each sample's labelled answer tokens under teacher forcing. (B,)

        The same positions the loss covers (the answer and its end-of-turn token), summed per sample:
        how likely the model finds that exact answer. Used to score answer options.
        """
        logits, targets = self._answer_logits(input_ids, attention_mask, position_ids, labels, signals)  # (B, K, V)
        picked = logits.log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, K)
        return picked.masked_fill(targets == IGNORE_INDEX, 0.0).sum(-1)

    @torch.no_grad()
    def generate(
        self,
        prompt_input_ids: torch.Tensor,
        prompt_attention_mask: torch.Tensor,
        signals: dict[str, torch.Tensor],
        **generate_kwargs,
    ) -> torch.Tensor:
        """Continue left-padded prompts; returns only the new token ids. (B, new)

        With the prefix cache on, the prompts' shared start runs from the cache (``prompt_prefix_first``); one
        completion per prompt only (Hugging Face does not repeat a given cache for ``num_return_sequences``).
        """
        if (self._prefix_cache_applies() and generate_kwargs.get("num_return_sequences", 1) == 1
                and generate_kwargs.get("use_cache", True)):
            start, ids, mask = prompt_prefix_first(prompt_input_ids, prompt_attention_mask,
                                                   list(self.placeholder_ids.values()))
            if start:
                embeds = self.embed(ids, signals)  # (B, L, D); positions [0, start) are read from the cache
                past = self.prefix_cache.past(self.llm, ids[0, :start], len(ids))
                return self.llm.generate(inputs_embeds=embeds, attention_mask=mask, past_key_values=past,
                                         **generate_kwargs)
        embeds = self.embed(prompt_input_ids, signals)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=prompt_attention_mask, **generate_kwargs)