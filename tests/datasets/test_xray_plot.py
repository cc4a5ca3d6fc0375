"""The X-ray picture: its pixel size, the image shown as the encoder saw it, and text that stays above it."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import AxesImage
from PIL import Image

from mmmed_datasets.xray_plot import plot_xray, xray_figure

TEXT = {"question": "Is there cardiomegaly?", "reference": "no", "answer": "yes"}


def _axes(fig, label):
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) == 1, f"expected one Axes labelled {label}, got {len(found)}"
    return found[0]


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)  # (H, W, 3)


def _field(fig, name):
    return [t.get_text() for t in fig.texts if t.get_gid() == f"text:{name}"]


@pytest.mark.parametrize("dpi", [100, 50])
def test_xray_png_size_and_pixels_are_the_input(tmp_path, dpi):
    image = np.random.default_rng(1).normal(size=(1, 64, 64)) * 3 - 7  # preprocessed: any range
    path = plot_xray(image, **TEXT, path=tmp_path / "xray.png", dpi=dpi)
    assert Image.open(path).size == (int(6.0 * dpi), int(7.8 * dpi))  # XRAY_FIGSIZE_IN
    assert _pixels(path).std() > 20

    fig = xray_figure(image, **TEXT, dpi=dpi)
    ax = _axes(fig, "image")
    (shown,) = [artist for artist in ax.get_images() if isinstance(artist, AxesImage)]
    np.testing.assert_array_equal(shown.get_array(), image[0])
    assert shown.get_clim() == (image.min(), image.max())
    assert shown.get_interpolation() == "nearest"
    assert shown.get_cmap().name == "gray"
    assert list(ax.get_xticks()) == [] and list(ax.get_yticks()) == []


def test_xray_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"\(S, S\) or \(1, S, S\).*\(3, 8, 8\)"):
        xray_figure(np.zeros((3, 8, 8)), **TEXT)


def test_long_text_is_wrapped_capped_and_stays_above_the_image():
    words = [f"word{i:03d}" for i in range(400)]
    question, answer = " ".join(words[:30]), " ".join(words)
    fig = xray_figure(np.zeros((32, 32)), question=question, reference="sinus\nrhythm", answer=answer)
    below = _axes(fig, "image")
    renderer = FigureCanvasAgg(fig).get_renderer()
    q_lines, r_lines, m_lines = _field(fig, "question"), _field(fig, "reference"), _field(fig, "model")
    # the question fits in a few lines: wrapped, nothing lost
    assert 1 < len(q_lines) <= 4
    assert " ".join(line.strip() for line in q_lines) == f"Question: {question}"
    assert r_lines == ["Reference: sinus rhythm"]  # a newline in the text does not add lines
    # the answer does not fit: 4 lines, the last ending in an ellipsis, the words kept in order
    assert len(m_lines) == 4 and m_lines[-1].endswith(" …")
    shown = " ".join(line.strip() for line in m_lines)[len("Model: "):-len(" …")].split()
    assert shown == words[:len(shown)]
    top_of_picture = below.get_window_extent(renderer).y1
    for text in fig.texts:
        box = text.get_window_extent(renderer)
        if text.get_gid() and text.get_gid().startswith("text:"):
            assert 0 <= box.x0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, text.get_text()
            assert box.y0 > top_of_picture, text.get_text()
