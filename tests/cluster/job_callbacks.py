"""Callbacks the SLURM test jobs add with ``+callbacks.<name>._target_=tests.cluster.job_callbacks.<Class>``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L
import torch


class Pace(L.Callback):
    """Sleeps after each training step and writes the step reached to ``<run dir>/progress``: a tiny run
    lasts long enough for a test to preempt it mid-training, and the test sees how far it got. Sleeping
    changes no number the run computes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.is_global_zero:
            Path(trainer.default_root_dir, "progress").write_text(str(trainer.global_step))
        time.sleep(self.seconds)


class RankProbe(L.Callback):
    """Writes ``<run dir>/rank<global rank>.json``: the DDP world as Lightning and torch.distributed see it."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ranks = trainer.strategy.all_gather(torch.tensor(trainer.global_rank))  # a real collective over gloo
        info = {
            "global_rank": trainer.global_rank,
            "local_rank": trainer.local_rank,
            "node_rank": trainer.node_rank,
            "world_size": trainer.world_size,
            "dist_world_size": torch.distributed.get_world_size(),
            "gathered_ranks": ranks.tolist(),
            "environment": type(trainer.strategy.cluster_environment).__name__,
            **{k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_JOB_ID")},
        }
        Path(trainer.default_root_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(info))
