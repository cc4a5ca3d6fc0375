"""mmmed/cluster/slurm.py without a cluster: SLURM job sizes derived from the run's config, the W&B run id kept
in the run directory. (The real SLURM runs: tests/cluster/.)"""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from mmmed.cluster import slurm as cluster

REPO = Path(__file__).resolve().parents[3]
cluster.register_resolvers()


def launcher(compose, *overrides: str):
    return compose(["hydra/launcher=slurm", *overrides]).hydra.launcher


@pytest.fixture
def compose():
    """conf/train.yaml composed with its hydra node (the launcher's settings live there)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def _compose(overrides: list[str]):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return hydra_compose("train", overrides=overrides, return_hydra_config=True)

    return _compose


def test_launcher_sizes_a_multi_node_gpu_job_from_trainer_data_and_model(compose):
    job = launcher(compose, "model=large", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                   "data.num_workers=3")
    assert (job.nodes, job.tasks_per_node, job.gpus_per_node, job.cpus_per_task) == (2, 4, 4, 4)
    # Qwen2.5-7B: 7,615,616,512 parameters (conf/model/large.yaml), bf16; per task twice the weights + 4 GB
    # + 1 GB per worker, four tasks per node.
    weights_gib = 7_615_616_512 * 2 / 2**30
    assert job.mem_gb == math.ceil(4 * (2 * weights_gib + 4 + 3)) == 142
    assert job._target_.endswith("SlurmLauncher") and job.signal_delay_s == 120


def test_launcher_sizes_a_cpu_job_without_gpus(compose):
    job = launcher(compose, "model=tiny", "trainer=ddp_cpu")
    assert (job.nodes, job.tasks_per_node, job.gpus_per_node, job.cpus_per_task, job.mem_gb) == (1, 2, None, 1, 8)


def test_llm_parameters_match_the_model_configs():
    assert cluster.llm_parameters("HuggingFaceTB__SmolLM2-1.7B-Instruct.json") == 1_711_376_384  # conf/model/small.yaml
    assert cluster.llm_parameters(None) == 0  # model=tiny: no preset, a few MB


def test_launcher_refuses_devices_it_cannot_count(compose):
    with pytest.raises(InterpolationResolutionError, match="a number of devices per node, not trainer.devices='auto'"):
        launcher(compose, "trainer=ddp").tasks_per_node
    with pytest.raises(InterpolationResolutionError, match="needs trainer.accelerator=gpu or cpu, not 'auto'"):
        launcher(compose).gpus_per_node


def test_cluster_account_comes_from_the_local_config(compose):
    example = OmegaConf.load(REPO / "conf" / "local" / "default.yaml.example").slurm
    job = launcher(compose, *[f"+local.slurm.{k}={v}" for k, v in example.items() if k != "setup" and v is not None],
                   "+local.slurm.account=proj7", "+local.slurm.qos=high")
    assert (job.partition, job.account, job.qos, job.timeout_min) == ("gpu", "proj7", "high", example.timeout_min)
    assert launcher(compose, "trainer.accelerator=cpu").partition is None  # no local file: the cluster's default
    assert "conf/local/*" in (REPO / ".gitignore").read_text().splitlines()  # the user's file stays out of git


def test_wandb_run_id_is_made_once_per_run_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    first = cluster.run_wandb_id(tmp_path)
    assert len(first) == 8 and first.isalnum() and first.islower()
    assert (tmp_path / "wandb_run_id").read_text() == first
    assert cluster.run_wandb_id(tmp_path) == first  # a requeued job finds it
    assert cluster.run_wandb_id(tmp_path / "other") != first
    monkeypatch.setenv("WANDB_RUN_ID", "agent123")  # `wandb agent` names the sweep's run
    assert cluster.run_wandb_id(tmp_path / "swept") == "agent123"


def test_wandb_logger_gets_the_kept_id_and_resumes(compose, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    cfg = compose(["logger=wandb"])
    cluster.resume_wandb_run(cfg, tmp_path)
    assert (cfg.logger.wandb.id, cfg.logger.wandb.resume) == ((tmp_path / "wandb_run_id").read_text(), "allow")
    cfg = compose(["logger=wandb", "logger.wandb.id=mine"])
    cluster.resume_wandb_run(cfg, tmp_path / "x")
    assert cfg.logger.wandb.id == "mine" and not (tmp_path / "x").exists()
    cfg = compose(["logger=csv"])
    cluster.resume_wandb_run(cfg, tmp_path / "y")
    assert "id" not in cfg.logger.csv and not (tmp_path / "y").exists()


def test_outside_slurm_nothing_is_added(monkeypatch):
    for key in ("SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(key, raising=False)
    assert (cluster.slurm_plugins(), cluster.slurm_callbacks()) == ([], [])


def in_a_slurm_job(monkeypatch) -> None:
    """The variables srun gives a task (what Lightning's SLURMEnvironment.detect reads)."""
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "mmmed-train")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")


def test_a_requeued_job_resumes_from_its_hpc_checkpoint_not_from_ckpt_path(tmp_path, monkeypatch):
    for key in ("SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"")
    assert cluster.resume_from("first.ckpt", tmp_path) == "first.ckpt"  # not on SLURM: as configured
    in_a_slurm_job(monkeypatch)
    assert cluster.resume_from("first.ckpt", tmp_path) == "hpc"  # Lightning then takes the newest hpc_ckpt_<n>
    assert cluster.resume_from(None, tmp_path / "fresh") is None  # the job's first start
    assert cluster.resume_from("first.ckpt", tmp_path / "fresh") == "first.ckpt"


def test_in_a_slurm_job_mmmed_requeues_not_lightning(monkeypatch):
    in_a_slurm_job(monkeypatch)
    (environment,) = cluster.slurm_plugins()
    assert type(environment).__name__ == "SLURMEnvironment" and environment.auto_requeue is False
    (callback,) = cluster.slurm_callbacks()
    try:
        assert {signal.getsignal(s) for s in cluster.REQUEUE_SIGNALS} == {callback._note}
    finally:
        for signum, handler in callback._previous.items():
            signal.signal(signum, handler)
