"""Generation (greedy, sampling, KV cache, left padding) and answer-option likelihoods, on a tiny random Llama."""

from __future__ import annotations

import pytest
import torch

from mmmed.model.adapters import MLPProjector
from mmmed.model.collate import MultimodalCollator
from mmmed.model.generation import GenerationSettings, generate_answers, score_options, signals_per_sample
from mmmed.model.multimodal_lm import MultimodalLM
from mmmed.model.prompts import IGNORE_INDEX, ChatFormatter, Modality
from mmmed_encoders.ecg_cnn import ECGCNNEncoder

N_TOKENS = 4


def make(tiny_llm):
    formatter = ChatFormatter(tiny_llm.tokenizer, [Modality("ecg", N_TOKENS)], "Be brief.", max_length=96)
    encoder = ECGCNNEncoder(in_leads=12, widths=[8, 16], kernel_size=5, num_tokens=N_TOKENS, lead_mask_input=False)
    model = MultimodalLM(tiny_llm.model, {"ecg": encoder}, MLPProjector, formatter.placeholder_ids).eval()
    return model, formatter


def items(n: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    questions = ["<ecg>\nWhat rhythm?", "Read <ecg> and name the rhythm, please, in a few words."]
    out = [{"id": f"s{i}", "signals": {"ecg": [torch.randn(12, 200, generator=gen)]}, "question": questions[i % 2],
            "answer": "Sinus rhythm.", "label": None} for i in range(n)]
    out[-1]["signals"]["ecg"].append(torch.randn(12, 200, generator=gen))  # the last asks about two ECGs
    out[-1]["question"] = "Compare <ecg> with <ecg>."
    return out


def greedy(max_new_tokens: int = 6, use_cache: bool = True) -> GenerationSettings:
    return GenerationSettings(max_new_tokens, do_sample=False, temperature=1.0, top_p=1.0, num_samples=1,
                              use_cache=use_cache)


def test_answer_logprobs_sum_the_log_softmax_at_answer_tokens(tiny_llm):
    model, formatter = make(tiny_llm)
    batch = MultimodalCollator(formatter)(items(3))
    got = model.answer_logprobs(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["labels"],
                                batch["signals"])
    # Independently: full logits over every position, then the answer tokens picked one by one.
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"], batch["signals"])
        logits = model.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                           position_ids=batch["position_ids"]).logits.float()
    for row in range(3):
        total = 0.0
        for pos in range(batch["labels"].shape[1] - 1):
            target = int(batch["labels"][row, pos + 1])
            if target != IGNORE_INDEX:
                total += float(logits[row, pos].log_softmax(-1)[target])
        assert got[row].item() == pytest.approx(total, abs=1e-4)


def test_option_scores_do_not_depend_on_batching_and_match_single_exchanges(tiny_llm):
    model, formatter = make(tiny_llm)
    samples = items(3)
    batch = MultimodalCollator(formatter, generation_inputs=True)(samples)
    per_sample = signals_per_sample(batch["prompt_input_ids"], batch["signals"], formatter)
    assert [len(s["ecg"]) for s in per_sample] == [1, 1, 2]
    for mine, item in zip(per_sample, samples):
        for got, given in zip(mine["ecg"], item["signals"]["ecg"]):
            assert torch.equal(got, given)
    options = [["Sinus rhythm.", "Sinus bradycardia.", "Atrial fibrillation with a rapid ventricular response."]] * 3
    one = score_options(model, formatter, batch["questions"], per_sample, options, 1, torch.device("cpu"))
    many = score_options(model, formatter, batch["questions"], per_sample, options, 7, torch.device("cpu"))
    torch.testing.assert_close(torch.tensor(one), torch.tensor(many), rtol=0, atol=1e-4)
    for row, item in enumerate(samples):  # each option as a one-sample training batch with that answer
        for k, option in enumerate(options[row]):
            alone = MultimodalCollator(formatter)([{**item, "answer": option}])
            expected = model.answer_logprobs(alone["input_ids"], alone["attention_mask"], alone["position_ids"],
                                             alone["labels"], alone["signals"])
            assert one[row][k] == pytest.approx(expected.item(), abs=1e-4)


def test_left_padded_batched_greedy_answers_equal_one_by_one_and_the_kv_cache_changes_nothing(tiny_llm):
    model, formatter = make(tiny_llm)
    samples = items(3)
    batch = MultimodalCollator(formatter, generation_inputs=True)(samples)
    assert len(set(batch["prompt_attention_mask"].sum(1).tolist())) > 1  # prompts of different lengths
    args = (batch["prompt_input_ids"], batch["prompt_attention_mask"], batch["signals"])
    cached = generate_answers(model, formatter, *args, greedy())
    uncached = generate_answers(model, formatter, *args, greedy(use_cache=False))
    assert cached == uncached and all(len(a) == 1 for a in cached)
    for row, item in enumerate(samples):
        alone = MultimodalCollator(formatter, generation_inputs=True)([item])
        assert generate_answers(model, formatter, alone["prompt_input_ids"], alone["prompt_attention_mask"],
                                alone["signals"], greedy()) == [cached[row]]


def test_sampling_draws_num_samples_per_question_reproducibly(tiny_llm):
    model, formatter = make(tiny_llm)
    batch = MultimodalCollator(formatter, generation_inputs=True)(items(2))
    args = (batch["prompt_input_ids"], batch["prompt_attention_mask"], batch["signals"])
    sampled = GenerationSettings(8, do_sample=True, temperature=1.5, top_p=1.0, num_samples=4, use_cache=True)
    torch.manual_seed(3)
    first = generate_answers(model, formatter, *args, sampled)
    torch.manual_seed(3)
    again = generate_answers(model, formatter, *args, sampled)
    assert [len(s) for s in first] == [4, 4] and first == again
    assert len({a for s in first for a in s}) > 1  # a random 2-layer model at temperature 1.5 varies
    # A nucleus too small to hold more than the top token makes sampling greedy.
    nucleus = GenerationSettings(8, do_sample=True, temperature=1.0, top_p=1e-9, num_samples=2, use_cache=True)
    top = generate_answers(model, formatter, *args, nucleus)
    assert top == [s * 2 for s in generate_answers(model, formatter, *args, greedy(8))]


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(num_samples=3), "greedy decoding gives one answer"),
    (dict(do_sample=True, temperature=0.0), "temperature > 0"),
    (dict(do_sample=True, top_p=1.5), "top_p"),
])
def test_generation_settings_refuse_inconsistent_values(kwargs, message):
    settings = dict(max_new_tokens=4, do_sample=False, temperature=1.0, top_p=1.0, num_samples=1, use_cache=True)
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**{**settings, **kwargs})
