"""Where the LLM comes from: local HF cache first, then the embedded GGUF (converted once), else a clear error."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
import torch
from transformers import AutoModelForCausalLM

from mmmed.llm import GGUFFallback, load_causal_lm, resolve_checkpoint
from tests.conftest import NANO_SOURCE

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def fake_hub_cache(root: Path, hub_id: str, model) -> Path:
    """Lay a saved model out exactly as huggingface_hub's cache does (refs/main -> snapshots/<rev>)."""
    repo = root / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    model.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    return snapshot


def test_local_hub_cache_wins_over_the_gguf_fallback(tiny_llm, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = fake_hub_cache(tmp_path / "hub", HUB_ID, tiny_llm.model)
    resolved = resolve_checkpoint(HUB_ID, tmp_path / "converted", NANO_SOURCE["gguf_fallback"])
    assert Path(resolved) == snapshot
    assert not (tmp_path / "converted").exists()  # nothing converted when the hub copy is there


def test_offline_without_cache_or_fallback_names_the_model_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"'Qwen/Qwen2.5-3B-Instruct' is not in the local Hugging Face cache.*hf download"):
        resolve_checkpoint("Qwen/Qwen2.5-3B-Instruct", tmp_path, None)


def test_gguf_fallback_is_converted_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    first = resolve_checkpoint(HUB_ID, NANO_SOURCE["cache_dir"], NANO_SOURCE["gguf_fallback"])
    assert Path(first).parent == Path(NANO_SOURCE["cache_dir"]) and (Path(first) / "config.json").is_file()
    stamp = (Path(first) / "config.json").stat().st_mtime_ns
    assert resolve_checkpoint(HUB_ID, NANO_SOURCE["cache_dir"], NANO_SOURCE["gguf_fallback"]) == first
    assert (Path(first) / "config.json").stat().st_mtime_ns == stamp
    assert not list(Path(first).parent.glob("*.tmp-*"))  # no half-written conversions left behind


@pytest.mark.slow
def test_converted_checkpoint_matches_the_gguf_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    converted = load_causal_lm(resolve_checkpoint(HUB_ID, NANO_SOURCE["cache_dir"], NANO_SOURCE["gguf_fallback"]), "float32")
    gguf = GGUFFallback(**NANO_SOURCE["gguf_fallback"]).path()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 504, 3458, 314, 260, 1789, 282, 2]])
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, direct(ids).logits, rtol=0, atol=0)
    assert sum(p.numel() for p in converted.parameters()) == 134_515_008
