"""The scale presets are the real architectures, and the planner's counts and memory estimate hold up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict
from transformers import AutoModelForCausalLM

from mmmed.model.lora import apply_lora
from mmmed.cluster.plan import PRESETS, activation_bytes, build_on_meta, compose_config, load_preset, memory_bytes, plan

REPO = Path(__file__).resolve().parents[3]
SCALES = ("nano", "small", "medium", "large")
# Totals the model cards publish (SmolLM2: 135M / 1.7B; Qwen2.5: 3.09B / 7.61B "Number of Parameters").
PUBLISHED = {
    "HuggingFaceTB__SmolLM2-135M-Instruct.json": 134.5e6,
    "HuggingFaceTB__SmolLM2-1.7B-Instruct.json": 1.71e9,
    "Qwen__Qwen2.5-3B-Instruct.json": 3.09e9,
    "Qwen__Qwen2.5-7B-Instruct.json": 7.62e9,
}
ARCHITECTURE = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "tie_word_embeddings", "max_position_embeddings")


def numbers(preset: str) -> dict:
    return json.loads((PRESETS / preset).read_text())


def meta_llm(preset: str):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(load_preset(preset))


def test_every_preset_is_named_by_a_scale_and_every_scale_has_one():
    assert sorted(compose_config([f"model={s}"]).model.preset for s in SCALES) == sorted(PUBLISHED)
    assert sorted(p.name for p in PRESETS.glob("*.json")) == sorted(PUBLISHED)


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_preset_builds_on_meta_with_its_published_size(preset):
    llm = meta_llm(preset)
    assert all(p.device.type == "meta" for p in llm.parameters())
    total = sum(p.numel() for p in llm.parameters())
    assert abs(total - PUBLISHED[preset]) / PUBLISHED[preset] < 0.01, total
    n = numbers(preset)  # and the same total from the architecture numbers by hand
    h, i, layers, v = n["hidden_size"], n["intermediate_size"], n["num_hidden_layers"], n["vocab_size"]
    kv = n["num_key_value_heads"] * h // n["num_attention_heads"]
    qkv_bias = (h + 2 * kv) if n["model_type"] == "qwen2" else 0  # Qwen2: bias on q/k/v_proj
    per_layer = 2 * h * h + 2 * h * kv + qkv_bias + 3 * h * i + 2 * h
    assert total == layers * per_layer + h + v * h * (1 if n["tie_word_embeddings"] else 2)


@pytest.mark.slow
def test_nano_preset_is_the_real_converted_checkpoint():
    cfg = compose_config(["model=nano"])
    real = instantiate(cfg.model.llm).model  # the embedded GGUF, converted once under MMMED_CACHE
    preset = load_preset(cfg.model.preset)
    for key in ARCHITECTURE:
        assert getattr(preset, key) == getattr(real.config, key), key
    # GGUF stores eps and theta as float32: 1e-5 comes back as 9.99999975e-06.
    assert preset.rms_norm_eps == pytest.approx(real.config.rms_norm_eps, rel=1e-6)
    assert preset.rope_parameters["rope_theta"] == real.config.rope_parameters["rope_theta"]
    real_total = sum(p.numel() for p in real.parameters())
    assert real_total == sum(p.numel() for p in meta_llm(cfg.model.preset).parameters()) == 134_515_008


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("encoder", ("ecg", "xray"))
def test_every_scale_and_encoder_plans_with_encoder_and_adapter_trainable(scale, encoder):
    cfg = compose_config([f"model={scale}", f"encoder={encoder}", "stage=align"])
    result = plan(cfg)
    # Independently: encoder and adapter built for real on the CPU, the LLM width read from the JSON.
    net = instantiate(cfg.modalities[encoder].net)
    adapter = instantiate(cfg.adapter)(in_dim=net.out_dim, out_dim=numbers(cfg.model.preset)["hidden_size"])
    encoder_count = sum(p.numel() for p in net.parameters())
    adapter_count = sum(p.numel() for p in adapter.parameters())
    params = result["params"]
    assert params["encoder"]["trainable"] == encoder_count and params["adapter"]["trainable"] == adapter_count
    assert params["all"]["trainable"] == encoder_count + adapter_count
    assert params["llm"]["frozen"] == params["all"]["frozen"] == sum(p.numel() for p in meta_llm(cfg.model.preset).parameters())
    assert params["lora"]["total"] == 0
    memory = result["memory_gib"]
    assert all(v >= 0 for v in memory.values())
    assert memory["frozen weights"] > 0 and memory["activations"] > 0 and memory["logits"] > 0
    assert memory["peak"] == pytest.approx(sum(v for k, v in memory.items() if k != "peak"))


@pytest.mark.parametrize("scale", SCALES)
def test_lora_trainable_count_is_r_times_in_plus_out_over_targeted_linears(scale):
    cfg = compose_config([f"model={scale}", "stage=instruct"])
    params = plan(cfg)["params"]
    n, lora = numbers(cfg.model.preset), cfg.stage.lora
    h, i = n["hidden_size"], n["intermediate_size"]
    kv = n["num_key_value_heads"] * h // n["num_attention_heads"]
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # (in, out)
    expected = n["num_hidden_layers"] * sum(lora.r * sum(shapes[m]) for m in lora.target_modules)
    assert params["lora"]["trainable"] == params["lora"]["total"] == expected
    assert params["llm"]["trainable"] == 0
    assert params["all"]["trainable"] == expected + params["encoder"]["trainable"] + params["adapter"]["trainable"]


def peak(model, cfg, **plan_overrides) -> float:
    """Peak GiB for ``cfg`` with some plan knobs (or model.gradient_checkpointing) changed."""
    cfg = cfg.copy()
    with open_dict(cfg):
        for key, value in plan_overrides.items():
            if key == "gradient_checkpointing":
                cfg.model.gradient_checkpointing = value
            else:
                cfg.plan[key] = value
    return memory_bytes(model, cfg)["peak"]


def test_memory_falls_with_sharding_checkpointing_and_pure_bf16():
    cfg = compose_config(["model=medium", "stage=full", "plan.precision=bf16-mixed"])
    model = build_on_meta(cfg)
    for strategy in ("fsdp", "deepspeed_zero3", "deepspeed_zero2"):
        one, two, eight = (peak(model, cfg, strategy=strategy, devices=d) for d in (1, 2, 8))
        assert one > two > eight, strategy
    assert peak(model, cfg, strategy="ddp", devices=8) > peak(model, cfg, strategy="deepspeed_zero2", devices=8) \
        > peak(model, cfg, strategy="deepspeed_zero3", devices=8)
    assert peak(model, cfg, gradient_checkpointing=True) < peak(model, cfg, gradient_checkpointing=False)
    assert peak(model, cfg, precision="bf16-true") < peak(model, cfg, precision="bf16-mixed")
    instruct = compose_config(["model=medium", "stage=instruct"])
    lora_model = build_on_meta(instruct)
    assert peak(lora_model, instruct, gradient_checkpointing=True) < peak(lora_model, instruct, gradient_checkpointing=False)
    qlora = compose_config(["model=medium", "stage=instruct", "stage.lora.quantize_4bit=true"])
    saved = memory_bytes(lora_model, instruct)["frozen weights"] - memory_bytes(lora_model, qlora)["frozen weights"]
    linear_weights = sum(m.weight.numel() for name, m in lora_model.llm.get_base_model().named_modules()
                         if isinstance(m, torch.nn.Linear) and "lm_head" not in name and not m.weight.requires_grad)
    assert saved == pytest.approx(linear_weights * (2 - 4.127 / 8))  # bf16 -> NF4 with double quantisation
    # transformers checkpoints only layers in train mode; MultimodalLM keeps a frozen LLM in eval mode.
    align = compose_config(["model=medium", "stage=align"])
    align_model = build_on_meta(align)
    assert peak(align_model, align, gradient_checkpointing=True) == peak(align_model, align, gradient_checkpointing=False)


def saved_activation_bytes(preset: str, mode: str, attention: str, seq_len: int, batch: int) -> tuple[int, object]:
    """Bytes autograd keeps for one decoder layer of a shrunken preset (bf16, CPU), weights left out."""
    cfg = load_preset(preset)
    cfg.num_hidden_layers, cfg.vocab_size = 1, 256
    cfg._attn_implementation = attention
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    llm.requires_grad_(mode == "full")
    if mode == "lora":
        llm = apply_lora(llm, 16, 32, 0.05, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], False)
    llm.train()
    decoder = llm.get_decoder()
    x = torch.randn(batch, seq_len, cfg.hidden_size, dtype=torch.bfloat16, requires_grad=True)  # (B, S, D)
    positions = torch.arange(seq_len)[None]
    weights = {p.untyped_storage().data_ptr() for p in llm.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            kept[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        decoder.layers[0](x, position_embeddings=decoder.rotary_emb(x, positions), attention_mask=None, position_ids=positions)
    return sum(kept.values()), cfg


@pytest.mark.parametrize("preset", ["HuggingFaceTB__SmolLM2-135M-Instruct.json", "Qwen__Qwen2.5-3B-Instruct.json"])
@pytest.mark.parametrize("mode,attention", [("frozen", "sdpa"), ("full", "sdpa"), ("lora", "sdpa"), ("frozen", "eager"), ("full", "eager")])
def test_activation_formula_matches_what_autograd_saves(preset, mode, attention):
    seq_len, batch = 64, 2
    measured, c = saved_activation_bytes(preset, mode, attention, seq_len, batch)
    head_dim = c.hidden_size // c.num_attention_heads
    lora_in = 6 * c.hidden_size + c.intermediate_size if mode == "lora" else 0  # q k v o gate up read h, down reads I
    estimate = activation_bytes(
        seq_len, batch, c.hidden_size, c.num_key_value_heads * head_dim, c.intermediate_size, c.num_attention_heads, 1,
        trains_llm=mode == "full", lora_in_features=lora_in, flash=attention == "sdpa", lora_bytes=8,  # CPU: fp32 masks
    )
    assert estimate == pytest.approx(measured, rel=0.015)  # left out: RoPE tables, log-sum-exp, lora_A outputs


def test_tiny_has_no_preset_and_is_refused_by_name():
    with pytest.raises(ValueError, match="no `preset`.*model=nano\\|small\\|medium\\|large"):
        build_on_meta(compose_config(["model=tiny"]))


def test_cli_prints_the_table():
    out = subprocess.run([sys.executable, "-m", "mmmed.cluster.plan", "model=large", "encoder=xray"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Qwen/Qwen2.5-7B-Instruct" in out.stdout and "modalities=xray" in out.stdout
    for row in ("llm", "encoder", "adapter", "trainable weights", "activations", "peak"):
        assert row in out.stdout
