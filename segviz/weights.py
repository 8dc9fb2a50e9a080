"""Reading checkpoint files safely, and loading them strictly.

Only tensor data is ever unpickled: ``.safetensors`` through safetensors, anything else
through ``torch.load(weights_only=True)``. A file that cannot be read raises a
``ValueError`` that says which file and why.
"""
from __future__ import annotations

import os

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
