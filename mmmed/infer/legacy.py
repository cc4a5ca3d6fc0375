"""Load what earlier releases saved: 0.1 (one modality per run, named in the config, its file pipeline in the data
config) and models saved before mmmed/ and datasets/ were split into subpackages (their classes' old module paths).

The map from old to new names lives in ``conf/legacy.yaml`` (configuration, not code): which plugin class
reads each 0.1 modality now, and the modules that moved. Each plugin class turns the 0.1 pipeline
settings into its own constructor arguments (``legacy_settings``), so this module names no modality.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any, Callable

import yaml

from mmmed.config_dir import config_dir

EXPORT_FORMAT = 2  # mmmed_config.json's format: 2 = modalities by name (0.1 folders have none)


@lru_cache(maxsize=1)
def legacy_map() -> dict[str, Any]:
    """``conf/legacy.yaml`` as a dict (read once)."""
    return yaml.safe_load((config_dir() / "legacy.yaml").read_text())


def renamed(path: str) -> str:
    """A dotted path ``module.name`` as it is called now: ``mmmed.adapters.MLPProjector`` ->
    ``mmmed.model.adapters.MLPProjector`` when ``module`` is an old module in ``renames``; else unchanged. Only
    the module part is looked up, so a path that is already new (``mmmed.model.adapters.X``: ``mmmed.model`` was a
    module and is now a package) is never renamed twice."""
    module, _, name = path.rpartition(".")
    new = legacy_map()["renames"].get(module)
    return path if new is None else f"{new}.{name}"


def renamed_paths(node: Any) -> Any:
    """A saved config with every string that is a dotted path into a moved module renamed (dicts and lists walked)."""
    if isinstance(node, dict):
        return {key: renamed_paths(value) for key, value in node.items()}
    if isinstance(node, list):
        return [renamed_paths(value) for value in node]
    return renamed(node) if isinstance(node, str) and "." in node and " " not in node else node


def _plugin_node(name: str, old_pipeline: dict, trainable: bool, net: dict,
                 resolve: Callable[[str], Callable[..., Any]]) -> dict:
    target = legacy_map()["modalities"].get(name)
    if target is None:
        raise ValueError(f"a 0.1 model of modality {name!r}: conf/legacy.yaml names no plugin for it")
    settings = resolve(target).legacy_settings(old_pipeline)
    return {"_target_": target, "name": name, "description": "", "trainable": trainable,
            "net": dict(net), **settings}


def upgrade_run_config(cfg: dict, normalization: dict | None,
                       resolve: Callable[[str], Callable[..., Any]]) -> tuple[dict, dict | None]:
    """A 0.1 training run config (``encoder: {modality, net}``) as today's (``modalities: {name: plugin}``), and
    its data module's normalisation keyed by modality; dotted paths into moved modules are renamed (a copy)."""
    cfg = renamed_paths(cfg)
    if "modalities" in cfg:
        return cfg, normalization
    cfg = copy.deepcopy(cfg)
    encoder = cfg.pop("encoder")
    name = encoder["modality"]
    dataset = cfg["data"]["dataset"]
    images = dataset.get("images")
    old_pipeline = {  # what a 0.1 export stored, from where a 0.1 run kept it
        "ecg_preprocessing": _kwargs(dataset["preprocessing"]) if dataset.get("preprocessing") else None,
        "xray_images": _kwargs(images, ("_target_", "cache_dir", "workers")) if images else None,
    }
    trainable = bool(encoder.get("trainable", cfg["stage"].get("train_encoder", True)))
    cfg["modalities"] = {name: _plugin_node(name, old_pipeline, trainable, encoder["net"], resolve)}
    return cfg, _by_modality(normalization, name)


def upgrade_export_config(config: dict, resolve: Callable[[str], Callable[..., Any]]) -> dict:
    """A 0.1 ``mmmed_config.json`` (one ``modality``) in today's format; files keep their 0.1 names (``weight_files``).
    Dotted paths into moved modules are renamed (a copy)."""
    config = renamed_paths(config)
    if config.get("format") == EXPORT_FORMAT:
        return config
    config = copy.deepcopy(config)
    name = config.pop("modality")
    encoder = config.pop("encoder")
    node = _plugin_node(name, config, True, {"_target_": encoder["class"], **encoder["kwargs"]}, resolve)
    node["trainable"] = False  # inference: nothing trains
    config.update(
        format=EXPORT_FORMAT,
        modalities={name: node},
        num_tokens={name: config["num_tokens"]},
        placeholder_ids={name: config.pop("placeholder_id")},
        normalization=_by_modality(config.get("normalization"), name),
        weight_files={"encoders": {name: "encoder.safetensors"}, "adapters": {name: "adapter.safetensors"}},
    )
    config["adapter"]["in_dims"] = {name: config["adapter"].pop("in_dim")}
    for key in ("placeholder", "ecg_preprocessing", "xray_images"):
        config.pop(key, None)
    return config


def _by_modality(normalization: dict | None, name: str) -> dict | None:
    """0.1 saved one modality's statistics bare; today they are keyed by modality."""
    return None if normalization is None else {name: normalization}


def _kwargs(node: dict, drop: tuple[str, ...] = ("_target_", "_partial_")) -> dict:
    return {key: value for key, value in node.items() if key not in drop}
