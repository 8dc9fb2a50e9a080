"""The DeepLab chapter's figures (segviz.viz.deeplab): what they draw is the geometry (taps, holes,
bins, windows) computed independently here, and the explorer's controls change what it draws, headlessly."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.patches import Rectangle

import segviz
from segviz.models.deeplabv3plus import SpatialPyramidPooling
from segviz.viz import deeplab as dv
from segviz.viz import style


def photo(n=64):
    y, x = np.mgrid[0:n, 0:n]
    return np.stack([x * 255 // n, y * 255 // n, (x + y) * 127 // n], -1).astype(np.uint8)


def rectangles(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


# --------------------------------------------------------------------------- taps and gridding
def test_atrous_taps_are_nine_cells_rate_apart():
    fig = dv.atrous_taps_figure((1, 2, 4, 6))
    for ax, rate in zip(fig.axes, (1, 2, 4, 6)):
        grid = np.asarray(ax.images[0].get_array())
        ys, xs = np.nonzero(grid)
        assert len(ys) == 9
        assert sorted(set(np.diff(sorted(set(ys))).tolist())) == ([rate] if rate > 1 else [1])
        (outline,) = rectangles(ax)
        assert outline.get_width() == rate * 2 + 1                 # k' = r(k - 1) + 1
    with pytest.raises(ValueError, match="rates"):
        dv.atrous_taps_figure((1, 0))
    with pytest.raises(ValueError, match="odd"):
        dv.atrous_taps_figure((1, 2), kernel=4)


def brute_force_paths(rates, kernel=3):
    """Count the paths offset by offset (no convolution): every combination of one tap per layer."""
    n = sum(r * (kernel - 1) for r in rates) + 1
    counts = np.zeros((n, n), dtype=int)
    taps = np.arange(kernel) - kernel // 2
    positions = [(0, 0)]
    for r in rates:
        positions = [(y + a * r, x + b * r) for y, x in positions for a in taps for b in taps]
    for y, x in positions:
        counts[y + n // 2, x + n // 2] += 1
    return counts


@pytest.mark.parametrize("rates", [(2, 2, 2), (1, 2, 3), (1, 2, 5), (3,), (1, 1)])
def test_gridding_counts_are_the_paths(rates):
    counts = dv.gridding_counts(rates)
    np.testing.assert_array_equal(counts, brute_force_paths(rates))
    assert counts.sum() == 9 ** len(rates)


def test_gridding_holes_of_equal_rates_and_none_for_hdc():
    assert (dv.gridding_counts((2, 2, 2)) == 0).sum() == 13 * 13 - 7 * 7     # only even offsets are read
    assert (dv.gridding_counts((1, 2, 3)) == 0).sum() == 0
    fig = dv.gridding_figure()
    assert "120 of 169" in fig.axes[0].get_title() and "0 of 169" in fig.axes[1].get_title()


# --------------------------------------------------------------------------- SPP
def test_spp_bins_match_adaptive_pooling_and_the_model_layer():
    assert dv.spp_bins(13, 4) == [(0, 4), (3, 7), (6, 10), (9, 13)]
    g = torch.Generator().manual_seed(0)
    spp = SpatialPyramidPooling((4, 2, 1))
    for h, w in [(13, 17), (8, 8), (5, 7)]:
        x = torch.rand(1, 1, h, w, generator=g)
        by_bins = [x[0, 0, y0:y1, x0:x1].max() for n in (4, 2, 1) for y0, y1 in dv.spp_bins(h, n)
                   for x0, x1 in dv.spp_bins(w, n)]
        assert torch.equal(torch.stack(by_bins), spp(x)[0])        # 21 values, whatever h, w
    with pytest.raises(ValueError):
        dv.spp_bins(0, 4)


def test_spp_figure_vectors_have_21_values_for_both_sizes():
    g = torch.Generator().manual_seed(1)
    maps = [torch.rand(13, 17, generator=g), torch.rand(8, 8, generator=g)]
    fig = dv.spp_figure(maps)
    strips = [ax for ax in fig.axes if ax.images and np.asarray(ax.images[0].get_array()).shape[0] == 1]
    assert len(strips) == 2
    for strip, m in zip(strips, maps):
        vector = np.asarray(strip.images[0].get_array())[0]
        assert vector.shape == (21,)
        expected = torch.cat([F.adaptive_max_pool2d(m[None, None], n).flatten() for n in (4, 2, 1)]).numpy()
        np.testing.assert_allclose(vector, expected)


# --------------------------------------------------------------------------- RF growth, ERF, ASPP
def test_rf_growth_draws_the_given_numbers():
    curves = {"a": [("conv1", 7, 2), ("layer1.0.conv2", (19, 19), (4, 4)), ("layer2.0.conv2", 43, 8)],
              "b": [("conv1", 7, 2), ("layer1.0.conv2", 19, 4), ("layer2.0.conv2", 35, 4)]}
    fig = dv.rf_growth_figure(curves, input_size=64)
    ax_rf, ax_stride = fig.axes[:2]
    assert ax_rf.lines[0].get_ydata().tolist() == [7, 19, 43]
    assert ax_stride.lines[1].get_ydata().tolist() == [2, 4, 4]
    with pytest.raises(ValueError):
        dv.rf_growth_figure({})


def test_erf_figure_draws_the_theoretical_window():
    m = np.zeros((64, 64))
    m[30:35, 30:35] = 1
    fig = dv.erf_figure(photo(), {"layer": m, "output": m}, {"layer": (20, 21, 44, 45), "output": None})
    (window,) = rectangles(fig.axes[0])
    assert (window.get_width(), window.get_height()) == (25, 25) and window.get_xy() == (20.5, 19.5)
    assert "whole image" in fig.axes[1].get_title()
    with pytest.raises(ValueError, match="measure it on this image"):
        dv.erf_figure(photo(), {"x": np.zeros((32, 32))})


def test_aspp_windows_are_squares_of_the_branches_fields():
    model = segviz.create_model("deeplabv3plus-nano")
    unit = (2, 2)
    windows = {}
    for i, label in enumerate(["1x1"] + [f"rate {r}" for r in model.aspp.rates]):
        windows[label] = segviz.receptive_field(model, f"aspp.convs.{i}", 64).window(unit)
    windows["image pooling"] = None
    fig = dv.aspp_windows_figure(photo(), windows, (32, 32))
    ax = fig.axes[0]
    sides = sorted(p.get_width() for p in rectangles(ax) if p.get_fill() is False and p.get_linestyle() == "-")
    assert sides == sorted(w[3] - w[1] + 1 for w in windows.values() if w is not None)
    big = max(w[3] for w in windows.values() if w is not None)
    assert ax.get_xlim()[1] >= big                   # the largest square is shown whole, beyond the photo
    assert any("whole image" in t.get_text() for t in ax.get_legend().get_texts())


# --------------------------------------------------------------------------- explorer
def test_explorer_redraws_and_runs_the_model_once_per_setting():
    calls = []

    def predict(output_stride, rate, on):
        calls.append((output_stride, rate, on))
        return torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(len(on) + rate))

    def windows(output_stride, rate, query):
        y, x = query
        half = {"1x1": 5, "rate": 5 + rate * output_stride}
        out = {b: (y - h, x - h, y + h, x + h) for b, h in half.items()}
        out["pool"] = None
        return out

    ex = dv.DeepLabExplorer(photo(), predict, windows, ["1x1", "rate", "pool"], class_names=["a", "b", "c"])
    assert calls == [(16, 6, ("1x1", "rate", "pool"))]
    first = bytes(ex.view.value)
    ax = ex.figure.axes[0]
    assert len(rectangles(ax)) == 3
    ex.branches["rate"].value = False
    assert calls[-1] == (16, 6, ("1x1", "pool")) and "without rate" in ex.figure.axes[1].get_title()
    assert len(rectangles(ex.figure.axes[0])) == 2
    ex.x.value = 10                                   # only redraws
    assert len(calls) == 2 and bytes(ex.view.value) != first
    ex.branches["rate"].value = True                  # back to a setting already computed
    assert len(calls) == 2
    ex.output_stride.value = 8
    assert calls[-1][0] == 8 and "output stride 8" in ex.figure.axes[0].get_title()
    data, metadata = ex._repr_mimebundle_()
    assert data["image/png"] and metadata["image/png"]["width"] == style.display_width(ex.figure)
    with pytest.raises(ValueError):
        dv.DeepLabExplorer(photo(), predict, windows, [])
