"""Named model variants: ``create_model("segformer-b0")``, ``list_models()``.

Each entry is a builder (a model class or function taking keyword config), its config
(the published one, or a tiny ``-nano`` one sized for CPU notebooks), and optionally a
checkpoint reader that turns a file into (config overrides, state dict in our layout).
Model files register their variants at import; ``segviz.models`` imports them all.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from segviz.weights import load_state_dict_strict


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    config: dict[str, Any]
    reader: Callable[[str, dict], tuple[dict, dict]] | None = None
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, builder, config: dict, reader=None, description: str = "") -> None:
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered")
    _REGISTRY[name] = ModelSpec(name, builder, dict(config), reader, description)


def _ensure_models_imported() -> None:
    import segviz.models  # noqa: F401  (registers every architecture)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally only those containing ``pattern``."""
    _ensure_models_imported()
    names = sorted(_REGISTRY)
    return [n for n in names if pattern is None or pattern in n]


def get_spec(name: str) -> ModelSpec:
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
            5 Shapes classes for ``-nano`` configs).
        weights: path to a checkpoint file (``.safetensors``, ``.bin``, ``.pth``); layouts the
            architecture's reader understands are converted to ours.
        overrides: config keys to change, e.g. ``drop_path_rate=0.1``.

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
    if weights is not None:
        if spec.reader is None:
            raise ValueError(f"{name}: no checkpoint reader is registered for this architecture")
        extra_config, state_dict = spec.reader(str(weights), config)
        config.update(extra_config)
    try:
        model = spec.builder(**config)
    except TypeError as err:
        raise ValueError(f"{name}: bad configuration {config}: {err}") from err
    if state_dict is not None:
        load_state_dict_strict(model, state_dict, source=str(weights))
    model.segviz_name = name
    model.segviz_config = config
    return model


def _builder_params(builder) -> set[str]:
    target = builder.__init__ if inspect.isclass(builder) else builder
    params = inspect.signature(target).parameters
    return {p for p in params if p not in ("self", "args", "kwargs")}
