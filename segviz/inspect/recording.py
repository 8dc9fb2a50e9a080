"""The low-level half of recording: what a model block calls to hand data to a recorder.

Blocks call :func:`wants` (cheap: one global check when nothing records) and then
:func:`emit`. The user-facing half, :func:`segviz.capture`, lives in ``capture.py``.

Record kinds are extensible: :func:`register_kind` adds a name and the dataclass that
holds one record of it. Built in: ``"attention"`` and ``"feature"``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn


@dataclasses.dataclass
class AttentionRecord:
    """Attention probabilities of one call.

    probs: (B, heads, Nq, Nk); q_hw / k_hw: query and key grid sizes (h, w), so that
    row ``i`` of ``probs`` reshaped to ``k_hw`` is the map that query pixel ``i`` looks at.
    """

    probs: Tensor
    q_hw: tuple[int, int] | None = None
    k_hw: tuple[int, int] | None = None

    def map_for(self, query_yx: tuple[int, int], head: int = 0, batch: int = 0) -> Tensor:
        """The (kh, kw) attention map of the query at grid position (y, x)."""
        if self.q_hw is None or self.k_hw is None:
            raise ValueError("this record has no grid sizes; it cannot be drawn as a map")
        y, x = query_yx
        qh, qw = self.q_hw
        if not (0 <= y < qh and 0 <= x < qw):
            raise ValueError(f"query {query_yx} is outside the query grid {self.q_hw}")
        if not 0 <= head < self.probs.shape[1]:
            raise ValueError(f"head {head} out of range: this attention has {self.probs.shape[1]} heads")
        return self.probs[batch, head, y * qw + x].reshape(self.k_hw)


@dataclasses.dataclass
class FeatureRecord:
    """A stage's output feature map, (B, C, h, w)."""

    features: Tensor


_KINDS: dict[str, type] = {"attention": AttentionRecord, "feature": FeatureRecord}
_active: list[Any] = []  # Recorder objects, innermost last


def register_kind(name: str, record_type: type) -> None:
    """Add a record kind (e.g. window attention, deformable sampling)."""
    if name in _KINDS and _KINDS[name] is not record_type:
        raise ValueError(f"record kind {name!r} is already registered as {_KINDS[name].__name__}")
    _KINDS[name] = record_type


def record_kinds() -> dict[str, type]:
    return dict(_KINDS)


def is_recording() -> bool:
    return bool(_active)


def wants(module: nn.Module | None, kind: str) -> bool:
    """True when an active recorder records ``kind`` for ``module``."""
    if not _active or module is None:
        return False
    return any(rec._wants(module, kind) for rec in _active)


def emit(module: nn.Module, kind: str, **fields: Any) -> None:
    """Hand one record to every active recorder that wants it. Tensors are detached."""
    if kind not in _KINDS:
        raise ValueError(f"unknown record kind {kind!r}; registered kinds: {sorted(_KINDS)}")
    fields = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in fields.items()}
    for rec in _active:
        if rec._wants(module, kind):
            rec._store(module, kind, _KINDS[kind](**fields))
