"""The 2-D sine positional encoding of DETR (Carion et al. 2020), as Mask2Former uses it.

Each pixel (y, x) of an (h, w) map (1-based row and column numbers, normalised to (0, 2π]) is
encoded with F sines and cosines per axis, F = channels / 2:

    ŷ = y / (h + ε) · 2π          x̂ = x / (w + ε) · 2π               (ε = 1e-6)
    ω_i = T^(-2⌊i/2⌋ / F)                                           (T = 10000, i = 0 .. F-1)
    PE_y[2k] = sin(ŷ ω_2k)        PE_y[2k+1] = cos(ŷ ω_2k+1)
    PE = [PE_y ; PE_x]                                              (y channels first)

so neighbouring channel pairs share one frequency, the frequencies fall geometrically from 1 to
about 1/T, and the encoding of a pixel depends only on its relative position in the map (the
same for every image of a batch). Shapes: -> (1, 2F, h, w).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def sine_position_encoding(h: int, w: int, channels: int = 256, temperature: float = 10000.0,
                           normalize: bool = True, scale: float = 2 * math.pi, eps: float = 1e-6,
                           device=None, dtype=torch.float32) -> Tensor:
    """The (1, channels, h, w) sine encoding of an (h, w) map (see the module docstring).

    ``normalize=False`` keeps the raw 1-based row and column numbers (DETR's option)."""
    if channels < 2 or channels % 2:
        raise ValueError(f"the sine position encoding needs an even number of channels >= 2, got {channels}")
    feats = channels // 2
    y = torch.arange(1, h + 1, device=device, dtype=dtype)
    x = torch.arange(1, w + 1, device=device, dtype=dtype)
    if normalize:
        y = y / (h + eps) * scale
        x = x / (w + eps) * scale
    i = torch.arange(feats, device=device).to(dtype)
    omega = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / feats)  # 1 / ω_i

    def encode(pos: Tensor) -> Tensor:  # (n,) -> (n, F), sin on even channels, cos on odd ones
        angles = pos[:, None] / omega
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pe_y = encode(y)[:, None, :].expand(h, w, feats)
    pe_x = encode(x)[None, :, :].expand(h, w, feats)
    return torch.cat((pe_y, pe_x), dim=2).permute(2, 0, 1).unsqueeze(0)


def sine_position_encoding_3d(t: int, h: int, w: int, channels: int = 256, temperature: float = 10000.0,
                              normalize: bool = True, scale: float = 2 * math.pi, eps: float = 1e-6,
                              device=None, dtype=torch.float32) -> Tensor:
    """The (1, t, channels, h, w) sine encoding of a clip of t frames of (h, w) maps, as video
    Mask2Former (``PositionEmbeddingSine3D``) builds it:

        PE(τ, y, x) = [PE_y ; PE_x](y, x)  +  PE_t(τ)

    The spatial part is exactly :func:`sine_position_encoding` (F = channels / 2 frequencies per
    axis, y channels first), the same for every frame. The time part is *added* to all the
    channels, not concatenated: the frame number τ = 1 .. t, normalised the same way
    (τ̂ = τ / (t + ε) · 2π), is encoded with ``channels`` frequencies of its own,

        ω'_i = T^(-2⌊i/2⌋ / channels)     PE_t[2k] = sin(τ̂ ω'_2k)   PE_t[2k+1] = cos(τ̂ ω'_2k+1)

    so the frames of one clip get distinct encodings while a frame's spatial pattern is that of an
    image. (With t = 1 the time part is one constant vector added to every pixel.)
    Shapes: -> (1, t, channels, h, w), the layout (B, T, C, H, W) of the official code.
    """
    if channels < 2 or channels % 2:
        raise ValueError(f"the 3-D sine position encoding needs an even number of channels >= 2, got {channels}")
    for name, value in (("t", t), ("h", h), ("w", w)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"the 3-D sine position encoding needs a positive int {name}, got {value!r}")
    spatial = sine_position_encoding(h, w, channels, temperature, normalize, scale, eps, device, dtype)
    tau = torch.arange(1, t + 1, device=device, dtype=dtype)
    if normalize:
        tau = tau / (t + eps) * scale
    i = torch.arange(channels, device=device).to(dtype)
    omega = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / channels)
    angles = tau[:, None] / omega
    pe_t = torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)  # (t, channels)
    return (spatial[:, None] + pe_t[None, :, :, None, None])
