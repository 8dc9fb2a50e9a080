"""Spatial-reduction attention: the hook that inference spatial reduction (ISR) turns.

SegFormer's efficient self-attention and EDAFormer's embedding-free attention both take
their keys and values from the feature map shrunk by a ratio ``r`` per side, so a stage
with N = h·w query tokens attends to only N / r² key tokens:

    cost  O(N²)  ->  O(N² / r²)

Note the two numbers: ``r`` reduces each *side*; the sequence shrinks by r². (The
SegFormer paper's "reduction ratio R" is the sequence factor, R = r².)

Every such module subclasses :class:`SpatialReductionAttention`. It knows

* ``train_ratio``: the per-side ratio the weights were trained with;
* ``inference_ratio``: a larger per-side ratio set by :func:`segviz.isr` for inference
  only (``None``: use the training ratio);
* ``isr_role``: ``(group, stage)``, e.g. ``("encoder", 1)``, set by the model so that
  ``segviz.isr`` can address stages by number;
* ``isr_pool``: ``"avg"`` (the EDAFormer paper's choice) or ``"max"``.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from segviz.nn.settings import InferenceSetting

POOLS = ("avg", "max")


class SpatialReductionAttention(InferenceSetting, nn.Module):
    def __init__(self, train_ratio: int):
        super().__init__()
        if not isinstance(train_ratio, int) or train_ratio < 1:
            raise ValueError(f"the training reduction ratio must be a positive integer, got {train_ratio!r}")
        self.train_ratio = train_ratio
        self.inference_ratio: int | None = None
        self.isr_role: tuple[str, int] | None = None
        self.isr_pool = "avg"

    def inference_state(self) -> dict:
        """The per-side ratio and the pooling in force (see :mod:`segviz.nn.settings`)."""
        return {"ratio": self.ratio, "pool": self.isr_pool}

    @property
    def ratio(self) -> int:
        """The per-side key/value reduction in force now."""
        return self.train_ratio if self.inference_ratio is None else self.inference_ratio

    def isr_check(self, ratio: int) -> None:
        """Raise ValueError if ``ratio`` cannot be used by this module on any input.

        Subclasses add constraints (SegFormer: a multiple of the learned conv's stride).
        """
        if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 1:
            raise ValueError(f"{self._where()}: reduction ratios are positive integers, got {ratio!r}")

    def check_map(self, h: int, w: int) -> None:
        """Raise ValueError when the ratio in force is larger than the (h, w) feature map."""
        if self.ratio > min(h, w):
            raise ValueError(
                f"{self._where()}: reduction ratio {self.ratio} is larger than the feature map "
                f"{h}x{w}; allowed ratios here are 1..{min(h, w)}"
            )

    def pool(self, x: Tensor, factor: int) -> Tensor:
        """Shrink a (B, C, h, w) map by ``factor`` per side (kernel = stride = factor)."""
        if factor == 1:
            return x
        if self.isr_pool == "avg":
            return F.avg_pool2d(x, factor, factor)
        return F.max_pool2d(x, factor, factor)

    def _where(self) -> str:
        if self.isr_role is None:
            return type(self).__name__
        group, stage = self.isr_role
        return f"{group} stage {stage}"
