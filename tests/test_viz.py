"""segviz.viz: pure drawing functions on synthetic inputs, checked by what the figures contain."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.patches import Rectangle
import matplotlib.colors as mcolors

from segviz.nn.recording import AttentionRecord
from segviz.viz.overlays import QUERY_COLOR
from segviz.viz import (
    AttentionExplorer,
    attention_cost_rows,
    attention_grid,
    attention_overlay,
    decoder_steps,
    deviation_from_centre,
    format_table,
    padding_leak,
    patch_figure,
    pca_rgb,
    prediction_overlay,
    prediction_panels,
    shape_rows,
    stage_pca,
    table_figure,
    table_html,
    token_pyramid,
)
from segviz.viz.arrays import as_image

H = W = 64


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def peaked_record(q_hw=(16, 16), sr=4, heads=2, peak=(1, 2)):
    """Every query puts 0.9 of its attention on key cell ``peak`` (head 0) and spreads evenly (other heads)."""
    kh, kw = q_hw[0] // sr, q_hw[1] // sr
    nk = kh * kw
    probs = torch.full((1, heads, q_hw[0] * q_hw[1], nk), 1.0 / nk)
    probs[:, 0] = 0.1 / (nk - 1)
    probs[:, 0, :, peak[0] * kw + peak[1]] = 0.9
    return AttentionRecord(probs, q_hw, (kh, kw))


def stage_maps(channels=(4, 8, 16, 32)):
    g = torch.Generator().manual_seed(0)
    return {f"stage {i + 1}": torch.randn(1, c, H // 4 >> i, W // 4 >> i, generator=g) for i, c in enumerate(channels)}


def rectangles(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


# ----------------------------------------------------------------------------- inputs
def test_as_image_accepts_uint8_and_unit_tensors_and_refuses_normalised_input(photo):
    assert as_image(photo).max() <= 1.0
    tensor = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
    np.testing.assert_allclose(as_image(tensor), photo / 255, atol=1e-6)
    with pytest.raises(ValueError, match="uint8 picture"):
        as_image((tensor - 0.45) / 0.22)
    with pytest.raises(ValueError, match="image must be"):
        as_image(np.zeros((8, 8)))


# ----------------------------------------------------------------------------- patches
def test_patch_figure_draws_overlapping_and_tiling_patches(photo):
    fig = patch_figure(photo, at=(30, 30), neighbours=2)
    axes = fig.axes
    assert len(axes) == 4
    assert "16×16 = 256 tokens" in axes[0].get_title()  # 64 px / stride 4
    seg_boxes = [r for r in rectangles(axes[1])]
    vit_boxes = [r for r in rectangles(axes[3])]
    assert len(seg_boxes) == 4 and len(vit_boxes) == 4
    assert {r.get_width() for r in seg_boxes} == {7} and {r.get_width() for r in vit_boxes} == {16}
    # horizontally neighbouring SegFormer patches share 3 pixels; ViT ones share none
    (a, b), (c, d) = sorted(r.get_x() for r in seg_boxes[:2]), sorted(r.get_x() for r in vit_boxes[:2])
    assert a + 7 - b == 3
    assert c + 16 - d == 0
    # the zoom shows a small window in pixel coordinates
    x0, x1 = axes[1].get_xlim()
    assert 10 < x1 - x0 < 30


def test_patch_figure_rejects_bad_geometry(photo):
    with pytest.raises(ValueError, match="kernel >= stride"):
        patch_figure(photo, overlap=(3, 4, 1))
    with pytest.raises(ValueError, match="outside"):
        patch_figure(photo, at=(100, 5))


# ----------------------------------------------------------------------------- attention
def test_attention_overlay_draws_the_key_grid_over_the_photo(photo):
    record = peaked_record(sr=4, peak=(1, 2))
    fig = attention_overlay(photo, record, (10, 50), head=0, title="stage 2")
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # the map and its colorbar
    photo_img, heat = ax.images
    assert photo_img.get_array().shape == (H, W, 3)
    assert heat.get_array().shape == (4, 4)
    # the heat map covers the key grid: 4 cells of 4 tokens of 4 px
    assert heat.get_extent() == pytest.approx((-0.5, 63.5, 63.5, -0.5))
    assert np.argmax(heat.get_array()) == 1 * 4 + 2
    # colours span the map's own range; the colorbar marks uniform attention 1/16
    assert heat.get_clim() == pytest.approx((0.1 / 15, 0.9))
    bar = fig.axes[1]
    assert [l.get_ydata()[0] for l in bar.lines] == [pytest.approx(1 / 16)]
    assert "uniform, 1/16" in bar.get_ylabel()
    assert "r = 4, R = r² = 16" in ax.get_title() and "stage 2" in ax.get_title()
    # key grid: 5 horizontal + 5 vertical white lines; then the sr-1 token lines each way in the query's cell
    from matplotlib.colors import to_rgba

    white = [c for c in ax.collections if to_rgba(c.get_edgecolor()[0], 1) == to_rgba("white")]
    assert len(white) == 1 and len(white[0].get_segments()) == 10
    # the query token outline is one 4x4 px square at the query's token (y 10 -> row 2, x 50 -> col 12)
    token_box = [r for r in rectangles(ax) if r.get_width() == pytest.approx(4)]
    assert len(token_box) == 1 and token_box[0].get_xy() == pytest.approx((47.5, 7.5))


def test_attention_overlay_refuses_bad_queries_and_heads(photo):
    record = peaked_record()
    with pytest.raises(ValueError, match="outside the 64x64 image"):
        attention_overlay(photo, record, (64, 0))
    with pytest.raises(ValueError, match="2 heads"):
        attention_overlay(photo, record, (0, 0), head=2)
    with pytest.raises(ValueError, match="AttentionRecord"):
        attention_overlay(photo, torch.zeros(3), (0, 0))


def test_attention_grid_has_one_row_per_stage_and_one_column_per_head(photo):
    records = {"stage 1": peaked_record(sr=8, heads=1, peak=(1, 1)), "stage 2": peaked_record(q_hw=(8, 8), sr=2, heads=3, peak=(0, 1))}
    fig = attention_grid(photo, records, (20, 20))
    maps = [ax for ax in fig.axes if len(ax.images) == 2]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(maps) == 4 and len(bars) == 2
    assert "stage 2" in maps[1].get_ylabel() and "R=4" in maps[1].get_ylabel()
    # one colour scale per row: the uniform heads share the peaked head's range
    row2 = maps[1:]
    assert [ax.images[1].get_clim() for ax in row2] == [pytest.approx((0.1 / 15, 0.9))] * 3  # 4x4 keys
    assert [ax.get_title() for ax in row2] == ["head 0", "head 1", "head 2"]


# ----------------------------------------------------------------------------- tokens
def test_pca_rgb_is_in_unit_range_and_separates_two_kinds_of_token():
    m = torch.zeros(8, 6, 6)
    m[0, :, :3] = 5.0  # left half differs from the right half along one channel
    m += 0.01 * torch.randn(8, 6, 6, generator=torch.Generator().manual_seed(0))
    rgb = pca_rgb(m)
    assert rgb.shape == (6, 6, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert abs(rgb[:, :3, 0].mean() - rgb[:, 3:, 0].mean()) > 0.9
    joint = pca_rgb([m, m[:, ::2, ::2]], joint=True)
    np.testing.assert_allclose(joint[1], joint[0][::2, ::2], atol=1e-5)
    with pytest.raises(ValueError, match="one channel count"):
        pca_rgb([m, m[:4]], joint=True)


def test_token_pyramid_draws_each_stage_at_its_own_size_with_a_table(photo):
    maps = stage_maps()
    fig = token_pyramid(maps, photo)
    pyramid = fig.axes[1]
    widths = [abs(im.get_extent()[1] - im.get_extent()[0]) for im in pyramid.images]
    assert widths == [16, 8, 4, 2]
    texts = [t.get_text() for t in pyramid.texts]
    assert "stage 3\n4×4×16" in texts and "1/32" in texts
    table = fig.axes[2].tables[0]
    assert table.get_celld()[(4, 1)].get_text().get_text() == "2×2"


def test_stage_pca_stretches_every_stage_over_the_photo(photo):
    fig = stage_pca(stage_maps(), photo)
    assert len(fig.axes) == 5
    for ax in fig.axes[1:]:
        assert ax.images[0].get_extent() == pytest.approx((-0.5, W - 0.5, H - 0.5, -0.5))
    assert fig.axes[4].images[0].get_array().shape == (2, 2, 3)


def test_decoder_steps_shows_the_four_steps():
    g = torch.Generator().manual_seed(1)
    projected = [torch.randn(1, 6, 16 >> i, 16 >> i, generator=g) for i in range(4)]
    upsampled = [torch.nn.functional.interpolate(p, size=(16, 16), mode="bilinear") for p in projected]
    logits = torch.randn(1, 3, 16, 16, generator=g)
    fig = decoder_steps(projected, upsampled, torch.randn(1, 6, 16, 16, generator=g), logits, ["background", "a", "b"])
    titles = [ax.get_title() for ax in fig.axes]
    assert sum(t.startswith("step 1") for t in titles) == 4 and sum(t.startswith("step 2") for t in titles) == 4
    assert any(t.startswith("step 3") for t in titles) and any("argmax" in t for t in titles)
    assert any("'a'" in t for t in titles) and not any("'background'" in t for t in titles)
    with pytest.raises(ValueError, match="class names"):
        decoder_steps(projected, upsampled, upsampled[0], logits, ["x"])


def test_padding_leak_separates_the_border_ring_from_the_interior():
    # one zero-padded 3x3 conv on a constant map: only the border ring changes
    conv = torch.nn.Conv2d(1, 4, 3, padding=1)
    torch.nn.init.uniform_(conv.weight, 0.5, 1.0)
    with torch.no_grad():
        out = conv(torch.ones(1, 1, 10, 10))
    dev = deviation_from_centre(out)
    assert dev[1:-1, 1:-1].max() == pytest.approx(0.0, abs=1e-6) and dev[0].min() > 0
    fig = padding_leak({"conv": dev})
    title = fig.axes[0].get_title()
    assert "interior 0" in title and "border ring mean 0 " not in title
    assert rectangles(fig.axes[0])[0].get_width() == 8


# ----------------------------------------------------------------------------- predictions
def test_prediction_overlay_colours_classes_and_hides_background(photo):
    labels = np.zeros((16, 16), int)
    labels[:8] = 2
    fig = prediction_overlay(photo, labels, ["background", "circle", "square"], title="nano")
    ax = fig.axes[0]
    rgba = ax.images[1].get_array()
    assert rgba.shape == (H, W, 4)
    assert rgba[0, 0, 3] > 0 and rgba[-1, -1, 3] == 0  # class 2 on top, background transparent below
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["circle (absent)", "square"]
    with pytest.raises(ValueError, match="class names"):
        prediction_overlay(photo, labels, ["background"])


def test_prediction_panels_keep_each_resolution(photo):
    logits = torch.randn(1, 3, 8, 8)
    fig = prediction_panels([(photo, logits, "64 px"), (photo[::2, ::2], logits, "32 px")])
    assert [ax.images[0].get_array().shape[:2] for ax in fig.axes] == [(64, 64), (32, 32)]
    assert [ax.get_title() for ax in fig.axes] == ["64 px", "32 px"]


# ----------------------------------------------------------------------------- tables
def test_attention_cost_rows_at_512():
    rows = attention_cost_rows((512, 512), dims=(32, 64, 160, 256))
    assert [r["tokens N"] for r in rows] == [128 * 128, 64 * 64, 32 * 32, 16 * 16]
    assert [r["R = r²"] for r in rows] == [64, 16, 4, 1]
    assert all(r["pairs N²"] == r["pairs N²/R"] * r["R = r²"] for r in rows)
    assert rows[0]["attn GMACs (N²/R)"] == round(2 * 16384 * 256 * 32 / 1e9, 3)
    with pytest.raises(ValueError, match="one entry per stage"):
        attention_cost_rows(strides=(4, 8), sr_ratios=(8,))


def test_tables_render_as_text_html_and_figure():
    rows = [{"model": "B0", "params (M)": 3.7149, "n": 1234567}, {"model": "B1<x>", "params (M)": 13.2, "n": 5}]
    text = format_table(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["model", "params", "(M)", "n"]
    assert "3.71" in lines[2] and "1,234,567" in lines[2] and lines[2].endswith("1,234,567")
    assert len({len(l) for l in lines[:3]}) == 1  # aligned
    html = table_html(rows, caption="cap")
    assert html.count("<tr>") == 3 and "B1&lt;x&gt;" in html and "<caption>cap</caption>" in html
    fig = table_figure(rows, title="t")
    assert fig.axes[0].tables[0].get_celld()[(2, 0)].get_text().get_text() == "B1<x>"
    with pytest.raises(ValueError, match="missing"):
        format_table(rows, ["model", "GMACs"])


def test_shape_rows_reports_grid_channels_and_stride():
    rows = shape_rows(stage_maps(), (H, W))
    assert rows[1] == {"stage": "stage 2", "grid h×w": "8×8", "channels C": 8, "tokens N": 64, "stride": "1/8"}


# ----------------------------------------------------------------------------- explorer
def test_attention_explorer_redraws_from_records_when_controls_change(photo):
    records = {"stage 1": peaked_record(sr=4, heads=1, peak=(0, 0)), "stage 2": peaked_record(heads=3, peak=(3, 3))}
    explorer = AttentionExplorer(photo, records)
    first_png, first_fig = bytes(explorer.view.value), explorer.figure
    assert first_png.startswith(b"\x89PNG") and explorer.head.max == 0
    explorer.stage.value = "stage 2"
    assert explorer.head.max == 2 and explorer.figure is not first_fig
    assert "stage 2" in explorer.figure.axes[0].get_title()
    assert np.argmax(explorer.figure.axes[0].images[1].get_array()) == 15
    explorer.head.value = 1
    assert "head 1" in explorer.figure.axes[0].get_title()
    explorer.x.value = 3
    assert "x=3" in explorer.figure.axes[0].get_title() and bytes(explorer.view.value) != first_png
    explorer.stage.value = "stage 1"  # fewer heads: head snaps back into range
    assert explorer.head.value == 0 and explorer.head.max == 0


# --------------------------------------------------------------------------- one drawing function, every record kind
def _window_record(hw=(16, 16)):
    from segviz.nn.recording import WindowAttentionRecord

    probs = torch.rand(16, 2, 16, 16).softmax(-1)  # 16 windows of 4x4 (a 14x14 map is padded to 16x16)
    return WindowAttentionRecord(probs, window=4, feature_hw=hw, shift=2)


def test_attention_overlay_draws_window_attention_inside_the_query_window_only():
    record = _window_record()
    fig = attention_overlay(np.zeros((64, 64, 3)), record, (2, 2), head=1)  # pixel (2, 2) -> token (0, 0)
    ax = fig.axes[0]
    heat = ax.images[1]
    assert heat.get_array().shape == (16, 16)
    amap = np.asarray(heat.get_array())
    assert (amap[:, 2:14] == 0).all() and (amap[2:14, :] == 0).all()  # zero outside the wrapped window
    # the cyclic shift wrapped the window around both edges: rows 0-1 and 14-15 times columns 0-1 and 14-15
    cyan = [r for r in ax.patches if tuple(r.get_edgecolor()[:3]) == pytest.approx(mcolors.to_rgb(QUERY_COLOR))]
    assert len(cyan) == 4 + 1  # four window pieces and the query token
    # a 14x14 map padded to 16: the wrapped part falls in the padding and is not drawn
    padded = _window_record((14, 14))
    assert padded.padding == (2, 2)
    ax = attention_overlay(np.zeros((56, 56, 3)), padded, (2, 2)).axes[0]
    assert ax.images[1].get_array().shape == (14, 14)
    cyan = [r for r in ax.patches if tuple(r.get_edgecolor()[:3]) == pytest.approx(mcolors.to_rgb(QUERY_COLOR))]
    assert len(cyan) == 1 + 1
    assert "4×4 windows, shifted by 2" in ax.get_title()
    assert "1/" in fig.axes[1].get_ylabel()


def test_attention_overlay_draws_sampling_points_and_masked_attention():
    from segviz.nn.recording import MaskedAttentionRecord, SamplingRecord

    locs = torch.rand(1, 3, 2, 2, 4, 2)
    weights = torch.rand(1, 3, 2, 2, 4).reshape(1, 3, 2, 8).softmax(-1).reshape(1, 3, 2, 2, 4)
    sampling = SamplingRecord(locs, weights, [(8, 8), (4, 4)], reference_points=torch.rand(1, 3, 2, 2))
    fig = attention_overlay(np.zeros((32, 32, 3)), sampling, 1)
    ax = fig.axes[0]
    assert len(ax.collections) == 2  # one scatter per level
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["level 0 (8×8)", "level 1 (4×4)"]
    with pytest.raises(ValueError, match="object queries"):
        attention_overlay(np.zeros((32, 32, 3)), sampling, (3, 4))

    mask = torch.zeros(1, 1, 2, 16, dtype=torch.bool)
    mask[..., 8:] = True
    masked = MaskedAttentionRecord(torch.rand(1, 2, 2, 16).softmax(-1), mask, (4, 4))
    fig = attention_overlay(np.zeros((32, 32, 3)), masked, 0)
    shade = np.asarray(fig.axes[0].images[-1].get_array())
    assert (shade[2:, :, 3] > 0).all() and (shade[:2, :, 3] == 0).all()  # grey over the blocked half
    assert "uniform, 1/8" in fig.axes[1].get_ylabel()  # 8 pixels left open


def test_attention_grid_mixes_record_kinds_and_refuses_what_it_cannot_draw():
    fig = attention_grid(np.zeros((56, 56, 3)), {"W-MSA": _window_record(), "SW-MSA": _window_record()}, (30, 30))
    assert len(fig.axes) == 2 * 2 + 2
    with pytest.raises(ValueError, match="expected an attention or sampling record"):
        attention_overlay(np.zeros((8, 8, 3)), torch.rand(1, 1, 4, 4), (0, 0))
