"""A run's losses and metrics over steps, kept in the checkpoint and drawn at the end: ``<run>/summary.png``."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from mmmed.eval.plots import plot_run_summary


def _as_float(value: Any) -> float | None:
    """A logged scalar (tensor or number) as a float; anything else (a vector, a string): None."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().cpu().item()) if value.numel() == 1 else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


class RunSummary(L.Callback):
    """Records the training loss and every validation/test metric against the optimizer step, and writes
    ``<output_dir>/history.jsonl`` and ``<output_dir>/summary.png`` when fitting (and testing) ends.

    A quick look at how a run went without opening W&B (or for runs logged offline): the plot shows
    train/val loss and the validation metrics over steps. Rows:
    ``{"step": s, "train/loss": x}`` every ``every_n_steps`` optimizer steps (the mean of the
    training_step losses of that step's micro-batches), ``{"step": s, "val/...": ...}`` after each
    validation (not the sanity check), ``{"step": s, "test/...": ...}`` after testing. The history is part
    of the callback's state, so Lightning saves it in checkpoints and a resumed run continues it.
    """

    def __init__(self, output_dir: str, every_n_steps: int) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.output_dir = Path(output_dir)
        self.every_n_steps = int(every_n_steps)
        self.history: list[dict] = []
        self._restored: list[dict] | None = None  # from a checkpoint; adopted only when training resumes
        self._last_step = 0          # global_step at the previous train batch: an increase is an optimizer step
        self._loss_sum, self._loss_count = 0.0, 0  # training_step losses since the last optimizer step
        self._fitted = False

    # -- recording ----------------------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning restores callback state before this hook (also for strategies that restore after setup).
        if self._restored is not None:
            self.history, self._restored = self._restored, None
        self._last_step = trainer.global_step
        self._loss_sum, self._loss_count = 0.0, 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        loss = _as_float(loss) if loss is not None else None
        if loss is not None:
            # Lightning hands over the loss divided by accumulate_grad_batches (as it was back-propagated).
            self._loss_sum += loss * trainer.accumulate_grad_batches
            self._loss_count += 1
        step = trainer.global_step
        if step == self._last_step:  # a micro-batch of an accumulation: no optimizer step yet
            return
        self._last_step = step
        if step % self.every_n_steps == 0 and self._loss_count:
            self.history.append({"step": step, "train/loss": self._loss_sum / self._loss_count})
        self._loss_sum, self._loss_count = 0.0, 0

    def _record(self, trainer: L.Trainer, prefix: str) -> None:
        values = {}
        for key, value in trainer.callback_metrics.items():
            number = _as_float(value) if key.startswith(prefix) else None
            if number is not None:
                values[key] = number
        if values:
            self.history.append({"step": trainer.global_step, **values})

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_validation_end, not on_validation_epoch_end: only now are metrics logged at epoch end in callback_metrics.
        if not trainer.sanity_checking:
            self._record(trainer, "val/")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, "test/")
        if self._fitted:
            self._write(trainer)

    # -- writing ------------------------------------------------------------------------------------------

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fitted = True
        self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        """history.jsonl (non-finite values as null) and summary.png, on global rank 0 only."""
        if not trainer.is_global_zero or not self.history:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rows = [{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in row.items()}
                for row in self.history]
        with (self.output_dir / "history.jsonl").open("w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        plot_run_summary(rows, self.output_dir / "summary.png")

    # -- checkpoint state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"history": copy.deepcopy(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Not adopted here: trainer.test(ckpt_path="best") also loads callback state, and the best
        # checkpoint's (older) history must not replace this run's. on_train_start adopts it on a resume.
        self._restored = copy.deepcopy(list(state_dict.get("history", [])))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restored = None
