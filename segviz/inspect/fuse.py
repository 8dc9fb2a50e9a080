"""Exact inference transforms: the same function, less work.

    fast = segviz.fuse_for_inference(model)     # a new model, in eval mode
    fast(x)                                      # == model.eval()(x), up to float rounding

The readable models follow their papers step by step; some of those steps are linear maps
that can be merged once the weights are fixed. :func:`fuse_for_inference` returns a deep
copy in which each block that has such a rewrite is replaced by its fused twin, defined in
the model's own file next to the block it rewrites. The model passed in is left untouched
(its parameters, class and training mode).

Transforms (block -> fused block):

* SegFormer's :class:`~segviz.models.segformer.AllMLPDecoder` ->
  :class:`~segviz.models.segformer.FusedMLPDecoder`: the fuse's 1x1 convolution and its
  BatchNorm are merged into each stage's Linear, before upsampling (about half of B0's
  multiply-adds at 512). ``capture`` on the fused model still records the encoder stages
  and the fused decoder map, but no ``decoder.linear_c.*`` features (those maps are never
  formed); ``segviz.isr`` works as before (the encoder is unchanged).

Models without such a block (EDAFormer, Swin/UperNet today) are refused with a
``ValueError``. EDAFormer's decoder is attention-based, but it ends in the same kind of
fuse (Conv1x1-BN-ReLU over the concatenation of bilinearly upsampled stage maps). No Linear
precedes the upsampling there (each stage ends in attention blocks), so only the fuse
itself could move to the stages' own resolutions, with its BatchNorm folded in: at 512x512
that is 0.18 of EDAFormer-T's 5.6 GMACs (the fuse costs 0.235, split 0.059) and 2.1 of
EDAFormer-B's 31.8 (2.82 -> 0.70). Exact, but smaller; not implemented yet.

The result is for inference: it computes what ``model.eval()`` computes (BatchNorm with its
running statistics, no dropout, no drop-path), whatever mode ``model`` is in, and the fused
blocks refuse ``train()``.
"""
from __future__ import annotations

import copy

from torch import nn

from segviz.models.segformer import AllMLPDecoder, FusedMLPDecoder

# block type -> its fused twin (a class with ``from_decoder(block)``)
TRANSFORMS = {AllMLPDecoder: FusedMLPDecoder}
# which models have a transform, for the error message
SUPPORTED = "SegFormer (segformer-b0 ... b5, segformer-nano)"


def _replace(parent: nn.Module) -> int:
    """Replace, below ``parent``, every block that has a transform; return how many."""
    count = 0
    for name, child in parent.named_children():
        twin = TRANSFORMS.get(type(child))
        if twin is not None:
            setattr(parent, name, twin.from_decoder(child))
            count += 1
        else:
            count += _replace(child)
    return count


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every block that has an exact inference
    transform replaced by its fused twin (see the module docstring). ``model`` is unchanged.

    ValueError for anything that is not a module, for a model with nothing to fuse (only
    SegFormer has a transform today) and for a model that is already fused.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"fuse_for_inference needs a torch.nn.Module, got {type(model).__name__}")
    if any(isinstance(m, tuple(TRANSFORMS.values())) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} is already fused for inference; fuse the readable model instead")
    if not any(type(m) in TRANSFORMS for m in model.modules()):
        raise ValueError(
            f"{type(model).__name__} has no exact inference transform; models with one: {SUPPORTED}. "
            "EDAFormer and Swin/UperNet run as they are"
        )
    if type(model) in TRANSFORMS:  # a bare decoder
        return TRANSFORMS[type(model)].from_decoder(model)
    fused = copy.deepcopy(model)
    fused.eval()
    _replace(fused)
    return fused
