"""Which attention kernel the LLM runs, per device: training, validation, predict.py and eval.py choose alike.

Measured on the 2-core CPU machine (nano LLM frozen, ECG demo batches of 8, ~53 tokens, one thread): PyTorch's SDPA
picks its flash kernel on CPU, whose backward at these shapes ((8, 9, 56, 64), bf16) takes 15-17 ms against ~3 ms
for the eager (math) kernel; the whole eager training step is 1.37x the SDPA step (alternating pairs 1.37, 1.34,
1.44). Sequences this short make the eager kernel's (L, L) score matrix cheap. On CUDA, SDPA/flash kernels win and
keep no sequence x sequence matrix: kept there. Both compute the same attention (``tests/mmmed/train/test_speed.py``
compares loss and gradients).
"""

from __future__ import annotations

ATTENTION = ("auto", "eager", "sdpa", "flash_attention_2")


def attention_kernel(setting: str, device: str) -> str:
    """The LLM's attention implementation for ``device`` (``cpu`` | ``cuda``): ``auto`` is eager on CPU, SDPA
    elsewhere; any other setting is taken as it is."""
    if setting not in ATTENTION:
        raise ValueError(f"speed.attention must be one of {ATTENTION}, got {setting!r}")
    if setting == "auto":
        return "eager" if device == "cpu" else "sdpa"
    return setting
