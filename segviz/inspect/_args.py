"""Checking user arguments of the inspection tools: shapes, ratios, depths, devices.

One small parser for all of them, so that ``flops``, ``summary``, ``isr`` and ``feature_sizes``
refuse the same things with the same kind of message:

* a *sequence of integers* may be a list, a tuple, a ``torch.Size``, a range, or a 1-D
  numpy array / tensor of an integer dtype; its items may be Python ints, numpy integers or
  one-element integer tensors;
* refused: floats (also 3.0: a size is an integer), bools, strings, None, nested sequences,
  and values below the allowed minimum.
"""
from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch

__all__ = ["as_device", "as_int", "as_int_tuple", "int_or_none", "items_or_none", "kind", "plain"]


def int_or_none(value: Any) -> int | None:
    """``value`` as a Python int when it is an integer (int, numpy integer, 0-d integer
    tensor), else None. Bools (Python, numpy or tensor) are not integers here."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, torch.Tensor) and (value.dtype == torch.bool or value.dim() != 0):
        return None
    if isinstance(value, np.ndarray):  # not an integer, even with one item
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def items_or_none(value: Any) -> list | None:
    """The items of a flat sequence (list, tuple, torch.Size, range, 1-D array or tensor), else None.

    Strings, bytes, dicts, sets, scalars and arrays / tensors that are not 1-D are not sequences here.
    """
    if isinstance(value, (str, bytes, dict, set, frozenset)) or value is None:
        return None
    if isinstance(value, torch.Tensor):
        return list(value) if value.dim() == 1 else None
    if isinstance(value, np.ndarray):
        return list(value) if value.ndim == 1 else None
    if isinstance(value, (list, tuple, range)):
        return list(value)
    return None


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, torch.Size) else repr(tuple(value))


def plain(item: Any) -> Any:
    """A numpy scalar or 0-d tensor as the Python number it holds (for messages)."""
    if isinstance(item, np.generic) or (isinstance(item, torch.Tensor) and item.dim() == 0):
        return item.item()
    return item


def kind(value: Any) -> str:
    """What ``value`` is, in words for a message: "None", "a str", "an int", "a 2-D array"."""
    if value is None:
        return "None"
    if isinstance(value, (np.ndarray, torch.Tensor)):
        what = f"{value.ndim}-D {'array' if isinstance(value, np.ndarray) else 'tensor'}"
    else:
        what = type(value).__name__
    return ("an " if what[0] in "aeiou" else "a ") + what


def as_int_tuple(value: Any, name: str, length: int | None = None, low: int = 1, expected: str | None = None) -> tuple[int, ...]:
    """``value`` as a tuple of Python ints, each ``>= low``, of ``length`` items when given.

    Raises ValueError ``"{name} must be {expected}, got {value!r} ({reason})"``, where
    ``expected`` defaults to e.g. "a sequence of 4 integers >= 1".
    """
    if expected is None:
        count = f"{length} " if length is not None else ""
        expected = f"a sequence of {count}integers >= {low}"

    def refuse(reason: str) -> ValueError:
        return ValueError(f"{name} must be {expected}, got {_show(value)} ({reason})")

    items = items_or_none(value)
    if items is None:
        raise refuse("not a sequence" if value is None else f"{kind(value)}, not a flat sequence of integers")
    if length is not None and len(items) != length:
        raise refuse(f"{len(items)} value{'' if len(items) == 1 else 's'}, not {length}")
    numbers = []
    for item in items:
        number = int_or_none(item)
        if number is None:
            raise refuse(f"{plain(item)!r} is not an integer")
        if number < low:
            raise refuse(f"{number} is below {low}")
        numbers.append(number)
    return tuple(numbers)


def as_int(value: Any, name: str, low: int = 1) -> int:
    """``value`` as a Python int ``>= low``; ValueError naming ``name`` otherwise (bools refused)."""
    number = int_or_none(value)
    if number is None:
        shown = f"{value!r}" if value is None else f"{value!r} ({kind(value)})"
        raise ValueError(f"{name} must be an integer >= {low}, got {shown}")
    if number < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {number}")
    return number


def as_device(device: Any) -> torch.device | None:
    """None, or ``device`` as a :class:`torch.device` that exists on this machine.

    Raises ValueError for anything else: a misspelt name ("gpu"), a number that is not a device,
    or "cuda" / "cuda:N" when there is no such GPU here.
    """
    if device is None:
        return None
    allowed = "a torch.device or a string such as 'cpu', 'cuda', 'cuda:0' or 'meta'"
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise ValueError(f"device must be {allowed}, got {device!r} ({kind(device)})")
    try:
        result = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"device must be {allowed}, got {device!r} ({err})") from None
    if result.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r} is not available: this machine has no CUDA GPU; use 'cpu' or 'meta'")
        if result.index is not None and result.index >= count:
            raise ValueError(f"device {device!r} is not available: this machine has {count} CUDA GPU(s), "
                             f"cuda:0..cuda:{count - 1}")
    return result
