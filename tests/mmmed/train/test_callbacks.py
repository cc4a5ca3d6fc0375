"""RunSummary: which steps it records, what it writes, and that a resumed run continues its history."""

from __future__ import annotations

import json
import logging

import lightning as L
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from mmmed.train.callbacks import RunSummary

BATCHES_PER_EPOCH = 8


class TinyRegression(L.LightningModule):
    """One Linear layer on fixed random data; remembers each training_step's loss with its optimizer step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(BATCHES_PER_EPOCH * 4, 4, generator=generator)
        self.data = TensorDataset(x, x.sum(dim=1, keepdim=True) + 0.5 * torch.randn(len(x), 1, generator=generator))
        self.step_losses: list[tuple[int, float]] = []  # (optimizer step the batch belongs to, loss)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.step_losses.append((self.trainer.global_step + 1, loss.item()))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        prediction = self.layer(x)
        self.log("val/loss", torch.nn.functional.mse_loss(prediction, y))
        self.log("val/accuracy", ((prediction > 0) == (y > 0)).float().mean())

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=4, shuffle=False)  # same order every epoch

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=len(self.data))

    def test_dataloader(self):
        return DataLoader(self.data, batch_size=len(self.data))


@pytest.fixture(autouse=True)
def _quiet_lightning():
    logger = logging.getLogger("lightning.pytorch")
    level, logger.level = logger.level, logging.ERROR
    yield
    logger.setLevel(level)


def _fit(root, out, max_steps, every_n_steps=3, ckpt_path=None, accumulate=1, val_check_interval=4):
    L.seed_everything(7, verbose=False)
    module = TinyRegression()
    trainer = L.Trainer(max_steps=max_steps, val_check_interval=val_check_interval, accumulate_grad_batches=accumulate,
                        logger=False, enable_checkpointing=True, default_root_dir=root, accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=2,
                        callbacks=[RunSummary(str(out), every_n_steps),
                                   L.pytorch.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True)])
    trainer.fit(module, ckpt_path=ckpt_path, weights_only=True)  # as train.py loads checkpoints
    return module, trainer


def _rows(out):
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def test_records_train_loss_every_n_steps_and_each_validation(tmp_path):
    module, _ = _fit(tmp_path, tmp_path / "run", max_steps=12)
    rows = _rows(tmp_path / "run")
    train = [row for row in rows if "train/loss" in row]
    val = [row for row in rows if "val/loss" in row]
    assert [row["step"] for row in train] == [3, 6, 9, 12]
    # the loss the training_step returned for that optimizer step
    losses = dict(module.step_losses)
    assert [row["train/loss"] for row in train] == pytest.approx([losses[s] for s in (3, 6, 9, 12)], rel=1e-6)
    # validation every 4 batches, never the sanity check (which runs at step 0)
    assert [row["step"] for row in val] == [4, 8, 12]
    assert all(set(row) == {"step", "val/loss", "val/accuracy"} for row in val)
    assert len(rows) == len(train) + len(val)
    assert Image.open(tmp_path / "run" / "summary.png").size == (1000, 400)


def test_accumulated_steps_record_the_mean_of_their_micro_batches(tmp_path):
    module, trainer = _fit(tmp_path, tmp_path / "run", max_steps=4, every_n_steps=2, accumulate=2,
                           val_check_interval=8)
    assert trainer.global_step == 4
    train = [row for row in _rows(tmp_path / "run") if "train/loss" in row]
    per_step: dict[int, list[float]] = {}
    for step, loss in module.step_losses:  # two micro-batches per optimizer step
        per_step.setdefault(step, []).append(loss)
    assert [len(per_step[s]) for s in (1, 2, 3, 4)] == [2, 2, 2, 2]
    assert [row["step"] for row in train] == [2, 4]
    assert [row["train/loss"] for row in train] == pytest.approx([sum(per_step[s]) / 2 for s in (2, 4)], rel=1e-6)


def test_resumed_run_keeps_the_history_recorded_before_the_stop(tmp_path):
    _fit(tmp_path / "full", tmp_path / "full_run", max_steps=16)
    _, stopped = _fit(tmp_path / "part", tmp_path / "part_run", max_steps=8)
    assert stopped.global_step == 8
    last = tmp_path / "part" / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 8
    _fit(tmp_path / "part", tmp_path / "resumed_run", max_steps=16, ckpt_path=last)

    full, resumed = _rows(tmp_path / "full_run"), _rows(tmp_path / "resumed_run")
    assert [row["step"] for row in resumed if "train/loss" in row] == [3, 6, 9, 12, 15]
    assert [row["step"] for row in resumed if "val/loss" in row] == [4, 8, 12, 16]
    assert resumed == full  # the same rows, the same values: seeded identically, same data order
    assert (tmp_path / "resumed_run" / "summary.png").is_file()


def test_test_metrics_are_appended_after_fit(tmp_path):
    _fit(tmp_path / "early", tmp_path / "early_run", max_steps=4)
    early = tmp_path / "early" / "ckpt" / "last.ckpt"  # its history ends at step 4
    module, trainer = _fit(tmp_path / "late", tmp_path / "run", max_steps=8)
    # like train.py testing ckpt_path="best": weights older than the end of fit
    trainer.test(module, ckpt_path=str(early), verbose=False, weights_only=True)

    rows = _rows(tmp_path / "run")
    # loading a checkpoint for testing does not roll this run's history back to the checkpoint's
    assert [row["step"] for row in rows] == [3, 4, 6, 8, 8]
    weights = torch.load(early, weights_only=True)["state_dict"]
    layer = torch.nn.Linear(4, 1)
    layer.load_state_dict({k.removeprefix("layer."): v for k, v in weights.items()})
    x, y = module.data.tensors
    expected = torch.nn.functional.mse_loss(layer(x), y).item()
    assert rows[-1] == {"step": 8, "test/loss": pytest.approx(expected, rel=1e-6)}

def test_every_n_steps_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="every_n_steps must be >= 1, got 0"):
        RunSummary(str(tmp_path), 0)
