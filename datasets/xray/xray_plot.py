"""An X-ray for evaluation: the preprocessed image the encoder saw, with the question and answers above it.

The figure is ``XRAY_FIGSIZE_IN`` (6.0 x 7.8 in: 600 x 780 px at dpi 100): the text block
(:func:`mmmed.eval.plots.text_block`) on top, the image in a 5.6 in square below. Only matplotlib's object API
is used (no pyplot).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mmmed.eval.plots import save_figure, text_block

XRAY_FIGSIZE_IN = (6.0, 7.8)
XRAY_MARGIN_IN = 0.2
XRAY_IMAGE_IN = XRAY_FIGSIZE_IN[0] - 2 * XRAY_MARGIN_IN  # 5.6 in square, below the text block


def xray_figure(image: np.ndarray, *, question: str, reference: str, answer: str, dpi: float = 100) -> Figure:
    """The preprocessed image the encoder saw, (S, S) or (1, S, S), in grayscale over its own range, with Q/A text.

    Figure size ``XRAY_FIGSIZE_IN`` (6.0 x 7.8 in): the text block on top, the image (an Axes labelled
    ``image``) in a 5.6 in square below.
    """
    pixels = np.asarray(image, dtype=np.float64)
    if pixels.ndim == 3 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.ndim != 2:
        raise ValueError(f"image must be (S, S) or (1, S, S), got an array of shape {np.shape(image)}")
    finite = pixels[np.isfinite(pixels)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)

    width, height = XRAY_FIGSIZE_IN
    fig = Figure(figsize=XRAY_FIGSIZE_IN, dpi=dpi)
    fig.patch.set_facecolor("white")
    m, side = XRAY_MARGIN_IN, XRAY_IMAGE_IN
    ax = fig.add_axes((m / width, m / height, side / width, side / height), label="image")
    ax.imshow(pixels, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest", aspect="equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{pixels.shape[0]} x {pixels.shape[1]}, range [{vmin:.3g}, {vmax:.3g}]", fontsize=8, color="0.3")
    text_block(fig, m, height - m, side, question, reference, answer)
    return fig


def plot_xray(image: np.ndarray, *, question: str, reference: str, answer: str, path: str | Path,
              dpi: float = 100) -> Path:
    """Save :func:`xray_figure` as a PNG at ``path``; returns the path."""
    return save_figure(xray_figure(image, question=question, reference=reference, answer=answer, dpi=dpi), path)
