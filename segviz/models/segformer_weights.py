"""Reading SegFormer checkpoints written by other code bases into segviz's layout.

Four layouts are recognised from their keys:

* ``segviz``: our own names (``encoder.stages.0.blocks.0.attn.q.weight``), loaded as they are;
* ``nvlabs``: the official NVlabs/SegFormer (mmseg 0.x) code
  (``backbone.block1.0.attn.q.weight``, ``attn.kv``, ``attn.sr``, ``decode_head.linear_c1.proj``,
  ``decode_head.linear_fuse.conv/.bn``, ``decode_head.linear_pred``);
* ``hf4``: HuggingFace ``transformers`` files as hub checkpoints store them, and as
  ``save_pretrained`` still writes them in transformers 5.x
  (``segformer.encoder.block.0.0.attention.self.query.weight``, ``decode_head.linear_c.0.proj``,
  ``decode_head.linear_fuse``, ``decode_head.batch_norm``, ``decode_head.classifier``);
* ``hf5``: the module names of transformers 5.x, i.e. what ``model.state_dict()`` gives there
  (``segformer.stages.0.blocks.0.attention.q_proj.weight``, ``attention.sequence_reduction.*``,
  ``layernorm_before/after``, ``decode_head.linear_projections.0.proj``).

HuggingFace keeps separate query/key/value Linears where the official code (and segviz)
has ``q`` and one joint ``kv`` Linear whose first C outputs are the keys and the next C
the values: the key and value weights are concatenated in that order.

LayerNorm epsilon: transformers builds every SegFormer LayerNorm as a plain
``nn.LayerNorm`` (eps 1e-5), while the official code uses 1e-6 in blocks and stage norms.
The ``layer_norm_eps`` field of a transformers ``config.json`` (1e-6 by default) is *not*
read by its modeling code, so we do not read it either: for both HF layouts the reader
returns the config override ``layer_norm_eps=1e-5``, which reproduces the HF model exactly.

``decode_head.conv_seg.*`` in NVlabs files is an unused classifier that mmseg's base head
class always creates; it is dropped. A missing BatchNorm ``num_batches_tracked`` counter (it
has no effect at inference) is filled with 0. Everything else must match: unknown, missing
or mis-shaped keys raise a ValueError that lists them.
"""
from __future__ import annotations

import re

import torch

from segviz.weights import read_state_dict

HF_EPS = 1e-5

# (pattern, replacement) pairs applied in order to every key; groups hold stage/block indices.
_NVLABS = [
    (r"^backbone\.patch_embed(\d)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.patch_embed."),
    (r"^backbone\.block(\d)\.(\d+)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.blocks.{m[2]}."),
    (r"^backbone\.norm(\d)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.norm."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^decode_head\.linear_c(\d)\.", lambda m: f"decoder.linear_c.{int(m[1]) - 1}."),
    (r"^decode_head\.", "decoder."),
]
_HF4 = [
    (r"^segformer\.encoder\.patch_embeddings\.(\d)\.layer_norm\.", r"encoder.stages.\1.patch_embed.norm."),
    (r"^segformer\.encoder\.patch_embeddings\.(\d)\.", r"encoder.stages.\1.patch_embed."),
    (r"^segformer\.encoder\.block\.(\d)\.(\d+)\.", r"encoder.stages.\1.blocks.\2."),
    (r"^segformer\.encoder\.layer_norm\.(\d)\.", r"encoder.stages.\1.norm."),
    (r"\.attention\.self\.query\.", ".attn.q."),
    (r"\.attention\.self\.key\.", ".attn.k."),
    (r"\.attention\.self\.value\.", ".attn.v."),
    (r"\.attention\.self\.sr\.", ".attn.sr."),
    (r"\.attention\.self\.layer_norm\.", ".attn.norm."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.layer_norm_1\.", ".norm1."),
    (r"\.layer_norm_2\.", ".norm2."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
]
_HF5 = [
    (r"^segformer\.stages\.(\d)\.patch_embeddings\.layer_norm\.", r"encoder.stages.\1.patch_embed.norm."),
    (r"^segformer\.stages\.(\d)\.patch_embeddings\.", r"encoder.stages.\1.patch_embed."),
    (r"^segformer\.stages\.(\d)\.layer_norm\.", r"encoder.stages.\1.norm."),
    (r"^segformer\.stages\.", "encoder.stages."),
    (r"\.attention\.q_proj\.", ".attn.q."),
    (r"\.attention\.k_proj\.", ".attn.k."),
    (r"\.attention\.v_proj\.", ".attn.v."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attn.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attn.norm."),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^decode_head\.linear_projections\.", "decode_head.linear_c."),
]
_HF_DECODER = [
    (r"^decode_head\.linear_c\.", "decoder.linear_c."),
    (r"^decode_head\.linear_fuse\.weight$", "decoder.linear_fuse.conv.weight"),
    (r"^decode_head\.batch_norm\.", "decoder.linear_fuse.bn."),
    (r"^decode_head\.classifier\.", "decoder.linear_pred."),
]
RULES = {"segviz": [], "nvlabs": _NVLABS, "hf4": _HF4 + _HF_DECODER, "hf5": _HF5 + _HF_DECODER}
_DROPPED = {"nvlabs": re.compile(r"^decode_head\.conv_seg\.")}


def detect_layout(keys) -> str:
    """Which code base wrote a state dict with these keys (see the module docstring)."""
    keys = list(keys)
    prefixes = {
        "segviz": "encoder.stages.",
        "nvlabs": "backbone.block1.",
        "hf4": "segformer.encoder.block.",
        "hf5": "segformer.stages.",
    }
    for layout, prefix in prefixes.items():
        if any(k.startswith(prefix) for k in keys):
            return layout
    sample = ", ".join(sorted(keys)[:5]) or "(no keys)"
    raise ValueError(
        "not a SegFormer checkpoint in a known layout (segviz, NVlabs/mmseg 0.x, transformers 4.x "
        f"or 5.x); no key starts with any of {sorted(prefixes.values())}; first keys: {sample}"
    )


def _rename(key: str, rules) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def _join_kv(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate separate ``attn.k`` / ``attn.v`` tensors into our joint ``attn.kv``.

    A key without its value partner (or the reverse) is left under its own name, so the
    strict loader reports it together with the missing ``kv``."""
    out = {}
    for name, tensor in sd.items():
        m = re.fullmatch(r"(.*\.attn\.)([kv])\.(weight|bias)", name)
        if m is None:
            out[name] = tensor
            continue
        prefix, which, kind = m.groups()
        k_name, v_name = f"{prefix}k.{kind}", f"{prefix}v.{kind}"
        if k_name in sd and v_name in sd:
            out[f"{prefix}kv.{kind}"] = torch.cat([sd[k_name], sd[v_name]], dim=0)
        else:
            out[name] = tensor
    return out


def convert_state_dict(sd: dict[str, torch.Tensor], layout: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict in any known layout -> our layout (keys not understood keep their names)."""
    layout = detect_layout(sd) if layout is None else layout
    if layout not in RULES:
        raise ValueError(f"unknown layout {layout!r}; known layouts: {sorted(RULES)}")
    dropped = _DROPPED.get(layout)
    renamed = {_rename(k, RULES[layout]): v for k, v in sd.items() if dropped is None or not dropped.match(k)}
    out = _join_kv(renamed) if layout in ("hf4", "hf5") else renamed
    out.setdefault("decoder.linear_fuse.bn.num_batches_tracked", torch.tensor(0))
    return out


def read_segformer_checkpoint(path: str, config: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """The registry's reader: (config overrides, state dict in our layout) from a file.

    HuggingFace files give the override ``layer_norm_eps=1e-5`` (see the module docstring).
    """
    sd = read_state_dict(path)
    layout = detect_layout(sd)
    overrides = {"layer_norm_eps": HF_EPS} if layout in ("hf4", "hf5") else {}
    return overrides, convert_state_dict(sd, layout)
