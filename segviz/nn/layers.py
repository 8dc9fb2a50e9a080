"""Small blocks shared by several architectures."""
from __future__ import annotations

import copy
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


def batch_norm_as_affine(bn: nn.BatchNorm2d, bias_before: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Inference-mode BatchNorm as the per-channel affine map it is, in float64:

        BN(z + b) = γ (z + b − μ) / sqrt(σ² + ε) + β = s ⊙ z + t,
        s = γ / sqrt(σ² + ε),   t = β + s ⊙ (b − μ)

    with the running statistics μ, σ² and an optional bias b added before it (a conv's).
    Returns (s, t), each (C,). ValueError for a BatchNorm without running statistics."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False): "
                         "in eval mode it normalises with each batch's statistics, which no fixed weight can")
    c, device = bn.num_features, bn.running_mean.device

    def f64(t: Tensor | None, default: float) -> Tensor:
        return torch.full((c,), default, dtype=torch.float64, device=device) if t is None else t.detach().double()

    scale = f64(bn.weight, 1.0) / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale, f64(bn.bias, 0.0) + scale * (f64(bias_before, 0.0) - bn.running_mean.double())


@torch.no_grad()
def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution computing BN(conv(x)) in inference mode: W' = s ⊙ W (per output channel),
    b' = t (see :func:`batch_norm_as_affine`). A new module; ``conv`` and ``bn`` are unchanged.
    Equal up to float rounding (the fold is done in float64)."""
    if bn.num_features != conv.out_channels:
        raise ValueError(f"cannot fold a BatchNorm of {bn.num_features} channels into a conv with "
                         f"{conv.out_channels} output channels")
    scale, shift = batch_norm_as_affine(bn, conv.bias)
    folded = copy.deepcopy(conv)
    if folded.bias is None:
        folded.bias = nn.Parameter(torch.empty(conv.out_channels, dtype=conv.weight.dtype, device=conv.weight.device))
    folded.weight.copy_(conv.weight.double() * scale.view(-1, *[1] * (conv.weight.dim() - 1)))
    folded.bias.copy_(shift)
    return folded


class FoldedBatchNorm(nn.Identity):
    """Where a BatchNorm stood before :func:`fold_batch_norm` moved it into the conv before it:
    the identity, and a refusal to train (the model it sits in is for inference only)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def train(self, mode: bool = True) -> FoldedBatchNorm:
        if mode:
            raise ValueError("this model's BatchNorms are folded into its convolutions, so it is for inference "
                             "only; train the readable model and call segviz.fuse_for_inference again")
        return super().train(False)

    def extra_repr(self) -> str:
        return f"{self.num_features}, folded into the conv before it"


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
