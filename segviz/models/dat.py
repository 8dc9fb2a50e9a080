"""DAT, Vision Transformer with Deformable Attention (Xia et al., CVPR 2022), block by block.

    image (B, 3, H, W)
      -> stage 1: 4x4 patch embedding + LN                 -> L, S blocks          (H/4,  W/4,  C1)
      -> stage 2: 2x2 stride-2 conv + LN                   -> L, S blocks          (H/8,  W/8,  C2)
      -> stage 3: 2x2 stride-2 conv + LN                   -> L, D, L, D, ... blocks (H/16, W/16, C3)
      -> stage 4: 2x2 stride-2 conv + LN                   -> L, D blocks          (H/32, W/32, C4)

L is local attention inside 7x7 windows and S the same on a cyclically shifted map (Swin's W-MSA
and SW-MSA: :class:`segviz.models.swin.SwinBlock`, reused), D is **deformable attention**
(:class:`DeformableAttention`). The blocks are pre-norm, z = z + Attn(LN(z)); z = z + MLP(LN(z)).

Deformable attention (paper eqs. 6-9), for a (h, w) map x of C channels, G offset groups, M heads:

    q = x W_q                                                   queries from every pixel
    p = uniform reference grid of Hk x Wk = (h/r) x (w/r) cells (cell centres)
    Δp = s · tanh(θ_offset(q)) / (Hk, Wk)                       θ_offset per group, shared weights:
                                                                depthwise k x k conv, stride r -> LN -> GELU
                                                                -> 1x1 conv to 2 channels (Δy, Δx)
    x̃ = φ(x; p + Δp)                                            bilinear sampling (grid_sample), per group
    k̃ = x̃ W_k,  ṽ = x̃ W_v
    z^(m) = softmax(q^(m) k̃^(m)ᵀ / sqrt(d) + φ(B̂; R)) ṽ^(m)     every query attends to the same Hk·Wk keys
    z = concat(z^(1..M)) W_o

All coordinates are normalised to [-1, 1] over the map; s = ``offset_range_factor`` (2 in the
paper's configs) bounds Δp to s/Hk, and a key-grid cell is 2/Hk wide, so a point moves at most
s/2 cells (one cell for s = 2) along each axis. The relative position bias B̂ is a
(2h-1) x (2w-1) table per head; with continuous displacements R between each query and each
sampled key it is read by bilinear interpolation, φ(B̂; R).

Configuration and order of operations follow the official CVPR 2022 code (LeapLabTHU/DAT at
commit 797f187, ``models/dat.py`` / ``dat_blocks.py``, configs ``dat_tiny/small/base.yaml``):
the offset network's kernel is 9, 7, 5, 3 for stages 1-4 (only 5 and 3 are used), ``strides``
r = 1, s = 2, groups 3 / 6 (T, S) and 4 / 8 (B), the shifted windows move by ⌈M/2⌉ (4 for M = 7,
not Swin's 3), the downsampling between stages is a 2x2 stride-2 conv without bias followed by
LayerNorm (not Swin's LayerNorm-then-Linear patch merging), the bias tables start at
trunc-normal(0.01), and every Linear and conv keeps PyTorch's default initialisation (the
official ``reset_parameters`` loops over parameters, not modules, and so changes nothing).

One deliberate difference, in coordinates only: the official v1 code places reference points at
cell centres, (i + 0.5)/Hk·2 - 1, but samples with ``align_corners=True``, which reads them a
fraction of a pixel off the centres, and normalises the bias displacements so that an integer
displacement lands between table entries. Here points are sampled with ``align_corners=False``
(the centre convention the reference points are written in: with zero offsets and r = 1 the
sampled keys are exactly the map's pixels), and the displacement of a query at pixel (i, j) from a
point at pixel coordinates (py, px) is normalised by (h - 1, w - 1), so that an integer
displacement reads exactly one table entry at the size the table was built for (as DAT++, the
official code's 2023 revision, does). Other map sizes read the table stretched to the map, as
both official versions do.

Two model variants share every block: :class:`DATClassifier` (ImageNet: LayerNorm, global average
pooling and a Linear head after stage 4) and :class:`DATBackbone` (a LayerNorm on each stage's
output) inside UperNet (:mod:`segviz.models.upernet`) for ``dat-nano``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segviz.models import swin
from segviz.models import upernet
from segviz.models.upernet import UperNet
from segviz.nn.attention import attention
from segviz.nn.checks import (
    check_heads, check_hidden_width, check_image_batch, check_int, check_int_list, check_positive, check_probability,
)
from segviz.nn.layers import DropPath, FeaturePyramid, drop_path_rates
from segviz.registry import register
from segviz.weights import fill_num_batches_tracked, rename_keys

KERNEL_SIZES = (9, 7, 5, 3)  # the offset network's depthwise kernel per stage (official ``ksizes``)


# ----------------------------------------------------------------------------------------
# 1. Reference points and the offset network
# ----------------------------------------------------------------------------------------
def reference_grid(hk: int, wk: int, device=None, dtype=torch.float32) -> Tensor:
    """The uniform reference points of an Hk x Wk key grid: cell centres, normalised to [-1, 1]
    over the map, (y, x) order as the official code keeps them.

        p_(i, j) = ((i + 0.5) / Hk · 2 - 1,  (j + 0.5) / Wk · 2 - 1)         (Hk, Wk, 2)

    With ``grid_sample(..., align_corners=False)`` point (i, j) of a grid over an (h, w) map with
    h = r·Hk reads pixel coordinates ((i + 0.5)·r - 0.5, (j + 0.5)·r - 0.5): the centre of the
    r x r block of cell (i, j), and for r = 1 exactly pixel (i, j).
    """
    ys = (torch.arange(hk, device=device, dtype=dtype) + 0.5) / hk * 2 - 1
    xs = (torch.arange(wk, device=device, dtype=dtype) + 0.5) / wk * 2 - 1
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, h, w) map (the official ``LayerNormProxy``)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class OffsetNetwork(nn.Sequential):
    """θ_offset: depthwise k x k conv (stride r, padding k//2) -> LayerNorm -> GELU -> 1x1 conv
    to 2 channels without bias. Shared by all offset groups: it sees one group's C/G channels of
    the query map at a time. (B·G, C/G, h, w) -> (B·G, 2, ⌈h/r⌉, ⌈w/r⌉), channels (Δy, Δx) raw
    (bounded later by s·tanh)."""

    def __init__(self, channels: int, kernel_size: int, stride: int):
        super().__init__(
            nn.Conv2d(channels, channels, kernel_size, stride, kernel_size // 2, groups=channels),
            ChannelNorm(channels),
            nn.GELU(),
            nn.Conv2d(channels, 2, 1, bias=False),
        )


# ----------------------------------------------------------------------------------------
# 2. Deformable multi-head attention
# ----------------------------------------------------------------------------------------
class DeformableAttention(nn.Module):
    """DAT's deformable multi-head attention (the module docstring has the equations).

    Args:
        dim: C; num_heads: M (head dim d = C / M); groups: G offset groups (M divisible by G);
        fmap_hw: the query map (h, w) the bias table is built for ((2h-1) x (2w-1) per head);
        stride: r, the key grid is (⌈h/r⌉, ⌈w/r⌉); offset_range_factor: s;
        kernel_size: the offset network's depthwise kernel.

    Shapes: x (B, h, w, C) channels last -> (B, h, w, C). Any (h, w) runs: the bias table is read
    over the map actually seen. ``segviz.capture`` records a
    :class:`~segviz.nn.recording.DeformedGridRecord` (probabilities, reference grid, deformed points).
    """

    def __init__(self, dim: int, num_heads: int, groups: int, fmap_hw: tuple[int, int], stride: int = 1,
                 offset_range_factor: float = 2.0, kernel_size: int = 3):
        super().__init__()
        if dim % num_heads or num_heads % groups:
            raise ValueError(f"DeformableAttention: dim {dim} must split into {num_heads} heads and the heads into "
                             f"{groups} offset groups")
        self.dim, self.num_heads, self.groups = dim, num_heads, groups
        self.stride, self.offset_range_factor, self.fmap_hw = stride, float(offset_range_factor), tuple(fmap_hw)
        self.head_dim = dim // num_heads
        self.conv_offset = OffsetNetwork(dim // groups, kernel_size, stride)
        self.proj_q = nn.Linear(dim, dim)
        self.proj_k = nn.Linear(dim, dim)
        self.proj_v = nn.Linear(dim, dim)
        self.proj_out = nn.Linear(dim, dim)
        h, w = self.fmap_hw
        self.rpe_table = nn.Parameter(torch.zeros(num_heads, 2 * h - 1, 2 * w - 1))  # B̂
        nn.init.trunc_normal_(self.rpe_table, std=0.01)

    def offsets_and_points(self, q: Tensor) -> tuple[Tensor, Tensor]:
        """Queries (B, h, w, C) -> (reference (Hk, Wk, 2), points (B·G, Hk, Wk, 2)), (y, x) in [-1, 1]."""
        b, h, w, c = q.shape
        g = self.groups
        q_off = q.permute(0, 3, 1, 2).reshape(b * g, c // g, h, w)
        offset = self.conv_offset(q_off)  # (B·G, 2, Hk, Wk)
        hk, wk = offset.shape[-2:]
        bound = offset.new_tensor([1.0 / hk, 1.0 / wk]).view(1, 2, 1, 1) * self.offset_range_factor
        offset = (offset.tanh() * bound).permute(0, 2, 3, 1)  # Δp, (B·G, Hk, Wk, 2)
        reference = reference_grid(hk, wk, q.device, q.dtype)
        return reference, reference + offset

    def position_bias(self, points: Tensor, h: int, w: int) -> Tensor:
        """φ(B̂; R) for queries at the pixels of an (h, w) map and keys at ``points`` (B·G, Hk, Wk, 2),
        (y, x) in [-1, 1]: (B, M, h·w, Hk·Wk).

        R = (i - py, j - px) in pixels, normalised by (h - 1, w - 1) to [-1, 1] (further for keys
        pushed outside the map, which read the table's zero padding); the table (2h_t-1) x (2w_t-1)
        is read with ``align_corners=True``, so at h = h_t, R = (Δy, Δx) integer reads entry
        (h_t - 1 + Δy, w_t - 1 + Δx) exactly."""
        bg, hk, wk, _ = points.shape
        g, hg = self.groups, self.num_heads // self.groups
        b = bg // g
        py = (points[..., 0] + 1) * (h / 2) - 0.5  # pixel coordinates (align_corners=False)
        px = (points[..., 1] + 1) * (w / 2) - 0.5
        qy = torch.arange(h, device=points.device, dtype=points.dtype)
        qx = torch.arange(w, device=points.device, dtype=points.dtype)
        qy, qx = (t.reshape(-1) for t in torch.meshgrid(qy, qx, indexing="ij"))
        dy = (qy[:, None] - py.reshape(bg, 1, -1)) / max(h - 1, 1)  # (B·G, h·w, Hk·Wk)
        dx = (qx[:, None] - px.reshape(bg, 1, -1)) / max(w - 1, 1)
        table = self.rpe_table.reshape(g, hg, *self.rpe_table.shape[-2:]).repeat(b, 1, 1, 1)  # (B·G, M/G, 2h-1, 2w-1)
        bias = F.grid_sample(table, torch.stack((dx, dy), dim=-1), mode="bilinear", align_corners=True)
        return bias.reshape(b, self.num_heads, h * w, hk * wk)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        g, heads, d = self.groups, self.num_heads, self.head_dim
        q = self.proj_q(x)
        reference, points = self.offsets_and_points(q)
        hk, wk = points.shape[1:3]
        groups_x = x.permute(0, 3, 1, 2).reshape(b * g, c // g, h, w)
        sampled = F.grid_sample(groups_x, points.flip(-1), mode="bilinear", align_corners=False)  # x̃ (B·G, C/G, Hk, Wk)
        sampled = sampled.reshape(b, c, hk * wk).transpose(1, 2)  # (B, Ns, C)
        k = self.proj_k(sampled).reshape(b, -1, heads, d).transpose(1, 2)  # (B, M, Ns, d)
        v = self.proj_v(sampled).reshape(b, -1, heads, d).transpose(1, 2)
        q = q.reshape(b, h * w, heads, d).transpose(1, 2)  # (B, M, h·w, d)
        bias = self.position_bias(points, h, w)
        out = attention(q, k, v, bias=bias, module=self, kind="deformed_grid", q_hw=(h, w), key_hw=(hk, wk),
                        reference=(reference.flip(-1) + 1) / 2,
                        points=(points.flip(-1).reshape(b, g, hk, wk, 2) + 1) / 2)
        return self.proj_out(out.transpose(1, 2).reshape(b, h, w, c))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.num_heads}, groups={self.groups}, stride={self.stride}, "
                f"offset_range_factor={self.offset_range_factor}, fmap_hw={self.fmap_hw}")


class DeformableBlock(nn.Module):
    """A D block, pre-norm like Swin's: x = x + DropPath(DAttn(LN(x))); x = x + DropPath(MLP(LN(x))).
    The MLP is Swin's (:class:`segviz.models.swin.Mlp`). Shapes: (B, h, w, C) -> (B, h, w, C)."""

    def __init__(self, dim: int, num_heads: int, groups: int, fmap_hw: tuple[int, int], stride: int,
                 offset_range_factor: float, kernel_size: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = DeformableAttention(dim, num_heads, groups, fmap_hw, stride, offset_range_factor, kernel_size)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = swin.Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, layout=None) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


# ----------------------------------------------------------------------------------------
# 3. Downsampling and the stage
# ----------------------------------------------------------------------------------------
class DownProjection(nn.Module):
    """Between stages: a 2x2 stride-2 conv without bias (C -> C'), then LayerNorm (official
    ``down_projs``). An odd side is zero-padded right/bottom first.
    (B, C, h, w) -> (B, ⌈h/2⌉, ⌈w/2⌉, C') channels last."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Conv2d(dim_in, dim_out, 2, stride=2, bias=False)
        self.norm = nn.LayerNorm(dim_out)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] % 2 or x.shape[-1] % 2:
            x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class DATStage(nn.Module):
    """Downsampling, then the blocks of ``spec`` (a string over L, S, D) in order.

    L and S blocks are :class:`segviz.models.swin.SwinBlock` (W-MSA, SW-MSA); the map is padded
    right/bottom to a multiple of the window M as Swin's dense backbone does, and S shifts by
    ⌈M/2⌉ as DAT's official code does. (B, C_in, H, W) -> (B, C, h, w)."""

    def __init__(self, downsample: nn.Module, blocks: Sequence[nn.Module], window_size: int):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)
        self.window_size = window_size
        self.shift = math.ceil(window_size / 2) if window_size > 1 else 0

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        h, w = x.shape[1:3]
        layouts = {}
        for block in self.blocks:
            layout = None
            if isinstance(block, swin.SwinBlock):
                shift = self.shift if block.shifted else 0
                if shift not in layouts:
                    layouts[shift] = swin.window_layout(h, w, self.window_size, shift, x.device, x.dtype)
                layout = layouts[shift]
            x = block(x, layout)
        return x.permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------
# 4. The hierarchy
# ----------------------------------------------------------------------------------------
def _check_config(owner, in_chans, embed_dims, num_heads, stage_spec, window_size, groups, strides,
                  offset_range_factor, kernel_sizes, mlp_ratio, drop_path_rate, img_size, patch_size):
    check_int(owner, "in_chans", in_chans)
    embed_dims = check_int_list(owner, "embed_dims", embed_dims, 4)
    num_heads = check_int_list(owner, "num_heads", num_heads, 4)
    check_heads(owner, embed_dims, num_heads)
    if isinstance(stage_spec, str) or not isinstance(stage_spec, Sequence) or len(stage_spec) != 4 or not all(
            isinstance(s, str) and s and set(s) <= set("LSD") for s in stage_spec):
        raise ValueError(f"{owner}: stage_spec must be 4 non-empty strings over L (window), S (shifted window) and "
                         f"D (deformable attention), one per stage, got {stage_spec!r}")
    check_int(owner, "window_size", window_size)
    groups = check_int_list(owner, "groups", groups, 4)
    for i, (heads, g) in enumerate(zip(num_heads, groups)):
        if heads % g:
            raise ValueError(f"{owner}: groups[{i}] = {g} must divide num_heads[{i}] = {heads}")
    strides = check_int_list(owner, "strides", strides, 4)
    if isinstance(offset_range_factor, str) or not isinstance(offset_range_factor, Sequence) \
            or len(offset_range_factor) != 4:
        raise ValueError(f"{owner}: offset_range_factor must be 4 positive numbers, got {offset_range_factor!r}")
    for i, s in enumerate(offset_range_factor):
        check_positive(owner, f"offset_range_factor[{i}]", s)
    kernel_sizes = check_int_list(owner, "kernel_sizes", kernel_sizes, 4)
    check_positive(owner, "mlp_ratio", mlp_ratio)
    check_hidden_width(owner, "mlp_ratio", mlp_ratio, embed_dims)
    check_probability(owner, "drop_path_rate", drop_path_rate)
    check_int(owner, "img_size", img_size)
    check_int(owner, "patch_size", patch_size)
    return embed_dims, num_heads, groups, strides, kernel_sizes


class DAT(FeaturePyramid):
    """The four-stage hierarchy at strides 4, 8, 16, 32: (B, 3, H, W) -> four maps
    [(B, C_i, ⌈H/2^(i+2)⌉, ⌈W/2^(i+2)⌉)]. :class:`DATClassifier` and :class:`DATBackbone` build on it.

    Args:
        embed_dims, num_heads: per stage; stage_spec: per stage, a string of block types
            ("LS", "LS", "LDLDLD", "LD" for DAT-T); window_size: M of the L / S blocks;
        groups, strides (r), offset_range_factor (s), kernel_sizes: per stage, used by its D blocks;
        img_size: the input side the bias tables are built for (the query map of stage i is
            img_size / 2^(i+2)); patch_size (4), mlp_ratio (4), drop_path_rate.
    """

    def __init__(self, in_chans: int = 3, embed_dims: Sequence[int] = (96, 192, 384, 768),
                 num_heads: Sequence[int] = (3, 6, 12, 24),
                 stage_spec: Sequence[str] = ("LS", "LS", "LDLDLD", "LD"), window_size: int = 7,
                 groups: Sequence[int] = (1, 1, 3, 6), strides: Sequence[int] = (1, 1, 1, 1),
                 offset_range_factor: Sequence[float] = (2.0, 2.0, 2.0, 2.0),
                 kernel_sizes: Sequence[int] = KERNEL_SIZES, mlp_ratio: float = 4.0, drop_path_rate: float = 0.2,
                 img_size: int = 224, patch_size: int = 4):
        super().__init__()
        owner = type(self).__name__
        embed_dims, num_heads, groups, strides, kernel_sizes = _check_config(
            owner, in_chans, embed_dims, num_heads, stage_spec, window_size, groups, strides, offset_range_factor,
            kernel_sizes, mlp_ratio, drop_path_rate, img_size, patch_size)
        self.in_chans, self.embed_dims, self.stage_spec = in_chans, embed_dims, tuple(stage_spec)
        rates = drop_path_rates(drop_path_rate, [len(s) for s in stage_spec])
        stages = []
        side = -(-img_size // patch_size)
        for i, dim in enumerate(embed_dims):
            down = swin.PatchEmbed(in_chans, dim, patch_size) if i == 0 else DownProjection(embed_dims[i - 1], dim)
            blocks = []
            for j, kind in enumerate(stage_spec[i]):
                if kind == "D":
                    blocks.append(DeformableBlock(dim, num_heads[i], groups[i], (side, side), strides[i],
                                                  offset_range_factor[i], kernel_sizes[i], mlp_ratio, rates[i][j]))
                else:
                    block = swin.SwinBlock(dim, num_heads[i], window_size, shifted=kind == "S", mlp_ratio=mlp_ratio,
                                           drop_path=rates[i][j])
                    nn.init.trunc_normal_(block.attn.relative_position_bias_table, std=0.01)  # DAT's init
                    blocks.append(block)
            stages.append(DATStage(down, blocks, window_size))
            side = -(-side // 2)
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        check_image_batch(x, self.in_chans, type(self).__name__)
        return super().forward(x)


class DATClassifier(DAT):
    """The ImageNet classifier: the hierarchy, then LayerNorm over stage 4's channels, global
    average pooling and a Linear head. (B, 3, H, W) -> (B, num_classes); no ``predict``."""

    feature_modules = ("stages.*",)

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, embed_dims: Sequence[int] = (96, 192, 384, 768),
                 num_heads: Sequence[int] = (3, 6, 12, 24),
                 stage_spec: Sequence[str] = ("LS", "LS", "LDLDLD", "LD"), window_size: int = 7,
                 groups: Sequence[int] = (1, 1, 3, 6), strides: Sequence[int] = (1, 1, 1, 1),
                 offset_range_factor: Sequence[float] = (2.0, 2.0, 2.0, 2.0),
                 kernel_sizes: Sequence[int] = KERNEL_SIZES, mlp_ratio: float = 4.0, drop_path_rate: float = 0.2,
                 img_size: int = 224, patch_size: int = 4):
        checked = check_int("DATClassifier", "num_classes", num_classes)
        super().__init__(in_chans, embed_dims, num_heads, stage_spec, window_size, groups, strides,
                         offset_range_factor, kernel_sizes, mlp_ratio, drop_path_rate, img_size, patch_size)
        self.num_classes = checked
        self.norm = nn.LayerNorm(self.embed_dims[-1])
        self.head = nn.Linear(self.embed_dims[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        last = super().forward(x)[-1]
        return self.head(self.norm(last.permute(0, 2, 3, 1)).mean(dim=(1, 2)))


class DATBackbone(DAT):
    """The dense-prediction backbone: the hierarchy with a LayerNorm on each stage's output.
    Takes :class:`DAT`'s arguments."""

    def __init__(self, **config):
        super().__init__(**config)
        self.norms = nn.ModuleList(swin.StageNorm(dim) for dim in self.embed_dims)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [norm(f) for norm, f in zip(self.norms, super().forward(x))]


def upernet_dat(num_classes: int = 150, channels: int = 512, aux_channels: int = 256, dropout: float = 0.1,
                aux_weight: float = 0.4, in_chans: int = 3, embed_dims: Sequence[int] = (96, 192, 384, 768),
                num_heads: Sequence[int] = (3, 6, 12, 24),
                stage_spec: Sequence[str] = ("LS", "LS", "LDLDLD", "LD"), window_size: int = 7,
                groups: Sequence[int] = (1, 1, 3, 6), strides: Sequence[int] = (1, 1, 1, 1),
                offset_range_factor: Sequence[float] = (2.0, 2.0, 2.0, 2.0),
                kernel_sizes: Sequence[int] = KERNEL_SIZES, mlp_ratio: float = 4.0, drop_path_rate: float = 0.2,
                img_size: int = 224, patch_size: int = 4) -> UperNet:
    """UperNet (with the auxiliary FCN head on stage 3) on :class:`DATBackbone`, as the paper's
    ADE20K models."""
    check_int("UperNet", "num_classes", num_classes)
    backbone = DATBackbone(in_chans=in_chans, embed_dims=embed_dims, num_heads=num_heads, stage_spec=stage_spec,
                           window_size=window_size, groups=groups, strides=strides,
                           offset_range_factor=offset_range_factor, kernel_sizes=kernel_sizes, mlp_ratio=mlp_ratio,
                           drop_path_rate=drop_path_rate, img_size=img_size, patch_size=patch_size)
    return UperNet(backbone, num_classes, channels, dropout=dropout, aux_channels=aux_channels, aux_weight=aux_weight,
                   in_chans=in_chans)


# ----------------------------------------------------------------------------------------
# Reading checkpoints written by other code bases (the timm convention)
# ----------------------------------------------------------------------------------------
# The official v1 code (LeapLabTHU/DAT): patch_proj.0 / .1.norm (stem conv and LN), down_projs.{i}.0 / .1.norm
# *after* stage i (our stages.{i+1}.downsample), stages.{i}.layer_norms.{2d} / {2d+1} (our blocks.{d}.norm1 / norm2),
# stages.{i}.mlps.{d}.chunk.linear1 / linear2, stages.{i}.attns.{d}: for L / S blocks proj_qkv and proj_out
# (our attn.qkv / attn.proj) with relative_position_bias_table; for D blocks conv_offset.{0,1.norm,3}, proj_q/k/v/out
# as 1x1 convs (our Linears: the weight loses its two unit dims) and rpe_table; cls_norm.norm and cls_head.
# relative_position_index and attn_mask are derived from the config and dropped.
_OFFICIAL = [
    (r"^patch_proj\.0\.", "stages.0.downsample.proj."),
    (r"^patch_proj\.1\.norm\.", "stages.0.downsample.norm."),
    (r"^down_projs\.(\d+)\.0\.", lambda m: f"stages.{int(m[1]) + 1}.downsample.proj."),
    (r"^down_projs\.(\d+)\.1\.norm\.", lambda m: f"stages.{int(m[1]) + 1}.downsample.norm."),
    (r"^stages\.(\d+)\.layer_norms\.(\d+)\.norm\.",
     lambda m: f"stages.{m[1]}.blocks.{int(m[2]) // 2}.norm{int(m[2]) % 2 + 1}."),
    (r"^stages\.(\d+)\.mlps\.(\d+)\.chunk\.linear(\d)\.", r"stages.\1.blocks.\2.mlp.fc\3."),
    (r"^stages\.(\d+)\.attns\.(\d+)\.proj_qkv\.", r"stages.\1.blocks.\2.attn.qkv."),
    (r"^stages\.(\d+)\.attns\.(\d+)\.conv_offset\.1\.norm\.", r"stages.\1.blocks.\2.attn.conv_offset.1."),
    (r"^stages\.(\d+)\.attns\.(\d+)\.", r"stages.\1.blocks.\2.attn."),
    (r"^cls_norm\.norm\.", "norm."),
    (r"^cls_head\.", "head."),
]


def convert_dat_keys(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """A DAT backbone / classifier state dict, ours or the official v1 layout -> ``model``'s layout."""
    if not any(k.startswith(("patch_proj.", "down_projs.")) or ".layer_norms." in k for k in state_dict):
        return dict(state_dict)
    sd = rename_keys({k: v for k, v in state_dict.items() if not k.endswith(("relative_position_index", "attn_mask"))},
                     _OFFICIAL)
    modules = dict(model.named_modules())
    out = {}
    for key, value in sd.items():
        owner = key.rpartition(".")[0]
        if owner.endswith("attn.proj_out") and isinstance(modules.get(owner[: -len(".proj_out")]), swin.WindowAttention):
            key = key.replace("attn.proj_out.", "attn.proj.")  # an L / S block's output projection
        if isinstance(modules.get(key.rpartition(".")[0]), nn.Linear) and value.dim() == 4:
            value = value.flatten(1)  # a 1x1 conv's (C, C, 1, 1) weight as a Linear's (C, C)
        out[key] = value
    return out


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """DAT classifier, or UperNet + DAT (backbone keys under "backbone."), ours or official -> ``model``'s."""
    for prefix in ("module.",):
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    if not isinstance(model, UperNet):
        return convert_dat_keys(state_dict, model)
    prefix = "backbone."
    backbone = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    heads = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
    sd = {prefix + k: v for k, v in convert_dat_keys(backbone, model.backbone).items()}
    sd.update(rename_keys(heads, upernet._HEADS))
    return fill_num_batches_tracked(sd, model)


# ----------------------------------------------------------------------------------------
# Variants, with the published numbers (Xia et al. 2022, Table 2; LeapLabTHU/DAT configs)
# ----------------------------------------------------------------------------------------
_SOURCE = ("Xia et al. 2022 (DAT), Table 2, ImageNet-1K at 224x224 (FLOPs as GMACs); configs "
           "LeapLabTHU/DAT v1 configs/dat_{tiny,small,base}.yaml")
CONFIGS = {
    # name: embed dims, heads, spec, groups, drop path
    "dat-t": ((96, 192, 384, 768), (3, 6, 12, 24), ("LS", "LS", "LD" * 3, "LD"), (1, 1, 3, 6), 0.2),
    "dat-s": ((96, 192, 384, 768), (3, 6, 12, 24), ("LS", "LS", "LD" * 9, "LD"), (1, 1, 3, 6), 0.3),
    "dat-b": ((128, 256, 512, 1024), (4, 8, 16, 32), ("LS", "LS", "LD" * 9, "LD"), (1, 1, 4, 8), 0.5),
}
PUBLISHED = {
    "dat-t": dict(params_m=29.0, gmacs=4.6, top1=82.0),
    "dat-s": dict(params_m=50.0, gmacs=9.0, top1=83.7),
    "dat-b": dict(params_m=88.0, gmacs=15.8, top1=84.0),
}
for _name, (_dims, _heads, _spec, _groups, _dpr) in CONFIGS.items():
    register(
        _name, DATClassifier,
        dict(num_classes=1000, embed_dims=_dims, num_heads=_heads, stage_spec=_spec, window_size=7, groups=_groups,
             strides=(1, 1, 1, 1), offset_range_factor=(2.0, 2.0, 2.0, 2.0), kernel_sizes=KERNEL_SIZES,
             mlp_ratio=4.0, drop_path_rate=_dpr, img_size=224),
        checkpoint_filter_fn,
        description=f"DAT-{_name[4:].upper()} ImageNet classifier (Xia et al. 2022), 224x224, deformable attention "
                    "in stages 3-4",
        published=dict(PUBLISHED[_name], input_size=(224, 224), num_classes=1000, source=_SOURCE),
    )

NANO = dict(num_classes=6, embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8), stage_spec=("LS", "LS", "LD", "LD"),
            window_size=7, groups=(1, 1, 2, 4), strides=(1, 1, 2, 1), offset_range_factor=(2.0, 2.0, 2.0, 2.0),
            kernel_sizes=KERNEL_SIZES, mlp_ratio=4.0, drop_path_rate=0.1, img_size=256, channels=32,
            aux_channels=16, dropout=0.1, aux_weight=0.4)
"""A tiny DAT + UperNet for CPU notebooks and Scenes (6 classes, 256 px): on a 256 px image stage 3
is a 16 x 16 query map whose D block reads an 8 x 8 deformed key grid (r = 2, our choice, so that
the grid is sparse enough to see), stage 4 an 8 x 8 map with an 8 x 8 key grid (r = 1)."""
register("dat-nano", upernet_dat, dict(NANO), checkpoint_filter_fn,
         description="a tiny UperNet + DAT for CPU notebooks (window 7, deformable attention in stages 3-4, "
                     "6 Scenes classes, 256 px)")
