"""The per-device speed choices (mmmed/train/speed.py) and that build_run applies them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mmmed.model.attention import attention_kernel
from mmmed.train.speed import (
    available_cores,
    cgroup_cpu_limit,
    device_type,
    intra_op_threads,
    pad_multiple,
)


def test_device_type_follows_the_trainer_accelerator():
    assert device_type("cpu") == "cpu"
    assert device_type("gpu") == "cuda"
    assert device_type("cuda") == "cuda"


def test_attention_auto_is_eager_on_cpu_and_sdpa_on_cuda():
    assert attention_kernel("auto", "cpu") == "eager"
    assert attention_kernel("auto", "cuda") == "sdpa"
    assert attention_kernel("sdpa", "cpu") == "sdpa"  # an explicit choice is kept
    with pytest.raises(ValueError, match="speed.attention"):
        attention_kernel("fast", "cpu")


def test_padding_rounds_only_on_cuda_by_default():
    assert pad_multiple("auto", "cpu") == 1
    assert pad_multiple("auto", "cuda") == 8
    assert pad_multiple(16, "cpu") == 16
    for bad in (0, -8, "eight"):
        with pytest.raises(ValueError, match="pad_to_multiple_of"):
            pad_multiple(bad, "cpu")


def _cgroup_v2(tmp_path: Path, cpu_max: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    return tmp_path


def _cgroup_v1(tmp_path: Path, quota: int, period: int) -> Path:
    (tmp_path / "cpu").mkdir(parents=True)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path


def test_cgroup_quota_is_read_from_v2_and_v1_files(tmp_path):
    assert cgroup_cpu_limit(_cgroup_v2(tmp_path / "a", "150000 100000")) == 1.5
    assert cgroup_cpu_limit(_cgroup_v2(tmp_path / "b", "max 100000")) is None
    assert cgroup_cpu_limit(_cgroup_v1(tmp_path / "c", 300000, 100000)) == 3.0
    assert cgroup_cpu_limit(_cgroup_v1(tmp_path / "d", -1, 100000)) is None  # v1: -1 is "no quota"
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_available_cores_is_affinity_capped_by_the_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert available_cores(tmp_path / "missing") == affinity
    # A quota of half a CPU still leaves one core; a quota above the affinity does not add cores.
    assert available_cores(_cgroup_v2(tmp_path / "a", "50000 100000")) == 1
    assert available_cores(_cgroup_v2(tmp_path / "b", f"{(affinity + 4) * 100000} 100000")) == affinity


def test_threads_auto_leaves_a_core_per_worker_and_omp_wins(tmp_path, monkeypatch):
    four = _cgroup_v2(tmp_path / "a", "400000 100000")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert intra_op_threads("auto", num_workers=0, cgroup_root=four) == 4
    assert intra_op_threads("auto", num_workers=1, cgroup_root=four) == 3
    assert intra_op_threads("auto", num_workers=6, cgroup_root=four) == 1  # never below one
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert intra_op_threads("auto", num_workers=0, cgroup_root=four) == 2
    assert intra_op_threads(3, num_workers=0, cgroup_root=four) == 3
    with pytest.raises(ValueError, match="speed.threads"):
        intra_op_threads(0, num_workers=0, cgroup_root=four)



@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from mmmed_datasets.demo.ecg_demo import ensure_demo_ptbxl

    return ensure_demo_ptbxl(tmp_path_factory.mktemp("demo") / "ptbxl", num_patients=30, records_per_patient=1, seed=0)


@pytest.mark.parametrize(
    "speed, attention, pad_to, cached",
    [
        ([], "eager", 1, True),  # the defaults on CPU
        (["speed.attention=sdpa", "speed.pad_to_multiple_of=8", "speed.prefix_cache=false"], "sdpa", 8, False),
    ],
)
def test_build_run_applies_the_speed_settings(compose, demo_root, tmp_path, speed, attention, pad_to, cached):
    import torch

    from mmmed.train.build import build_run

    cfg = compose([f"data.root={demo_root}", "data.prepare.num_patients=30", "data.prepare.records_per_patient=1",
                   "data.prepare.heldout_patients=0",
                   "model=tiny", "logger=csv", "trainer.accelerator=cpu", *speed], tmp_path)
    run = build_run(cfg)
    model = run.module.model
    assert model.llm.config._attn_implementation == attention
    assert (model.prefix_cache is not None) == cached
    assert run.datamodule.pad_to_multiple_of == pad_to
    assert torch.get_num_threads() == 1  # the tests' OMP_NUM_THREADS=1 wins over the cores available
    run.datamodule.prepare_data()
    run.datamodule.setup("fit")
    batch = next(iter(run.datamodule.train_dataloader()))
    longest = int(batch["attention_mask"].sum(1).max())
    assert batch["input_ids"].shape[1] == -(-longest // pad_to) * pad_to  # the batch's longest, rounded up


def test_the_cpu_attention_choice_keeps_the_loss_and_gradients(tiny_llm):
    """``auto`` picks eager on CPU for speed: it must compute what Hugging Face's default SDPA computes."""
    import copy

    from mmmed.model.collate import MultimodalCollator
    from tests.mmmed.model.test_multimodal_lm import items, make
    from tests.mmmed.model.test_prefix_cache import assert_same_loss_and_grads

    tiny_llm.model.set_attn_implementation("sdpa")
    sdpa, formatter = make(tiny_llm)
    eager = copy.deepcopy(sdpa)
    eager.llm.set_attn_implementation(attention_kernel("auto", "cpu"))
    assert eager.llm.config._attn_implementation == "eager" and sdpa.llm.config._attn_implementation == "sdpa"
    batch = MultimodalCollator(formatter)(items(5, seed=0))  # padded rows: the masks must agree too
    assert_same_loss_and_grads(eager, sdpa, batch)
