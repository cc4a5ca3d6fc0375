"""Faults a run survives: NaN gradients under both policies (in-process), and scripts/fault_injection.py end to
end (SIGKILLs, disk full, crash mid-save, corrupt checkpoints, NaN), run as a user would."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmmed.train.lightning_module import NonFiniteError
from mmmed_datasets.demo.ecg_demo import ensure_demo_ptbxl
from train import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return ensure_demo_ptbxl(tmp_path_factory.mktemp("demo") / "ptbxl", num_patients=30, records_per_patient=1, seed=0)


def poisoned(demo_root: Path, run: Path, policy: str) -> list[str]:
    """Three steps of model=tiny, a checkpoint each step, a NaN in a gradient at step 2."""
    return [
        "model=tiny", "logger=csv", f"data.root={demo_root}", "data.prepare.num_patients=30", "data.prepare.heldout_patients=0",
        "data.prepare.records_per_patient=1", "trainer.max_steps=3", "trainer.limit_val_batches=0",
        "test_after_fit=false", "trainer.log_every_n_steps=1", f"nonfinite={policy}",
        "callbacks.model_checkpoint.monitor=null", "++callbacks.model_checkpoint.every_n_train_steps=1",
        "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.filename='s{step}'",
        "+callbacks.poison={_target_:fault_injection.PoisonGradient,step:2}",
    ]


def test_nonfinite_skip_drops_the_step_and_counts_it(compose, demo_root, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))  # fault_injection.PoisonGradient
    train(compose(poisoned(demo_root, tmp_path, "skip"), tmp_path))
    ckpt = {name: torch.load(tmp_path / "checkpoints" / f"{name}.ckpt", map_location="cpu", weights_only=True)
            for name in ("s1", "s2", "last")}
    for key, value in ckpt["s1"]["state_dict"].items():  # weights and BatchNorm statistics
        assert torch.equal(ckpt["s2"]["state_dict"][key], value), key
    before, after = (ckpt[n]["optimizer_states"][0]["state"] for n in ("s1", "s2"))
    assert all(torch.equal(before[i][k], after[i][k]) for i in before for k in before[i])  # moments, step counts
    assert ckpt["last"]["global_step"] == 3 and ckpt["last"]["mmmed_nonfinite_skipped"] == 1
    assert any(not torch.equal(ckpt["last"]["state_dict"][k], v) for k, v in ckpt["s2"]["state_dict"].items())
    assert all(torch.isfinite(v).all() for v in ckpt["last"]["state_dict"].values())
    rows = list(csv.DictReader(open(next((tmp_path / "csv").rglob("metrics.csv")))))
    assert [float(r["train/nonfinite_skipped"]) for r in rows if r.get("train/nonfinite_skipped")] == [0.0, 1.0, 1.0]


def test_nonfinite_stop_names_the_step_and_the_last_good_checkpoint(compose, demo_root, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(NonFiniteError, match=rf"non-finite gradient of model\.\S+ at training step 2: stopped before "
                                             rf"the optimizer step .* the last good checkpoint is {last}\."):
        train(compose(poisoned(demo_root, tmp_path, "stop"), tmp_path))
    saved = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert saved == ["last.ckpt", "s1.ckpt"]  # nothing after the NaN
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 1


@pytest.mark.slow
def test_fault_injection_script_proves_every_case(tmp_path):
    """~3-4 min on a busy 2-core machine: ten train.py processes (imports dominate)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "scripts/fault_injection.py", "--kills", "2", "--workdir", str(tmp_path),
                           "--seed", "0"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "FAIL" not in out
    assert "  ok    2/2 identical resumes" in out
    for case in ("disk full (simulated by RLIMIT_FSIZE", "disk full: last.ckpt unchanged byte for byte",
                 "disk full: resumed with room again, the run ended identical", "crash mid-save: SIGKILL with",
                 "corrupt checkpoint (one bit flipped), resume_corrupt=error: refused",
                 "corrupt checkpoint (truncated), resume_corrupt=previous: resumed from s00007.ckpt and ended identical",
                 "NaN gradient, nonfinite=skip: step 4 skipped", "NaN gradient, nonfinite=stop: stopped"):
        assert f"  ok    {case}" in out, case
