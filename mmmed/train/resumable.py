"""Training data whose order and augmentation are a function of (seed, epoch): exact resume after preemption.

Lightning restores weights, optimizer, scheduler and step from a checkpoint, but a plain DataLoader
starts its epoch again from a fresh shuffle. ``EpochShuffleSampler`` draws each epoch's permutation
from ``(seed, epoch)`` and hands every item its own augmentation seed, so neither depends on the
global RNG or on the number of workers; ``ResumableDataLoader`` remembers how many batches of the
epoch it handed out, and after a resume skips them at the sampler (nothing is read twice).
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

class EpochShuffleSampler(Sampler):
    """Yields ``(index, item_seed)`` in a permutation drawn from ``(seed, epoch)``: this rank's share of it.

    Data sets take the pair in ``__getitem__`` and draw their augmentation (e.g. a random ECG crop)
    from ``item_seed``. Lightning calls ``set_epoch`` at the start of every epoch. Under data
    parallelism each rank takes every ``world_size``-th position of the one permutation (padded by
    wrapping around, like torch's DistributedSampler), so the trainer configs set
    ``use_distributed_sampler: false``. ``rank``/``world_size`` None: from torch.distributed when iterating.
    """

    def __init__(self, size: int, seed: int, rank: int | None = None, world_size: int | None = None) -> None:
        self.size, self.seed = size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0  # positions of this rank's share to skip (after a resume)

    def _rank_world(self) -> tuple[int, int]:
        if self.rank is not None and self.world_size is not None:
            return self.rank, self.world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.size / self._rank_world()[1])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rank, world = self._rank_world()
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.size)
        item_seeds = rng.integers(0, 2**31 - 1, size=self.size)
        positions = np.arange(len(self) * world) % self.size  # pad by wrapping: every rank gets len(self)
        mine = positions[rank::world]
        start, self.start = self.start, 0
        for position in mine[start:]:
            yield int(order[position]), int(item_seeds[position])


class ResumableDataLoader(DataLoader):
    """A DataLoader over an ``EpochShuffleSampler`` (inside a BatchSampler) whose position survives a checkpoint.

    Lightning saves ``state_dict()`` with each checkpoint and calls ``load_state_dict`` on resume.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches already trained in it)

    def _shuffle_sampler(self) -> EpochShuffleSampler:
        sampler = getattr(self.batch_sampler, "sampler", None)
        if not isinstance(sampler, EpochShuffleSampler):
            raise TypeError("ResumableDataLoader needs batch_sampler=BatchSampler(EpochShuffleSampler(...), ...)")
        return sampler

    def __iter__(self):
        sampler = self._shuffle_sampler()
        # The skip belongs to the epoch it was saved in: a checkpoint from an epoch's last step
        # resumes in the next epoch, from its start.
        # Lightning may open an iterator before it sets the resumed epoch, so a pending skip waits for
        # its epoch and is dropped only once that epoch has passed.
        skip = 0
        if self._resume is not None and self._resume[0] <= sampler.epoch:
            skip = self._resume[1] if self._resume[0] == sampler.epoch else 0
            self._resume = None
        sampler.start = skip * self.batch_sampler.batch_size
        self._yielded = skip
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict:
        """Epoch and the batches of it already trained on."""
        # Lightning fetches a sized loader's batches one at a time (no look-ahead), so every batch handed
        # out has been trained on when a checkpoint is written; the resume test pins this down.
        return {"epoch": self._shuffle_sampler().epoch, "batches": self._yielded, "seed": self._shuffle_sampler().seed}

    def load_state_dict(self, state: dict) -> None:
        sampler = self._shuffle_sampler()
        if state["seed"] != sampler.seed:
            raise ValueError(f"checkpoint's data order used seed {state['seed']}, this run uses {sampler.seed}")
        self._resume = (state["epoch"], state["batches"])
