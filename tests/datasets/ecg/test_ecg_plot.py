"""The ECG picture: paper scale, lead placement, missing leads and gaps, and text that stays above the grid."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from mmmed_datasets.ecg.ecg_plot import ecg_figure, plot_ecg

FS = 500
CLINICAL = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
LAYOUT = {"I": 0, "aVR": 1, "V1": 2, "V4": 3, "II": 0, "aVL": 1, "V2": 2, "V5": 3,
          "III": 0, "aVF": 1, "V3": 2, "V6": 3}  # the column of each lead on a clinical 3 x 4 page
TEXT = {"question": "Which rhythm does this ECG show?", "reference": "sinus rhythm", "answer": "atrial fibrillation"}


def _axes(fig, label):
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) == 1, f"expected one Axes labelled {label}, got {len(found)}"
    return found[0]


def _traces(ax):
    return [line for line in ax.get_lines() if line.get_gid() == "trace"]


def _index(names, lead):
    return [n.lower() for n in names].index(lead.lower())


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)  # (H, W, 3)


def _field(fig, name):
    return [t.get_text() for t in fig.texts if t.get_gid() == f"text:{name}"]


def _shuffled_ecg(seconds: float = 10.0):
    """12 random leads stored in a shuffled order with mixed-case names; V6 carries a 1.5 mV square pulse."""
    rng = np.random.default_rng(0)
    order = rng.permutation(12)
    names = [CLINICAL[i].upper() if i % 2 else CLINICAL[i].lower() for i in order]  # 'avr', 'V6', ...
    signal = rng.normal(0, 0.2, size=(12, int(seconds * FS)))
    v6 = _index(names, "V6")
    signal[v6] = 0.0
    signal[v6, int(8.0 * FS):int(8.5 * FS)] = 1.5
    return signal, names


@pytest.mark.parametrize("dpi", [100, 150])
def test_ecg_png_size_follows_paper_millimetres(tmp_path, dpi):
    signal, names = _shuffled_ecg()
    path = plot_ecg(signal, FS, names, **TEXT, path=tmp_path / "ecg.png", dpi=dpi)
    # width: 10 mm margins + 10 mm calibration + 4 columns of 2.5 s at 25 mm/s;
    # height: 5 mm top + 44 mm text + 3 mm gap + 4 rows of 4 mV at 10 mm/mV + 8 mm footer.
    width_mm = 10 + 10 + 4 * 2.5 * 25 + 10
    height_mm = 5 + 44 + 3 + 4 * 4 * 10 + 8
    assert (width_mm, height_mm) == (280, 220)
    assert Image.open(path).size == (int(width_mm / 25.4 * dpi), int(height_mm / 25.4 * dpi))  # Agg truncates


def test_ecg_one_second_is_25_mm_and_one_millivolt_10_mm():
    signal, names = _shuffled_ecg()
    fig = ecg_figure(signal, FS, names, **TEXT, dpi=100)
    FigureCanvasAgg(fig)
    labels = [f"lead:{name}" for name in CLINICAL] + ["rhythm:II"]
    panels = [_axes(fig, label) for label in labels]
    panels += [ax for ax in fig.axes if ax.get_label() == "calibration"]
    assert len(panels) == 12 + 1 + 4  # a calibration pulse at the start of each of the 4 rows
    to_inches = fig.dpi_scale_trans.inverted()
    for ax in panels:
        (x0, y0), (x1, y1) = to_inches.transform(ax.transData.transform([(1.0, 0.0), (2.0, 1.0)]))
        assert x1 - x0 == pytest.approx(25 / 25.4, rel=1e-9), ax.get_label()
        assert y1 - y0 == pytest.approx(10 / 25.4, rel=1e-9), ax.get_label()
    for ax in panels[:12]:  # each 3 x 4 panel is 2.5 s wide, the rhythm strip 10 s
        assert np.diff(ax.get_xlim())[0] == 2.5
    assert _axes(fig, "rhythm:II").get_xlim() == (0.0, 10.0)
    # the calibration pulse is 1 mV high, 0.2 s wide
    pulse = [line for line in panels[-1].get_lines() if line.get_gid() == "calibration"][0]
    assert max(pulse.get_ydata()) - min(pulse.get_ydata()) == 1
    assert list(pulse.get_xdata()) == [0.0, 0.1, 0.1, 0.3, 0.3, 0.4]


def test_ecg_leads_in_any_order_land_in_their_clinical_panel():
    signal, names = _shuffled_ecg()
    fig = ecg_figure(signal, FS, names, **TEXT)
    times = np.arange(signal.shape[1]) / FS
    for lead, column in LAYOUT.items():
        index = _index(names, lead)
        window = slice(int(2.5 * column * FS), int(2.5 * (column + 1) * FS))  # 1250 samples of this column
        (trace,) = _traces(_axes(fig, f"lead:{lead}"))
        np.testing.assert_array_equal(trace.get_xdata(), times[window])
        np.testing.assert_array_equal(trace.get_ydata(), signal[index, window])
    # V6 sits in column 4, seconds [7.5, 10): its 1.5 mV pulse at [8, 8.5) s is there
    (v6,) = _traces(_axes(fig, "lead:V6"))
    pulse = np.asarray(v6.get_xdata())[np.asarray(v6.get_ydata()) == 1.5]
    assert (len(pulse), pulse[0], pulse[-1]) == (250, 8.0, 8.5 - 1 / FS)
    (rhythm,) = _traces(_axes(fig, "rhythm:II"))
    np.testing.assert_array_equal(rhythm.get_ydata(), signal[_index(names, "II")])


def test_ecg_missing_and_masked_leads_are_empty_panels():
    signal, names = _shuffled_ecg()
    keep = [i for i, n in enumerate(names) if n.lower() not in ("avf", "ii")]  # aVF and II absent altogether
    signal, names = signal[keep], [names[i] for i in keep]
    mask = np.array([n.lower() != "v2" for n in names])  # V2 present but masked out
    fig = ecg_figure(signal, FS, names, **TEXT, lead_mask=mask)
    for label in ("lead:aVF", "lead:II", "lead:V2", "rhythm:II"):
        ax = _axes(fig, label)
        assert _traces(ax) == []
        assert [t.get_text() for t in ax.texts if t.get_gid() == "missing"] == ["missing"]
    for lead in ("I", "V1", "V6"):
        assert len(_traces(_axes(fig, f"lead:{lead}"))) == 1


def test_ecg_short_record_and_nan_gaps():
    signal, names = _shuffled_ecg(seconds=4.0)
    signal[_index(names, "I"), 100:200] = np.nan
    fig = ecg_figure(signal, FS, names, **TEXT)
    (lead_i,) = _traces(_axes(fig, "lead:I"))
    assert np.isnan(lead_i.get_ydata()).sum() == 100  # drawn as a gap, not filled
    assert len(_traces(_axes(fig, "lead:aVR"))[0].get_xdata()) == int(1.5 * FS)  # [2.5, 4) s exists
    assert _traces(_axes(fig, "lead:V1")) == [] and _traces(_axes(fig, "lead:V4")) == []  # nothing after 4 s
    assert len(_traces(_axes(fig, "rhythm:II"))[0].get_xdata()) == 4 * FS


def test_ecg_png_shows_grid_and_black_trace(tmp_path):
    signal, names = _shuffled_ecg()
    pixels = _pixels(plot_ecg(signal, FS, names, **TEXT, path=tmp_path / "ecg.png"))
    assert pixels.std() > 20
    assert (pixels.max(axis=2) < 60).sum() > 5000  # black trace (and text) pixels
    red, green = pixels[..., 0], pixels[..., 1]
    assert ((red > 200) & (green < 200)).sum() > 10000  # pink/red grid lines


def test_ecg_text_block_lines():
    signal, names = _shuffled_ecg()
    fig = ecg_figure(signal, FS, names, **TEXT)
    assert _field(fig, "question") == [f"Question: {TEXT['question']}"]
    assert _field(fig, "reference") == [f"Reference: {TEXT['reference']}"]
    assert _field(fig, "model") == [f"Model: {TEXT['answer']}"]


def test_long_text_is_wrapped_capped_and_stays_above_the_grid(check_long_text_block):
    signal, names = _shuffled_ecg()
    check_long_text_block(lambda **text: ecg_figure(signal, FS, names, **text), "paper")


def test_ecg_bad_input_names_the_problem():
    signal, names = _shuffled_ecg()
    with pytest.raises(ValueError, match="shape"):
        ecg_figure(signal[0], FS, names, **TEXT)
    with pytest.raises(ValueError, match="lead_names has 11 names but signal_mv has 12 leads"):
        ecg_figure(signal, FS, names[:11], **TEXT)
    with pytest.raises(ValueError, match="sampling_rate"):
        ecg_figure(signal, 0, names, **TEXT)
    with pytest.raises(ValueError, match="lead_mask"):
        ecg_figure(signal, FS, names, **TEXT, lead_mask=[True] * 11)
    with pytest.raises(ValueError, match="twice"):
        ecg_figure(signal, FS, ["I", "i"] + names[2:], **TEXT)
