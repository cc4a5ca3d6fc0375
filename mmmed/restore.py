"""Rebuild the trained model from a training checkpoint: what export, prediction and evaluation start from.

A checkpoint holds only the trained weights and the resolved run config; the frozen LLM (and a
pretrained encoder) come from their sources, checked against the LLM identity the run recorded.
Loading uses ``weights_only=True``: a checkpoint is data, never code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

import mmmed
from mmmed.adapters import num_output_tokens
from mmmed.inference import check_llm_identity, resolve_allowed
from mmmed.lora import apply_lora
from mmmed.model import MultimodalLM
from mmmed.prompts import ChatFormatter, Modality


def hydra_kwargs(node: dict, drop: tuple[str, ...] = ("_target_", "_partial_")) -> dict:
    """A config node's constructor arguments: without Hydra's keys (and any others named)."""
    return {key: value for key, value in node.items() if key not in drop}


@dataclass
class RestoredModel:
    """A checkpoint's model, ready to answer, with what inference needs to prepare inputs."""

    model: MultimodalLM
    formatter: ChatFormatter
    config: dict  # as mmmed_config.json (export.py), less how the LLM's weights ship
    run_config: dict  # the training run's resolved config
    lora: dict | None
    train_llm: bool


def find_checkpoint(path: str | Path) -> Path:
    """A ``.ckpt`` file as given; for a run folder its best checkpoint (metrics.json ``weights_from``), else last.ckpt."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    metrics = path / "metrics.json"
    if metrics.is_file():
        best = Path(json.loads(metrics.read_text()).get("weights_from", ""))
        if best.suffix == ".ckpt" and best.is_file():
            return best
    last = path / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    raise FileNotFoundError(f"{path} is neither a checkpoint, a training run folder (checkpoints/last.ckpt) "
                            f"nor an exported model (mmmed_config.json)")


def restore_checkpoint(ckpt_path: str | Path) -> RestoredModel:
    """The model a checkpoint trained, in eval mode on CPU, with its inference settings."""
    ckpt_path = Path(ckpt_path)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    cfg = ckpt.get("mmmed_config")
    if not cfg:
        raise ValueError(f"{ckpt_path} holds no mmmed_config: not a checkpoint written by mmmed's train.py")
    stage, modality, lora = cfg["stage"], cfg["encoder"]["modality"], cfg["stage"].get("lora")
    llm_kwargs, net = hydra_kwargs(cfg["model"]["llm"]), hydra_kwargs(cfg["encoder"]["net"])
    if not stage["train_encoder"] and not net.get("pretrained"):
        raise ValueError(f"{ckpt_path}: the encoder was frozen at random initialisation, so the checkpoint does not "
                         "hold it and nothing can re-create it; only trained or pretrained encoders can be restored.")

    llm = resolve_allowed(cfg["model"]["llm"]["_target_"])(**llm_kwargs)  # the base LLM, as training loaded it
    check_llm_identity(ckpt.get("mmmed_llm"), llm.identity)
    if lora:  # QLoRA's 4-bit base is not kept: the LoRA weights apply to the base LLM in its own dtype
        llm.model = apply_lora(llm.model, lora["r"], lora["alpha"], lora["dropout"], list(lora["target_modules"]), False)
    encoder = resolve_allowed(cfg["encoder"]["net"]["_target_"])(**net)
    adapter_kwargs = hydra_kwargs(cfg["adapter"])
    adapter_factory = partial(resolve_allowed(cfg["adapter"]["_target_"]), **adapter_kwargs)
    hidden = llm.model.get_input_embeddings().embedding_dim
    with torch.device("meta"):  # as build_run: a weightless probe of how many LLM tokens a signal becomes
        num_tokens = num_output_tokens(adapter_factory(in_dim=encoder.out_dim, out_dim=hidden), encoder.num_tokens)
    formatter = ChatFormatter(llm.tokenizer, [Modality(modality, num_tokens)], cfg["prompt"]["system"],
                              cfg["data"]["max_length"])  # adds the placeholder token to the tokenizer
    model = MultimodalLM(llm.model, {modality: encoder}, adapter_factory, formatter.placeholder_ids,
                         train_llm=stage["train_llm"], train_encoders=stage["train_encoder"])
    trained = {key.removeprefix("model."): value for key, value in ckpt["state_dict"].items()}
    expected = set(model.trainable_state_dict())
    if set(trained) != expected:
        raise ValueError(f"{ckpt_path} does not fit its own config: missing {sorted(expected - set(trained))[:5]}, "
                         f"unexpected {sorted(set(trained) - expected)[:5]}")
    model.load_state_dict(trained, strict=False)  # the rest is the frozen LLM (and a pretrained encoder)
    model.requires_grad_(False)

    if "pretrained" in net:
        net["pretrained"] = False  # its weights travel with the trained ones: loading downloads nothing
    dataset = cfg["data"]["dataset"]
    images = dataset.get("images")
    config = {
        "mmmed_version": mmmed.__version__,
        "stage": stage["name"],
        "modality": modality,
        "placeholder": formatter.modalities[modality].placeholder,
        "placeholder_id": formatter.placeholder_ids[modality],
        "num_tokens": num_tokens,  # placeholder tokens per signal: what the adapter hands the LLM
        "system_prompt": cfg["prompt"]["system"],
        "question": dataset.get("question"),
        "max_length": cfg["data"]["max_length"],
        "max_new_tokens": cfg["data"]["max_new_tokens"],
        "answer_classes": dict(cfg["data"]["answer_classes"]),
        "label_scores": cfg["data"].get("label_scores"),
        "report_metrics": cfg["data"].get("report_metrics", False),
        "encoder": {"class": cfg["encoder"]["net"]["_target_"], "kwargs": net},
        "adapter": {"class": cfg["adapter"]["_target_"], "kwargs": adapter_kwargs, "in_dim": encoder.out_dim,
                    "out_dim": hidden},
        "llm": {"target": cfg["model"]["llm"]["_target_"], "kwargs": llm_kwargs, "identity": llm.identity,
                "dtype": llm_kwargs["dtype"], "lora": lora},
        # The pipelines that made the encoder's inputs in training, so inference prepares files the same way.
        "ecg_preprocessing": hydra_kwargs(dataset["preprocessing"]) if dataset.get("preprocessing") else None,
        "xray_images": hydra_kwargs(images, ("_target_", "cache_dir", "workers")) if images else None,
        "normalization": (ckpt.get("MultimodalDataModule") or {}).get("normalization"),
        "data": {"dataset": dataset["_target_"], "task": dataset.get("task")},
    }
    return RestoredModel(model.eval(), formatter, config, cfg, lora, stage["train_llm"])
