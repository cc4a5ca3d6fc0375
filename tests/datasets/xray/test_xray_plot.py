"""The X-ray picture: its pixel size, the image shown as the encoder saw it, and text that stays above it."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import AxesImage
from PIL import Image

from mmmed_datasets.xray.xray_plot import plot_xray, xray_figure

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


def test_long_text_is_wrapped_capped_and_stays_above_the_image(check_long_text_block):
    check_long_text_block(lambda **text: xray_figure(np.zeros((32, 32)), **text), "image")
