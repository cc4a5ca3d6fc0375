"""Self-train a multimodal medical LLM on its own rationales: ``python selftrain.py`` (see conf/selftrain.yaml).

Rounds of sample -> filter -> write -> fine-tune -> evaluate (``mmmed/selftrain/loop.py``); writes
``selftrain.json`` and ``selftrain.png`` with the final, seed-only and answer-only rows. Killed, the same command
continues where it stopped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from mmmed.cluster.job_sizes import register_resolvers
from mmmed.train.preflight import check_train_config

log = logging.getLogger("mmmed.selftrain")
register_resolvers()
RUN_CONFIG = "selftrain_config.json"


def check_same_run(cfg: DictConfig, out: Path) -> None:
    """A folder holds one self-training run: resuming it with other settings would mix two runs' work."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("paths", None)
    config.pop("logger", None)  # where logs go does not change the work
    path = out / RUN_CONFIG
    if path.exists():
        saved = json.loads(path.read_text())
        differ = sorted(key for key in set(saved) | set(config) if saved.get(key) != config.get(key))
        if differ:
            raise ValueError(f"{out} holds a self-training run with other settings (differing: {', '.join(differ)}); "
                             f"resume with the same settings or choose another hydra.run.dir")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2))


def selftrain(cfg: DictConfig) -> dict:
    """Run (or continue) the self-training rounds; returns the report written to selftrain.json."""
    check_train_config(cfg)
    from mmmed.selftrain.loop import SelfTraining
    from mmmed.train.build import build_run
    from mmmed.train.preflight import check_plugin_settings, run_checks

    run_checks(cfg, (check_plugin_settings,))
    out = Path(cfg.paths.output_dir)
    check_same_run(cfg, out)
    import lightning as L

    L.seed_everything(cfg.seed, workers=True)
    report = SelfTraining(cfg, build_run(cfg)).run_rounds()
    print(f"\nreport       {out / 'selftrain.json'} (plot: selftrain.png)")
    for name, row in report["rows"].items():
        ci = row.get("test_ci95") or [float("nan")] * 2
        print(f"{name:<22} test accuracy {row['test_accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] "
              f"after {row['steps']} steps (val {row['val_accuracy']:.3f})")
    return report


@hydra.main(config_path="pkg://mmmed_conf", config_name="selftrain", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the final row's validation accuracy for sweepers."""
    try:
        report = selftrain(cfg)
    finally:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    return report["rows"]["final"]["val_accuracy"]


if __name__ == "__main__":
    main()
