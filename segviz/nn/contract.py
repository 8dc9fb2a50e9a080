"""The model contract every segviz architecture keeps.

* ``forward(x)`` returns what the paper's head returns (SegFormer: logits at 1/4 of the
  input; EDAFormer: at 1/8; a set-prediction model: class and mask predictions);
* ``predict(x)`` returns semantic logits (B, num_classes, H, W) at the input size;
* ``loss(outputs, target)`` may be defined by a model with its own loss (set prediction);
  without it, training uses pixel cross-entropy on ``predict``-style logits.

:class:`SegmentationModel` gives the shared parts: the input check and a ``predict`` that
upsamples dense logits bilinearly. A model whose ``forward`` returns something else
overrides ``predict``. :class:`AuxiliaryHeadModel` adds the deep-supervision pattern of
UperNet and torchvision's DeepLab (training mode returns ``(main, auxiliary)`` logits).
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


class AuxiliaryHeadModel(SegmentationModel):
    """A dense model with an auxiliary (deep-supervision) head, as mmseg's UperNet and
    torchvision's DeepLab have: in training mode ``forward`` returns ``(main, auxiliary)``
    logits, in eval mode the main logits only. Subclasses set ``aux_weight``.

        L = CE(Up(main), y) + aux_weight * CE(Up(auxiliary), y)      (label 255 ignored)
    """

    aux_weight: float

    def predict(self, x: Tensor) -> Tensor:
        """Main logits bilinearly upsampled to the input size: (B, num_classes, H, W)."""
        self.check_input(x)
        out = self(x)
        return upsample_logits(out[0] if isinstance(out, tuple) else out, x.shape[-2:])

    def loss(self, outputs: Tensor | tuple[Tensor, Tensor], target: Tensor) -> Tensor:
        """Pixel cross-entropy of the main logits (+ ``aux_weight`` x that of the auxiliary
        logits), both upsampled to the label size; label 255 is ignored (mmseg's convention)."""
        main, aux = outputs if isinstance(outputs, tuple) else (outputs, None)
        size = target.shape[-2:]
        loss = F.cross_entropy(upsample_logits(main, size), target, ignore_index=255)
        if aux is not None:
            loss = loss + self.aux_weight * F.cross_entropy(upsample_logits(aux, size), target, ignore_index=255)
        return loss
