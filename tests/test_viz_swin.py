"""The Swin chapter's figures and explorer (segviz.viz.swin, segviz.viz.swin_explorer): the geometry they
show is the model's (regions, mask, merging order, rolled windows), they follow the style, and the
explorer's controls change what it draws, headlessly."""
import matplotlib

matplotlib.use("Agg")

import re

import numpy as np
import pytest
import torch

import segviz
from segviz.models.swin import MASK_VALUE, PatchMerging, WindowAttention, shifted_window_mask, window_partition
from segviz.nn.recording import WindowAttentionRecord
from segviz.viz import style
from segviz.viz import swin as sv
from segviz.viz.swin_explorer import SwinExplorer, allowed_windows, explorer_figure, swin_records, window_setting


def photo(n=64):
    y, x = np.mgrid[0:n, 0:n]
    return np.stack([x * 255 // n, y * 255 // n, (x + y) * 127 // n], -1).astype(np.uint8)


def official_regions(h, w, window, shift):
    """The official construction (microsoft/Swin-Transformer), written out independently."""
    img = np.zeros((h, w), dtype=np.int64)
    cnt = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[hs, ws] = cnt
            cnt += 1
    return img


def random_record(hw=(10, 10), window=4, shift=2, heads=2, seed=0):
    hp, wp = -(-hw[0] // window) * window, -(-hw[1] // window) * window
    n = (hp // window) * (wp // window)
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, heads, window ** 2, window ** 2, generator=g), -1)
    return WindowAttentionRecord(probs, window, hw, shift)


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    return segviz.create_model("upernet-swin-nano").eval()


# --------------------------------------------------------------------------- geometry from the model
def test_regions_of_the_8x8_example_are_the_official_nine():
    labels = sv.region_labels(8, 8, 4, 2)
    assert labels.tolist() == official_regions(8, 8, 4, 2).tolist()
    assert sorted(np.unique(labels).tolist()) == list(range(9))
    # which regions share each rolled window: w0 {0}, w1 {1, 2}, w2 {3, 6}, w3 {4, 5, 7, 8}
    per_window = window_partition(torch.from_numpy(labels).reshape(1, 8, 8, 1), 4)[..., 0]
    assert [sorted(set(w.tolist())) for w in per_window] == [[0], [1, 2], [3, 6], [4, 5, 7, 8]]


@pytest.mark.parametrize(("h", "w", "window", "shift"), [(8, 8, 4, 2), (12, 8, 4, 2), (14, 21, 7, 3), (6, 6, 2, 1)])
def test_mask_is_minus_100_exactly_between_different_regions(h, w, window, shift):
    mask = shifted_window_mask(h, w, window, shift)
    labels = torch.from_numpy(sv.region_labels(h, w, window, shift))
    per_window = window_partition(labels.reshape(1, h, w, 1), window)[..., 0]
    different = per_window[:, :, None] != per_window[:, None, :]
    assert torch.equal(mask == MASK_VALUE, different) and torch.equal(mask == 0, ~different)
    # the same groups as the official numbering (which may name several interior windows alike)
    official = window_partition(torch.from_numpy(official_regions(h, w, window, shift)).reshape(1, h, w, 1),
                                window)[..., 0]
    assert torch.equal(official[:, :, None] != official[:, None, :], different)


def test_region_labels_refuse_an_unpadded_map():
    with pytest.raises(ValueError, match="multiple of the window"):
        sv.region_labels(10, 8, 4, 2)


def test_merging_order_is_read_from_the_module():
    order = sv.merging_order(PatchMerging(3), 4, 4)
    # x0 = (0,0), x1 = (1,0), x2 = (0,1), x3 = (1,1) of each 2x2 group; flat index y*4 + x
    assert order[0, 0].tolist() == [0, 4, 1, 5]
    assert order[1, 1].tolist() == [10, 14, 11, 15]


def test_window_cost_rows_match_the_counter():
    rows = sv.window_cost_rows([224], dim=96, window=7)
    with torch.device("meta"):
        counted = segviz.flops(segviz.create_model("swin-t"), (1, 3, 224, 224), device="meta")
    assert rows[0]["Ω(W-MSA) GMACs"] == pytest.approx(counted.per_module["stages.0.blocks.0.attn"], rel=1e-9)
    ratios = [r["MSA / W-MSA"] for r in sv.window_cost_rows([64, 128, 256])]
    assert ratios == sorted(ratios) and ratios[0] > 1
    with pytest.raises(ValueError):
        sv.window_cost_rows([2], patch=4)


@pytest.mark.parametrize("shift", [0, 2])
def test_dense_attention_rows_are_map_for(shift):
    record = random_record((10, 9), 4, shift)
    dense = sv.dense_attention(record, head=1)
    for q in [(0, 0), (3, 4), (9, 8), (5, 1)]:
        row = dense[q[0] * 9 + q[1]].reshape(10, 9)
        assert torch.allclose(row, record.map_for(q, head=1))


def test_reach_stays_in_the_window_without_shift_and_crosses_with_it():
    plain = random_record((8, 8), 4, 0, seed=1)
    shifted = random_record((8, 8), 4, 2, seed=2)
    query = (3 * 8 + 4, 3 * 8 + 4)   # a 64 px picture of 8x8 tokens: token (3, 3), last of window 0
    one, two = sv.attention_reach([plain, shifted], query, (64, 64))
    assert one[:4, :4].sum() == pytest.approx(1.0) and one[4:].sum() == 0 and one[:, 4:].sum() == 0
    assert two[4:, 4:].sum() > 0 and two.sum() == pytest.approx(1.0)
    again = sv.attention_reach([plain, random_record((8, 8), 4, 0, seed=3)], query, (64, 64))[1]
    assert again[4:].sum() == 0 and again[:, 4:].sum() == 0


def test_reach_crosses_patch_merging():
    fine = random_record((8, 8), 4, 0)
    coarse = random_record((4, 4), 4, 0)
    reach = sv.attention_reach([fine, coarse], (4, 4), (64, 64))
    assert reach[1].shape == (8, 8) and reach[1].sum() == pytest.approx(1.0)
    assert (reach[1] > 0).all()   # one 4x4 window covers the whole coarse map


# --------------------------------------------------------------------------- figures
def figures():
    torch.manual_seed(0)
    attn = WindowAttention(8, 4, 2)
    feats = {f"stage {i + 1}": torch.randn(1, 4 << i, 16 >> i, 16 >> i) for i in range(4)}
    recs = {"block 1": random_record((16, 16), 4, 0, 1), "block 2": random_record((16, 16), 4, 2, 1)}
    return {
        "hierarchy_figure": lambda: sv.hierarchy_figure(photo(), feats, window=4),
        "patch_merging_figure": lambda: sv.patch_merging_figure(photo(), PatchMerging(4), at=(4, 4)),
        "window_cost_figure": lambda: sv.window_cost_figure(),
        "cyclic_shift_figure": lambda: sv.cyclic_shift_figure(photo(), grid=8, window=4, shift=2),
        "window_masks_figure": lambda: sv.window_masks_figure(),
        "masked_attention_figure": lambda: sv.masked_attention_figure(random_record((8, 8), 4, 2), window_index=3),
        "relative_bias_figure": lambda: sv.relative_bias_figure(attn, head=1),
        "reach_figure": lambda: sv.reach_figure(photo(), recs, (30, 30)),
        "explorer_figure": lambda: explorer_figure(photo(), recs, "block 2", (30, 30), head=1),
    }


@pytest.mark.parametrize("name", list(figures()))
def test_figures_follow_the_style(name, tmp_path):
    fig = figures()[name]()
    assert style.check(fig) == []
    fig.savefig(tmp_path / f"{name}.png")


def _texts(fig):
    return " | ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))


def test_cyclic_shift_figure_names_the_regions_of_window_3():
    text = _texts(sv.cyclic_shift_figure(photo(), grid=8, window=4, shift=2))
    assert "w3 holds regions 4, 5, 7, 8" in text
    assert "8\n(w3)" in text and "0\n(w0)" in text   # the photo's top-left corner piece joins window 3


def test_window_masks_figure_counts_the_blocked_entries():
    text = _texts(sv.window_masks_figure())
    for expected in ("window 0: region 0\n0 of 256", "window 1: regions 1, 2\n128 of 256",
                     "window 3: regions 4, 5, 7, 8\n192 of 256"):
        assert expected in text


def test_masked_attention_figure_needs_a_shifted_record():
    with pytest.raises(ValueError, match="shifted"):
        sv.masked_attention_figure(random_record((8, 8), 4, 0))


def test_masked_probabilities_of_a_real_block_are_negligible(nano):
    records = swin_records(nano, torch.randn(1, 3, 256, 256))   # a Scenes-sized input
    sw = records["stage 1 · block 2"]
    # a 64 x 64 map padded to 70 x 70: 10 x 10 windows of 7 x 7 tokens, shifted by 3
    assert sw.window == 7 and sw.shift == 3 and sw.feature_hw == (64, 64) and sw.padded_hw == (70, 70)
    blocked = shifted_window_mask(70, 70, 7, 3) < 0
    labels = torch.from_numpy(sv.region_labels(70, 70, 7, 3)).reshape(1, 70, 70, 1)
    assert len(set(window_partition(labels, 7)[-1, :, 0].tolist())) == 4   # the last window mixes 4 regions
    assert blocked[-1].any()
    assert sw.probs[0][blocked[:, None].expand_as(sw.probs[0])].max() < 1e-40
    text = _texts(sv.masked_attention_figure(sw, window_index=-1))
    assert "window 99 (row 9, column 9" in text
    assert float(re.search(r"across regions at most (\S+)", text).group(1)) < 1e-40


# --------------------------------------------------------------------------- explorer
def test_window_setting_changes_and_restores(nano):
    x = torch.randn(1, 3, 64, 64)
    assert allowed_windows(nano) == (2, 3, 4, 5, 6, 7)   # up to the trained M = 7
    small = swin_records(nano, x, window=2, shift=False)
    assert all(r.window == 2 and r.shift == 0 for r in small.values())
    four = swin_records(nano, x, window=4)
    assert all(r.window == 4 for r in four.values()) and [r.shift for r in four.values()] == [0, 2] * 4
    normal = swin_records(nano, x)
    assert [r.shift for r in normal.values()] == [0, 3] * 4 and normal["stage 1 · block 1"].window == 7
    with pytest.raises(ValueError, match="window must be one of"):
        with window_setting(nano, window=8):
            pass
    assert all(s.window_size == 7 for s in nano.backbone.stages)


def test_explorer_controls_change_the_drawn_figure(nano):
    image = photo(64)
    x = torch.randn(1, 3, 64, 64)
    explorer = SwinExplorer(nano, image, x, query=(14, 14))
    seen = [bytes(explorer.view.value)]

    def changed(control, value):
        before = bytes(explorer.view.value)
        control.value = value
        assert bytes(explorer.view.value) != before, f"{control.description} -> {value} did not redraw"
        seen.append(bytes(explorer.view.value))

    changed(explorer.block, "stage 1 · block 2")
    assert "SW-MSA" in _texts(explorer.figure)
    changed(explorer.shift, False)
    assert "shift off" in _texts(explorer.figure) and "SW-MSA" not in _texts(explorer.figure)
    changed(explorer.window, 2)
    assert "2×2 windows" in _texts(explorer.figure)
    changed(explorer.block, "stage 3 · block 1")
    assert explorer.head.max == 3
    changed(explorer.head, 3)
    changed(explorer.y, 50)
    changed(explorer.x_pixel, 3)
    explorer.block.value = "stage 1 · block 1"      # fewer heads: the head is clamped
    assert explorer.head.value == 0
    data, metadata = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data and data["image/png"]
    assert int(explorer.view.width) == style.display_width(explorer.figure)


def test_explorer_refuses_bad_input(nano):
    with pytest.raises(ValueError, match="differ in size"):
        SwinExplorer(nano, photo(64), torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="windows must be among"):
        SwinExplorer(nano, photo(64), torch.randn(1, 3, 64, 64), windows=(8,))
