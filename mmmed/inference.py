"""Load a model folder written by ``mmmed.export`` and answer questions about ECGs and chest X-rays.

Loading needs neither Hydra nor the training code, and never unpickles: weights are safetensors, the
configuration is JSON, and the classes it names are imported only from mmmed's own packages
(``ALLOWED_PREFIXES``). Code from an LLM's repository runs only when the caller passes
``trust_remote_code=True``.

    from mmmed.inference import load
    predictor = load("exported/ecg-nano")      # or a training run folder, or a .ckpt file
    predictor.answer("<ecg>\\nWhat rhythm does this ECG show?", "ptbxl/records100/00000/00001_lr")

A folder exported from model=tiny names ``mmmed.llm.random_llm``: that LLM is rebuilt from its stored
settings and seed, which only tests need.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file

from mmmed.adapters import num_output_tokens
from mmmed.collate import pad_sequences, stack_signals
from mmmed.generation import GenerationSettings, Signal, generate_answers, score_options
from mmmed.label_scores import softmax
from mmmed.llm import load_causal_lm, load_tokenizer
from mmmed.metrics import CROP_SEPARATOR, AnswerClassifier, aggregate_crops
from mmmed.model import MultimodalLM
from mmmed.prompts import ChatFormatter, Modality

log = logging.getLogger(__name__)

CONFIG_NAME = "mmmed_config.json"
ALLOWED_PREFIXES = ("mmmed.", "mmmed_encoders.")
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}


def resolve_allowed(path: str) -> Callable[..., Any]:
    """The class or function ``module.name`` that a config names, imported only from mmmed's own packages."""
    if not isinstance(path, str) or not path.startswith(ALLOWED_PREFIXES):
        raise ValueError(f"Refusing to import {path!r}: an exported model may only name classes from "
                         f"{', '.join(p + '*' for p in ALLOWED_PREFIXES)}. Re-export it with mmmed.export, "
                         f"or check where this folder came from.")
    module, _, name = path.rpartition(".")
    target = getattr(importlib.import_module(module), name)
    if not getattr(target, "__module__", "").startswith(ALLOWED_PREFIXES):  # e.g. mmmed.model.nn.Module
        raise ValueError(f"Refusing {path!r}: it is defined in {getattr(target, '__module__', '?')!r}, not in mmmed")
    return target


def check_llm_identity(expected: str | None, found: str) -> None:
    """Same LLM as in training (``name:source``), or an error; a source of unknown revision (``hub``) only warns."""
    if found == expected:
        return
    name, _, source = (expected or "").partition(":")
    found_name, _, found_source = found.partition(":")
    if name == found_name and "hub" in (source, found_source):  # e.g. downloaded then, read from the HF cache now
        log.warning("LLM %s loaded, trained with %s: same model, revision unknown; answers may differ", found, expected)
        return
    raise ValueError(f"The model was trained on LLM {expected!r} but {found!r} was loaded (another model, revision or "
                     f"conversion): its answers would not be the trained model's. Make that LLM available again "
                     f"(Hugging Face cache, or llm_cache_dir).")


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


def _to(signal: Signal, device: torch.device) -> Signal:
    return {k: v.to(device) for k, v in signal.items()} if isinstance(signal, dict) else signal.to(device)


class MultimodalPredictor:
    """Answers from a trained model to questions whose ``<ecg>``/``<xray>`` tags mark the signals (or,
    without tags, whose signals go first: mmmed/prompts.py).

    Args:
        model: the multimodal model (eval mode).
        formatter: its chat formatter.
        config: the inference settings (``mmmed_config.json``): preprocessing, answer classes, label set.
        device: where the model runs.
        run_config: the training run's resolved config when loaded from a checkpoint (None when exported).
    """

    def __init__(self, model: MultimodalLM, formatter: ChatFormatter, config: dict, device: str | torch.device = "cpu",
                 run_config: dict | None = None) -> None:
        self.model = model.eval()
        self.run_config = run_config
        self.formatter = formatter
        self.tokenizer = formatter.tokenizer
        self.config = config
        self.device = torch.device(device)
        self.classifier = AnswerClassifier(config["answer_classes"])
        self.greedy = GenerationSettings(max_new_tokens=config["max_new_tokens"], do_sample=False, temperature=1.0,
                                         top_p=1.0, num_samples=1, use_cache=True)

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
        """Greedy answer about a file (WFDB record, ``.dcm``, image) or signals (``{"ecg": [(12, T) tensor]}``)."""
        if isinstance(source, (str, Path)):
            return self.answer_file(question, source)
        return self.answer_batch([question], [source])[0]

    def file_inputs(self, path: str | Path) -> list[Signal]:
        """Encoder inputs of one file, prepared as in training: one per ECG evaluation window, or one image."""
        settings = self.config
        if settings.get("ecg_preprocessing"):
            pipeline = self._ecg_pipeline()
            prepared = pipeline.prepare(path)  # (L, T) at the training rate, filtered
            windows = []
            for start in pipeline.window_starts(prepared.signal.shape[1], train=False, rng=None):
                window = prepared.signal[:, start : start + pipeline.num_samples]  # (L, T_window)
                window = pipeline.normalise(window, prepared.lead_mask, settings["normalization"])
                windows.append({"signal": torch.from_numpy(np.ascontiguousarray(window)),
                                "lead_mask": torch.from_numpy(np.asarray(prepared.lead_mask, dtype=bool).copy())})
            return windows
        if settings.get("xray_images"):
            from mmmed_datasets.xray_image import decode_settings, letterbox, read_radiograph

            images = settings["xray_images"]
            pixels = letterbox(read_radiograph(path, **decode_settings(images)).pixels, images["size"])  # (1, S, S)
            return [torch.from_numpy(pixels.astype(np.float16).astype(np.float32))]  # float16 as the image cache stores it
        raise ValueError(f"{CONFIG_NAME} stores no file pipeline for {settings['modality']}; pass signals to answer()")

    def _ecg_pipeline(self):
        from mmmed_datasets.ecg_preprocess import saved_preprocessing

        return saved_preprocessing(self.config["ecg_preprocessing"])

    def predict_files(self, questions: list[str], paths: list[str | Path], settings: GenerationSettings | None = None,
                      options: list[list[str] | None] | None = None, batch_size: int = 16,
                      option_batch_size: int = 32) -> list[dict[str, Any]]:
        """Answers about files, generated ``batch_size`` encoder inputs at a time (left-padded, KV cache).

        Per file: ``answer`` (several ECG evaluation windows vote, as in evaluation), ``samples`` when
        sampling several, and ``options`` ({option: {logprob, prob}}, averaged over windows) when given.
        """
        options = options or [None] * len(paths)
        jobs = [(row, question, signal) for row, (question, path) in enumerate(zip(questions, paths))
                for signal in self.file_inputs(path)]  # one job per encoder input (ECG window, image)
        generated: list[list[str]] = []
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            generated += self.generate([q for _, q, _ in chunk], [{self.config["modality"]: [x]} for _, _, x in chunk],
                                       settings)
        by_row: dict[int, list[int]] = {}  # each file's jobs, in order
        for k, (row, _, _) in enumerate(jobs):
            by_row.setdefault(row, []).append(k)
        results = []
        for row, (question, path) in enumerate(zip(questions, paths)):
            mine = by_row[row]
            windows = [{"id": f"{path}{CROP_SEPARATOR}{n}", "answer": generated[k][0],
                        "predicted_label": self.classifier(generated[k][0])} for n, k in enumerate(mine)]
            result: dict[str, Any] = {"answer": windows[0]["answer"] if len(windows) == 1
                                      else aggregate_crops(windows)[0]["answer"]}
            if settings is not None and settings.num_samples > 1:
                result["samples"] = [answer for k in mine for answer in generated[k]]
            if options[row]:
                signals = [{self.config["modality"]: [jobs[k][2]]} for k in mine]
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

    def picture_inputs(self, path: str | Path) -> dict[str, Any]:
        """What a picture of this file shows: an ECG in millivolts as prepared (before normalising), or the image
        the encoder saw (see ``mmmed.plots.plot_sample``)."""
        if self.config.get("ecg_preprocessing"):
            pipeline = self._ecg_pipeline()
            prepared = pipeline.prepare(path)
            return {"kind": "ecg", "signal": prepared.signal, "sampling_rate": pipeline.sampling_rate,
                    "leads": list(pipeline.leads), "lead_mask": np.asarray(prepared.lead_mask, dtype=bool)}
        image = self.file_inputs(path)[0]
        return {"kind": "xray", "image": image.numpy()}


def load(path: str | Path, device: str | torch.device = "cpu", llm_cache_dir: str | Path | None = None,
         trust_remote_code: bool = False) -> MultimodalPredictor:
    """A predictor from an exported folder, a training run folder or a ``.ckpt`` file.

    A run folder gives its best checkpoint (``metrics.json`` ``weights_from``), else ``checkpoints/last.ckpt``.
    Checkpoints load with ``weights_only=True``; the frozen LLM comes from its source as in training.
    """
    path = Path(path)
    if (path / CONFIG_NAME).is_file():
        return load_exported(path, llm_cache_dir, trust_remote_code, device)
    from mmmed.restore import find_checkpoint, restore_checkpoint  # restore imports this module

    restored = restore_checkpoint(find_checkpoint(path))
    return MultimodalPredictor(restored.model.to(device).eval(), restored.formatter, restored.config, device,
                               restored.run_config)


def load_exported(directory: str | Path, llm_cache_dir: str | Path | None = None, trust_remote_code: bool = False,
                  device: str | torch.device = "cpu") -> MultimodalPredictor:
    """Load an exported model folder (safetensors and JSON only); ``llm_cache_dir`` replaces the LLM's cache_dir."""
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{directory / CONFIG_NAME} not found: not a folder written by python -m mmmed.export")
    pickles = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{directory} holds pickle files {pickles}; an exported model is safetensors and JSON only, "
                         f"and unpickling can run arbitrary code, so it is not loaded")
    config = json.loads((directory / CONFIG_NAME).read_text())
    modality = config["modality"]
    encoder_class = resolve_allowed(config["encoder"]["class"])  # refused before anything is loaded
    adapter_class = resolve_allowed(config["adapter"]["class"])
    tokenizer = load_tokenizer(str(directory / "tokenizer"), trust_remote_code)
    llm = _load_llm(directory, config["llm"], llm_cache_dir, trust_remote_code)
    formatter = ChatFormatter(tokenizer, [Modality(modality, config["num_tokens"])], config["system_prompt"], config["max_length"])
    if formatter.placeholder_ids[modality] != config["placeholder_id"]:
        raise ValueError(f"tokenizer/ gives {config['placeholder']} id {formatter.placeholder_ids[modality]}, "
                         f"the model was trained with {config['placeholder_id']}: the folder is inconsistent")
    encoder = encoder_class(**config["encoder"]["kwargs"])
    encoder.load_state_dict(load_file(directory / "encoder.safetensors"))
    model = MultimodalLM(llm, {modality: encoder}, partial(adapter_class, **config["adapter"]["kwargs"]),
                         formatter.placeholder_ids, train_llm=False, train_encoders=False)
    hidden = llm.get_input_embeddings().embedding_dim
    if (encoder.out_dim, hidden) != (config["adapter"]["in_dim"], config["adapter"]["out_dim"]):
        raise ValueError(f"adapter maps {config['adapter']['in_dim']} -> {config['adapter']['out_dim']}, but the encoder "
                         f"gives {encoder.out_dim} and the LLM takes {hidden}: wrong LLM or encoder settings")
    if num_output_tokens(model.adapters[modality], encoder.num_tokens) != config["num_tokens"]:
        raise ValueError(f"encoder and adapter make {num_output_tokens(model.adapters[modality], encoder.num_tokens)} "
                         f"tokens per signal, the prompt has {config['num_tokens']} placeholders: inconsistent folder")
    model.adapters[modality].load_state_dict(load_file(directory / "adapter.safetensors"))
    model.requires_grad_(False)
    return MultimodalPredictor(model.to(device).eval(), formatter, config, device)
