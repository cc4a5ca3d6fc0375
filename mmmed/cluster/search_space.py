"""One search space for both sweepers: conf/sweep/<name>.yaml (W&B's sweep format) as Optuna's ``params``.

``python train.py -m hydra/sweeper=optuna_sweep +search=<name>`` searches, offline and without a server, what
``wandb sweep conf/sweep/<name>.yaml`` searches: conf/hydra/sweeper/optuna_sweep.yaml reads its ``params``
from :func:`optuna_params`.
"""

from __future__ import annotations

import yaml

from mmmed.config_dir import config_dir

SWEEPS = config_dir() / "sweep"  # the installed conf/sweep (a wheel has it too)


def load_sweep(name: str) -> dict:
    """The W&B sweep config ``conf/sweep/<name>.yaml``."""
    path = SWEEPS / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"No sweep {path}; available: {sorted(p.stem for p in SWEEPS.glob('*.yaml'))}")
    return yaml.safe_load(path.read_text())


def _optuna_param(name: str, spec: dict) -> str | int | float | bool:
    """One W&B parameter as a Hydra sweep override value, which the Optuna sweeper turns into a distribution."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return "choice(" + ", ".join(str(v) for v in spec["values"]) + ")"
    distribution = spec.get("distribution")
    low, high = spec.get("min"), spec.get("max")
    if distribution is None and isinstance(low, int) and isinstance(high, int):
        distribution = "int_uniform"
    if distribution in (None, "uniform"):
        return f"interval({float(low)}, {float(high)})"
    if distribution == "int_uniform":
        return f"int(interval({low}, {high}))"
    if distribution == "log_uniform_values":
        return f"tag(log, interval({float(low)}, {float(high)}))"
    raise ValueError(f"sweep parameter {name}: W&B distribution {distribution!r} has no Optuna counterpart here "
                     "(supported: value, values, uniform, int_uniform, log_uniform_values)")


def optuna_params(name: str) -> dict[str, str | int | float | bool]:
    """``hydra.sweeper.params`` for conf/sweep/<name>.yaml. ``logger.*`` and ``hydra.*`` settings are left
    out: they say where a W&B agent's runs report and write; an Optuna search runs offline, in its sweep dir."""
    sweep = load_sweep(name)
    metric = sweep.get("metric", {})
    if (metric.get("name"), metric.get("goal")) != ("val/accuracy", "maximize"):
        raise ValueError(f"conf/sweep/{name}.yaml: the Optuna sweeper maximises what train.py returns, "
                         f"val/accuracy; the sweep's metric is {metric}")
    return {key: _optuna_param(key, spec) for key, spec in sweep["parameters"].items()
            if not key.startswith(("logger.", "hydra."))}
