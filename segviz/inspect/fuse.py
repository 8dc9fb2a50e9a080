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

* every convolution followed by a BatchNorm (DeepLabv3/v3+ and its ResNet, the ASPP and the
  decoders' Conv-BN-ReLU units, UperNet's head, EDAFormer's fuse) -> one convolution
  (:func:`~segviz.nn.layers.fold_batch_norm`): in inference a BatchNorm is a fixed affine map
  per channel, BN(W * x + b) = s ⊙ (W * x) + t, so s goes into the weights and t becomes the
  bias; the BatchNorm's place is taken by a :class:`~segviz.nn.layers.FoldedBatchNorm`
  (the identity). It saves the BatchNorm's pass over each map (about 5 % of DeepLabv3+ R50's
  CPU time at 513x513) and no multiply-adds. Pairs are found where the architectures put them:
  consecutive children of an ``nn.Sequential``, and siblings named ``conv<k>`` / ``bn<k>``
  (``conv1`` / ``bn1`` in a ResNet block), which their forward applies one after the other;
  ``tests/test_fuse.py`` checks the fused output against the readable one for every model kind.

Models with nothing to fuse (Swin and DAT classifiers: LayerNorm only) are refused with a
``ValueError``. EDAFormer's fuse could also move to the stages' own resolutions, like
SegFormer's (0.18 of EDAFormer-T's 5.6 GMACs at 512x512); not implemented.

The result is for inference: it computes what ``model.eval()`` computes (BatchNorm with its
running statistics, no dropout, no drop-path), whatever mode ``model`` is in, and the fused
blocks refuse ``train()``.
"""
from __future__ import annotations

import copy

import re

from torch import nn

from segviz.models.segformer import AllMLPDecoder, FusedMLPDecoder
from segviz.nn.layers import FoldedBatchNorm, fold_batch_norm

# block type -> its fused twin (a class with ``from_decoder(block)``)
TRANSFORMS = {AllMLPDecoder: FusedMLPDecoder}
# which models have a transform, for the error message
SUPPORTED = ("SegFormer (its decoder), and every model with a convolution followed by a BatchNorm (DeepLabv3/v3+, "
             "ResNet, UperNet, EDAFormer, Mask2Former with a ResNet)")


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


def _conv_bn_pairs(parent: nn.Module) -> list[tuple[str, str]]:
    """(conv name, BatchNorm name) among ``parent``'s direct children: consecutive children of a
    Sequential, or siblings conv<k> / bn<k>."""
    children = dict(parent.named_children())

    def pair(conv, bn) -> bool:
        return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d
                and bn.num_features == conv.out_channels and bn.running_mean is not None)

    if isinstance(parent, nn.Sequential):
        names = list(children)
        return [(a, b) for a, b in zip(names, names[1:]) if pair(children[a], children[b])]
    pairs = []
    for name, child in children.items():
        match = re.fullmatch(r"conv(\w*)", name)
        if match and f"bn{match.group(1)}" in children and pair(child, children[f"bn{match.group(1)}"]):
            pairs.append((name, f"bn{match.group(1)}"))
    return pairs


def _fold_conv_bn(parent: nn.Module) -> int:
    """Fold, below ``parent``, every convolution-BatchNorm pair; return how many."""
    count = 0
    for conv_name, bn_name in _conv_bn_pairs(parent):
        bn = getattr(parent, bn_name)
        setattr(parent, conv_name, fold_batch_norm(getattr(parent, conv_name), bn))
        setattr(parent, bn_name, FoldedBatchNorm(bn.num_features))
        count += 1
    return count + sum(_fold_conv_bn(child) for child in parent.children())


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every block that has an exact inference
    transform replaced by its fused twin, and every convolution-BatchNorm pair folded into one
    convolution (see the module docstring). ``model`` is unchanged.

    ValueError for anything that is not a module, for a model with nothing to fuse (e.g. a Swin
    classifier) and for a model that is already fused.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"fuse_for_inference needs a torch.nn.Module, got {type(model).__name__}")
    if any(isinstance(m, (*TRANSFORMS.values(), FoldedBatchNorm)) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} is already fused for inference; fuse the readable model instead")
    if type(model) in TRANSFORMS:  # a bare decoder
        return TRANSFORMS[type(model)].from_decoder(model)
    if not any(type(m) in TRANSFORMS or _conv_bn_pairs(m) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no exact inference transform; models with one: {SUPPORTED}")
    fused = copy.deepcopy(model)
    fused.eval()
    _replace(fused)
    _fold_conv_bn(fused)
    return fused
