"""Training on a real SLURM cluster (tests/cluster/conftest.py starts one): the Hydra launcher, preemption
with checkpoint + requeue + exact resume, and a two-task srun DDP world. Tiny runs on CPU."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from slurm_cluster import REPO, Cluster, job_env

STEPS = 8
DDP_STEPS = 6


def quick(demo_root: Path, *extra: str) -> list[str]:
    """tests/test_train.py's quick tiny run, sized for a job of one CPU."""
    return [
        "model=tiny",
        f"data.root={demo_root}",
        "data.prepare.num_patients=30",
        "data.prepare.heldout_patients=0",
        "data.prepare.records_per_patient=1",
        f"trainer.max_steps={STEPS}",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.log_every_n_steps=1",
        *extra,
    ]


def launcher_command(demo_root: Path, sweep_dir: Path, partition: str, pace_s: float) -> list[str]:
    """``python train.py -m hydra/launcher=slurm ...``: one job, paced so that it can be preempted mid-run."""
    return [
        sys.executable, "train.py", "-m", "hydra/launcher=slurm", *quick(demo_root), "trainer.accelerator=cpu",
        "+callbacks.pace._target_=tests.cluster.job_callbacks.Pace", f"+callbacks.pace.seconds={pace_s}",
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.launcher.partition={partition}",
        "hydra.launcher.mem_gb=2",  # the test node is small; the derived size is checked in test_launcher_sizes
        "hydra.launcher.timeout_min=20",
    ]


def submitit_job_ids(sweep_dir: Path) -> list[str]:
    return sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and p.name[0].isdigit())


def job_log(sweep_dir: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((sweep_dir / ".submitit").rglob("*_log.out")))


def finished(proc: subprocess.Popen, what: str) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{what} failed:\n{out[-6000:]}"
    return out


@pytest.fixture(scope="module")
def uninterrupted(slurm: Cluster, cluster_demo_root: Path, tmp_path_factory) -> Path:
    """The reference: the same job as the preempted one, run to its end without interruption."""
    sweep = tmp_path_factory.mktemp("uninterrupted")
    proc = subprocess.Popen(launcher_command(cluster_demo_root, sweep, "debug", 0.0), cwd=REPO, env=job_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    finished(proc, "python train.py -m hydra/launcher=slurm")
    return sweep


@pytest.mark.slow
def test_launcher_submits_a_training_job_that_completes(slurm, uninterrupted):
    (job_id,) = submitit_job_ids(uninterrupted)
    info = slurm.wait(job_id)  # submitit returns once the result is written, the job ends just after
    assert (info["JobState"], info["Restarts"], info["Partition"], info["NumCPUs"]) == ("COMPLETED", "0", "debug", "1")
    run = uninterrupted / "0"  # hydra.sweep.subdir: the job's number
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"val/accuracy", "test/accuracy"} <= set(metrics)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == STEPS
    assert not list(run.glob("hpc_ckpt_*.ckpt"))  # never signalled


@pytest.mark.slow
def test_preempted_job_checkpoints_requeues_and_resumes_exactly(slurm, cluster_demo_root, uninterrupted, tmp_path):
    sweep = tmp_path / "preempted"
    proc = subprocess.Popen(launcher_command(cluster_demo_root, sweep, "low", 1.0), cwd=REPO, env=job_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    run = sweep / "0"
    progress = run / "progress"
    deadline = time.monotonic() + 300
    while not (progress.exists() and progress.read_text() and int(progress.read_text()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, f"the job never trained:\n{job_log(sweep)}"
        time.sleep(0.5)
    # A job needing the whole node on the high-priority partition preempts ours (PreemptMode=REQUEUE):
    # SLURM sends it SIGUSR2, the signal submitit asked for.
    preemptor = slurm.sbatch("--partition=high", "--exclusive", "--output=/dev/null", "--wrap=sleep 2")
    finished(proc, "the preempted launcher run")

    (job_id,) = submitit_job_ids(sweep)
    info = slurm.wait(job_id)
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) >= 1, info
    assert slurm.job(preemptor)["JobState"] == "COMPLETED"
    log = job_log(sweep)
    assert "Received SIGUSR2" in log, log[-4000:]
    hpc = run / "hpc_ckpt_1.ckpt"
    saved_step = torch.load(hpc, map_location="cpu", weights_only=True)["global_step"]
    assert 2 <= saved_step < STEPS
    assert f"Saved {hpc} at step {saved_step}" in log
    assert f"Restoring states from the checkpoint path at {hpc}" in log  # the restart found it: same run dir

    # Same final weights, optimizer state and metrics as the uninterrupted run.
    reference = uninterrupted / "0"
    whole = torch.load(reference / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    resumed = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == whole["global_step"] == STEPS
    assert set(resumed["state_dict"]) == set(whole["state_dict"])
    for key, value in whole["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    for a, b in zip(whole["optimizer_states"][0]["state"].values(), resumed["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    expected = json.loads((reference / "metrics.json").read_text())
    got = json.loads((run / "metrics.json").read_text())
    for key in [k for k in expected if k.startswith(("val/", "test/", "params/", "data/"))]:
        assert got[key] == expected[key], key
    assert Path(got["weights_from"]).name == Path(expected["weights_from"]).name  # the same best step

    # One W&B run across both starts: its id is kept in the run directory.
    run_id = (run / "wandb_run_id").read_text()
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(f"-{run_id}") for p in offline), offline


def submit_ddp(slurm: Cluster, demo_root: Path, run: Path, partition: str, pace_s: float) -> str:
    """scripts/train.sbatch, as users submit it: two tasks on one node, Lightning's SLURMEnvironment, DDP over gloo."""
    env = {**job_env(), "RUN_DIR": str(run), "PYTHON": sys.executable}
    return slurm.sbatch(
        f"--partition={partition}", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=4G", "--time=20",
        f"--output={run.parent}/slurm-%j.out", "scripts/train.sbatch",
        *quick(demo_root, "trainer=ddp_cpu", "logger=csv", f"trainer.max_steps={DDP_STEPS}", "test_after_fit=false"),
        "+callbacks.probe._target_=tests.cluster.job_callbacks.RankProbe",
        "+callbacks.pace._target_=tests.cluster.job_callbacks.Pace", f"+callbacks.pace.seconds={pace_s}",
        env=env,
    )


def job_output(run: Path, job_id: str) -> str:
    path = run.parent / f"slurm-{job_id}.out"
    return path.read_text() if path.exists() else ""


@pytest.fixture(scope="module")
def ddp_uninterrupted(slurm: Cluster, cluster_demo_root: Path, tmp_path_factory) -> tuple[Path, str]:
    run = tmp_path_factory.mktemp("ddp") / "run"
    job_id = submit_ddp(slurm, cluster_demo_root, run, "debug", 0.0)
    info = slurm.wait(job_id)
    assert info["JobState"] == "COMPLETED", job_output(run, job_id)[-6000:]
    return run, job_id


@pytest.mark.slow
def test_srun_with_two_tasks_forms_a_ddp_world(ddp_uninterrupted):
    run, job_id = ddp_uninterrupted
    ranks = [json.loads((run / f"rank{r}.json").read_text()) for r in range(2)]
    for rank, seen in enumerate(ranks):
        assert seen["environment"] == "SLURMEnvironment"
        assert (seen["global_rank"], seen["local_rank"], seen["node_rank"]) == (rank, rank, 0)
        assert seen["SLURM_PROCID"] == str(rank) and seen["SLURM_JOB_ID"] == job_id
        assert (seen["world_size"], seen["dist_world_size"], seen["gathered_ranks"]) == (2, 2, [0, 1])
        assert seen["MASTER_ADDR"] == "localhost"  # the job's first node, from SLURM_NODELIST
        assert seen["MASTER_PORT"] == str(15000 + int(job_id[-4:]))  # Lightning's port from the job id
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == DDP_STEPS


@pytest.mark.slow
def test_preempted_sbatch_ddp_job_requeues_itself_and_resumes_exactly(slurm, cluster_demo_root, ddp_uninterrupted,
                                                                      tmp_path):
    """The plain sbatch path: SIGUSR1 to both ranks, both save the same step, rank 0 requeues the job."""
    run = tmp_path / "run"
    job_id = submit_ddp(slurm, cluster_demo_root, run, "low", 1.0)
    progress = run / "progress"
    deadline = time.monotonic() + 300
    while not (progress.exists() and progress.read_text() and int(progress.read_text()) >= 1):
        assert slurm.job(job_id)["JobState"] in ("PENDING", "RUNNING") and time.monotonic() < deadline, \
            job_output(run, job_id)
        time.sleep(0.5)
    slurm.sbatch("--partition=high", "--exclusive", "--output=/dev/null", "--wrap=sleep 2")
    deadline = time.monotonic() + 600
    while int(slurm.job(job_id)["Restarts"]) == 0 and time.monotonic() < deadline:
        time.sleep(1)
    info = slurm.wait(job_id)
    output = job_output(run, job_id)
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) >= 1, output[-6000:]
    assert output.count("Received SIGUSR1") == 2, output[-6000:]  # both ranks
    hpc = run / "hpc_ckpt_1.ckpt"
    saved_step = torch.load(hpc, map_location="cpu", weights_only=True)["global_step"]
    assert 1 <= saved_step < DDP_STEPS
    assert f"Saved {hpc} at step {saved_step}" in output
    assert f"Restoring states from the checkpoint path at {hpc}" in output
    assert "start 2, run dir" in output  # the script's line after the requeue: same job id, same run dir

    # Each start logs its own CSV version: the steps before the checkpoint, then the rest. Lightning logs a
    # step's training metrics after its callbacks, so a checkpoint written at the step's end precedes the
    # saved step's train/loss row; a step that validates next is saved after its validation (RequeueOnSignal),
    # by when the row is written. Which of the two happened depends on when the signal came.
    rows = []
    for version in ("version_0", "version_1"):
        with open(run / "csv" / version / "metrics.csv") as handle:
            rows.append(list(csv.DictReader(handle)))
    steps = [[int(r["step"]) for r in version if r.get("train/loss")] for version in rows]
    validated = any(r.get("val/loss") and int(r["step"]) == saved_step - 1 for r in rows[0])
    logged_before = saved_step if validated else saved_step - 1
    assert steps == [list(range(logged_before)), list(range(saved_step, DDP_STEPS))], (steps, validated)

    whole = torch.load(ddp_uninterrupted[0] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    resumed = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == whole["global_step"] == DDP_STEPS
    for key, value in whole["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
