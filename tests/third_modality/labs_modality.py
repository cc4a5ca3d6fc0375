"""A test-only third modality: a patient's lab values, one JSON file per draw (``{"potassium": 5.9, ...}``).

Plugin, encoder (labs_encoder.py) and yaml (conf/modality/labs.yaml) are all it takes: the core has no line
about it. Values are standardised by each analyte's reference interval: (value - midpoint) / half-width, so
0 is mid-normal and +-1 the interval's edges; an analyte absent from the file is masked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from mmmed.model.modality import ModalityPlugin, Signal

SUFFIX = ".labs.json"


class LabFileError(ValueError):
    """A lab file that cannot be read; names the file and the problem."""


class LabsModality(ModalityPlugin):
    """Lab values from ``*.labs.json`` files.

    Args:
        name, description, trainable, net, resolve: see :class:`~mmmed.model.modality.ModalityPlugin`.
        reference_intervals: analyte -> [low, high], in the encoder's order.
    """

    def __init__(self, name: str, description: str, trainable: bool, net: Mapping,
                 reference_intervals: Mapping[str, list[float]],
                 resolve: Callable[[str], Callable[..., Any]] | None = None) -> None:
        super().__init__(name, description, trainable, net, resolve)
        self.reference_intervals = {k: [float(lo), float(hi)] for k, (lo, hi) in dict(reference_intervals).items()}

    def claims(self, path: str | Path) -> bool:
        return str(path).endswith(SUFFIX) and Path(path).is_file()

    def _values(self, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise LabFileError(f"{path}: not a readable lab file ({err})") from err
        unknown = sorted(set(raw) - set(self.reference_intervals))
        if unknown:
            raise LabFileError(f"{path}: unknown analytes {unknown}")
        values = np.zeros(len(self.reference_intervals), np.float32)
        measured = np.zeros(len(self.reference_intervals), bool)
        for i, (analyte, (low, high)) in enumerate(self.reference_intervals.items()):
            if analyte in raw:
                values[i] = (float(raw[analyte]) - (low + high) / 2) / ((high - low) / 2)
                measured[i] = True
        return values, measured

    def read(self, path: str | Path, normalization: dict | None = None) -> list[Signal]:
        values, measured = self._values(path)
        return [{"values": torch.from_numpy(values), "measured": torch.from_numpy(measured)}]

    def open(self, paths: list[str], train: bool) -> "LabFiles":
        return LabFiles(self, paths)

    def picture(self, path: str | Path) -> dict[str, Any]:
        values, measured = self._values(path)
        return {"kind": self.name, "analytes": list(self.reference_intervals), "values": values, "measured": measured}

    def draw(self, inputs: dict[str, Any], path: str | Path, *, question: str, reference: str, answer: str) -> Path:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4, 3))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.bar(inputs["analytes"], np.where(inputs["measured"], inputs["values"], 0.0))
        ax.set_title(f"Q: {question[:40]}\nA: {answer[:40]} (ref: {reference[:30]})", fontsize=7)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        return path

    def settings(self) -> dict[str, Any]:
        return {"reference_intervals": self.reference_intervals}


class LabFiles:
    """The SignalSource of a split's lab files: read once, kept in memory."""

    def __init__(self, plugin: LabsModality, paths: list[str]) -> None:
        self.errors: dict[str, str] = {}
        self.signals: dict[str, Signal] = {}
        for path in paths:
            try:
                self.signals[path] = plugin.read(path)[0]
            except LabFileError as err:
                self.errors[path] = str(err)
        self.stats = {"files": len(self.signals)}

    def get(self, path: str, train: bool, rng: np.random.Generator | None, crop: int = 0) -> Signal:
        return self.signals[path]

    def fit_normalization(self) -> None:
        return None

    def set_normalization(self, stats: dict | None) -> None:
        pass
