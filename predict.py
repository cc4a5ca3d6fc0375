"""Ask a trained model about a patient's files: ``python predict.py ckpt=... input=... question=...``.

``input`` is one file (an ECG record, a chest X-ray DICOM, ...) or several joined by ``|`` (one patient
record: each file goes to the modality plugin that claims it).

One ``input`` prints the answer (and sampled answers, option scores); a ``manifest`` CSV answers many
and writes JSONL. Either way a picture of each input with the question and answer is saved next to the
predictions (conf/predict.yaml).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from mmmed.eval.rationale import shown_answer
from mmmed.infer.inference import RECORD_SEPARATOR, MultimodalPredictor, load
from mmmed.reasoning.api import reason
from mmmed.train.preflight import check_predict_config

log = logging.getLogger("mmmed.predict")


def read_manifest(path: Path) -> list[dict]:
    """Rows of a predict manifest: ``input`` (relative to the CSV's folder), ``question``, optional
    ``options`` ("a|b|c") and ``reference``."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"input", "question"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: manifest lacks column(s) {sorted(missing)}; it needs input,question[,options][,reference]")
        rows = []
        for line, row in enumerate(reader, start=2):
            if not (row["input"] or "").strip() or not (row["question"] or "").strip():
                raise ValueError(f"{path}, line {line}: empty input or question")
            files = [Path(part.strip()) for part in row["input"].split(RECORD_SEPARATOR)]  # a record: "a|b"
            options = [o.strip() for o in (row.get("options") or "").split("|") if o.strip()]
            rows.append({"input": RECORD_SEPARATOR.join(str(f if f.is_absolute() else path.parent / f) for f in files),
                         "question": row["question"], "options": options or None,
                         "reference": (row.get("reference") or "").strip() or None})
    if not rows:
        raise ValueError(f"{path}: manifest has no rows")
    return rows


def predict(cfg: DictConfig, predictor: MultimodalPredictor | None = None) -> list[dict]:
    """Answer the configured input or manifest; writes the JSONL and pictures, returns the rows written."""
    check_predict_config(cfg)  # bad settings fail before the model loads
    if (cfg.input is None) == (cfg.manifest is None):
        raise ValueError("give exactly one of input=<file> or manifest=<csv>")
    predictor = predictor or load(cfg.ckpt, cfg.device, cfg.llm_cache_dir, cfg.trust_remote_code,
                                  tuple(cfg.trusted_modules))
    # reasoning=sample | uncertainty_search samples answers to the plain question (their entropy is over answer
    # classes): a self-trained model is then asked plainly under rationale=auto, and rationale=true is refused.
    if cfg.reasoning != "none" and cfg.rationale is True:
        raise ValueError(f"reasoning={cfg.reasoning} samples answers to the plain question: rationale=true cannot go "
                         f"with it (rationale=auto asks a self-trained model plainly)")
    reasoning = predictor.asks_for_reasoning(cfg.rationale) and cfg.reasoning == "none"
    settings = predictor.generation_settings(OmegaConf.to_container(cfg.generation, resolve=True), reasoning)
    if cfg.manifest is not None:
        rows = read_manifest(Path(cfg.manifest))
    else:
        question = cfg.question or predictor.config.get("question")
        if not question:
            raise ValueError("this model was trained on questions from a file: pass question=\"...\" (tags optional)")
        options = list(cfg.options) if cfg.options else None
        rows = [{"input": str(cfg.input), "question": question, "options": options, "reference": cfg.reference}]
    if cfg.reasoning == "none":
        results = predictor.predict_files([r["question"] for r in rows], [r["input"] for r in rows], settings,
                                          [r["options"] for r in rows], cfg.batch_size, cfg.option_batch_size,
                                          reasoning=reasoning)
    else:  # sampled answers and, when they disagree, retrieval (mmmed/reasoning/api.py)
        if any(r["options"] for r in rows):
            raise ValueError(f"reasoning={cfg.reasoning} scores no options: give none, or use reasoning=none")
        results = reason(predictor, [r["question"] for r in rows], [r["input"] for r in rows], cfg.reasoning,
                         OmegaConf.to_container(cfg.search, resolve=True))
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for number, (row, result) in enumerate(zip(rows, results)):
        record = {"input": row["input"], "question": row["question"], **result}
        if row["reference"] is not None:
            record["reference"] = row["reference"]
        if cfg.pictures:  # one picture per file of the record, drawn by its modality's plugin
            first = Path(row["input"].split(RECORD_SEPARATOR)[0]).name
            pictures = predictor.draw_record(row["input"], output.parent / "pictures" / f"{number:05d}_{first}.png",
                                             question=row["question"], reference=row["reference"] or "(none given)",
                                             answer=shown_answer(result, cfg.show_reasoning))
            record["picture"] = str(pictures[0])
            if len(pictures) > 1:
                record["pictures"] = [str(picture) for picture in pictures]
        written.append(record)
    with output.open("w") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in written)
    return written


@hydra.main(config_path="pkg://mmmed_conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: prints each answer, writes predictions.jsonl."""
    written = predict(cfg)
    for record in written:
        print(f"{record['input']}\n  Q: {record['question']!r}\n  A: {record['answer'] or '(none found)'}")
        if record.get("completion") is not None and (cfg.show_reasoning or not record["answer"]):
            print(f"  R: {record['reasoning'] or '(the completion does not parse: ' + repr(record['completion']) + ')'}")
        for sample in record.get("samples", []):
            print(f"     sample: {sample}")
        if "entropies" in record:
            print(f"     entropy per round (bits): {', '.join(f'{e:.2f}' for e in record['entropies'])}; "
                  f"retrieval rounds: {record['rounds']}")
        for query in [q for round_queries in record.get("queries", []) for q in round_queries]:
            print(f"     query: {query!r}")
        for n, passage in enumerate(record.get("passages", []), start=1):
            heading = f" ({passage['heading']})" if passage["heading"] else ""
            print(f"     [{n}] {passage['title']}{heading} - {passage['source']} [{passage['id']}, {passage['licence']}]")
        for option, score in record.get("options", {}).items():
            print(f"     option {option!r}: p={score['prob']:.3f} (log-likelihood {score['logprob']:.2f})")
    print(f"\npredictions  {cfg.output}")


if __name__ == "__main__":
    main()
