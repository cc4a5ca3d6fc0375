"""LoRA (and QLoRA) on the LLM through PEFT, for the ``instruct`` stage.

QLoRA loads the frozen base weights in 4-bit NF4 through bitsandbytes, which needs a CUDA GPU; on a
machine without one it is an error that says so, never a silent fall-back to full precision.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

LORA_MARKER = "lora_"  # PEFT names every LoRA parameter ...lora_A... / ...lora_B...


def check_quantization_possible() -> None:
    """Raise a clear error unless 4-bit QLoRA can run here (CUDA + bitsandbytes)."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "stage.lora.quantize_4bit=true (QLoRA) needs a CUDA GPU: bitsandbytes' 4-bit kernels do not run "
            "on this machine. Use plain LoRA (quantize_4bit=false) here."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise RuntimeError("QLoRA needs bitsandbytes: pip install bitsandbytes") from err


def apply_lora(
    model: PreTrainedModel,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: list[str],
    quantize_4bit: bool,
) -> PreTrainedModel:
    """Wrap ``model`` with LoRA adapters on ``target_modules``; only the LoRA weights train.

    Returns the PEFT model. Its base weights stay frozen and bit-identical; ``merge_lora`` folds the
    adapters back into plain weights for export.
    """
    from peft import LoraConfig, get_peft_model

    if quantize_4bit:
        check_quantization_possible()
    names = {name.split(".")[-1] for name, _ in model.named_modules()}
    unknown = sorted(set(target_modules) - names)
    if unknown:
        raise ValueError(f"stage.lora.target_modules {unknown} name no module of {type(model).__name__}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def is_lora_parameter(name: str) -> bool:
    """Whether a parameter name belongs to a LoRA adapter."""
    return LORA_MARKER in name


def merge_lora(model) -> PreTrainedModel:
    """The plain transformers model with the LoRA updates folded into its weights (for export)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
