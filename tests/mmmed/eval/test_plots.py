"""What every picture shares (the text block that never overflows, a fixed pixel size) and the run summary."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from mmmed.eval.plots import (char_width_in, plot_run_summary, save_figure, summary_figure, text_block,
                         wrap_field)


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)  # (H, W, 3)


def _field(fig, name):
    return [t.get_text() for t in fig.texts if t.get_gid() == f"text:{name}"]


def test_wrap_field_collapses_whitespace_and_caps_with_an_ellipsis():
    assert wrap_field("Reference", "sinus\n  rhythm", 40, 3) == ["Reference: sinus rhythm"]
    assert wrap_field("Model", "  \n", 40, 3) == ["Model: (empty)"]
    lines = wrap_field("Model", " ".join(["word"] * 100), 20, 4)
    assert len(lines) == 4 and lines[-1].endswith(" …")
    assert all(len(line) <= 20 for line in lines)
    assert all(line.startswith(" " * len("Model: ")) for line in lines[1:])  # hanging indent under the text


@pytest.mark.parametrize("dpi", [100, 150])
def test_text_block_fills_its_width_and_never_overflows(dpi):
    words = [f"word{i:03d}" for i in range(400)]
    fig = Figure(figsize=(4.0, 3.0), dpi=dpi)
    left_in, width_in = 0.3, 3.2
    text_block(fig, left_in, 2.8, width_in, " ".join(words[:30]), "sinus\nrhythm", " ".join(words))
    renderer = FigureCanvasAgg(fig).get_renderer()
    q_lines, r_lines, m_lines = _field(fig, "question"), _field(fig, "reference"), _field(fig, "model")
    assert 1 < len(q_lines) <= 4 and r_lines == ["Reference: sinus rhythm"] and len(m_lines) == 4
    assert m_lines[-1].endswith(" …")
    widest = 0.0
    for text in fig.texts:
        box = text.get_window_extent(renderer)
        assert box.x0 == pytest.approx(left_in * dpi, abs=1), text.get_text()
        assert box.x1 <= (left_in + width_in) * dpi, text.get_text()
        widest = max(widest, box.x1)
    assert widest > (left_in + width_in) * dpi - 10 * char_width_in(fig) * dpi  # wrapped near the width, not far


@pytest.mark.parametrize("dpi", [100, 50])
def test_save_figure_keeps_the_figure_pixel_size(tmp_path, dpi):
    path = save_figure(Figure(figsize=(3.0, 2.0), dpi=dpi), tmp_path / "a" / "b.png")
    assert path == tmp_path / "a" / "b.png"
    assert Image.open(path).size == (int(3.0 * dpi), int(2.0 * dpi))


HISTORY = [
    {"step": 5, "train/loss": 2.0}, {"step": 10, "train/loss": 1.5},
    {"step": 10, "val/loss": 1.6, "val/accuracy": 0.25, "val/exact_match": 0.0, "val/num_scored": 8.0},
    {"step": 15, "train/loss": 1.0}, {"step": 20, "train/loss": 0.75},
    {"step": 20, "val/loss": 1.2, "val/accuracy": 0.5, "val/exact_match": 0.25, "val/num_scored": 8.0},
]


def test_run_summary_png(tmp_path):
    path = plot_run_summary(HISTORY, tmp_path / "summary.png")
    assert Image.open(path).size == (1000, 400)  # SUMMARY_FIGSIZE_IN 10 x 4 in at 100 dpi
    assert _pixels(path).std() > 20


def test_run_summary_panels_plot_losses_and_metrics():
    losses, metrics = summary_figure(HISTORY).axes
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in losses.get_lines()}
    assert lines == {"train/loss": ([5, 10, 15, 20], [2.0, 1.5, 1.0, 0.75]), "val/loss": ([10, 20], [1.6, 1.2])}
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in metrics.get_lines()}
    assert lines == {"val/accuracy": ([10, 20], [0.25, 0.5]), "val/exact_match": ([10, 20], [0.0, 0.25])}
    assert all(line.get_marker() == "o" for line in metrics.get_lines())


def test_run_summary_rejects_empty_history(tmp_path):
    with pytest.raises(ValueError, match="history is empty"):
        plot_run_summary([], tmp_path / "summary.png")
    with pytest.raises(ValueError, match="row 1 has no 'step'"):
        plot_run_summary([{"step": 1, "train/loss": 1.0}, {"train/loss": 0.5}], tmp_path / "summary.png")
    assert not (tmp_path / "summary.png").exists()
