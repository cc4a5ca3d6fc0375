"""The self-training loop (``python selftrain.py``): rounds of sample -> filter -> write -> fine-tune -> evaluate.

Every piece of work is a *phase* whose finished output is a file, so re-running the same command after a kill
continues where it stopped and redoes nothing finished:

* ``initial.safetensors``: the weights every run starts from (``ckpt=``'s, or the seeded initialisation).
* ``round_0/``: fine-tune on the seed rationales plus the answer-only data (``round0_steps``).
* ``round_<n>/`` (n >= 1), from round n-1's weights: ``samples/batch_<b>.jsonl`` (K completions per training
  question, one file per batch, each drawn from a generator seeded by (seed, round, batch), so a batch redone after
  a kill draws the same), then ``rationales.jsonl`` (the kept ones and the seeds: what the round learns from) and
  ``filter.json`` (counts), then a fine-tune of ``steps_per_round`` steps with Lightning checkpoints every
  ``checkpoint_every`` steps (a kill resumes from the last one, exactly: data position and random state included).
* ``answer_only/``: the baseline, answer-only data only, as many optimizer steps as the best round had in all.
* each fit phase ends with ``trainable.safetensors`` and ``phase.json`` (validation scores, steps, seconds);
  ``test_<phase>.json`` holds the test scores of the rows reported, scored only after every choice was made on
  validation.

Rounds stop when validation accuracy has not improved for ``patience`` rounds or after ``max_rounds``; the round
with the best validation accuracy (the earliest of equals) is the result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save

from mmmed.atomic_files import write_file_atomic
from mmmed.eval.evaluation import json_safe, scalar_metrics
from mmmed.eval.rationale import AskingForReasoning, ask_for_reasoning, parse_rationale
from mmmed.eval.scoring import AnswerScorer
from mmmed.model.collate import MultimodalCollator
from mmmed.selftrain.data import FixedSeeds, RationaleMixture, item_ids, read_rationales, write_jsonl
from mmmed.selftrain.faults import kill_point
from mmmed.selftrain.filtering import judge
from mmmed.selftrain.report import wilson_interval, write_report
from mmmed.selftrain.sampler import sample_completions
from mmmed.train.build import Run

log = logging.getLogger(__name__)


def _write_json(path: Path, value) -> None:
    text = json.dumps(json_safe(value), indent=2).encode()
    write_file_atomic(path, lambda handle: handle.write(text))


def _to_device(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


class _KillAtStep(Callback):
    """The ``train:<phase>:<step>`` kill point (faults.py), at the end of each training step."""

    def __init__(self, phase: str) -> None:
        self.phase = phase

    def on_train_batch_end(self, trainer, *args) -> None:
        kill_point(f"train:{self.phase}:{trainer.global_step}")


class SelfTraining:
    """Runs the loop of the module docstring for one composed config (``conf/selftrain.yaml``) and built run."""

    def __init__(self, cfg: DictConfig, run: Run) -> None:
        self.cfg, self.run, self.settings = cfg, run, cfg.selftrain
        self.out = Path(cfg.paths.output_dir)
        self.model = run.module.model
        self.datamodule = run.datamodule
        self.formatter = run.formatter
        self.scorer = AnswerScorer(dict(self.datamodule.answer_classes),
                                   {part: dict(c) for part, c in self.datamodule.answer_parts.items()})
        self.checkers = [instantiate(c) for c in (self.settings.checkers or {}).values() if c is not None]
        self.instruction = self.settings.instruction
        self.answer_generation = run.module.evaluator.generation  # the data's budget, for plain answers
        device = self.settings.device
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.loggers = [instantiate(entry) for entry in (cfg.get("logger") or {}).values()
                        if entry is not None and "_target_" in entry]
        self.datamodule.prepare_data()
        self.datamodule.setup("fit")
        self.train_split = self.datamodule.splits["train"]
        self.train_ids = item_ids(self.train_split)
        if len(set(self.train_ids)) != len(self.train_ids):
            raise ValueError("self-training needs one id per training question; this training split repeats ids")
        seeds = self.settings.rationale_seeds
        if seeds == "auto":
            found = Path(self.datamodule.root) / "rationale_seeds.jsonl"
            seeds = found if found.exists() else None
        elif seeds and not Path(seeds).exists():
            raise FileNotFoundError(f"selftrain.rationale_seeds: {seeds} does not exist")
        self.seeds = read_rationales(seeds, self.train_ids) if seeds else []
        for row in self.seeds:
            row["source"] = "seed"
        log.info("Self-training: %d training questions, %d seed rationales", len(self.train_ids), len(self.seeds))

    # ---- weights --------------------------------------------------------------------------------------
    def _trainable(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.model.trainable_state_dict().items()}

    def _save_weights(self, path: Path) -> None:
        state = self._trainable()
        write_file_atomic(path, lambda handle: handle.write(save(state)))

    def _load_weights(self, path: Path) -> None:
        state = load_file(path)
        missing = set(self._trainable()) - set(state)
        if missing:
            raise ValueError(f"{path} lacks trained weights {sorted(missing)[:5]}")
        self.model.load_state_dict(state, strict=False)

    def model_hash(self) -> str:
        """sha256 (first 16 hex digits) of the trained weights: which model wrote a rationale."""
        digest = hashlib.sha256()
        for key, value in sorted(self._trainable().items()):
            digest.update(key.encode())
            digest.update(value.numpy().tobytes() if value.dtype != torch.bfloat16 else value.view(torch.int16).numpy().tobytes())
        return digest.hexdigest()[:16]

    def _initial_weights(self) -> Path:
        path = self.out / "initial.safetensors"
        if not path.exists():
            ckpt = self.cfg.get("ckpt")
            if ckpt:
                ckpt = Path(ckpt)
                self.run.module.init_from_checkpoint(str(ckpt / "checkpoints" / "last.ckpt" if ckpt.is_dir() else ckpt))
            self._save_weights(path)
        return path

    # ---- one fine-tune ---------------------------------------------------------------------------------
    def fit(self, phase: str, rationales: list[dict], steps: int, start_from: Path, seed: int) -> dict:
        """Fine-tune ``steps`` steps from ``start_from`` on the answer-only data plus ``rationales``; validation
        scores afterwards. Skipped (weights loaded) when ``<phase>/phase.json`` exists; resumed from its last
        checkpoint when one exists."""
        folder = self.out / phase
        done = folder / "phase.json"
        if done.exists():
            self._load_weights(folder / "trainable.safetensors")
            log.info("%s: done before, weights loaded", phase)
            return json.loads(done.read_text())
        started = time.perf_counter()
        self._load_weights(start_from)
        share = self.settings.rationale_share if rationales else 0.0
        self.datamodule.splits["train"] = RationaleMixture(self.train_split, rationales, self.instruction, share)
        ckpt_dir = folder / "checkpoints"
        last = ckpt_dir / "last.ckpt"
        saver = ModelCheckpoint(dirpath=ckpt_dir, filename="step{step:05d}", auto_insert_metric_name=False,
                                every_n_train_steps=self.settings.checkpoint_every, save_top_k=1, save_last=True)
        L.seed_everything(seed, workers=True)
        plugins = [instantiate(plugin) for plugin in self.cfg.trainer.get("plugins") or []]
        trainer: L.Trainer = instantiate(
            self.cfg.trainer, max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0, plugins=plugins,
            default_root_dir=str(folder), callbacks=[saver, _KillAtStep(phase)], enable_progress_bar=False,
            logger=CSVLogger(str(folder), name="", version=""))
        log.info("%s: %d steps on %d answer-only + %d rationale items%s", phase, steps, len(self.train_split),
                 self.datamodule.splits["train"].num_rationale_items, " (resuming)" if last.exists() else "")
        # Lightning keeps the modes modules are in when fit starts: after an evaluation that is eval mode, and the
        # trained encoder's BatchNorm would then neither use batch statistics nor update its own.
        self.run.module.train()
        trainer.fit(self.run.module, datamodule=self.datamodule, ckpt_path=str(last) if last.exists() else None,
                    weights_only=True)
        self.datamodule.splits["train"] = self.train_split
        self._save_weights(folder / "trainable.safetensors")
        reasoning = bool(rationales)
        summary = self.evaluate("val", reasoning)
        with (folder / "generations_val.jsonl").open("w") as handle:  # what the phase's validation score read
            handle.writelines(json.dumps(json_safe(row)) + "\n" for row in summary["rows"])
        result = {"phase": phase, "steps": steps, "rationale_items": len(rationales), "asked_for_reasoning": reasoning,
                  "val": scalar_metrics(summary), "val_unparsed": summary["unparsed"],
                  "train_seconds": round(time.perf_counter() - started, 1)}
        _write_json(done, result)
        return result

    # ---- evaluation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str, reasoning: bool) -> dict:
        """Greedy answers on ``split`` scored by the evaluation's code; questions ask for reasoning if ``reasoning``."""
        dataset = self.datamodule.splits[split]
        view = AskingForReasoning(dataset, self.instruction) if reasoning else dataset
        evaluator = self.run.module.evaluator
        evaluator.reasoning = reasoning
        # A rationale needs more room than the data's short answers.
        evaluator.generation = (replace(self.answer_generation, max_new_tokens=self.settings.max_new_tokens)
                                if reasoning else self.answer_generation)
        collate = MultimodalCollator(self.formatter, generation_inputs=True)
        batch_size = self.datamodule.eval_batch_size
        self.model.to(self.device).eval()
        rows = []
        for start in range(0, len(view), batch_size):
            batch = collate([view[i] for i in range(start, min(start + batch_size, len(view)))])
            rows += evaluator.batch_rows(self.model, _to_device(batch, self.device), with_label_scores=False)
        self.model.cpu()
        summary = evaluator.summarize(rows)
        summary["unparsed"] = sum(r.get("predicted_label") == "unparsed" for r in rows)
        summary["rows"] = rows
        return summary

    def test(self, phase: str, reasoning: bool) -> dict:
        """Test scores of a finished phase's weights (``test_<phase>.json``), computed once."""
        path = self.out / f"test_{phase}.json"
        if path.exists():
            return json.loads(path.read_text())
        self._load_weights(self.out / phase / "trainable.safetensors")
        summary = self.evaluate("test", reasoning)
        correct = round(summary["accuracy"] * summary["num_scored"]) if summary.get("num_scored") else 0
        result = {"test": scalar_metrics(summary), "test_unparsed": summary["unparsed"],
                  "test_ci95": wilson_interval(correct, summary.get("num_scored", 0))}
        _write_json(path, result)
        with (self.out / f"generations_test_{phase}.jsonl").open("w") as handle:
            handle.writelines(json.dumps(json_safe(row)) + "\n" for row in summary["rows"])
        return result

    # ---- sampling and filtering ----------------------------------------------------------------------------
    def _sample_batches(self, folder: Path, round_index: int, indices: list[int], hints: dict[int, str] | None,
                        prefix: str) -> list[dict]:
        """K completions for each training item in ``indices`` (with the reference as a hint where ``hints`` gives
        one), one file per batch under ``folder``; batches already on disk are read, not redrawn."""
        settings = self.settings
        view = FixedSeeds(self.train_split, self.cfg.seed + round_index)
        collate = MultimodalCollator(self.formatter, generation_inputs=True)
        tokenizer = self.formatter.tokenizer
        folder.mkdir(parents=True, exist_ok=True)
        rows: list[dict] = []
        for number, start in enumerate(range(0, len(indices), settings.sample_batch_size)):
            path = folder / f"{prefix}_{number:05d}.jsonl"
            if path.exists():
                rows += [json.loads(line) for line in path.read_text().splitlines()]
                continue
            chunk = indices[start:start + settings.sample_batch_size]
            items = [dict(view[i]) for i in chunk]
            plain = [item["question"] for item in items]
            for i, item in zip(chunk, items):
                question = item["question"] if hints is None else f"{item['question']}\nHint: the answer is {hints[i]}"
                item["question"] = ask_for_reasoning(question, self.instruction)
            batch = _to_device(collate(items), self.device)
            generator = torch.Generator(device=self.device).manual_seed(
                (self.cfg.seed * 7919 + round_index * 104729 + number * 2 + (hints is not None)) % (2**63 - 1))
            new = sample_completions(self.model, batch["prompt_input_ids"], batch["prompt_attention_mask"],
                                     batch["signals"], settings.samples_per_question, settings.max_new_tokens, True,
                                     settings.temperature, settings.top_p, tokenizer.eos_token_id,
                                     tokenizer.pad_token_id, generator)
            texts = [t.strip() for t in tokenizer.batch_decode(new.cpu(), skip_special_tokens=True)]
            k = settings.samples_per_question
            batch_rows = [{"index": i, "id": item["id"], "question": q, "reference": item["answer"],
                           "label": item.get("label"), "facts": item.get("facts") or {},
                           "completions": texts[row * k:(row + 1) * k]}
                          for row, (i, item, q) in enumerate(zip(chunk, items, plain))]
            write_jsonl(path, batch_rows)
            kill_point(f"sample:{round_index}:{number}")
            rows += batch_rows
        return rows

    def _judge(self, rows: list[dict], source: str, round_index: int, model_hash: str, counts: dict) -> list[dict]:
        """Kept rationales of sampled rows (distinct texts per question); ``counts`` gains the verdicts."""
        kept = []
        for row in rows:
            seen = set()
            for completion in row["completions"]:
                judged = judge(completion, row["reference"], row["label"], row["facts"], self.scorer, self.checkers)
                duplicate = judged.kept and judged.rationale.text() in seen  # kept once per question
                reason = "duplicate" if duplicate else judged.reason
                counts[reason] = counts.get(reason, 0) + 1
                if not judged.kept or duplicate:
                    continue
                seen.add(judged.rationale.text())
                kept.append({"id": row["id"], "question": row["question"], "rationale": judged.rationale.reasoning,
                             "answer": judged.rationale.answer, "source": source, "checkers": judged.verdicts_json(),
                             "round": round_index, "model_hash": model_hash})
        return kept

    def sample_round(self, round_index: int) -> tuple[list[dict], dict]:
        """Round ``round_index``'s rationales (seeds + kept samples) and its filter counts, from disk if written."""
        folder = self.out / f"round_{round_index}"
        written, stats_path = folder / "rationales.jsonl", folder / "filter.json"
        if written.exists() and stats_path.exists():
            return read_rationales(written, self.train_ids), json.loads(stats_path.read_text())
        started = time.perf_counter()
        model_hash = self.model_hash()
        self.model.to(self.device).eval()
        rows = self._sample_batches(folder / "samples", round_index, list(range(len(self.train_split))), None, "batch")
        counts: dict[str, int] = {}
        kept = self._judge(rows, "sampled", round_index, model_hash, counts)
        answered = {row["id"] for row in rows if any(
            (parsed := parse_rationale(c)) is not None and self.scorer.is_correct(parsed.answer, row["reference"], row["label"])
            for c in row["completions"])}
        hinted_counts: dict[str, int] = {}
        if self.settings.rationalize:  # STaR's rationalization: the answer as a hint where no sample survived
            solved = {row["id"] for row in kept}
            missing = [row["index"] for row in rows if row["id"] not in solved]
            hints = {row["index"]: row["reference"] for row in rows if row["id"] not in solved}
            hinted = self._sample_batches(folder / "samples", round_index, missing, hints, "hinted")
            kept += self._judge(hinted, "hinted", round_index, model_hash, hinted_counts)
        self.model.cpu()
        seeds = [{**row, "checkers": [], "round": round_index, "model_hash": model_hash} for row in self.seeds]
        rationales = seeds + kept
        sampled = [r for r in kept if r["source"] == "sampled"]
        stats = {"round": round_index, "questions": len(rows), "completions": sum(len(r["completions"]) for r in rows),
                 "kept": len(sampled), "kept_hinted": len(kept) - len(sampled), "seeds": len(seeds),
                 "verdicts": counts, "hinted_verdicts": hinted_counts,
                 "questions_with_kept": len({r["id"] for r in sampled}),
                 "pass_at_k": len(answered) / max(1, len(rows)),
                 "mean_rationale_words": (sum(len(r["rationale"].split()) for r in sampled) / len(sampled)) if sampled else 0.0,
                 "sampling_seconds": round(time.perf_counter() - started, 1), "model_hash": model_hash}
        write_jsonl(written, rationales)
        kill_point(f"written:{round_index}")
        _write_json(stats_path, stats)
        log.info("Round %d: kept %d of %d completions (%d questions of %d), pass@%d %.3f", round_index, len(sampled),
                 stats["completions"], stats["questions_with_kept"], len(rows), self.settings.samples_per_question,
                 stats["pass_at_k"])
        return rationales, stats

    # ---- the loop ------------------------------------------------------------------------------------------
    def _log(self, metrics: dict, step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def run_rounds(self) -> dict:
        """Every round, the baseline and the report; returns the report (``selftrain.json``)."""
        settings = self.settings
        for logger in self.loggers:
            logger.log_hyperparams(OmegaConf.to_container(self.cfg, resolve=True))
        initial = self._initial_weights()
        if not self.seeds:
            log.warning("No seed rationales: round 0 trains on answers only, and round 1 samples from that model")
        round0_rationales = [{**row, "checkers": [], "round": 0, "model_hash": "seed"} for row in self.seeds]
        folder0 = self.out / "round_0"
        if not (folder0 / "rationales.jsonl").exists():
            write_jsonl(folder0 / "rationales.jsonl", round0_rationales)
        rounds = [{**self.fit("round_0", round0_rationales, settings.round0_steps, initial, self.cfg.seed),
                   "round": 0, "total_steps": settings.round0_steps, "seeds": len(self.seeds)}]
        self._log({"round/val_accuracy": rounds[0]["val"].get("accuracy", float("nan"))}, 0)
        best, since_best = 0, 0
        for index in range(1, settings.max_rounds + 1):
            if since_best >= settings.patience:
                break
            self._load_weights(self.out / f"round_{index - 1}" / "trainable.safetensors")
            rationales, stats = self.sample_round(index)
            result = self.fit(f"round_{index}", rationales, settings.steps_per_round,
                              self.out / f"round_{index - 1}" / "trainable.safetensors", self.cfg.seed + index)
            total = rounds[-1]["total_steps"] + settings.steps_per_round
            rounds.append({**stats, **result, "round": index, "total_steps": total})
            self._log({"round/val_accuracy": result["val"].get("accuracy", float("nan")), "round/kept": stats["kept"],
                       "round/pass_at_k": stats["pass_at_k"], "round/sampling_seconds": stats["sampling_seconds"],
                       "round/train_seconds": result["train_seconds"]}, index)
            if result["val"].get("accuracy", -1) > rounds[best]["val"].get("accuracy", -1):
                best, since_best = index, 0
            else:
                since_best += 1
        rows = {"final": {"phase": f"round_{best}", "round": best, "steps": rounds[best]["total_steps"],
                          "asked_for_reasoning": rounds[best]["asked_for_reasoning"],
                          "val_accuracy": rounds[best]["val"].get("accuracy")},
                "seed_only": {"phase": "round_0", "round": 0, "steps": rounds[0]["total_steps"],
                              "asked_for_reasoning": rounds[0]["asked_for_reasoning"],
                              "val_accuracy": rounds[0]["val"].get("accuracy")}}
        if settings.answer_only_baseline:
            baseline = self.fit("answer_only", [], rows["final"]["steps"], initial, self.cfg.seed + 1000)
            rows["answer_only_baseline"] = {"phase": "answer_only", "steps": baseline["steps"],
                                            "asked_for_reasoning": False, "val_accuracy": baseline["val"].get("accuracy")}
        for row in rows.values():
            tested = self.test(row["phase"], row["asked_for_reasoning"])
            row.update(test_accuracy=tested["test"].get("accuracy"), test_ci95=tested["test_ci95"],
                       test_unparsed=tested["test_unparsed"], test_num_scored=tested["test"].get("num_scored"))
        self._load_weights(self.out / f"round_{best}" / "trainable.safetensors")  # the result, in memory too
        report = {"best_round": best, "rounds": rounds, "rows": rows,
                  "settings": OmegaConf.to_container(settings, resolve=True)}
        write_report(self.out, report)
        # predict.py / eval.py ckpt=<this folder> load the best round's weights (find_checkpoint reads weights_from)
        # and, seeing selftrain in its config, ask for reasoning.
        best_ckpt = self.out / f"round_{best}" / "checkpoints" / "last.ckpt"
        _write_json(self.out / "metrics.json", {"weights_from": str(best_ckpt), "best_round": best,
                                                **{f"{name}/test_accuracy": row["test_accuracy"] for name, row in rows.items()}})
        self._log({f"final/{name}_test_accuracy": row["test_accuracy"] for name, row in rows.items()
                   if row["test_accuracy"] is not None}, len(rounds))
        return report
