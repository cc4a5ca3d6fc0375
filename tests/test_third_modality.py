"""A modality the core has never heard of trains, checkpoints, restores and answers, through the command line.

The ``labs`` modality (lab values in ``*.labs.json`` files) exists only in tests/third_modality: a plugin, an
encoder and a yaml, found through Hydra's search path and PYTHONPATH, as a user's own package would be. No
core file (mmmed/, conf/, the entry points) mentions it; loading it needs the user to trust its package by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "tests" / "third_modality"
TRUSTED = "[labs_modality,labs_encoder]"
QUESTION = "Is the potassium high?"


def run(script: str, *overrides: str) -> subprocess.CompletedProcess:
    """An entry point in its own session (its signals never reach pytest), the plugin package importable."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(PLUGIN), str(REPO)])}
    return subprocess.run([sys.executable, script, *overrides], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, start_new_session=True)


def write_patients(root: Path, count: int) -> None:
    """``count`` patients, one lab file each; the answer says whether potassium is above 5.0 mmol/L."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        potassium = float(rng.uniform(3.0, 6.5))
        values = {"potassium": round(potassium, 2), "sodium": round(float(rng.uniform(130, 150)), 1)}
        if i % 3:  # some records lack creatinine: the encoder sees it as unmeasured
            values["creatinine"] = round(float(rng.uniform(50, 130)), 0)
        (root / f"p{i:03d}.labs.json").write_text(json.dumps(values))
        rows.append({"patient_id": f"p{i:03d}", "question": QUESTION,
                     "answer": "Yes, potassium is high." if potassium > 5.0 else "No, potassium is normal.",
                     "labs": f"p{i:03d}.labs.json", "split": "train" if i < count - 8 else ("val" if i % 2 else "test")})
    (root / "records.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_no_core_file_names_the_test_only_modality():
    core = [*(REPO / "mmmed").rglob("*.py"), *(REPO / "conf").rglob("*.yaml"), *(REPO / "datasets").rglob("*.py"),
            *(REPO / "encoders").rglob("*.py"), REPO / "train.py", REPO / "eval.py", REPO / "predict.py"]
    assert len(core) > 50
    assert [str(p) for p in core if "labs" in p.read_text().lower()] == []


@pytest.mark.slow
def test_a_test_only_modality_trains_checkpoints_restores_and_answers(tmp_path):
    data = tmp_path / "patients"
    data.mkdir()
    write_patients(data, 40)
    common = (f"hydra.searchpath=[file://{PLUGIN / 'conf'}]", "modality=[labs]")
    trained = run("train.py", *common, "model=tiny", "logger=csv", "data=patient_manifest", f"data.root={data}",
                  f"data.dataset.manifest={data / 'records.jsonl'}", "prompt=clinical", "data.max_length=96",
                  "data.max_new_tokens=8", "trainer.max_steps=4", "trainer.val_check_interval=4",
                  "trainer.limit_test_batches=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert trained.returncode == 0, trained.stderr[-4000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert list(ckpt["mmmed_config"]["modalities"]) == ["labs"]
    assert any(key.startswith("model.encoders.labs.") for key in ckpt["state_dict"])

    record = data / "p039.labs.json"
    asked = ("predict.py", f"ckpt={tmp_path / 'run'}", f"input={record}", f"question={QUESTION}",
             f"output={tmp_path / 'pred' / 'predictions.jsonl'}")
    refused = run(*asked)  # the checkpoint names classes outside mmmed: not imported unless trusted by name
    assert refused.returncode != 0 and "Refusing to import 'labs_modality.LabsModality'" in refused.stderr

    answered = run(*asked, f"trusted_modules={TRUSTED}")
    assert answered.returncode == 0, answered.stderr[-4000:]
    (row,) = [json.loads(line) for line in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()]
    assert row["input"] == str(record) and row["question"] == QUESTION and isinstance(row["answer"], str)
    assert Path(row["picture"]).is_file()  # drawn by the plugin

    sys.path.insert(0, str(PLUGIN))
    try:
        from mmmed.infer.inference import load

        predictor = load(tmp_path / "run", trusted_modules=("labs_modality", "labs_encoder"))
        state = predictor.model.state_dict()
        for key, value in ckpt["state_dict"].items():
            if key.startswith("model.encoders.labs.") or key.startswith("model.adapters.labs."):
                assert torch.equal(state[key.removeprefix("model.")], value), key
        (inputs,) = predictor.file_inputs(record)  # standardised by the reference interval, as the plugin says
        values = json.loads(record.read_text())
        assert inputs["values"][0].item() == pytest.approx((values["potassium"] - 4.25) / 0.75)
        assert predictor.answer_file(QUESTION, record) == row["answer"]
    finally:
        sys.path.remove(str(PLUGIN))
