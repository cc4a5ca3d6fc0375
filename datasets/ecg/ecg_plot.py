"""An ECG on paper for evaluation: 3 x 4 leads and a 10 s lead II rhythm strip, with the question and answers.

Paper speed 25 mm/s and gain 10 mm/mV exactly. The page is ``ECG_WIDTH_MM x ECG_HEIGHT_MM`` (280 x 220 mm
= 11.02 x 8.66 in: 1102 x 866 px at dpi 100, truncated to whole pixels as Agg does). The text block
(:func:`mmmed.eval.plots.text_block`) sits above the grid; only matplotlib's object API is used (no pyplot).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from mmmed.eval.plots import MM_PER_INCH, TEXT_BLOCK_MM, save_figure, text_block

# ECG paper: every length below is in millimetres on the page.
PAPER_SPEED_MM_PER_S = 25.0
GAIN_MM_PER_MV = 10.0
COLUMN_SECONDS = 2.5           # each of the 4 columns shows 2.5 s of its lead, as a paper ECG does
RHYTHM_SECONDS = 4 * COLUMN_SECONDS  # the lead II rhythm strip: 10 s
ROW_MV = 4.0                   # each row spans 4 mV: +-2 mV around the lead's median (its baseline)
ROW_MM = ROW_MV * GAIN_MM_PER_MV                                # 40 mm
COLUMN_MM = COLUMN_SECONDS * PAPER_SPEED_MM_PER_S               # 62.5 mm
CALIBRATION_MM = 10.0          # 0.4 s at the start of each row for the 1 mV calibration pulse
GRID_WIDTH_MM = CALIBRATION_MM + 4 * COLUMN_MM                  # 260 mm
GRID_HEIGHT_MM = 4 * ROW_MM    # 3 rows of 4 leads + the rhythm strip: 160 mm
MARGIN_MM = 10.0               # left and right
TOP_MARGIN_MM = 5.0
TEXT_GAP_MM = 3.0              # between the text block and the grid
FOOTER_MM = 8.0                # below the grid: speed, gain, sampling rate

ECG_WIDTH_MM = 2 * MARGIN_MM + GRID_WIDTH_MM                                                 # 280 mm
ECG_HEIGHT_MM = TOP_MARGIN_MM + TEXT_BLOCK_MM + TEXT_GAP_MM + GRID_HEIGHT_MM + FOOTER_MM       # 220 mm

# Clinical layout: rows of (lead, lead, lead, lead); column k shows seconds [2.5k, 2.5k + 2.5).
ECG_LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
CLINICAL_LEADS = tuple(name for row in ECG_LAYOUT for name in row)

GRID_MINOR_COLOR = "#f7c8c8"   # 1 mm
GRID_MAJOR_COLOR = "#e07a7a"   # 5 mm
TRACE_COLOR = "black"


def _add_axes_mm(fig: Figure, left_mm: float, bottom_mm: float, width_mm: float, height_mm: float, **kwargs: Any):
    """An Axes placed in millimetres from the page's bottom-left corner."""
    return fig.add_axes((left_mm / ECG_WIDTH_MM, bottom_mm / ECG_HEIGHT_MM,
                         width_mm / ECG_WIDTH_MM, height_mm / ECG_HEIGHT_MM), **kwargs)


def _draw_paper(ax) -> None:
    """1 mm and 5 mm grid lines over the whole grid area; ``ax`` has millimetre data coordinates."""
    ax.set_xlim(0, GRID_WIDTH_MM)
    ax.set_ylim(0, GRID_HEIGHT_MM)
    ax.set_axis_off()
    for step, color, width in ((1, GRID_MINOR_COLOR, 0.4), (5, GRID_MAJOR_COLOR, 0.8)):
        xs = np.arange(0, GRID_WIDTH_MM + 0.5, step)
        ys = np.arange(0, GRID_HEIGHT_MM + 0.5, step)
        segments = [((x, 0), (x, GRID_HEIGHT_MM)) for x in xs] + [((0, y), (GRID_WIDTH_MM, y)) for y in ys]
        ax.add_collection(LineCollection(segments, colors=color, linewidths=width, zorder=1 if step == 1 else 2))


def _clinical_index(lead_names: Sequence[str]) -> dict[str, int]:
    """``{clinical lead: row in signal_mv}``; names match case-insensitively, others are ignored."""
    by_lower = {name.lower(): name for name in CLINICAL_LEADS}
    found: dict[str, int] = {}
    for index, raw in enumerate(lead_names):
        name = by_lower.get(str(raw).strip().lower())
        if name is None:
            continue
        if name in found:
            raise ValueError(f"lead_names names lead {name} twice (positions {found[name]} and {index})")
        found[name] = index
    return found


def _lead_panel(ax, name: str, samples: np.ndarray | None, times: np.ndarray, start_s: float, end_s: float,
                baseline: float) -> None:
    """One lead's panel: its trace over [start_s, end_s), or 'missing' when the lead is absent."""
    ax.set_xlim(start_s, end_s)
    ax.set_ylim(baseline - ROW_MV / 2, baseline + ROW_MV / 2)
    ax.set_axis_off()
    ax.patch.set_visible(False)  # the paper shows through
    ax.text(0.02, 0.95, name, transform=ax.transAxes, ha="left", va="top", fontsize=9, fontweight="bold")
    if samples is None:
        ax.text(0.5, 0.5, "missing", transform=ax.transAxes, ha="center", va="center", fontsize=9,
                color="0.45", gid="missing",
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
        return
    window = (times >= start_s) & (times < end_s)
    if window.any():  # a record shorter than 10 s leaves its later columns empty
        ax.plot(times[window], samples[window], color=TRACE_COLOR, linewidth=0.8, gid="trace")  # NaN: a gap


def _calibration_panel(ax) -> None:
    """The 1 mV, 0.2 s calibration pulse at the start of a row (its baseline level with the row's leads)."""
    ax.set_xlim(0, CALIBRATION_MM / PAPER_SPEED_MM_PER_S)
    ax.set_ylim(-ROW_MV / 2, ROW_MV / 2)
    ax.set_axis_off()
    ax.patch.set_visible(False)
    ax.plot([0.0, 0.1, 0.1, 0.3, 0.3, 0.4], [0, 0, 1, 1, 0, 0], color=TRACE_COLOR, linewidth=0.8, gid="calibration")


def ecg_figure(signal_mv: np.ndarray, sampling_rate: float, lead_names: Sequence[str], *, question: str,
               reference: str, answer: str, lead_mask: Sequence[bool] | np.ndarray | None = None,
               dpi: float = 100) -> Figure:
    """A 12-lead ECG on paper (3 x 4 leads + a 10 s lead II strip, 25 mm/s, 10 mm/mV) with the Q/A text above.

    ``signal_mv``: (L, T) millivolts; ``lead_names``: its L lead names in any order. A clinical lead not
    named, or whose ``lead_mask`` entry is False, is an empty panel labelled 'missing'. NaN samples are gaps.
    Panels are Axes labelled ``lead:<name>`` (the 3 x 4 layout), ``rhythm:II`` and ``calibration``.
    """
    signal = np.asarray(signal_mv, dtype=np.float64)
    if signal.ndim != 2:
        raise ValueError(f"signal_mv must be (leads, samples), got an array of shape {signal.shape}")
    if len(lead_names) != signal.shape[0]:
        raise ValueError(f"lead_names has {len(lead_names)} names but signal_mv has {signal.shape[0]} leads")
    if not (math.isfinite(sampling_rate) and sampling_rate > 0):
        raise ValueError(f"sampling_rate must be a positive number of Hz, got {sampling_rate}")
    mask = np.ones(signal.shape[0], dtype=bool) if lead_mask is None else np.asarray(lead_mask, dtype=bool)
    if mask.shape != (signal.shape[0],):
        raise ValueError(f"lead_mask must have one entry per lead ({signal.shape[0]}), got shape {mask.shape}")

    present = {name: index for name, index in _clinical_index(lead_names).items() if mask[index]}
    times = np.arange(signal.shape[1]) / sampling_rate  # (T,) seconds; exact at column edges such as 2.5 s

    fig = Figure(figsize=(ECG_WIDTH_MM / MM_PER_INCH, ECG_HEIGHT_MM / MM_PER_INCH), dpi=dpi)
    fig.patch.set_facecolor("white")
    grid_bottom = FOOTER_MM
    _draw_paper(_add_axes_mm(fig, MARGIN_MM, grid_bottom, GRID_WIDTH_MM, GRID_HEIGHT_MM, label="paper", zorder=0))

    def baseline(name: str) -> float:
        values = signal[present[name]]
        finite = values[np.isfinite(values)]
        return float(np.median(finite)) if finite.size else 0.0  # keeps an offset or wander on the page

    rows = [*((row, COLUMN_SECONDS) for row in ECG_LAYOUT), ((RHYTHM_LEAD,), RHYTHM_SECONDS)]
    for r, (leads, seconds) in enumerate(rows):
        bottom = grid_bottom + (len(rows) - 1 - r) * ROW_MM
        _calibration_panel(_add_axes_mm(fig, MARGIN_MM, bottom, CALIBRATION_MM, ROW_MM, label="calibration"))
        for k, name in enumerate(leads):
            label = f"rhythm:{name}" if len(leads) == 1 else f"lead:{name}"
            ax = _add_axes_mm(fig, MARGIN_MM + CALIBRATION_MM + k * COLUMN_MM, bottom,
                              seconds * PAPER_SPEED_MM_PER_S, ROW_MM, label=label)
            samples = signal[present[name]] if name in present else None
            _lead_panel(ax, name, samples, times, k * seconds, (k + 1) * seconds,
                        baseline(name) if samples is not None else 0.0)

    duration = signal.shape[1] / sampling_rate
    shown = f"first {RHYTHM_SECONDS:g} s of {duration:.1f} s" if duration > RHYTHM_SECONDS else f"{duration:.1f} s"
    fig.text(MARGIN_MM / MM_PER_INCH, FOOTER_MM / 2 / MM_PER_INCH,
             f"{PAPER_SPEED_MM_PER_S:g} mm/s   {GAIN_MM_PER_MV:g} mm/mV   {sampling_rate:g} Hz   {shown}",
             transform=fig.dpi_scale_trans, ha="left", va="center", fontsize=8, color="0.3")
    text_top = (ECG_HEIGHT_MM - TOP_MARGIN_MM) / MM_PER_INCH
    text_block(fig, MARGIN_MM / MM_PER_INCH, text_top, GRID_WIDTH_MM / MM_PER_INCH, question, reference, answer)
    return fig


def plot_ecg(signal_mv: np.ndarray, sampling_rate: float, lead_names: Sequence[str], *, question: str,
             reference: str, answer: str, path: str | Path, lead_mask: Sequence[bool] | np.ndarray | None = None,
             dpi: float = 100) -> Path:
    """Save :func:`ecg_figure` as a PNG at ``path``; returns the path."""
    fig = ecg_figure(signal_mv, sampling_rate, lead_names, question=question, reference=reference, answer=answer,
                     lead_mask=lead_mask, dpi=dpi)
    return save_figure(fig, path)
