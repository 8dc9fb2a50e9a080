"""Inference-time settings: knobs that change what a trained model computes without changing
its weights (ISR's key/value ratios today; a window size or an output stride later).

A module that has such knobs subclasses :class:`InferenceSetting` and reports their values
now in force with :meth:`InferenceSetting.inference_state` (a small JSON-able dict). One
function, :func:`inference_state`, collects them for a whole model, by qualified module name.

The trainer's cache key, the ISR explorer and anything else that must know "which function
is this model computing right now" read :func:`inference_state` instead of naming module
types, so a new architecture's knobs are picked up without touching them.
"""
from __future__ import annotations

from typing import Any

from torch import nn


class InferenceSetting:
    """Mixin for modules with inference-time knobs. Subclasses override :meth:`inference_state`."""

    def inference_state(self) -> dict[str, Any]:
        """The knobs in force now, e.g. ``{"ratio": 8, "pool": "avg"}``."""
        raise NotImplementedError


def inference_state(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{qualified module name: its inference_state()}`` for every module with knobs, in module order.

    Empty for a model without inference-time settings.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"inference_state needs a torch.nn.Module, got {type(model).__name__}")
    return {name: module.inference_state() for name, module in model.named_modules()
            if isinstance(module, InferenceSetting)}
