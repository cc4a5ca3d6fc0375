"""Turn a training checkpoint into a self-contained, pickle-free model folder that ``load_exported`` reads.

    python -m mmmed.infer.export ckpt=outputs/<run>/checkpoints/last.ckpt out=exported/ecg-nano [merge_lora=true]

The folder holds ``mmmed_config.json`` (everything inference needs, as plain JSON: each modality's plugin
settings), ``encoders/<modality>.safetensors``, ``adapters/<modality>.safetensors``, ``tokenizer/`` (with the
placeholder tokens), a ``README.md`` model card, and
the LLM as training left it: a frozen LLM only as a reference (how to load it, plus its identity),
LoRA weights in PEFT format (``lora/``), or a full LLM (``llm/``: merged LoRA, or the full stage's weights).

Export loads the base LLM once: to check it is the one the checkpoint was trained on, and to save LoRA
or full weights through transformers/PEFT. A checkpoint of model=tiny (a random Llama) exports as a
reference to ``mmmed.model.llm.random_llm`` with its settings and seed, which rebuilds it: for tests only.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from mmmed.infer.inference import CONFIG_NAME
from mmmed.model.lora import merge_lora
from mmmed.infer.restore import restore_checkpoint

USAGE = "usage: python -m mmmed.infer.export ckpt=PATH out=DIR [merge_lora=true|false]"


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().contiguous() for key, value in state.items()}


def _metrics_next_to(ckpt_path: Path) -> dict | None:
    """The run's metrics.json: train.py writes it into the run folder, the checkpoints into <run>/checkpoints."""
    for folder in (ckpt_path.parent, ckpt_path.parent.parent):
        if (folder / "metrics.json").is_file():
            return json.loads((folder / "metrics.json").read_text())
    return None


def model_card(config: dict, metrics: dict | None, ckpt_path: Path) -> str:
    """README.md: what the model is, what it was trained and scored on, how to load it, what not to use it for."""
    llm, data = config["llm"], config["data"]
    names = list(config["modalities"])
    question = config["question"] or "Your question (the record's signals go first; or place <tag>s)"
    base = llm["kwargs"].get("hub_id", llm["identity"])
    how_llm = {
        "reference": f"not included: loaded from `{base}` (identity `{llm['identity']}`) when the model is loaded",
        "lora": f"LoRA weights in `lora/` (PEFT format) on `{base}`, which is loaded from its source",
        "merged": f"`{base}` with the LoRA weights merged in, in `llm/`",
        "full": f"`{base}` fine-tuned in full, in `llm/`",
    }[llm["weights"]]
    if llm["target"].endswith("random_llm"):
        how_llm += " (a randomly initialised test LLM, rebuilt from its settings and seed: for tests only)"
    lines = [
        f"# mmmed {' + '.join(names)} model ({config['stage']} stage)",
        "",
        f"A causal LLM that answers questions about {', '.join(names)} inputs. Per modality an encoder turns each "
        f"signal into tokens and a `{config['adapter']['class']}` adapter maps them to LLM embeddings, spliced in "
        f"where the modality's tag stands. Exported by mmmed {config['mmmed_version']} from `{ckpt_path.name}`.",
        "",
        *[f"- `<{name}>`: `{node['net']['_target_']}`, {config['num_tokens'][name]} tokens per signal. "
          f"{node.get('description', '')}".rstrip() for name, node in config["modalities"].items()],
        "",
        f"- LLM: {how_llm}",
        f"- Data: `{data['dataset']}`" + (f", task `{data['task']}`" if data.get("task") else ""),
        f"- Training question: `{question!r}`" if config["question"] else "- Training questions: from the data set's file",
        "",
        "## Metrics",
        "",
    ]
    if metrics:
        lines.append(f"From the run's metrics.json (they describe the weights of `{metrics.get('weights_from', '?')}`):")
        lines.append("")
        lines += [f"- {key}: {value:.4g}" for key, value in metrics.items()
                  if key.split("/")[0] in ("val", "test") and isinstance(value, (int, float))]
    else:
        lines.append("No metrics.json was found next to the checkpoint.")
    lines += [
        "",
        "## Intended use",
        "",
        "Research on multimodal medical language models. **Not for clinical use**: it is not a medical device, "
        "was not validated for diagnosis or treatment, and its answers can be fluent and wrong.",
        "",
        "## Loading",
        "",
        "```python",
        "from mmmed.infer.inference import load_exported",
        "",
        'predictor = load_exported("<this folder>")  # safetensors + JSON only, no pickle',
        f"print(predictor.answer_file({question!r}, \"<record or image file>\"))",
        "```",
    ]
    return "\n".join(lines) + "\n"


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path, merge: bool = False) -> Path:
    """Write the model folder for one checkpoint (see module docstring); returns the folder."""
    ckpt_path, out = Path(ckpt_path), Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: export into a new folder, so files of two models never mix")
    if merge:  # before minutes of loading: the stage is in the checkpoint's config
        stage = (torch.load(ckpt_path, map_location="cpu", weights_only=True).get("mmmed_config") or {}).get("stage", {})
        if not stage.get("lora"):
            raise ValueError(f"merge_lora=true needs a LoRA checkpoint (stage=instruct); {ckpt_path} is "
                             f"stage={stage.get('name')}")
    restored = restore_checkpoint(ckpt_path)
    model, config = restored.model, restored.config

    out.mkdir(parents=True, exist_ok=True)
    for part in ("encoders", "adapters"):
        (out / part).mkdir()
        for name, module in getattr(model, part).items():
            save_file(_tensors(module.state_dict()), out / part / f"{name}.safetensors")
    weights = "reference"
    if restored.lora and merge:
        weights = "merged"
        merge_lora(model.llm).save_pretrained(out / "llm")  # transformers 5 writes safetensors only
    elif restored.lora:
        weights = "lora"
        model.llm.save_pretrained(out / "lora")  # adapter_model.safetensors + adapter_config.json
    elif restored.train_llm:
        weights = "full"
        model.llm.save_pretrained(out / "llm")
    restored.formatter.tokenizer.save_pretrained(out / "tokenizer")
    config["llm"]["weights"] = weights
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    (out / "README.md").write_text(model_card(config, _metrics_next_to(ckpt_path), ckpt_path))
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: ``ckpt=PATH out=DIR [merge_lora=true|false]``."""
    argv = sys.argv[1:] if argv is None else argv
    args = dict(arg.split("=", 1) for arg in argv if "=" in arg)
    merge = args.get("merge_lora", "false").lower()
    if len(args) != len(argv) or set(args) - {"ckpt", "out", "merge_lora"} or {"ckpt", "out"} - set(args) \
            or merge not in ("true", "false"):
        sys.exit(USAGE)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = export_checkpoint(args["ckpt"], args["out"], merge == "true")
    print(f"exported {out}: load it with mmmed.infer.inference.load_exported({str(out)!r})")


if __name__ == "__main__":
    main()
