"""train.py end to end: outputs, checkpoints that hold only trained weights, resume, W&B offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import wfdb
from safetensors.torch import load_file

from mmmed_datasets.demo.ecg_demo import ensure_demo_ptbxl
from train import train


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small demo set (30 patients: every fold holds every rhythm)."""
    return ensure_demo_ptbxl(tmp_path_factory.mktemp("demo") / "ptbxl", num_patients=30, records_per_patient=1, seed=0)


def quick(demo_root: Path, *extra: str) -> list[str]:
    return [
        f"data.root={demo_root}",
        "data.prepare.num_patients=30",
        "data.prepare.heldout_patients=0",
        "data.prepare.records_per_patient=1",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.log_every_n_steps=1",
        *extra,
    ]


def test_tiny_run_writes_metrics_small_checkpoints_and_resumes(compose, demo_root, tmp_path):
    cfg = compose(quick(demo_root, "model=tiny", "logger=csv", "trainer.max_steps=4"), tmp_path / "run1")
    metrics = train(cfg)
    run = tmp_path / "run1"
    assert json.loads((run / "metrics.json").read_text()) == metrics
    assert Path(metrics["weights_from"]).parent == run / "checkpoints"  # tested weights = best checkpoint
    assert {"val/accuracy", "test/accuracy", "params/trainable", "params/frozen"} <= set(metrics)
    answers = [json.loads(line) for line in (run / "generations_test.jsonl").read_text().splitlines()]
    assert len(answers) == metrics["test/num_scored"] and {"id", "reference", "answer", "predicted_label"} <= set(answers[0])

    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # no pickle of arbitrary objects
    assert ckpt["global_step"] == 4
    keys = set(ckpt["state_dict"])
    assert keys and all(k.startswith(("model.encoders.", "model.adapters.")) for k in keys)
    assert ckpt["mmmed_config"]["model"]["llm"]["_target_"] == "mmmed.model.llm.random_llm"
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"]

    weights = load_file(run / "checkpoints" / "trainable.safetensors")
    assert {f"model.{k}" for k in weights} == keys
    best = torch.load(metrics["weights_from"], map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(weights[k[len("model."):]], v) for k, v in best.items())

    cfg = compose(quick(demo_root, "model=tiny", "logger=csv", "trainer.max_steps=6", f"ckpt_path={last}"), tmp_path / "run2")
    train(cfg)
    resumed = torch.load(tmp_path / "run2" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 6


def test_resume_refuses_a_checkpoint_from_another_llm(compose, demo_root, tmp_path):
    cfg = compose(quick(demo_root, "model=tiny", "logger=csv", "trainer.max_steps=2"), tmp_path / "a")
    train(cfg)
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    cfg = compose(quick(demo_root, "model=tiny", "logger=csv", "trainer.max_steps=3", "seed=7", f"ckpt_path={last}"), tmp_path / "b")
    with pytest.raises(ValueError, match="Checkpoint was trained with LLM 'random-llama-h64-l2-seed1234'"):
        train(cfg)


def test_default_logger_is_wandb_offline_with_generations_table(compose, demo_root, tmp_path):
    cfg = compose(quick(demo_root, "model=tiny", "trainer.max_steps=2"), tmp_path / "run")
    assert cfg.logger.wandb.offline is True
    train(cfg)
    import wandb

    wandb.finish()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    tables = list(runs[0].glob("files/media/table/val/generations*.table.json"))
    assert tables, "no generations table was logged"
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["step", "id", "question", "reference", "answer"] and table["data"]


def test_training_split_statistics_are_saved_and_eval_windows_vote(compose, demo_root, tmp_path):
    """ecg_signal=strodthoff: 2.5 s crops, per-lead statistics of folds 1-8, 7 voted windows per record."""
    cfg = compose(
        quick(demo_root, "model=tiny", "logger=csv", "trainer.max_steps=2", "ecg_signal=strodthoff",
              f"ecg_signal.cache.cache_dir={tmp_path / 'cache'}"),
        tmp_path / "run",
    )
    metrics = train(cfg)
    table = pd.read_csv(demo_root / "ptbxl_database.csv", index_col="ecg_id")
    train_records = table[table["strat_fold"] <= 8]["filename_lr"]
    stored = np.concatenate([wfdb.rdrecord(str(demo_root / rel)).p_signal for rel in train_records])  # (N*T, 12)
    saved = json.loads((tmp_path / "run" / "data_normalization.json").read_text())
    assert list(saved) == ["ecg"]  # statistics are keyed by modality
    np.testing.assert_allclose(saved["ecg"]["mean"], stored.mean(0), rtol=0, atol=1e-6)  # 100 Hz: no resampling
    np.testing.assert_allclose(saved["ecg"]["std"], stored.std(0), rtol=1e-6, atol=0)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["MultimodalDataModule"]["normalization"] == saved
    # limit_test_batches=1: one batch of 16 windows = records 1 and 2 (7 windows each) and 2 of record 3.
    answers = [json.loads(line) for line in (tmp_path / "run" / "generations_test.jsonl").read_text().splitlines()]
    assert [a["id"].split("#crop")[1] for a in answers] == [str(k) for k in range(7)] * 2 + ["0", "1"]
    assert metrics["test/num_scored"] == 3
    assert metrics["data/train/samples"] == 24 and metrics["data/test/samples"] == 3


@pytest.mark.slow
def test_real_nano_llm_learns_the_demo_task(compose, demo_root, tmp_path):
    """A few steps with the real embedded SmolLM2-135M: the answer loss must fall clearly."""
    cfg = compose(quick(demo_root, "logger=csv", "trainer.max_steps=24", "trainer.val_check_interval=24", "scheduler.warmup_steps=5", "test_after_fit=false"), tmp_path / "run")
    train(cfg)
    import csv

    rows = list(csv.DictReader(open(next((tmp_path / "run" / "csv").rglob("metrics.csv")))))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 24
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.6 * first, (first, last)


@pytest.mark.slow
@pytest.mark.parametrize("resume_step", [4, 3])  # mid-epoch, and an epoch's last step (3 batches per epoch)
def test_resumed_run_matches_an_uninterrupted_one_exactly(compose, demo_root, tmp_path, resume_step):
    """Preemption: stop after k steps, resume from that checkpoint, end bit-identical to a run never stopped.

    Random 2.5 s crops (ecg_signal=strodthoff), LoRA dropout (stage=instruct), warm-up + cosine and
    an epoch boundary all have to line up: data order, augmentation, RNG, optimizer and scheduler.
    """
    def run(name: str, *extra: str) -> dict:
        cfg = compose(
            quick(demo_root, "model=tiny", "logger=csv", "trainer.max_steps=7", "trainer.val_check_interval=100",
                  "test_after_fit=false", "ecg_signal=strodthoff", "stage=instruct", "stage.lora.dropout=0.2",
                  "stage.lora.target_modules=[q_proj,v_proj]", "scheduler.warmup_steps=2",
                  f"ecg_signal.cache.cache_dir={tmp_path / 'cache'}",
                  f"+callbacks.every_step={{_target_:lightning.pytorch.callbacks.ModelCheckpoint,"
                  f"dirpath:{tmp_path / name / 'steps'},every_n_train_steps:1,save_top_k:-1,filename:'s{{step}}',auto_insert_metric_name:false}}",
                  *extra),
            tmp_path / name,
        )
        train(cfg)
        return torch.load(tmp_path / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)

    whole = run("whole")
    stopped = tmp_path / "whole" / "steps" / f"s{resume_step}.ckpt"
    assert torch.load(stopped, map_location="cpu", weights_only=True)["global_step"] == resume_step
    resumed = run("resumed", f"ckpt_path={stopped}")
    assert resumed["global_step"] == whole["global_step"] == 7
    assert any("lora_" in k for k in whole["state_dict"]) and set(resumed["state_dict"]) == set(whole["state_dict"])
    for key, value in whole["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    for a, b in zip(whole["optimizer_states"][0]["state"].values(), resumed["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole["lr_schedulers"] == resumed["lr_schedulers"]


def test_full_stage_writes_tied_llm_weights_once(compose, demo_root, tmp_path):
    cfg = compose(quick(demo_root, "model=tiny", "logger=csv", "trainer.max_steps=2", "stage=full", "test_after_fit=false"),
                  tmp_path / "run")
    train(cfg)
    from safetensors import safe_open

    with safe_open(tmp_path / "run" / "checkpoints" / "trainable.safetensors", "pt") as handle:
        tied = json.loads(handle.metadata()["tied"])
        saved = set(handle.keys())
    assert tied == {"llm.lm_head.weight": "llm.model.embed_tokens.weight"}  # the tiny Llama ties them
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert {f"model.{k}" for k in saved | set(tied)} == set(ckpt["state_dict"])
    assert any(k.startswith("llm.model.layers.") for k in saved)  # the LLM itself trained and was saved


def test_instruct_stage_starts_from_an_align_run(compose, demo_root, tmp_path):
    from mmmed.train.build import build_run

    train(compose(quick(demo_root, "model=tiny", "logger=csv", "trainer.max_steps=2", "test_after_fit=false"), tmp_path / "align"))
    aligned = tmp_path / "align" / "checkpoints" / "last.ckpt"
    saved = torch.load(aligned, map_location="cpu", weights_only=True)["state_dict"]
    lora = ["stage=instruct", "stage.lora.target_modules=[q_proj,v_proj]"]
    run = build_run(compose(quick(demo_root, "model=tiny", *lora), tmp_path / "probe"))
    assert run.module.init_from_checkpoint(str(aligned)) == sorted(saved)
    state = run.module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())  # encoder and adapter from the align run
    lora_b = [v for k, v in state.items() if "lora_B" in k]
    assert lora_b and all((v == 0).all() for v in lora_b)  # LoRA starts fresh: B = 0, the LLM unchanged

    metrics = train(compose(quick(demo_root, "model=tiny", "logger=csv", "trainer.max_steps=2", "test_after_fit=false",
                                  *lora, f"init_from={aligned}"), tmp_path / "instruct"))
    assert metrics["params/lora"] > 0
    with pytest.raises(ValueError, match="init_from starts a new stage from trained weights, ckpt_path resumes a run"):
        train(compose(quick(demo_root, "model=tiny", "logger=csv", *lora, f"init_from={aligned}", f"ckpt_path={aligned}"),
                      tmp_path / "x"))
