"""Running on SLURM: job sizes from the run's config, preemption-safe requeue, and a W&B run that survives it.

How a preempted or timed-out job continues (README, "Running on a cluster"):

1. SLURM sends its warning signal before the limit or at preemption: SIGUSR1 for ``scripts/train.sbatch``
   (``--signal=USR1@120``), SIGUSR2 for hydra-submitit-launcher (``--signal=USR2@<signal_delay_s>``).
2. :class:`RequeueOnSignal` only notes it; at the end of the current training step it writes
   ``<run dir>/hpc_ckpt_<n>.ckpt`` (Lightning's name for it), requeues the job and exits. Lightning's own
   handler (``SLURMEnvironment(auto_requeue=True)``) would save from inside the signal handler, in the
   middle of a step, with the next batch already taken from the loader: that checkpoint does not resume
   exactly. So :func:`slurm_plugins` gives Lightning its SLURM environment with ``auto_requeue=False``.
3. The requeued job starts in the same run directory (the sbatch script names it after the job id;
   submitit re-runs the pickled Hydra job, whose sweep directory is resolved once, at submission) and
   Lightning, on SLURM with ``ckpt_path=None``, restores the newest ``hpc_ckpt_*.ckpt`` there: weights,
   optimizer, scheduler, step, RNG and the loader's position. The W&B run id is kept in the run directory
   (:func:`resume_wandb_run`), so the restart continues the same W&B run.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import string
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

# Job sizes live in a module of their own (no Lightning import), so train.py can register the resolvers
# and check its settings before the heavy imports; re-exported here, where SLURM users look for them.
from mmmed.cluster.job_sizes import (  # noqa: F401
    HOST_GIB_PER_TASK,
    HOST_GIB_PER_WORKER,
    cpus_per_task,
    gpus_per_node,
    llm_parameters,
    mem_gb_per_node,
    register_resolvers,
    tasks_per_node,
)

log = logging.getLogger("mmmed.cluster.slurm")

# SIGUSR1: Lightning's and scripts/train.sbatch's convention; SIGUSR2: the signal submitit asks SLURM for.
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
WANDB_ID_FILE = "wandb_run_id"


# ---- preemption and time limits ---------------------------------------------------------------------------------
def in_slurm_job() -> bool:
    """Inside a SLURM job step that Lightning treats as a SLURM cluster (srun/sbatch, not an interactive shell)."""
    return SLURMEnvironment.detect()


def slurm_plugins() -> list:
    """Trainer plugins for this process: Lightning's SLURM environment (ranks, world size, master address
    and port from SLURM) with its own requeue handler off, since :class:`RequeueOnSignal` does it."""
    return [SLURMEnvironment(auto_requeue=False)] if in_slurm_job() else []


def slurm_callbacks() -> list[L.Callback]:
    """Callbacks for this process: :class:`RequeueOnSignal` inside a SLURM job, nothing elsewhere."""
    return [RequeueOnSignal()] if in_slurm_job() else []


def job_id() -> str:
    """This job's id for ``scontrol``: ``<array job>_<task>`` in a job array."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def requeue() -> None:
    """Put this job back in the queue (``scontrol requeue``); SLURM ends the running one."""
    proc = subprocess.run(["scontrol", "requeue", job_id()], capture_output=True, text=True)
    if proc.returncode != 0:  # e.g. already requeued by a preemption: the job comes back anyway
        log.warning("scontrol requeue %s failed (%d): %s", job_id(), proc.returncode, proc.stderr.strip())
    else:
        log.info("Requeued SLURM job %s", job_id())


class RequeueOnSignal(Checkpoint):
    """On SLURM's warning signal: finish the step, save ``hpc_ckpt_<n>.ckpt``, requeue the job, exit.

    A :class:`Checkpoint` so that Lightning runs it after ModelCheckpoint: when the step ends with a
    validation, the saved state includes that validation's best-model bookkeeping.

    The handlers are installed when the callback is made (before the model is even built), so a signal
    that comes early is kept, not fatal, and they stay: one that comes after training (while testing) is
    only logged. A handler that was there before (submitit's) is called after the checkpoint is written:
    submitit then requeues the job its own way (counting timeouts) and exits.
    Under data parallelism every rank learns at each step end whether any rank was signalled, so all of
    them save the same step.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = REQUEUE_SIGNALS) -> None:
        self.received: signal.Signals | None = None
        self._step = 0
        self._after_validation = False
        self._previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():  # Python handles signals there only
            for signum in signals:
                self._previous[signum] = signal.signal(signum, self._note)

    def _note(self, signum: int, _: FrameType | None) -> None:
        # Only a flag: the step in progress must finish before its state is worth saving.
        log.warning("Received %s: checkpointing at the end of this step, then requeueing", signal.Signals(signum).name)
        self.received = signal.Signals(signum)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        # Only after an optimizer step: gradients accumulated over part of a step are not in a checkpoint.
        stepped, self._step = trainer.global_step != self._step, trainer.global_step
        if not stepped:
            return
        signalled = self.received is not None
        if trainer.world_size > 1:
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if not signalled:
            return
        epoch_loop = trainer.fit_loop.epoch_loop
        if epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            # This step validates next: save after it (and after ModelCheckpoint), since a restart from a
            # checkpoint of this step's end takes the validation as done.
            self._after_validation = True
            return
        self.checkpoint_and_requeue(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._after_validation and not trainer.sanity_checking:
            self.checkpoint_and_requeue(trainer)

    def checkpoint_and_requeue(self, trainer: L.Trainer) -> None:
        """Save where Lightning looks on restart, requeue (once, from global rank 0), then end this process."""
        path = _CheckpointConnector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)  # every rank takes part; rank 0 writes
        log.warning("Saved %s at step %d", path, trainer.global_step)
        close_loggers(trainer)  # before the requeue: SLURM then ends every process of the job, W&B's service too
        code: Any = 0
        if trainer.is_global_zero:
            previous = self._previous.get(self.received or signal.SIGUSR1)
            if callable(previous):  # submitit's handler: requeues, then exits
                try:
                    previous(int(self.received or signal.SIGUSR1), None)
                except SystemExit as exit_:
                    code = exit_.code
            else:
                requeue()
        trainer.strategy.barrier("mmmed.cluster.slurm.requeue")  # no rank leaves before the job is requeued
        raise SystemExit(code)


def close_loggers(trainer: L.Trainer) -> None:
    """Flush every logger and close the W&B run cleanly; the restart resumes it (same id, ``resume="allow"``)."""
    for logger in trainer.loggers:
        logger.finalize("requeued")
    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        sys.modules["wandb"].finish()


# ---- W&B ---------------------------------------------------------------------------------------------------------
def run_wandb_id(out_dir: Path) -> str:
    """The W&B run id of the run in ``out_dir``: made once, by global rank 0, and kept in the run directory.

    A new one is ``$WANDB_RUN_ID`` when set (``wandb agent`` sets it: the sweep's run), else random.
    """
    path = Path(out_dir) / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = os.environ.get("WANDB_RUN_ID") or "".join(
        secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id format
    if rank_zero_only.rank == 0:  # other ranks log nothing to W&B
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(run_id)
        tmp.replace(path)
    return run_id


def resume_wandb_run(cfg: DictConfig, out_dir: Path) -> None:
    """Give every configured WandbLogger the run directory's id and ``resume="allow"``: a requeued job
    continues the W&B run it started. An id set in the config wins."""
    for entry in (cfg.get("logger") or {}).values():
        if entry is None or not str(entry.get("_target_", "")).endswith("WandbLogger") or entry.get("id"):
            continue
        with open_dict(entry):
            entry.id = run_wandb_id(out_dir)
            entry.resume = entry.get("resume") or "allow"


def resume_from(ckpt_path: str | None, out_dir: Path) -> str | None:
    """What ``trainer.fit`` resumes from: in a requeued SLURM job, the newest ``hpc_ckpt_<n>.ckpt`` of its run
    directory (``"hpc"``), even when ``ckpt_path`` was set: that one started the job's first attempt."""
    if in_slurm_job() and any(Path(out_dir).glob("hpc_ckpt_*.ckpt")):
        return "hpc"
    return ckpt_path


def prepare(cfg: DictConfig, out_dir: Path) -> dict[str, list]:
    """Everything train.py adds for clusters: ``{"callbacks": [...], "plugins": [...]}`` for the Trainer."""
    resume_wandb_run(cfg, out_dir)
    return {"callbacks": slurm_callbacks(), "plugins": slurm_plugins()}

