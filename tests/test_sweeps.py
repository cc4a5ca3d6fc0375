"""Hyperparameter sweeps: conf/sweep/*.yaml against W&B's own sweep schema and agent, and the offline
Optuna sweeper over the same search space. No W&B server: runs are offline."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sweeps
import yaml
from omegaconf import OmegaConf
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args
from wandb.wandb_agent import Agent

from mmmed.cluster.search_space import optuna_params
from mmmed_datasets.demo.ecg_demo import ensure_demo_ptbxl

REPO = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted((REPO / "conf" / "sweep").glob("*.yaml"))
COMMAND = ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]


@pytest.fixture(scope="module")
def demo_root() -> Path:
    """The 30-patient demo where conf/data/ptbxl_demo.yaml keeps it in the cache (made once, then reused)."""
    cache = Path(os.environ.get("MMMED_CACHE", Path.home() / ".cache" / "mmmed"))
    return ensure_demo_ptbxl(cache / "demo" / "ptbxl-demo-p30x1-seed0", num_patients=30, records_per_patient=1, seed=0)


def tiny(demo_root: Path) -> dict[str, object]:
    """Settings that make a sampled run a quick tiny one (passed like a sweep's fixed parameters)."""
    return {
        "model": "tiny", "data.root": str(demo_root), "data.prepare.num_patients": 30, "data.prepare.heldout_patients": 0,
        "data.prepare.records_per_patient": 1, "trainer.max_steps": 2, "trainer.val_check_interval": 2,
        "trainer.limit_val_batches": 1, "test_after_fit": False,
    }


def sampled(path: Path) -> dict[str, object]:
    """The first run W&B's own sweep controller logic (the ``sweeps`` package) proposes: {parameter: value},
    through JSON as the W&B server sends it to the agent (numpy floats become floats)."""
    run = sweeps.next_run(yaml.safe_load(path.read_text()), runs=[])
    return json.loads(json.dumps({name: spec["value"] for name, spec in run.config.items()}))


def test_there_are_sweeps_for_learning_rates_adapters_and_encoder_tokens():
    assert [p.stem for p in SWEEP_FILES] == ["adapter", "encoder_tokens", "learning_rates"]
    searched = {name for p in SWEEP_FILES for name in yaml.safe_load(p.read_text())["parameters"]}
    assert {"param_groups.adapter.lr", "param_groups.encoder.lr", "adapter", "modalities.ecg.net.num_tokens"} <= searched


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_sweep_file_validates_against_wandbs_schema(path):
    config = yaml.safe_load(path.read_text())
    assert sweeps.schema_violations_from_proposed_config(config) == []
    sweeps.SweepConfig(config)  # raises on any violation
    assert config["program"] == "train.py" and config["command"] == COMMAND
    assert config["metric"] == {"name": "val/accuracy", "goal": "maximize"}  # what train.py's main returns
    assert config["parameters"]["logger.wandb.offline"] == {"value": False}  # runs report to the sweep
    assert config["parameters"]["hydra.run.dir"] == {"value": "outputs/sweeps/${oc.env:WANDB_RUN_ID}"}


def test_schema_check_rejects_a_broken_sweep():
    """The validation above is a real check: W&B's schema refuses a malformed search."""
    broken = {"method": "bayes", "parameters": {"x": {"distribution": "log_uniform_values", "min": 1.0, "max": 0.1}},
              "metric": {"name": "val/accuracy", "goal": "maximize"}}
    assert sweeps.schema_violations_from_proposed_config(broken)
    assert sweeps.schema_violations_from_proposed_config({"method": "guess", "parameters": {"x": {"values": [1]}}})


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_agent_arguments_are_hydra_overrides_that_train_py_composes(compose, path, tmp_path):
    values = sampled(path)
    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})["args_no_hyphens"]
    assert args == [f"{k}={v}" for k, v in values.items()]  # key=value: Hydra's override syntax
    cfg = compose(args, tmp_path)
    for key, value in values.items():
        if key == "hydra.run.dir":  # Hydra's own setting: checked in the agent test below
            continue
        if key == "adapter":  # a config group: its file's class is selected
            assert cfg.adapter._target_ == OmegaConf.load(REPO / "conf" / "adapter" / f"{value}.yaml")._target_
        else:
            assert OmegaConf.select(cfg, key) == value


@pytest.mark.slow
@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_wandb_agent_runs_a_sampled_configuration_offline(path, demo_root, tmp_path, monkeypatch):
    """W&B's own agent code expands the sweep's command and starts the run: a tiny train.py, offline."""
    config = yaml.safe_load(path.read_text())
    values = sampled(path)
    args = {**values, **tiny(demo_root)}
    monkeypatch.chdir(tmp_path)  # the agent runs where it was started: outputs/ goes here
    monkeypatch.setenv("PWD", str(tmp_path))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # `python`: this venv's
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_RUN_ID", "")  # the agent sets it; restored after the test
    agent = Agent(api=None, queue=None, sweep_id="offline")
    agent._sweep_command = config["command"]
    assert config["program"] == "train.py"  # started from the repo; here from tmp_path, so by its full path
    agent._command_run({"run_id": "sweeprun1", "program": str(REPO / "train.py"),
                        "args": {k: {"value": v} for k, v in args.items()}})
    process = agent._run_processes["sweeprun1"]
    assert process.wait() == 0

    run_dir = tmp_path / "outputs" / "sweeps" / "sweeprun1"  # hydra.run.dir from the agent's run id

    composed = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    for key, value in values.items():
        if key not in ("adapter", "hydra.run.dir"):
            assert OmegaConf.select(composed, key) == value
    overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    task = {k: v for k, v in values.items() if not k.startswith("hydra.")}  # hydra.* are Hydra's own overrides
    assert [o for o in overrides if o.split("=")[0] in task] == [f"{k}={v}" for k, v in task.items()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(metrics["val/loss"]) and 0.0 <= metrics["val/accuracy"] <= 1.0
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert [r.name.split("-")[-1] for r in runs] == ["sweeprun1"]  # the agent's run id: results go to the sweep


def test_optuna_params_are_the_wandb_search_space():
    assert optuna_params("learning_rates") == {
        "param_groups.adapter.lr": "tag(log, interval(1e-05, 0.01))",
        "param_groups.encoder.lr": "tag(log, interval(1e-05, 0.01))",
    }
    assert optuna_params("adapter") == {
        "adapter": "choice(linear, mlp, perceiver)", "param_groups.adapter.lr": "choice(0.0003, 0.001, 0.003)"}
    assert optuna_params("encoder_tokens") == {"modalities.ecg.net.num_tokens": "choice(4, 8, 16, 32)",
                                               "adapter": "choice(linear, mlp)"}
    with pytest.raises(FileNotFoundError, match="No sweep .*nope.yaml; available: \\['adapter'"):
        optuna_params("nope")


@pytest.mark.slow
def test_optuna_sweeper_searches_the_same_space_offline(demo_root, tmp_path):
    sweep_dir = tmp_path / "optuna"
    overrides = [f"{k}={v}" for k, v in tiny(demo_root).items()]
    proc = subprocess.run(
        [sys.executable, "train.py", "-m", "hydra/sweeper=optuna_sweep", "+search=learning_rates",
         "hydra.sweeper.n_trials=2", "logger=csv", *overrides, f"hydra.sweep.dir={sweep_dir}"],
        cwd=REPO, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True, timeout=600,
        start_new_session=True,  # no signal meant for the sweep reaches pytest
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    trials = [OmegaConf.load(sweep_dir / str(i) / ".hydra" / "config.yaml") for i in range(2)]
    for trial in trials:
        for part in ("adapter", "encoder"):
            assert 1e-5 <= trial.param_groups[part].lr <= 1e-2
    assert trials[0].param_groups.adapter.lr != trials[1].param_groups.adapter.lr  # sampled, not fixed
    result = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    accuracies = [json.loads((sweep_dir / str(i) / "metrics.json").read_text())["val/accuracy"] for i in range(2)]
    assert result.best_value == max(accuracies)
    assert set(result.best_params) == {"param_groups.adapter.lr", "param_groups.encoder.lr"}
