"""Train a multimodal medical LLM adapter: ``python train.py encoder=ecg`` (see conf/train.yaml)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mmmed.cluster.job_sizes import register_resolvers
from mmmed.train.preflight import check_train_config

# Only light imports above this line: a bad setting is reported in about a second, before Lightning,
# torch and transformers load (several seconds); train() imports them after the pre-flight check.
log = logging.getLogger("mmmed.train")
register_resolvers()  # conf/hydra/launcher/slurm.yaml sizes jobs with them


def _instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every ``_target_`` entry of a config group (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry]


def untied(state: dict) -> tuple[dict, dict[str, str]]:
    """Tensors to save once each, and ``{alias: saved name}`` for tied ones (an LLM's embeddings and
    LM head in full fine-tuning): safetensors refuses two names for one storage."""
    out, tied, seen = {}, {}, {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        out[name] = tensor.detach().cpu().contiguous()
    return out, tied


def train(cfg: DictConfig) -> dict:
    """Fit, test the best weights, and write metrics.json and trainable.safetensors; returns the metrics."""
    check_train_config(cfg)  # bad settings fail here, in milliseconds, before the LLM or data load
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from safetensors.torch import save_file

    from mmmed.cluster import slurm
    from mmmed.train.build import build_run, parameter_counts
    from mmmed.train.checkpoint_io import verified_resume
    from mmmed.eval.evaluation import json_safe
    from mmmed.train.preflight import check_plugin_settings, run_checks

    run_checks(cfg, (check_plugin_settings,))  # each modality's own settings: its plugin's module is loaded now
    out_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    on_cluster = slurm.prepare(cfg, out_dir)  # SLURM requeue + environment; the W&B run id kept in out_dir
    # Checked before minutes of loading: a truncated or altered checkpoint stops here or, with
    # resume_corrupt=previous, gives way to the newest valid one beside it.
    resume = verified_resume(slurm.resume_from(cfg.get("ckpt_path"), out_dir), cfg.resume_corrupt)
    run = build_run(cfg)
    callbacks = _instantiate_group(cfg.get("callbacks")) + on_cluster["callbacks"]
    loggers = _instantiate_group(cfg.get("logger"))
    log.info("Trainer: %s", cfg.trainer._target_)
    # The config's plugins (the atomic, checksummed checkpoint writer) and, on SLURM, its environment.
    plugins = [instantiate(plugin) for plugin in cfg.trainer.get("plugins") or []] + on_cluster["plugins"]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)

    counts = parameter_counts(run.module.model)
    log.info("Parameters: %s", ", ".join(f"{k.split('/')[1]}={v:,}" for k, v in counts.items()))
    for logger in loggers:
        logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), **counts})

    if cfg.get("init_from"):
        run.module.init_from_checkpoint(cfg.init_from)
    started = time.perf_counter()
    # weights_only: a checkpoint is data; unpickling one must never be able to run code.
    trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=resume, weights_only=True)
    # The ModelCheckpoint callback, if any (on SLURM the requeue callback is a Checkpoint callback too).
    saver = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
    if saver is not None:
        # ModelCheckpoint saves at validations; a run stopping between two must not lose its last steps.
        trainer.save_checkpoint(Path(saver.dirpath) / "last.ckpt")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    metrics["train_seconds"] = round(time.perf_counter() - started, 1)

    best = saver.best_model_path if saver is not None else ""
    weights_from = "end of fit"  # val/* above describe the last validation of these weights
    if cfg.get("test_after_fit"):
        trainer.test(run.module, datamodule=run.datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        weights_from = best or weights_from  # testing loaded the best checkpoint into the module
    metrics.update(counts)
    data_stats = run.datamodule.data_stats()
    if data_stats:
        log.info("Data: %s", ", ".join(f"{k[5:]}={v}" for k, v in data_stats.items()))
        for logger in loggers:
            logger.log_metrics(data_stats, step=trainer.global_step)
    metrics.update(data_stats)
    metrics["weights_from"] = weights_from

    # Every rank takes part: sharding strategies (FSDP2) gather the weights collectively, onto rank 0.
    gathered = trainer.strategy.lightning_module_state_dict()  # {"model.<key>": tensor}, as in checkpoints
    trained = list(run.module.model.trainable_state_dict())
    if trainer.is_global_zero:
        ckpt_dir = out_dir / "checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        weights = ckpt_dir / "trainable.safetensors"
        state, tied = untied({k: gathered[f"model.{k}"] for k in trained})
        save_file(state, weights, metadata={"llm": run.llm.identity, "weights_from": weights_from, "tied": json.dumps(tied)})
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if run.datamodule.normalization is not None:  # also inside every checkpoint
            (out_dir / "data_normalization.json").write_text(json.dumps(run.datamodule.normalization, indent=2))
        for split, rows in run.module.generations.items():
            with (out_dir / f"generations_{split}.jsonl").open("w") as handle:
                handle.writelines(json.dumps(row) + "\n" for row in rows)
        for split, summary in run.module.summaries.items():  # every metric of the last evaluation, as eval.py writes
            (out_dir / f"eval_{split}.json").write_text(json.dumps(json_safe(summary), indent=2))
        print(f"\nmetrics      {out_dir / 'metrics.json'}")
        print(f"checkpoint   {best or ckpt_dir / 'last.ckpt'}")
        print(f"weights      {weights}")
        print(f"answers      {out_dir}/generations_{{val,test}}.jsonl (metrics: eval_{{val,test}}.json)")
        for key in ("val/accuracy", "test/accuracy"):
            if key in metrics:
                print(f"{key:<12} {metrics[key]:.3f}")
    return metrics


@hydra.main(config_path="pkg://mmmed_conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns validation accuracy for sweepers."""
    try:
        metrics = train(cfg)
    finally:
        import wandb  # a crashed run must still close its W&B files

        if wandb.run is not None:
            wandb.finish()
    return metrics.get("val/accuracy")


if __name__ == "__main__":
    main()
