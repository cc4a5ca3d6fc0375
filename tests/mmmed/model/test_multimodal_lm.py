"""The splice, the masked loss, batching and freezing of MultimodalLM, on a tiny random Llama."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmmed.model.adapters import LinearProjector, MLPProjector
from mmmed.model.collate import MultimodalCollator
from mmmed.model.multimodal_lm import MultimodalLM
from mmmed.model.prompts import IGNORE_INDEX, ChatFormatter, Modality
from mmmed_encoders.ecg_cnn import ECGCNNEncoder

N_TOKENS = 4


def make(tiny_llm, adapter=MLPProjector):
    formatter = ChatFormatter(tiny_llm.tokenizer, [Modality("ecg", N_TOKENS)], "Be brief.", max_length=96)
    encoder = ECGCNNEncoder(in_leads=12, widths=[8, 16], kernel_size=5, num_tokens=N_TOKENS, lead_mask_input=False)
    model = MultimodalLM(tiny_llm.model, {"ecg": encoder}, adapter, formatter.placeholder_ids)
    return model, formatter


def items(n: int, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    answers = ["Sinus bradycardia at 44 bpm.", "Normal sinus rhythm at 72 bpm, no changes.", "Sinus tachycardia."]
    return [
        {
            "id": f"s{i}",
            "signals": {"ecg": [torch.randn(12, 200, generator=gen)]},
            "question": "<ecg>\nWhat rhythm?" if i % 2 == 0 else "Please read <ecg> and tell me the rhythm.",
            "answer": answers[i % 3],
            "label": None,
        }
        for i in range(n)
    ]


def test_adapter_dimensions_are_derived_from_encoder_and_llm(tiny_llm):
    model, _ = make(tiny_llm, adapter=LinearProjector)
    proj = model.adapters["ecg"].proj
    assert (proj.in_features, proj.out_features) == (16, 64)


def test_splice_puts_encoder_tokens_exactly_at_placeholders(tiny_llm):
    model, formatter = make(tiny_llm)
    model.eval()
    batch = MultimodalCollator(formatter)(items(3))
    ids, signals = batch["input_ids"], batch["signals"]
    embeds = model.embed(ids, signals)
    expected_tokens = model.adapters["ecg"](model.encoders["ecg"](signals["ecg"]))  # (3, N, D)
    text_embeds = model.llm.get_input_embeddings()
    pid = formatter.placeholder_ids["ecg"]
    for row in range(3):
        where = (ids[row] == pid).nonzero().squeeze(1)
        assert len(where) == N_TOKENS
        torch.testing.assert_close(embeds[row, where], expected_tokens[row], rtol=0, atol=0)
        other = ids[row] != pid
        torch.testing.assert_close(embeds[row, other], text_embeds(ids[row, other]), rtol=0, atol=0)


def test_signals_with_a_lead_mask_reach_the_encoder_as_keywords(tiny_llm):
    formatter = ChatFormatter(tiny_llm.tokenizer, [Modality("ecg", N_TOKENS)], "Be brief.", max_length=96)
    encoder = ECGCNNEncoder(in_leads=12, widths=[8, 16], kernel_size=5, num_tokens=N_TOKENS, lead_mask_input=True)
    model = MultimodalLM(tiny_llm.model, {"ecg": encoder}, MLPProjector, formatter.placeholder_ids).eval()
    samples = items(3)
    masks = [torch.ones(12, dtype=torch.bool), torch.arange(12) != 9, torch.arange(12) < 2]
    for sample, mask in zip(samples, masks):
        signal = sample["signals"]["ecg"][0] * mask[:, None]  # missing leads arrive as zeros
        sample["signals"]["ecg"] = [{"signal": signal, "lead_mask": mask}]
    batch = MultimodalCollator(formatter)(samples)
    signals = batch["signals"]["ecg"]
    assert signals["signal"].shape == (3, 12, 200) and torch.equal(signals["lead_mask"], torch.stack(masks))
    embeds = model.embed(batch["input_ids"], batch["signals"])
    pid = formatter.placeholder_ids["ecg"]
    for row in range(3):
        alone = model.adapters["ecg"](encoder(signals["signal"][row : row + 1], signals["lead_mask"][row : row + 1]))
        torch.testing.assert_close(embeds[row, batch["input_ids"][row] == pid], alone[0], rtol=1e-5, atol=1e-6)
    # The same zeros, declared present instead of missing, give other tokens: the encoder sees the mask.
    declared_present = encoder(signals["signal"][1:2], torch.ones(1, 12, dtype=torch.bool))
    assert not torch.allclose(declared_present, encoder(signals["signal"][1:2], signals["lead_mask"][1:2]))


def test_placeholder_count_mismatch_is_an_error(tiny_llm):
    model, formatter = make(tiny_llm)
    batch = MultimodalCollator(formatter)(items(2))
    with pytest.raises(ValueError, match="8 placeholder tokens in the batch but 1 signals x 4 tokens"):
        model.embed(batch["input_ids"], {"ecg": batch["signals"]["ecg"][:1]})


def test_loss_equals_cross_entropy_over_answer_tokens_only(tiny_llm):
    model, formatter = make(tiny_llm)
    model.eval()
    batch = MultimodalCollator(formatter)(items(3))
    loss, n_tokens = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["labels"], batch["signals"])
    # Independent reference: full logits, standard shift, mean over labelled tokens.
    embeds = model.embed(batch["input_ids"], batch["signals"])
    logits = model.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]).logits
    labels = batch["labels"]
    ref = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    assert n_tokens == int((labels != IGNORE_INDEX).sum())
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)


def test_right_padded_batch_gives_each_sample_its_own_loss(tiny_llm):
    model, formatter = make(tiny_llm)
    model.eval()
    collate = MultimodalCollator(formatter)
    samples = items(3)
    batch = collate(samples)
    assert len({len(formatter.encode(s["question"], s["answer"], {"ecg": 1}).input_ids) for s in samples}) > 1
    loss, n = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["labels"], batch["signals"])
    total = 0.0
    for sample in samples:
        one = collate([sample])
        l1, n1 = model(one["input_ids"], one["attention_mask"], one["position_ids"], one["labels"], one["signals"])
        total += l1 * n1
    torch.testing.assert_close(loss, total / n, rtol=1e-5, atol=1e-5)


def test_masks_come_from_lengths_not_from_the_pad_id(tiny_llm):
    _, formatter = make(tiny_llm)
    tok = formatter.tokenizer
    assert tok.pad_token_id == tok.eos_token_id  # SmolLM2: pad == <|im_end|>, the trap this guards
    batch = MultimodalCollator(formatter)(items(3))
    for row in range(3):
        length = int(batch["attention_mask"][row].sum())
        ids = batch["input_ids"][row, :length].tolist()
        assert ids[-1] == tok.eos_token_id  # the answer's end-of-turn is attended and labelled
        assert batch["labels"][row, length - 1] == tok.eos_token_id
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row, :length].all() and not batch["attention_mask"][row, length:].any()


def test_frozen_llm_never_changes_and_gets_no_gradients(tiny_llm):
    model, formatter = make(tiny_llm)
    model.train()
    assert not model.llm.training and model.encoders.training
    llm_before = {k: v.clone() for k, v in model.llm.state_dict().items()}
    trained_before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    collate = MultimodalCollator(formatter)
    for step in range(3):
        batch = collate(items(4, seed=step))
        loss, _ = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["labels"], batch["signals"])
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in model.llm.parameters())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapters.parameters())
        optimizer.step()
    assert all(not p.requires_grad for p in model.llm.parameters())
    for key, value in model.llm.state_dict().items():
        assert torch.equal(value, llm_before[key]), key
    changed = [k for k, v in model.trainable_state_dict().items() if not torch.equal(v, trained_before[k])]
    assert any(k.startswith("encoders.") for k in changed) and any(k.startswith("adapters.") for k in changed)
    assert not any(k.startswith("llm.") for k in model.trainable_state_dict())


def test_with_every_modality_in_graph_an_absent_modality_gets_zero_gradients_and_keeps_its_statistics(tiny_llm):
    """Distributed training (several ranks): a batch without ECGs still gives the ECG encoder and adapter a
    gradient, all zeros, the loss is unchanged, and no BatchNorm statistic moves."""
    model, formatter = make(tiny_llm)
    model.train()
    batch = MultimodalCollator(formatter)([{**item, "signals": {}, "question": "What rhythm?"} for item in items(3)])
    inputs = (batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["labels"], batch["signals"])
    assert batch["signals"] == {}
    plain, _ = model(*inputs)
    assert plain.grad_fn is None  # one process: nothing trained is in the graph (the step is skipped for them)
    model.every_modality_in_graph = True
    buffers = {k: v.clone() for k, v in model.encoders.state_dict().items()}
    rng = torch.get_rng_state()
    loss, _ = model(*inputs)
    assert torch.equal(torch.get_rng_state(), rng)  # the example input did not draw from the run's random stream
    loss.backward()
    assert loss.item() == plain.item()
    parts = [*model.encoders["ecg"].parameters(), *model.adapters["ecg"].parameters()]
    assert all(p.grad is not None and not p.grad.any() for p in parts)
    assert all(torch.equal(v, buffers[k]) for k, v in model.encoders.state_dict().items())


def test_batched_left_padded_generation_matches_one_by_one(tiny_llm):
    model, formatter = make(tiny_llm)
    model.eval()
    collate = MultimodalCollator(formatter, generation_inputs=True)
    samples = items(3)
    kwargs = dict(max_new_tokens=6, do_sample=False, eos_token_id=-1, pad_token_id=formatter.tokenizer.pad_token_id)
    batch = collate(samples)
    assert batch["prompt_attention_mask"][:, 0].tolist().count(0) >= 1  # some rows really are left-padded
    together = model.generate(batch["prompt_input_ids"], batch["prompt_attention_mask"], batch["signals"], **kwargs)
    for row, sample in enumerate(samples):
        one = collate([sample])
        alone = model.generate(one["prompt_input_ids"], one["prompt_attention_mask"], one["signals"], **kwargs)
        assert together[row].tolist() == alone[0].tolist()
