"""Multi-scale deformable attention (Zhu et al., Deformable DETR, ICLR 2021, eq. 3).

Ordinary attention lets every query look at every key. Deformable attention lets each query
look at only a few points, K per head and per level, placed around a *reference point* p_q by
offsets that the query itself predicts:

    MSDeformAttn(z_q, p̂_q, {x^l}) = Σ_m W_m [ Σ_l Σ_k A_mlqk · W'_m x^l(φ_l(p̂_q) + Δp_mlqk) ]

m: head, l: level (L feature maps of different strides), k: sampling point; p̂_q ∈ [0, 1]²
is the reference point in normalised image coordinates, φ_l maps it onto level l, Δp_mlqk
is an offset in pixels of level l, A_mlqk ≥ 0 with Σ_l Σ_k A_mlqk = 1 (one softmax over the
L·K points of a head), W'_m the value projection of head m and W_m the output projection.
x^l(p) reads level l at a fractional position with bilinear interpolation.

The cost no longer grows with the number of keys: N_q · M · L · K samples, instead of N_q · N_k
dot products. Single-scale deformable attention is the case L = 1.

Two parts, in the layout of Deformable DETR's code and HuggingFace's:

* :func:`ms_deform_attn` — the sampling and weighted sum, given the locations and weights
  (``torch.nn.functional.grid_sample``: bilinear, zero outside, ``align_corners=False``);
* :class:`MSDeformAttn` — the module: predicts the offsets and weights from the queries,
  projects the values, calls :func:`ms_deform_attn`, projects the output, and records where
  every query sampled (a :class:`~segviz.nn.recording.SamplingRecord`) when
  ``segviz.capture`` asks for it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segviz.nn import recording
from segviz.nn.checks import check_int


def ms_deform_attn(value: Tensor, spatial_shapes: Sequence[tuple[int, int]], sampling_locations: Tensor,
                   attention_weights: Tensor) -> Tensor:
    """Σ_l Σ_k A_lqk · x^l(location_lqk) for every head, bilinear sampling via ``grid_sample``.

    Args:
        value: (B, S, heads, d), the levels' pixels flattened row-major and concatenated,
            S = Σ_l h_l · w_l.
        spatial_shapes: [(h_l, w_l)] per level (a list, or an (L, 2) tensor).
        sampling_locations: (B, Lq, heads, L, K, 2), (x, y) in [0, 1] of each level's extent:
            0 is the left/top edge of the map, 1 the right/bottom edge, so pixel j's centre
            is (j + 0.5) / w. ``grid_sample`` wants [-1, 1], hence 2·loc - 1.
        attention_weights: (B, Lq, heads, L, K).

    Returns:
        (B, Lq, heads·d), the heads concatenated.
    """
    b, s, heads, d = value.shape
    _, lq, _, levels, points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    if len(shapes) != levels or sum(h * w for h, w in shapes) != s:
        raise ValueError(f"ms_deform_attn: {levels} levels of sampling locations and value of length {s}, "
                         f"but spatial_shapes {shapes} (Σ h·w = {sum(h * w for h, w in shapes)})")
    grids = 2 * sampling_locations - 1
    # (B, Lq, heads, L, K) -> (B·heads, 1, Lq, L, K): broadcasts over the d channels of each head
    weights = attention_weights.transpose(1, 2).reshape(b * heads, 1, lq, levels, points)
    out = None
    for level, (value_l, (h, w)) in enumerate(zip(value.split([h * w for h, w in shapes], dim=1), shapes)):
        # (B, h·w, heads, d) -> (B·heads, d, h, w)
        value_l = value_l.permute(0, 2, 3, 1).reshape(b * heads, d, h, w)
        # (B, Lq, heads, K, 2) -> (B·heads, Lq, K, 2)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled = F.grid_sample(value_l, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        term = (sampled * weights[..., level, :]).sum(-1)  # (B·heads, d, Lq)
        out = term if out is None else out + term
    return out.view(b, heads * d, lq).transpose(1, 2)


def reference_points(spatial_shapes: Sequence[tuple[int, int]], device=None, dtype=torch.float32) -> Tensor:
    """The pixel centres of every level as reference points: (Σ h_l·w_l, 2), (x, y) in [0, 1].

    Pixel (i, j) of an (h, w) map sits at ((j + 0.5) / w, (i + 0.5) / h), the same place
    on the image for every level (``align_corners=False``), so a query of one level samples
    the other levels around the same image point."""
    points = []
    for h, w in spatial_shapes:
        y = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        points.append(torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=-1))
    return torch.cat(points, dim=0)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (module docstring, eq. 3 of Deformable DETR).

    From each query z_q (with its positional embedding added):

        Δp = sampling_offsets(z_q)          (heads, L, K, 2) offsets in pixels of each level
        A  = softmax_{L·K}(attention_weights(z_q))     (heads, L, K)
        locations = p̂_q + Δp / (w_l, h_l)              (x, y) in [0, 1]
        out = output_proj(ms_deform_attn(value_proj(x), locations, A))

    Initialisation as Deformable DETR's code: the offset weights are zero and their bias puts
    the K points of head m on a ray in direction θ_m = 2πm / heads, point k at (k + 1) times a
    unit step (the direction scaled so its larger coordinate is ±1), the same on every level —
    so at initialisation the heads look in ``heads`` directions at distances 1 .. K pixels;
    the attention-weight projection is zero, so every point starts with weight 1 / (L·K);
    xavier-uniform value and output projections with zero bias.

    Shapes: query (B, Lq, C), reference points (B or 1, Lq, L, 2) or (B or 1, Lq, 2),
    value input (B, S, C) with S = Σ h_l·w_l -> (B, Lq, C).
    """

    def __init__(self, dim: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4):
        super().__init__()
        owner = type(self).__name__
        self.dim = check_int(owner, "dim", dim)
        self.num_heads = check_int(owner, "num_heads", num_heads)
        self.num_levels = check_int(owner, "num_levels", num_levels)
        self.num_points = check_int(owner, "num_points", num_points)
        if dim % num_heads:
            raise ValueError(f"{owner}: dim {dim} is not divisible by num_heads {num_heads}")
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation (see the class docstring)."""
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(heads, dtype=torch.float32) * (2 * math.pi / heads)
        direction = torch.stack((theta.cos(), theta.sin()), dim=-1)
        direction = direction / direction.abs().max(dim=-1, keepdim=True).values  # on the square of side 2
        distance = torch.arange(1, points + 1, dtype=torch.float32)
        grid = direction[:, None, None, :] * distance[None, None, :, None]  # (heads, 1, K, 2)
        self.sampling_offsets.bias.copy_(grid.expand(heads, levels, points, 2).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: Tensor, reference_points: Tensor, value: Tensor,
                spatial_shapes: Sequence[tuple[int, int]], query_pos: Tensor | None = None,
                padding_mask: Tensor | None = None, q_hw: tuple[int, int] | None = None) -> Tensor:
        """query (B, Lq, C), reference_points (B|1, Lq, L, 2) or (B|1, Lq, 2) in [0, 1], value
        (B, S, C), spatial_shapes [(h_l, w_l)]; query_pos (B|1, Lq, C) is added to the query
        (not to the value); padding_mask (B, S), True where a value pixel is padding (zeroed);
        q_hw: the query grid when the queries are the pixels of one map (for the record)."""
        b, lq, c = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        shapes = [(int(h), int(w)) for h, w in spatial_shapes]
        if len(shapes) != levels:
            raise ValueError(f"{type(self).__name__} was built for {levels} levels, got {len(shapes)} spatial shapes")
        if query_pos is not None:
            query = query + query_pos
        v = self.value_proj(value)
        if padding_mask is not None:
            v = v.masked_fill(padding_mask[..., None], 0.0)
        v = v.view(b, value.shape[1], heads, c // heads)
        offsets = self.sampling_offsets(query).view(b, lq, heads, levels, points, 2)
        weights = self.attention_weights(query).view(b, lq, heads, levels * points).softmax(-1)
        weights = weights.view(b, lq, heads, levels, points)
        # offsets are in pixels of each level: divide by (w_l, h_l) to get fractions of its extent
        size = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
        ref = reference_points if reference_points.dim() == 4 else reference_points[:, :, None, :]
        locations = ref[:, :, None, :, None, :] + offsets / size[None, None, None, :, None, :]
        if recording.wants(self, "sampling"):
            recording.emit(self, "sampling", locations=locations, weights=weights, level_shapes=shapes,
                           reference_points=reference_points.expand(b, *reference_points.shape[1:]), q_hw=q_hw)
        return self.output_proj(ms_deform_attn(v, shapes, locations, weights))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.num_heads}, levels={self.num_levels}, points={self.num_points}"
