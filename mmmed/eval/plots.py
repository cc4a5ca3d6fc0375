"""What every evaluation picture shares, and a run's losses and metrics.

A modality plugin draws its own input (its ``draw``); this module gives it the rest: the text block that
shows the question, the reference answer and the model's answer, and saving a figure at a pixel size
known in advance. Only matplotlib's object API is used (no pyplot: no global state, no GUI backend), so
plotting is safe in training processes and tests.

Sizes are fixed, so a PNG's pixel size is ``inches * dpi``, truncated to whole pixels as Agg does; the
run summary is ``SUMMARY_FIGSIZE_IN`` (10 x 4 in: 1000 x 400 px at dpi 100).

Text never overflows its block: each field is wrapped to the block's width (in characters of a monospaced
font, measured as rendered) and capped at ``TEXT_MAX_LINES`` lines (question 4, reference 3, model 4),
the last one ending in an ellipsis when text was cut.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MM_PER_INCH = 25.4

# The text block: one monospaced line every TEXT_LINE_MM, at most TEXT_MAX_LINES lines per field.
TEXT_FONT = "DejaVu Sans Mono"  # ships with matplotlib: every install renders the same glyphs
TEXT_FONT_PT = 8.0
TEXT_LINE_MM = 3.8
TEXT_MAX_LINES = {"Question": 4, "Reference": 3, "Model": 4}
TEXT_BLOCK_MM = 44.0          # fixed, whatever the text: 11 lines of 3.8 mm and some air

SUMMARY_FIGSIZE_IN = (10.0, 4.0)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG at its own dpi and size (no tight bbox: the pixel size stays as documented)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=fig.dpi)
    return path


def wrap_field(label: str, text: str, width: int, max_lines: int) -> list[str]:
    """``"label: text"`` wrapped to ``width`` characters in at most ``max_lines`` lines (``…`` ends a cut one)."""
    prefix = f"{label}: "
    body = " ".join(str(text).split()) or "(empty)"  # newlines and runs of spaces: one space, a fixed area
    return textwrap.wrap(prefix + body, width=width, max_lines=max_lines, placeholder=" …",
                         subsequent_indent=" " * len(prefix), break_long_words=True, break_on_hyphens=False)


def char_width_in(fig: Figure) -> float:
    """Width of one text-block character on ``fig``, in inches, as Agg renders it at the figure's dpi.

    Measured rather than computed from the font's 0.602 em advance: Agg's hinting rounds glyph advances
    to whole pixels, which at dpi 100 makes a line ~5% wider than the nominal width.
    """
    probe = fig.text(0, 0, "M" * 100, family=TEXT_FONT, fontsize=TEXT_FONT_PT)
    width = probe.get_window_extent(FigureCanvasAgg(fig).get_renderer()).width / 100 / fig.dpi
    probe.remove()
    return width


def text_block(fig: Figure, left_in: float, top_in: float, width_in: float,
               question: str, reference: str, answer: str) -> None:
    """Draw the Question / Reference / Model lines from ``top_in`` (inches from the figure's bottom) down.

    Each line is a figure text with gid ``text:question``, ``text:reference`` or ``text:model``.
    """
    width_chars = max(10, int(width_in / char_width_in(fig)))
    line = 0
    for (label, max_lines), text in zip(TEXT_MAX_LINES.items(), (question, reference, answer)):
        for row in wrap_field(label, text, width_chars, max_lines):
            y = top_in - line * TEXT_LINE_MM / MM_PER_INCH
            fig.text(left_in, y, row, transform=fig.dpi_scale_trans, ha="left", va="top",
                     family=TEXT_FONT, fontsize=TEXT_FONT_PT, gid=f"text:{label.lower()}")
            line += 1


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` over the history; rows without it, or with a non-finite value, are skipped."""
    steps, values = [], []
    for row in history:
        value = row.get(key)
        if value is None:
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"history value {key}={row[key]!r} at step {row['step']} is not a number") from None
        if math.isfinite(value):
            steps.append(float(row["step"]))
            values.append(value)
    return steps, values


def summary_figure(history: list[dict]) -> Figure:
    """Losses (left) and validation metrics (right) against the optimizer step; test/* values as stars."""
    if not history:
        raise ValueError("history is empty: nothing to plot")
    for index, row in enumerate(history):
        if "step" not in row:
            raise ValueError(f"history row {index} has no 'step': {row}")
    history = sorted(history, key=lambda row: row["step"])
    keys = list(dict.fromkeys(key for row in history for key in row))  # first-seen order
    skipped = {"val/loss", "val/num_scored", "test/loss", "test/num_scored"}
    metrics = [k for k in keys if k.startswith("val/") and k not in skipped]
    tests = [k for k in keys if k.startswith("test/") and k not in skipped]

    fig = Figure(figsize=SUMMARY_FIGSIZE_IN, dpi=100, layout="constrained")
    losses_ax, metrics_ax = fig.subplots(1, 2)
    for key, style in (("train/loss", {"linewidth": 1.0}), ("val/loss", {"marker": "o", "markersize": 4}),
                       ("test/loss", {"marker": "*", "markersize": 10, "linestyle": "none"})):
        steps, values = _series(history, key)
        if steps:
            losses_ax.plot(steps, values, label=key, **style)
    for key in metrics:
        steps, values = _series(history, key)
        if steps:
            metrics_ax.plot(steps, values, marker="o", markersize=4, label=key)
    for key in tests:
        steps, values = _series(history, key)
        if steps:
            metrics_ax.plot(steps, values, marker="*", markersize=10, linestyle="none", label=key)
    for ax, title in ((losses_ax, "loss"), (metrics_ax, "validation metrics")):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {title} recorded", transform=ax.transAxes, ha="center", va="center", color="0.4")
    return fig


def plot_run_summary(history: list[dict], path: str | Path) -> Path:
    """Save the run summary (``SUMMARY_FIGSIZE_IN``, 1000 x 400 px) as a PNG at ``path``; empty history: ValueError."""
    return save_figure(summary_figure(history), path)
