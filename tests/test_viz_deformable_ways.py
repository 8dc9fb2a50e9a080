"""segviz.viz.deformable_ways: the "where does a query look" figure, DAT's grids and the explorer,
on small synthetic records (no model)."""
import numpy as np
import pytest
import torch

from segviz.nn.recording import AttentionRecord, DeformedGridRecord, SamplingRecord, WindowAttentionRecord
from segviz.viz import style
from segviz.viz import deformable_ways as dw

H = W = 32


def _photo():
    return np.random.default_rng(0).random((H, W, 3)).astype(np.float32)


def _records():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(1, 2, 16, 16, generator=g).softmax(-1)
    glob = AttentionRecord(probs, q_hw=(4, 4), k_hw=(4, 4))
    reduced = AttentionRecord(torch.rand(1, 1, 64, 4, generator=g).softmax(-1), q_hw=(8, 8), k_hw=(2, 2))
    window = WindowAttentionRecord(torch.rand(4, 1, 16, 16, generator=g).softmax(-1), window=4, feature_hw=(8, 8))
    shapes = [(2, 2), (4, 4)]
    n = 4 + 16
    sampling = SamplingRecord(torch.rand(1, n, 2, 2, 3, 2, generator=g), torch.rand(1, n, 2, 2, 3, generator=g).softmax(-1),
                              shapes, q_hw=(2, 2))
    ref = (torch.stack(torch.meshgrid(torch.arange(2.0), torch.arange(2.0), indexing="ij"), -1).flip(-1) + 0.5) / 2
    grid = DeformedGridRecord(torch.rand(1, 4, 16, 4, generator=g).softmax(-1), (4, 4), (2, 2), ref,
                              (ref + 0.05)[None, None].repeat(1, 2, 1, 1, 1))
    offset = torch.zeros(1, 18, 8, 8)
    offset[:, 0::2] = 1.0  # every tap one input pixel down
    taps = dw.dcn_taps(offset, torch.full((1, 9, 8, 8), 0.5), (20, 12), (H, W), (8, 8))
    return glob, reduced, window, sampling, grid, taps


def test_dcn_taps_are_the_regular_grid_plus_offsets_in_photo_pixels():
    *_, taps = _records()
    assert taps.taps == 9 and taps.cell == (4.0, 4.0)
    # output (5, 3) covers photo pixel (20, 12); its centre tap reads input (5, 3) -> photo (x 13.5, y 21.5)
    np.testing.assert_allclose(taps.regular[4], [13.5, 21.5])
    np.testing.assert_allclose(taps.moved - taps.regular, np.tile([0.0, 4.0], (9, 1)))  # one input pixel = 4 px
    np.testing.assert_allclose(taps.regular[0], [9.5, 17.5])  # top-left tap: one input pixel up-left
    np.testing.assert_allclose(taps.modulation, 0.5)
    zero = dw.dcn_taps(torch.zeros(1, 18, 8, 8), None, (20, 12), (H, W), (8, 8))
    np.testing.assert_array_equal(zero.moved, zero.regular)
    np.testing.assert_array_equal(zero.modulation, 1.0)
    with pytest.raises(ValueError, match="outside"):
        dw.dcn_taps(torch.zeros(1, 18, 8, 8), None, (32, 0), (H, W), (8, 8))
    with pytest.raises(ValueError, match="group 1 out of range"):
        dw.dcn_taps(torch.zeros(1, 18, 8, 8), None, (0, 0), (H, W), (8, 8), group=1)


def test_the_comparison_figure_draws_every_kind_init_above_trained():
    glob, reduced, window, sampling, grid, taps = _records()
    ways = {"global": {"init": glob, "trained": glob}, "reduced": {"trained": reduced},
            "window": {"init": window, "trained": window}, "dcn": {"init": taps, "trained": taps},
            "ddetr": {"init": sampling, "trained": sampling}, "dat": {"init": grid, "trained": grid}}
    fig = dw.where_a_query_looks(_photo(), ways, (20, 12), head=1)
    assert style.check(fig) == []
    axes = fig.axes
    assert len([a for a in axes if a.get_visible() and a.axison]) == 11  # "reduced" has no init panel
    titles = [a.get_title() for a in axes if a.axison]
    assert "dat · trained\n2×2 deformed keys, shared" in titles and "dcn · init\n9 taps, area = modulation" in titles
    assert "ddetr · init\n2 levels × 3 points" in titles
    assert "(y=20, x=12)" in fig._suptitle.get_text()


def test_the_comparison_figure_refuses_what_it_cannot_draw():
    glob, *_ = _records()
    with pytest.raises(ValueError, match="outside the 32x32 photo"):
        dw.where_a_query_looks(_photo(), {"g": {"init": glob}}, (40, 0))
    with pytest.raises(ValueError, match="cannot draw str"):
        dw.where_a_query_looks(_photo(), {"g": {"init": "nothing"}}, (0, 0))
    with pytest.raises(ValueError, match="no ways"):
        dw.where_a_query_looks(_photo(), {}, (0, 0))


def test_deformed_grid_figure_one_row_per_stage_one_column_per_group():
    *_, grid, _ = _records()
    still = DeformedGridRecord(grid.probs, grid.q_hw, grid.key_hw, grid.reference,
                               grid.reference[None, None].clone())
    fig = dw.deformed_grid_figure(_photo(), {"moved": grid, "still": still})
    assert style.check(fig) == []
    titles = [a.get_title() for a in fig.axes if a.axison]
    assert len(titles) == 3  # 2 groups + 1 group
    assert titles[2].endswith("mean shift 0.0 px")
    assert titles[0].endswith("mean shift 1.6 px")  # 0.05 of 32 px on both axes
    with pytest.raises(ValueError, match="expected a DeformedGridRecord"):
        dw.deformed_grid_figure(_photo(), {"x": _records()[0]})


def test_the_explorer_redraws_when_the_query_moves():
    glob, *_, grid, taps = _records()
    explorer = dw.QueryLooksExplorer(_photo(), {"g": {"init": glob, "trained": glob}, "dat": {"trained": grid},
                                                "dcn": {"trained": taps}}, query=(3, 4))
    first = explorer.figure
    assert "(y=3, x=4)" in first._suptitle.get_text() and explorer.head.max == 3
    assert len([a for a in first.axes if a.axison]) == 3  # trained only, by default
    explorer.y.value = 30
    assert "(y=30, x=4)" in explorer.figure._suptitle.get_text()
    assert explorer.view.value  # a PNG
    # a query move redraws over the kept figure and photos: the same picture as a new figure
    assert explorer.figure is first and explorer._sender.renders["over kept photos"] == 1
    from segviz.viz.explorers import figure_rgb

    fresh = dw.where_a_query_looks(_photo(), explorer.ways, (30, 4), panel=explorer.panel, states=("trained",))
    assert np.array_equal(explorer._sender.rgb(explorer.figure), figure_rgb(fresh))
    explorer.state.value = "both"
    assert len([a for a in explorer.figure.axes if a.axison]) == 4  # "dat" and "dcn" have no init panel
    with pytest.raises(ValueError, match="states must be some of"):
        dw.where_a_query_looks(_photo(), {"g": {"init": glob}}, (0, 0), states=("later",))
