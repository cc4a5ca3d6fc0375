"""Size a run before renting GPUs: parameters by part and the peak GPU memory per device.

    python -m mmmed.cluster.plan model=large encoder=xray                     # the scale's recommended settings
    python -m mmmed.cluster.plan model=medium stage=instruct plan.batch_size=16 plan.devices=4 plan.strategy=fsdp

Takes the Hydra overrides of ``conf/train.yaml`` (knobs: its ``plan:`` block and ``model.gradient_checkpointing``).
The whole model is built on the meta device, so nothing is downloaded or allocated: the LLM from the
architecture numbers in ``mmmed/cluster/presets/<hub id>.json`` (``model.preset``), encoder and adapter by Hydra
instantiate, LoRA through PEFT as ``train.py`` applies it. Memory is an estimate (see ``activation_bytes``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from mmmed.model.assembly import assemble_model, build_plugins
from mmmed.config_dir import config_dir
from mmmed.model.lora import apply_lora, is_lora_parameter
from mmmed.model.multimodal_lm import MultimodalLM

PRESETS = Path(__file__).parent / "presets"
CONF = config_dir()  # the installed conf/: the checkout's under the editable install, else site-packages'
GIB = 2**30
PARTS = ("llm", "lora", "encoder", "adapter")
# Bytes per trainable parameter: (weights, gradients, AdamW states incl. any fp32 master copy). Trainable weights
# are assumed fp32 under 32-true / bf16-mixed (for stage=full: model.llm.dtype=float32; a bf16 LLM trains in bf16).
TRAINABLE_BYTES = {
    "32-true": (4, 4, 8),
    "bf16-mixed": (4 + 2, 4, 8),  # fp32 weights + the bf16 copies autocast keeps for backward
    "bf16-true": (2, 2, 4),
}
# DeepSpeed under bf16-mixed holds 16-bit weights and grads, fp32 master + moments (ZeRO, Rajbhandari et al. 2020).
DEEPSPEED_BF16_BYTES = (2, 2, 12)
STRATEGIES = ("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3")
NF4_BYTES = 4.127 / 8  # QLoRA: 4-bit NF4 + double-quantised block scales (Dettmers et al. 2023)
# Bytes per kept logit: forward holds the bf16 logits, their fp32 copy and the fp32 log-softmax (10); backward
# holds that log-softmax, its gradient and the logits' fp32 and bf16 gradients (14, the peak).
LOGIT_BYTES = 14


def load_preset(name: str) -> PretrainedConfig:
    """A transformers config from ``mmmed/cluster/presets/<name>`` (the hub's config.json numbers, no weights)."""
    path = PRESETS / name
    if not path.is_file():
        raise FileNotFoundError(f"No preset {path}; available: {sorted(p.name for p in PRESETS.glob('*.json'))}")
    numbers = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    return AutoConfig.for_model(numbers.pop("model_type"), **numbers)


def build_on_meta(cfg: DictConfig) -> MultimodalLM:
    """The run's whole MultimodalLM on the meta device: right shapes, dtypes and requires_grad, no storage."""
    preset = cfg.model.get("preset")
    if not preset:
        raise ValueError(
            f"model {cfg.model.llm.get('hub_id', cfg.model.llm._target_)} has no `preset` (an architecture JSON in "
            f"mmmed/cluster/presets): plan a real scale, model=nano|small|medium|large (tiny is a random test model)."
        )
    lora = cfg.stage.get("lora")
    plugins = build_plugins(cfg.modalities)
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(load_preset(preset), dtype=getattr(torch, cfg.model.llm.dtype))
        if cfg.model.get("gradient_checkpointing"):  # as build_run does
            llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if lora:  # 4-bit needs CUDA + bitsandbytes; QLoRA's storage is counted in memory_bytes instead
            llm = apply_lora(llm, lora.r, lora.alpha, lora.dropout, list(lora.target_modules), quantize_4bit=False)
        encoders = {name: plugin.build_encoder(**({"pretrained": False} if "pretrained" in plugin.net else {}))
                    for name, plugin in plugins.items()}  # never download
        # The one assembly training uses, without a tokenizer: placeholders get ids never looked up here.
        return assemble_model(llm, None, plugins, instantiate(cfg.adapter), system_prompt=None, max_length=cfg.plan.seq_len,
                              train_llm=cfg.stage.train_llm, train_encoder=cfg.stage.train_encoder,
                              encoders=encoders).model


def part_of(name: str) -> str:
    """Which part a MultimodalLM parameter belongs to: llm, lora, encoder or adapter."""
    if is_lora_parameter(name):
        return "lora"
    return {"llm": "llm", "encoders": "encoder", "adapters": "adapter"}[name.split(".")[0]]


def parameter_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """``{part: {total, trainable, frozen}}`` for each part and ``all`` (tied weights counted once)."""
    counts = {part: {"total": 0, "trainable": 0, "frozen": 0} for part in (*PARTS, "all")}
    for name, param in model.named_parameters():
        for part in (part_of(name), "all"):
            counts[part]["total"] += param.numel()
            counts[part]["trainable" if param.requires_grad else "frozen"] += param.numel()
    return counts


def activation_bytes(
    seq_len: int, batch: int, hidden: int, kv_hidden: int, intermediate: int, heads: int, layers: int, *,
    trains_llm: bool, lora_in_features: int = 0, flash: bool = True, checkpointing: bool = False,
    elem: int = 2, lora_bytes: int = 3,
) -> int:
    """Bytes the decoder layers keep for backward (Korthikanti et al. 2022, "Reducing Activation
    Recomputation in Large Transformer Models", arXiv:2205.05198, section 4.1).

    Their bookkeeping gives s*b*h*(34 + 5*a*s/h) bytes per GPT layer in 16-bit. The same bookkeeping for a
    Llama/Qwen2 layer, in bytes per token (h hidden, h_kv = kv heads x head dim, I = MLP width, a heads,
    s tokens per sample, 16-bit activations; ``elem`` = 4 doubles the 16-bit terms):
      - both RMSNorms keep their input upcast to fp32: 8h; SwiGLU keeps gate, up and silu(gate): 6I;
      - attention with flash/SDPA kernels keeps q, k, v and its output, 4h + 4h_kv (plus a per-row
        log-sum-exp); eager attention keeps q and k, v repeated to every head, 6h, and the probabilities
        in fp32 and 16-bit, 6*a*s (Korthikanti's s^2 term);
      - that is all a frozen layer keeps, 12h + 4h_kv + 6I with flash -- autograd saves a matmul's input only
        when its weight needs a gradient; trained weights add the norms' outputs and the projections'
        inputs, 8h + 2I (eager: + 2h, o_proj's input);
      - LoRA (PEFT) adds, per input feature of each targeted module (``lora_in_features``: their sum over
        one layer), the dropout mask (bool on CUDA: 1 byte; fp32 on CPU: 4) and lora_A's input (PEFT casts
        it to the adapters' fp32: 4; the bf16 copy under bf16 autocast: 2): ``lora_bytes`` = 3 on CUDA with
        bf16, 8 on CPU in fp32. The r-wide lora_A outputs (<1%) are left out.
    With gradient checkpointing (per decoder layer) only each layer's input (elem*h per token) stays, plus
    one layer's full set while it is recomputed in backward.
    Checked against torch.autograd.graph.saved_tensors_hooks in tests/mmmed/cluster/test_plan.py.
    """
    tokens = seq_len * batch
    attention = elem * (2 * hidden + 2 * kv_hidden) if flash else elem * 3 * hidden + 6 * heads * seq_len
    per_layer = tokens * (8 * hidden + attention + elem * 3 * intermediate + lora_bytes * lora_in_features)
    if trains_llm:
        per_layer += tokens * elem * (4 * hidden + intermediate + (0 if flash else hidden))  # eager: o_proj input
    return elem * tokens * hidden * layers + per_layer if checkpointing else per_layer * layers


def base_llm(model: MultimodalLM) -> nn.Module:
    """The transformers model under a PEFT wrapper, if any."""
    return model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm


def checkpointing_active(model: MultimodalLM, cfg: DictConfig) -> bool:
    """Whether ``model.gradient_checkpointing`` takes effect: transformers checkpoints a decoder layer only
    in train mode, and MultimodalLM keeps a frozen LLM without LoRA (stage=align) in eval mode."""
    return bool(cfg.model.get("gradient_checkpointing")) and base_llm(model).model.layers[0].training


def memory_bytes(model: MultimodalLM, cfg: DictConfig) -> dict[str, float]:
    """Estimated peak GPU memory per device by item (bytes), for the settings in ``cfg.plan``."""
    plan, lora = cfg.plan, cfg.stage.get("lora")
    if plan.strategy not in STRATEGIES or plan.precision not in TRAINABLE_BYTES:
        raise ValueError(f"plan.strategy must be one of {STRATEGIES} and plan.precision one of {sorted(TRAINABLE_BYTES)}")
    llm = base_llm(model)
    c = llm.config
    deepspeed_bf16 = plan.strategy.startswith("deepspeed") and plan.precision == "bf16-mixed"
    w_b, g_b, o_b = DEEPSPEED_BF16_BYTES if deepspeed_bf16 else TRAINABLE_BYTES[plan.precision]
    quantized = set()  # QLoRA: every Linear of the LLM but lm_head is stored in NF4
    if lora and lora.quantize_4bit:
        quantized = {id(m.weight) for name, m in llm.named_modules() if isinstance(m, nn.Linear) and "lm_head" not in name}
    frozen = sum(p.numel() * (NF4_BYTES if id(p) in quantized else 2 if plan.precision == "bf16-true" else p.element_size())
                 for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n = plan.devices
    shard_all = n if plan.strategy in ("fsdp", "deepspeed_zero3") else 1  # params, grads and states
    shard_states = n if plan.strategy != "ddp" else 1  # ZeRO-2 also shards grads and states
    gather = min(w_b, 4)  # Lightning's FSDP gathers fp32 under bf16-mixed (autocast casts later); ZeRO-3 16-bit
    out = {
        "frozen weights": frozen / shard_all,
        "trainable weights": trainable * w_b / shard_all,
        "gradients": trainable * g_b / shard_states * (2 if plan.strategy == "ddp" and n > 1 else 1),  # DDP buckets
        "optimizer states": trainable * o_b / shard_states,
        # FSDP/ZeRO-3 (wrapped per decoder layer) gather the unwrapped rest plus two layers (prefetch).
        "gathered params": 0.0 if shard_all == 1 else gather * (sum(p.numel() for p in model.parameters())
                                                                - (c.num_hidden_layers - 2) * sum(p.numel() for p in llm.model.layers[0].parameters())),
    }
    lora_in = sum(m.in_features for name, m in llm.model.layers[0].named_modules()
                  if lora and name.split(".")[-1] in lora.target_modules)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    elem = 4 if plan.precision == "32-true" and cfg.model.llm.dtype == "float32" else 2
    # Padded batches carry an attention mask, and with one transformers repeats k/v to every head before
    # SDPA on CUDA (transformers.integrations.sdpa_attention.use_gqa_in_sdpa): k/v are a-heads wide then.
    out["activations"] = activation_bytes(
        plan.seq_len, plan.batch_size, c.hidden_size, c.num_attention_heads * head_dim, c.intermediate_size,
        c.num_attention_heads, c.num_hidden_layers, trains_llm=cfg.stage.train_llm, lora_in_features=lora_in,
        flash=plan.flash_attention, checkpointing=checkpointing_active(model, cfg), elem=elem,
        lora_bytes=1 + (2 if plan.precision.startswith("bf16") else 4))
    # MultimodalLM runs the LM head only where some sample has an answer token.
    out["logits"] = plan.batch_size * math.ceil(plan.answer_fraction * plan.seq_len) * c.vocab_size * LOGIT_BYTES
    out["cuda context + workspace"] = plan.overhead_gib * GIB
    out["peak"] = sum(out.values())
    return out


def plan(cfg: DictConfig) -> dict:
    """Build ``cfg``'s model on meta; return parameter counts by part and memory per device in GiB."""
    model = build_on_meta(cfg)
    return {
        "llm": cfg.model.llm.get("hub_id"),
        "checkpointing": checkpointing_active(model, cfg),
        "params": parameter_counts(model),
        "memory_gib": {k: v / GIB for k, v in memory_bytes(model, cfg).items()},
    }


def format_plan(result: dict, cfg: DictConfig) -> str:
    """A compact text table of ``plan``'s result."""
    p = cfg.plan
    checkpointing = "on" if result["checkpointing"] else "off"
    if cfg.model.get("gradient_checkpointing") and checkpointing == "off":
        checkpointing = "off (the decoder layers are not in training mode, where transformers checkpoints)"
    lines = [f"{result['llm']} | modalities={','.join(cfg.modalities)} adapter={cfg.adapter._target_.split('.')[-1]} stage={cfg.stage.name}",
             f"{'parameters':<26}{'total':>15}{'trainable':>15}{'frozen':>15}"]
    lines += [f"  {part:<24}" + "".join(f"{c[k]:>15,}" for k in ("total", "trainable", "frozen")) for part, c in result["params"].items()]
    lines.append(f"memory per device (GiB): batch {p.batch_size} x seq {p.seq_len}, {p.devices} device(s) {p.strategy}, "
                 f"{p.precision}, checkpointing {checkpointing}, "
                 f"effective batch {p.batch_size * p.accumulate_grad_batches * p.devices}")
    lines += [f"  {k:<24}{v:>15.2f}" for k, v in result["memory_gib"].items()]
    return "\n".join(lines)


def compose_config(overrides: list[str]) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides``, as train.py would (without Hydra's run directory)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides)


def main(argv: list[str] | None = None) -> dict:
    """CLI: print the table for the Hydra overrides in ``argv``; return the result."""
    cfg = compose_config(sys.argv[1:] if argv is None else argv)
    result = plan(cfg)
    print(format_plan(result, cfg))
    return result


if __name__ == "__main__":
    main()
