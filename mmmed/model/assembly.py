"""The one place the multimodal model is put together: training, restore, inference and the planner call it.

From an LLM (and its tokenizer), the modality plugins, an adapter factory and the stage's switches it builds
one encoder and one adapter per modality, measures how many LLM tokens a signal becomes (a weightless probe
on the meta device), adds the placeholder tokens to the tokenizer, and returns the model with its
ChatFormatter. The planner passes no tokenizer and builds on the meta device: then the placeholders get ids
past the vocabulary (never looked up) and no formatter is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch import nn

from mmmed.model.adapters import num_output_tokens
from mmmed.model.modality import ModalityPlugin
from mmmed.model.multimodal_lm import MultimodalLM
from mmmed.model.prompts import ChatFormatter, Modality

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Assembled:
    """The model and what feeds it: its formatter (None on the planner's meta build) and tokens per signal."""

    model: MultimodalLM
    formatter: ChatFormatter | None
    num_tokens: dict[str, int]  # placeholder tokens per signal, by modality


def build_plugins(modalities: Mapping, resolve: Callable[[str], Callable[..., Any]] | None = None) -> dict[str, ModalityPlugin]:
    """The modality plugins of ``modalities`` (``cfg.modalities``: conf/modality/ nodes), in its order.

    ``resolve`` None (training): Hydra instantiates each node. Loading a saved config passes
    ``mmmed.infer.trust.resolver(...)``: classes come only from trusted packages, and each plugin builds its parts with it.
    """
    plugins = {}
    for key, node in modalities.items():
        if resolve is None:
            from hydra.utils import instantiate

            plugin = instantiate(node)
        else:
            kwargs = {k: v for k, v in node.items() if k not in ("_target_", "_partial_", "_recursive_")}
            plugin = resolve(node["_target_"])(**kwargs, resolve=resolve)
        if plugin.name != key:
            raise ValueError(f"modalities.{key} builds a plugin named {plugin.name!r}: the key and its name must agree")
        plugins[key] = plugin
    return plugins


def encoder_switches(plugins: Mapping[str, ModalityPlugin], train_encoder: bool | None) -> dict[str, bool]:
    """Which encoders train: the stage's ``train_encoder`` for all when set, else each modality's ``trainable``."""
    return {name: plugin.trainable if train_encoder is None else bool(train_encoder) for name, plugin in plugins.items()}


def assemble_model(
    llm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    plugins: Mapping[str, ModalityPlugin],
    adapter_factory: Callable[..., nn.Module],
    *,
    system_prompt: str | None,
    max_length: int,
    train_llm: bool,
    train_encoder: bool | None,
    encoders: Mapping[str, nn.Module] | None = None,
) -> Assembled:
    """Build encoders (unless given), adapters, placeholders and the MultimodalLM, modalities in ``plugins`` order.

    Args:
        llm: the causal LLM (LoRA already applied when the stage uses it).
        tokenizer: its tokenizer, which gets the placeholder tokens; None on the planner's meta build.
        plugins: the modalities, in the order an untagged question's signals are placed.
        adapter_factory: builds an adapter from ``in_dim`` and ``out_dim``.
        system_prompt, max_length: the formatter's settings.
        train_llm: whether the LLM's weights train.
        train_encoder: the stage's switch (None: each modality's ``trainable``).
        encoders: encoders already built (restore builds them without downloading), else from each plugin.
    """
    if not plugins:
        raise ValueError("no modality configured: the run needs at least one (modality=[ecg] in conf/train.yaml)")
    encoders = dict(encoders) if encoders is not None else {name: p.build_encoder() for name, p in plugins.items()}
    hidden = llm.get_input_embeddings().embedding_dim
    num_tokens = {}
    with torch.device("meta"):  # a weightless probe (no memory, no RNG draw): how many LLM tokens a signal becomes
        for name, encoder in encoders.items():
            num_tokens[name] = num_output_tokens(adapter_factory(in_dim=encoder.out_dim, out_dim=hidden), encoder.num_tokens)
    if tokenizer is None:
        formatter = None
        vocab = llm.config.vocab_size
        placeholder_ids = {name: vocab + i for i, name in enumerate(plugins)}  # never looked up on the meta device
    else:
        formatter = ChatFormatter(tokenizer, [Modality(name, num_tokens[name]) for name in plugins], system_prompt,
                                  max_length)
        placeholder_ids = formatter.placeholder_ids
    model = MultimodalLM(llm, {name: encoders[name] for name in plugins}, adapter_factory, placeholder_ids,
                         train_llm=train_llm, train_encoders=encoder_switches(plugins, train_encoder))
    return Assembled(model, formatter, num_tokens)
