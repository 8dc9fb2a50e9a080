"""The low-level half of recording: what a model block calls to hand data to a recorder.

Blocks call :func:`wants` (one cheap check when nothing records) and then :func:`emit`.
The one attention kernel (:func:`segviz.nn.attention`) does this for every attention; a block
calls :func:`emit` itself only for internals that are not a module's output (a module's
output is recorded by ``segviz.capture`` with a forward hook). The user-facing half,
:func:`segviz.capture`, lives in ``segviz/inspect/capture.py``; this module imports nothing
from above ``segviz.nn``.

One record type per kind, each knowing how to place itself on the input image:

==================== =========================== ===============================================
kind                 record                      what it holds
==================== =========================== ===============================================
``attention``        :class:`AttentionRecord`    global or spatial-reduction attention: probabilities
                                                 over a key grid (the query grid, or a shrunken one)
``window_attention`` :class:`WindowAttentionRecord` attention inside (shifted) windows (Swin)
``sampling``         :class:`SamplingRecord`     deformable attention: sampling locations and weights
``masked_attention`` :class:`MaskedAttentionRecord` query -> pixel attention with the mask used
``deformed_grid``    :class:`DeformedGridRecord` DAT: attention over keys sampled on a deformed grid
``feature``          :class:`FeatureRecord`      a feature map
==================== =========================== ===============================================

Every record with a ``map_for(query, head)`` returns a 2-D map on its own grid (``grid_hw``),
which covers the whole input image: cell (i, j) of an (h, w) grid stands for the image pixels
[i·H/h, (i+1)·H/h) × [j·W/w, (j+1)·W/w). That is all ``segviz.viz`` needs to draw any of them.

A record may hold a field as a :class:`Deferred` value: something computed only when first
read. The attention kernel hands over ``probs`` that way: the forward pass keeps its fast
fused path and the record keeps that call's q, k and additive term, so recording costs
little and the (Nq, Nk) matrix is formed when (and if) someone reads ``record.probs``. Code
that reads records sees plain tensors either way.

Record kinds are extensible: :func:`register_kind` adds a name and the dataclass that holds one
record of it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


def _hw(value, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (h, w), got {value!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{name} must hold two positive sizes, got {value!r}")
    return h, w


def _check_head(probs_heads: int, head: int) -> None:
    if not 0 <= head < probs_heads:
        raise ValueError(f"head {head} out of range: this attention has {probs_heads} heads (0..{probs_heads - 1})")


def query_cell(pixel_yx: tuple[int, int], image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> tuple[int, int]:
    """The cell of an (h, w) grid covering image pixel (y, x) of an (H, W) image."""
    (y, x), (big_h, big_w), (h, w) = pixel_yx, image_hw, grid_hw
    if not (0 <= y < big_h and 0 <= x < big_w):
        raise ValueError(f"query pixel {tuple(pixel_yx)} is outside the {big_h}x{big_w} image")
    return min(y * h // big_h, h - 1), min(x * w // big_w, w - 1)


# --------------------------------------------------------------------------- fields computed on first read
class Deferred:
    """A record field whose value is computed when it is first read.

    Subclasses set ``shape`` (a ``torch.Size``) and implement :meth:`materialize`. Records check
    shapes at construction without computing anything (``shape``, ``dim()``, ``reshape()``)."""

    shape: torch.Size

    def dim(self) -> int:
        return len(self.shape)

    def reshape(self, *shape) -> Deferred:
        return _ReshapedDeferred(self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)

    def materialize(self) -> Tensor:
        raise NotImplementedError


class _ReshapedDeferred(Deferred):
    def __init__(self, inner: Deferred, shape):
        self.inner = inner
        self.shape = torch.empty(inner.shape, device="meta").reshape(*shape).shape

    def materialize(self) -> Tensor:
        return self.inner.materialize().reshape(self.shape)


class _HoldsProbabilities:
    """Mixin for the records holding attention probabilities ``probs``: their number of heads, and
    fields handed over as :class:`Deferred` computed (once) when first read, plain tensors from
    then on. Call :meth:`_defer` last in ``__post_init__``."""

    _heads_axis = 1  # the axis of ``probs`` that counts the heads

    @property
    def heads(self) -> int:
        return int(self._shape_of("probs")[self._heads_axis])

    def _defer(self) -> None:
        pending = {name: value for name, value in vars(self).items() if isinstance(value, Deferred)}
        for name in pending:
            del self.__dict__[name]
        self.__dict__["_pending"] = pending

    def _shape_of(self, name: str) -> torch.Size:
        """A field's shape without computing it."""
        pending = self.__dict__.get("_pending") or {}
        return pending[name].shape if name in pending else getattr(self, name).shape

    def is_computed(self, name: str = "probs") -> bool:
        """Has field ``name`` been computed yet (False while it waits for its first read)?"""
        return name not in (self.__dict__.get("_pending") or {})

    def __getattr__(self, name: str):  # only called for attributes not found the normal way
        pending = self.__dict__.get("_pending") or {}
        if name in pending:
            value = pending[name].materialize()
            self.__dict__[name] = value
            del pending[name]
            return value
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


# --------------------------------------------------------------------------- attention over a grid
@dataclasses.dataclass
class AttentionRecord(_HoldsProbabilities):
    """Global or spatial-reduction attention of one call.

    probs: (B, heads, Nq, Nk); q_hw / k_hw: the query and key grids (h, w), so that row
    ``i`` of ``probs`` reshaped to ``k_hw`` is the map that query token ``i`` looks at. For
    SegFormer / EDAFormer the key grid is the query grid shrunk by the per-side ratio r
    (N_k = N_q / r²); for global attention ``k_hw == q_hw``.
    """

    probs: Tensor
    q_hw: tuple[int, int] | None = None
    k_hw: tuple[int, int] | None = None

    def __post_init__(self):
        self.q_hw, self.k_hw = _hw(self.q_hw, "q_hw"), _hw(self.k_hw, "k_hw")
        self._defer()

    @property
    def grid_hw(self) -> tuple[int, int] | None:
        """The grid a map from :meth:`map_for` lives on: the key grid."""
        return self.k_hw

    def query_token(self, pixel_yx: tuple[int, int], image_hw: tuple[int, int]) -> tuple[int, int]:
        """The query token (y, x) whose cell covers image pixel ``pixel_yx``."""
        self._need_grids()
        return query_cell(pixel_yx, image_hw, self.q_hw)

    def map_for(self, query_yx: tuple[int, int], head: int = 0, batch: int = 0) -> Tensor:
        """The (kh, kw) attention map of the query at grid position (y, x)."""
        self._need_grids()
        y, x = query_yx
        qh, qw = self.q_hw
        if not (0 <= y < qh and 0 <= x < qw):
            raise ValueError(f"query {tuple(query_yx)} is outside the query grid {self.q_hw}")
        _check_head(self.heads, head)
        return self.probs[batch, head, y * qw + x].reshape(self.k_hw)

    def _need_grids(self) -> None:
        if self.q_hw is None or self.k_hw is None:
            raise ValueError("this attention record has no grid sizes (q_hw, k_hw); it cannot be drawn as a map")


# --------------------------------------------------------------------------- window attention
@dataclasses.dataclass
class WindowAttentionRecord(_HoldsProbabilities):
    """Attention inside non-overlapping M×M windows, optionally cyclically shifted (Swin).

    The block pads its (h, w) map right/bottom to (h_p, w_p), multiples of M, rolls it by
    −shift on both axes (``torch.roll``), cuts it into (h_p/M)·(w_p/M) windows in row-major
    order and attends inside each window.

    probs: (B·nW, heads, M², M²) as the block computes it (or already (B, nW, heads, M², M²));
    window: M; shift: the cyclic shift s (0 for W-MSA, ⌊M/2⌋ for SW-MSA);
    feature_hw: (h, w) before padding.
    """

    probs: Tensor
    window: int
    feature_hw: tuple[int, int]
    shift: int = 0
    _heads_axis = 2  # probs: (B, nW, heads, M², M²)

    def __post_init__(self):
        self.feature_hw = _hw(self.feature_hw, "feature_hw")
        if int(self.window) < 1 or not 0 <= int(self.shift) < int(self.window):
            raise ValueError(f"window must be >= 1 and 0 <= shift < window, got window {self.window}, shift {self.shift}")
        self.window, self.shift = int(self.window), int(self.shift)
        m2, windows = self.window ** 2, self.windows_hw[0] * self.windows_hw[1]
        if self.probs.dim() == 4:
            if self.probs.shape[0] % windows:
                raise ValueError(f"window probs {tuple(self.probs.shape)}: first dim is not a multiple of {windows} windows")
            self.probs = self.probs.reshape(-1, windows, *self.probs.shape[1:])
        if self.probs.dim() != 5 or self.probs.shape[1] != windows or self.probs.shape[-2:] != (m2, m2):
            raise ValueError(
                f"window probs must be (B*{windows}, heads, {m2}, {m2}) or (B, {windows}, heads, {m2}, {m2}) "
                f"for a {self.feature_hw} map in {self.window}x{self.window} windows; got {tuple(self.probs.shape)}"
            )
        self._defer()

    @property
    def padded_hw(self) -> tuple[int, int]:
        m = self.window
        return -(-self.feature_hw[0] // m) * m, -(-self.feature_hw[1] // m) * m

    @property
    def padding(self) -> tuple[int, int]:
        """(bottom, right) zero padding added before windowing."""
        return self.padded_hw[0] - self.feature_hw[0], self.padded_hw[1] - self.feature_hw[1]

    @property
    def windows_hw(self) -> tuple[int, int]:
        return self.padded_hw[0] // self.window, self.padded_hw[1] // self.window

    @property
    def q_hw(self) -> tuple[int, int]:
        return self.feature_hw

    grid_hw = q_hw

    def query_token(self, pixel_yx, image_hw) -> tuple[int, int]:
        return query_cell(pixel_yx, image_hw, self.feature_hw)

    def window_of(self, query_yx: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Feature-map rows and columns (each (M,)) of the window the query attends in, shift undone.

        With a shift they may wrap around the padded map (the cyclic shift's wrapped regions)."""
        m, s = self.window, self.shift
        hp, wp = self.padded_hw
        ys, xs = (query_yx[0] - s) % hp, (query_yx[1] - s) % wp  # position in the shifted map
        rows = (torch.arange(m) + ys // m * m + s) % hp
        cols = (torch.arange(m) + xs // m * m + s) % wp
        return rows, cols

    def map_for(self, query_yx: tuple[int, int], head: int = 0, batch: int = 0) -> Tensor:
        """The (h, w) map of the query at feature position (y, x): its attention over its own
        window placed where those keys sit in the unshifted map, zero everywhere else."""
        y, x = query_yx
        h, w = self.feature_hw
        if not (0 <= y < h and 0 <= x < w):
            raise ValueError(f"query {tuple(query_yx)} is outside the {h}x{w} feature map")
        _check_head(self.heads, head)
        m, s = self.window, self.shift
        hp, wp = self.padded_hw
        ys, xs = (y - s) % hp, (x - s) % wp
        window = (ys // m) * self.windows_hw[1] + xs // m
        row = self.probs[batch, window, head, (ys % m) * m + xs % m].reshape(m, m)
        rows, cols = self.window_of(query_yx)
        full = row.new_zeros(hp, wp)
        full[rows[:, None], cols[None, :]] = row
        return full[:h, :w]


# --------------------------------------------------------------------------- deformable sampling
@dataclasses.dataclass
class SamplingRecord:
    """Multi-scale deformable attention (Deformable-DETR) of one call: where each query samples.

    locations: (B, Lq, heads, levels, points, 2), (x, y) in [0, 1] of each level's extent
        (the layout of Deformable-DETR and HuggingFace: x first);
    weights: (B, Lq, heads, levels, points), summing to 1 over levels × points;
    reference_points: (B, Lq, levels, 2) or (B, Lq, 2), (x, y) in [0, 1];
    level_shapes: [(h_l, w_l)] per level;
    q_hw: the query grid when the queries are pixels of a map (the pixel decoder's encoder),
        None for object queries.
    """

    locations: Tensor
    weights: Tensor
    level_shapes: Sequence[tuple[int, int]]
    reference_points: Tensor | None = None
    q_hw: tuple[int, int] | None = None

    def __post_init__(self):
        self.level_shapes = [_hw(s, "level_shapes[i]") for s in self.level_shapes]
        self.q_hw = _hw(self.q_hw, "q_hw")
        if self.locations.dim() != 6 or self.locations.shape[-1] != 2:
            raise ValueError(f"locations must be (B, Lq, heads, levels, points, 2), got {tuple(self.locations.shape)}")
        if tuple(self.weights.shape) != tuple(self.locations.shape[:-1]):
            raise ValueError(f"weights must be {tuple(self.locations.shape[:-1])} (locations without the last dim), "
                             f"got {tuple(self.weights.shape)}")
        if len(self.level_shapes) != self.locations.shape[3]:
            raise ValueError(f"{self.locations.shape[3]} levels in locations but {len(self.level_shapes)} level_shapes")

    @property
    def heads(self) -> int:
        return int(self.locations.shape[2])

    @property
    def grid_hw(self) -> tuple[int, int]:
        """The finest level's grid."""
        return max(self.level_shapes, key=lambda s: s[0] * s[1])

    def query_index(self, query) -> int:
        """A query given as an index, or as (y, x) on ``q_hw``."""
        if isinstance(query, int):
            index = query
        else:
            if self.q_hw is None:
                raise ValueError("these queries are not pixels of a map (no q_hw); give the query as an index")
            y, x = query
            if not (0 <= y < self.q_hw[0] and 0 <= x < self.q_hw[1]):
                raise ValueError(f"query {tuple(query)} is outside the query grid {self.q_hw}")
            index = y * self.q_hw[1] + x
        if not 0 <= index < self.locations.shape[1]:
            raise ValueError(f"query {index} out of range: there are {self.locations.shape[1]} queries")
        return index

    def query_token(self, pixel_yx, image_hw) -> tuple[int, int]:
        if self.q_hw is None:
            raise ValueError("these queries are not pixels of a map (no q_hw)")
        return query_cell(pixel_yx, image_hw, self.q_hw)

    def points_for(self, query, head: int = 0, batch: int = 0) -> tuple[Tensor, Tensor]:
        """(levels, points, 2) sampling locations (x, y) in [0, 1] and their (levels, points) weights."""
        _check_head(self.heads, head)
        i = self.query_index(query)
        return self.locations[batch, i, head], self.weights[batch, i, head]

    def map_for(self, query, head: int = 0, batch: int = 0) -> Tensor:
        """The query's attention as a map on the finest level's grid: each sampling point's weight
        spread bilinearly over the four cells around it (as ``grid_sample`` reads them), all
        levels together (coarser levels' locations are the same fractions of the image)."""
        locs, weights = self.points_for(query, head, batch)
        h, w = self.grid_hw
        out = torch.zeros(h * w, dtype=weights.dtype, device=weights.device)
        px = locs[..., 0].reshape(-1) * w - 0.5  # align_corners=False: pixel centres at (j + 0.5) / W
        py = locs[..., 1].reshape(-1) * h - 0.5
        wt = weights.reshape(-1)
        x0, y0 = px.floor(), py.floor()
        for dy in (0, 1):
            for dx in (0, 1):
                xi, yi = x0 + dx, y0 + dy
                share = (1 - (px - xi).abs()) * (1 - (py - yi).abs())
                inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
                index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()
                out.index_add_(0, index, torch.where(inside, wt * share, torch.zeros_like(wt)))
        return out.reshape(h, w)


# --------------------------------------------------------------------------- masked attention
@dataclasses.dataclass
class MaskedAttentionRecord(_HoldsProbabilities):
    """Masked cross-attention (Mask2Former): object queries attend to the pixels of a feature map,
    only inside the mask predicted by the previous layer.

    probs: (B, heads, Nq, Nk) over the Nk = h·w pixels of ``k_hw``;
    mask: boolean, broadcastable to probs, True where attention is *blocked* (the convention of
    ``nn.MultiheadAttention`` and Mask2Former's code).
    """

    probs: Tensor
    mask: Tensor
    k_hw: tuple[int, int]

    def __post_init__(self):
        self.k_hw = _hw(self.k_hw, "k_hw")
        if self.mask.dtype != torch.bool:
            raise ValueError(f"mask must be boolean (True = blocked), got {self.mask.dtype}")
        if self.probs.shape[-1] != self.k_hw[0] * self.k_hw[1]:
            raise ValueError(f"probs have {self.probs.shape[-1]} keys but k_hw {self.k_hw} has {self.k_hw[0] * self.k_hw[1]}")
        self._defer()

    @property
    def grid_hw(self) -> tuple[int, int]:
        return self.k_hw

    def _row(self, query: int, head: int) -> None:
        _check_head(self.heads, head)
        queries = self._shape_of("probs")[2]
        if not 0 <= int(query) < queries:
            raise ValueError(f"query {query} out of range: there are {queries} queries")

    def map_for(self, query: int, head: int = 0, batch: int = 0) -> Tensor:
        """(kh, kw) attention of object query ``query`` over the pixels."""
        self._row(query, head)
        return self.probs[batch, head, int(query)].reshape(self.k_hw)

    def mask_for(self, query: int, head: int = 0, batch: int = 0) -> Tensor:
        """(kh, kw) boolean map, True where the query was not allowed to look."""
        self._row(query, head)
        mask = self.mask.expand(self._shape_of("probs"))
        return mask[batch, head, int(query)].reshape(self.k_hw)


# --------------------------------------------------------------------------- DAT's deformed key grid
@dataclasses.dataclass
class DeformedGridRecord(_HoldsProbabilities):
    """Deformable attention of DAT (Xia et al. 2022) of one call: every query of an (h, w) map
    attends to the same Hk·Wk keys, sampled at a uniform reference grid moved by learned offsets
    (one set of offsets per offset group; the heads of a group share its points).

    probs: (B, heads, h·w, Hk·Wk); q_hw: (h, w); key_hw: (Hk, Wk);
    reference: (Hk, Wk, 2), the uniform grid, (x, y) in [0, 1] of the map's extent (cell centres);
    points: (B, groups, Hk, Wk, 2), the deformed points, (x, y) in [0, 1] (may leave [0, 1]:
    a point outside the map reads zeros).
    """

    probs: Tensor
    q_hw: tuple[int, int]
    key_hw: tuple[int, int]
    reference: Tensor
    points: Tensor

    def __post_init__(self):
        self.q_hw, self.key_hw = _hw(self.q_hw, "q_hw"), _hw(self.key_hw, "key_hw")
        nk = self.key_hw[0] * self.key_hw[1]
        if self.probs.dim() != 4 or self.probs.shape[-2:] != (self.q_hw[0] * self.q_hw[1], nk):
            raise ValueError(f"probs must be (B, heads, {self.q_hw[0] * self.q_hw[1]}, {nk}) for queries {self.q_hw} "
                             f"and keys {self.key_hw}, got {tuple(self.probs.shape)}")
        if self.points.dim() != 5 or tuple(self.points.shape[2:]) != (*self.key_hw, 2):
            raise ValueError(f"points must be (B, groups, {self.key_hw[0]}, {self.key_hw[1]}, 2), "
                             f"got {tuple(self.points.shape)}")
        if tuple(self.reference.shape) != (*self.key_hw, 2):
            raise ValueError(f"reference must be ({self.key_hw[0]}, {self.key_hw[1]}, 2), got {tuple(self.reference.shape)}")
        if self.heads % self.groups:
            raise ValueError(f"{self.heads} heads do not split into {self.groups} offset groups")
        self._defer()

    @property
    def groups(self) -> int:
        return int(self.points.shape[1])

    @property
    def grid_hw(self) -> tuple[int, int]:
        """The query map, on which :meth:`map_for` spreads the weights."""
        return self.q_hw

    def query_token(self, pixel_yx, image_hw) -> tuple[int, int]:
        return query_cell(pixel_yx, image_hw, self.q_hw)

    def group_of(self, head: int) -> int:
        _check_head(self.heads, head)
        return head // (self.heads // self.groups)

    def points_for(self, query_yx: tuple[int, int], head: int = 0, batch: int = 0) -> tuple[Tensor, Tensor]:
        """(Hk·Wk, 2) deformed points (x, y) in [0, 1] that head ``head`` reads, and the query's
        (Hk·Wk,) attention weights over them (summing to 1)."""
        y, x = query_yx
        h, w = self.q_hw
        if not (0 <= y < h and 0 <= x < w):
            raise ValueError(f"query {tuple(query_yx)} is outside the query grid {self.q_hw}")
        points = self.points[batch, self.group_of(head)].reshape(-1, 2)
        return points, self.probs[batch, head, y * w + x]

    def map_for(self, query_yx: tuple[int, int], head: int = 0, batch: int = 0) -> Tensor:
        """The query's attention as an (h, w) map: each key's weight spread bilinearly over the
        four cells around its point (as ``grid_sample`` read it)."""
        points, weights = self.points_for(query_yx, head, batch)
        one = SamplingRecord(points[None, None, None, None], weights[None, None, None, None], [self.q_hw])
        return one.map_for(0)


# --------------------------------------------------------------------------- features
@dataclasses.dataclass
class FeatureRecord:
    """A module's output: a (B, C, h, w) map, tokens, or a tuple of tensors for a multi-output
    module (an encoder's pyramid)."""

    features: Any


_KINDS: dict[str, type] = {
    "attention": AttentionRecord,
    "window_attention": WindowAttentionRecord,
    "sampling": SamplingRecord,
    "masked_attention": MaskedAttentionRecord,
    "deformed_grid": DeformedGridRecord,
    "feature": FeatureRecord,
}
ATTENTION_KINDS = ("attention", "window_attention", "masked_attention", "deformed_grid")  # records holding probabilities
_FIELDS: dict[str, tuple[frozenset, frozenset]] = {}  # kind -> (all field names, required field names)
_active: list[Any] = []  # Recorder objects, innermost last


def register_kind(name: str, record_type: type) -> None:
    """Add a record kind: a name and the dataclass holding one record of it."""
    if not dataclasses.is_dataclass(record_type):
        raise ValueError(f"a record type must be a dataclass, got {record_type!r}")
    if name in _KINDS and _KINDS[name] is not record_type:
        raise ValueError(f"record kind {name!r} is already registered as {_KINDS[name].__name__}")
    _KINDS[name] = record_type


def record_kinds() -> dict[str, type]:
    return dict(_KINDS)


def record_fields(kind: str) -> tuple[frozenset, frozenset]:
    """(all field names, required field names) of a kind's record type."""
    if kind not in _FIELDS:
        if kind not in _KINDS:
            raise ValueError(f"unknown record kind {kind!r}; registered kinds: {sorted(_KINDS)}")
        fields = dataclasses.fields(_KINDS[kind])
        required = frozenset(f.name for f in fields
                             if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        _FIELDS[kind] = (frozenset(f.name for f in fields), required)
    return _FIELDS[kind]


def check_fields(kind: str, given, computed: Sequence[str] = ()) -> None:
    """Raise ValueError unless ``given`` (field names) plus ``computed`` (those the caller fills in
    itself, e.g. the kernel's ``probs``) are exactly a valid field set of ``kind``'s record."""
    fields, required = record_fields(kind)
    given = set(given)
    unknown = given - fields
    missing = required - given - set(computed)
    if unknown or missing:
        parts = [f"unknown {sorted(unknown)}"] if unknown else []
        parts += [f"missing {sorted(missing)}"] if missing else []
        raise ValueError(f"a {kind!r} record ({_KINDS[kind].__name__}): {', '.join(parts)} field(s); "
                         f"its fields are {sorted(fields)}")


def is_recording() -> bool:
    return bool(_active)


def wants(module: nn.Module | None, kind: str) -> bool:
    """True when an active recorder records ``kind`` for ``module``."""
    if not _active or module is None:
        return False
    return any(rec._wants(module, kind) for rec in _active)


def _detached(value):
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)) and any(isinstance(v, Tensor) for v in value):
        return type(value)(_detached(v) for v in value)
    return value


def emit(module: nn.Module, kind: str, **fields: Any) -> None:
    """Hand one record to every active recorder that wants it. Tensors are detached.

    The record is built once (its type checks its fields) and shared by the recorders."""
    check_fields(kind, fields)
    record = None
    for rec in _active:
        if rec._wants(module, kind):
            if record is None:
                record = _KINDS[kind](**{k: _detached(v) for k, v in fields.items()})
            rec._store(module, kind, record)

