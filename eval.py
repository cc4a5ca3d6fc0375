"""Score a trained model on a data split: ``python eval.py ckpt=<run | .ckpt | exported folder> [split=test]``.

Writes ``eval.json`` (every metric: accuracy, per-class precision/recall/F1, exact match, label-set
AUROC with bootstrap intervals, report BLEU/ROUGE-L), ``generations.jsonl``, and pictures of the first
records; logs the scalars and a generations table with the pictures to W&B. Answers are generated and
scored by ``mmmed.eval.evaluation.Evaluator``: the code validation runs during training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from mmmed.train.build import build_evaluator
from mmmed.train.datamodule import MultimodalDataModule
from mmmed.eval.evaluation import json_safe, scalar_metrics
from mmmed.infer.inference import MultimodalPredictor, load
from mmmed.eval.metrics import CROP_SEPARATOR
from mmmed.eval.rationale import AskingForReasoning, shown_answer
from mmmed.knowledge.bm25_index import KnowledgeIndex
from mmmed.reasoning.report import MODES as REASONING_MODES, format_table, run_reasoning_eval, split_questions
from mmmed.train.preflight import check_eval_config

log = logging.getLogger("mmmed.eval")
SPLITS = ("train", "val", "test")


def data_config(cfg: DictConfig, predictor: MultimodalPredictor) -> DictConfig:
    """The data to score, reading files with the model's own modality settings: data configs take their
    pipelines from ``modalities.<name>`` (conf/data/*.yaml), which here is what the model was trained with."""
    with open_dict(cfg):
        cfg.modalities = predictor.config["modalities"]
        if cfg.get("data") is None:
            run_config = predictor.run_config
            if run_config is None:
                raise ValueError(f"{cfg.ckpt} is an exported model, which does not record its data: pass data=<name> "
                                 f"(a conf/data file) and its settings, e.g. data.root=...")
            cfg.data = run_config["data"]
    return cfg.data


def evaluate(cfg: DictConfig, predictor: MultimodalPredictor | None = None) -> dict:
    """Score ``cfg.split``; writes eval.json, generations.jsonl and pictures into the output folder."""
    check_eval_config(cfg)  # bad settings fail before the model loads
    if cfg.split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {cfg.split!r}")
    out_dir = Path(cfg.paths.output_dir)
    predictor = predictor or load(cfg.ckpt, cfg.device, cfg.llm_cache_dir, cfg.trust_remote_code,
                                  tuple(cfg.trusted_modules))
    data_cfg = data_config(cfg, predictor)
    if cfg.split not in data_cfg.splits:
        raise ValueError(f"the data config has no {cfg.split!r} split (it has {sorted(data_cfg.splits)})")
    if cfg.reasoning != "none":
        return evaluate_reasoning(cfg, predictor, data_cfg)
    datamodule: MultimodalDataModule = instantiate(data_cfg, seed=cfg.seed)
    datamodule.split_kwargs = {cfg.split: datamodule.split_kwargs[cfg.split]}  # build only the split scored
    datamodule.normalization = predictor.config["normalization"]  # the training split's, never this split's
    datamodule.attach_formatter(predictor.formatter)
    datamodule.prepare_data()
    datamodule.setup("test")
    reasoning = predictor.asks_for_reasoning(cfg.rationale)
    if reasoning:  # a self-trained model: questions ask for its rationale, the answer is read after "Answer:"
        datamodule.splits[cfg.split] = AskingForReasoning(datamodule.splits[cfg.split], predictor.reasoning["instruction"])
        datamodule.max_new_tokens = predictor.reasoning["max_new_tokens"]
    dataset = datamodule.splits[cfg.split]
    evaluator = build_evaluator(predictor.formatter, datamodule, cfg.evaluation, reasoning=reasoning)

    rows = []
    for batch in datamodule.eval_dataloader(cfg.split):
        unread = set(batch["signals"]) - set(predictor.plugins)
        if unread:
            raise ValueError(f"the data holds {sorted(unread)} signals, the model reads {', '.join(predictor.plugins)}")
        batch = _to_device(batch, predictor.device)
        rows += evaluator.batch_rows(predictor.model, batch)
    summary = evaluator.summarize(rows)

    pictures = out_dir / "pictures"
    pictured = 0
    for index, row in enumerate(rows):  # the loader keeps the dataset's order: row i is item i
        if pictured == cfg.num_pictures:
            break
        if CROP_SEPARATOR in row["id"] and not row["id"].endswith(f"{CROP_SEPARATOR}0"):
            continue  # one picture per record
        inputs = dataset.plot_inputs(index)  # {"kind": <modality>, ...}: its plugin draws it
        row["picture"] = str(predictor.plugins[inputs["kind"]].draw(inputs, pictures / f"{index:05d}.png",
                                                                      question=row["question"],
                                                                      reference=row["reference"],
                                                                      answer=shown_answer(row, cfg.show_reasoning)))
        pictured += 1

    report = {"ckpt": str(cfg.ckpt), "split": cfg.split, "asked_for_reasoning": reasoning, "data": data_cfg.dataset._target_,
              "num_rows": len(rows), "metrics": summary, "data_stats": datamodule.data_stats()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(json_safe(report), indent=2))
    with (out_dir / "generations.jsonl").open("w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    _log_to_loggers(cfg, summary, rows)
    return report


def evaluate_reasoning(cfg: DictConfig, predictor: MultimodalPredictor, data_cfg: DictConfig) -> dict:
    """``reasoning=sample | uncertainty_search``: the rows of mmmed/reasoning/measure.py on ``cfg.split``
    (the threshold calibrated on ``val``); writes reasoning.json and reasoning.png, returns the report."""
    if cfg.reasoning not in REASONING_MODES:
        raise ValueError(f"reasoning must be one of {REASONING_MODES}, not {cfg.reasoning!r}")
    calibrating = cfg.reasoning == "uncertainty_search" and cfg.search.threshold == "calibrate"
    if calibrating and cfg.split == "val":
        raise ValueError("search.threshold=calibrate chooses the threshold on the validation split: score split=test, "
                         "or give search.threshold=<bits> to score val")
    if cfg.reasoning == "uncertainty_search":
        KnowledgeIndex.load(cfg.search.index)  # a missing or corrupt index fails before any answer is sampled
    datamodule: MultimodalDataModule = instantiate(data_cfg, seed=cfg.seed)
    wanted = [cfg.split] + (["val"] if calibrating else [])
    datamodule.split_kwargs = {name: datamodule.split_kwargs[name] for name in wanted}
    datamodule.normalization = predictor.config["normalization"]  # the training split's
    datamodule.attach_formatter(predictor.formatter)
    datamodule.prepare_data()
    datamodule.setup("test")
    test = split_questions(datamodule.splits[cfg.split], cfg.split)
    val = split_questions(datamodule.splits["val"], "val") if calibrating else None
    report = run_reasoning_eval(cfg.reasoning, OmegaConf.to_container(cfg.search, resolve=True), predictor, test, val,
                                predictor.config["answer_classes"], datamodule.max_new_tokens,
                                Path(cfg.paths.output_dir))
    report["ckpt"], report["split"] = str(cfg.ckpt), cfg.split
    return report


def _to_device(batch: dict, device: torch.device) -> dict:
    def move(value):
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        return value

    return {key: move(value) for key, value in batch.items()}


def _log_to_loggers(cfg: DictConfig, summary: dict, rows: list[dict]) -> None:
    """Scalars as ``<split>/<metric>``, and on W&B a generations table whose pictures are images."""
    scalars = {f"{cfg.split}/{key}": value for key, value in scalar_metrics(summary).items()}
    for entry in (cfg.get("logger") or {}).values():
        if entry is None or "_target_" not in entry:
            continue
        logger = instantiate(entry)
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        logger.log_metrics(scalars, step=0)
        if isinstance(logger, WandbLogger):
            import wandb

            table = [[r["id"], r["question"], r["reference"], r["answer"],
                      wandb.Image(r["picture"]) if "picture" in r else None] for r in rows[: cfg.evaluation.num_logged_samples]]
            logger.log_table(f"{cfg.split}/generations", columns=["id", "question", "reference", "answer", "picture"],
                             data=table)
        logger.finalize("success")


@hydra.main(config_path="pkg://mmmed_conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the split's accuracy (for sweepers)."""
    try:
        report = evaluate(cfg)
    finally:
        import wandb  # a crashed run must still close its W&B files

        if wandb.run is not None:
            wandb.finish()
    if cfg.reasoning != "none":
        print(format_table(report))
        print(f"\nreasoning    {Path(cfg.paths.output_dir) / 'reasoning.json'} (and reasoning.png)")
        return report["rows"]["sample" if cfg.reasoning == "sample" else "uncertainty"]["accuracy"]
    metrics = report["metrics"]
    for key, value in scalar_metrics(metrics).items():
        print(f"{cfg.split}/{key:<14} {value:.4f}")
    if "auroc" in metrics:
        low, high = metrics["auroc"]["macro_auroc_ci"]
        print(f"{cfg.split}/macro_auroc CI  [{low:.4f}, {high:.4f}] ({metrics['auroc']['bootstrap']['confidence']:.0%})")
    for metric, reason in metrics.get("skipped", {}).items():
        print(f"skipped {metric}: {reason}")
    print(f"\neval         {Path(cfg.paths.output_dir) / 'eval.json'}")
    return metrics.get("accuracy")


if __name__ == "__main__":
    main()
