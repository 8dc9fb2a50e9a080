"""Reading checkpoint files safely, converting foreign layouts, and loading strictly.

Only tensor data is ever unpickled: ``.safetensors`` through safetensors, anything else
through ``torch.load(weights_only=True)``. A file that cannot be read raises a
``ValueError`` that says which file and why.

Foreign layouts (the official code's names, HuggingFace's) are converted by each model
file's ``checkpoint_filter_fn(state_dict, model) -> state_dict`` (the timm convention),
built from the helpers here:

* :func:`rename_keys`: a rule table of ``(regex, replacement)`` pairs applied in order;
* :func:`join_tensors`: separate q/k/v (or k/v) tensors concatenated into one joint Linear;
* :func:`drop_prefixes`: keys the model does not use (an unused classifier, say);
* :func:`fill_num_batches_tracked`: BatchNorm counters some files leave out.

:func:`segviz.create_model` with ``weights=PATH`` reads the file with
:func:`read_state_dict`, asks the model file's optional ``checkpoint_config`` for config
overrides, builds the model, runs its ``checkpoint_filter_fn`` and loads the result with
:func:`load_state_dict_strict`.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat ``{key: tensor}`` dict from a checkpoint file.

    Accepts safetensors files, and torch files holding a state dict or a dict that wraps
    one under ``"state_dict"`` or ``"model"`` (mmseg / timm style).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every reader error becomes one clear message
        raise ValueError(f"could not read checkpoint {path}: {type(err).__name__}: {err}") from err
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            if wrapper in obj and isinstance(obj[wrapper], dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {path} does not hold a state dict of tensors")
    return obj


def load_state_dict_strict(model: nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """``model.load_state_dict`` that lists every missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if own[k].shape != state_dict[k].shape
    )
    if missing or unexpected or shapes:
        parts = [f"{source} does not fit {type(model).__name__}:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if keys:
                parts.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
        raise ValueError("\n".join(parts))
    model.load_state_dict(state_dict, strict=True)


Rule = tuple[str, str | Callable[[re.Match], str]]  # (pattern, replacement or function of the match)


def rename_keys(state_dict: dict[str, torch.Tensor], rules: Sequence[Rule]) -> dict[str, torch.Tensor]:
    """Apply every ``(pattern, replacement)`` rule, in order, to every key (``re.sub``).

    A replacement may be a string with group references or a function of the match (for
    index shifts such as ``block1`` -> ``stages.0``). Keys no rule matches keep their name.
    """
    out = {}
    for key, tensor in state_dict.items():
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        if new in out:
            raise ValueError(f"two checkpoint keys map to {new!r} (one of them is {key!r})")
        out[new] = tensor
    return out


def join_tensors(state_dict: dict[str, torch.Tensor], pattern: str, parts: Sequence[str],
                 joint: str) -> dict[str, torch.Tensor]:
    """Concatenate separate projections into one joint tensor along dim 0.

    ``pattern`` is a regex with the groups ``prefix``, ``part`` and ``kind`` matching keys
    such as ``...attn.k.weight``; ``parts`` are the part names in the joint order (e.g.
    ``("k", "v")`` or ``("q", "k", "v")``); the result is stored as
    ``{prefix}{joint}.{kind}``. A part without all its partners is left under its own
    name, so the strict loader reports it together with the missing joint key.
    """
    regex = re.compile(pattern)
    out = {}
    for name, tensor in state_dict.items():
        m = regex.fullmatch(name)
        if m is None or m["part"] not in parts:
            out[name] = tensor
            continue
        names = [name[: m.start("part")] + p + name[m.end("part"):] for p in parts]
        if not all(n in state_dict for n in names):
            out[name] = tensor
        elif m["part"] == parts[0]:
            out[f"{m['prefix']}{joint}.{m['kind']}"] = torch.cat([state_dict[n] for n in names], dim=0)
    return out


def drop_prefixes(state_dict: dict[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
    """The state dict without the keys that start with any of ``prefixes``."""
    prefixes = tuple(prefixes)
    return {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}


def fill_num_batches_tracked(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Add a zero BatchNorm ``num_batches_tracked`` counter for each one ``model`` has and the
    file lacks (the counter has no effect at inference, and some files leave it out)."""
    out = dict(state_dict)
    for key in model.state_dict(keep_vars=True):
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = torch.zeros((), dtype=torch.long)
    return out
