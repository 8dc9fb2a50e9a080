"""The one attention kernel that every attention block in segviz calls.

    Attention(Q, K, V) = softmax(Q Kᵀ / sqrt(d) + B) V            (Vaswani et al. 2017, eq. 1)

with Q: (B, heads, Nq, d), K and V: (B, heads, Nk, d) and an optional additive term
B broadcastable to (B, heads, Nq, Nk): a mask of 0 / -inf, a relative position bias, or both.

Two paths give the same numbers:
* the fast path, ``torch.nn.functional.scaled_dot_product_attention`` (fused, memory-light);
* the explicit path, which forms the (Nq, Nk) probability matrix and multiplies it with V. It
  runs when :func:`explicit_attention` is active (FLOP counting: the flop counter does not see
  inside the CPU SDPA kernel, but it does see the two explicit matmuls).

Recording takes the fast path too and hands the recorder a :class:`DeferredProbs`: the q, k
and additive term of this call, from which the record forms the probabilities when they are
first read (:func:`probabilities`, the same operations as the explicit path). So a forward pass inside ``capture`` costs about what it
costs outside, and gives exactly the same output (records are detached from autograd in
either case, see :func:`segviz.nn.recording.emit`); reading a record's ``probs`` costs one
softmax over its matrix. ``benchmarks/capture_overhead.py`` times both.

Forming probabilities on the CPU, long maps go in blocks of query rows
(:func:`_probabilities_in_row_blocks`). The probabilities are the softmax as computed, tiny
values included: Swin's -100 region mask leaves weights of about e^-100 ≈ 4e-44 (float32
denormals), and a record shows them as they are rather than as zeros.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segviz.nn import recording

_explicit_depth = 0
_CHUNK_ABOVE = 1 << 18  # query-key pairs per (image, head) from which the explicit path works in row blocks
_BLOCK = 1 << 18  # logits per row block (1 MiB of float32)


@contextlib.contextmanager
def explicit_attention():
    """Force the explicit (countable) path in :func:`attention` inside the block."""
    global _explicit_depth
    _explicit_depth += 1
    try:
        yield
    finally:
        _explicit_depth -= 1


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    bias: Tensor | None = None,
    scale: float | None = None,
    module: nn.Module | None = None,
    kind: str = "attention",
    **record_fields,
) -> Tensor:
    """softmax(q kᵀ · scale + bias) v, recorded under ``module``'s name when capturing.

    Args:
        q: (B, heads, Nq, d); k, v: (B, heads, Nk, d).
        bias: additive term broadcastable to (B, heads, Nq, Nk), or None.
        scale: defaults to 1 / sqrt(d).
        module: the calling block; its qualified name is the record's key.
        kind: the record kind (see :mod:`segviz.nn.recording`): ``"attention"`` (global or
            spatial-reduction; fields ``q_hw``, ``k_hw``), ``"window_attention"`` (``window``,
            ``feature_hw``, ``shift``), ``"masked_attention"`` (``mask``, ``k_hw``), ...
        record_fields: the record's fields other than ``probs`` (which the kernel fills in).
            They are checked against the kind's record type on every call, recording or not,
            so a wrong field name fails the same way in and outside ``segviz.capture``.

    Returns:
        (B, heads, Nq, d)
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attention expects (B, heads, N, d) tensors, got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape[-2] != v.shape[-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"attention shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}; "
            "k and v need the same length Nk, q and k the same head dim d"
        )
    recording.check_fields(kind, record_fields, computed=("probs",))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    wants_record = recording.wants(module, kind)
    if not wants_record and _explicit_depth == 0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)

    if _explicit_depth == 0:  # recording: the fast path, and probabilities formed on first read
        recording.emit(module, kind, probs=DeferredProbs(q, k, bias, scale), **record_fields)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)

    probs = _explicit_probabilities(q, k, bias, scale)
    if wants_record:
        recording.emit(module, kind, probs=probs, **record_fields)
    return probs @ v


class DeferredProbs(recording.Deferred):
    """The probabilities softmax(q kᵀ · scale + bias) of one attention call, kept as that call's
    q, k and bias until a record's ``probs`` is first read. Shape (B, heads, Nq, Nk).

    The tensors are the forward pass's own (detached, not copied); if one of them is modified in
    place before the first read, reading raises a ValueError instead of returning wrong numbers.
    """

    def __init__(self, q: Tensor, k: Tensor, bias: Tensor | None, scale: float):
        self.q, self.k = q.detach(), k.detach()
        self.bias = None if bias is None else bias.detach()
        self.scale = scale
        self.shape = torch.Size((*q.shape[:-1], k.shape[-2]))
        self._versions = self._current_versions()

    def _current_versions(self) -> tuple:
        # inference-mode tensors keep no version counter (and cannot be changed outside inference mode)
        return tuple(None if t is None or t.is_inference() else t._version for t in (self.q, self.k, self.bias))

    def materialize(self) -> Tensor:
        if self._current_versions() != self._versions:
            raise ValueError(
                "the q, k or bias tensors of this attention record were modified in place after the forward "
                "pass, so its probabilities can no longer be formed; read record.probs before modifying them"
            )
        with torch.no_grad():
            return probabilities(self.q, self.k, self.bias, self.scale)


def probabilities(q: Tensor, k: Tensor, bias: Tensor | None = None, scale: float | None = None) -> Tensor:
    """softmax(q kᵀ · scale + bias): (B, heads, Nq, Nk) for q (B, heads, Nq, d), k (B, heads, Nk, d).

    The explicit path's operations; on the CPU without autograd long maps go in row blocks."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad
                                        or (bias is not None and bias.requires_grad))
    if not grad and q.device.type == "cpu" and q.shape[-2] * k.shape[-2] >= _CHUNK_ABOVE:
        return _probabilities_in_row_blocks(q, k, bias, scale)
    return _explicit_probabilities(q, k, bias, scale)


def _explicit_probabilities(q: Tensor, k: Tensor, bias: Tensor | None, scale: float) -> Tensor:
    logits = q @ (k.transpose(-2, -1) * scale)  # scaling k: Nk·d products instead of Nq·d
    if bias is not None:
        logits += bias
    # softmax in place when no gradient is needed: one (Nq, Nk) buffer instead of two
    return logits.softmax(dim=-1) if logits.requires_grad else torch.softmax(logits, dim=-1, out=logits)


def _probabilities_in_row_blocks(q: Tensor, k: Tensor, bias: Tensor | None, scale: float) -> Tensor:
    """:func:`probabilities` for long (Nq, Nk) maps on the CPU without autograd, in blocks of query
    rows: each block's logits go straight into their rows of the result, and its softmax runs
    while the block is still in cache (unblocked, the whole matrix goes through memory twice:
    logits written, then read and written by the softmax). Every row gets the same operations
    as unblocked; the matrix product may round differently (float rounding).
    Returns (B, heads, Nq, Nk)."""
    b, heads, nq, d = q.shape
    nk = k.shape[-2]
    q3 = q.reshape(b * heads, nq, d)
    kt = (k.transpose(-2, -1) * scale).reshape(b * heads, d, nk)
    bias = None if bias is None else bias.expand(b, heads, nq, nk)  # a view: no copy of a broadcast bias
    probs = q.new_empty(b * heads, nq, nk)
    rows = max(1, _BLOCK // nk)
    for i in range(b * heads):
        for start in range(0, nq, rows):
            end = min(start + rows, nq)
            block = probs[i, start:end]
            torch.mm(q3[i, start:end], kt[i], out=block)
            if bias is not None:
                block += bias[i // heads, i % heads, start:end]
            torch.softmax(block, dim=-1, out=block)
    return probs.view(b, heads, nq, nk)


def attention_macs(batch: int, heads: int, nq: int, nk: int, head_dim: int, value_dim: int | None = None) -> int:
    """Multiply-accumulates of one attention call: q kᵀ plus probs · v."""
    value_dim = head_dim if value_dim is None else value_dim
    return batch * heads * nq * nk * (head_dim + value_dim)
