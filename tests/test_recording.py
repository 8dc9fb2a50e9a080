"""Recording v2: every call kept, one record type per kind owning its geometry, feature hooks."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segviz
from segviz.inspect import capture
from segviz.nn import attention
from segviz.nn.recording import (
    AttentionRecord, FeatureRecord, MaskedAttentionRecord, SamplingRecord, WindowAttentionRecord,
)
from tests.toys import ToyAttention, ToyNet


class SharedHead(nn.Module):
    """One attention module applied to three inputs in one forward (like a shared predictor)."""

    def __init__(self):
        super().__init__()
        self.attn = ToyAttention(dim=8, heads=2)

    def forward(self, xs):
        return [self.attn(x, (2, n // 2)) for x, n in ((x, x.shape[1]) for x in xs)]


def test_a_module_called_three_times_keeps_three_records_in_call_order():
    model = SharedHead().eval()
    xs = [torch.randn(1, n, 8) for n in (4, 6, 8)]
    with capture(model) as rec:
        model(xs)
    calls = rec.records("attn")
    assert [r.probs.shape[-1] for r in calls] == [4, 6, 8]
    assert [r.q_hw for r in calls] == [(2, 2), (2, 3), (2, 4)]
    assert rec.attention["attn"] is calls[-1]  # the dict keeps returning the last call
    assert rec.records(kind="attention") == calls
    with pytest.raises(ValueError, match="unknown record kind"):
        rec.records(kind="atention")


def test_every_call_of_a_model_is_kept_across_forwards_and_features_keep_the_last():
    model = ToyNet().eval()
    with capture(model) as rec:
        model(torch.randn(1, 3, 16, 16))
        out = model(torch.randn(1, 3, 32, 32))
    assert len(rec.records("stages.0.attn")) == 2
    assert rec.features["stages.1"].shape[-2:] == (8, 8) == out.shape[-2:]


# --------------------------------------------------------------------------- window attention
def _window_ids(h, w, m, s):
    """Windows of flat key ids (-1 in the padding) after padding and rolling by -s, as Swin does."""
    ids = torch.arange(h * w, dtype=torch.float).reshape(1, 1, h, w)
    hp, wp = -(-h // m) * m, -(-w // m) * m
    ids = F.pad(ids, (0, wp - w, 0, hp - h), value=-1)[0, 0]
    ids = torch.roll(ids, shifts=(-s, -s), dims=(0, 1))
    return ids.reshape(hp // m, m, wp // m, m).permute(0, 2, 1, 3).reshape(-1, m * m)


@pytest.mark.parametrize("h, w, m, s", [(8, 8, 4, 0), (8, 8, 4, 2), (7, 10, 4, 2), (6, 9, 3, 1)])
def test_window_record_places_each_query_on_its_own_window_with_the_shift_undone(h, w, m, s):
    ids = _window_ids(h, w, m, s)  # (nW, M²)
    # probability entry = 10000 · (key id + 1) + (query id + 1): both ids can be read back
    probs = (10000 * (ids[:, None, :] + 1) + (ids[:, :, None] + 1)).reshape(-1, 1, m * m, m * m)
    probs = probs.repeat(2, 1, 1, 1)  # batch 2
    record = WindowAttentionRecord(probs, window=m, feature_hw=(h, w), shift=s)
    assert record.probs.shape == (2, ids.shape[0], 1, m * m, m * m)
    assert record.padding == (-(-h // m) * m - h, -(-w // m) * m - w)
    for y in range(h):
        for x in range(w):
            full = record.map_for((y, x), batch=1)
            assert full.shape == (h, w)
            nonzero = full > 0
            assert nonzero[y, x]  # a query always sees itself
            assert ((full[nonzero] % 10000) == y * w + x + 1).all()  # it is this query's row
            key_ids = torch.arange(h * w, dtype=torch.float).reshape(h, w)
            assert ((full[nonzero] // 10000) == key_ids[nonzero] + 1).all()  # each key sits where it was
            assert nonzero.sum() <= m * m


def test_window_attention_through_the_kernel_gives_a_record_whose_rows_sum_to_one():
    h = w = 8
    m, s, heads, d = 4, 2, 2, 4
    x = torch.randn(1, heads, h, w, d)
    windows = torch.roll(x, (-s, -s), (2, 3)).reshape(1, heads, 2, m, 2, m, d).permute(0, 2, 4, 1, 3, 5, 6)
    q = windows.reshape(4, heads, m * m, d)

    class Block(nn.Module):
        def forward(self, q):
            return attention(q, q, q, module=self, kind="window_attention", window=m, feature_hw=(h, w), shift=s)

    block = Block()
    with capture(block) as rec:
        out = block(q)
    assert torch.allclose(out, block(q), atol=1e-6)
    record = rec.attention[""]
    assert isinstance(record, WindowAttentionRecord)
    full = record.map_for((0, 0), head=1)
    assert abs(float(full.sum()) - 1.0) < 1e-5
    # (0, 0) sits, after the shift, in the last window, with the wrapped rows/cols 0..1 and 6..7
    rows, cols = record.window_of((0, 0))
    assert sorted(rows.tolist()) == [0, 1, 6, 7] and sorted(cols.tolist()) == [0, 1, 6, 7]
    assert float(full[2:6].abs().sum()) == 0.0


def test_record_fields_are_checked_inside_and_outside_capture_alike():
    q = torch.randn(4, 1, 16, 8)
    module = nn.Identity()
    for recording_now in (False, True):
        with capture(module) if recording_now else torch.no_grad():
            with pytest.raises(ValueError, match=r"unknown \['windw'\]"):
                attention(q, q, q, module=module, kind="window_attention", windw=4, feature_hw=(8, 8))
            with pytest.raises(ValueError, match=r"missing \['feature_hw'\]"):
                attention(q, q, q, module=module, kind="window_attention", window=4)
            with pytest.raises(ValueError, match="unknown record kind"):
                attention(q, q, q, module=module, kind="windows")


def test_window_record_refuses_inconsistent_geometry():
    with pytest.raises(ValueError, match="not a multiple of 4 windows"):
        WindowAttentionRecord(torch.rand(3, 1, 16, 16), window=4, feature_hw=(8, 8))
    with pytest.raises(ValueError, match="window probs must be"):
        WindowAttentionRecord(torch.rand(4, 1, 9, 9), window=4, feature_hw=(8, 8))
    with pytest.raises(ValueError, match="shift"):
        WindowAttentionRecord(torch.rand(4, 1, 16, 16), window=4, feature_hw=(8, 8), shift=4)


# --------------------------------------------------------------------------- deformable sampling
def test_sampling_record_spreads_each_point_like_grid_sample_reads_it():
    levels = [(4, 6), (2, 3)]
    locs = torch.zeros(1, 5, 2, 2, 1, 2)
    # query 0, head 0: on the centre of cell (1, 2) of level 0 ((j + 0.5) / W), nothing on level 1
    locs[0, 0, 0, 0, 0] = torch.tensor([(2 + 0.5) / 6, (1 + 0.5) / 4])
    locs[0, 0, 0, 1, 0] = torch.tensor([0.5, 0.5])
    weights = torch.zeros(1, 5, 2, 2, 1)
    weights[0, 0, 0, 0, 0] = 1.0
    record = SamplingRecord(locs, weights, level_shapes=levels, q_hw=(1, 5))
    grid = record.map_for(0)
    assert grid.shape == (4, 6) and record.grid_hw == (4, 6)
    expected = torch.zeros(4, 6)
    expected[1, 2] = 1.0
    assert torch.allclose(grid, expected)
    # halfway between two cell centres: half the weight on each
    locs[0, 0, 0, 0, 0, 0] = 3.0 / 6
    weights[0, 0, 0, 0, 0] = 0.8
    grid = SamplingRecord(locs, weights, level_shapes=levels).map_for(0)
    assert torch.allclose(grid[1, 2:4], torch.tensor([0.4, 0.4])) and abs(float(grid.sum()) - 0.8) < 1e-6
    points, w = record.points_for((0, 0), head=0)
    assert points.shape == (2, 1, 2) and w.shape == (2, 1)
    with pytest.raises(ValueError, match="no q_hw"):
        SamplingRecord(locs, weights, level_shapes=levels).points_for((0, 1))
    with pytest.raises(ValueError, match="level_shapes"):
        SamplingRecord(locs, weights, level_shapes=levels[:1])


def test_masked_attention_record_gives_probabilities_and_the_mask_on_the_pixel_grid():
    probs = torch.rand(1, 2, 3, 12).softmax(-1)
    mask = torch.zeros(1, 1, 3, 12, dtype=torch.bool)
    mask[..., :4] = True
    record = MaskedAttentionRecord(probs, mask, k_hw=(3, 4))
    assert record.map_for(2, head=1).shape == (3, 4)
    assert record.mask_for(2, head=1)[0].all() and not record.mask_for(2, head=1)[1:].any()
    with pytest.raises(ValueError, match="boolean"):
        MaskedAttentionRecord(probs, mask.float(), k_hw=(3, 4))
    with pytest.raises(ValueError, match="out of range"):
        record.map_for(3)


# --------------------------------------------------------------------------- features by hooks
def test_features_by_name_pattern_need_no_edits_to_the_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 2, 1), nn.ReLU()))
    with capture(model, features="2.*") as rec:
        out = model(torch.randn(1, 3, 8, 8))
    assert sorted(rec.features) == ["2.0", "2.1"]
    assert torch.equal(rec.features["2.1"], out)
    assert isinstance(rec.records("2.0")[0], FeatureRecord)
    with pytest.raises(ValueError, match="matches no module"):
        with capture(model, features="encoder.*"):
            pass
    with pytest.raises(ValueError, match="name pattern"):
        with capture(model, features=3):
            pass
    model(torch.randn(1, 3, 8, 8))
    assert len(rec.records()) == 2  # the hooks are gone after the block


def test_segformer_default_features_are_its_stages_and_decoder_maps():
    model = segviz.create_model("segformer-nano").eval()
    with capture(model, kinds=["feature"]) as rec:
        model(torch.randn(1, 3, 64, 64))
    expected = [f"encoder.stages.{i}" for i in range(4)] + [f"decoder.linear_c.{i}" for i in range(4)] + ["decoder"]
    assert sorted(rec.features) == sorted(expected)
    assert rec.features["encoder.stages.3"].shape == (1, 128, 2, 2)
    assert rec.attention == {}


def test_include_keeps_modules_inside_a_match():
    model = segviz.create_model("segformer-nano").eval()
    with capture(model, include="encoder.stages.1") as rec:
        model(torch.randn(1, 3, 64, 64))
    assert list(rec.attention) == ["encoder.stages.1.blocks.0.attn"]
    assert list(rec.features) == ["encoder.stages.1"]


def test_attention_record_checks_its_grids():
    with pytest.raises(ValueError, match="k_hw"):
        AttentionRecord(torch.rand(1, 1, 4, 4), q_hw=(2, 2), k_hw=(0, 4))
    record = AttentionRecord(torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="no grid sizes"):
        record.map_for((0, 0))
