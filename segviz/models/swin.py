"""Swin Transformer (Liu et al., ICCV 2021), block by block, in the order of the paper.

    image (B, 3, H, W)
      -> stage 1: PatchEmbed (4x4 patches, linear embedding C)      -> Swin blocks   (H/4,  W/4,  C)
      -> stage 2: PatchMerging (2x2 neighbours, 4C -> 2C)           -> Swin blocks   (H/8,  W/8,  2C)
      -> stage 3: PatchMerging                                      -> Swin blocks   (H/16, W/16, 4C)
      -> stage 4: PatchMerging                                      -> Swin blocks   (H/32, W/32, 8C)

Inside a stage the blocks alternate W-MSA (attention inside non-overlapping M x M windows) and
SW-MSA (the same after cyclically shifting the map by ⌊M/2⌋, so the new windows straddle the
old borders). Attention inside a window costs M²·hw·C instead of (hw)²·C for the whole map
(paper eq. 1-2, for an h x w map of C channels):

    Ω(MSA)   = 4hwC² + 2(hw)²C
    Ω(W-MSA) = 4hwC² + 2M²hwC

Two faithful variants share every block and differ only in how a stage treats its map:

* the ImageNet **classifier** (:class:`SwinClassifier`, microsoft/Swin-Transformer
  ``swin_transformer.py``): a stage whose map is not larger than the window (min(h, w) <= M)
  uses one window of side min(h, w) and no shift; after stage 4, LayerNorm, global average
  pooling and a Linear head. The official code fixes the input resolution at build time;
  here the same rule is applied to the map a forward actually sees, as HuggingFace
  ``SwinForImageClassification`` does, so at the training resolution the two are identical
  and other sizes also run (right/bottom padded to a multiple of the window);
* the **dense-prediction backbone** of the segmentation papers (:class:`SwinBackbone`,
  SwinTransformer/Swin-Transformer-Semantic-Segmentation ``mmseg/models/backbones/swin_transformer.py``):
  any input size; the image is padded right/bottom to a multiple of the patch size, every
  map right/bottom to a multiple of the window (never clamped, so a small map is one padded
  window and SW-MSA still shifts), the shifted-window mask is built for the padded size,
  PatchMerging pads odd sizes, and a LayerNorm closes each output stage.

Initialisation as the official code: trunc-normal(0.02) Linear weights and relative-position
bias tables, zero biases, LayerNorm 1 / 0; the patch-embedding conv keeps PyTorch's default.
Stochastic depth rises linearly from 0 to ``drop_path_rate`` over all blocks.

Checkpoints of the official code (classifier and segmentation), timm, and HuggingFace
``transformers`` 4.x / 5.x load through ``create_model(name, weights=PATH)``;
:func:`checkpoint_filter_fn` at the end of this file converts them.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segviz.nn.attention import attention
from segviz.nn.checks import (
    check_bool, check_heads, check_hidden_width, check_image_batch, check_int, check_int_list, check_positive,
    check_probability,
)
from segviz.nn.layers import DropPath, FeaturePyramid, drop_path_rates, init_linear_and_norm
from segviz.registry import register
from segviz.weights import join_tensors, rename_keys

MASK_VALUE = -100.0  # added between tokens of different regions in SW-MSA (the official value, not -inf)


# ----------------------------------------------------------------------------------------
# 1. Patch partition and linear embedding
# ----------------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """Split the image into non-overlapping P x P patches (P = 4) and embed each linearly:

        tokens = LayerNorm(Conv_{P, stride P}(x))

    A P x P conv with stride P is exactly "flatten each patch (P·P·3 values), then a Linear
    to C". The image is zero-padded right/bottom to a multiple of P first.

    Shapes: x (B, C_in, H, W) -> (B, ⌈H/P⌉, ⌈W/P⌉, C), channels last (the layout the blocks use).
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 4):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size
        pad_h, pad_w = -x.shape[-2] % p, -x.shape[-1] % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


# ----------------------------------------------------------------------------------------
# 2. Windows
# ----------------------------------------------------------------------------------------
def window_partition(x: Tensor, window: int) -> Tensor:
    """Cut a map into non-overlapping M x M windows, row-major (window (i, j) is number i·(w/M) + j,
    and all windows of image 0 come before those of image 1).

    (B, h, w, C) -> (B·(h/M)·(w/M), M·M, C); h and w must be multiples of M.
    """
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """The inverse of :func:`window_partition`: (B·nW, M·M, C) -> (B, h, w, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


class WindowLayout(NamedTuple):
    """Where each token of an (h, w) map sits in the (shifted) windows of a block, as two gathers.

    A block's attention branch pads the map right/bottom to (hp, wp), rolls it by -s, cuts it into
    windows (:func:`window_partition`), and afterwards undoes all three. Each direction only moves
    tokens, so it is one row gather of the flattened map (one copy instead of up to three):

        windows[i] = padded[take[i]]        i over the hp·wp window slots, in window_partition order
        map[p]     = windows[put[p]]        p over the h·w tokens of the unpadded map

    ``mask`` is SW-MSA's :func:`shifted_window_mask` (nW, m², m²) when s > 0, else None.
    """

    window: int
    shift: int
    take: Tensor  # (hp·wp,) long
    put: Tensor  # (h·w,) long
    mask: Tensor | None


def window_layout(h: int, w: int, window: int, shift: int, device=None, dtype=torch.float32) -> WindowLayout:
    """The :class:`WindowLayout` of an unpadded (h, w) map for window m and shift s: ``take`` is the
    partition of the rolled map of flat positions, ``put`` its inverse permutation, cropped."""
    hp, wp = -(-h // window) * window, -(-w // window) * window
    position = torch.arange(hp * wp, device=device).view(1, hp, wp, 1)
    if shift:
        position = torch.roll(position, shifts=(-shift, -shift), dims=(1, 2))
    take = window_partition(position, window).flatten()
    put = torch.argsort(take).view(hp, wp)[:h, :w].flatten()
    mask = shifted_window_mask(hp, wp, window, shift, device=device, dtype=dtype) if shift else None
    return WindowLayout(window, shift, take, put, mask)


def take_rows(x: Tensor, index: Tensor) -> Tensor:
    """x[:, index] for x (B, N, C) and index (K,) -> (B, K, C), as one ``index_select`` over the
    rows of the flattened batch (on CPU the fastest of the gathers for rows of C values)."""
    b, n, c = x.shape
    if b > 1:
        index = (index + n * torch.arange(b, device=index.device)[:, None]).flatten()
    return x.reshape(b * n, c).index_select(0, index).view(b, -1, c)


# ----------------------------------------------------------------------------------------
# 3. Relative position bias
# ----------------------------------------------------------------------------------------
def relative_position_index(window: int, table_window: int | None = None) -> Tensor:
    """Which entry of the bias table each (query, key) pair of an M x M window reads.

    Two tokens at (y1, x1) and (y2, x2) of a window are (Δy, Δx) = (y1 - y2, x1 - x2) apart,
    each in [-(M-1), M-1], so (2M-1)² offsets exist. The table row of an offset is

        (Δy + M - 1)·(2M - 1) + (Δx + M - 1)

    Returns (M², M²) long, tokens in row-major order. ``table_window`` (default M) is the window
    the table was built for: a window m smaller than it reads the matching offsets of the larger
    table (used by the classifier's one-window stages when a map is smaller than M).
    """
    big = window if table_window is None else table_window
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    delta = coords[:, :, None] - coords[:, None, :] + (big - 1)  # (2, M², M²), each in [0, 2M-2]
    return delta[0] * (2 * big - 1) + delta[1]


# ----------------------------------------------------------------------------------------
# 4. Window attention (W-MSA; SW-MSA is the same module on a shifted map with a mask)
# ----------------------------------------------------------------------------------------
class WindowAttention(nn.Module):
    """Multi-head self-attention inside each M x M window, with a relative position bias (eq. 4):

        Q, K, V = x W_qkv                         (B·nW, heads, M², d) each
        Attention(Q, K, V) = SoftMax(Q Kᵀ / sqrt(d) + B [+ mask]) V

    B (M² x M² per head) is read from a learned table B̂ of (2M-1)² rows x heads, one row per
    relative offset (:func:`relative_position_index`). SW-MSA adds the shifted-window mask
    (:func:`shifted_window_mask`: -100 between tokens that were not neighbours before the shift).

    Shapes: windows (B·nW, M², C) -> (B·nW, M², C). The attention runs through the one kernel
    :func:`segviz.nn.attention`, which records a :class:`~segviz.nn.recording.WindowAttentionRecord`
    (window, shift and the unpadded map size) when ``segviz.capture`` asks for it.

    When autograd is off (``torch.no_grad`` / ``inference_mode``), the term added to the logits,
    B [+ mask], is computed once and reused (:meth:`attention_bias`): gathering B from the table
    and adding the mask is the same on every forward until the table changes. The cache is one
    plain attribute (not in the state dict) holding a copy of the table it was built from; it is
    used only while the table still equals that copy exactly (a few microseconds to compare), so
    an optimizer step, ``load_state_dict``, ``.to()`` or a write through ``.data`` (which the
    version counter does not see, nor does a fused optimizer) all rebuild it. With autograd on,
    and on devices other than the CPU (where the comparison would wait for the device), it is
    not used at all.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self._bias_cache: tuple | None = None  # (window, mask, table copy, bias) of the last autograd-free forward

    def relative_position_bias(self, window: int | None = None) -> Tensor:
        """B for every head: (heads, m², m²) for a window of side m <= M (default M)."""
        m = self.window_size if window is None else window
        if m == self.window_size:
            index = self.relative_position_index
        else:
            index = relative_position_index(m, self.window_size).to(self.relative_position_bias_table.device)
        bias = self.relative_position_bias_table[index.reshape(-1)]
        return bias.reshape(m * m, m * m, self.num_heads).permute(2, 0, 1)

    def attention_bias(self, window: int, mask: Tensor | None) -> Tensor:
        """B [+ mask] as the kernel takes it, contiguous: (1, heads, m², m²) without a mask,
        (nW, heads, m², m²) with one. Cached while autograd is off (see the class docstring);
        the mask must not be modified in place (the stage builds it and never does)."""
        table = self.relative_position_bias_table
        if torch.is_grad_enabled() or table.device.type != "cpu":  # comparing on a GPU would wait for it
            return self._attention_bias(window, mask)
        cached = self._bias_cache
        if not (cached is not None and cached[0] == window and cached[1] is mask and _same(cached[2], table)):
            cached = self._bias_cache = (window, mask, table.detach().clone(), self._attention_bias(window, mask))
        return cached[3]

    def _attention_bias(self, window: int, mask: Tensor | None) -> Tensor:
        bias = self.relative_position_bias(window).unsqueeze(0).contiguous()  # (1, heads, m², m²)
        return bias if mask is None else bias + mask.unsqueeze(1)  # (nW, heads, m², m²), contiguous

    def forward(self, x: Tensor, mask: Tensor | None, window: int, shift: int, feature_hw: tuple[int, int]) -> Tensor:
        """x: (B·nW, m², C) windows; mask: (nW, m², m²) or None; window m, shift s and the
        unpadded (h, w) are what the record needs to place the windows on the map."""
        bw, n, c = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(bw, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        bias = self.attention_bias(window, mask)
        if bias.shape[0] not in (1, bw):  # one copy per image: window index b·nW + i reads mask i
            bias = bias.repeat(bw // bias.shape[0], 1, 1, 1)
        out = attention(q, k, v, bias=bias, module=self, kind="window_attention",
                        window=window, feature_hw=tuple(feature_hw), shift=shift)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, heads={self.num_heads}"


def _same(a: Tensor, b: Tensor) -> bool:
    """Same dtype, device, shape and values (NaN never equals itself, so a NaN table is never reused)."""
    return a.dtype == b.dtype and a.device == b.device and a.shape == b.shape and torch.equal(a, b)


# ----------------------------------------------------------------------------------------
# 5. The cyclic shift and its mask
# ----------------------------------------------------------------------------------------
def shifted_window_mask(h: int, w: int, window: int, shift: int, device=None, dtype=torch.float32) -> Tensor:
    """The attention mask of SW-MSA on an (h, w) map (already padded to multiples of M).

    Rolling the map by -s (s = ⌊M/2⌋) on both axes moves its top s rows to the bottom and its
    left s columns to the right. The windows along the bottom and right edges then hold tokens
    that were far apart before the roll. Each axis of the rolled map has three ranges,

        [0, h - M)   [h - M, h - s)   [h - s, h)

    (the last one is what wrapped around), so the map has 3 x 3 = 9 regions, numbered
    3·(row range) + (column range). Inside a window, a query may only attend to keys of its own
    region: the mask is 0 for equal region numbers and -100 otherwise (after softmax, e^-100 is
    ~4e-44 of a typical weight: blocked in practice, as the official code does; not -inf).

    Returns (nW, M², M²), windows in :func:`window_partition` order.
    """
    def ranges(n: int) -> Tensor:
        i = torch.arange(n, device=device)
        return (i >= n - window).long() + (i >= n - shift).long()  # 0, 1 or 2

    region = (ranges(h)[:, None] * 3 + ranges(w)[None, :]).to(dtype)  # (h, w) region numbers
    per_window = window_partition(region[None, :, :, None], window).squeeze(-1)  # (nW, M²)
    different = per_window[:, :, None] != per_window[:, None, :]
    return torch.zeros(different.shape, device=device, dtype=dtype).masked_fill(different, MASK_VALUE)


# ----------------------------------------------------------------------------------------
# 6. The Swin Transformer block
# ----------------------------------------------------------------------------------------
class Mlp(nn.Module):
    """Linear(C, rC) -> GELU -> Linear(rC, C), r = mlp_ratio (4). (..., C) -> (..., C)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.fc1(x)
        if type(self.act) is nn.GELU and self.act.approximate == "none" and _may_overwrite(hidden, self.fc1):
            return self.fc2(torch.ops.aten.gelu_(hidden))  # the same GELU, in the (rC)-wide buffer it reads
        return self.fc2(self.act(hidden))


def _may_overwrite(t: Tensor, *producers: nn.Module) -> bool:
    """May a block overwrite the intermediate tensor ``t`` (the output of ``producers``) instead of
    allocating a new one? Only when nothing else can hold it: no autograd, no forward hook on the
    modules that returned it and no global one (``segviz.capture`` records module outputs with
    forward hooks; its attention records keep q and k, which are never overwritten, and would
    refuse to read them if they were). Same numbers either way; on the CPU each fresh multi-MB
    buffer costs page faults on first touch, and reusing them took Swin-T at 224 from about 0.90x
    to 0.82-0.88x HuggingFace's time (``benchmarks/swin_vs_hf.py``)."""
    if torch.is_grad_enabled() and t.requires_grad:
        return False
    if any(m._forward_hooks for m in producers) or getattr(nn.modules.module, "_global_forward_hooks", None):
        return False
    return True


class SwinBlock(nn.Module):
    """One Swin Transformer block, pre-norm; consecutive blocks alternate (eq. 3):

        ẑ^l   = W-MSA(LN(z^(l-1))) + z^(l-1)        z^l   = MLP(LN(ẑ^l)) + ẑ^l
        ẑ^l+1 = SW-MSA(LN(z^l)) + z^l               z^l+1 = MLP(LN(ẑ^l+1)) + ẑ^l+1

    (each residual branch through DropPath). The attention branch: LN, zero-pad right/bottom to
    multiples of the window m, roll by -s (SW-MSA only), cut into windows, attend, merge the
    windows, roll back by +s, crop the padding. Roll and cut are one gather, and so are merge,
    roll back and crop (:class:`WindowLayout`).

    ``shifted`` says whether this is an SW-MSA block; the stage gives the layout with the window
    m and the shift s actually used (the classifier's small stages use m = min(h, w) and s = 0).
    Shapes: (B, h, w, C) -> (B, h, w, C).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, shifted: bool, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path: float = 0.0):
        super().__init__()
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, layout: WindowLayout) -> Tensor:
        """x: (B, h, w, C); ``layout``: :func:`window_layout` of (h, w) for this block's window and shift."""
        b, h, w, c = x.shape
        window = layout.window
        y = self.norm1(x)
        pad_h, pad_w = -h % window, -w % window
        if pad_h or pad_w:
            y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        windows = take_rows(y.reshape(b, -1, c), layout.take).view(-1, window * window, c)  # roll + partition
        y = self.attn(windows, layout.mask, window, layout.shift, (h, w))
        y = take_rows(y.view(b, -1, c), layout.put).view(b, h, w, c)  # reverse + roll back + crop
        y = self.drop_path(y)
        x = y.add_(x) if _may_overwrite(y, self.drop_path) else x + y  # x itself is never overwritten
        y = self.drop_path(self.mlp(self.norm2(x)))
        return y.add_(x) if _may_overwrite(y, self.drop_path, self.mlp, self.mlp.fc2) else x + y

    def extra_repr(self) -> str:
        return "SW-MSA" if self.shifted else "W-MSA"


# ----------------------------------------------------------------------------------------
# 7. Patch merging
# ----------------------------------------------------------------------------------------
class PatchMerging(nn.Module):
    """Halve the resolution, double the channels: concatenate each 2 x 2 group of neighbours
    (4C), LayerNorm, then a Linear 4C -> 2C without bias.

    The concatenation order is the official one, x0 = x[0::2, 0::2], x1 = x[1::2, 0::2],
    x2 = x[0::2, 1::2], x3 = x[1::2, 1::2] (top-left, bottom-left, top-right, bottom-right);
    it matters for loading weights. An odd side is zero-padded right/bottom first.

    Shapes: (B, C, h, w) map -> (B, ⌈h/2⌉, ⌈w/2⌉, 2C) channels last.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        b, h, w, c = x.shape
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
            h, w = h + h % 2, w + w % 2
        # (B, h/2, 2 [row parity], w/2, 2 [column parity], C) -> column parity outer, row parity
        # inner: (0,0), (1,0), (0,1), (1,1) = x0, x1, x2, x3
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)
        return self.reduction(self.norm(x))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


# ----------------------------------------------------------------------------------------
# 8. A stage and the four-stage hierarchy
# ----------------------------------------------------------------------------------------
class SwinStage(nn.Module):
    """One stage of the paper's Figure 3: PatchEmbed (stage 1) or PatchMerging (stages 2-4),
    then ``depth`` Swin blocks, W-MSA and SW-MSA alternating.

    The stage chooses the window m and shift s for the map it gets, and builds the window layouts
    (gather indices and the SW-MSA mask, :func:`window_layout`) once for all its blocks; with
    autograd off it keeps those of the last map size for the next forward:

    * ``shrink_windows=False`` (dense backbone): m = M and s = ⌊M/2⌋ whatever the map size;
    * ``shrink_windows=True`` (classifier): if min(h, w) <= M, m = min(h, w) and s = 0.

    Shapes: (B, C_in, H, W) -> (B, C, h, w); ``capture`` can record the output map as a feature.
    """

    def __init__(self, downsample: nn.Module, blocks: Sequence[SwinBlock], window_size: int,
                 shrink_windows: bool = False):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)
        self.window_size = window_size
        self.shrink_windows = shrink_windows
        self._layouts: dict[tuple, WindowLayout] = {}  # of the last map size, used while autograd is off

    def window_and_shift(self, h: int, w: int) -> tuple[int, int]:
        """(m, s) that the SW-MSA blocks of this stage use on an (h, w) map."""
        if self.shrink_windows and min(h, w) <= self.window_size:
            return min(h, w), 0
        return self.window_size, self.window_size // 2

    def layout(self, h: int, w: int, window: int, shift: int, device, dtype) -> WindowLayout:
        """:func:`window_layout`, reused across forwards while autograd is off (indices and the mask
        depend only on these arguments; at most the plain and the shifted layout of one size are kept)."""
        key = (h, w, window, shift, device, dtype)
        if torch.is_grad_enabled():
            return window_layout(*key)
        if key not in self._layouts:
            if len(self._layouts) >= 2:
                self._layouts.clear()
            self._layouts[key] = window_layout(*key)
        return self._layouts[key]

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        h, w = x.shape[1:3]
        window, shift = self.window_and_shift(h, w)
        plain = shifted = self.layout(h, w, window, 0, x.device, x.dtype)
        if shift and any(block.shifted for block in self.blocks):
            shifted = self.layout(h, w, window, shift, x.device, x.dtype)
        for block in self.blocks:
            x = block(x, shifted if block.shifted else plain)
        return x.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, shrink_windows={self.shrink_windows}"


def init_official(m: nn.Module) -> None:
    """The official init: trunc-normal(0.02) Linear weights, zero biases, LayerNorm 1 / 0
    (the patch-embedding conv keeps PyTorch's default)."""
    init_linear_and_norm(m)


def check_swin_config(owner, in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias,
                      drop_path_rate, patch_size):
    """ValueError naming the field unless the Swin config is buildable; returns (depths, num_heads)."""
    check_int(owner, "in_chans", in_chans)
    check_int(owner, "embed_dim", embed_dim)
    depths = check_int_list(owner, "depths", depths, 4)
    num_heads = check_int_list(owner, "num_heads", num_heads, 4)
    check_heads(owner, [embed_dim * 2 ** i for i in range(4)], num_heads)
    check_int(owner, "window_size", window_size)
    check_positive(owner, "mlp_ratio", mlp_ratio)
    check_hidden_width(owner, "mlp_ratio", mlp_ratio, [embed_dim])
    check_bool(owner, "qkv_bias", qkv_bias)
    check_probability(owner, "drop_path_rate", drop_path_rate)
    check_int(owner, "patch_size", patch_size)
    return depths, num_heads


class SwinTransformer(FeaturePyramid):
    """The four-stage hierarchy at strides 4, 8, 16, 32 (P = 4) with C, 2C, 4C, 8C channels.

    (B, 3, H, W) -> [(B, C, H/4, W/4), (B, 2C, H/8, W/8), (B, 4C, H/16, W/16), (B, 8C, H/32, W/32)]
    (sides rounded up). ``shrink_windows`` picks the classifier's window rule (see
    :class:`SwinStage`); :class:`SwinClassifier` and :class:`SwinBackbone` build on this.
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.2,
        patch_size: int = 4,
        shrink_windows: bool = False,
    ):
        super().__init__()
        depths, num_heads = check_swin_config(type(self).__name__, in_chans, embed_dim, depths, num_heads,
                                              window_size, mlp_ratio, qkv_bias, drop_path_rate, patch_size)
        self.in_chans, self.window_size = in_chans, window_size
        self.embed_dims = tuple(embed_dim * 2 ** i for i in range(4))
        rates = drop_path_rates(drop_path_rate, list(depths))
        stages = []
        for i, dim in enumerate(self.embed_dims):
            downsample = PatchEmbed(in_chans, dim, patch_size) if i == 0 else PatchMerging(self.embed_dims[i - 1])
            blocks = [
                SwinBlock(dim, num_heads[i], window_size, shifted=j % 2 == 1, mlp_ratio=mlp_ratio,
                          qkv_bias=qkv_bias, drop_path=rates[i][j])
                for j in range(depths[i])
            ]
            stages.append(SwinStage(downsample, blocks, window_size, shrink_windows))
        self.stages = nn.ModuleList(stages)
        self.apply(init_official)

    def forward(self, x: Tensor) -> list[Tensor]:
        check_image_batch(x, self.in_chans, type(self).__name__)
        return super().forward(x)


# ----------------------------------------------------------------------------------------
# 9. The two variants: ImageNet classifier and dense-prediction backbone
# ----------------------------------------------------------------------------------------
class SwinClassifier(SwinTransformer):
    """The ImageNet classifier: the hierarchy with the classifier's window rule, then
    LayerNorm over the last stage's tokens, global average pooling and a Linear head.

    ``forward``: (B, 3, H, W) -> class logits (B, num_classes). A classifier, not a
    segmentation model: it has no ``predict``. Trained at 224 x 224 (window 7) or 384 x 384
    (window 12); other sizes run with the same rule applied to their maps.
    """

    feature_modules = ("stages.*",)

    def __init__(
        self,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.2,
        patch_size: int = 4,
        in_chans: int = 3,
    ):
        checked = check_int("SwinClassifier", "num_classes", num_classes)
        super().__init__(in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias, drop_path_rate,
                         patch_size, shrink_windows=True)
        self.num_classes = checked
        self.norm = nn.LayerNorm(self.embed_dims[-1])
        self.head = nn.Linear(self.embed_dims[-1], num_classes)
        init_official(self.norm)
        init_official(self.head)

    def forward(self, x: Tensor) -> Tensor:
        last = super().forward(x)[-1]  # (B, 8C, h, w)
        pooled = self.norm(last.flatten(2).transpose(1, 2)).mean(dim=1)
        return self.head(pooled)


class StageNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, h, w) map (the dense backbone's per-stage norm)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SwinBackbone(SwinTransformer):
    """The dense-prediction backbone of the segmentation papers: no window shrinking, and a
    LayerNorm on each stage's output (the un-normalised map goes on to the next stage).

    (B, 3, H, W) -> four maps [(B, C·2^i, ⌈H/2^(i+2)⌉, ⌈W/2^(i+2)⌉)], each normalised.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path_rate: float = 0.2, patch_size: int = 4):
        super().__init__(in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias, drop_path_rate,
                         patch_size, shrink_windows=False)
        self.norms = nn.ModuleList(StageNorm(dim) for dim in self.embed_dims)
        self.norms.apply(init_official)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [norm(f) for norm, f in zip(self.norms, super().forward(x))]


# ----------------------------------------------------------------------------------------
# Variants, with the published numbers (Liu et al. 2021; microsoft/Swin-Transformer MODELHUB)
# ----------------------------------------------------------------------------------------
_SOURCE = ("Liu et al. 2021 (Swin Transformer), Table 1 / microsoft/Swin-Transformer MODELHUB; ImageNet-1K, "
           "exact params counted from the official configs")
CONFIGS = {
    # name: embed_dim, depths, heads, window, drop_path (official ImageNet-1K training), input side
    "swin-t": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 0.2, 224),
    "swin-s": (96, (2, 2, 18, 2), (3, 6, 12, 24), 7, 0.3, 224),
    "swin-b": (128, (2, 2, 18, 2), (4, 8, 16, 32), 7, 0.5, 224),
    "swin-b-384": (128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 0.5, 384),
    "swin-l": (192, (2, 2, 18, 2), (6, 12, 24, 48), 7, 0.2, 224),
}
# name: (exact params with the 1000-class head, or None where only the rounded figure is published;
#        params in millions as published; GMACs at the input side)
PUBLISHED_NUMBERS = {
    "swin-t": (28_288_354, 28, 4.5),
    "swin-s": (49_606_258, 50, 8.7),
    "swin-b": (87_768_224, 88, 15.4),
    "swin-b-384": (None, 88, 47.1),  # window 12: larger bias tables than swin-b's, still "88M"
    "swin-l": (196_532_476, 197, 34.5),
}
PUBLISHED = {
    name: dict(params_m=params_m, gmacs=gmacs, input_size=(CONFIGS[name][5],) * 2, num_classes=1000, source=_SOURCE,
               **({"params": params} if params else {}))
    for name, (params, params_m, gmacs) in PUBLISHED_NUMBERS.items()
}
NANO = dict(num_classes=6, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7,
            drop_path_rate=0.1)
"""A tiny Swin for CPU notebooks, with the paper's 7 x 7 windows: on a 256 px Scenes image stage 1
is a 64 x 64 map (padded to 70 x 70: 10 x 10 windows, shift 3), stage 4 an 8 x 8 map (padded to
14 x 14: 2 x 2 windows)."""


# ----------------------------------------------------------------------------------------
# Reading checkpoints written by other code bases (the timm convention)
# ----------------------------------------------------------------------------------------
# The backbone keys of five layouts are recognised (the classifier's head and norm too):
#
# * segviz: stages.{i}.downsample (PatchEmbed for i = 0, PatchMerging otherwise), stages.{i}.blocks.{j},
#   norms.{i} (dense backbone) or norm / head (classifier);
# * microsoft: the official code. Classifier: patch_embed, layers.{i}.blocks.{j}, layers.{i}.downsample
#   *at the end* of stage i (so it is our stages.{i+1}.downsample), norm, head; the segmentation backbone
#   the same under "backbone." with norm0..norm3 on the outputs. Its relative_position_index and attn_mask
#   buffers are derived from the config and dropped;
# * timm: as microsoft, but the downsample sits at the *start* of the next stage (layers.{i}.downsample is
#   our stages.{i}.downsample) and the classifier is head.fc;
# * hf4: HuggingFace files (hub checkpoints, and what save_pretrained writes): swin.embeddings.patch_embeddings.
#   projection, swin.encoder.layers.{i}.blocks.{j}.attention.self.query/key/value, attention.output.dense,
#   intermediate.dense / output.dense (the MLP), layernorm_before / layernorm_after, swin.layernorm, classifier;
#   a SwinBackbone (inside UperNet) has no "swin." and adds hidden_states_norms.stage{k};
# * hf5: the module names of transformers 5.x (model.state_dict()): attention.q_proj/k_proj/v_proj/o_proj,
#   attention.relative_position_bias.relative_position_bias_table, mlp.fc1 / fc2; SwinBackbone under "swin.".
#
# HuggingFace keeps separate query / key / value Linears where the official code has one qkv Linear whose
# outputs are [q; k; v]: they are concatenated in that order.
def _next_stage(m) -> str:
    return f"stages.{int(m[1]) + 1}.downsample."


_MICROSOFT = [
    (r"^patch_embed\.", "stages.0.downsample."),
    (r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks."),
    (r"^layers\.(\d+)\.downsample\.", _next_stage),
    (r"^norm(\d)\.", r"norms.\1."),
]
_TIMM = [
    (r"^patch_embed\.", "stages.0.downsample."),
    (r"^layers\.(\d+)\.", r"stages.\1."),
    (r"^head\.fc\.", "head."),
]
_HF_BLOCK = [
    (r"^swin\.", ""),
    (r"^embeddings\.patch_embeddings\.projection\.", "stages.0.downsample.proj."),
    (r"^embeddings\.norm\.", "stages.0.downsample.norm."),
    (r"^encoder\.layers\.(\d+)\.blocks\.", r"stages.\1.blocks."),
    (r"^encoder\.layers\.(\d+)\.downsample\.", _next_stage),
    (r"^hidden_states_norms\.stage(\d)\.", lambda m: f"norms.{int(m[1]) - 1}."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    # 4.x names
    (r"\.attention\.self\.query\.", ".attn.q."),
    (r"\.attention\.self\.key\.", ".attn.k."),
    (r"\.attention\.self\.value\.", ".attn.v."),
    (r"\.attention\.self\.relative_position_bias_table$", ".attn.relative_position_bias_table"),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    # 5.x names
    (r"\.attention\.q_proj\.", ".attn.q."),
    (r"\.attention\.k_proj\.", ".attn.k."),
    (r"\.attention\.v_proj\.", ".attn.v."),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.attention\.relative_position_bias\.relative_position_bias_table$", ".attn.relative_position_bias_table"),
]
RULES = {"segviz": [], "microsoft": _MICROSOFT, "timm": _TIMM, "hf4": _HF_BLOCK, "hf5": _HF_BLOCK}
# buffers the official code, timm and HuggingFace 4.x store although the config determines them
_DERIVED = r"(relative_position_index|attn_mask)$"


def detect_layout(keys) -> str:
    """Which code base wrote these (backbone-relative) keys: segviz, microsoft, timm, hf4 or hf5."""
    keys = list(keys)

    def has(prefix):
        return any(k.startswith(prefix) for k in keys)

    if has("stages.0.downsample."):
        return "segviz"
    if has("layers.0.downsample."):
        return "microsoft"
    if has("layers.1.downsample."):
        return "timm"
    if has("swin.encoder.layers.") or has("encoder.layers."):
        hf5 = any(".attention.q_proj." in k or ".relative_position_bias.relative_position_bias_table" in k
                  for k in keys)
        return "hf5" if hf5 else "hf4"
    sample = ", ".join(sorted(keys)[:5]) or "(no keys)"
    raise ValueError(
        "not a Swin checkpoint in a known layout (segviz, microsoft/Swin-Transformer, timm, transformers 4.x "
        f"or 5.x): no stages.0.downsample., layers.0/1.downsample. or encoder.layers. keys; first keys: {sample}"
    )


def convert_swin_keys(state_dict: dict[str, Tensor], layout: str | None = None) -> dict[str, Tensor]:
    """Swin keys (relative to the backbone) in any known layout -> ours, q/k/v joined, derived buffers
    dropped. Used by :func:`checkpoint_filter_fn` and by UperNet's for its backbone."""
    layout = detect_layout(state_dict) if layout is None else layout
    sd = {k: v for k, v in state_dict.items() if not _is_derived(k)}
    sd = rename_keys(sd, RULES[layout])
    return join_tensors(sd, r"(?P<prefix>.*\.attn\.)(?P<part>[qkv])\.(?P<kind>weight|bias)", ("q", "k", "v"), "qkv")


def _is_derived(key: str) -> bool:
    return re.search(_DERIVED, key) is not None


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """A Swin classifier state dict in any known layout -> ``model``'s layout.

    Keys that no rule understands keep their names, so the strict loader lists them. An official
    file with the classifier under "backbone." (or "model.") is read from that prefix.
    """
    sd = dict(state_dict)
    for prefix in ("backbone.", "module."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return convert_swin_keys(sd)


for _name, (_dim, _depths, _heads, _window, _dpr, _side) in CONFIGS.items():
    register(
        _name, SwinClassifier,
        dict(num_classes=1000, embed_dim=_dim, depths=_depths, num_heads=_heads, window_size=_window,
             mlp_ratio=4.0, drop_path_rate=_dpr),
        checkpoint_filter_fn,
        description=f"Swin-{_name[5:].upper()} ImageNet classifier (Liu et al. 2021), {_side}x{_side}, "
                    f"window {_window}",
        published=PUBLISHED[_name],
    )
register("swin-nano", SwinClassifier, dict(NANO), checkpoint_filter_fn,
         description="a tiny Swin classifier for CPU notebooks (window 7, 6 classes)")
