"""Every config in conf/ composes, and every encoder/adapter yaml builds and gives the right shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import get_class, instantiate

from mmmed.model.adapters import num_output_tokens
from mmmed.model.llm import _cached_hub_snapshot  # noqa: F401  (import proves the module loads offline)

CONF = Path(__file__).resolve().parents[1] / "conf"


def names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("modality", names("modality"))
def test_every_modality_encoder_builds_and_emits_its_declared_tokens(compose, modality, tmp_path):
    cfg = compose([f"modality=[{modality}]"], tmp_path)
    assert list(cfg.modalities) == [modality] and cfg.modalities[modality].name == modality
    net = instantiate(cfg.modalities[modality].net)
    example = net.example_input(2)  # every encoder says what input it takes
    tokens = net(**example) if isinstance(example, dict) else net(example)
    assert tokens.shape == (2, net.num_tokens, net.out_dim)
    assert torch.isfinite(tokens).all()
    tokens.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


XRAY_DATA = {"mimic_cxr", "mimic_cxr_demo", "chexpert", "xray_manifest"}
# record manifests (datasets/common/patient_records.py), with the modalities they read
RECORD_DATA = {"patient_demo": "[ecg,xray]", "patient_manifest": "[ecg,xray]", "ecg_threshold_demo": "[ecg]",
               "ecg_criterion_demo": "[ecg]"}


@pytest.mark.parametrize("data", names("data"))
def test_every_data_config_composes_with_its_modality(compose, data, tmp_path):
    modalities = RECORD_DATA.get(data, "[xray]" if data in XRAY_DATA else "[ecg]")
    cfg = compose([f"modality={modalities}", f"data={data}", "data.root=/data/somewhere"], tmp_path)
    assert get_class(cfg.data.dataset._target_) and get_class(cfg.data._target_)
    assert cfg.data.root == "/data/somewhere"
    # Class names are the labels' strings: YAML 1.1 reads a bare yes/no key as a boolean, and chexpert's did.
    classes = [*cfg.data.answer_classes, *(c for part in (cfg.data.get("answer_parts") or {}).values() for c in part)]
    assert all(isinstance(name, str) for name in classes), classes
    question = cfg.data.dataset.get("question")
    if question:  # manifests and ECG-QA carry their questions in their files
        assert any(f"<{name}>" in question for name in cfg.modalities)
    if "xray" in cfg.modalities and data not in RECORD_DATA:  # decoding follows the modality's settings
        assert cfg.data.dataset.images.size == cfg.modalities.xray.net.img_size == cfg.modalities.xray.images.size
        assert {k: cfg.data.dataset.images[k] for k in ("apply_voi", "no_window", "percentiles")} == \
            {k: cfg.modalities.xray.images[k] for k in ("apply_voi", "no_window", "percentiles")}
    if "ecg" in cfg.modalities and data not in RECORD_DATA:  # one shared pipeline; the encoder takes its leads
        assert cfg.data.dataset.preprocessing == cfg.modalities.ecg.preprocessing == cfg.ecg_signal.preprocessing
        assert cfg.data.dataset.cache == cfg.ecg_signal.cache
        assert cfg.modalities.ecg.net.in_leads == len(cfg.ecg_signal.preprocessing.leads)
        assert {s.train for s in cfg.data.splits.values()} == {True, False} and cfg.data.splits.train.train


@pytest.mark.parametrize("signal", names("ecg_signal"))
def test_every_ecg_signal_config_builds(compose, signal, tmp_path):
    cfg = compose(["encoder=ecg", f"ecg_signal={signal}"], tmp_path)
    preprocessing = instantiate(cfg.ecg_signal.preprocessing)
    assert preprocessing.num_samples == round(cfg.ecg_signal.preprocessing.seconds * cfg.ecg_signal.preprocessing.sampling_rate)


@pytest.mark.parametrize("adapter", names("adapter"))
def test_every_adapter_maps_encoder_width_to_llm_width(compose, adapter, tmp_path):
    cfg = compose([f"adapter={adapter}"], tmp_path)
    module = instantiate(cfg.adapter)(in_dim=24, out_dim=40)
    assert module(torch.randn(3, 5, 24)).shape == (3, num_output_tokens(module, 5), 40)


@pytest.mark.parametrize("scale", names("model"))
def test_every_model_scale_composes_and_names_its_llm(compose, scale, tmp_path):
    cfg = compose([f"model={scale}"], tmp_path)
    llm = cfg.model.llm
    source = llm.get("hub_id") or llm.tokenizer_from.hub_id
    assert "/" in source  # a hub id, owner/name
    assert cfg.stage.name == "align" and cfg.stage.train_llm is False  # the default stage never trains the LLM


@pytest.mark.parametrize("group,choice", [("debug", n) for n in names("debug")] + [("experiment", n) for n in names("experiment")])
def test_debug_and_experiment_configs_compose(compose, group, choice, tmp_path):
    cfg = compose([f"{group}={choice}"], tmp_path)
    assert cfg.trainer.max_steps > 0


def test_encoder_choice_selects_its_data_and_data_stays_overridable(compose, tmp_path):
    cfg = compose(["encoder=ecg"], tmp_path)
    assert cfg.data.prepare._target_ == "mmmed_datasets.demo.ecg_demo.ensure_demo_ptbxl"
    cfg = compose(["encoder=ecg", "data=ptbxl", "data.root=/data/ptb-xl"], tmp_path)
    assert cfg.data.prepare is None and cfg.data.dataset.root == "/data/ptb-xl"
    cfg = compose(["encoder=xray"], tmp_path)
    assert cfg.data.prepare._target_ == "mmmed_datasets.demo.xray_demo.ensure_demo_mimic_cxr"
    assert "radiology" in cfg.prompt.system
    cfg = compose(["encoder=xray", "data=mimic_cxr", "data.root=/data/mimic-cxr", "prompt=cardiology"], tmp_path)
    assert cfg.data.prepare is None and "cardiology" in cfg.prompt.system


def test_the_encoder_recipe_sets_one_modality_and_a_list_sets_several_in_order(compose, tmp_path):
    assert list(compose(["encoder=ecg"], tmp_path).modalities) == ["ecg"]
    cfg = compose(["encoder=xray"], tmp_path)
    assert list(cfg.modalities) == ["xray"]
    assert cfg.modalities.xray.images.no_window == "full_range"  # the demo data's decode policy reaches the plugin
    assert compose(["encoder=xray", "data=mimic_cxr", "data.root=/d"], tmp_path).modalities.xray.images.no_window == \
        "percentile"
    assert list(compose(["modality=[ecg,xray]"], tmp_path).modalities) == ["ecg", "xray"]
    assert list(compose(["modality=[xray,ecg]"], tmp_path).modalities) == ["xray", "ecg"]  # the untagged order
