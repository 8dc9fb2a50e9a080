"""The model contract every segviz architecture keeps.

* ``forward(x)`` returns what the paper's head returns (SegFormer: logits at 1/4 of the
  input; EDAFormer: at 1/8; a set-prediction model: class and mask predictions);
* ``predict(x)`` returns semantic logits (B, num_classes, H, W) at the input size;
* ``loss(outputs, target)`` may be defined by a model with its own loss (set prediction);
  without it, training uses pixel cross-entropy on ``predict``-style logits.

:class:`SegmentationModel` gives the shared parts: the input check and a ``predict`` that
upsamples dense logits bilinearly. A model whose ``forward`` returns something else
overrides ``predict``.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from segviz.nn.checks import check_image_batch


def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of (B, K, h, w) logits to (B, K, *size) (``align_corners=False``)."""
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


class SegmentationModel(nn.Module):
    """Base of the segviz models. Subclasses set ``in_chans`` and ``num_classes`` in
    ``__init__`` and call :meth:`check_input` first thing in ``forward``."""

    in_chans: int
    num_classes: int

    def check_input(self, x: Tensor) -> None:
        """ValueError unless ``x`` is a float (B, in_chans, H, W) tensor with B >= 1 (no sync)."""
        check_image_batch(x, self.in_chans, type(self).__name__)

    def predict(self, x: Tensor) -> Tensor:
        """Semantic logits at the input resolution: (B, in_chans, H, W) -> (B, num_classes, H, W)."""
        self.check_input(x)
        return upsample_logits(self(x), x.shape[-2:])
