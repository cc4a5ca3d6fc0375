"""Load a trained model (exported folder, run folder or checkpoint) and answer questions about patient records.

A record is one file or several (an ECG, a chest X-ray, ...): each file is read by the modality plugin that
claims it (``mmmed/model/modality.py``), prepared exactly as in training.

Loading needs neither Hydra nor the training code, and never unpickles: weights are safetensors, the
configuration is JSON, and the classes it names are imported only from mmmed's own packages
(``mmmed.infer.trust``, plus plugin packages the caller trusts by name). Code from an LLM's repository runs only when the caller passes
``trust_remote_code=True``.

    from mmmed.infer.inference import load
    predictor = load("exported/ecg-nano")      # or a training run folder, or a .ckpt file
    predictor.answer("<ecg>\\nWhat rhythm does this ECG show?", "ptbxl/records100/00000/00001_lr")

A folder exported from model=tiny names ``mmmed.model.llm.random_llm``: that LLM is rebuilt from its stored
settings and seed, which only tests need.
"""

from __future__ import annotations

import inspect
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from mmmed.model.assembly import assemble_model, build_plugins
from mmmed.model.attention import attention_kernel
from mmmed.model.collate import pad_sequences, stack_signals
from mmmed.eval.rationale import ask_for_reasoning, parse_rationale
from mmmed.model.generation import GenerationSettings, Signal, generate_answers, score_options
from mmmed.eval.label_scores import softmax
from mmmed.model.llm import load_causal_lm, load_tokenizer
from mmmed.eval.metrics import CROP_SEPARATOR, AnswerClassifier, aggregate_crops
from mmmed.infer.legacy import upgrade_export_config
from mmmed.model.modality import ModalityPlugin
from mmmed.model.multimodal_lm import MultimodalLM
from mmmed.model.prompts import ChatFormatter
from mmmed.infer.restore import find_checkpoint, restore_checkpoint
from mmmed.infer.trust import check_llm_identity, resolve_allowed, resolver

log = logging.getLogger(__name__)

CONFIG_NAME = "mmmed_config.json"
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}
RECORD_SEPARATOR = "|"  # several files of one patient record in one input string, as in record manifests


def _with_cache_dir(kwargs: dict, cache_dir: str | Path | None) -> dict:
    """The LLM reference's arguments, with every ``cache_dir`` (also nested) pointing at ``cache_dir``."""
    if cache_dir is None:
        return kwargs
    return {key: str(cache_dir) if key == "cache_dir" else _with_cache_dir(value, cache_dir) if isinstance(value, dict)
            else value for key, value in kwargs.items()}


def _load_llm(directory: Path, ref: dict, cache_dir: str | Path | None, trust_remote_code: bool) -> torch.nn.Module:
    """The LLM as exported: full weights from llm/, else rebuilt from its reference; then LoRA from lora/."""
    if (directory / "llm").is_dir():
        model = load_causal_lm(str(directory / "llm"), ref["dtype"], trust_remote_code)
    else:
        build = resolve_allowed(ref["target"])
        kwargs = _with_cache_dir(ref["kwargs"], cache_dir)
        if "trust_remote_code" in inspect.signature(build).parameters:
            kwargs["trust_remote_code"] = trust_remote_code  # the caller decides, not the folder
        loaded = build(**kwargs)
        check_llm_identity(ref["identity"], loaded.identity)
        model = loaded.model
    if (directory / "lora").is_dir():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, directory / "lora")  # reads adapter_model.safetensors
    return model.eval()


def _holds_paths(record: dict) -> bool:
    """Whether ``{modality: [...]}`` lists files (not prepared signals)."""
    return all(isinstance(item, (str, Path)) for items in record.values() for item in items)


def _to(signal: Signal, device: torch.device) -> Signal:
    return {k: v.to(device) for k, v in signal.items()} if isinstance(signal, dict) else signal.to(device)


class MultimodalPredictor:
    """Answers from a trained model to questions whose ``<ecg>``/``<xray>`` tags mark the signals (or,
    without tags, whose signals go first: mmmed/model/prompts.py).

    Args:
        model: the multimodal model (eval mode).
        formatter: its chat formatter.
        config: the inference settings (``mmmed_config.json``): modalities, answer classes, label set.
        plugins: the modality plugins, which read and draw files as training did.
        device: where the model runs.
        run_config: the training run's resolved config when loaded from a checkpoint (None when exported).
    """

    def __init__(self, model: MultimodalLM, formatter: ChatFormatter, config: dict, plugins: dict[str, ModalityPlugin],
                 device: str | torch.device = "cpu", run_config: dict | None = None) -> None:
        self.model = model.eval()
        self.plugins = plugins
        self.run_config = run_config
        self.formatter = formatter
        self.tokenizer = formatter.tokenizer
        self.config = config
        self.device = torch.device(device)
        # The training run's attention and prefix-cache settings (``speed:``; an exported model: the defaults), so
        # that predict.py and eval.py compute what the run's validation computed on the same device.
        speed = (run_config or {}).get("speed") or {}
        self.model.llm.set_attn_implementation(attention_kernel(speed.get("attention", "auto"), self.device.type))
        self.model.use_prefix_cache(speed.get("prefix_cache", True))
        self.classifier = AnswerClassifier(config["answer_classes"])
        self.greedy = GenerationSettings(max_new_tokens=config["max_new_tokens"], do_sample=False, temperature=1.0,
                                         top_p=1.0, num_samples=1, use_cache=True)
        # {"instruction", "max_new_tokens"} of a self-trained model, else None (models saved before have none).
        self.reasoning: dict | None = config.get("reasoning")

    def asks_for_reasoning(self, setting: str | bool) -> bool:
        """Whether to ask for a rationale: ``auto`` (when self-trained), ``true`` (refused unless self-trained), ``false``."""
        if setting not in ("auto", True, False):
            raise ValueError(f"rationale must be auto, true or false, not {setting!r}")
        if setting is True and self.reasoning is None:
            raise ValueError("rationale=true: this model was not self-trained (selftrain.py), it has no reasoning instruction")
        return self.reasoning is not None if setting == "auto" else setting

    def prompt_batch(self, questions: list[str], signals: list[dict[str, list[Signal]]]) -> dict[str, Any]:
        """Left-padded prompts and stacked signals, keyed and built as MultimodalCollator's generation view."""
        prompts = [self.formatter.prompt_ids(q, {m: len(s) for m, s in sig.items()}) for q, sig in zip(questions, signals)]
        ids, mask = pad_sequences(prompts, self.tokenizer.pad_token_id, "left")  # (B, P)
        stacked = {m: _to(stack_signals([s for sig in signals for s in sig.get(m, [])]), self.device)
                   for m in sorted({m for sig in signals for m in sig})}  # {m: (M, ...)} in placeholder order
        return {"prompt_input_ids": ids.to(self.device), "prompt_attention_mask": mask.to(self.device), "signals": stacked}

    def generate(self, questions: list[str], signals: list[dict[str, list[Signal]]],
                 settings: GenerationSettings | None = None) -> list[list[str]]:
        """``settings.num_samples`` answers per question (greedy: one), batched with left padding."""
        batch = self.prompt_batch(questions, signals)
        return generate_answers(self.model, self.formatter, batch["prompt_input_ids"], batch["prompt_attention_mask"],
                                batch["signals"], settings or self.greedy)

    def answer_batch(self, questions: list[str], signals: list[dict[str, list[Signal]]]) -> list[str]:
        """Greedy answers to several questions, batched exactly as validation batches them."""
        return [samples[0] for samples in self.generate(questions, signals)]

    def option_scores(self, questions: list[str], signals: list[dict[str, list[Signal]]],
                      options: list[list[str]], batch_size: int = 32) -> list[dict[str, dict[str, float]]]:
        """Per question, each option's log-likelihood and its probability among the options given."""
        logprobs = score_options(self.model, self.formatter, questions, signals, options, batch_size, self.device)
        return [{option: {"logprob": lp, "prob": p} for option, lp, p in zip(opts, lps, softmax(lps))}
                for opts, lps in zip(options, logprobs)]

    def answer(self, question: str, source: str | Path | dict[str, list[Signal]]) -> str:
        """Greedy answer about a record (a file, ``a|b``, a list, ``{modality: [files]}``) or prepared signals
        (``{modality: [encoder input, ...]}``, e.g. an ECG's ``{"signal": (12, T), "lead_mask": (12,)}``)."""
        if isinstance(source, (str, Path, list, tuple)) or (isinstance(source, dict) and _holds_paths(source)):
            return self.answer_file(question, source)
        return self.answer_batch([question], [source])[0]

    def modality_of(self, path: str | Path) -> str:
        """The modality whose plugin claims ``path``; none or several is an error naming the file."""
        claimed = [name for name, plugin in self.plugins.items() if plugin.claims(path)]
        if len(claimed) != 1:
            raise ValueError(f"{path}: {'no modality' if not claimed else 'modalities ' + ', '.join(claimed)} of this "
                             f"model ({', '.join(self.plugins)}) claim{'s' if len(claimed) == 1 else ''} this file"
                             + ("" if claimed else " (wrong path, or a file type the model was not trained on)"))
        return claimed[0]

    def file_inputs(self, path: str | Path) -> list[Signal]:
        """Encoder inputs of one file, prepared as in training by its modality's plugin: one per evaluation view
        (several ECG windows vote), usually one."""
        name = self.modality_of(path)
        return self.plugins[name].read(path, (self.config.get("normalization") or {}).get(name))

    def record_inputs(self, source: str | Path | list | dict) -> list[dict[str, list[Signal]]]:
        """One patient record's encoder inputs, per evaluation view: ``[{modality: [signal, ...]}]``.

        ``source`` is a file, several files (a list, or one string joined by ``|``), or ``{modality: [files]}``.
        One file gives one entry per view (they vote); several files give one entry, each file's first view,
        in the order given within a modality (its tags' order in the question).
        """
        if isinstance(source, dict):
            files = [(name, path) for name, paths in source.items() for path in paths]
            unknown = sorted({name for name, _ in files} - set(self.plugins))
            if unknown:
                raise ValueError(f"modalities {unknown} are not read by this model ({', '.join(self.plugins)})")
        else:
            paths = source if isinstance(source, (list, tuple)) else str(source).split(RECORD_SEPARATOR)
            files = [(self.modality_of(path), path) for path in paths]
        if len(files) == 1:
            name, path = files[0]
            return [{name: [view]} for view in self.file_inputs(path)]
        record: dict[str, list[Signal]] = {}
        for name, path in files:
            record.setdefault(name, []).append(self.plugins[name].read(path, (self.config.get("normalization") or {}).get(name))[0])
        return [record]

    def generation_settings(self, generation: dict[str, Any], reasoning: bool) -> GenerationSettings:
        """``generation`` (conf/predict.yaml's block) with ``max_new_tokens: null`` filled in from the training data's
        budget, or from the self-training budget when asking for a rationale: what predict.py and serve.py use."""
        budget = self.reasoning["max_new_tokens"] if reasoning else self.config["max_new_tokens"]
        return GenerationSettings(**{**generation, "max_new_tokens": generation.get("max_new_tokens") or budget})

    def predict_files(self, questions: list[str], paths: list[str | Path], settings: GenerationSettings | None = None,
                      options: list[list[str] | None] | None = None, batch_size: int = 16,
                      option_batch_size: int = 32, reasoning: bool = False) -> list[dict[str, Any]]:
        """Answers about files, generated ``batch_size`` encoder inputs at a time (left-padded, KV cache).

        Per file: ``answer`` (several ECG evaluation windows vote, as in evaluation), ``samples`` when
        sampling several, and ``options`` ({option: {logprob, prob}}, averaged over windows) when given.
        With ``reasoning`` (a self-trained model only) each question asks for a rationale: ``answer`` is the text
        after ``Answer:`` (empty when the completion does not parse), ``reasoning`` and ``completion`` beside it.
        """
        return self.predict_records(questions, [str(path) for path in paths], [self.record_inputs(p) for p in paths],
                                    settings, options, batch_size, option_batch_size, reasoning)

    def predict_records(self, questions: list[str], names: list[str], records: list[list[dict[str, list[Signal]]]],
                        settings: GenerationSettings | None = None, options: list[list[str] | None] | None = None,
                        batch_size: int = 16, option_batch_size: int = 32,
                        reasoning: bool = False) -> list[dict[str, Any]]:
        """``predict_files`` on records already read (``record_inputs``), each named by ``names`` (its windows' ids):
        the server reads uploads before they join a batch, so a bad file fails its own request only."""
        if reasoning and not self.reasoning:
            raise ValueError("this model was not self-trained (selftrain.py): it has no reasoning instruction to ask with")
        options = options or [None] * len(records)
        asked = [ask_for_reasoning(q, self.reasoning["instruction"]) for q in questions] if reasoning else questions
        jobs = [(row, question, inputs) for row, (question, views) in enumerate(zip(asked, records))
                for inputs in views]  # one job per evaluation view of the record
        generated: list[list[str]] = []
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            generated += self.generate([q for _, q, _ in chunk], [x for _, _, x in chunk], settings)
        by_row: dict[int, list[int]] = {}  # each file's jobs, in order
        for k, (row, _, _) in enumerate(jobs):
            by_row.setdefault(row, []).append(k)
        results = []
        for row, (question, name) in enumerate(zip(questions, names)):
            mine = by_row[row]
            windows = [{"id": f"{name}{CROP_SEPARATOR}{n}", "answer": generated[k][0]} for n, k in enumerate(mine)]
            for window in windows if reasoning else ():
                parsed = parse_rationale(window["answer"])
                window["completion"], window["reasoning"] = window["answer"], parsed.reasoning if parsed else None
                window["answer"] = parsed.answer if parsed else ""  # no answer found: none given, never guessed
            for window in windows:
                window["predicted_label"] = self.classifier(window["answer"])
            result: dict[str, Any] = {"answer": windows[0]["answer"] if len(windows) == 1
                                      else aggregate_crops(windows)[0]["answer"]}
            if reasoning:  # the rationale of a window that gave the (voted) answer
                shown = next((w for w in windows if w["answer"] == result["answer"]), windows[0])
                result.update(reasoning=shown["reasoning"], completion=shown["completion"])
            if settings is not None and settings.num_samples > 1:
                result["samples"] = [answer for k in mine for answer in generated[k]]
            if options[row]:
                signals = [jobs[k][2] for k in mine]
                scores = self.option_scores([question] * len(mine), signals, [list(options[row])] * len(mine),
                                            option_batch_size)
                result["options"] = {option: {key: float(np.mean([window[option][key] for window in scores]))
                                              for key in ("logprob", "prob")} for option in options[row]}
            results.append(result)
        return results

    def predict_file(self, question: str, path: str | Path, settings: GenerationSettings | None = None,
                     options: list[str] | None = None) -> dict[str, Any]:
        """``predict_files`` for one file."""
        return self.predict_files([question], [path], settings, [options])[0]

    def answer_file(self, question: str, path: str | Path) -> str:
        """Greedy answer about one ECG record (WFDB or .dcm) or radiograph; ECG windows vote as in evaluation."""
        return self.predict_file(question, path)["answer"]

    def draw_record(self, source: str | Path | list | dict, path: str | Path, *, question: str, reference: str,
                    answer: str) -> list[Path]:
        """Pictures of a record's files, each drawn by its modality's plugin: ``path`` for one file, else
        ``<stem>_<k><suffix>`` per file. Returns the files written."""
        if isinstance(source, dict):
            files = [(name, file) for name, paths in source.items() for file in paths]
        else:
            paths = source if isinstance(source, (list, tuple)) else str(source).split(RECORD_SEPARATOR)
            files = [(self.modality_of(file), file) for file in paths]
        path = Path(path)
        written = []
        for k, (name, file) in enumerate(files):
            target = path if len(files) == 1 else path.with_name(f"{path.stem}_{k}{path.suffix}")
            plugin = self.plugins[name]
            written.append(plugin.draw(plugin.picture(file), target, question=question, reference=reference, answer=answer))
        return written


def load(path: str | Path, device: str | torch.device = "cpu", llm_cache_dir: str | Path | None = None,
         trust_remote_code: bool = False, trusted_modules: tuple[str, ...] = ()) -> MultimodalPredictor:
    """A predictor from an exported folder, a training run folder or a ``.ckpt`` file.

    A run folder gives its best checkpoint (``metrics.json`` ``weights_from``), else ``checkpoints/last.ckpt``.
    Checkpoints load with ``weights_only=True``; the frozen LLM comes from its source as in training.
    ``trusted_modules``: prefixes of your own plugin packages the model may name (mmmed's are always allowed).
    """
    path = Path(path)
    if (path / CONFIG_NAME).is_file():
        return load_exported(path, llm_cache_dir, trust_remote_code, device, trusted_modules)
    restored = restore_checkpoint(find_checkpoint(path), tuple(trusted_modules))
    return MultimodalPredictor(restored.model.to(device).eval(), restored.formatter, restored.config, restored.plugins,
                               device, restored.run_config)


def load_exported(directory: str | Path, llm_cache_dir: str | Path | None = None, trust_remote_code: bool = False,
                  device: str | torch.device = "cpu", trusted_modules: tuple[str, ...] = ()) -> MultimodalPredictor:
    """Load an exported model folder (safetensors and JSON only); ``llm_cache_dir`` replaces the LLM's cache_dir."""
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{directory / CONFIG_NAME} not found: not a folder written by python -m mmmed.infer.export")
    pickles = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{directory} holds pickle files {pickles}; an exported model is safetensors and JSON only, "
                         f"and unpickling can run arbitrary code, so it is not loaded")
    resolve = resolver(trusted_modules)
    config = upgrade_export_config(json.loads((directory / CONFIG_NAME).read_text()), resolve)
    plugins = build_plugins(config["modalities"], resolve)  # every class refused before anything is loaded
    adapter_class = resolve(config["adapter"]["class"])
    encoders = {name: plugin.build_encoder(resolve=resolve) for name, plugin in plugins.items()}
    tokenizer = load_tokenizer(str(directory / "tokenizer"), trust_remote_code)
    llm = _load_llm(directory, config["llm"], llm_cache_dir, trust_remote_code)
    hidden = llm.get_input_embeddings().embedding_dim
    for name, encoder in encoders.items():
        if (encoder.out_dim, hidden) != (config["adapter"]["in_dims"][name], config["adapter"]["out_dim"]):
            raise ValueError(f"the {name} adapter maps {config['adapter']['in_dims'][name]} -> "
                             f"{config['adapter']['out_dim']}, but the encoder gives {encoder.out_dim} and the LLM takes "
                             f"{hidden}: wrong LLM or encoder settings")
    assembled = assemble_model(llm, tokenizer, plugins, partial(adapter_class, **config["adapter"]["kwargs"]),
                               system_prompt=config["system_prompt"], max_length=config["max_length"], train_llm=False,
                               train_encoder=False, encoders=encoders)
    model, formatter = assembled.model, assembled.formatter
    files = config.get("weight_files") or {part: {name: f"{part}/{name}.safetensors" for name in plugins}
                                           for part in ("encoders", "adapters")}
    for name in plugins:
        if formatter.placeholder_ids[name] != config["placeholder_ids"][name]:
            raise ValueError(f"tokenizer/ gives the {name} placeholder id {formatter.placeholder_ids[name]}, the model "
                             f"was trained with {config['placeholder_ids'][name]}: the folder is inconsistent")
        if assembled.num_tokens[name] != config["num_tokens"][name]:
            raise ValueError(f"the {name} encoder and adapter make {assembled.num_tokens[name]} tokens per signal, the "
                             f"prompt has {config['num_tokens'][name]} placeholders: inconsistent folder")
        model.encoders[name].load_state_dict(load_file(directory / files["encoders"][name]))
        model.adapters[name].load_state_dict(load_file(directory / files["adapters"][name]))
    model.requires_grad_(False)
    return MultimodalPredictor(model.to(device).eval(), formatter, config, plugins, device)
