"""Small blocks shared by several architectures."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn


def device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu`` (nothing in segviz hard-codes a device)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def init_linear_and_norm(m: nn.Module) -> None:
    """The transformers' common init (ViT, SegFormer, Swin): trunc-normal(0.02) Linear weights,
    zero biases, LayerNorm weight 1 and bias 0. Other modules are left alone; use with ``apply``."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, drop a residual branch for a
    whole sample with probability ``p`` and rescale the kept ones by 1 / (1 - p).
    Identity at inference. x: (B, ...) -> (B, ...)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU, the fuse/projection unit of the decoders.
    (B, C_in, H, W) -> (B, C_out, H', W')."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 1, padding: int = 0, dilation: int = 1):
        super().__init__(OrderedDict(
            conv=nn.Conv2d(c_in, c_out, kernel_size, padding=padding, dilation=dilation, bias=False),
            bn=nn.BatchNorm2d(c_out),
            relu=nn.ReLU(inplace=True),
        ))


def drop_path_rates(total: float, depths: list[int]) -> list[list[float]]:
    """Stochastic-depth rates rising linearly from 0 to ``total`` over all blocks, split per stage."""
    rates = torch.linspace(0, total, sum(depths), device="cpu").tolist()  # plain numbers, also under meta
    out, start = [], 0
    for d in depths:
        out.append(rates[start : start + d])
        start += d
    return out


def tokens_to_map(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """(B, N, C) tokens -> (B, C, h, w) map, N = h·w.

    The map is a view of the (B, h, w, C) tokens, i.e. a channels-last tensor, also for B = 1
    (``transpose(1, 2).reshape(...)`` gives the same values, but for B = 1 a batch stride that
    PyTorch's CPU kernels do not recognise as channels-last, so bilinear upsampling and depthwise
    convolutions then take slow copying paths). :func:`map_to_tokens` of it is again a view.
    """
    b, n, c = x.shape
    h, w = hw
    if n != h * w:
        raise ValueError(f"{n} tokens cannot form a {h}x{w} map")
    return x.reshape(b, h, w, c).permute(0, 3, 1, 2)


def map_to_tokens(x: Tensor) -> Tensor:
    """(B, C, h, w) map -> (B, h·w, C) tokens."""
    return x.flatten(2).transpose(1, 2)


class FeaturePyramid(nn.Module):
    """Base of the hierarchical encoders: runs ``self.stages`` in turn and returns every
    stage's output, the multi-scale pyramid [(B, C_1, H/4, W/4), ..., (B, C_4, H/32, W/32)]."""

    stages: nn.ModuleList

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
