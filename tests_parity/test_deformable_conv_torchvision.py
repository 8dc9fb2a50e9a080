"""Numerical parity of segviz's grid_sample deformable convolution (DCNv2, modulated) with
``torchvision.ops.deform_conv2d``: random offsets of a few pixels (many taps land between pixels
and some outside the map), random masks, stride / padding / dilation, offset groups and conv groups."""
import pytest
import torch
from torchvision.ops import deform_conv2d as tv_deform_conv2d

from segviz.nn.deformable_conv import ModulatedDeformConv2d, deform_conv2d

TOL = 1e-5


@pytest.mark.parametrize("stride, padding, dilation, offset_groups, groups", [
    (1, 1, 1, 1, 1), (2, 1, 1, 2, 1), (1, 2, 2, 1, 2), (2, 0, 1, 4, 4),
])
def test_matches_torchvision(stride, padding, dilation, offset_groups, groups):
    b, c_in, c_out, h, w, k = 2, 8, 6 if groups != 4 else 8, 13, 17, 3
    x = torch.randn(b, c_in, h, w, dtype=torch.float64)
    weight = torch.randn(c_out, c_in // groups, k, k, dtype=torch.float64)
    bias = torch.randn(c_out, dtype=torch.float64)
    ho = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    offset = 3 * torch.randn(b, 2 * offset_groups * k * k, ho, wo, dtype=torch.float64)
    mask = torch.rand(b, offset_groups * k * k, ho, wo, dtype=torch.float64)
    ours = deform_conv2d(x, offset, weight, bias, mask, stride, padding, dilation)
    ref = tv_deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask)
    assert ours.shape == ref.shape
    err = (ours - ref).abs().max().item()
    print(f"max |ours - torchvision| = {err:.2e}")
    assert err < TOL


def test_module_matches_torchvision_in_float32():
    torch.manual_seed(0)
    block = ModulatedDeformConv2d(4, 5, offset_groups=2)
    torch.nn.init.normal_(block.conv_offset.weight, std=0.3)  # taps that really move
    x = torch.randn(1, 4, 16, 16)
    offset, mask = block.offsets_and_mask(x)
    assert offset.abs().max() > 0.5
    ref = tv_deform_conv2d(x, offset, block.weight, block.bias, padding=1, mask=mask)
    torch.testing.assert_close(block(x), ref, atol=1e-4, rtol=1e-4)
