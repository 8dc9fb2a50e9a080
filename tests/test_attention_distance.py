"""segviz.attention_distance: mean query-key distance in input pixels, for every record kind.

Each expected value is computed independently of the implementation (brute-force loops over
pixel positions) or by hand (derivations in the comments)."""
import itertools
import math

import pytest
import torch

import segviz
from segviz.inspect.attention_distance import AttentionDistance, attention_distance, mean_pairwise_distance
from segviz.nn.recording import AttentionRecord, MaskedAttentionRecord, SamplingRecord, WindowAttentionRecord


def brute_mean_pairwise(h, w, big_h, big_w):
    """Mean distance over all ordered pairs of cell centres (self-pairs included), by loops."""
    centres = [((i + 0.5) * big_h / h, (j + 0.5) * big_w / w) for i in range(h) for j in range(w)]
    total = sum(math.dist(a, b) for a, b in itertools.product(centres, centres))
    return total / len(centres) ** 2


@pytest.mark.parametrize(("grid", "image"), [((4, 4), (64, 64)), ((3, 5), (30, 100)), ((6, 2), (12, 40))])
def test_uniform_global_attention_is_the_mean_pairwise_distance(grid, image):
    n = grid[0] * grid[1]
    heads = 3
    probs = torch.full((2, heads, n, n), 1.0 / n, dtype=torch.float64)  # 1/15 is not exact in float32
    d = attention_distance(AttentionRecord(probs, grid, grid), image)
    expected = brute_mean_pairwise(*grid, *image)
    assert isinstance(d, AttentionDistance) and d.kind == "attention" and d.heads == heads
    assert d.per_head.tolist() == pytest.approx([expected] * heads, rel=1e-9)
    assert mean_pairwise_distance(grid, image) == pytest.approx(expected, rel=1e-9)


def test_reduced_attention_to_the_own_patch():
    # 4x4 queries on an 8x8 image (2-px cells), keys 2x2 (4-px patches, centres at 2 and 6).
    # Each query attends only to the key patch containing it: its centre is 1 px from the patch
    # centre on both axes, so every distance is sqrt(2).
    probs = torch.zeros(1, 1, 16, 4)
    for i in range(4):
        for j in range(4):
            probs[0, 0, i * 4 + j, (i // 2) * 2 + j // 2] = 1.0
    d = attention_distance(AttentionRecord(probs, (4, 4), (2, 2)), (8, 8))
    assert d.per_head.tolist() == pytest.approx([math.sqrt(2)])


def test_attention_to_self_is_zero_and_heads_are_separate():
    n = 9
    eye = torch.eye(n)[None, None]
    uniform = torch.full((1, 1, n, n), 1.0 / n)
    d = attention_distance(AttentionRecord(torch.cat([eye, uniform], 1), (3, 3), (3, 3)), 9)
    assert d.per_head[0] == 0.0
    assert d.per_head[1] == pytest.approx(brute_mean_pairwise(3, 3, 9, 9))
    assert d.mean == pytest.approx(d.per_head.mean())


def _window_probs(windows, m, heads=1, key=0):
    probs = torch.zeros(windows, heads, m * m, m * m)
    probs[..., key] = 1.0
    return probs


def test_window_attention_uniform_inside_a_window():
    # 4x4 map on a 4x4 image (1-px cells), window 2, no shift: every query sees the 2x2 block it sits
    # in, uniformly; the distances to the 4 keys are 0, 1, 1, sqrt(2).
    probs = torch.full((4, 2, 4, 4), 0.25)
    d = attention_distance(WindowAttentionRecord(probs, 2, (4, 4), 0), (4, 4))
    assert d.kind == "window_attention"
    assert d.per_head.tolist() == pytest.approx([(2 + math.sqrt(2)) / 4] * 2)


def test_window_attention_with_shift_uses_the_unshifted_positions():
    # 4x4 map, window 2, shift 1; every query attends to slot 0 of its (shifted) window. The windows
    # hold unshifted rows {1, 2} (window row 0) and {3, 0} (window row 1, wrapped), same for columns.
    # Slot 0 is the first of each pair, so the row offsets are {0, 1} or {0, 3}; same for columns:
    #   windows (0,0): 0, 1, 1, sqrt2        -> 2 + sqrt2
    #   windows (0,1), (1,0): 0, 3, 1, sqrt10 -> 4 + sqrt10 each
    #   window (1,1): 0, 3, 3, sqrt18         -> 6 + 3 sqrt2
    # total 16 + 4 sqrt2 + 2 sqrt10 over 16 queries.
    d = attention_distance(WindowAttentionRecord(_window_probs(4, 2), 2, (4, 4), 1), (4, 4))
    expected = (16 + 4 * math.sqrt(2) + 2 * math.sqrt(10)) / 16
    assert d.per_head.tolist() == pytest.approx([expected])


def test_window_attention_leaves_out_padding_queries():
    # 3x3 map padded to 4x4, window 2, no shift, everyone attends to slot 0 (top-left of its window).
    # Real queries: window (0,0) 4 queries: 0, 1, 1, sqrt2; window (0,1) column 2 only: 0, 1;
    # window (1,0) row 2 only: 0, 1; window (1,1) only (2,2): 0.  Total 4 + sqrt2 over 9 queries.
    d = attention_distance(WindowAttentionRecord(_window_probs(4, 2), 2, (3, 3), 0), (3, 3))
    assert d.per_head.tolist() == pytest.approx([(4 + math.sqrt(2)) / 9])


def test_window_attention_scales_with_the_image():
    probs = torch.full((4, 1, 4, 4), 0.25)
    small = attention_distance(WindowAttentionRecord(probs, 2, (4, 4), 0), 4).per_head[0]
    big = attention_distance(WindowAttentionRecord(probs, 2, (4, 4), 0), 16).per_head[0]
    assert big == pytest.approx(4 * small)


def test_deformable_sampling_by_hand():
    # One query with reference point (0.5, 0.5) on a 100 (H) x 200 (W) image, 2 levels, 1 point each:
    # level 0 samples 0.1 to the right (0.1 * 200 = 20 px), level 1 0.1 down (0.1 * 100 = 10 px);
    # weights 0.25 / 0.75 -> 0.25 * 20 + 0.75 * 10 = 12.5 px.
    ref = torch.tensor([[[0.5, 0.5]]])  # (B, Lq, 2)
    locs = torch.tensor([[0.6, 0.5], [0.5, 0.6]]).view(1, 1, 1, 2, 1, 2)
    weights = torch.tensor([0.25, 0.75]).view(1, 1, 1, 2, 1)
    d = attention_distance(SamplingRecord(locs, weights, [(4, 8), (2, 4)], ref), (100, 200))
    assert d.kind == "sampling"
    assert d.per_head.tolist() == pytest.approx([12.5])
    assert d.per_level.ravel().tolist() == pytest.approx([20.0, 10.0])
    assert d.level_weight.ravel().tolist() == pytest.approx([0.25, 0.75])


def test_deformable_sampling_per_level_reference_points_and_no_reference():
    # per-level reference points (B, Lq, L, 2): distances are from each level's own reference point
    ref = torch.tensor([[[[0.5, 0.5], [0.25, 0.25]]]])
    locs = torch.tensor([[0.5, 0.75], [0.25, 0.25]]).view(1, 1, 1, 2, 1, 2)  # 0.25 * 40 = 10 px down; 0 px
    weights = torch.tensor([0.5, 0.5]).view(1, 1, 1, 2, 1)
    d = attention_distance(SamplingRecord(locs, weights, [(2, 2), (1, 1)], ref), 40)
    assert d.per_head.tolist() == pytest.approx([5.0])
    # without reference points the queries are the pixels of q_hw: sampling each query's own centre is 0 px
    centres = torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])  # (x, y) of a 2x2 grid
    locs = centres.view(1, 4, 1, 1, 1, 2)
    d0 = attention_distance(SamplingRecord(locs, torch.ones(1, 4, 1, 1, 1), [(2, 2)], None, (2, 2)), 10)
    assert d0.per_head.tolist() == pytest.approx([0.0])


def test_collections_and_a_recorder():
    torch.manual_seed(0)
    model = segviz.create_model("segformer-nano").eval()
    with torch.no_grad(), segviz.capture(model) as rec:
        model(torch.randn(1, 3, 64, 64))
    out = segviz.attention_distance(rec, 64)
    assert list(out) == [f"encoder.stages.{i}.blocks.0.attn" for i in range(4)]
    assert [d.heads for d in out.values()] == [1, 1, 2, 4]
    # every distance lies between 0 and the image diagonal
    assert all(0 < v < 64 * math.sqrt(2) for d in out.values() for v in d.per_head)
    as_dict = attention_distance(rec.attention, 64)
    assert {k: v.per_head.tolist() for k, v in as_dict.items()} == {k: v.per_head.tolist() for k, v in out.items()}
    as_list = attention_distance(list(rec.attention.values()), 64)
    assert [d.per_head.tolist() for d in as_list] == [d.per_head.tolist() for d in out.values()]


def test_bad_inputs():
    record = AttentionRecord(torch.full((1, 1, 4, 4), 0.25), (2, 2), (2, 2))
    for size in (0, -3, (4,), (4, 0), "64", (4.5, 4), True, None):
        with pytest.raises(ValueError, match="image_size"):
            attention_distance(record, size)
    with pytest.raises(ValueError, match="no grids"):
        attention_distance(AttentionRecord(torch.full((1, 1, 4, 4), 0.25)), 8)
    masked = MaskedAttentionRecord(torch.full((1, 1, 3, 4), 0.25), torch.zeros(1, 1, 3, 4, dtype=torch.bool), (2, 2))
    with pytest.raises(ValueError, match="object queries"):
        attention_distance(masked, 8)
    with pytest.raises(ValueError, match="cannot measure"):
        attention_distance(torch.zeros(3), 8)
    with pytest.raises(ValueError, match="empty"):
        attention_distance({}, 8)
    with pytest.raises(ValueError, match="empty"):
        attention_distance([], 8)
    with pytest.raises(ValueError, match="finite"):
        attention_distance(AttentionRecord(torch.full((1, 1, 4, 4), float("nan")), (2, 2), (2, 2)), 8)
    with pytest.raises(ValueError, match="object queries"):  # sampling by object queries without reference points
        attention_distance(SamplingRecord(torch.rand(1, 3, 1, 1, 2, 2), torch.full((1, 3, 1, 1, 2), 0.5), [(2, 2)]), 8)


def test_dat_deformed_grid_by_hand():
    from segviz.nn.recording import DeformedGridRecord

    # 2x2 queries on a 20x20 image (centres at 5 and 15 px); 1 key per group. Group 0's point is at
    # the image centre (x, y) = (0.5, 0.5) = (10, 10) px: every query is sqrt(5² + 5²) away. Group 1's
    # point is on query (0, 0)'s centre (0.25, 0.25): distances 0, 10, 10, 10·sqrt2. Heads 0, 1 -> group 0,
    # heads 2, 3 -> group 1 (contiguous groups).
    points = torch.tensor([[0.5, 0.5], [0.25, 0.25]]).view(1, 2, 1, 1, 2)
    record = DeformedGridRecord(torch.ones(1, 4, 4, 1), (2, 2), (1, 1), torch.tensor([[[0.5, 0.5]]]), points)
    d = attention_distance(record, 20)
    assert d.kind == "deformed_grid"
    far = (0 + 10 + 10 + 10 * math.sqrt(2)) / 4
    assert d.per_head.tolist() == pytest.approx([5 * math.sqrt(2)] * 2 + [far] * 2)
