"""The self-training sampler: greedy equals ``generate`` token for token, sampling matches the documented rule."""

from __future__ import annotations

import torch

from mmmed.model.collate import MultimodalCollator
from mmmed.selftrain.sampler import nucleus_filter, sample_completions
from tests.mmmed.model.test_generation import items, make

NEW_TOKENS = 12


def test_greedy_completions_equal_generate_one_prompt_at_a_time(tiny_llm):
    model, formatter = make(tiny_llm)
    batch = MultimodalCollator(formatter, generation_inputs=True)(items(4))  # prompts of different lengths: left padding
    tok = formatter.tokenizer
    ours = sample_completions(model, batch["prompt_input_ids"], batch["prompt_attention_mask"], batch["signals"], 1,
                              NEW_TOKENS, False, 1.0, 1.0, tok.eos_token_id, tok.pad_token_id)
    lengths = batch["prompt_attention_mask"].sum(1)
    start = 0
    for row in range(4):
        n_ecg = int((batch["prompt_input_ids"][row] == formatter.placeholder_ids["ecg"]).sum()) // 4
        ids = batch["prompt_input_ids"][row, -int(lengths[row]):].unsqueeze(0)  # this prompt alone, unpadded
        signals = {"ecg": batch["signals"]["ecg"][start:start + n_ecg]}
        start += n_ecg
        plain = model.generate(ids, torch.ones_like(ids), signals, max_new_tokens=NEW_TOKENS, do_sample=False,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0]
        got = ours[row, :plain.shape[0]]
        assert got.tolist() == plain.tolist()
        assert (ours[row, plain.shape[0]:] == tok.pad_token_id).all()  # only padding after an early end


def test_samples_of_one_prompt_share_its_cache_yet_differ_and_repeat_with_the_seed(tiny_llm):
    model, formatter = make(tiny_llm)
    batch = MultimodalCollator(formatter, generation_inputs=True)(items(3))
    tok = formatter.tokenizer

    def draw(seed: int) -> torch.Tensor:
        return sample_completions(model, batch["prompt_input_ids"], batch["prompt_attention_mask"], batch["signals"], 4,
                                  NEW_TOKENS, True, 1.5, 1.0, tok.eos_token_id, tok.pad_token_id,
                                  torch.Generator().manual_seed(seed))

    first = draw(0)
    assert first.shape[0] == 12
    assert torch.equal(first, draw(0))
    assert not torch.equal(first, draw(1))
    assert len({tuple(row.tolist()) for row in first[:4]}) > 1  # one prompt's four samples are not copies


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = nucleus_filter(logits, 0.8).isfinite()
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 + 0.3 reaches 0.8
    assert nucleus_filter(logits, 0.4).isfinite().tolist() == [[True, False, False, False]]
    assert nucleus_filter(logits, 1.0).isfinite().all()
