"""Official EDAFormer checkpoints (hyunwoo137/EDAFormer, mmseg layout) -> segviz's layout.

A checkpoint file holds ``{"state_dict": {...}}`` or the state dict itself. Its keys:

=============================================================  ======================================
official (mmseg)                                               segviz
=============================================================  ======================================
``backbone.patch_embed{s}.{proj,norm}.*``                      ``encoder.stages.{s-1}.patch_embed.*``
``backbone.block{s}.{i}.{norm1,norm2,attn.sr,attn.proj}.*``    ``encoder.stages.{s-1}.blocks.{i}.*``
``backbone.block{s}.{i}.mlp.{fc1,fc2}.*``                      ``encoder.stages.{s-1}.blocks.{i}.mlp.*``
``backbone.block{s}.{i}.mlp.dwconv.dwconv.*``                  ``encoder.stages.{s-1}.blocks.{i}.mlp.dwconv.*``
``backbone.norm{s}.*``                                         ``encoder.stages.{s-1}.norm.*``
``decode_head.attn4 / attn44 / attn444.*``                     ``decoder.stage4.blocks.{0,1,2}.*``
``decode_head.attn3 / attn33.*``, ``decode_head.attn2.*``      ``decoder.stage3.blocks.*``, ``decoder.stage2.blocks.*``
``decode_head.linear_fuse.{conv,bn}.*``                        ``decoder.fuse.{conv,bn}.*``
``decode_head.linear_pred.*``                                  ``decoder.classifier.*``
``decode_head.conv_seg.*``                                     (unused by the official head; ignored)
=============================================================  ======================================

(The official head names its j-th block on stage s by repeating the digit: attn4, attn44, ...)
"""
from __future__ import annotations

import re

import torch

from segviz.weights import read_state_dict

_IGNORED = "decode_head.conv_seg."
_OPTIONAL = "num_batches_tracked"  # BatchNorm counters: absent from some checkpoints, unused at inference


def to_official(key: str) -> str:
    """A segviz EDAFormer state-dict key in the official layout."""
    if m := re.fullmatch(r"encoder\.stages\.(\d)\.patch_embed\.(.+)", key):
        return f"backbone.patch_embed{int(m[1]) + 1}.{m[2]}"
    if m := re.fullmatch(r"encoder\.stages\.(\d)\.blocks\.(\d+)\.(.+)", key):
        return f"backbone.block{int(m[1]) + 1}.{m[2]}.{_official_dwconv(m[3])}"
    if m := re.fullmatch(r"encoder\.stages\.(\d)\.norm\.(.+)", key):
        return f"backbone.norm{int(m[1]) + 1}.{m[2]}"
    if m := re.fullmatch(r"decoder\.stage(\d)\.blocks\.(\d+)\.(.+)", key):
        return f"decode_head.attn{m[1] * (int(m[2]) + 1)}.{_official_dwconv(m[3])}"
    if m := re.fullmatch(r"decoder\.fuse\.(.+)", key):
        return f"decode_head.linear_fuse.{m[1]}"
    if m := re.fullmatch(r"decoder\.classifier\.(.+)", key):
        return f"decode_head.linear_pred.{m[1]}"
    raise ValueError(f"not an EDAFormer key: {key!r}")


def _official_dwconv(rest: str) -> str:
    return "mlp.dwconv.dwconv." + rest[len("mlp.dwconv."):] if rest.startswith("mlp.dwconv.") else rest


def read_official_checkpoint(path: str, config: dict) -> tuple[dict, dict]:
    """The registry's reader: (config overrides, state dict in segviz's layout).

    Raises ValueError listing every missing and unexpected key (in the official names), or
    when the classifier's size differs from ``num_classes``.
    """
    from segviz.models.edaformer import EDAFormer

    raw = read_state_dict(path)
    with torch.device("meta"):
        ours = EDAFormer(**config).state_dict()
    expected = {to_official(k): k for k in ours}
    given = {k: v for k, v in raw.items() if not k.startswith(_IGNORED)}
    missing = sorted(k for k in expected if k not in given and not k.endswith(_OPTIONAL))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        lines = [f"{path} is not an official EDAFormer checkpoint for this configuration:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        raise ValueError("\n".join(lines))
    classes = given["decode_head.linear_pred.weight"].shape[0]
    if classes != config["num_classes"]:
        raise ValueError(
            f"{path} has a {classes}-class classifier but the model is built for "
            f"{config['num_classes']} classes; pass num_classes={classes}"
        )
    state = {expected[k]: v for k, v in given.items()}
    for k, name in expected.items():
        if k not in given:  # only BatchNorm counters can be missing here
            state[name] = torch.zeros((), dtype=torch.long)
    return {}, state
