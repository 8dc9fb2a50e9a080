"""One table to compare models: parameters, GMACs, CPU latency and held-out mIoU.

* **params**: counted (every parameter of the model as built, auxiliary heads included).
* **GMACs**: :func:`segviz.flops` on the meta device at ``input_size`` (the papers' "GFLOPs",
  one multiply-add = one MAC), next to the registry's ``published`` figure and the input size it
  was published for (which is not always 512×512: Swin's are at 224, UperNet's at 512×2048).
* **latency**: median seconds of one forward pass of a (1, 3, S, S) input on this machine's CPU,
  the models run *interleaved* in one process (model A, B, C, A, B, C, ...), so load from other
  processes falls on all of them alike, as ``benchmarks/_timing.py`` does for the benchmarks.
  It is a measurement of this machine at this moment: compare the ratios, not the numbers.
* **mIoU**: of the shipped weights on the held-out Scenes split, read from the weights' card
  (``segviz/zoo/NAME.TAG.json``: ``shipped.val_miou``, measured on the stored weights when they
  were shipped, with the card's ``shipped.eval`` set); None for a model without shipped weights
  (pass ``miou={name: value}`` to fill in numbers measured elsewhere, e.g. with
  ``segviz.training.evaluate``).
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from segviz import zoo
from segviz.inspect.costs import count_params, flops
from segviz.registry import create_model, get_spec

__all__ = ["ComparisonRow", "ComparisonTable", "comparison_table", "interleaved_medians", "published_gmacs"]


@dataclasses.dataclass(frozen=True)
class ComparisonRow:
    """One model of a :class:`ComparisonTable` (see the module docstring for each number)."""

    model: str
    params: int
    gmacs: float
    input_size: tuple[int, int]
    published_gmacs: float | None = None
    published_input_size: tuple[int, int] | None = None
    published_params: float | None = None  # millions, as published
    latency_s: float | None = None
    miou: float | None = None
    weights: str | None = None
    card: str = ""


@dataclasses.dataclass(frozen=True)
class ComparisonTable:
    rows: tuple[ComparisonRow, ...]
    input_size: tuple[int, int]
    latency_runs: int = 0
    threads: int | None = None

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, model: str) -> ComparisonRow:
        for r in self.rows:
            if r.model == model:
                return r
        raise ValueError(f"{model!r} is not in this table ({', '.join(r.model for r in self.rows)})")

    def text(self, latency: bool = True) -> str:
        """A plain-text table (latency column left out with ``latency=False``, e.g. for a checked output)."""
        h, w = self.input_size
        head = [f"{'model':<22}", f"{'params':>11}", f"{f'GMACs@{h}x{w}':>14}", f"{'published':>18}"]
        if latency:
            head.append(f"{'CPU ms':>8}")
        head.append(f"{'mIoU':>6}")
        lines = ["  ".join(head)]
        for r in self.rows:
            pub = "-"
            if r.published_gmacs is not None:
                ph, pw = r.published_input_size or (h, w)
                pub = f"{r.published_gmacs:g} @{ph}x{pw}"
            cells = [f"{r.model:<22}", f"{r.params:>11,}", f"{r.gmacs:>14.3f}", f"{pub:>18}"]
            if latency:
                cells.append(f"{1e3 * r.latency_s:>8.1f}" if r.latency_s is not None else f"{'-':>8}")
            cells.append(f"{r.miou:>6.3f}" if r.miou is not None else f"{'-':>6}")
            lines.append("  ".join(cells))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


def interleaved_medians(fns: Sequence[Callable[[], object]], warmup: int, runs: int) -> list[float]:
    """Median seconds of each zero-argument function; the runs alternate between the functions
    (the same scheme as ``benchmarks/_timing.py``, which the package cannot import)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(warmup):
        for fn in fns:
            fn()
    for _ in range(runs):
        for fn, ts in zip(fns, times):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


def published_gmacs(name: str) -> tuple[float | None, tuple[int, int] | None, float | None]:
    """(GMACs, input size, params in millions) of a registered variant as published; Nones for ``-nano``."""
    pub = get_spec(name).published
    gmacs = pub.get("gmacs", pub.get("gmacs_os16"))
    size = pub.get("input_size")
    params = pub.get("params_m")
    if params is None and pub.get("params") is not None:
        params = pub["params"] / 1e6
    return gmacs, (tuple(size) if size is not None else None), params


def _size(input_size) -> tuple[int, int]:
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    try:
        h, w = input_size
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"input_size must be a positive int or (H, W) of positive ints, got {input_size!r}")
    return h, w


def _count(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def comparison_table(models: Iterable[str], *, input_size=512, weights: str | None = "scenes",
                     latency: bool = True, runs: int = 3, warmup: int = 1, threads: int | None = None,
                     miou: Mapping[str, float] | None = None, seed: int = 0) -> ComparisonTable:
    """Params, GMACs at ``input_size``, CPU latency and held-out mIoU of registered models.

    Args:
        models: registry names, e.g. ``["segformer-nano", "deeplabv3plus-nano"]`` or published
            configs (``"segformer-b0"``).
        input_size: S or (H, W) for GMACs and latency (default 512).
        weights: shipped tag to load where the model has one (its card gives the mIoU; its card's
            config is the one counted); None: never load weights.
        latency: measure CPU latency (models are built on the CPU: seeded random weights where
            none are shipped); False: nothing runs for real, models without weights are built on
            the meta device (fast, also for the big published configs).
        runs, warmup: timed and untimed interleaved rounds.
        threads: ``torch.set_num_threads`` while timing (restored after); None leaves it.
        miou: name -> mIoU for models without a card value (a card's value is used otherwise).
        seed: ``torch.manual_seed`` before building each model without weights.

    Raises:
        ValueError: unknown model names, an empty list, bad sizes or counts.
    """
    names = [models] if isinstance(models, str) else list(models)
    if not names:
        raise ValueError("models is empty: give registry names, e.g. ['segformer-nano']")
    for n in names:
        if not isinstance(n, str):
            raise ValueError(f"models must be registry names (strings), got {n!r}")
        get_spec(n)  # an unknown name is a ValueError naming the close matches
    size = _size(input_size)
    runs, warmup = _count(runs, "runs", 1), _count(warmup, "warmup", 0)
    if threads is not None:
        threads = _count(threads, "threads", 1)
    miou = dict(miou or {})
    built: list[tuple[str, nn.Module, zoo.WeightEntry | None]] = []
    for name in names:
        entry = None
        if weights is not None and any(e.tag == weights for e in zoo.list_weights(name)):
            entry = zoo.find(name, weights)
        if entry is not None:
            model = create_model(name, weights=weights)
        elif latency:
            torch.manual_seed(seed)
            model = create_model(name)
        else:
            with torch.device("meta"):
                model = create_model(name)
        built.append((name, model.eval(), entry))

    times: list[float | None] = [None] * len(built)
    if latency:
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(seed))
        fns = []
        for _, model, _ in built:
            def run(m=model):
                with torch.inference_mode():
                    m(x)
            fns.append(run)
        before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            times = list(interleaved_medians(fns, warmup, runs))
        finally:
            torch.set_num_threads(before)

    rows = []
    for (name, model, entry), seconds in zip(built, times):
        pub_gmacs, pub_size, pub_params = published_gmacs(name)
        value = entry.val_miou if entry is not None else miou.get(name)
        rows.append(ComparisonRow(
            model=name, params=count_params(model), gmacs=flops(model, (1, 3, *size), device="meta").total,
            input_size=size, published_gmacs=pub_gmacs, published_input_size=pub_size, published_params=pub_params,
            latency_s=seconds, miou=value, weights=entry.tag if entry is not None else None,
            card=entry.describe() if entry is not None else (get_spec(name).description or name),
        ))
    return ComparisonTable(tuple(rows), size, runs if latency else 0, threads)
