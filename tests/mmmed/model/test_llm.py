"""Where the LLM comes from: local HF cache first, then the embedded GGUF (converted once), else a clear error."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import pytest
import torch
from transformers import AutoModelForCausalLM

from mmmed.model.llm import GGUFFallback, load_causal_lm, resolve_checkpoint
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


# Resolves the nano LLM into an empty cache; the two racers first wait for each other (marker files),
# so both find the cache empty. Prints the folder and a sha256 of each file as it found them.
RACER = """
import hashlib, json, logging, os, sys, time
from pathlib import Path
os.umask(0o002)
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from mmmed.model.llm import resolve_checkpoint

source, ready, me = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
(ready / me).touch()
deadline = time.monotonic() + 240  # hang guard only
while len(list(ready.iterdir())) < 2:
    if time.monotonic() > deadline:
        raise TimeoutError("the other racer never started")
    time.sleep(0.01)
folder = Path(resolve_checkpoint(**source))
files = {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
         for f in sorted(folder.rglob("*")) if f.is_file()}
print(json.dumps({"folder": str(folder), "files": files}))
"""


@pytest.mark.slow
def test_two_processes_converting_the_gguf_at_once_share_one_readable_conversion(tmp_path):
    # Two real conversions would each take ~15 s and ~1.5 GB; the lock makes it one.
    source = {**NANO_SOURCE, "cache_dir": str(tmp_path / "llm")}
    ready = tmp_path / "ready"
    ready.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(RACER), json.dumps(source), str(ready), me],
                              cwd=Path(__file__).resolve().parents[3], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for me in ("a", "b")]
    outputs = [proc.communicate(timeout=600) for proc in procs]  # hang guard; a conversion takes ~15 s
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    reports = [json.loads(out) for out, _ in outputs]
    assert reports[0] == reports[1]  # the same folder, with the same bytes, seen by both
    folder = Path(reports[0]["folder"])
    assert folder.parent == tmp_path / "llm" and "config.json" in reports[0]["files"]
    assert reports[0]["files"] == {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
                                   for f in sorted(folder.rglob("*")) if f.is_file()}
    assert sum(err.count("Converting SmolLM2-135M-Instruct.Q4_1.gguf") for _, err in outputs) == 1  # converted once
    # umask 002: the group sharing the cache can read the checkpoint (tempfile.mkdtemp alone gives 0700)
    modes = {str(f.relative_to(folder)): stat.S_IMODE(f.stat().st_mode) for f in [folder, *folder.rglob("*")]}
    assert modes == {".": 0o775, **{name: 0o664 for name in reports[0]["files"]}}
    assert sorted(f.name for f in folder.parent.iterdir()) == [folder.name, folder.name + ".lock"]
