"""eval.py's choice of data: another data config scored with the model's own signal preparation (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import eval as eval_script
from mmmed.infer.export import export_checkpoint
from tests.conftest import compose_app


@pytest.fixture
def tiny_run(tiny_ecg_run) -> tuple[Path, Path]:
    """tests/conftest.py's tiny run: its ECG windows are 5 s (the default data config says 10 s)."""
    return tiny_ecg_run


def test_another_data_config_is_scored_with_the_models_signal_preparation(tiny_run, tmp_path):
    run, root = tiny_run
    cfg = compose_app("eval", [f"ckpt={run}", "data=ptbxl_superclass", f"data.root={root}", "split=test", "logger=csv",
                               "num_pictures=1", "evaluation.bootstrap.resamples=50",
                               f"ecg_signal.cache.cache_dir={tmp_path / 'cache'}"], tmp_path / "eval", resolve=False)
    report = eval_script.evaluate(cfg)
    assert report["data"] == "mmmed_datasets.ecg.ptbxl.PTBXLDataset" and report["num_rows"] == 3
    rows = [json.loads(line) for line in (tmp_path / "eval" / "generations.jsonl").read_text().splitlines()]
    assert rows[0]["question"].startswith("<ecg>\nWhich diagnostic superclasses")  # the superclass task's question
    assert [r["reference"] for r in rows] == ["NORM"] * 3  # every demo record is NORM
    assert report["data_stats"]["data/test/samples"] == 3
    # The model's 5 s windows, not the 10 s of conf/ecg_signal/default.yaml that data=ptbxl_superclass refers to.
    assert cfg.data.dataset.preprocessing.seconds == 5
    auroc = report["metrics"]["auroc"]
    # NORM is on every test record and the other superclasses on none: AUROC is undefined, and says why.
    assert set(auroc["undefined"]) == {"NORM", "MI", "STTC", "CD", "HYP"}
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["metrics"]["auroc"]["macro_auroc"] is None  # strict JSON: NaN written as null
    probs = [sum(r["label_probs"].values()) for r in rows]
    assert all(p >= 0.999 for p in probs)  # every well-formed answer lists at least one superclass


def test_an_exported_model_needs_its_data_named(tiny_run, tmp_path):
    run, _ = tiny_run
    exported = export_checkpoint(run / "checkpoints" / "last.ckpt", tmp_path / "export")
    cfg = compose_app("eval", [f"ckpt={exported}", "logger=csv"], tmp_path / "eval", resolve=False)
    with pytest.raises(ValueError, match="pass data=<name>"):
        eval_script.evaluate(cfg)
    cfg = compose_app("eval", [f"ckpt={run}", "split=dev", "logger=csv"], tmp_path / "eval2", resolve=False)
    with pytest.raises(ValueError, match="split must be one of"):
        eval_script.evaluate(cfg)
