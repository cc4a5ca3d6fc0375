"""The run's exact speed-ups, chosen per device from ``conf/train.yaml``'s ``speed:`` block (``build_run`` applies them).

Measured on the 2-core CPU machine, nano LLM frozen, ECG demo batches of 8 (~53 tokens), one thread, the whole
training step as alternating pairs (``bench/compare.py`` measures them together against a hand-written trainer):

* attention: ``mmmed/model/attention.py`` (eager on CPU, SDPA on CUDA; predict.py and eval.py choose the same).
* padding: rounding each batch up to a multiple of 8 helps tensor cores on a GPU; on CPU it is 6.1% of the
  positions computed for nothing (2.7% with no rounding).
* prefix cache: ``mmmed/model/prefix_cache.py``.
* threads: one intra-op thread per core this process may use (CPU affinity and the cgroup's CPU quota, not the
  machine's core count), less one per DataLoader worker, so workers and the step never oversubscribe the cores;
  an explicit ``OMP_NUM_THREADS`` is the user's choice and wins.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

def device_type(accelerator: str) -> str:
    """``cuda`` or ``cpu``: where Lightning's ``trainer.accelerator`` puts the run."""
    if accelerator in ("gpu", "cuda"):
        return "cuda"
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


def pad_multiple(setting: int | str, device: str) -> int:
    """Round batch lengths up to this: ``auto`` is 8 on CUDA (tensor cores), 1 on CPU (no rounding)."""
    if setting == "auto":
        return 8 if device == "cuda" else 1
    if not isinstance(setting, int) or setting < 1:
        raise ValueError(f"speed.pad_to_multiple_of must be auto or a positive integer, got {setting!r}")
    return setting


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the cgroup's quota allows (v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), or None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup's quota (rounded down, at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores)


def intra_op_threads(setting: int | str, num_workers: int, cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Torch intra-op threads: ``auto`` is ``OMP_NUM_THREADS`` when set, else the available cores less one per
    DataLoader worker (at least 1); an integer is taken as it is."""
    if setting != "auto":
        if not isinstance(setting, int) or setting < 1:
            raise ValueError(f"speed.threads must be auto or a positive integer, got {setting!r}")
        return setting
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, available_cores(cgroup_root) - num_workers)
