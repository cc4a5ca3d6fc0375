"""Models saved by mmmed 0.1 (one modality per run, before the plugins) still load and answer as they did.

tests/data/mmmed_0_1 holds tiny checkpoints and exports written by 0.1, with what 0.1's loader computed from
them (README there). Loading them today must give the same encoder inputs and the same answer likelihoods.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmmed.inference import load, load_exported
from mmmed.legacy import EXPORT_FORMAT, legacy_map, upgrade_export_config
from mmmed.llm import random_llm
from mmmed.trust import resolver

DATA = Path(__file__).resolve().parents[1] / "data" / "mmmed_0_1"
EXPECTED = json.loads((DATA / "expected.json").read_text())
# Identical code paths on identical weights give identical floats; 1e-5 absorbs only summation-order noise.
LOGPROB_TOL = 1e-5


def _inputs(tensors: dict[str, torch.Tensor]) -> list:
    """The flat safetensors back into 0.1's list of encoder inputs (tensors, or dicts of tensors)."""
    views: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        view, _, name = key.partition(".")
        views.setdefault(int(view), {})[name] = value
    return [parts[""] if set(parts) == {""} else parts for _, parts in sorted(views.items())]


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    return torch.equal(a, b)


def _logprobs(predictor, modality: str) -> dict[str, float]:
    expected = EXPECTED[modality]
    result = predictor.predict_file(expected["question"], str(DATA / expected["file"]), options=expected["options"])
    return {option: score["logprob"] for option, score in result["options"].items()}


@pytest.mark.parametrize("modality", ["ecg", "xray"])
def test_a_0_1_checkpoint_loads_and_scores_as_0_1_did(modality):
    predictor = load(DATA / f"{modality}_tiny.ckpt")
    assert list(predictor.plugins) == [modality]
    assert type(predictor.plugins[modality]).__module__ + "." + type(predictor.plugins[modality]).__name__ == \
        legacy_map()["modalities"][modality]
    expected_inputs = _inputs(load_file(DATA / f"{modality}_inputs.safetensors"))
    inputs = predictor.file_inputs(DATA / EXPECTED[modality]["file"])
    assert len(inputs) == len(expected_inputs) == EXPECTED[modality]["num_inputs"]
    assert all(_same(a, b) for a, b in zip(inputs, expected_inputs))
    scores = _logprobs(predictor, modality)
    assert scores == pytest.approx(EXPECTED[modality]["logprobs"], abs=LOGPROB_TOL)


def test_a_0_1_ecg_checkpoint_keeps_its_training_statistics_keyed_by_modality():
    predictor = load(DATA / "ecg_tiny.ckpt")  # trained with normalize=dataset: the statistics travel
    stats = predictor.config["normalization"]
    assert list(stats) == ["ecg"] and len(stats["ecg"]["mean"]) == 12


def _old_export(modality: str, tmp_path: Path) -> Path:
    """0.1's exported folder: committed config and weights, plus the tokenizer 0.1 saved (rebuilt here: 3 MB)."""
    folder = tmp_path / f"export_{modality}"
    shutil.copytree(DATA / f"export_{modality}", folder)
    config = json.loads((folder / "mmmed_config.json").read_text())
    tokenizer = random_llm(**config["llm"]["kwargs"]).tokenizer
    tokenizer.add_special_tokens({"additional_special_tokens": [config["placeholder"]]})
    assert tokenizer.convert_tokens_to_ids(config["placeholder"]) == config["placeholder_id"]
    tokenizer.save_pretrained(folder / "tokenizer")
    return folder


@pytest.mark.parametrize("modality", ["ecg", "xray"])
def test_a_0_1_export_loads_and_scores_as_0_1_did(modality, tmp_path):
    predictor = load_exported(_old_export(modality, tmp_path))
    assert predictor.config["format"] == EXPORT_FORMAT and list(predictor.config["modalities"]) == [modality]
    assert _logprobs(predictor, modality) == pytest.approx(EXPECTED[modality]["exported_logprobs"], abs=LOGPROB_TOL)


def test_upgrading_an_export_config_maps_every_0_1_field():
    old = json.loads((DATA / "export_ecg" / "mmmed_config.json").read_text())
    new = upgrade_export_config(old, resolver())
    assert new["placeholder_ids"] == {"ecg": old["placeholder_id"]} and new["num_tokens"] == {"ecg": old["num_tokens"]}
    assert new["adapter"]["in_dims"] == {"ecg": old["adapter"]["in_dim"]}
    assert new["modalities"]["ecg"]["net"] == {"_target_": old["encoder"]["class"], **old["encoder"]["kwargs"]}
    assert new["weight_files"] == {"encoders": {"ecg": "encoder.safetensors"}, "adapters": {"ecg": "adapter.safetensors"}}
    for gone in ("modality", "placeholder", "placeholder_id", "encoder", "ecg_preprocessing", "xray_images"):
        assert gone not in new
    assert upgrade_export_config(new, resolver()) == new  # today's format passes through
