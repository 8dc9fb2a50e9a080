"""Attention distance: how far, in input pixels, a query looks.

Dosovitskiy et al. (ViT, ICLR 2021, Fig. 7 right) plot for every layer and head the *mean
attention distance*: the distance between a query and each key it attends to, weighted by the
attention probability, averaged over the queries (and images). Small numbers mean a local,
convolution-like head; numbers near the mean pairwise distance of the image mean a global one.
For query q at image position p_q, with probabilities a_qk over keys at positions p_k:

    d_q = Σ_k a_qk ‖p_q − p_k‖₂          d(head) = mean over images and queries of d_q

Positions are in **input pixels**: a token on an (h, w) grid covering an (H, W) image sits at
the centre of its cell, ((i + ½)·H/h, (j + ½)·W/w), so distances from stages of different
resolution, and from models with different strides, compare directly.

Every record kind is placed with its own geometry (see ``segviz/nn/recording.py``):

* :class:`~segviz.nn.recording.AttentionRecord` (global, or SegFormer/EDAFormer's reduced
  attention): queries on ``q_hw``, keys on ``k_hw``; a key of a reduced grid stands for the r×r
  patch it was pooled from and sits at that patch's centre.
* :class:`~segviz.nn.recording.WindowAttentionRecord` (Swin): each window's keys are where
  :meth:`~segviz.nn.recording.WindowAttentionRecord.window_of` puts them in the unshifted map.
  With a cyclic shift a window holds pieces from opposite borders; their true positions are far
  apart, and Swin's mask gives those pairs (almost) zero probability, so they add (almost)
  nothing. Queries in the bottom/right zero padding are not image positions and are left out;
  padding *keys* are attended (Swin does not mask them) and sit just outside the image.
* :class:`~segviz.nn.recording.SamplingRecord` (deformable attention): the query sits at its
  reference point (per level when the record has one per level), its "keys" are the sampling
  locations, weighted by the attention weights (which sum to 1 over levels × points). The
  distance per level (weight-normalised within the level) comes too.
* :class:`~segviz.nn.recording.DeformedGridRecord` (DAT): queries at the cell centres of ``q_hw``,
  keys at the deformed points of the head's offset group (``group_of``).

Records without query positions — object queries (Mask2Former's masked cross-attention and the
queries' self-attention) — have no distance; asking for one is a ``ValueError``, and
:func:`attention_distance` on a whole :class:`~segviz.inspect.capture.Recorder` skips them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from segviz.inspect.capture import Recorder
from segviz.nn.recording import (
    AttentionRecord, DeformedGridRecord, MaskedAttentionRecord, SamplingRecord, WindowAttentionRecord,
)

__all__ = ["AttentionDistance", "attention_distance", "mean_pairwise_distance"]


@dataclasses.dataclass(frozen=True)
class AttentionDistance:
    """Mean attention distance of one attention call.

    Attributes:
        layer: the module's name (or the key / position it was given under; "" for a lone record).
        kind: "attention", "window_attention", "sampling" or "deformed_grid".
        per_head: (heads,) mean distance in input pixels.
        image_size: (H, W) the positions were measured in.
        query_grid: (h, w) of the queries (for sampling records, the grid of ``q_hw``, or None).
        per_level: (heads, levels) for sampling records: the mean distance of each level's points
            (weights normalised within the level), None otherwise.
        level_weight: (heads, levels) for sampling records: the share of the attention each level
            gets (rows sum to 1), None otherwise.
    """

    layer: str
    kind: str
    per_head: np.ndarray
    image_size: tuple[int, int]
    query_grid: tuple[int, int] | None = None
    per_level: np.ndarray | None = None
    level_weight: np.ndarray | None = None

    @property
    def heads(self) -> int:
        return int(self.per_head.shape[0])

    @property
    def mean(self) -> float:
        """Mean over heads."""
        return float(self.per_head.mean())

    def __repr__(self) -> str:
        heads = ", ".join(f"{d:.1f}" for d in self.per_head)
        return f"AttentionDistance({self.layer or self.kind}: [{heads}] px over {self.heads} head(s))"


# --------------------------------------------------------------------------- geometry
def _image_size(image_size) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    try:
        h, w = image_size
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (h, w))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"image_size must be a positive int or (H, W) of positive ints, got {image_size!r}")
    return int(h), int(w)


def cell_centres(grid_hw: tuple[int, int], image_size: tuple[int, int]) -> Tensor:
    """(h·w, 2) float64 (y, x) input-pixel positions of the cells of an (h, w) grid, row-major."""
    (h, w), (big_h, big_w) = grid_hw, image_size
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) * big_h / h
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) * big_w / w
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)


def _distances(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances between the rows of a (..., n, 2) and b (..., m, 2), computed directly
    (``cdist``'s default matrix-product shortcut loses digits)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def mean_pairwise_distance(grid_hw: tuple[int, int], image_size) -> float:
    """The mean distance between two cells of a grid, drawn independently and uniformly (a cell
    with itself included): what a uniform global attention gives. About 0.52·side for a square."""
    image_size = _image_size(image_size)
    p = cell_centres(tuple(grid_hw), image_size)
    return float(_distances(p, p).mean())


# --------------------------------------------------------------------------- one record
def _check_probs(probs: Tensor, what: str) -> Tensor:
    if not probs.is_floating_point() or not torch.isfinite(probs).all():
        raise ValueError(f"{what}: probabilities must be finite floats")
    return probs.detach().to("cpu", torch.float64)


def _global(record: AttentionRecord, size) -> tuple[np.ndarray, tuple[int, int]]:
    if record.q_hw is None or record.k_hw is None:
        raise ValueError("this attention record has no grids (q_hw, k_hw): its queries are not image positions "
                         "(object queries?), so they have no attention distance")
    probs = _check_probs(record.probs, "attention")
    nq, nk = record.q_hw[0] * record.q_hw[1], record.k_hw[0] * record.k_hw[1]
    if probs.shape[-2:] != (nq, nk):
        raise ValueError(f"probs {tuple(probs.shape)} do not match q_hw {record.q_hw} and k_hw {record.k_hw}")
    d = _distances(cell_centres(record.q_hw, size), cell_centres(record.k_hw, size))  # (Nq, Nk)
    per_query = (probs * d).sum(-1)  # (B, heads, Nq)
    return per_query.mean((0, 2)).numpy(), record.q_hw


def _window(record: WindowAttentionRecord, size) -> tuple[np.ndarray, tuple[int, int]]:
    probs = _check_probs(record.probs, "window attention")  # (B, nW, heads, M², M²)
    m, s = record.window, record.shift
    (h, w), (hp, wp), (nwy, nwx) = record.feature_hw, record.padded_hw, record.windows_hw
    cell_h, cell_w = size[0] / h, size[1] / w
    positions, valid = [], []
    for wy in range(nwy):
        for wx in range(nwx):
            # a query of this (shifted) window, in unshifted coordinates; window_of gives the window's rows/cols
            rows, cols = record.window_of(((wy * m + s) % hp, (wx * m + s) % wp))
            r, c = rows.repeat_interleave(m), cols.repeat(m)  # token a = i·M + j -> (rows[i], cols[j])
            positions.append(torch.stack([(r + 0.5) * cell_h, (c + 0.5) * cell_w], -1).double())
            valid.append((r < h) & (c < w))
    pos = torch.stack(positions)  # (nW, M², 2)
    valid = torch.stack(valid)  # (nW, M²)
    d = _distances(pos, pos)  # (nW, M², M²)
    per_query = (probs * d[None, :, None]).sum(-1)  # (B, nW, heads, M²)
    keep = valid[None, :, None, :].expand_as(per_query)
    totals = torch.where(keep, per_query, torch.zeros_like(per_query)).sum((0, 1, 3))
    return (totals / keep[:, :, 0].sum()).numpy(), record.feature_hw


def _sampling(record: SamplingRecord, size):
    locs = record.locations.detach().to("cpu", torch.float64)  # (B, Lq, heads, L, P, 2), (x, y) in [0, 1]
    weights = _check_probs(record.weights, "sampling weights")  # (B, Lq, heads, L, P)
    b, lq, _, levels, _, _ = locs.shape
    ref = record.reference_points
    if ref is None:  # pixel queries without reference points: the centres of q_hw, or of every level
        if record.q_hw is not None and record.q_hw[0] * record.q_hw[1] == lq:
            grids = [record.q_hw]
        elif sum(a * c for a, c in record.level_shapes) == lq:
            grids = list(record.level_shapes)
        else:
            raise ValueError("this sampling record has no reference points and its queries are not the pixels of a "
                             "map (object queries?): its queries have no position")
        yx = torch.cat([cell_centres(g, (1, 1)) for g in grids])  # fractions
        ref = yx.flip(-1)[None].expand(b, lq, 2)
    ref = ref.detach().to("cpu", torch.float64)
    if ref.dim() == 3:
        ref = ref[:, :, None, :].expand(b, lq, levels, 2)
    if ref.shape[-1] != 2 or ref.shape[-2] != levels or ref.shape[1] != lq:
        raise ValueError(f"reference points {tuple(record.reference_points.shape)} do not match "
                         f"{lq} queries and {levels} levels")
    scale = torch.tensor([size[1], size[0]], dtype=torch.float64)  # (x, y) fractions -> pixels
    offsets = (locs - ref[:, :, None, :, None, :]) * scale
    d = offsets.norm(dim=-1)  # (B, Lq, heads, L, P)
    per_head = (weights * d).sum((-1, -2)).mean((0, 1))
    level_w = weights.sum(-1)  # (B, Lq, heads, L)
    level_d = (weights * d).sum(-1) / level_w.clamp_min(1e-12)
    return (per_head.numpy(), record.q_hw, level_d.mean((0, 1)).numpy(),
            (level_w.mean((0, 1)) / level_w.mean((0, 1)).sum(-1, keepdim=True)).numpy())


def _deformed_grid(record: DeformedGridRecord, size) -> tuple[np.ndarray, tuple[int, int]]:
    probs = _check_probs(record.probs, "deformed-grid attention")  # (B, heads, Nq, Nk)
    queries = cell_centres(record.q_hw, size)  # (Nq, 2) (y, x) pixels
    scale = torch.tensor([size[0], size[1]], dtype=torch.float64)
    points = record.points.detach().to("cpu", torch.float64).flip(-1).flatten(2, 3) * scale  # (B, groups, Nk, 2) (y, x)
    groups = torch.tensor([record.group_of(h) for h in range(record.heads)])
    d = _distances(queries[None, None], points[:, groups])  # (B, heads, Nq, Nk)
    return (probs * d).sum(-1).mean((0, 2)).numpy(), record.q_hw


def _one(record, size, layer: str) -> AttentionDistance:
    if isinstance(record, DeformedGridRecord):
        per_head, grid = _deformed_grid(record, size)
        return AttentionDistance(layer, "deformed_grid", per_head, size, grid)
    if isinstance(record, WindowAttentionRecord):
        per_head, grid = _window(record, size)
        return AttentionDistance(layer, "window_attention", per_head, size, grid)
    if isinstance(record, AttentionRecord):
        per_head, grid = _global(record, size)
        return AttentionDistance(layer, "attention", per_head, size, grid)
    if isinstance(record, SamplingRecord):
        per_head, grid, per_level, level_weight = _sampling(record, size)
        return AttentionDistance(layer, "sampling", per_head, size, grid, per_level, level_weight)
    if isinstance(record, MaskedAttentionRecord):
        raise ValueError(f"{layer or 'this record'}: masked cross-attention goes from object queries to pixels; "
                         "object queries have no position, hence no attention distance")
    raise ValueError(f"{layer or 'record'}: cannot measure an attention distance of {type(record).__name__}; give an "
                     "AttentionRecord, WindowAttentionRecord or SamplingRecord (or a Recorder, a dict or list of them)")


def _has_positions(record) -> bool:
    if isinstance(record, AttentionRecord):
        return record.q_hw is not None and record.k_hw is not None
    if isinstance(record, SamplingRecord):
        lq = record.locations.shape[1]
        return (record.reference_points is not None or (record.q_hw is not None and record.q_hw[0] * record.q_hw[1] == lq)
                or sum(a * c for a, c in record.level_shapes) == lq)
    return isinstance(record, (WindowAttentionRecord, DeformedGridRecord))


def attention_distance(records, image_size, *, layer: str = ""):
    """Mean attention distance (input pixels) per head, of one attention call or of several.

    Args:
        records: one record (``AttentionRecord``, ``WindowAttentionRecord``, ``SamplingRecord``);
            a mapping name -> record (e.g. ``rec.attention``); a sequence of records (e.g.
            ``rec.records("...attn")``, one per call; ``DeformedGridRecord`` too); or a :class:`~segviz.inspect.capture.Recorder`,
            of which every call of every module whose queries have positions is measured (object
            queries are skipped; a module called several times gives ``name``, ``name#2``, ...).
        image_size: (H, W) of the input image the records were made on (an int for a square).
        layer: the name given to a lone record's result.

    Returns:
        one :class:`AttentionDistance` for one record; for a mapping or a Recorder, a dict
        name -> :class:`AttentionDistance` in call order; for a sequence, a list.

    Raises:
        ValueError: bad ``image_size``; a record of an unknown type, or without query positions
            (masked cross-attention, object queries) when given explicitly; non-finite probabilities;
            an empty collection.
    """
    size = _image_size(image_size)
    if isinstance(records, Recorder):
        out, seen = {}, {}
        for name, _kind, record in records._calls:
            if not _has_positions(record):
                continue
            seen[name] = seen.get(name, 0) + 1
            key = name if seen[name] == 1 else f"{name}#{seen[name]}"
            out[key] = _one(record, size, key)
        if not out:
            raise ValueError("the recorder holds no attention with query positions: record attention, "
                             "window_attention or sampling (segviz.capture(model) records all kinds by default)")
        return out
    if isinstance(records, Mapping):
        if not records:
            raise ValueError("records is empty: give at least one record")
        return {str(k): _one(v, size, str(k)) for k, v in records.items()}
    if isinstance(records, Sequence) and not isinstance(records, (str, bytes)):
        if not records:
            raise ValueError("records is empty: give at least one record")
        return [_one(r, size, f"{layer}[{i}]" if layer else str(i)) for i, r in enumerate(records)]
    return _one(records, size, layer)
