"""Validation shared by every model: config fields in ``__init__`` and the input of ``forward``.

Each helper raises a ``ValueError`` that names the owner (the model class), the field, what
is allowed and what was given, and returns the value in a clean form (ints as ``int``, lists
as tuples). Input checks look only at type, shape and dtype: no data is read, so they cost
nothing, never synchronise a GPU and work on the meta device.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from torch import Tensor


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(owner: str, name: str, value: Any, low: int = 1) -> int:
    """An integer >= ``low`` (bools refused)."""
    if not _is_int(value) or value < low:
        raise ValueError(f"{owner}: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_int_list(owner: str, name: str, value: Any, length: int, low: int = 1, per: str = "stage") -> tuple[int, ...]:
    """``length`` integers, each >= ``low`` (one per stage, say)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != length \
            or not all(_is_int(v) for v in value):
        raise ValueError(f"{owner}: {name} needs {length} integers, one per {per}; got {value!r}")
    if min(value) < low:
        raise ValueError(f"{owner}: {name} must all be at least {low}, got {tuple(int(v) for v in value)}")
    return tuple(int(v) for v in value)


def check_positive(owner: str, name: str, value: Any) -> float:
    """A finite number > 0 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive finite number, got {value!r}")
    return float(value)


def check_probability(owner: str, name: str, value: Any) -> float:
    """A drop rate: a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{owner}: {name} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_bool(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")
    return value


def check_heads(owner: str, embed_dims: Sequence[int], num_heads: Sequence[int]) -> None:
    """Every stage's width splits evenly into its heads."""
    for i, (dim, heads) in enumerate(zip(embed_dims, num_heads)):
        if dim % heads:
            raise ValueError(
                f"{owner}: stage {i + 1} width {dim} is not divisible by its {heads} heads "
                "(each num_heads value must divide the embed_dims value of its stage)"
            )


def check_hidden_width(owner: str, name: str, ratio: float, dims: Sequence[int]) -> None:
    """A feed-forward ratio that leaves every stage at least one hidden channel."""
    for i, dim in enumerate(dims):
        if int(dim * ratio) < 1:
            raise ValueError(f"{owner}: {name}={ratio!r} gives stage {i + 1} (width {dim}) no hidden channels")


def _describe(x: Any) -> str:
    kind = type(x)
    qualname = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    shape = getattr(x, "shape", None)
    if shape is None and isinstance(x, Sequence) and not isinstance(x, (str, bytes)):
        return f"a {qualname} of length {len(x)}"
    if shape is None:
        return f"a {qualname}"
    return f"a {qualname} of shape {tuple(shape)}" + (f" and dtype {x.dtype}" if hasattr(x, "dtype") else "")


def check_image_batch(x: Any, channels: int, owner: str) -> None:
    """``x`` must be a floating (B, channels, H, W) tensor with B, H, W >= 1.

    Looks at type, shape and dtype only (no sync; fine on the meta device). The message
    says what was given, what is expected, and how to convert the usual mistakes.
    """
    expected = f"{owner} expects a float tensor (B, {channels}, H, W)"
    if not isinstance(x, Tensor):
        hint = "convert it with torch.as_tensor(x, dtype=torch.float32)"
        shape = getattr(x, "shape", None)
        if shape is not None and len(shape) == 3 and shape[-1] == channels:
            hint = "convert an (H, W, C) image with torch.as_tensor(x).permute(2, 0, 1)[None].float()"
        raise ValueError(f"{expected}; got {_describe(x)}; {hint}")
    got = f"got a tensor of shape {tuple(x.shape)}"
    if x.dim() == 3:
        hint = "an unbatched image? add the batch dimension with x[None]"
        if x.shape[-1] == channels and x.shape[0] != channels:
            hint = "an unbatched (H, W, C) image? use x.permute(2, 0, 1)[None]"
        raise ValueError(f"{expected}; {got}: {hint}")
    if x.dim() != 4:
        raise ValueError(f"{expected}; {got} ({x.dim()} dimensions instead of 4)")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{expected}; {got} and dtype {x.dtype}: convert with x.float() "
                         "(and scale as the model expects, e.g. / 255 for 8-bit images)")
    if x.shape[1] != channels:
        hint = ""
        if x.shape[-1] == channels:
            hint = ": channels last? use x.permute(0, 3, 1, 2)"
        raise ValueError(f"{expected}; {got} with {x.shape[1]} channels{hint}")
    if x.shape[0] < 1:
        raise ValueError(f"{expected}; {got}: the batch is empty (B = 0)")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{expected}; {got}: the image is empty")


__all__ = [
    "check_bool", "check_heads", "check_hidden_width", "check_image_batch", "check_int", "check_int_list",
    "check_positive", "check_probability",
]
