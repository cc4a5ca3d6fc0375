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
from mmmed.model.assembly import assemble_model, build_plugins, encoder_switches
from mmmed.infer.legacy import EXPORT_FORMAT, upgrade_run_config
from mmmed.model.lora import apply_lora
from mmmed.model.modality import ModalityPlugin
from mmmed.model.multimodal_lm import MultimodalLM
from mmmed.model.prompts import ChatFormatter
from mmmed.infer.trust import check_llm_identity, resolve_allowed, resolver


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
    plugins: dict[str, ModalityPlugin]


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


def restore_checkpoint(ckpt_path: str | Path, trusted_modules: tuple[str, ...] = ()) -> RestoredModel:
    """The model a checkpoint trained, in eval mode on CPU, with its inference settings.

    ``trusted_modules``: dotted prefixes of your own plugin packages that the checkpoint may name
    (mmmed's own are always allowed).
    """
    ckpt_path = Path(ckpt_path)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    cfg = ckpt.get("mmmed_config")
    if not cfg:
        raise ValueError(f"{ckpt_path} holds no mmmed_config: not a checkpoint written by mmmed's train.py")
    resolve = resolver(trusted_modules)
    cfg, normalization = upgrade_run_config(cfg, (ckpt.get("MultimodalDataModule") or {}).get("normalization"), resolve)
    stage, lora = cfg["stage"], cfg["stage"].get("lora")
    plugins = build_plugins(cfg["modalities"], resolve)
    switches = encoder_switches(plugins, stage["train_encoder"])
    for name, plugin in plugins.items():
        if not switches[name] and not plugin.net.get("pretrained"):
            raise ValueError(f"{ckpt_path}: the {name} encoder was frozen at random initialisation, so the checkpoint "
                             "does not hold it and nothing can re-create it; only trained or pretrained encoders can "
                             "be restored.")
    llm_kwargs = hydra_kwargs(cfg["model"]["llm"])
    llm = resolve(cfg["model"]["llm"]["_target_"])(**llm_kwargs)  # the base LLM, as training loaded it
    check_llm_identity(ckpt.get("mmmed_llm"), llm.identity)
    if lora:  # QLoRA's 4-bit base is not kept: the LoRA weights apply to the base LLM in its own dtype
        llm.model = apply_lora(llm.model, lora["r"], lora["alpha"], lora["dropout"], list(lora["target_modules"]), False)
    adapter_kwargs = hydra_kwargs(cfg["adapter"])
    adapter_factory = partial(resolve(cfg["adapter"]["_target_"]), **adapter_kwargs)
    encoders = {name: plugin.build_encoder(resolve=resolve) for name, plugin in plugins.items()}
    assembled = assemble_model(llm.model, llm.tokenizer, plugins, adapter_factory, system_prompt=cfg["prompt"]["system"],
                               max_length=cfg["data"]["max_length"], train_llm=stage["train_llm"],
                               train_encoder=stage["train_encoder"], encoders=encoders)
    model, formatter = assembled.model, assembled.formatter
    trained = {key.removeprefix("model."): value for key, value in ckpt["state_dict"].items()}
    expected = set(model.trainable_state_dict())
    if set(trained) != expected:
        raise ValueError(f"{ckpt_path} does not fit its own config: missing {sorted(expected - set(trained))[:5]}, "
                         f"unexpected {sorted(set(trained) - expected)[:5]}")
    model.load_state_dict(trained, strict=False)  # the rest is the frozen LLM (and a pretrained encoder)
    model.requires_grad_(False)

    hidden = llm.model.get_input_embeddings().embedding_dim
    data = cfg["data"]
    dataset = data["dataset"]
    config = {
        "format": EXPORT_FORMAT,
        "mmmed_version": mmmed.__version__,
        "stage": stage["name"],
        # Each plugin as it reads files (its weights travel with the trained ones: loading downloads nothing).
        "modalities": {name: {**plugin.config(), "net": {**plugin.net, **({"pretrained": False}
                                                                            if "pretrained" in plugin.net else {})}}
                       for name, plugin in plugins.items()},
        "num_tokens": assembled.num_tokens,  # placeholder tokens per signal: what each adapter hands the LLM
        "placeholder_ids": dict(formatter.placeholder_ids),
        "system_prompt": cfg["prompt"]["system"],
        "question": dataset.get("question"),
        "max_length": data["max_length"],
        "max_new_tokens": data["max_new_tokens"],
        "answer_classes": dict(data["answer_classes"]),
        "answer_parts": {part: dict(classes) for part, classes in (data.get("answer_parts") or {}).items()},
        "label_scores": data.get("label_scores"),
        "report_metrics": data.get("report_metrics", False),
        "adapter": {"class": cfg["adapter"]["_target_"], "kwargs": adapter_kwargs,
                    "in_dims": {name: encoder.out_dim for name, encoder in encoders.items()}, "out_dim": hidden},
        "llm": {"target": cfg["model"]["llm"]["_target_"], "kwargs": llm_kwargs, "identity": llm.identity,
                "dtype": llm_kwargs["dtype"], "lora": lora},
        "normalization": normalization,  # the training split's statistics, by modality (or None)
        "data": {"dataset": dataset["_target_"], "task": dataset.get("task")},
        # A self-trained model (selftrain.py) answers "Reasoning: ... Answer: ..." when asked with its instruction.
        "reasoning": ({"instruction": cfg["selftrain"]["instruction"], "max_new_tokens": cfg["selftrain"]["max_new_tokens"]}
                      if cfg.get("selftrain") else None),
    }
    return RestoredModel(model.eval(), formatter, config, cfg, lora, stage["train_llm"], plugins)
