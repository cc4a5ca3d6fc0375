"""Each training stage on the real nano LLM and the demo data: the loss falls, exactly the parts the
stage names change, and everything frozen stays bit-identical."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from mmmed.train.build import build_run
from mmmed.model.lora import is_lora_parameter
from mmmed_datasets.demo.ecg_demo import ensure_demo_ptbxl

STEPS = 16


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return ensure_demo_ptbxl(tmp_path_factory.mktemp("demo") / "ptbxl", num_patients=30, records_per_patient=1, seed=0)


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def part_of(key: str) -> str:
    if key.startswith("adapters."):
        return "adapter"
    if key.startswith("encoders."):
        return "encoder"
    return "lora" if is_lora_parameter(key) else "llm"


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage, extra, trained",
    [
        ("align", [], {"adapter", "encoder"}),
        ("align", ["modalities.ecg.trainable=false"], {"adapter"}),
        ("instruct", [], {"adapter", "encoder", "lora"}),
        # Full fine-tuning keeps fp32 master weights: bf16 weights would round most small updates away.
        ("full", ["model.llm.dtype=float32", "param_groups.llm.lr=1.0e-4"], {"adapter", "encoder", "llm"}),
    ],
)
def test_stage_trains_exactly_its_parts(compose, demo_root, tmp_path, stage, extra, trained):
    cfg = compose([f"data.root={demo_root}", "data.prepare.num_patients=30", "data.prepare.heldout_patients=0", f"stage={stage}",
                   "scheduler.warmup_steps=3", *extra], tmp_path)
    run = build_run(cfg)
    model = run.module.model
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    recorder = LossRecorder()
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, num_sanity_val_steps=0,
                        gradient_clip_val=1.0, callbacks=[recorder])
    trainer.fit(run.module, datamodule=run.datamodule)

    first, last = sum(recorder.losses[:3]) / 3, sum(recorder.losses[-3:]) / 3
    assert len(recorder.losses) == STEPS and last < 0.75 * first, (first, last)
    changed = {k for k, v in model.named_parameters() if not torch.equal(v.detach(), before[k])}
    for key, value in model.named_parameters():
        if part_of(key) not in trained:
            assert key not in changed and not value.requires_grad, key  # frozen: bit-identical, no gradient
    for part in trained:  # every trained part moved (LoRA B starts at zero, so it must have left it)
        assert any(part_of(k) == part for k in changed), part
    saved = set(model.trainable_state_dict())
    assert {part_of(k) for k in saved} == trained
    if stage != "full":
        assert not any(part_of(k) == "llm" for k in saved)  # a frozen LLM is never saved
