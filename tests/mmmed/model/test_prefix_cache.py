"""The prefix cache: the same loss and gradients as the whole forward, used only where that holds."""

from __future__ import annotations

import copy

import pytest
import torch

from mmmed.model.collate import MultimodalCollator
from mmmed.model.prefix_cache import prompt_prefix_first, shared_prefix_length
from mmmed.model.prompts import IGNORE_INDEX
from tests.mmmed.model.test_multimodal_lm import items, make


def loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss, _ = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["labels"], batch["signals"])
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same_loss_and_grads(model, reference, batch) -> None:
    """``model`` gives ``reference``'s loss and gradients on ``batch``. Float32, the same sums in another order
    (a prefix's projections for one row instead of inside the batch, or another attention kernel): measured
    differences ~1e-7, bound with margin."""
    expected, expected_grads = loss_and_grads(reference, batch)
    loss, grads = loss_and_grads(model, batch)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected_grads.keys() and len(grads) > 0
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def opening_length(formatter) -> int:
    """Tokens of the chat template's system turn and the user turn's opening, by the tokenizer alone."""
    text = formatter.tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": "X"}], tokenize=False)
    return len(formatter.tokenizer(text[: text.index("X")], add_special_tokens=False).input_ids)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_the_cache_gives_the_loss_and_gradients_of_the_whole_forward_over_training_steps(tiny_llm, attention):
    tiny_llm.model.set_attn_implementation(attention)
    whole, formatter = make(tiny_llm)
    cached = copy.deepcopy(whole)
    cached.use_prefix_cache(True)
    collate = MultimodalCollator(formatter)
    optimizers = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2) for m in (whole, cached)]
    for step in range(3):  # the adapter and encoder change between steps; the cached prefix stays right
        batch = collate(items(5, seed=step))  # questions with the tag first and with text before it
        assert_same_loss_and_grads(cached, whole, batch)
        for optimizer in optimizers:
            optimizer.step()
    # One entry, for the prompt's shared opening (the two question styles differ right after it).
    assert [len(key[0]) for key in cached.prefix_cache.entries] == [opening_length(formatter)]


def test_the_shared_prefix_stops_at_a_difference_a_placeholder_padding_or_a_target():
    ids = torch.tensor([[5, 6, 7, 9, 1, 2], [5, 6, 7, 9, 3, 4]])
    mask = torch.ones_like(ids)
    none = torch.full_like(ids, IGNORE_INDEX)
    assert shared_prefix_length(ids, mask, none, placeholder_ids=[99]) == 4  # the rows differ at position 4
    assert shared_prefix_length(ids, mask, none, placeholder_ids=[7]) == 2  # a signal's tokens are never cached
    short = mask.clone()
    short[1, 1:] = 0  # a one-token sample: padding is not part of anyone's prefix
    assert shared_prefix_length(ids, short, none, placeholder_ids=[99]) == 1
    labelled = none.clone()
    labelled[0, 3] = 9  # position 2 predicts a target: it must run, with its logits
    assert shared_prefix_length(ids, mask, labelled, placeholder_ids=[99]) == 2
    same = torch.tensor([[5, 6, 7], [5, 6, 7]])
    assert shared_prefix_length(same, torch.ones_like(same), torch.full_like(same, IGNORE_INDEX), [99]) == 2  # one left


def test_it_is_not_used_where_the_llm_trains_or_checkpointing_drops_the_past(tiny_llm):
    model, formatter = make(tiny_llm)
    model.use_prefix_cache(True)
    batch = MultimodalCollator(formatter)(items(3))
    model.llm.lm_head.weight.requires_grad_(True)  # an LLM weight that trains: its keys and values change
    loss_and_grads(model, batch)
    assert not model.prefix_cache.entries
    model.llm.lm_head.weight.requires_grad_(False)
    model.llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()  # the checkpointing layers train (MultimodalLM.train): Hugging Face would drop a given past
    loss_and_grads(model, batch)
    assert not model.prefix_cache.entries
    model.eval()
    loss_and_grads(model, batch)
    assert len(model.prefix_cache.entries) == 1


def test_weights_loaded_into_the_llm_drop_what_was_cached(tiny_llm):
    model, formatter = make(tiny_llm)
    model.use_prefix_cache(True)
    batch = MultimodalCollator(formatter)(items(3))
    loss_and_grads(model, batch)
    assert len(model.prefix_cache.entries) == 1
    other = {k: v + 0.01 for k, v in model.llm.state_dict().items()}
    wrapper = torch.nn.ModuleDict({"model": model})  # loaded through a parent, as a Lightning checkpoint is
    wrapper.load_state_dict({f"model.{k}": v for k, v in model.state_dict().items()} |
                            {f"model.llm.{k}": v for k, v in other.items()})
    assert not model.prefix_cache.entries
    loss, _ = loss_and_grads(model, batch)
    model.use_prefix_cache(False)
    expected, _ = loss_and_grads(model, batch)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_left_padded_prompts_get_their_shared_start_first_and_padding_after_it():
    pad, tag = 0, 9
    ids = torch.tensor([[pad, pad, 5, 6, 7, tag, 8],
                        [5, 6, 7, 1, tag, 2, 3],
                        [pad, 5, 6, 7, tag, 4, 4]])
    mask = (torch.arange(7)[None] >= torch.tensor([[2], [0], [1]])).long()
    start, moved, moved_mask = prompt_prefix_first(ids, mask, [tag])
    assert start == 3  # 5, 6, 7; the next tokens differ (tag / 1)
    assert moved.tolist() == [[5, 6, 7, pad, pad, tag, 8], [5, 6, 7, 1, tag, 2, 3], [5, 6, 7, pad, tag, 4, 4]]
    assert moved_mask.tolist() == [[1, 1, 1, 0, 0, 1, 1], [1] * 7, [1, 1, 1, 0, 1, 1, 1]]
    # Each row's real tokens, in order, and the positions the mask gives them, are unchanged.
    for row in range(3):
        assert moved[row][moved_mask[row].bool()].tolist() == ids[row][mask[row].bool()].tolist()
    assert prompt_prefix_first(ids, mask, [5])[0] == 0  # a placeholder first: nothing shared
    right_padded = torch.tensor([[1, 1, 1, 0]])
    assert prompt_prefix_first(torch.tensor([[5, 6, 7, 0]]), right_padded, [tag])[0] == 0  # not left-padded


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_greedy_generation_with_the_cache_gives_the_same_tokens(tiny_llm, attention):
    tiny_llm.model.set_attn_implementation(attention)
    plain, formatter = make(tiny_llm)
    plain.eval()
    cached = copy.deepcopy(plain)
    cached.use_prefix_cache(True)
    batch = MultimodalCollator(formatter, generation_inputs=True)(items(5, seed=3))  # left-padded, two question styles
    assert (batch["prompt_attention_mask"] == 0).any()  # some rows are padded
    settings = {"max_new_tokens": 12, "do_sample": False, "use_cache": True, "return_dict_in_generate": True,
                "output_logits": True}
    expected = plain.generate(batch["prompt_input_ids"], batch["prompt_attention_mask"], batch["signals"], **settings)
    got = cached.generate(batch["prompt_input_ids"], batch["prompt_attention_mask"], batch["signals"], **settings)
    assert [len(key[0]) for key in cached.prefix_cache.entries] == [opening_length(formatter)]  # the cache was used
    assert torch.equal(got.sequences, expected.sequences)
    # Every step's logits, not only the arg-max (a random tiny LLM's tokens barely depend on its context). Float32:
    # measured differences ~2e-7 of logits ~1, bound with margin.
    for step, (logits, reference) in enumerate(zip(got.logits, expected.logits, strict=True)):
        torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-5, msg=f"step {step}")
