"""Pre-flight: check a composed config before anything heavy (LLM, data, Trainer) is built.

Each check takes the composed config and returns a list of problems, each one starting with the dotted
setting it is about and saying what to do. ``check_train_config`` (train.py), ``check_eval_config``
(eval.py) and ``check_predict_config`` (predict.py) run their lists and raise one ``ConfigError``
naming every problem found. Unknown group options (``encoder=foo``, ``model=huge``) never get here:
Hydra refuses them while composing, listing the available options.

Only omegaconf is imported at module level: torch, transformers (mmmed.model.prompts) and mmmed.model.lora load inside
the checks that need them, so an entry point can run these checks before its heavy imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

Check = Callable[[DictConfig], list[str]]

# ckpt_path values Lightning resolves itself (trainer.fit(ckpt_path=...)); not files. As mmmed/train/checkpoint_io.py
# verified_resume passes them through.
LIGHTNING_CKPT_NAMES = ("last", "hpc", "best")
# Question templates in data.dataset whose tags must be the encoder's, if any (conf/data/*.yaml).
TEMPLATE_KEYS = ("question", "single_template", "comparison_template")
HALF_DTYPES = ("bfloat16", "float16")


class ConfigError(ValueError):
    """Every problem a pre-flight check found, one line each, naming its setting."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{len(self.problems)} config problem(s), found before anything was built:\n{lines}")


def _value(cfg: DictConfig, key: str) -> Any:
    """The resolved value at a dotted key, or None when the key is absent (``???`` counts as absent)."""
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_ints(cfg: DictConfig, keys: tuple[str, ...], what: dict[str, str]) -> list[str]:
    """Problems for each present key whose value is not an integer >= 1."""
    problems = []
    for key in keys:
        value = _value(cfg, key)
        if value is not None and not (_is_int(value) and value >= 1):
            problems.append(f"{key}={value!r}: must be an integer >= 1 ({what[key]}).")
    return problems


def _missing_path(key: str, value: str, hint: str) -> str:
    return f"{key}={value}: no such file or folder. {hint}"


# ---------------------------------------------------------------------------------------------- train


def check_data_roots(cfg: DictConfig) -> list[str]:
    """``data.root`` and ``data.dataset.*_root`` are set, and exist unless ``data.prepare`` generates them (demos)."""
    dataset = cfg.data.get("dataset") or {}
    # An interpolated root (chexpert's image_root: ${..root}/..) follows a setting checked itself.
    keys = ["data.root"] + [f"data.dataset.{k}" for k in dataset
                            if str(k).endswith("_root") and not OmegaConf.is_interpolation(dataset, k)]
    generated = _value(cfg, "data.prepare") is not None  # demo data is written on first use
    problems = []
    for key in keys:
        value = _value(cfg, key)
        if value is None:
            problems.append(f"{key} is not set: point it at the data set's folder, e.g. {key}=/data/<data set>.")
        elif not generated and not Path(str(value)).exists():
            problems.append(_missing_path(key, value, "Point it at the data set's folder (the header of "
                                          "conf/data/<name>.yaml says which one), or use a *_demo data config."))
    return problems


def check_batch_and_lengths(cfg: DictConfig) -> list[str]:
    """Batch sizes, sequence lengths and generation budgets are positive; worker counts are not negative."""
    problems = _positive_ints(cfg, ("data.batch_size", "data.eval_batch_size", "data.max_length", "data.max_new_tokens"), {
        "data.batch_size": "training samples per device and step",
        "data.eval_batch_size": "samples per validation/test batch",
        "data.max_length": "tokens per sample",
        "data.max_new_tokens": "tokens generated per answer",
    })
    workers = _value(cfg, "data.num_workers")
    if workers is not None and not (_is_int(workers) and workers >= 0):
        problems.append(f"data.num_workers={workers!r}: must be an integer >= 0 (0 loads batches in the main process).")
    return problems


def check_trainer_length(cfg: DictConfig) -> list[str]:
    """The run stops (max_steps >= 1, or -1 with a max_epochs), validates at a valid interval, accumulates >= 1."""
    problems = []
    steps, epochs = _value(cfg, "trainer.max_steps"), _value(cfg, "trainer.max_epochs")
    if not _is_int(steps) or steps == 0 or steps < -1:
        problems.append(f"trainer.max_steps={steps!r}: must be an integer >= 1 (optimizer steps to train), "
                        f"or -1 to stop after trainer.max_epochs.")
    elif steps == -1 and (epochs is None or epochs == -1):
        # The cosine schedule needs a finite length (trainer.estimated_stepping_batches).
        problems.append(f"trainer.max_steps=-1 with trainer.max_epochs={epochs!r} never stops: set trainer.max_steps "
                        f"(e.g. 300) or trainer.max_epochs >= 1.")
    interval = _value(cfg, "trainer.val_check_interval")
    if interval is not None:
        valid = (_is_int(interval) and interval >= 1) or (isinstance(interval, float) and 0.0 < interval <= 1.0)
        if not valid:
            problems.append(f"trainer.val_check_interval={interval!r}: must be an integer >= 1 (training batches "
                            f"between validations) or a fraction of an epoch in (0, 1].")
    problems += _positive_ints(cfg, ("trainer.accumulate_grad_batches", "trainer.log_every_n_steps"), {
        "trainer.accumulate_grad_batches": "batches per optimizer step",
        "trainer.log_every_n_steps": "steps between logged values",
    })
    return problems


def check_trainer_devices(cfg: DictConfig) -> list[str]:
    """``trainer.devices`` is a usable count, and a GPU accelerator is only asked for where CUDA is visible."""
    devices, accelerator = _value(cfg, "trainer.devices"), _value(cfg, "trainer.accelerator")
    if _is_int(devices) and (devices == 0 or devices < -1):
        return [f"trainer.devices={devices}: must be >= 1, or -1 / auto for all devices."]
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            return [f"trainer.accelerator={accelerator}: no CUDA GPU is visible on this machine. Use trainer=default "
                    f"(CPU here) or run where a GPU is."]
        if _is_int(devices) and devices > torch.cuda.device_count():
            return [f"trainer.devices={devices}: only {torch.cuda.device_count()} CUDA GPU(s) are visible here."]
    return []


def check_learning_rates(cfg: DictConfig) -> list[str]:
    """Every ``param_groups.<part>.lr`` (and ``optimizer.lr`` if set) is a number > 0; weight decay is >= 0."""
    problems = []
    for part, group in (cfg.get("param_groups") or {}).items():
        lr, decay = group.get("lr"), group.get("weight_decay")
        if not (_is_number(lr) and lr > 0):
            problems.append(f"param_groups.{part}.lr={lr!r}: must be a number > 0 (e.g. 1.0e-3). To keep a part "
                            f"frozen choose the stage (stage=align|instruct|full), not a zero learning rate.")
        if decay is not None and not (_is_number(decay) and decay >= 0):
            problems.append(f"param_groups.{part}.weight_decay={decay!r}: must be a number >= 0.")
    lr = _value(cfg, "optimizer.lr")
    if lr is not None and not (_is_number(lr) and lr > 0):
        problems.append(f"optimizer.lr={lr!r}: must be a number > 0; the learning rates live in param_groups.<part>.lr.")
    return problems


def _resume_finds_another(cfg: DictConfig, ckpt_path: str) -> bool:
    """Whether train.py resumes from something else than a missing ``ckpt_path``: a requeued SLURM job's own
    checkpoint, or (``resume_corrupt=previous``) the newest valid checkpoint in its folder."""
    if cfg.get("resume_corrupt") == "previous" and Path(ckpt_path).parent.is_dir():
        return True  # mmmed/train/checkpoint_io.py decides, and says so if that folder holds none
    from mmmed.cluster.slurm import resume_from  # imports lightning: only on this rare path

    return resume_from(ckpt_path, Path(cfg.paths.output_dir)) == "hpc"


def check_checkpoints(cfg: DictConfig) -> list[str]:
    """``ckpt_path`` and ``init_from`` exist, at most one of them is set, and ``resume_corrupt`` is a known choice."""
    ckpt_path, init_from = cfg.get("ckpt_path"), cfg.get("init_from")
    problems = []
    if ckpt_path and init_from:
        problems.append("ckpt_path and init_from are both set: init_from starts a new stage from trained weights, "
                        "ckpt_path resumes a run. Choose one.")
    if (ckpt_path and ckpt_path not in LIGHTNING_CKPT_NAMES and not Path(ckpt_path).is_file()
            and not _resume_finds_another(cfg, ckpt_path)):
        problems.append(_missing_path("ckpt_path", ckpt_path, "Give a Lightning checkpoint, e.g. "
                                      "<run>/checkpoints/last.ckpt, or ckpt_path=null to start fresh."))
    on_corrupt = cfg.get("resume_corrupt")
    if on_corrupt not in ("error", "previous"):
        problems.append(f"resume_corrupt={on_corrupt!r}: must be error or previous (conf/train.yaml).")
    if init_from and not Path(init_from).is_file():
        problems.append(_missing_path("init_from", init_from, "Give an earlier stage's checkpoint, e.g. "
                                      "<align run>/checkpoints/last.ckpt."))
    return problems


def check_stage_and_llm(cfg: DictConfig) -> list[str]:
    """A stage that trains the LLM loads it in float32; QLoRA only where CUDA and bitsandbytes are."""
    problems = []
    stage, dtype = cfg.stage, _value(cfg, "model.llm.dtype")
    if stage.get("train_llm") and dtype in HALF_DTYPES:
        problems.append(
            f"model.llm.dtype={dtype} with stage={stage.name}: this stage trains the LLM's own weights, and in "
            f"{dtype} most small updates would round away. Set model.llm.dtype=float32 (fp32 master weights; on a "
            f"GPU keep trainer.precision=bf16-mixed for speed)."
        )
    lora = stage.get("lora")
    if lora and lora.get("quantize_4bit"):
        from mmmed.model.lora import check_quantization_possible

        try:
            check_quantization_possible()
        except RuntimeError as err:
            message = str(err)  # lora.py's own words; they may already name the setting
            problems.append(message if message.startswith("stage.lora.quantize_4bit") else f"stage.lora.quantize_4bit=true: {message}")
    return problems


def check_modalities(cfg: DictConfig) -> list[str]:
    """At least one modality, and each ``modalities.<key>`` names itself ``<key>`` (its tag is ``<key>``)."""
    modalities = _value(cfg, "modalities")
    if not modalities:
        return ["modalities is empty: choose what the model reads, e.g. modality=[ecg] or modality=[ecg,xray]."]
    problems = []
    for key in modalities:
        name = _value(cfg, f"modalities.{key}.name")
        if name != key:
            problems.append(f"modalities.{key}.name={name!r}: must be {key!r} (the tag is <{key}>).")
    return problems


def check_plugin_settings(cfg: DictConfig) -> list[str]:
    """Each modality plugin's class finds its own settings consistent (``ModalityPlugin.config_problems``: an ECG
    encoder's ``in_leads`` against the pipeline's leads, ...). Imports the plugins' modules (torch with them), so
    ``build_run`` runs it before the LLM loads, after the light checks of train.py."""
    from hydra.utils import get_class

    problems = []
    for key in _value(cfg, "modalities") or {}:
        node = OmegaConf.to_container(cfg.modalities[key], resolve=True)
        try:
            plugin = get_class(node["_target_"])
        except Exception as err:  # noqa: BLE001 - any import failure is the user's config problem here
            problems.append(f"modalities.{key}._target_={node.get('_target_')!r} cannot be imported: {err}")
            continue
        problems += plugin.config_problems(node, f"modalities.{key}")
    return problems


def check_one_recipe(cfg: DictConfig) -> list[str]:
    """``encoder=`` picks one one-modality recipe; a list would silently keep only the last one's modality."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    if "encoder" in HydraConfig.get().runtime.choices:  # Hydra records no choice for a list
        return []
    return ["encoder=[...]: encoder= takes one recipe (ecg | xray). For a model that reads several modalities, list "
            "them with modality=[ecg,xray] and choose data of patient records (data=patient_manifest, or "
            "experiment=patient_demo for the demo)."]


def check_question_tags(cfg: DictConfig) -> list[str]:
    """No question template in ``data.dataset`` names a modality the run does not read (``<xray>`` for an ECG
    model); an untagged template is fine: the ChatFormatter puts the signals first (mmmed/model/prompts.py)."""
    names = list(_value(cfg, "modalities") or {})
    dataset = cfg.data.get("dataset") or {}
    from mmmed.model.prompts import TAG_SHAPE, Modality

    tags = {Modality(str(name), 1).tag for name in names}  # the tags the ChatFormatter expands
    problems = []
    for key in TEMPLATE_KEYS:
        template = dataset.get(key)
        strangers = sorted(set(TAG_SHAPE.findall(str(template))) - tags) if template is not None else []
        if strangers:
            problems.append(f"data.dataset.{key}={str(template)!r} has tag(s) {', '.join(strangers)} but the run "
                            f"reads {', '.join(sorted(tags)) or 'no modality'} (modality=[...]): write a tag the run "
                            f"reads where the signal belongs (or no tag: the signals then go first), or choose a data "
                            f"config for these modalities.")
    return problems


TRAIN_CHECKS: tuple[Check, ...] = (
    check_data_roots,
    check_batch_and_lengths,
    check_trainer_length,
    check_trainer_devices,
    check_learning_rates,
    check_checkpoints,
    check_stage_and_llm,
    check_one_recipe,
    check_modalities,
    check_question_tags,
)


# ---------------------------------------------------------------------------------------- eval, predict


def check_model_source(cfg: DictConfig) -> list[str]:
    """``ckpt`` is set and names an existing run folder, ``.ckpt`` file or exported folder."""
    if OmegaConf.is_missing(cfg, "ckpt") or cfg.ckpt is None:
        return ["ckpt is not set: pass ckpt=<run folder | .ckpt | exported folder>."]
    if not Path(str(cfg.ckpt)).exists():
        return [_missing_path("ckpt", cfg.ckpt, "Give a training run folder, a .ckpt file or an exported folder.")]
    return []


def check_eval_data(cfg: DictConfig) -> list[str]:
    """The split is one eval.py scores; a data config given names existing folders and positive batch sizes."""
    problems = []
    if cfg.split not in ("train", "val", "test"):
        problems.append(f"split={cfg.split!r}: split must be one of train, val, test.")
    if cfg.get("data") is not None:  # null: the checkpoint's own data settings, checked when it loads
        problems += check_data_roots(cfg) + check_batch_and_lengths(cfg)
    return problems


def check_predict_inputs(cfg: DictConfig) -> list[str]:
    """Exactly one of ``input``/``manifest``, existing; positive batch sizes; valid generation settings."""
    problems = []
    if (cfg.input is None) == (cfg.manifest is None):
        problems.append("input and manifest: give exactly one of input=<file> or manifest=<csv>.")
    if cfg.input is not None:
        path = Path(str(cfg.input))
        if not (path.exists() or path.with_name(path.name + ".hea").is_file()):  # WFDB records are named without suffix
            problems.append(_missing_path("input", cfg.input, "Give a WFDB record (path without .hea), an ECG .dcm "
                                          "or a radiograph."))
    if cfg.manifest is not None and not Path(str(cfg.manifest)).is_file():
        problems.append(_missing_path("manifest", cfg.manifest, "Give a CSV with columns input,question[,options][,reference]."))
    problems += _positive_ints(cfg, ("batch_size", "option_batch_size", "generation.num_samples"), {
        "batch_size": "encoder inputs per generation batch",
        "option_batch_size": "answer options per forward pass",
        "generation.num_samples": "answers sampled per question",
    })
    tokens = _value(cfg, "generation.max_new_tokens")  # null: the training data's budget
    if tokens is not None and not (_is_int(tokens) and tokens >= 1):
        problems.append(f"generation.max_new_tokens={tokens!r}: must be an integer >= 1, or null for the training budget.")
    if _value(cfg, "generation.do_sample"):
        temperature, top_p = _value(cfg, "generation.temperature"), _value(cfg, "generation.top_p")
        if not (_is_number(temperature) and temperature > 0):
            problems.append(f"generation.temperature={temperature!r}: must be > 0 when sampling.")
        if not (_is_number(top_p) and 0 < top_p <= 1):
            problems.append(f"generation.top_p={top_p!r}: must be in (0, 1] when sampling.")
    return problems


EVAL_CHECKS: tuple[Check, ...] = (check_model_source, check_eval_data)
PREDICT_CHECKS: tuple[Check, ...] = (check_model_source, check_predict_inputs)


def run_checks(cfg: DictConfig, checks: tuple[Check, ...]) -> None:
    """Run every check and raise one ConfigError listing all their problems; return quietly if none."""
    problems = []
    for check in checks:
        try:
            problems += check(cfg)
        except OmegaConfBaseException as err:  # an interpolation that cannot resolve, a wrongly typed node
            problems.append(f"{check.__name__}: the config could not be read: {err}")
    if problems:
        raise ConfigError(problems)


def check_train_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming every bad setting of a composed train.yaml, before the LLM or data load."""
    run_checks(cfg, TRAIN_CHECKS)


def check_eval_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming every bad setting of a composed eval.yaml, before the model loads."""
    run_checks(cfg, EVAL_CHECKS)


def check_predict_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming every bad setting of a composed predict.yaml, before the model loads."""
    run_checks(cfg, PREDICT_CHECKS)
