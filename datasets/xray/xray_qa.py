"""Question/answer samples over radiographs, shared by every X-ray source (MIMIC-CXR, CheXpert, CSV).

A source turns its own layout into ``XraySample`` rows; ``XrayQADataset`` then filters views,
decodes every image once into the cache (in parallel), applies the error policy and serves
``{"signals": {"xray": [(1, S, S)]}, question, answer, label, id}`` items.

Error policy (``on_error``): ``raise`` stops at the first unreadable file with its path and reason;
``skip`` drops it, logs path and reason, and counts it in ``stats`` (the run writes the counts to
its metrics). Ids and logs carry file paths and data-set ids only, never DICOM header values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mmmed_datasets.xray.xray_cache import CachedImage, XrayImageCache
from mmmed_datasets.xray.xray_image import DataFileError, ImageReadError

log = logging.getLogger(__name__)

MODALITY = "xray"  # questions mark the image with <xray>
ON_ERROR = ("raise", "skip")


class SampleError(DataFileError):
    """A sample that cannot be built (e.g. a missing or empty report); names the file and reason."""


@dataclass
class XraySample:
    """One question about one image. ``view`` is the metadata's ViewPosition when the source has one."""

    id: str
    path: Path
    question: str
    answer: str
    label: str | None
    view: str | None = None


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")


def normalise_views(views: list[str] | None) -> set[str] | None:
    """Upper-cased ViewPosition values to keep; None keeps every image."""
    return None if views is None else {str(v).strip().upper() for v in views}


class XrayQADataset(Dataset):
    """Serves decoded radiographs with their question and answer.

    Args:
        samples: rows from a source.
        images: the decode cache (size, VOI policy, workers).
        views: ViewPosition values to keep (e.g. ``[PA, AP]``); an image with no ViewPosition is
            kept only when ``views`` is None.
        on_error: ``raise`` or ``skip`` for unreadable images.
        source: the source's name, used in logs.
        skipped: failures the source already met and skipped (e.g. missing reports), counted here.
    """

    def __init__(
        self,
        samples: list[XraySample],
        images: XrayImageCache,
        views: list[str] | None,
        on_error: str,
        source: str,
        skipped: list[DataFileError] | None = None,
    ) -> None:
        check_on_error(on_error)
        self.images = images
        self.source = source
        keep_views = normalise_views(views)
        skipped = list(skipped or [])
        filtered = 0
        candidates = []
        for sample in samples:
            if keep_views is not None and sample.view is not None and sample.view.upper() not in keep_views:
                filtered += 1
            else:
                candidates.append(sample)
        cached = images.warm([s.path for s in candidates])
        self.samples: list[XraySample] = []
        self.entries: list[Path] = []
        for sample in candidates:
            outcome = cached[sample.path]
            if isinstance(outcome, ImageReadError):
                if on_error == "raise":
                    raise outcome
                skipped.append(outcome)
                continue
            assert isinstance(outcome, CachedImage)
            view = sample.view or outcome.view
            if keep_views is not None and (view is None or view.upper() not in keep_views):
                filtered += 1
                continue
            self.samples.append(sample)
            self.entries.append(outcome.entry)
        for err in skipped:
            log.warning("%s: skipped %s: %s", source, err.path, err.reason)
        self.stats = {"samples": len(self.samples), "skipped": len(skipped), "filtered_view": filtered}
        log.info("%s: %d samples, %d skipped, %d filtered by view (keep %s)", source, len(self.samples),
                 len(skipped), filtered, sorted(keep_views) if keep_views else "all")
        if not self.samples:
            raise ValueError(f"{source}: no usable samples ({len(skipped)} skipped, {filtered} filtered by view)")

    def __len__(self) -> int:
        return len(self.samples)

    def plot_inputs(self, index: int) -> dict:
        """What a picture of item ``index`` shows: the image the encoder sees (drawn by the modality plugin's ``draw``)."""
        return {"kind": "xray", "image": self[index]["signals"][MODALITY][0].numpy()}

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        index = index[0] if isinstance(index, tuple) else index  # (index, item seed): no augmentation uses it
        sample = self.samples[index]
        image = torch.from_numpy(self.images.load(sample.path, self.entries[index]))  # (1, S, S)
        return {
            "id": sample.id,
            "signals": {MODALITY: [image]},
            "question": sample.question,
            "answer": sample.answer,
            "label": sample.label,
        }
