"""``with segviz.capture(model) as rec: model(x)`` — look inside a forward pass.

After the block, ``rec.attention[name]`` holds an :class:`AttentionRecord` per attention
module (by qualified module name), ``rec.features[name]`` the stage feature maps, and
``rec.records[kind]`` every kind, including those added later with
:func:`segviz.inspect.recording.register_kind`. A module called twice keeps its last record.

Outside the block nothing is stored and the fast attention path runs: recording costs
nothing unless asked for, and never changes the model's output.
"""
from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterable

from torch import nn

from segviz.inspect import recording


class Recorder:
    def __init__(self, model: nn.Module, kinds: Iterable[str] | None, include: str | None):
        known = recording.record_kinds()
        self.kinds = set(known) if kinds is None else set(kinds)
        unknown = self.kinds - set(known)
        if unknown:
            raise ValueError(f"unknown record kinds {sorted(unknown)}; known kinds: {sorted(known)}")
        self._names = {id(m): name for name, m in model.named_modules()}
        self._include = include
        self.records: dict[str, dict[str, object]] = {kind: {} for kind in self.kinds}

    def _wants(self, module: nn.Module, kind: str) -> bool:
        name = self._names.get(id(module))
        if name is None or kind not in self.kinds:
            return False
        return self._include is None or fnmatch.fnmatch(name, self._include)

    def _store(self, module: nn.Module, kind: str, record: object) -> None:
        self.records.setdefault(kind, {})[self._names[id(module)]] = record

    @property
    def attention(self) -> dict:
        """Qualified module name -> AttentionRecord."""
        return self.records.get("attention", {})

    @property
    def features(self) -> dict:
        """Qualified module name -> (B, C, h, w) feature map."""
        return {name: r.features for name, r in self.records.get("feature", {}).items()}

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}: {len(v)}" for k, v in sorted(self.records.items()))
        return f"Recorder({counts})"


@contextlib.contextmanager
def capture(model: nn.Module, kinds: Iterable[str] | None = None, include: str | None = None):
    """Record what ``model``'s blocks emit during the forward passes inside the block.

    Args:
        model: any segviz model (records are keyed by names from ``model.named_modules()``).
        kinds: record kinds to keep (default: all registered kinds).
        include: an fnmatch pattern on module names, e.g. ``"encoder.stages.0.*"``,
            to keep memory small on big inputs.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"capture() needs a torch.nn.Module, got {type(model).__name__}")
    rec = Recorder(model, kinds, include)
    recording._active.append(rec)
    try:
        yield rec
    finally:
        recording._active.remove(rec)
