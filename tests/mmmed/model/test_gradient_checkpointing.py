"""Gradient checkpointing below a frozen LLM: is it active, are the adapter's gradients unchanged, and
why build.py asks for non-reentrant checkpointing.

Hugging Face checkpoints a decoder layer only while that layer is in training mode
(``GradientCheckpointingLayer``: ``if self.gradient_checkpointing and self.training``), and
``MultimodalLM.train`` keeps a frozen LLM in eval mode. Checkpointing is proved here by what it does,
not by flags: a checkpointed layer runs its MLP a second time during backward (the recompute), and
autograd keeps fewer activation bytes.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

from mmmed.model.adapters import MLPProjector
from mmmed.model.collate import MultimodalCollator
from mmmed.model.multimodal_lm import MultimodalLM
from mmmed.model.prompts import ChatFormatter, Modality
from mmmed_encoders.ecg_cnn import ECGCNNEncoder

N_TOKENS = 4


def build(tiny_llm, use_reentrant: bool | None) -> tuple[MultimodalLM, ChatFormatter]:
    """A frozen tiny Llama, a trained ECG encoder and MLP adapter; checkpointing off when ``use_reentrant`` is None."""
    llm = copy.deepcopy(tiny_llm)  # several models per test, each from the same weights
    if use_reentrant is not None:
        llm.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    formatter = ChatFormatter(llm.tokenizer, [Modality("ecg", N_TOKENS)], "Be brief.", max_length=96)
    torch.manual_seed(0)  # the same encoder and adapter weights in every build
    encoder = ECGCNNEncoder(in_leads=12, widths=[8, 16], kernel_size=5, num_tokens=N_TOKENS, lead_mask_input=False)
    model = MultimodalLM(llm.model, {"ecg": encoder}, MLPProjector, formatter.placeholder_ids, train_llm=False)
    return model.train(), formatter


def batch_of(formatter: ChatFormatter) -> dict:
    gen = torch.Generator().manual_seed(0)
    answers = ["Sinus bradycardia at 44 bpm.", "Normal sinus rhythm at 72 bpm.", "Sinus tachycardia."]
    samples = [
        {"id": f"s{i}", "signals": {"ecg": [torch.randn(12, 200, generator=gen)]}, "question": "<ecg>\nWhat rhythm?",
         "answer": answers[i], "label": None}
        for i in range(3)
    ]
    return MultimodalCollator(formatter)(samples)


def activate_checkpointing(model: MultimodalLM) -> None:
    """Put only the checkpointed decoder layers' own flag in training mode (the proposed fix of MultimodalLM.train).

    Not recursive: their attention and MLP children stay in eval mode, so dropout stays off.
    """
    for module in model.llm.modules():
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
            module.training = True


def step(model: MultimodalLM, batch: dict) -> dict:
    """One forward and backward; returns the loss, gradients, MLP runs per layer and saved activation bytes."""
    mlp_runs = [0] * len(model.llm.model.layers)
    # A pre-hook: the recompute stops early, inside the MLP, once it has rebuilt every saved tensor the
    # backward needs, so a post-forward hook would not see it.
    hooks = [
        layer.mlp.register_forward_pre_hook(lambda *_, i=i: mlp_runs.__setitem__(i, mlp_runs[i] + 1))
        for i, layer in enumerate(model.llm.model.layers)
    ]
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["labels"], batch["signals"])
    loss.backward()
    for hook in hooks:
        hook.remove()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    return {"loss": loss.detach(), "grads": grads, "mlp_runs": mlp_runs, "saved_bytes": saved[0]}


def test_model_train_makes_a_frozen_llm_recompute_its_layers(tiny_llm):
    model, formatter = build(tiny_llm, use_reentrant=False)
    plain, _ = build(tiny_llm, use_reentrant=None)
    batch = batch_of(formatter)
    checkpointed, reference = step(model, batch), step(plain, batch)
    assert reference["mlp_runs"] == [1, 1]
    assert checkpointed["saved_bytes"] < reference["saved_bytes"]
    assert checkpointed["mlp_runs"] == [2, 2]  # forward, then the recompute during backward


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointed_gradients_of_adapter_and_encoder_equal_plain_ones(tiny_llm, use_reentrant):
    plain, formatter = build(tiny_llm, use_reentrant=None)
    model, _ = build(tiny_llm, use_reentrant=use_reentrant)
    activate_checkpointing(model)
    batch = batch_of(formatter)
    reference, checkpointed = step(plain, batch), step(model, batch)
    assert reference["mlp_runs"] == [1, 1] and checkpointed["mlp_runs"] == [2, 2]  # it really recomputed
    assert checkpointed["saved_bytes"] < reference["saved_bytes"]
    torch.testing.assert_close(checkpointed["loss"], reference["loss"], rtol=0, atol=0)  # no dropout crept in
    assert set(checkpointed["grads"]) == set(reference["grads"])
    assert any(n.startswith("adapters.") for n in reference["grads"]) and any(n.startswith("encoders.") for n in reference["grads"])
    assert not any(n.startswith("llm.") for n in reference["grads"])
    for name, grad in reference["grads"].items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed["grads"][name], grad, rtol=1e-6, atol=1e-9, msg=name)
    assert all(p.grad is None for p in model.llm.parameters())  # the frozen LLM still gets none


def test_reentrant_checkpointing_drops_the_adapters_gradient_when_no_input_requires_grad():
    """The trap non-reentrant checkpointing avoids: reentrant backpropagates only through inputs that require grad.

    Frozen-encoder features carry no grad; checkpointing the adapter on them with ``use_reentrant=True``
    leaves its weights without gradients (PyTorch only warns). Inside MultimodalLM the LLM layers' input
    is the spliced embedding, which does require grad through the adapter, so there reentrant happens to
    work (the parametrized test above); non-reentrant is right in both places.
    """
    torch.manual_seed(0)
    adapter = MLPProjector(16, 64)
    with torch.no_grad():  # a frozen encoder's output
        features = torch.randn(3, N_TOKENS, 16)
    assert not features.requires_grad

    adapter(features).square().mean().backward()
    expected = {n: p.grad.clone() for n, p in adapter.named_parameters()}
    assert all(g.abs().sum() > 0 for g in expected.values())

    adapter.zero_grad(set_to_none=True)
    with pytest.warns(UserWarning, match="None of the inputs have requires_grad=True"):
        out = checkpoint(adapter, features, use_reentrant=True)
    assert not out.requires_grad  # nothing to backpropagate: the loss would not even have a grad_fn
    assert all(p.grad is None for p in adapter.parameters())

    adapter.zero_grad(set_to_none=True)
    checkpoint(adapter, features, use_reentrant=False).square().mean().backward()
    for name, param in adapter.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=0, atol=0, msg=name)
