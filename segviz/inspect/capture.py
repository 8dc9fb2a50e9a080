"""``with segviz.capture(model) as rec: model(x)`` — look inside a forward pass.

After the block:

* ``rec.attention[name]``: the last attention record of each attention module (global,
  spatial-reduction, window or masked attention), by qualified module name;
* ``rec.sampling[name]``: the last deformable-sampling record of each module;
* ``rec.features[name]``: the last output of each module recorded as a feature;
* ``rec.records(name)``: *every* record of that module in call order, one per call (a
  module called several times in one forward, or over several forwards, keeps them all);
  ``rec.records(kind="window_attention")`` every record of one kind, ``rec.records()`` all.

Features are module outputs, taken with forward hooks on the modules whose names match
``features`` (default: the model's own ``feature_modules`` patterns, e.g. every encoder
stage), so any ``nn.Module`` (a ResNet, an ASPP) can be inspected without edits. Blocks also
``emit`` internals that are not a module's output (e.g. SegFormer's fused decoder map).

Name patterns: ``*`` matches within one dotted part of a name, ``**`` across parts, ``?``
one character: ``"encoder.stages.*"`` is the stages themselves, ``"encoder.**.attn"`` every
attention below the encoder.

Outside the block nothing is stored. Inside it the attention still takes its fast fused path:
a record keeps the q, k and additive term of its call and forms the probabilities when its
``probs`` is first read (``segviz.nn.attention.DeferredProbs``). So recording costs little
(about the memory of the queries and keys it keeps), never changes the model's output, and a
record nobody reads costs no softmax.
"""
from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterable

from torch import Tensor, nn

from segviz.nn import recording


@functools.lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern:
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    table = {"**": ".*", "*": r"[^.]*", "?": r"[^.]"}
    return re.compile("".join(table.get(p, re.escape(p)) for p in parts))


def name_matches(name: str, patterns: str | Iterable[str]) -> bool:
    """Does a qualified module name match one of the patterns (see the module docstring)?"""
    patterns = [patterns] if isinstance(patterns, str) else patterns
    return any(_pattern(p).fullmatch(name) for p in patterns)


def _patterns(value, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, Iterable) else None
    if items is None or not all(isinstance(p, str) for p in items):
        raise ValueError(f"{what} must be a name pattern or a list of them (e.g. 'encoder.stages.*'), got {value!r}")
    return items


class Recorder:
    """What :func:`capture` yields; see the module docstring."""

    def __init__(self, model: nn.Module, kinds: Iterable[str] | None, include, features):
        known = recording.record_kinds()
        if isinstance(kinds, str):
            kinds = [kinds]
        self.kinds = set(known) if kinds is None else set(kinds)
        unknown = self.kinds - set(known)
        if unknown:
            raise ValueError(f"unknown record kinds {sorted(unknown)}; known kinds: {sorted(known)}")
        modules = list(model.named_modules())
        self._names = {id(m): name for name, m in modules}
        include = _patterns(include, "include")
        # a module is included when it, or a module containing it, matches (None: every module of the model)
        self._included = None if include is None else {
            id(m) for name, m in modules
            if any(name_matches(".".join(name.split(".")[:i]), include) for i in range(1, name.count(".") + 2))
        }
        default = getattr(model, "feature_modules", ())
        patterns = _patterns(features, "features") if features is not None else tuple(default)
        self.feature_modules = [
            (name, m) for name, m in modules
            if "feature" in self.kinds and self._includes(m) and name_matches(name, patterns)
        ] if patterns else []
        if features is not None and not self.feature_modules and "feature" in self.kinds:
            raise ValueError(f"features={features!r} matches no module of {type(model).__name__} "
                             f"(names look like {', '.join(n for n, _ in list(model.named_modules())[1:4])})")
        self._calls: list[tuple[str, str, object]] = []  # (module name, kind, record) in call order

    def _includes(self, module: nn.Module) -> bool:
        return id(module) in (self._names if self._included is None else self._included)

    def _wants(self, module: nn.Module, kind: str) -> bool:
        return kind in self.kinds and self._includes(module)

    def _store(self, module: nn.Module, kind: str, record: object) -> None:
        self._calls.append((self._names[id(module)], kind, record))

    def records(self, name: str | None = None, kind: str | None = None) -> list:
        """Every record of module ``name`` (and/or of ``kind``), in call order."""
        if kind is not None and kind not in recording.record_kinds():
            raise ValueError(f"unknown record kind {kind!r}; known kinds: {sorted(recording.record_kinds())}")
        return [r for n, k, r in self._calls if (name is None or n == name) and (kind is None or k == kind)]

    def _last(self, kinds) -> dict:
        out = {}
        for name, kind, record in self._calls:
            if kind in kinds:
                out[name] = record
        return out

    @property
    def attention(self) -> dict:
        """Qualified module name -> its last attention record (any attention kind)."""
        return self._last(recording.ATTENTION_KINDS)

    @property
    def sampling(self) -> dict:
        """Qualified module name -> its last deformable-sampling record."""
        return self._last(("sampling",))

    @property
    def features(self) -> dict:
        """Qualified module name -> its last recorded output (a tensor, or a tuple of them)."""
        return {name: r.features for name, r in self._last(("feature",)).items()}

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for _, kind, _ in self._calls:
            counts[kind] = counts.get(kind, 0) + 1
        text = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        return f"Recorder({text or 'nothing recorded'})"


def _feature_hook(rec: Recorder):
    def hook(module, _inputs, output):
        if isinstance(output, (tuple, list)):  # keep the tensors: a pyramid, or (tokens, hw)
            tensors = tuple(v.detach() for v in output if isinstance(v, Tensor))
            value = tensors[0] if len(tensors) == 1 else tensors or None
        else:
            value = output.detach() if isinstance(output, Tensor) else None
        if value is not None:
            rec._store(module, "feature", recording.FeatureRecord(value))

    return hook


@contextlib.contextmanager
def capture(model: nn.Module, kinds: Iterable[str] | None = None, include=None, features=None):
    """Record what ``model``'s blocks compute during the forward passes inside the block.

    Args:
        model: any ``nn.Module`` (records are keyed by names from ``model.named_modules()``).
        kinds: record kinds to keep (default: all registered kinds), e.g. ``["attention"]``.
        include: name pattern(s); only modules matching, or inside a match, are recorded, e.g.
            ``"encoder.stages.0"`` to keep memory small on big inputs.
        features: name pattern(s) of modules whose outputs are recorded as features (default:
            ``model.feature_modules``, or none).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"capture() needs a torch.nn.Module, got {type(model).__name__}")
    rec = Recorder(model, kinds, include, features)
    handles = [m.register_forward_hook(_feature_hook(rec)) for _, m in rec.feature_modules]
    recording._active.append(rec)
    try:
        yield rec
    finally:
        recording._active.remove(rec)
        for handle in handles:
            handle.remove()
