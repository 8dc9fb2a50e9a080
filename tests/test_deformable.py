"""Multi-scale deformable attention and the sine position encoding against HuggingFace
``transformers`` (its pure-PyTorch ``multi_scale_deformable_attention``, Deformable DETR's and
Mask2Former's attention modules, Mask2Former's position embedding), the official
initialisation, and the sampling record."""
import math

import pytest
import torch
from torch import nn
from transformers import DeformableDetrConfig
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrMultiscaleDeformableAttention
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention, Mask2FormerPixelDecoderEncoderOnly,
    Mask2FormerSinePositionEmbedding, multi_scale_deformable_attention,
)

import segviz
from segviz.nn.deformable import MSDeformAttn, ms_deform_attn, reference_points
from segviz.nn.position import sine_position_encoding
from tests.toys import threads

SHAPES = [(6, 9), (3, 5), (2, 2)]  # non-square levels, odd sizes


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with threads(1):
        yield


def _random_inputs(b=2, lq=7, heads=4, d=8, shapes=SHAPES, points=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, heads, d, generator=g)
    # some locations outside [0, 1]: grid_sample reads zeros there (padding_mode="zeros")
    locations = torch.rand(b, lq, heads, len(shapes), points, 2, generator=g) * 1.4 - 0.2
    weights = torch.rand(b, lq, heads, len(shapes), points, generator=g)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, locations, weights


def test_ms_deform_attn_equals_huggingface_on_non_square_levels():
    value, locations, weights = _random_inputs()
    ours = ms_deform_attn(value, SHAPES, locations, weights)
    theirs = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    assert ours.shape == (2, 7, 4 * 8)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # the spatial shapes may also come as an (L, 2) tensor, as in Deformable DETR's code
    torch.testing.assert_close(ms_deform_attn(value, torch.tensor(SHAPES), locations, weights), ours)


def test_ms_deform_attn_reads_pixel_centres_exactly_and_zero_outside():
    """Single scale (L = 1): a point at pixel (i, j)'s centre ((j + 0.5) / w, (i + 0.5) / h)
    reads exactly that pixel; a point beyond the map reads zero."""
    h, w, d = 4, 6, 3
    value = torch.randn(1, h * w, 1, d)
    centres = reference_points([(h, w)])  # (h·w, 2)
    locations = centres.view(1, h * w, 1, 1, 1, 2)
    weights = torch.ones(1, h * w, 1, 1, 1)
    out = ms_deform_attn(value, [(h, w)], locations, weights)
    torch.testing.assert_close(out, value[:, :, 0], atol=1e-6, rtol=1e-6)
    outside = torch.tensor([[-0.6, 0.5], [1.6, 0.5], [0.5, 2.0]]).view(1, 3, 1, 1, 1, 2)
    assert ms_deform_attn(value, [(h, w)], outside, torch.ones(1, 3, 1, 1, 1)).abs().max() == 0


def test_ms_deform_attn_rejects_inconsistent_shapes():
    value, locations, weights = _random_inputs()
    with pytest.raises(ValueError, match="spatial_shapes"):
        ms_deform_attn(value, SHAPES[:2], locations, weights)
    with pytest.raises(ValueError, match="spatial_shapes"):
        ms_deform_attn(value, [(6, 9), (3, 5), (2, 3)], locations, weights)


def test_reference_points_are_pixel_centres_as_huggingface_places_them():
    ours = reference_points(SHAPES)
    assert ours.shape == (sum(h * w for h, w in SHAPES), 2)
    torch.testing.assert_close(ours[1], torch.tensor([1.5 / 9, 0.5 / 6]))  # pixel (0, 1) of the first level
    valid = torch.ones(1, len(SHAPES), 2)
    theirs = Mask2FormerPixelDecoderEncoderOnly.get_reference_points(SHAPES, valid, "cpu")  # (1, S, L, 2)
    for level in range(len(SHAPES)):
        torch.testing.assert_close(theirs[0, :, level], ours, atol=1e-6, rtol=0)


def _randomise(module, seed=1):
    """Random weights everywhere (the official init has zero attention weights and offsets)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _module_inputs(b=2, dim=32, shapes=SHAPES, seed=2):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    x = torch.randn(b, s, dim, generator=g)
    pos = torch.randn(b, s, dim, generator=g)
    ref = reference_points(shapes)[None, :, None, :].expand(b, s, len(shapes), 2)
    pad = torch.rand(b, s, generator=g) < 0.2
    return x, pos, ref, pad


def test_msdeformattn_equals_mask2former_module_with_copied_weights():
    theirs = Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(32, 4, n_levels=3, n_points=4)
    _randomise(theirs)
    ours = MSDeformAttn(32, 4, 3, 4)
    ours.load_state_dict(theirs.state_dict())
    x, pos, ref, pad = _module_inputs()
    expected, _ = theirs(x, attention_mask=pad, encoder_hidden_states=x, position_embeddings=pos,
                         reference_points=ref, spatial_shapes_list=SHAPES)
    got = ours(x, ref, x, SHAPES, query_pos=pos, padding_mask=pad)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_msdeformattn_equals_deformable_detr_module_with_copied_weights():
    config = DeformableDetrConfig(d_model=32, num_feature_levels=3, disable_custom_kernels=True)
    theirs = DeformableDetrMultiscaleDeformableAttention(config, num_heads=4, n_points=2)
    _randomise(theirs, seed=3)
    ours = MSDeformAttn(32, 4, 3, 2)
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert not missing and not unexpected
    x, pos, ref, pad = _module_inputs(seed=4)
    queries = torch.randn(2, 5, 32)
    query_ref = torch.rand(2, 5, 3, 2)  # object queries (DETR decoder): arbitrary points
    expected, _ = theirs(queries, attention_mask=~pad, encoder_hidden_states=x, reference_points=query_ref,
                         spatial_shapes=torch.tensor(SHAPES), spatial_shapes_list=SHAPES)
    got = ours(queries, query_ref, x, SHAPES, padding_mask=pad)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_official_init_direction_grid_and_uniform_weights():
    attn = MSDeformAttn(64, num_heads=8, num_levels=3, num_points=4)
    bias = attn.sampling_offsets.bias.view(8, 3, 4, 2)
    # head m looks along θ_m = 2πm/8, scaled so the larger coordinate is ±1; point k at distance k + 1
    directions = torch.tensor([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]], dtype=torch.float)
    for k in range(4):
        for level in range(3):
            torch.testing.assert_close(bias[:, level, k], directions * (k + 1), atol=1e-5, rtol=0)
    assert attn.sampling_offsets.weight.abs().max() == 0
    assert attn.value_proj.bias.abs().max() == 0 and attn.output_proj.bias.abs().max() == 0
    # xavier-uniform bound sqrt(6 / (fan_in + fan_out))
    assert attn.value_proj.weight.abs().max() <= math.sqrt(6 / 128) and attn.value_proj.weight.std() > 0.05
    x, _, ref, _ = _module_inputs(b=1, dim=64, shapes=[(4, 4), (2, 2), (1, 1)])
    with segviz.capture(nn.ModuleDict({"attn": attn})) as rec:
        attn(x, ref, x, [(4, 4), (2, 2), (1, 1)], q_hw=None)
    record = rec.sampling["attn"]
    torch.testing.assert_close(record.weights, torch.full_like(record.weights, 1 / 12))
    # at init every query samples around its reference point along the direction grid
    expected = ref[:, :, None, :, None, :] + bias[None, None] / torch.tensor([[4, 4], [2, 2], [1, 1]])[:, None]
    torch.testing.assert_close(record.locations, expected.expand_as(record.locations), atol=1e-5, rtol=0)


def test_official_init_equals_huggingface_init():
    from transformers import Mask2FormerConfig
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerPreTrainedModel

    theirs = Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(32, 8, n_levels=3, n_points=4)
    Mask2FormerPreTrainedModel._init_weights(type("Init", (), {"config": Mask2FormerConfig()})(), theirs)
    ours = MSDeformAttn(32, 8, 3, 4)
    for name in ("sampling_offsets.bias", "sampling_offsets.weight", "attention_weights.weight",
                 "attention_weights.bias", "value_proj.bias", "output_proj.bias"):
        torch.testing.assert_close(ours.state_dict()[name], theirs.state_dict()[name], atol=1e-6, rtol=0)


class _Two(nn.Module):
    """Two deformable layers, the second called twice: one record per call."""

    def __init__(self):
        super().__init__()
        self.first, self.second = MSDeformAttn(16, 2, 2, 3), MSDeformAttn(16, 2, 2, 3)
        _randomise(self)

    def forward(self, x, ref, shapes):
        x = x + self.first(x, ref, x, shapes, q_hw=shapes[0])
        x = x + self.second(x, ref, x, shapes, q_hw=shapes[0])
        return x + self.second(x, ref, x, shapes, q_hw=shapes[0])


@torch.no_grad()
def test_sampling_is_recorded_once_per_call_and_changes_nothing():
    shapes = [(4, 6), (2, 3)]
    model = _Two()
    x, _, ref, _ = _module_inputs(b=2, dim=16, shapes=shapes, seed=5)
    plain = model(x, ref, shapes)
    with segviz.capture(model) as rec:
        recorded = model(x, ref, shapes)
    assert torch.equal(recorded, plain)
    assert len(rec.records("first", "sampling")) == 1 and len(rec.records("second", "sampling")) == 2
    record = rec.sampling["first"]
    assert record.locations.shape == (2, 30, 2, 2, 3, 2) and record.level_shapes == shapes
    assert record.q_hw == (4, 6) and record.reference_points.shape == (2, 30, 2, 2)
    torch.testing.assert_close(record.weights.sum((-1, -2)), torch.ones(2, 30, 2))
    # the record's locations are the ones the module sampled at: recompute the output from them
    v = model.first.value_proj(x).view(2, 30, 2, 8)
    again = model.first.output_proj(ms_deform_attn(v, shapes, record.locations, record.weights))
    torch.testing.assert_close(x + again, model.first(x, ref, x, shapes) + x)
    # a map on the finest level; weights of points inside the map are all kept
    assert record.map_for((1, 2), head=1).shape == (4, 6)
    with segviz.capture(model, kinds=["attention"]) as rec:  # not asked for: nothing recorded
        model(x, ref, shapes)
    assert not rec.records()


def test_msdeformattn_config_errors():
    with pytest.raises(ValueError, match="num_points"):
        MSDeformAttn(32, 4, 3, 0)
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(30, 4, 3, 4)
    with pytest.raises(ValueError, match="3 levels"):
        MSDeformAttn(16, 2, 3, 2)(torch.zeros(1, 4, 16), torch.zeros(1, 4, 2), torch.zeros(1, 4, 16), [(2, 2)])


@pytest.mark.parametrize("hw", [(5, 7), (8, 8), (1, 3)])
def test_sine_position_encoding_equals_huggingface(hw):
    h, w = hw
    theirs = Mask2FormerSinePositionEmbedding(num_position_features=32, normalize=True)
    expected = theirs(torch.Size((2, 3, h, w)), "cpu", torch.float32)
    ours = sine_position_encoding(h, w, channels=64)
    assert ours.shape == (1, 64, h, w)
    torch.testing.assert_close(ours.expand_as(expected), expected, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="even"):
        sine_position_encoding(h, w, channels=63)
