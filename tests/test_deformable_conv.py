"""Deformable convolution v2 on grid_sample (segviz.nn.deformable_conv): with its taps on the regular
grid it is a plain convolution, an integer offset is a shifted convolution, the block starts as a
plain conv (scaled by σ(0) = 1/2) and learns its offsets. Parity with torchvision.ops.deform_conv2d
is in tests_parity (the reference environment)."""
import pytest
import torch
import torch.nn.functional as F

from segviz.nn.deformable_conv import ModulatedDeformConv2d, deform_conv2d, tap_positions


def _out_size(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


@pytest.mark.parametrize("stride, padding, dilation, groups", [(1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 2, 2), (2, 0, 1, 4)])
def test_zero_offsets_and_unit_mask_are_a_plain_conv(stride, padding, dilation, groups):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 4, 9, 11), torch.randn(6 if groups != 4 else 8, 4 // groups, 3, 3), None
    ho, wo = _out_size(9, 3, stride, padding, dilation), _out_size(11, 3, stride, padding, dilation)
    bias = torch.randn(weight.shape[0])
    offset = torch.zeros(2, 2 * 9, ho, wo)
    ours = deform_conv2d(x, offset, weight, bias, torch.ones(2, 9, ho, wo), stride, padding, dilation)
    ref = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max().item() / 10)


def test_an_integer_offset_is_a_shifted_conv():
    torch.manual_seed(0)
    x, weight = torch.randn(1, 3, 10, 12), torch.randn(5, 3, 3, 3)
    dy, dx = 2, -1
    offset = torch.zeros(1, 18, 10, 12)
    offset[:, 0::2], offset[:, 1::2] = dy, dx  # every tap moves by (dy, dx)
    ours = deform_conv2d(x, offset, weight, None, None, 1, 1, 1)
    # tap t of output p reads x(p + t - 1 + d) (zero outside x): an unpadded conv over the window of a
    # widely zero-padded x that starts at (d - 1)
    m = 4
    big = F.pad(x, (m, m, m, m))
    window = big[:, :, m - 1 + dy : m - 1 + dy + 12, m - 1 + dx : m - 1 + dx + 14]
    torch.testing.assert_close(ours, F.conv2d(window, weight), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, F.conv2d(x, weight, padding=1), atol=1e-2)  # it did move


def test_a_half_pixel_offset_reads_the_mean_of_two_neighbours():
    x = torch.arange(20.0).reshape(1, 1, 4, 5)
    weight = torch.ones(1, 1, 1, 1)
    offset = torch.zeros(1, 2, 4, 5)
    offset[:, 1] = 0.5  # Δx = 1/2
    out = deform_conv2d(x, offset, weight)
    torch.testing.assert_close(out[..., :4], (x[..., :4] + x[..., 1:]) / 2)
    torch.testing.assert_close(out[..., 4], x[..., 4] / 2)  # the right neighbour is outside: zero


def test_tap_positions_are_the_regular_grid_plus_offsets():
    offset = torch.zeros(1, 18, 4, 4)
    offset[0, 2 * 4 + 1, 1, 2] = 0.25  # centre tap (k = 4), Δx, at output (1, 2)
    pos = tap_positions(offset, (3, 3), stride=2, padding=1, dilation=1)
    assert pos.shape == (1, 1, 9, 4, 4, 2)
    torch.testing.assert_close(pos[0, 0, 0, 1, 2], torch.tensor([1.0, 3.0]))  # (2·1 - 1 + 0, 2·2 - 1 + 0)
    torch.testing.assert_close(pos[0, 0, 4, 1, 2], torch.tensor([2.0, 4.25]))


def test_the_block_starts_as_half_a_plain_conv_and_learns_offsets():
    torch.manual_seed(0)
    block = ModulatedDeformConv2d(3, 4)
    x = torch.randn(2, 3, 8, 8)
    offset, mask = block.offsets_and_mask(x)
    assert offset.abs().max() == 0 and torch.all(mask == 0.5)
    torch.testing.assert_close(block(x), 0.5 * F.conv2d(x, block.weight, padding=1) + block.bias.view(1, -1, 1, 1))
    block(x).square().mean().backward()
    assert block.conv_offset.weight.grad.abs().sum() > 0  # the offsets (and masks) get a gradient


@pytest.mark.parametrize("kwargs, match", [
    (dict(in_channels=0, out_channels=4), "in_channels"), (dict(in_channels=3, out_channels=4, stride=0), "stride"),
    (dict(in_channels=3, out_channels=4, offset_groups=2), "offset_groups"),
    (dict(in_channels=3, out_channels=4, padding=-1), "padding"),
])
def test_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModulatedDeformConv2d(**kwargs)


def test_bad_offsets_and_masks():
    x, weight = torch.zeros(1, 4, 6, 6), torch.zeros(2, 4, 3, 3)
    with pytest.raises(ValueError, match="offset has 10 channels"):
        deform_conv2d(x, torch.zeros(1, 10, 6, 6), weight, padding=1)
    with pytest.raises(ValueError, match="mask must be"):
        deform_conv2d(x, torch.zeros(1, 18, 6, 6), weight, mask=torch.zeros(1, 3, 6, 6), padding=1)
