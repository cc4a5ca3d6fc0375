"""SLURM job sizes from a run's config: the resolvers ``conf/hydra/launcher/slurm.yaml`` uses.

Kept free of Lightning and torch at import, so ``train.py`` can register them and check its settings
in about a second, before the heavy imports.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import OmegaConf

from mmmed.cluster.search_space import optuna_params

HOST_GIB_PER_TASK = 4  # Python, torch, CUDA's host side, the encoder and a batch in flight
HOST_GIB_PER_WORKER = 1


# ---- job sizes ---------------------------------------------------
def tasks_per_node(devices: Any) -> int:
    """One SLURM task per device: Lightning's SLURMEnvironment requires ``--ntasks-per-node == devices``."""
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(
            f"hydra/launcher=slurm needs a number of devices per node, not trainer.devices={devices!r}: "
            "the login node cannot count a compute node's GPUs. Set e.g. trainer.devices=4."
        )
    return devices


def gpus_per_node(accelerator: str, devices: Any) -> int | None:
    """GPUs to request per node: one per device on ``accelerator=gpu|cuda``; on ``cpu`` none (no ``--gpus``)."""
    if accelerator in ("gpu", "cuda"):
        return tasks_per_node(devices)
    if accelerator == "cpu":
        return None
    raise ValueError(f"hydra/launcher=slurm needs trainer.accelerator=gpu or cpu, not {accelerator!r}")


def cpus_per_task(num_workers: int) -> int:
    """The training process plus its DataLoader workers (``data.num_workers`` is per process)."""
    return 1 + int(num_workers)


def llm_parameters(preset: str | None) -> int:
    """Parameters of the LLM whose architecture numbers are ``mmmed/cluster/presets/<preset>`` (0 without a preset).

    Built on the meta device, so nothing is allocated and no weights are needed.
    """
    if not preset:
        return 0
    import torch
    from transformers import AutoModelForCausalLM

    from mmmed.cluster.plan import load_preset

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(load_preset(preset))
    return sum(p.numel() for p in model.parameters())


def mem_gb_per_node(preset: str | None, dtype: str, tasks: int, num_workers: int) -> int:
    """Host memory per node (``--mem``), in GB: per task, twice the LLM's weights (loading holds a second
    copy for a moment) plus ``HOST_GIB_PER_TASK``, plus ``HOST_GIB_PER_WORKER`` per DataLoader worker."""
    import torch

    weights_gib = llm_parameters(preset) * getattr(torch, dtype).itemsize / 2**30
    per_task = 2 * weights_gib + HOST_GIB_PER_TASK + HOST_GIB_PER_WORKER * int(num_workers)
    return math.ceil(int(tasks) * per_task)


def register_resolvers() -> None:
    """``${mmmed.tasks_per_node:...}`` and friends (and the Optuna sweeper's search space); train.py registers
    them before Hydra composes."""
    for name, function in {
        "mmmed.tasks_per_node": tasks_per_node,
        "mmmed.gpus_per_node": gpus_per_node,
        "mmmed.cpus_per_task": cpus_per_task,
        "mmmed.mem_gb_per_node": mem_gb_per_node,
        "mmmed.optuna_params": optuna_params,
    }.items():
        OmegaConf.register_new_resolver(name, function, replace=True)
