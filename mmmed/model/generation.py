"""Answers and answer likelihoods from a MultimodalLM: what validation, eval.py and predict.py share.

Generation runs on left-padded prompts (real tokens end where the answer starts, for every row) with
the LLM's KV cache; sampling draws ``num_samples`` answers per question. Option scoring teacher-forces
each candidate answer, end-of-turn token included, and sums its tokens' log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmmed.model.collate import pad_sequences, positions_from_mask, stack_signals
from mmmed.model.multimodal_lm import MultimodalLM
from mmmed.model.prompts import IGNORE_INDEX, ChatFormatter

Signal = torch.Tensor | dict[str, torch.Tensor]  # one encoder input: a tensor, or keyword tensors (ECG + lead mask)


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are decoded (conf: ``evaluation.generation``, predict.yaml ``generation``).

    Args:
        max_new_tokens: answer budget in tokens.
        do_sample: False: greedy (deterministic); True: sample with ``temperature`` and ``top_p``.
        temperature: softmax temperature when sampling.
        top_p: nucleus sampling mass when sampling (1.0: off).
        num_samples: answers per question (sampling only; greedy gives one).
        use_cache: reuse attention keys/values between steps (the LLM's KV cache).
    """

    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    num_samples: int
    use_cache: bool

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, not {self.num_samples}")
        if not self.do_sample and self.num_samples != 1:
            raise ValueError("greedy decoding gives one answer per question: set do_sample=true for num_samples > 1")
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, not {self.temperature}, {self.top_p}")

    def generate_kwargs(self) -> dict:
        """Keyword arguments for ``transformers`` ``generate``."""
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample, "use_cache": self.use_cache}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=None,
                          num_return_sequences=self.num_samples)
        return kwargs


def generate_answers(model: MultimodalLM, formatter: ChatFormatter, prompt_input_ids: torch.Tensor,
                     prompt_attention_mask: torch.Tensor, signals: dict[str, Signal],
                     settings: GenerationSettings) -> list[list[str]]:
    """``num_samples`` decoded answers per left-padded prompt (B lists)."""
    tokenizer = formatter.tokenizer
    new_tokens = model.generate(prompt_input_ids, prompt_attention_mask, signals, **settings.generate_kwargs(),
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # (B*S, new)
    texts = [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    per = settings.num_samples if settings.do_sample else 1
    return [texts[row * per : (row + 1) * per] for row in range(prompt_input_ids.shape[0])]


def signals_per_sample(prompt_input_ids: torch.Tensor, signals: dict[str, Signal],
                       formatter: ChatFormatter) -> list[dict[str, list[Signal]]]:
    """Undo the collator's stacking: each sample's own signals, counted from its placeholder tokens."""
    out: list[dict[str, list[Signal]]] = [{} for _ in range(prompt_input_ids.shape[0])]
    for name, stacked in signals.items():
        per_sample = (prompt_input_ids == formatter.placeholder_ids[name]).sum(1) // formatter.modalities[name].num_tokens
        start = 0
        for row, count in enumerate(per_sample.tolist()):
            picked = range(start, start + count)
            out[row][name] = [{k: v[i] for k, v in stacked.items()} if isinstance(stacked, dict) else stacked[i]
                              for i in picked]
            start += count
    return out


def score_options(model: MultimodalLM, formatter: ChatFormatter, questions: list[str],
                  signals: list[dict[str, list[Signal]]], options: list[list[str]], batch_size: int,
                  device: torch.device) -> list[list[float]]:
    """Log-probability of every candidate answer of every question (teacher-forced, summed over its tokens).

    ``options[i]`` are question i's candidates; the result has the same shape. A candidate longer than
    ``max_length`` allows is an error: a truncated option would be scored on part of its text.
    """
    pairs = [(q, sig, option) for q, sig, opts in zip(questions, signals, options) for option in opts]
    scores: list[float] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        encoded = []
        for question, sig, option in chunk:
            sample = formatter.encode(question, option, {m: len(s) for m, s in sig.items()})
            if sample.truncated:
                raise ValueError(f"Answer option {option!r} does not fit data.max_length={formatter.max_length}")
            encoded.append(sample)
        ids, mask = pad_sequences([e.input_ids for e in encoded], formatter.tokenizer.pad_token_id, "right")
        labels, _ = pad_sequences([e.labels for e in encoded], IGNORE_INDEX, "right")
        stacked = {m: stack_signals([s for _, sig, _ in chunk for s in sig.get(m, [])])
                   for m in sorted({m for _, sig, _ in chunk for m in sig})}
        stacked = {m: {k: v.to(device) for k, v in s.items()} if isinstance(s, dict) else s.to(device)
                   for m, s in stacked.items()}
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        scores += model.answer_logprobs(ids, mask, positions_from_mask(mask), labels, stacked).tolist()
    out, position = [], 0
    for opts in options:
        out.append(scores[position : position + len(opts)])
        position += len(opts)
    return out
