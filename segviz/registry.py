"""Named model variants: ``create_model("segformer-b0")``, ``list_models()``, ``get_spec(name)``.

Each entry (a :class:`ModelSpec`) holds

* a builder (a model class or function taking keyword config) and its config (the
  published one, or a tiny ``-nano`` one sized for CPU notebooks);
* how to read checkpoints (the timm convention): ``checkpoint_filter_fn(state_dict, model)``
  turns a state dict in any layout the architecture accepts into the model's own, and the
  optional ``checkpoint_config(state_dict)`` gives config overrides a layout needs (HF
  SegFormer files: ``layer_norm_eps=1e-5``);
* the published numbers (``published``: params, GMACs, input size, source, ...), so that
  tests and notebooks read them from one place.

Model files register their variants at import; ``segviz.models`` imports them all.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segviz import zoo
from segviz.weights import load_state_dict_strict, read_state_dict

FilterFn = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
ConfigFn = Callable[[dict[str, torch.Tensor]], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One registered variant.

    Attributes:
        name: the registry name, e.g. ``"segformer-b0"``.
        builder: called with the config as keywords.
        config: the variant's config.
        checkpoint_filter_fn: ``(state_dict, model) -> state_dict`` in the model's layout,
            or None when the architecture reads no checkpoints.
        checkpoint_config: ``state_dict -> config overrides`` that a layout needs, or None.
        description: one line.
        published: the paper's / official code's figures (read-only mapping), e.g.
            ``{"params_m": 3.8, "gmacs": 8.4, "input_size": (512, 512), "source": "..."}``;
            empty for variants with no published counterpart (``-nano``).
    """

    name: str
    builder: Callable[..., nn.Module]
    config: dict[str, Any]
    checkpoint_filter_fn: FilterFn | None = None
    checkpoint_config: ConfigFn | None = None
    description: str = ""
    published: Mapping[str, Any] = dataclasses.field(default_factory=dict)


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, builder, config: dict, checkpoint_filter_fn: FilterFn | None = None,
             checkpoint_config: ConfigFn | None = None, description: str = "",
             published: Mapping[str, Any] | None = None) -> None:
    """Add a variant (see :class:`ModelSpec`)."""
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered")
    _REGISTRY[name] = ModelSpec(name, builder, dict(config), checkpoint_filter_fn, checkpoint_config,
                                description, types.MappingProxyType(dict(published or {})))


def _ensure_models_imported() -> None:
    import segviz.models  # noqa: F401  (registers every architecture)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally only those containing ``pattern``."""
    _ensure_models_imported()
    names = sorted(_REGISTRY)
    return [n for n in names if pattern is None or pattern in n]


def get_spec(name: str) -> ModelSpec:
    """The registry entry of ``name``: builder, config, checkpoint reading, ``published`` numbers."""
    _ensure_models_imported()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Valid names: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int | None = None, weights: str | None = None, **overrides) -> nn.Module:
    """Build a registered variant.

    Args:
        name: one of :func:`list_models`.
        num_classes: classifier size (default: the variant's; 150 for published configs, the
            the 6 Scenes classes for ``-nano`` configs).
        weights: a shipped tag such as ``"scenes"`` (see :func:`segviz.list_weights`: the
            card's config is applied, then the shipped weights are loaded), or a path to a
            checkpoint file (``.safetensors``, ``.bin``, ``.pth``), read safely (tensors only);
            every layout the architecture's ``checkpoint_filter_fn`` accepts is converted to
            ours, then loaded strictly. Config overrides that the file's layout needs
            (``checkpoint_config``) apply unless given explicitly here.
        overrides: config keys to change, e.g. ``drop_path_rate=0.1``.

    A bad config (unknown key, negative depth, ...) raises ``ValueError``.

    The model carries ``segviz_name`` and ``segviz_config`` (used by the weight cache).
    """
    spec = get_spec(name)
    config = dict(spec.config)
    allowed = _builder_params(spec.builder)
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise ValueError(
            f"{name}: unknown override(s) {bad}; allowed keys: {', '.join(sorted(allowed))}"
        )
    config.update(overrides)
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        config["num_classes"] = num_classes
    state_dict = None
    if zoo.looks_like_tag(weights) and not Path(weights).exists():
        entry = zoo.find(name, weights)
        explicit = set(overrides) | ({"num_classes"} if num_classes is not None else set())
        config.update({k: v for k, v in entry.config.items() if k not in explicit})
        weights = entry.path
    if weights is not None:
        if spec.checkpoint_filter_fn is None:
            raise ValueError(f"{name}: no checkpoint reader is registered for this architecture")
        state_dict = read_state_dict(weights)
        if spec.checkpoint_config is not None:
            needed = _in_file(weights, spec.checkpoint_config, state_dict)
            config.update({k: v for k, v in needed.items() if k not in overrides})
    try:
        model = spec.builder(**config)
    except TypeError as err:
        raise ValueError(f"{name}: bad configuration {config}: {err}") from err
    if state_dict is not None:
        state_dict = _in_file(weights, spec.checkpoint_filter_fn, state_dict, model)
        load_state_dict_strict(model, state_dict, source=str(weights))
    model.segviz_name = name
    model.segviz_config = config
    return model


def _in_file(path, fn, *args):
    """``fn(*args)``, with the checkpoint's path in front of any ValueError it raises."""
    try:
        return fn(*args)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def _builder_params(builder) -> set[str]:
    target = builder.__init__ if inspect.isclass(builder) else builder
    params = inspect.signature(target).parameters
    return {p for p in params if p not in ("self", "args", "kwargs")}
