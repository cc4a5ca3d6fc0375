"""Models saved by earlier releases still load and answer as they did: mmmed 0.1 (one modality per run, before the
plugins) and two-modality models saved before mmmed/ and datasets/ were split into subpackages.

tests/data/mmmed_0_1 holds tiny checkpoints and exports written by 0.1, with what 0.1's loader computed from
them (README there). Loading them today must give the same encoder inputs and the same answer likelihoods.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmmed.infer.inference import load, load_exported
from mmmed.infer.legacy import EXPORT_FORMAT, legacy_map, renamed, upgrade_export_config
from mmmed.model.llm import random_llm
from mmmed.infer.trust import resolver

DATA = Path(__file__).resolve().parents[2] / "data" / "mmmed_0_1"
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


# --- models saved before mmmed/ and datasets/ were split into subpackages ------------------------------------
FLAT = Path(__file__).resolve().parents[2] / "data" / "mmmed_flat_layout"
FLAT_EXPECTED = json.loads((FLAT / "expected.json").read_text())


def _flat_record() -> str:
    return "|".join(str(FLAT / name) for name in FLAT_EXPECTED["files"])  # an ECG and a film: one patient


def _flat_logprobs(predictor) -> dict[str, float]:
    result = predictor.predict_files([FLAT_EXPECTED["question"]], [_flat_record()],
                                     options=[FLAT_EXPECTED["options"]])[0]
    return {option: score["logprob"] for option, score in result["options"].items()}


def test_renamed_maps_an_old_module_path_and_leaves_a_new_one_alone():
    assert renamed("mmmed.adapters.MLPProjector") == "mmmed.model.adapters.MLPProjector"
    assert renamed("mmmed.model.MultimodalLM") == "mmmed.model.multimodal_lm.MultimodalLM"  # a module, now a package
    assert renamed("mmmed.model.adapters.MLPProjector") == "mmmed.model.adapters.MLPProjector"
    assert renamed("mmmed_datasets.ecg_modality.ECGModality") == "mmmed_datasets.ecg.ecg_modality.ECGModality"
    assert renamed("mmmed_encoders.ecg_cnn.ECGCNNEncoder") == "mmmed_encoders.ecg_cnn.ECGCNNEncoder"  # never moved


def test_every_rename_names_a_module_that_exists_and_no_old_module_remains():
    for old, new in legacy_map()["renames"].items():
        assert importlib.util.find_spec(new) is not None, f"conf/legacy.yaml renames {old} to {new}, which does not exist"
        spec = importlib.util.find_spec(old)  # gone, or now a package (mmmed.model, mmmed.cluster): no class there
        assert spec is None or spec.submodule_search_locations is not None, f"{old} still exists: renames would hide it"


def test_a_flat_layout_checkpoint_of_two_modalities_loads_and_scores_as_it_did():
    predictor = load(FLAT / "patient_tiny.ckpt")
    assert list(predictor.plugins) == ["ecg", "xray"]
    assert type(predictor.plugins["xray"]).__module__ == "mmmed_datasets.xray.xray_modality"
    saved = load_file(FLAT / "patient_inputs.safetensors")
    (inputs,) = predictor.record_inputs(_flat_record())
    flat = {}
    for name, signals in inputs.items():
        for k, signal in enumerate(signals):
            parts = signal if isinstance(signal, dict) else {None: signal}
            flat.update({f"{name}.{k}" + (f".{part}" if part else ""): t for part, t in parts.items()})
    assert set(flat) == set(saved) and all(torch.equal(flat[key], saved[key]) for key in saved)
    assert _flat_logprobs(predictor) == pytest.approx(FLAT_EXPECTED["logprobs"], abs=LOGPROB_TOL)


def test_a_flat_layout_export_loads_and_scores_as_it_did(tmp_path):
    folder = tmp_path / "export_patient"
    shutil.copytree(FLAT / "export_patient", folder)
    config = json.loads((folder / "mmmed_config.json").read_text())
    assert config["adapter"]["class"] == "mmmed.adapters.MLPProjector"  # the old path, as saved
    tokenizer = random_llm(**config["llm"]["kwargs"]).tokenizer  # the exported tokenizer (3 MB), rebuilt as export wrote it
    tokenizer.add_special_tokens({"additional_special_tokens": [f"<|{name}_pad|>" for name in config["placeholder_ids"]]})
    assert {name: tokenizer.convert_tokens_to_ids(f"<|{name}_pad|>") for name in config["placeholder_ids"]} == \
        config["placeholder_ids"]
    tokenizer.save_pretrained(folder / "tokenizer")
    predictor = load_exported(folder)
    assert predictor.config["adapter"]["class"] == "mmmed.model.adapters.MLPProjector"
    assert _flat_logprobs(predictor) == pytest.approx(FLAT_EXPECTED["exported_logprobs"], abs=LOGPROB_TOL)
