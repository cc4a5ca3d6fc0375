"""Draw K completions per question cheaply: each record is encoded once and each prompt is run through the LLM
once; its KV cache is then repeated for the K samples, which decode together in one padded batch.

A plain ``generate`` call with ``num_return_sequences=K`` repeats the *inputs* K times before the prompt is run,
so the encoders and the whole prompt (system prompt, encoder tokens, question) are computed K times; a loop over
questions also runs one prompt at a time. Here the prompt pass (the expensive, long one) runs once per question in
a left-padded batch, and decoding steps run for all ``B x K`` rows at once.

Decoding is the same as ``transformers``' for these settings: greedy picks the arg-max; sampling divides the
logits by ``temperature``, keeps the smallest set of tokens whose probability reaches ``top_p`` (nucleus) and
draws from it. A row stops at the end-of-turn token; finished rows are padded until every row stops or
``max_new_tokens`` is reached. Draws come from the caller's ``torch.Generator``, so a seeded call is repeatable
(``tests/mmmed/selftrain/test_sampler.py`` checks greedy decoding against ``generate`` token for token).
"""

from __future__ import annotations

import torch

from mmmed.model.collate import positions_from_mask
from mmmed.model.multimodal_lm import MultimodalLM


def nucleus_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits`` with every token outside the top-``p`` nucleus set to -inf (the most likely token always stays). (N, V)"""
    if top_p >= 1.0:
        return logits
    ordered, order = logits.sort(dim=-1, descending=False)
    cumulative = ordered.softmax(-1).cumsum(-1)  # ascending: the tail's mass first
    drop_sorted = cumulative <= 1 - top_p
    drop_sorted[..., -1] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


@torch.no_grad()
def sample_completions(model: MultimodalLM, prompt_input_ids: torch.Tensor, prompt_attention_mask: torch.Tensor,
                       signals: dict, num_samples: int, max_new_tokens: int, do_sample: bool, temperature: float,
                       top_p: float, eos_token_id: int, pad_token_id: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """New token ids of ``num_samples`` completions per left-padded prompt, rows ``b * K + k``. (B*K, T)

    After a row's end-of-turn token, it holds ``pad_token_id``; ``T <= max_new_tokens``.
    """
    if not do_sample and num_samples != 1:
        raise ValueError("greedy decoding gives one completion per question: num_samples must be 1")
    if do_sample and not (temperature > 0 and 0 < top_p <= 1):
        raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, not {temperature}, {top_p}")
    llm = model.llm
    embeds = model.embed(prompt_input_ids, signals)  # (B, P, D): every record encoded once
    positions = positions_from_mask(prompt_attention_mask)  # (B, P)
    out = llm(inputs_embeds=embeds, attention_mask=prompt_attention_mask, position_ids=positions, use_cache=True,
              logits_to_keep=1)
    cache = out.past_key_values
    logits = out.logits[:, -1].float()  # (B, V)
    if num_samples > 1:  # the prompt's keys and values, shared by its K samples
        cache.batch_repeat_interleave(num_samples)
        logits = logits.repeat_interleave(num_samples, 0)  # (B*K, V)
    mask = prompt_attention_mask.repeat_interleave(num_samples, 0)  # (B*K, P)
    next_position = positions[:, -1:].repeat_interleave(num_samples, 0) + 1  # (B*K, 1)
    finished = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
    tokens = []
    for step in range(max_new_tokens):
        if do_sample:
            probs = nucleus_filter(logits / temperature, top_p).softmax(-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B*K,)
        else:
            token = logits.argmax(-1)
        token = token.masked_fill(finished, pad_token_id)
        tokens.append(token)
        finished |= token == eos_token_id
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = llm(input_ids=token.unsqueeze(1), attention_mask=mask, position_ids=next_position,
                  past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1].float()
        next_position = next_position + 1
    return torch.stack(tokens, dim=1)  # (B*K, T)
