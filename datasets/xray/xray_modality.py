"""The chest X-ray modality: DICOM radiographs and PNG/JPEG bitmaps, decoded once (conf/modality/xray.yaml).

A file is decoded by the standard's pixel pipeline (``read_radiograph``: Modality LUT, VOI LUT or window,
the ``no_window`` policy, MONOCHROME1 inverted), letterboxed to ``size`` x ``size`` and stored as float16 in
the image cache (``XrayImageCache``). Inference (:meth:`XrayModality.read`) rounds through float16 too, so
it feeds the encoder exactly the values training read from the cache.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from mmmed.model.modality import ModalityPlugin, Signal
from mmmed_datasets.ecg.ecg_modality import ECG_WAVEFORM_CLASSES, dicom_sop_class
from mmmed_datasets.xray.xray_cache import XrayImageCache
from mmmed_datasets.xray.xray_image import (
    DICOM_SUFFIXES,
    ImageReadError,
    check_no_window,
    decode_settings,
    letterbox,
    read_radiograph,
)

BITMAP_FORMATS = ("PNG", "JPEG")  # what Pillow must recognise a non-DICOM file as (CheXpert ships JPEGs)


def is_dicom_image(path: str | Path) -> bool:
    """A DICOM file (by ``read_radiograph``'s suffixes, with the ``DICM`` preamble) of an image storage SOP class."""
    if Path(path).suffix.lower() not in DICOM_SUFFIXES:
        return False
    sop = dicom_sop_class(path)
    return sop is not None and str(sop) not in ECG_WAVEFORM_CLASSES and "Image Storage" in sop.name


def is_bitmap(path: str | Path) -> bool:
    """A PNG or JPEG file, by its header (Pillow reads no pixels to tell)."""
    try:
        with Image.open(path) as image:
            return image.format in BITMAP_FORMATS
    except (OSError, ValueError, SyntaxError):
        return False


def decode(path: str | Path, images: Mapping) -> torch.Tensor:
    """One file as the cache stores it: decoded, letterboxed, rounded through float16. (1, S, S) float32"""
    pixels = letterbox(read_radiograph(path, **decode_settings(images)).pixels, images["size"])  # (1, S, S)
    return torch.from_numpy(pixels.astype(np.float16).astype(np.float32))


class XrayImages:
    """An X-ray :class:`~mmmed.model.modality.SignalSource`: a split's images decoded once, through the cache or on the fly.

    ``errors``: path -> reason; ``stats``: ``images`` (readable) and ``views_seen`` (header ViewPosition ->
    images; ``none`` when absent); ``views``: path -> ViewPosition, for a data set's view filter.
    """

    def __init__(self, paths: list[str], images: dict, cache: XrayImageCache | None) -> None:
        self.images, self.cache = images, cache
        unique = [Path(path) for path in dict.fromkeys(str(path) for path in paths)]
        self.errors: dict[str, str] = {}
        self.views: dict[str, str | None] = {}
        self.entries: dict[str, Path] = {}
        if cache is not None:
            for path, outcome in cache.warm(unique).items():
                if isinstance(outcome, ImageReadError):
                    self.errors[str(path)] = outcome.reason
                else:
                    self.views[str(path)], self.entries[str(path)] = outcome.view, outcome.entry
        else:  # no cache folder (an exported model's settings): decode each file now to find the bad ones
            for path in unique:
                try:
                    self.views[str(path)] = read_radiograph(path, **decode_settings(images)).view
                except ImageReadError as err:
                    self.errors[str(path)] = err.reason
        seen = Counter(view or "none" for view in self.views.values())
        self.stats = {"images": len(self.views), "views_seen": dict(sorted(seen.items()))}
        self.eval_views = 1

    def get(self, path: str, train: bool, rng: np.random.Generator | None, crop: int = 0) -> Signal:
        """The image the encoder sees, (1, S, S) float32 (float16 values); no augmentation, so ``rng`` is unused."""
        key = str(path)
        if key in self.errors:
            raise ImageReadError(path, self.errors[key])
        if key not in self.views:
            raise KeyError(f"{path} is not among the opened images")
        if self.cache is None:
            return decode(path, self.images)
        return torch.from_numpy(self.cache.load(Path(path), self.entries[key]))

    def fit_normalization(self) -> None:
        """Images are in [0, 1] by the decode itself: no statistics."""
        return None

    def set_normalization(self, stats: dict | None) -> None:
        """Nothing to set (see ``fit_normalization``)."""


class XrayModality(ModalityPlugin):
    """Chest radiographs: DICOM images (any transfer syntax pydicom's plugins decode) and PNG/JPEG bitmaps.

    Args:
        name, description, trainable, net: see :class:`~mmmed.model.modality.ModalityPlugin`.
        images: decode settings ``{size, apply_voi, no_window, percentiles}`` (conf/xray_images/; a checkpoint
            from before ``no_window`` existed decodes over the full range, as it was trained).
        cache_dir: root of the image cache (``<cache_dir>/xray``), or None: ``open`` decodes each file once to
            find the bad ones, ``get`` decodes again.
        workers: processes that decode cache misses.
    """

    def __init__(self, name: str, description: str, trainable: bool, net: Mapping, images: Mapping,
                 cache_dir: str | None = None, workers: int = 1,
                 resolve: Callable[[str], Callable[..., Any]] | None = None) -> None:
        super().__init__(name, description, trainable, net, resolve)
        settings = decode_settings(images)
        check_no_window(settings["no_window"], settings["percentiles"])
        percentiles = settings["percentiles"]  # kept as given (full_range ignores them), so settings() shows the config
        self.images = {"size": int(images["size"]), "apply_voi": bool(settings["apply_voi"]),
                       "no_window": settings["no_window"],
                       "percentiles": None if percentiles is None else [float(p) for p in percentiles]}
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.workers = int(workers)

    def claims(self, path: str | Path) -> bool:
        """A DICOM image (not a waveform) or a PNG/JPEG bitmap; headers only."""
        path = Path(path)
        if not path.is_file():
            return False
        if path.suffix.lower() in DICOM_SUFFIXES:  # read_radiograph decodes these as DICOM
            return is_dicom_image(path)
        return is_bitmap(path)

    def read(self, path: str | Path, normalization: dict | None = None) -> list[Signal]:
        """The one image the encoder sees, (1, S, S), as the cache stores it; ``normalization`` is unused."""
        return [decode(path, self.images)]

    def open(self, paths: list[str], train: bool) -> XrayImages:
        """The images decoded into the cache (in parallel), or checked one by one without a cache folder."""
        cache = None if self.cache_dir is None else XrayImageCache(self.cache_dir, workers=self.workers, **self.images)
        return XrayImages(paths, self.images, cache)

    def picture(self, path: str | Path) -> dict[str, Any]:
        """The image the encoder sees."""
        return {"kind": self.name, "image": self.read(path)[0].numpy()}

    def draw(self, inputs: dict[str, Any], path: str | Path, *, question: str, reference: str, answer: str) -> Path:
        """The image of ``inputs`` (from :meth:`picture`) with the question and answers, as a PNG."""
        from mmmed_datasets.xray.xray_plot import plot_xray  # matplotlib only when drawing

        return plot_xray(inputs["image"], question=question, reference=reference, answer=answer, path=path)

    def settings(self) -> dict[str, Any]:
        """The decode settings; no cache folder (a machine's path), so inference decodes each file itself."""
        return {"images": dict(self.images), "cache_dir": None, "workers": 1}

    @classmethod
    def legacy_settings(cls, saved: dict[str, Any]) -> dict[str, Any]:
        """mmmed 0.1 stored the decode settings as ``xray_images`` (before ``no_window``: full range, as trained)."""
        return {"images": dict(saved["xray_images"]), "cache_dir": None, "workers": 1}
