"""Patient records of any modalities, from a manifest (``record_manifest.py``): one item per question.

A record holds any number of files per modality (an ECG and two chest films), an optional free-text note,
a question and its answer. Each modality's plugin (``mmmed.model.modality.ModalityPlugin``, from the run's
``modalities``) opens the split's files once (:meth:`ModalityPlugin.open`, through its cache), and items are

  ``{"id": "<patient_id>/<row>", "patient_id", "signals": {modality: [Signal, ...]}, question, answer, label, facts}``

with a ``signals`` entry only for the modalities the patient has (no placeholder for an absent one), in the
run's modality order. The question places the signals: at their tags, or, untagged, all tags first in the
run's modality order (``mmmed.model.prompts.ChatFormatter``).

**The note** goes where a ``<note>`` marker stands in the question (the marker is replaced by the note's
text), else before the question as ``"Note: <note>\\n"``; an untagged question then reads ``<ecg>\\n<xray>\\n
Note: ...\\nWhat ...?``. An empty note adds nothing (a marker is removed with the line break after it).

Error policy (``on_error``): ``raise`` stops at the first bad row or file, naming the manifest line, the file
and the reason; ``skip`` drops the record, logs the first 50 and counts them all in ``stats["skipped"]``
(the run writes the counts to its metrics). A record is dropped when any of its files fails.

With a modality that evaluates several views per file (an ECG's windows with ``eval_crop: multi``), an
evaluation split serves a record once per view (ids ``<id>#crop<k>``); the evaluation votes over them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from mmmed.eval.metrics import CROP_SEPARATOR
from mmmed.model.modality import ModalityPlugin, SignalSource
from mmmed_datasets.common.record_manifest import NOTE_MARKER, PatientRecord, RecordError, check_on_error, read_record_manifest

log = logging.getLogger(__name__)

LOGGED_SKIPS = 50  # skips logged one by one; the rest are counted
_EMPTY_NOTE = re.compile(re.escape(NOTE_MARKER) + r"[ \t]*\n?")


def compose_question(question: str, note: str) -> str:
    """The question with its note: at the ``<note>`` marker, else ``"Note: <note>\\n"`` first; none if empty."""
    note = note.strip()
    if NOTE_MARKER in question:
        return question.replace(NOTE_MARKER, note) if note else _EMPTY_NOTE.sub("", question)
    return f"Note: {note}\n{question}" if note else question


class PatientRecordDataset(Dataset):
    """Question/answer items over patient records of several modalities.

    Args:
        manifest: the records (``.csv`` or ``.jsonl``; columns in ``record_manifest.py``).
        modalities: the run's plugins by name, in the run's order (Hydra builds them from ``${modalities}``).
        split: ``train``, ``val`` or ``test``.
        split_fractions: ``{train: 0.8, val: 0.1, test: 0.1}`` for a manifest without a split column, else unused.
        train: the training split (random crops/augmentation per item) or an evaluation split.
        on_error: ``raise`` or ``skip`` for bad rows and unreadable files.
        source: the data set's name, for logs.
    """

    def __init__(
        self,
        manifest: str,
        modalities: Mapping[str, ModalityPlugin],
        split: str,
        split_fractions: Mapping[str, float] | None,
        train: bool,
        on_error: str,
        source: str = "patients",
    ) -> None:
        check_on_error(on_error)
        self.plugins: dict[str, ModalityPlugin] = dict(modalities.items())
        self.manifest, self.split, self.train, self.source = str(manifest), split, train, f"{source} {split}"
        records, skipped = read_record_manifest(manifest, list(self.plugins), split, split_fractions, on_error)
        self.sources: dict[str, SignalSource] = {}
        for name, plugin in self.plugins.items():
            paths = sorted({path for record in records for path in record.signals.get(name, ())})
            if paths:
                log.info("%s: opening %d %s file(s)", self.source, len(paths), name)
                self.sources[name] = plugin.open(paths, train)
        self.records: list[PatientRecord] = []
        for record in records:
            error = self._first_bad_file(record)
            if error is None:
                self.records.append(record)
            elif on_error == "raise":
                raise error
            else:
                skipped.append(error)
        for err in skipped[:LOGGED_SKIPS]:
            log.warning("%s: skipped %s", self.source, err)
        if len(skipped) > LOGGED_SKIPS:
            log.warning("%s: ... and %d more skipped (the first %d are listed above)", self.source,
                        len(skipped) - LOGGED_SKIPS, LOGGED_SKIPS)
        # Evaluation: one item per view of a record (the most any of its files has); training: one per record.
        self.items: list[tuple[int, int]] = [
            (i, view) for i, record in enumerate(self.records)
            for view in range(1 if train else self._views(record))
        ]
        self.stats = self._stats(len(skipped))
        log.info("%s: %d records (%s), %d skipped", self.source, len(self.records),
                 ", ".join(f"{n} with {m}" for m, n in self.stats["records_with"].items()) or "notes only", len(skipped))
        if not self.records:
            raise ValueError(f"{self.source}: no usable records in {manifest} ({len(skipped)} skipped)")

    def _first_bad_file(self, record: PatientRecord) -> RecordError | None:
        for name, paths in record.signals.items():
            for path in paths:
                reason = self.sources[name].errors.get(path)
                if reason is not None:
                    return RecordError(self.manifest, record.line, f"{name} file {path}: {reason}")
        return None

    def _views(self, record: PatientRecord) -> int:
        return max([getattr(self.sources[name], "eval_views", 1) for name in record.signals] or [1])

    def _stats(self, skipped: int) -> dict:
        """Counts for the run's metrics: records, skips, records per modality, and each source's own counts."""
        stats: dict = {"samples": len(self.records), "skipped": skipped,
                       "records_with": {name: sum(name in r.signals for r in self.records) for name in self.sources}}
        for name, source in self.sources.items():
            for key, value in getattr(source, "stats", {}).items():
                stats[f"{name}/{key}"] = dict(value) if isinstance(value, Mapping) else value
        return stats

    # ---- normalisation with training-split statistics -------------------------------------------------
    def fit_normalization(self) -> dict | None:
        """``{modality: statistics}`` of this (training) split for the modalities that normalise with any; None if none."""
        stats = {name: source.fit_normalization() for name, source in self.sources.items()}
        stats = {name: value for name, value in stats.items() if value is not None}
        return stats or None

    def set_normalization(self, stats: dict | None) -> None:
        """Give each modality its share of the training split's statistics (from ``fit_normalization`` or a checkpoint)."""
        for name, source in self.sources.items():
            source.set_normalization((stats or {}).get(name))

    # ---- items ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def item_id(self, index: int) -> str:
        """Item ``index``'s id without loading its files (self-training maps rationales to items by id)."""
        record_index, view = self.items[index]
        record = self.records[record_index]
        item_id = f"{record.patient_id}/{record.row}"
        return f"{item_id}{CROP_SEPARATOR}{view}" if not self.train and self._views(record) > 1 else item_id

    def plot_inputs(self, index: int) -> dict:
        """What a picture of item ``index`` shows: its first signal's file, as its plugin draws it."""
        record = self.records[self.items[index][0]]
        name = next(iter(record.signals), None)
        if name is None:
            raise ValueError(f"{self.source}: record {record.patient_id}/{record.row} has a note but no signal to draw")
        return {**self.plugins[name].picture(record.signals[name][0]), "kind": name}

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        # The training sampler passes (index, item seed): crops then depend on (run seed, epoch, position) only,
        # so a resumed run draws exactly the crops of an uninterrupted one.
        index, item_seed = index if isinstance(index, tuple) else (index, None)
        record_index, view = self.items[index]
        record = self.records[record_index]
        if item_seed is None and self.train:  # indexed directly: torch's generator (seed_everything) decides
            item_seed = int(torch.randint(0, 2**31 - 1, ()))
        rng = np.random.default_rng(item_seed if self.train else 0)
        signals = {}
        for name, paths in record.signals.items():
            source = self.sources[name]
            crop = min(view, getattr(source, "eval_views", 1) - 1)
            signals[name] = [source.get(path, self.train, rng, crop) for path in paths]
        return {
            "id": self.item_id(index),
            "patient_id": record.patient_id,
            "signals": signals,
            "question": compose_question(record.question, record.note),
            "answer": record.answer,
            "label": record.label,
            "facts": dict(record.facts),  # measured values for self-training's checkers; never in the prompt
        }
