"""Build the model, the Lightning module and the DataModule from a composed Hydra config."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mmmed.model.assembly import assemble_model, build_plugins
from mmmed.train.datamodule import MultimodalDataModule
from mmmed.train.lightning_module import MultimodalLitModule
from mmmed.model.llm import LoadedLLM
from mmmed.model.lora import apply_lora
from mmmed.eval.evaluation import Evaluator
from mmmed.model.generation import GenerationSettings
from mmmed.model.multimodal_lm import MultimodalLM
from mmmed.train.preflight import check_plugin_settings, check_stage_and_llm, run_checks
from mmmed.model.attention import attention_kernel
from mmmed.train.speed import device_type, intra_op_threads, pad_multiple
from mmmed.model.prompts import ChatFormatter

log = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything a training or evaluation run needs, built from one config."""

    module: MultimodalLitModule
    datamodule: MultimodalDataModule
    formatter: ChatFormatter
    llm: LoadedLLM


def build_run(cfg: DictConfig) -> Run:
    """Instantiate LLM, encoder, adapter, model, Lightning module and DataModule, in that order."""
    stage = cfg.stage
    lora = stage.get("lora")
    log.info("LLM: %s; stage %s", cfg.model.llm._target_, stage.name)
    # QLoRA possible, fp32 LLM for stage=full, each modality's own settings: before minutes of loading
    run_checks(cfg, (check_stage_and_llm, check_plugin_settings))
    device = device_type(cfg.trainer.accelerator)
    attention = attention_kernel(cfg.speed.attention, device)
    pad_to = pad_multiple(cfg.speed.pad_to_multiple_of, device)
    threads = intra_op_threads(cfg.speed.threads, cfg.data.num_workers)
    torch.set_num_threads(threads)
    log.info("Speed on %s: %s attention, padding to a multiple of %d, %d intra-op threads, prefix cache %s, "
             "torch.compile %s", device, attention, pad_to, threads, "on" if cfg.speed.prefix_cache else "off",
             "on" if cfg.speed.compile else "off")
    llm: LoadedLLM = instantiate(cfg.model.llm, **({"quantize_4bit": True} if lora and lora.quantize_4bit else {}))
    llm.model.set_attn_implementation(attention)
    if cfg.model.get("gradient_checkpointing"):
        # Non-reentrant: reentrant checkpointing drops the gradients of everything below a block
        # whose inputs need none (a frozen encoder's features into a checkpointed adapter, LoRA on
        # text-only batches), and PyTorch recommends it. MultimodalLM.train keeps it active for a
        # frozen LLM (tests/mmmed/model/test_gradient_checkpointing.py).
        llm.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        llm.model = apply_lora(llm.model, lora.r, lora.alpha, lora.dropout, list(lora.target_modules), lora.quantize_4bit)
    plugins = build_plugins(cfg.modalities)
    for name, plugin in plugins.items():
        log.info("Modality %s: encoder %s", name, plugin.net["_target_"])
    datamodule: MultimodalDataModule = instantiate(cfg.data, seed=cfg.seed, pad_to_multiple_of=pad_to)
    log.info("Adapter: %s", cfg.adapter._target_)
    assembled = assemble_model(llm.model, llm.tokenizer, plugins, instantiate(cfg.adapter), system_prompt=cfg.prompt.system,
                               max_length=datamodule.max_length, train_llm=stage.train_llm,
                               train_encoder=stage.train_encoder)
    model, formatter = assembled.model, assembled.formatter
    model.use_prefix_cache(cfg.speed.prefix_cache)
    model.compile_llm(cfg.speed.compile)
    datamodule.attach_formatter(formatter)
    module = MultimodalLitModule(
        model=model,
        tokenizer=llm.tokenizer,
        optimizer=instantiate(cfg.optimizer),
        param_groups=OmegaConf.to_container(cfg.param_groups, resolve=True),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        evaluator=build_evaluator(formatter, datamodule, cfg.evaluation),
        label_scores_in_validation=cfg.evaluation.label_scores_in_validation,
        num_logged_samples=cfg.evaluation.num_logged_samples,
        run_config=OmegaConf.to_container(cfg, resolve=True),
        llm_identity=llm.identity,
        nonfinite=cfg.nonfinite,
    )
    return Run(module, datamodule, formatter, llm)


def build_evaluator(formatter: ChatFormatter, datamodule: MultimodalDataModule, evaluation: DictConfig,
                    reasoning: bool = False) -> Evaluator:
    """The scorer validation and eval.py share: the data decides what is scored, ``evaluation`` how; ``reasoning``:
    the questions ask for a rationale (a self-trained model), the answer is read after ``Answer:``."""
    return Evaluator(
        formatter,
        dict(datamodule.answer_classes),
        GenerationSettings(max_new_tokens=datamodule.max_new_tokens, **evaluation.generation),
        datamodule.label_scores,
        datamodule.report_metrics,
        OmegaConf.to_container(evaluation.bootstrap, resolve=True),
        evaluation.option_batch_size,
        evaluation.chexbert_weights,
        evaluation.radgraph_weights,
        answer_parts={part: dict(classes) for part, classes in datamodule.answer_parts.items()},
        reasoning=reasoning,
        answer_values=dict(datamodule.answer_values),
    )


def parameter_counts(model: MultimodalLM) -> dict[str, int]:
    """Total, trainable and frozen parameters, plus the trainable count per part."""
    counts = {"params/total": sum(p.numel() for p in model.parameters())}
    counts["params/trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counts["params/frozen"] = counts["params/total"] - counts["params/trainable"]
    for part in ("llm", "encoders", "adapters"):
        counts[f"params/{part}_trainable"] = sum(p.numel() for p in getattr(model, part).parameters() if p.requires_grad)
    counts["params/lora"] = sum(p.numel() for p in model.parameter_groups().get("lora", []))
    return counts
