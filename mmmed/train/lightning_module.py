"""Lightning training of a MultimodalLM: loss on answers, validation by generating and scoring answers.

Checkpoints hold only what trains (plus optimizer state and the resolved config); the frozen LLM is
re-loaded from its source on resume, and its identity is checked against the checkpoint's.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Literal

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torch.optim.lr_scheduler import LambdaLR
from transformers import PreTrainedTokenizerBase

from mmmed.eval.evaluation import Evaluator, scalar_metrics
from mmmed.model.multimodal_lm import MultimodalLM

log = logging.getLogger(__name__)

NonFinitePolicy = Literal["skip", "stop"]


class NonFiniteError(FloatingPointError):
    """A training step's loss or gradient was NaN or infinite and ``nonfinite=stop``."""


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float) -> LambdaLR:
    """Linear warm-up to the base learning rate, then cosine decay to ``min_ratio`` of it."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


class MultimodalLitModule(L.LightningModule):
    """Trains the trainable parts of a MultimodalLM.

    Args:
        model: the multimodal model (what trains is decided by its constructor).
        tokenizer: decodes generated answers.
        optimizer: partial optimizer taking parameter groups.
        param_groups: per trained part (``encoder``, ``adapter``, ``lora``, ``llm``) its optimizer
            settings, e.g. ``{"lr": 1e-3, "weight_decay": 0.01}``.
        scheduler: partial taking ``optimizer`` and ``total_steps``, or None.
        evaluator: generates and scores answers (the code eval.py runs too).
        label_scores_in_validation: also score the label set's candidate answers (AUROC) when validating
            during training; the test split always does.
        num_logged_samples: generations kept for the W&B table per evaluation.
        run_config: the resolved run configuration, stored in every checkpoint.
        llm_identity: what identifies the LLM (name and source), checked on resume.
        nonfinite: what a NaN/inf loss or gradient does (``nonfinite`` in conf/train.yaml): ``skip`` drops
            that optimizer step (weights, trained modules' buffers and optimizer state unchanged, counted in
            ``train/nonfinite_skipped``),
            ``stop`` raises :class:`NonFiniteError` before the step, so no NaN weights are ever saved.
    """

    def __init__(
        self,
        model: MultimodalLM,
        tokenizer: PreTrainedTokenizerBase,
        optimizer: Callable[..., torch.optim.Optimizer],
        param_groups: dict[str, dict],
        scheduler: Callable[..., Any] | None,
        evaluator: Evaluator,
        label_scores_in_validation: bool,
        num_logged_samples: int,
        run_config: dict | None = None,
        llm_identity: str | None = None,
        *,
        nonfinite: NonFinitePolicy,
    ) -> None:
        super().__init__()
        if nonfinite not in ("skip", "stop"):
            raise ValueError(f"nonfinite must be 'skip' or 'stop', not {nonfinite!r} (conf/train.yaml)")
        self.model = model
        self.tokenizer = tokenizer
        self.optimizer_factory = optimizer
        self.param_groups = {part: dict(settings) for part, settings in param_groups.items()}
        self.scheduler_factory = scheduler
        self.evaluator = evaluator
        self.label_scores_in_validation = label_scores_in_validation
        self.num_logged_samples = num_logged_samples
        self.run_config = run_config or {}
        self.llm_identity = llm_identity
        self._outputs: dict[str, list[dict]] = {"val": [], "test": []}
        self.generations: dict[str, list[dict]] = {}  # the latest evaluation's answers per split
        self.summaries: dict[str, dict] = {}  # the latest evaluation's full metrics per split (eval_<split>.json)
        self.nonfinite = nonfinite
        self.nonfinite_skipped = 0  # optimizer steps dropped for a NaN/inf; kept in checkpoints
        self._loss_finite: torch.Tensor | None = None  # over this optimizer step's micro-batches; () bool
        self._buffers_before: list[tuple[torch.Tensor, torch.Tensor]] = []  # (live, copy) for nonfinite=skip

    # ---- training -------------------------------------------------------------------------
    def _loss(self, batch: dict) -> tuple[torch.Tensor, int]:
        return self.model(
            batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["labels"], batch["signals"]
        )

    def on_train_start(self) -> None:
        """With several ranks, a batch without some modality still touches its encoder and adapter (zero gradient):
        DDP's all-reduce and FSDP's collectives need every rank to (``MultimodalLM._absent_modality_term``)."""
        self.model.every_modality_in_graph = self.trainer.world_size > 1
        if self.model.every_modality_in_graph:
            lacking = [name for name, encoder in self.model.encoders.items() if not hasattr(encoder, "example_input")]
            if lacking:
                raise TypeError(f"encoder(s) of {lacking} have no example_input(batch_size): distributed training runs "
                                f"it when a rank's batch lacks that modality (README, Adding a modality)")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        # A tensor, not a bool: no device sync here; on_before_optimizer_step reads it once per step.
        finite = torch.isfinite(loss.detach()).all()
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """With ``nonfinite=skip``, copy the trained modules' buffers (BatchNorm statistics) at each step's first
        micro-batch: a forward pass updates them, so a skipped step must put them back too."""
        if self.nonfinite != "skip" or self._loss_finite is not None:
            return
        saved = set(self.model.trainable_state_dict())
        self._buffers_before = [(b, b.detach().clone()) for n, b in self.model.named_buffers() if n in saved]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Apply the ``nonfinite`` policy; runs after backward (and DDP's all-reduce), before clipping and the step."""
        loss_finite, self._loss_finite = self._loss_finite, None
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16's GradScaler skips overflowing steps itself, as part of its loss scaling
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # FSDP2 gradients are DTensors: each rank checks its shard, the reduction below combines them.
        grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad for p in params]
        flags = [torch.isfinite(g).all() for g in grads] + ([loss_finite] if loss_finite is not None else [])
        flags += [torch.isfinite(live).all() for live, _ in self._buffers_before]
        bad = bool(not torch.stack([f.to(self.device) for f in flags]).all()) if flags else False
        if self.trainer.world_size > 1:  # every rank must take the same decision
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            step = self.trainer.global_step + 1  # the step this update would have completed
            culprit = self._first_nonfinite(params, grads, loss_finite)
            if self.nonfinite == "stop":
                last = self._last_checkpoint()
                resume = f"the last good checkpoint is {last}. Resume with ckpt_path={last}" if last else \
                    "no checkpoint was written before it. Start again"
                raise NonFiniteError(
                    f"non-finite {culprit} at training step {step}: stopped before the optimizer step (nonfinite=stop), "
                    f"nothing was saved after it; {resume} after finding the cause, or set nonfinite=skip to drop such steps")
            for p in params:  # optimizers pass over parameters without a gradient: weights and moments unchanged
                p.grad = None
            for live, before in self._buffers_before:
                live.copy_(before)
            self.nonfinite_skipped += 1
            log.warning("Non-finite %s at training step %d: optimizer step skipped (nonfinite=skip; %d skipped so far)",
                        culprit, step, self.nonfinite_skipped)
        self.log("train/nonfinite_skipped", float(self.nonfinite_skipped), on_step=True, on_epoch=False)

    def _first_nonfinite(self, params: list[torch.nn.Parameter], grads: list[torch.Tensor],
                         loss_finite: torch.Tensor | None) -> str:
        """``loss`` or ``gradient of <parameter name>``, for messages (this rank's view)."""
        if loss_finite is not None and not bool(loss_finite):
            return "loss"
        if any(not bool(torch.isfinite(live).all()) for live, _ in self._buffers_before):
            return "buffer (BatchNorm statistics)"
        names = {id(p): n for n, p in self.named_parameters()}
        for p, g in zip(params, grads):
            if not bool(torch.isfinite(g).all()):
                return f"gradient of {names.get(id(p), 'a parameter')}"
        return "loss or gradient (on another rank)"

    def _last_checkpoint(self) -> str | None:
        """The newest checkpoint file this run wrote or resumed from (None: none yet), for messages."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        candidates = [c.last_model_path or c.best_model_path for c in self.trainer.checkpoint_callbacks
                      if isinstance(c, ModelCheckpoint)] + [self.trainer.ckpt_path or ""]
        existing = [Path(p) for p in candidates if p and Path(p).is_file()]
        return str(max(existing, key=lambda p: p.stat().st_mtime)) if existing else None

    def configure_optimizers(self) -> dict:
        groups = self.model.parameter_groups()
        missing = sorted(set(groups) - set(self.param_groups))
        if missing:
            raise ValueError(f"param_groups has no learning rate / weight decay for the trained part(s) {missing}")
        optimizer = self.optimizer_factory(
            [{"params": params, "name": part, **self.param_groups[part]} for part, params in groups.items()]
        )
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- evaluation -----------------------------------------------------------------------
    def generate_answers(self, batch: dict) -> list[str]:
        """Greedy answers for a batch's left-padded prompts."""
        return [row["answer"] for row in self.evaluator.batch_rows(self.model, batch, with_label_scores=False)]

    def _eval_step(self, batch: dict, split: str) -> None:
        loss, _ = self._loss(batch)
        self.log(f"{split}/loss", loss, batch_size=batch["input_ids"].shape[0], sync_dist=True)
        with_scores = split == "test" or self.label_scores_in_validation
        self._outputs[split] += self.evaluator.batch_rows(self.model, batch, with_label_scores=with_scores)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_epoch_end(self, split: str) -> None:
        outputs, self._outputs[split] = self._outputs[split], []
        if not outputs:
            return
        summary = self.evaluator.summarize(outputs)  # several evaluation windows of one record vote
        for key, value in scalar_metrics(summary).items():
            self.log(f"{split}/{key}", value, prog_bar=key == "accuracy", batch_size=1)
        self.generations[split] = outputs
        self.summaries[split] = summary
        if not self.trainer.sanity_checking:
            for o in outputs[:3]:
                log.info("%s %s | ref: %s | answer: %s", split, o["id"], o["reference"], o["answer"])
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                rows = [[self.global_step, o["id"], o["question"], o["reference"], o["answer"]] for o in outputs[: self.num_logged_samples]]
                logger.log_table(f"{split}/generations", columns=["step", "id", "question", "reference", "answer"], data=rows)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ---- sharding -------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Shard the model with FSDP2 under Lightning's ModelParallelStrategy; other strategies wrap it themselves.

        FSDP2 units: each LLM decoder layer, each encoder, each adapter, and the root (token
        embeddings, final norm, LM head). No unit mixes frozen and trained weights: trained leaves
        inside a frozen layer (LoRA's A and B) become units of their own, so frozen units only ever
        all-gather and trained ones alone reduce gradients.
        """
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

        strategy = self.trainer.strategy
        if isinstance(strategy, (DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy)):
            # These strategies load a checkpoint's weights themselves, before on_load_checkpoint, and
            # strictly unless told otherwise; ours lack the frozen LLM by design, and
            # on_load_checkpoint checks the trained weights' names instead.
            self.strict_loading = False
        if not isinstance(strategy, ModelParallelStrategy):
            return
        from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

        if isinstance(self.model, FSDPModule):  # Lightning calls this hook again to test after fitting
            return
        if self.device_mesh["tensor_parallel"].size() != 1:
            raise ValueError("mmmed shards with FSDP2 only, no tensor parallelism: set trainer.strategy.tensor_parallel_size=1")
        mesh = self.device_mesh["data_parallel"]

        def unsharded_params(unit: torch.nn.Module) -> list[torch.nn.Parameter]:
            inner = {id(p) for m in unit.modules() if m is not unit and isinstance(m, FSDPModule) for p in m.parameters()}
            return [p for p in unit.parameters() if id(p) not in inner]

        def shard(unit: torch.nn.Module, name: str) -> None:
            if len({p.requires_grad for p in unsharded_params(unit)}) > 1:
                for leaf in unit.modules():
                    own = list(leaf.parameters(recurse=False))
                    if own and not any(True for _ in leaf.children()) and all(p.requires_grad for p in own):
                        fully_shard(leaf, mesh=mesh)
            if len({p.requires_grad for p in unsharded_params(unit)}) > 1:
                raise ValueError(f"FSDP2 unit {name} mixes frozen and trained weights outside trainable leaf modules: "
                                 "train or freeze each of its submodules whole")
            fully_shard(unit, mesh=mesh)

        llm = self.model.llm
        base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm  # PEFT wraps the transformers model
        layer_classes = set(getattr(base, "_no_split_modules", None) or ())
        layers = [(n, m) for n, m in llm.named_modules() if type(m).__name__ in layer_classes]
        if not layers:
            raise ValueError(f"{type(base).__name__} names no decoder layer class (_no_split_modules): FSDP2 cannot shard it")
        for name, layer in layers:
            shard(layer, f"llm.{name}")
        for part in ("encoders", "adapters"):
            for name, module in getattr(self.model, part).items():  # ModuleDicts have no forward: shard their members
                shard(module, f"{part}.{name}")
        shard(self.model, "root")
        # MultimodalLM.generate uses the root's weights (token embeddings, LM head) outside forward.
        register_fsdp_forward_method(self.model, "generate")

    # ---- checkpoints ----------------------------------------------------------------------
    def _trainable_keys(self) -> set[str]:
        return {f"model.{k}" for k in self.model.trainable_state_dict()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only trained weights; store the config and the LLM's identity."""
        keep = self._trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["mmmed_trainable_keys"] = sorted(keep)  # what on_load_checkpoint checks under sharding strategies
        checkpoint["mmmed_config"] = self.run_config
        checkpoint["mmmed_llm"] = self.llm_identity
        checkpoint["mmmed_nonfinite_skipped"] = self.nonfinite_skipped
        # Dropout (LoRA's, the LLM's in full fine-tuning) draws from torch's generator: a resumed run
        # continues the same stream. Data order and augmentation do not use it (see resumable.py).
        checkpoint["mmmed_rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["mmmed_rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def init_from_checkpoint(self, path: str) -> list[str]:
        """Start from an earlier stage's trained weights (e.g. align before instruct); returns the keys loaded.

        Every weight the checkpoint holds must exist here; weights it lacks (new LoRA layers) keep their
        initialisation. Optimizer, scheduler, step and data position start fresh.
        """
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if checkpoint.get("mmmed_llm") != self.llm_identity:
            raise ValueError(f"{path} was trained with LLM {checkpoint.get('mmmed_llm')!r}, this run loads {self.llm_identity!r}")
        state = checkpoint["state_dict"]
        unknown = sorted(set(state) - set(self.state_dict()))
        if unknown:
            raise ValueError(f"{path} holds weights this model does not have: {unknown[:5]}")
        self.load_state_dict(state, strict=False)
        log.info("Initialised %d tensors from %s", len(state), path)
        return sorted(state)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Check the checkpoint matches this model, then fill in the frozen weights from the live model."""
        # FSDP, FSDP2 and DeepSpeed load the weights themselves before this hook (see configure_model)
        # and pass no state_dict; the names saved beside the weights still tell whether they fit.
        loaded_by_strategy = "state_dict" not in checkpoint
        saved = set(checkpoint.get("mmmed_trainable_keys", ()) if loaded_by_strategy else checkpoint["state_dict"])
        expected = self._trainable_keys()
        if saved != expected:
            raise ValueError(
                f"Checkpoint's trained weights do not match this model: missing {sorted(expected - saved)[:5]}, "
                f"unexpected {sorted(saved - expected)[:5]}"
            )
        if checkpoint.get("mmmed_llm") != self.llm_identity:
            raise ValueError(f"Checkpoint was trained with LLM {checkpoint.get('mmmed_llm')!r}, this run loads {self.llm_identity!r}")
        if not loaded_by_strategy:
            frozen = {k: v for k, v in self.state_dict().items() if k not in expected}
            checkpoint["state_dict"] = {**frozen, **checkpoint["state_dict"]}
        self.nonfinite_skipped = int(checkpoint.get("mmmed_nonfinite_skipped", 0))  # older checkpoints: none counted
        rng = checkpoint.get("mmmed_rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
