"""Inference spatial reduction (ISR, Yu et al., ECCV 2024): shrink the keys and values of
every spatial-reduction attention further at inference, on the same weights.

    with isr(model, encoder=(16, 8, 2, 1), decoder=(8, 4, 2)):
        logits = model(x)          # cheaper attention, same parameters
    # the training ratios are back here

A stage with N = h·w query tokens and a per-side ratio r attends to N / r² keys (the
sequence shrinks by R = r²), so its attention costs O(N² / r²): doubling r quarters it.

**Ratios** are the *total* per-side key/value reduction of each stage (not a factor on top
of the training ratio):

* ``encoder``: stages 1, 2, 3, 4 (EDAFormer and SegFormer train with (8, 4, 2, 1));
* ``decoder``: EDAFormer's decoder stages, in the order of the encoder stages they read,
  2, 3, 4 (trained with (4, 2, 1)). The EDAFormer paper writes decoder ratios the other way
  round, deepest stage first: its "[2, 4, 8]" is ``decoder=(8, 4, 2)`` here. The official
  code's ISR presets multiply the training ratios per stage, e.g. encoder "2211" and decoder
  "222" are ``encoder=(16, 8, 2, 1), decoder=(8, 4, 2)``.

Ratios are given as a tuple, a list, or a 1-D integer numpy array / tensor (one integer per
stage); floats, strings, bools and wrong lengths are refused with a ``ValueError`` that says
what was given and what is allowed, and nothing changes. ``None`` leaves a group at its
training ratios.

``pool`` ("avg", the paper's choice, or "max") is the pooling of every spatial-reduction
attention while the setting holds (EDAFormer pools at its training ratios too, so "max"
changes it even there; SegFormer pools only by the factor beyond its learned strided conv).

Any model whose attentions subclass :class:`segviz.nn.SpatialReductionAttention` and carry
an ``isr_role`` works: EDAFormer (encoder and decoder groups) and SegFormer (encoder only;
it was not trained for ISR, so expect some loss of accuracy there, whereas EDAFormer's
pool-then-project design was chosen to tolerate it).
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence

import torch
from torch import nn

from segviz.inspect._args import as_int_tuple, int_or_none, items_or_none, kind, plain
from segviz.nn.reduction import POOLS, SpatialReductionAttention

GROUPS = ("encoder", "decoder")


def _stages(model: nn.Module) -> dict[str, dict[int, list[SpatialReductionAttention]]]:
    """group -> stage -> its attention modules (stages sorted)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"ISR needs a torch.nn.Module, got {type(model).__name__}")
    found: dict[str, dict[int, list]] = {}
    for module in model.modules():
        if isinstance(module, SpatialReductionAttention) and module.isr_role is not None:
            group, stage = module.isr_role
            found.setdefault(group, {}).setdefault(stage, []).append(module)
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no spatial-reduction attention with an isr_role; "
            "ISR works on models such as EDAFormer and SegFormer"
        )
    return {g: dict(sorted(found[g].items())) for g in GROUPS if g in found}


def _ratios(stages, attr: str) -> dict[str, tuple[int, ...]]:
    return {g: tuple(getattr(mods[0], attr) for mods in by_stage.values()) for g, by_stage in stages.items()}


def training_ratios(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """{"encoder": (per-side ratio of stages 1..4), "decoder": (stages 2, 3, 4)} as trained."""
    return _ratios(_stages(model), "train_ratio")


def current_ratios(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The ratios in force now (training ratios unless ISR is set)."""
    return _ratios(_stages(model), "ratio")


def feature_sizes(model: nn.Module, input_size: Sequence[int]) -> dict[str, dict[int, tuple[int, int]]]:
    """The (h, w) map each attention stage sees for an input of ``input_size`` = (H, W).

    Runs a copy of the model on the meta device (nothing is computed) at the training ratios.
    """
    size = _input_size(input_size)
    probe = copy.deepcopy(model).to("meta")
    for module in probe.modules():
        if isinstance(module, SpatialReductionAttention):
            module.inference_ratio, module.isr_pool = None, "avg"
    seen: dict[str, dict[int, tuple[int, int]]] = {}

    def recorder(module):
        check = module.check_map

        def record(h, w):
            group, stage = module.isr_role
            seen.setdefault(group, {})[stage] = (int(h), int(w))
            check(h, w)

        return record

    for by_stage in _stages(probe).values():
        for modules in by_stage.values():
            for module in modules:
                module.check_map = recorder(module)
    probe.eval()
    with torch.no_grad():
        probe(torch.zeros(1, 3, *size, device="meta"))
    return {g: dict(sorted(seen[g].items())) for g in GROUPS if g in seen}


def _input_size(input_size) -> tuple[int, int]:
    """(H, W) as two Python ints >= 1 (a tuple, list, torch.Size or 1-D integer array / tensor)."""
    return as_int_tuple(input_size, "input_size", length=2, expected="(H, W) with two positive integers")


def _plan(model, encoder, decoder, pool, input_size) -> dict[SpatialReductionAttention, int | None]:
    """Validate everything; return module -> inference ratio (None: training ratio)."""
    if not isinstance(pool, str) or pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    stages = _stages(model)
    sizes = feature_sizes(model, input_size) if input_size is not None else {}
    plan: dict[SpatialReductionAttention, int | None] = {}
    for group, ratios in (("encoder", encoder), ("decoder", decoder)):
        by_stage = stages.get(group, {})
        for modules in by_stage.values():
            plan.update(dict.fromkeys(modules))
        if ratios is None:
            continue
        if not by_stage:
            raise ValueError(
                f"{type(model).__name__} has no {group} attention to reduce; "
                f"it has only: {', '.join(stages)}. Leave {group}=None"
            )
        numbers = list(by_stage)
        items = items_or_none(ratios)  # a tuple, list, or 1-D integer numpy array / tensor
        if items is None or len(items) != len(numbers):
            given = f"{len(items)} value{'' if len(items) == 1 else 's'}: " if items is not None else f"{kind(ratios)}: "
            raise ValueError(
                f"{group} ratios need {len(numbers)} values, one per {group} stage "
                f"{', '.join(map(str, numbers))} in that order (a tuple, list, or 1-D integer array); "
                f"got {given}{ratios!r}"
            )
        for stage, item in zip(numbers, items):
            hw = sizes.get(group, {}).get(stage)
            where = f"{group} stage {stage}" + (f" (feature map {hw[0]}x{hw[1]})" if hw else "")
            allowed = f"1..{min(hw)}" if hw else "positive integers up to the feature map's shorter side"
            ratio = int_or_none(item)
            if ratio is None:
                raise ValueError(f"{where}: reduction ratios are integers, got {plain(item)!r}; allowed: {allowed}")
            if ratio < 1 or (hw and ratio > min(hw)):
                raise ValueError(f"{where}: reduction ratio {ratio} is out of range; allowed: {allowed}")
            for module in by_stage[stage]:
                module.isr_check(ratio)
                plan[module] = ratio
    return plan


def set_isr(model: nn.Module, encoder: Sequence[int] | None = None, decoder: Sequence[int] | None = None,
            pool: str = "avg", input_size: Sequence[int] | None = None) -> dict[str, tuple[int, ...]]:
    """Set the inference ratios permanently (until the next call); see the module docstring.

    Args:
        encoder: total per-side ratio for encoder stages 1..4, or None for the training ratios.
        decoder: the same for EDAFormer's decoder stages 2, 3, 4 (the paper lists them 4, 3, 2).
        pool: "avg" or "max".
        input_size: (H, W); when given, ratios larger than a stage's feature map at that input
            are refused now rather than at the forward pass.

    Returns the ratios now in force. Nothing changes when validation fails.
    """
    plan = _plan(model, encoder, decoder, pool, input_size)
    for module, ratio in plan.items():
        module.inference_ratio = ratio
        module.isr_pool = pool
    return current_ratios(model)


@contextlib.contextmanager
def isr(model: nn.Module, encoder: Sequence[int] | None = None, decoder: Sequence[int] | None = None,
        pool: str = "avg", input_size: Sequence[int] | None = None):
    """``with isr(model, encoder=..., decoder=...):`` — :func:`set_isr` inside the block only.

    The previous ratios and pooling of every attention are restored on exit, also after an
    exception. Yields the ratios in force.
    """
    previous = {m: (m.inference_ratio, m.isr_pool) for mods in _stages(model).values()
                for group in mods.values() for m in group}
    in_force = set_isr(model, encoder, decoder, pool, input_size)
    try:
        yield in_force
    finally:
        for module, (ratio, module_pool) in previous.items():
            module.inference_ratio, module.isr_pool = ratio, module_pool
