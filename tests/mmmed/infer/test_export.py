"""mmmed.infer.export + mmmed.infer.inference: an exported folder reproduces the trained model exactly, without pickle.

Tiny runs (random 2-layer Llama) on the 30-patient PTB-XL demo, one per stage: align (with the
Strodthoff pipeline: dataset statistics, 7 voted windows), instruct (LoRA on q_proj/v_proj) and full.
Expectations come from the training code itself: the checkpoint's tensors, and the Lightning module
rebuilt by build_run with the checkpoint restored as on resume.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from mmmed.train.build import Run, build_run
from mmmed.model.collate import MultimodalCollator
from mmmed.infer.export import export_checkpoint, main
from mmmed.infer.inference import check_llm_identity, load_exported
from mmmed.eval.metrics import aggregate_crops
from mmmed_datasets.demo.ecg_demo import ensure_demo_ptbxl
from mmmed_datasets.demo.xray_demo import ensure_demo_mimic_cxr
from tests.conftest import REPO
from train import train

STAGES = {
    "align": ["ecg_signal=strodthoff"],
    # A large LoRA step size, so the LoRA weights change the logits clearly after two steps.
    "instruct": ["stage=instruct", "stage.lora.target_modules=[q_proj,v_proj]", "param_groups.lora.lr=0.05",
                 "scheduler.warmup_steps=1"],
    "full": ["stage=full", "param_groups.llm.lr=0.01", "scheduler.warmup_steps=1"],
    # The perceiver adapter hands the LLM 16 tokens per film where the ViT gives 4.
    "xray": ["encoder=xray", "adapter=perceiver", "modalities.xray.net.img_size=32", "modalities.xray.net.num_tokens=4", "modalities.xray.net.model_kwargs.depth=1",
             "data.dataset.images.workers=1"],
}
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small demo set (30 patients: every fold holds every rhythm)."""
    return ensure_demo_ptbxl(tmp_path_factory.mktemp("demo") / "ptbxl", num_patients=30, records_per_patient=1, seed=0)


FAST = ["trainer.val_check_interval=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "trainer.log_every_n_steps=1"]


def quick(demo_root: Path, *extra: str) -> list[str]:
    return [f"data.root={demo_root}", "data.prepare.num_patients=30", "data.prepare.records_per_patient=1",
            "data.prepare.heldout_patients=0", *FAST, *extra]


def quick_xray(root: Path, *extra: str) -> list[str]:
    """30 small demo films (96 x 80), every view, seen at 32 x 32 by a 1-block ViT (as tests/test_xray_phi.py)."""
    return [f"data.root={root}", "data.prepare.num_patients=30", "data.prepare.rows=96", "data.prepare.cols=80",
            "data.dataset.views=null", *FAST, *extra]


def compose_resolved(overrides: list[str], output_dir: Path) -> DictConfig:
    """conf/train.yaml with overrides, as train.py sees it, resolved (runs here outlive one Hydra context)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        HydraConfig.instance().set_config(cfg)
        del cfg["hydra"]
    OmegaConf.resolve(cfg)
    GlobalHydra.instance().clear()
    return cfg


def fit_and_checkpoint(cfg: DictConfig, path: Path) -> None:
    """Fit and save a checkpoint as train.py does, without its ending: train.py cannot yet write
    trainable.safetensors for stage=full with tied embeddings (safetensors refuses shared tensors)."""
    L.seed_everything(cfg.seed, workers=True)
    run = build_run(cfg)
    trainer = L.Trainer(max_steps=cfg.trainer.max_steps, logger=False, enable_checkpointing=False,
                        limit_val_batches=0, enable_progress_bar=False)
    trainer.fit(run.module, datamodule=run.datamodule)
    trainer.save_checkpoint(path)


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory):
    """stage -> (resolved config, last checkpoint); each stage trains 2 steps once, when first asked for."""
    runs: dict[str, tuple[DictConfig, Path]] = {}

    def get(stage: str) -> tuple[DictConfig, Path]:
        if stage not in runs:
            out = tmp_path_factory.mktemp(stage)
            common = ["model=tiny", "logger=csv", "trainer.max_steps=2", *STAGES[stage]]
            if stage == "xray":
                root = ensure_demo_mimic_cxr(out / "demo", num_patients=30, rows=96, cols=80, seed=0)
                overrides = quick_xray(root, f"data.dataset.images.cache_dir={out / 'cache'}", *common)
            else:
                overrides = quick(demo_root, f"ecg_signal.cache.cache_dir={out / 'cache'}", *common)
            cfg = compose_resolved(overrides, out / "run")
            last = out / "run" / "checkpoints" / "last.ckpt"
            if stage == "full":
                fit_and_checkpoint(cfg, last)
            else:
                train(cfg)
            runs[stage] = (cfg, last)
        return runs[stage]

    return get


def training_side(cfg: DictConfig, ckpt_path: Path) -> Run:
    """The training code's own model for a checkpoint: build_run, weights and statistics restored as on resume."""
    run = build_run(cfg)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    run.module.on_load_checkpoint(ckpt)  # checks the LLM identity, fills in the frozen weights
    run.module.load_state_dict(ckpt["state_dict"])
    run.datamodule.prepare_data()
    run.datamodule.load_state_dict(ckpt["MultimodalDataModule"])
    run.datamodule.setup("validate")
    run.module.eval()
    return run


@torch.no_grad()
def prompt_logits(model, batch: dict) -> torch.Tensor:
    """Next-token logits over a batch's left-padded prompts. (B, P, V)"""
    embeds = model.embed(batch["prompt_input_ids"], batch["signals"])
    return model.llm(inputs_embeds=embeds, attention_mask=batch["prompt_attention_mask"]).logits


def same_signal(a: torch.Tensor | dict, b: torch.Tensor | dict) -> bool:
    """Bit-equal encoder inputs: tensors, or dicts of tensors (an ECG and its lead mask)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return torch.equal(a, b)


def no_unpickling(monkeypatch) -> None:
    """Make every unpickling entry point fail, so loading proves it needs none."""

    def refuse(*args, **kwargs):
        raise AssertionError("an exported model must load without unpickling anything")

    for owner, name in ((torch, "load"), (torch.serialization, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(owner, name, refuse)


@pytest.mark.parametrize("stage", ["align", "instruct", "full", "xray"])
def test_exported_model_reproduces_the_trained_model_without_pickle(stage, trained, tmp_path, monkeypatch):
    cfg, ckpt_path = trained(stage)
    out = export_checkpoint(ckpt_path, tmp_path / "export")
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    llm_files = {"align": set(), "xray": set(), "full": {"llm/model.safetensors", "llm/config.json"},
                 "instruct": {"lora/adapter_model.safetensors", "lora/adapter_config.json"}}[stage]
    modality = "xray" if stage == "xray" else "ecg"
    assert {"mmmed_config.json", f"encoders/{modality}.safetensors", f"adapters/{modality}.safetensors", "README.md",
            "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"} | llm_files <= files
    assert not {f for f in files if Path(f).suffix in PICKLE_SUFFIXES}
    assert not any(f.startswith("llm/") for f in files) or stage == "full"
    config = json.loads((out / "mmmed_config.json").read_text())
    assert config["llm"]["weights"] == {"align": "reference", "xray": "reference", "instruct": "lora", "full": "full"}[stage]

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    with monkeypatch.context() as patch:
        no_unpickling(patch)
        predictor = load_exported(out)
    state = predictor.model.state_dict()
    for key, value in ckpt["state_dict"].items():  # every trained tensor, bit for bit
        assert torch.equal(state[key.removeprefix("model.")], value), key
    assert list(config["modalities"]) == [modality]
    assert predictor.tokenizer.convert_tokens_to_ids(f"<|{modality}_pad|>") == config["placeholder_ids"][modality]

    run = training_side(cfg, ckpt_path)
    batch = next(iter(run.datamodule.val_dataloader()))
    expected = run.module.generate_answers(batch)
    items = [run.datamodule.splits["val"][i] for i in range(len(batch["ids"]))]
    assert [item["id"] for item in items] == batch["ids"]
    questions, signals = [item["question"] for item in items], [item["signals"] for item in items]
    ours = predictor.prompt_batch(questions, signals)
    assert torch.equal(ours["prompt_input_ids"], batch["prompt_input_ids"])
    assert torch.equal(ours["prompt_attention_mask"], batch["prompt_attention_mask"])
    assert same_signal(ours["signals"][modality], batch["signals"][modality])
    answers = predictor.answer_batch(questions, signals)
    assert answers == expected
    assert predictor.answer(items[1]["question"], items[1]["signals"]) == run.module.generate_answers(
        MultimodalCollator(run.formatter, generation_inputs=True)([items[1]]))[0]
    torch.testing.assert_close(prompt_logits(predictor.model, ours), prompt_logits(run.module.model, batch), rtol=0, atol=0)


def test_merged_lora_export_gives_the_logits_of_the_unmerged_peft_model(trained, tmp_path):
    cfg, ckpt_path = trained("instruct")
    main([f"ckpt={ckpt_path}", f"out={tmp_path / 'merged'}", "merge_lora=true"])
    export_checkpoint(ckpt_path, tmp_path / "lora")
    assert (tmp_path / "merged" / "llm" / "model.safetensors").is_file() and not (tmp_path / "merged" / "lora").exists()
    merged, unmerged = load_exported(tmp_path / "merged"), load_exported(tmp_path / "lora")
    assert json.loads((tmp_path / "merged" / "mmmed_config.json").read_text())["llm"]["weights"] == "merged"
    assert not any("lora_" in name for name, _ in merged.model.named_parameters())

    batch = next(iter(training_side(cfg, ckpt_path).datamodule.val_dataloader()))
    with_lora = prompt_logits(unmerged.model, batch)
    torch.testing.assert_close(prompt_logits(merged.model, batch), with_lora, rtol=0, atol=1e-5)
    with unmerged.model.llm.disable_adapter():
        base = prompt_logits(unmerged.model, batch)
    assert (with_lora - base).abs().max() > 1e-2  # the LoRA weights matter: the check above is not vacuous


@pytest.mark.parametrize("stage", ["align", "instruct"])
def test_answer_file_runs_the_stored_ecg_pipeline_like_the_dataset(stage, trained, tmp_path):
    """align: dataset statistics and 7 voted windows per record; instruct: the default centre window."""
    cfg, ckpt_path = trained(stage)
    predictor = load_exported(export_checkpoint(ckpt_path, tmp_path / "export"))
    run = training_side(cfg, ckpt_path)
    dataset = run.datamodule.splits["val"]
    crops = dataset.preprocessing.eval_crops
    assert crops == (7 if stage == "align" else 1)
    assert (predictor.config["normalization"] is not None) == (stage == "align")
    for index in (0, 1):
        record, question = dataset.samples[index].records[0], dataset.samples[index].question
        items = [dataset[index * crops + k] for k in range(crops)]
        windows = predictor.file_inputs(record)
        assert len(windows) == crops
        assert all(same_signal(window, item["signals"]["ecg"][0]) for window, item in zip(windows, items))
        batch = MultimodalCollator(run.formatter, generation_inputs=True)(items)
        rows = [{**item, "predicted_label": run.module.evaluator.classifier(answer), "answer": answer}
                for item, answer in zip(items, run.module.generate_answers(batch))]
        assert predictor.answer_file(question, record) == aggregate_crops(rows)[0]["answer"]


def test_answer_file_decodes_a_radiograph_like_the_dataset(trained, tmp_path):
    cfg, ckpt_path = trained("xray")
    predictor = load_exported(export_checkpoint(ckpt_path, tmp_path / "export"))
    node = predictor.config["modalities"]["xray"]
    assert node["images"] == {"size": 32, "apply_voi": True, "no_window": "full_range", "percentiles": [0.5, 99.5]}
    assert node["net"]["pretrained"] is False and node["cache_dir"] is None
    assert predictor.config["num_tokens"] == {"xray": 16} and predictor.model.encoders["xray"].num_tokens == 4
    run = training_side(cfg, ckpt_path)
    dataset = run.datamodule.splits["val"]
    for index in (0, 1):
        sample, item = dataset.samples[index], dataset[index]
        (image,) = predictor.file_inputs(sample.path)
        assert image.shape == (1, 32, 32) and torch.equal(image, item["signals"]["xray"][0])
        batch = MultimodalCollator(run.formatter, generation_inputs=True)([item])
        assert predictor.answer_file(sample.question, sample.path) == run.module.generate_answers(batch)[0]


@pytest.mark.parametrize("field, path, defined_in", [
    ("encoder", "os.system", None),
    ("modality", "subprocess.run", None),
    ("adapter", "builtins.eval", None),
    ("llm", "subprocess.Popen", None),
    ("encoder", "mmmed.train.lightning_module.LambdaLR", "torch.optim.lr_scheduler"),  # imported into mmmed, not defined there
])
def test_a_class_outside_the_allowlist_is_refused(field, path, defined_in, trained, tmp_path):
    _, ckpt_path = trained("align")
    out = export_checkpoint(ckpt_path, tmp_path / "export")
    config = json.loads((out / "mmmed_config.json").read_text())
    if field == "encoder":
        config["modalities"]["ecg"]["net"]["_target_"] = path
    elif field == "modality":
        config["modalities"]["ecg"]["_target_"] = path
    else:
        config[field]["target" if field == "llm" else "class"] = path
    (out / "mmmed_config.json").write_text(json.dumps(config))
    message = f"defined in '{defined_in}'" if defined_in else "may only name classes from mmmed.\\*, mmmed_encoders.\\*, mmmed_datasets.\\*"
    with pytest.raises(ValueError, match=f"Refusing .*{message}"):
        load_exported(out)


def test_model_card_config_and_refusals(trained, tmp_path):
    cfg, ckpt_path = trained("align")
    out = export_checkpoint(ckpt_path, tmp_path / "export")
    config = json.loads((out / "mmmed_config.json").read_text())
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert config["normalization"] == ckpt["MultimodalDataModule"]["normalization"] and list(config["normalization"]) == ["ecg"]
    pipeline = OmegaConf.to_container(cfg.ecg_signal.preprocessing)
    assert config["modalities"]["ecg"]["preprocessing"] == pipeline
    assert config["llm"]["kwargs"]["seed"] == cfg.seed and config["llm"]["identity"] == ckpt["mmmed_llm"]
    assert (config["num_tokens"], config["max_new_tokens"], config["system_prompt"]) == (
        {"ecg": cfg.modalities.ecg.net.num_tokens}, cfg.data.max_new_tokens, cfg.prompt.system)
    card = (out / "README.md").read_text()
    metrics = json.loads((ckpt_path.parent.parent / "metrics.json").read_text())
    assert f"- val/loss: {metrics['val/loss']:.4g}" in card
    assert "Not for clinical use" in card and "random-llama-h64-l2-seed1234" in card and "PTBXLDataset" in card

    with pytest.raises(FileExistsError, match="not empty"):
        export_checkpoint(ckpt_path, out)
    with pytest.raises(ValueError, match="merge_lora=true needs a LoRA checkpoint"):
        export_checkpoint(ckpt_path, tmp_path / "merged", merge=True)
    with pytest.raises(SystemExit, match="usage: python -m mmmed.infer.export"):
        main([f"ckpt={ckpt_path}"])
    (out / "extra.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"pickle files \['extra.bin'\]"):
        load_exported(out)
    (out / "extra.bin").unlink()
    config["llm"]["kwargs"]["seed"] = 7  # the reference now rebuilds another random LLM
    (out / "mmmed_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trained on LLM 'random-llama-h64-l2-seed1234' but 'random-llama-h64-l2-seed7'"):
        load_exported(out)


@pytest.mark.parametrize("expected, found, accepted", [
    ("org/llm:abc123", "org/llm:abc123", True),
    ("org/llm:hub", "org/llm:abc123", True),  # downloaded in training, read from the HF cache now: revision unknown
    ("org/llm:SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f", "org/llm:abc123", False),  # GGUF conversion vs hub weights
    ("org/llm:abc123", "org/llm:def456", False),
    ("org/llm:hub", "other/llm:hub", False),
])
def test_llm_identity_check(expected, found, accepted):
    if accepted:
        check_llm_identity(expected, found)
    else:
        with pytest.raises(ValueError, match="was trained on LLM"):
            check_llm_identity(expected, found)
