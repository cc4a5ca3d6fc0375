"""One DataModule for every data source: datasets come from config, batches from MultimodalCollator."""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

from mmmed.model.collate import MultimodalCollator
from mmmed.model.prompts import ChatFormatter
from mmmed.train.resumable import EpochShuffleSampler, ResumableDataLoader


class MultimodalDataModule(L.LightningDataModule):
    """Builds train/val/test datasets from one dataset partial and batches them for a ChatFormatter.

    Args:
        root: the data set's folder (the dataset config interpolates it).
        dataset: partial dataset class holding every setting the splits share.
        splits: ``{"train": {...}, "val": {...}, "test": {...}}``: the keyword arguments that differ.
        prepare: called once on rank 0 before the datasets are built (e.g. generate demo data), or None.
        batch_size: training batch size per device.
        eval_batch_size: batch size for validation/test (generation).
        num_workers: DataLoader worker processes.
        max_length: longest token sequence; longer answers are truncated, longer prompts are an error.
        answer_classes: class -> regular expression naming it in an answer (for accuracy).
        answer_parts: part -> {class -> regular expression} when an answer has several scored parts (labels are
            then ``{part: class}``), else empty.
        max_new_tokens: generation budget for an answer when evaluating.
        label_scores: the label set whose per-label AUROC evaluation reports (a ``LabelScoring``), or None.
        report_metrics: ``text`` (BLEU, ROUGE-L) or ``radiology`` (also CheXbert/RadGraph F1) when answers
            are free-text reports, else None.
        seed: seeds the training order and per-item augmentation (with the epoch).
        answer_values: value name -> regular expression reading a number an answer states (its first group), scored
            by mean absolute error (e.g. the heart rate in the demo's reports), else empty.
        pad_to_multiple_of: round each batch's length up to this (``build_run`` passes ``speed.pad_to_multiple_of``:
            8 on a GPU for tensor cores, 1 on CPU).
    """

    def __init__(
        self,
        root: str,
        dataset: Callable[..., Dataset],
        splits: dict[str, dict],
        prepare: Callable[[], object] | None,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        max_length: int,
        answer_classes: dict[str, str],
        max_new_tokens: int,
        label_scores: object | None,
        report_metrics: str | None,
        seed: int,
        answer_parts: dict[str, dict[str, str]] | None = None,
        pad_to_multiple_of: int = 8,
        answer_values: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.pad_to_multiple_of = pad_to_multiple_of
        self.root = root
        self.dataset_factory = dataset
        self.split_kwargs = {name: dict(kwargs) for name, kwargs in splits.items()}
        self.prepare = prepare
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.max_length = max_length
        for where, classes in [("answer_classes", answer_classes or {}),
                               *((f"answer_parts.{part}", c) for part, c in (answer_parts or {}).items())]:
            odd = [name for name in classes if not isinstance(name, str)]
            if odd:  # YAML 1.1 reads a bare yes/no/on/off key as a boolean: every answer would then score wrong
                raise ValueError(f"data.{where}: class names must be strings, got {odd!r}; quote them in the "
                                 f"config (\"yes\": ..., not yes: ...)")
        self.answer_classes = answer_classes
        self.answer_parts = dict(answer_parts or {})
        self.answer_values = dict(answer_values or {})
        self.max_new_tokens = max_new_tokens
        if report_metrics not in (None, "text", "radiology"):
            raise ValueError(f"data.report_metrics must be null, text or radiology, not {report_metrics!r}")
        self.label_scores = label_scores
        self.report_metrics = report_metrics
        self.seed = seed
        self.formatter: ChatFormatter | None = None
        self.splits: dict[str, Dataset] = {}
        # Signal statistics of the training split by modality ({modality: stats}), if the data uses any.
        self.normalization: dict | None = None

    def attach_formatter(self, formatter: ChatFormatter) -> None:
        """The formatter depends on the tokenizer and encoders, so the model side provides it."""
        self.formatter = formatter

    def prepare_data(self) -> None:
        if self.prepare is not None:
            self.prepare()

    def setup(self, stage: str | None = None) -> None:
        # Building a split may build its cache (e.g. the ECG signal cache): global rank 0 first, the others
        # after the barrier open what it wrote instead of each building it again.
        distributed = self.trainer is not None and self.trainer.world_size > 1
        if distributed and not self.trainer.is_global_zero:
            self.trainer.strategy.barrier("mmmed.train.datamodule.setup")
        for split, kwargs in self.split_kwargs.items():
            if split not in self.splits:
                self.splits[split] = self.dataset_factory(**kwargs)
        if distributed and self.trainer.is_global_zero:
            self.trainer.strategy.barrier("mmmed.train.datamodule.setup")
        # Signal statistics come from the training split only, and every split uses them. A checkpoint
        # carries them (state_dict below), so evaluation reuses the training run's numbers.
        train = self.splits.get("train")
        if self.normalization is None and hasattr(train, "fit_normalization"):
            self.normalization = train.fit_normalization()
        self._share_normalization()

    def _share_normalization(self) -> None:
        for dataset in self.splits.values():
            if hasattr(dataset, "set_normalization"):
                dataset.set_normalization(self.normalization)

    def state_dict(self) -> dict:
        """Saved in every checkpoint: the training split's normalisation statistics (or None)."""
        return {"normalization": self.normalization}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the statistics a checkpoint was trained with."""
        self.normalization = state_dict.get("normalization")
        self._share_normalization()

    def data_stats(self) -> dict[str, int]:
        """Per-split counts a data set reports (samples, skipped files, filtered views), for the run's metrics.

        A count per name (an ECG split's ``leads_seen``) becomes one metric per name:
        ``data/<split>/leads_seen/<name>``, so every value stays a number the loggers accept.
        """
        stats = {}
        for split, dataset in self.splits.items():
            for key, value in getattr(dataset, "stats", {}).items():
                if isinstance(value, dict):
                    stats.update({f"data/{split}/{key}/{name}": int(count) for name, count in value.items()})
                else:
                    stats[f"data/{split}/{key}"] = int(value)
        return stats

    def _loader(self, split: str, shuffle: bool, batch_size: int, generation_inputs: bool) -> DataLoader:
        if self.formatter is None:
            raise RuntimeError("attach_formatter() must be called before the data loaders are built")
        collate = MultimodalCollator(self.formatter, generation_inputs=generation_inputs,
                                     pad_to_multiple_of=self.pad_to_multiple_of)
        # Its own generator: creating an iterator draws a worker base seed, which must not consume the
        # global RNG that dropout uses (a resumed run would otherwise drift from an uninterrupted one).
        generator = torch.Generator().manual_seed(self.seed)
        common = dict(num_workers=self.num_workers, persistent_workers=self.num_workers > 0, collate_fn=collate,
                      generator=generator)
        if not shuffle:
            return DataLoader(self.splits[split], batch_size=batch_size, shuffle=False, **common)
        # Order and augmentation from (seed, epoch) only, and a position saved in checkpoints: see resumable.py.
        sampler = BatchSampler(EpochShuffleSampler(len(self.splits[split]), self.seed), batch_size, drop_last=True)
        return ResumableDataLoader(self.splits[split], batch_sampler=sampler, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size, False)

    def eval_dataloader(self, split: str) -> DataLoader:
        """A split in order, batched for generation: what validation, testing and eval.py score."""
        return self._loader(split, False, self.eval_batch_size, True)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")
