"""Deformable convolution v2, modulated (Zhu et al., CVPR 2019; v1: Dai et al., ICCV 2017), on ``grid_sample``.

A k x k convolution reads its input at the fixed taps p_k of a grid around each output position p0
(for 3 x 3: p_k ∈ {-1, 0, 1}², times the dilation). Deformable convolution lets every tap move by a
learned, per-position offset Δp_k, and v2 also scales what each tap reads by a modulation
m_k ∈ (0, 1):

    y(p0) = Σ_k  w_k · x(p0 + p_k + Δp_k) · Δm_k                         (DCNv2, eq. 3)

x at a fractional position is read bilinearly (``torch.nn.functional.grid_sample``, zero outside the
map). The offsets and modulations come from a plain conv on the same input, with the same kernel,
stride, padding and dilation, producing 3·K channels per offset group (K = k²): 2K offsets and K
modulation logits (through a sigmoid). That conv starts at zero, so at initialisation every offset is
0 and every modulation σ(0) = 0.5: the block starts as a plain convolution of its weights, scaled by
one half (the paper's and mmcv's plain sigmoid; the taps sit on the regular grid).

The functional :func:`deform_conv2d` takes offsets and masks in ``torchvision.ops.deform_conv2d``'s
layout, so the two can be compared (``tests_parity``):

* offset (B, 2·G_off·K, H_out, W_out): for offset group g and tap k = i·k_w + j (row-major over the
  kernel), channel 2(g·K + k) is Δy and 2(g·K + k) + 1 is Δx, in input pixels;
* mask (B, G_off·K, H_out, W_out), channel g·K + k;
* the input's channels are split into G_off consecutive groups, each moved by its own offsets.

Shapes: x (B, C_in, H, W) -> (B, C_out, H_out, W_out) with the usual conv arithmetic.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segviz.nn.checks import check_int


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if not isinstance(v, (tuple, list)) else (int(v[0]), int(v[1]))


def tap_positions(offset: Tensor, kernel_hw: tuple[int, int], stride=1, padding=0, dilation=1) -> Tensor:
    """Where each tap reads, in input pixel coordinates: (B, G_off, K, H_out, W_out, 2), (y, x).

        p = (y0·s - pad + i·dil + Δy,  x0·s - pad + j·dil + Δx)     for output (y0, x0), tap (i, j)
    """
    b, c, ho, wo = offset.shape
    kh, kw = kernel_hw
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    k = kh * kw
    groups = c // (2 * k)
    delta = offset.reshape(b, groups, k, 2, ho, wo).permute(0, 1, 2, 4, 5, 3)  # (B, G, K, Ho, Wo, 2)
    dev, dt = offset.device, offset.dtype
    ty, tx = torch.meshgrid(torch.arange(kh, device=dev, dtype=dt) * dh, torch.arange(kw, device=dev, dtype=dt) * dw,
                            indexing="ij")
    oy = torch.arange(ho, device=dev, dtype=dt) * sh - ph
    ox = torch.arange(wo, device=dev, dtype=dt) * sw - pw
    base_y = ty.reshape(k, 1, 1) + oy.reshape(1, ho, 1)  # (K, Ho, 1)
    base_x = tx.reshape(k, 1, 1) + ox.reshape(1, 1, wo)  # (K, 1, Wo)
    base = torch.stack(torch.broadcast_tensors(base_y, base_x), dim=-1)  # (K, Ho, Wo, 2)
    return base + delta


def deform_conv2d(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None, mask: Tensor | None = None,
                  stride=1, padding=0, dilation=1) -> Tensor:
    """Modulated deformable convolution (see the module docstring for the layouts).

    Args:
        x: (B, C_in, H, W); weight: (C_out, C_in / groups, k_h, k_w) (groups = C_in / weight.shape[1]);
        offset: (B, 2·G_off·K, H_out, W_out); mask: (B, G_off·K, H_out, W_out) or None (all ones).
    Returns (B, C_out, H_out, W_out).
    """
    b, c_in, h, w = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    k = kh * kw
    ho, wo = offset.shape[-2:]
    if offset.shape[1] % (2 * k) or c_in % (offset.shape[1] // (2 * k)) or c_in % c_per_group:
        raise ValueError(f"deform_conv2d: offset has {offset.shape[1]} channels, which must be 2·G·{k} for a "
                         f"{kh}x{kw} kernel with G dividing the {c_in} input channels; weight {tuple(weight.shape)}")
    g_off = offset.shape[1] // (2 * k)
    if mask is not None and tuple(mask.shape) != (b, g_off * k, ho, wo):
        raise ValueError(f"deform_conv2d: mask must be {(b, g_off * k, ho, wo)}, got {tuple(mask.shape)}")
    pos = tap_positions(offset, (kh, kw), stride, padding, dilation)  # (B, G, K, Ho, Wo, 2) (y, x) pixels
    # pixel -> grid_sample's [-1, 1] with align_corners=False: pixel p is at (2p + 1) / size - 1
    grid = torch.stack(((2 * pos[..., 1] + 1) / w - 1, (2 * pos[..., 0] + 1) / h - 1), dim=-1)
    grid = grid.reshape(b * g_off, k * ho, wo, 2)
    cols = F.grid_sample(x.reshape(b * g_off, c_in // g_off, h, w), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)  # (B·G, C/G, K·Ho, Wo)
    cols = cols.reshape(b, g_off, c_in // g_off, k, ho, wo)
    if mask is not None:
        cols = cols * mask.reshape(b, g_off, 1, k, ho, wo)
    groups = c_in // c_per_group
    cols = cols.reshape(b, groups, c_per_group * k, ho * wo)  # channel-major, then taps: weight's order
    out = torch.einsum("bgnl,gon->bgol", cols, weight.reshape(groups, c_out // groups, c_per_group * k))
    out = out.reshape(b, c_out, ho, wo)
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)


class ModulatedDeformConv2d(nn.Module):
    """DCNv2 block: a k x k conv (default 3 x 3) whose K taps move by learned offsets and are scaled
    by learned modulations, both predicted by a zero-initialised conv on the input.

    ``forward`` returns (B, C_out, H_out, W_out); :meth:`offsets_and_mask` gives what it used:
    offsets (B, 2·G·K, H_out, W_out) in pixels and the mask (B, G·K, H_out, W_out) in (0, 1).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 dilation: int = 1, offset_groups: int = 1, bias: bool = True):
        super().__init__()
        owner = "ModulatedDeformConv2d"
        for name, value, low in (("in_channels", in_channels, 1), ("out_channels", out_channels, 1),
                                 ("kernel_size", kernel_size, 1), ("stride", stride, 1), ("padding", padding, 0),
                                 ("dilation", dilation, 1), ("offset_groups", offset_groups, 1)):
            check_int(owner, name, value, low)
        if in_channels % offset_groups:
            raise ValueError(f"{owner}: offset_groups {offset_groups} must divide in_channels {in_channels}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.dilation, self.offset_groups = stride, padding, dilation, offset_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Conv2d's default
        k = kernel_size * kernel_size
        self.conv_offset = nn.Conv2d(in_channels, 3 * offset_groups * k, kernel_size, stride, padding, dilation)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def offsets_and_mask(self, x: Tensor) -> tuple[Tensor, Tensor]:
        k = self.offset_groups * self.kernel_size ** 2
        out = self.conv_offset(x)
        return out[:, : 2 * k], out[:, 2 * k:].sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        offset, mask = self.offsets_and_mask(x)
        return deform_conv2d(x, offset, self.weight, self.bias, mask, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, offset_groups={self.offset_groups}")
