"""Counting costs: parameters, and GMACs — what the papers call "GFLOPs".

``torch.utils.flop_counter.FlopCounterMode`` counts matmuls and convolutions at
2 FLOPs per multiply-accumulate; we halve it to report MACs, which is what mmcv's
counter (and so every table in these papers) calls FLOPs. The attention matmuls are
counted on the explicit attention path (the flop counter cannot see inside the CPU
fused kernel). Element-wise work (norms, activations, softmax, pooling, interpolation)
is not counted, as in the papers.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from segviz.inspect._args import as_device, as_int, as_int_tuple
from segviz.nn.attention import explicit_attention


@dataclasses.dataclass
class FlopReport:
    """``total``: GMACs of one forward pass; ``per_module``: qualified name -> GMACs (children included)."""

    total: float
    per_module: dict[str, float]
    input_shape: tuple[int, ...]

    def __float__(self) -> float:
        return self.total

    def table(self, depth: int = 1) -> str:
        rows = [(n, g) for n, g in self.per_module.items() if n and n.count(".") < depth]
        width = max([len(n) for n, _ in rows] + [6])
        lines = [f"{'module':<{width}}  GMACs", f"{'(total)':<{width}}  {self.total:8.3f}"]
        lines += [f"{n:<{width}}  {g:8.3f}" for n, g in rows]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"FlopReport({self.total:.3f} GMACs at input {self.input_shape})"


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """(B, C, H, W) as four Python ints >= 1; a list, tuple, torch.Size or 1-D integer array / tensor."""
    return as_int_tuple(input_shape, "input_shape", length=4, expected="(B, C, H, W): 4 positive integers")


def flops(model: nn.Module, input_shape: Sequence[int], device: str | torch.device | None = None) -> FlopReport:
    """GMACs of one inference forward pass of ``model`` on a zero input of ``input_shape``.

    Args:
        model: any segviz model (its train/eval mode is restored afterwards).
        input_shape: (B, C, H, W), positive integers: a tuple, list, ``torch.Size``, or a 1-D
            integer numpy array / tensor. Anything else (3.5, "64", True, None, 3 values) is
            refused with a ``ValueError``.
        device: where to run; default the model's own device. ``"meta"`` counts without
            computing anything (fast for big published configs) and gives the same figure.
            A device that is misspelt or absent here is a ``ValueError``.
    """
    shape = _check_shape(input_shape)
    runner = _on_device(model, device)
    target = _device_of(runner)
    was_training = runner.training
    runner.eval()
    counter = FlopCounterMode(display=False, depth=None)
    try:
        with torch.no_grad(), explicit_attention(), counter:
            runner(torch.zeros(shape, device=target))
    finally:
        runner.train(was_training)
    per_module = {}
    root = type(model).__name__
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = key[len(root) + 1 :] if key.startswith(root + ".") else ("" if key == root else key)
        per_module[name] = sum(ops.values()) / 2e9
    return FlopReport(counter.get_total_flops() / 2e9, per_module, shape)


def _device_of(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def _on_device(model: nn.Module, device) -> nn.Module:
    """``model`` itself, or a copy of it on ``device`` when that is another device."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    device = as_device(device)
    if device is None or device == _device_of(model):
        return model
    return copy.deepcopy(model).to(device)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclasses.dataclass
class Summary:
    """Block-by-block table: module, output shape, params, GMACs."""

    rows: list[dict]
    total_params: int
    total_gmacs: float

    def __str__(self) -> str:
        width = max([len(r["module"]) for r in self.rows] + [6])
        head = f"{'module':<{width}}  {'output shape':<22} {'params':>12} {'GMACs':>9}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            shape = _shape_text(r["output_shape"])
            lines.append(f"{r['module']:<{width}}  {shape:<22} {r['params']:>12,} {r['gmacs']:>9.3f}")
        lines.append("-" * len(head))
        lines.append(f"{'total':<{width}}  {'':<22} {self.total_params:>12,} {self.total_gmacs:>9.3f}")
        return "\n".join(lines)

    __repr__ = __str__


def _shape_text(shape) -> str:
    if not shape:
        return "-"
    if isinstance(shape[0], tuple):  # multi-scale: first map, then how many more
        return f"{_shape_text(shape[0])} +{len(shape) - 1} more"
    return "x".join(str(s) for s in shape)


def summary(model: nn.Module, input_shape: Sequence[int], depth: int = 2, device=None) -> Summary:
    """Block-by-block table of ``model`` down to ``depth`` levels of submodules.

    ``input_shape`` and ``device`` as in :func:`flops`; ``depth`` an integer >= 1.
    """
    shape = _check_shape(input_shape)
    depth = as_int(depth, "depth", low=1)
    runner = _on_device(model, device)
    shapes: dict[str, tuple] = {}
    modules = dict(runner.named_modules())
    names = [n for n in modules if n and n.count(".") < depth]

    def hook_for(name):
        def hook(_module, _inputs, output):
            outs = output if isinstance(output, (tuple, list)) else [output]
            outs = [tuple(o.shape) for o in outs if isinstance(o, torch.Tensor)]
            if outs:  # one shape, or a list of shapes for multi-scale outputs
                shapes[name] = outs[0] if len(outs) == 1 else outs

        return hook

    handles = [modules[n].register_forward_hook(hook_for(n)) for n in names]
    try:
        report = flops(runner, shape)
    finally:
        for h in handles:
            h.remove()

    def gmacs_of(name: str) -> float:
        # containers that are never called themselves (ModuleList) add up their children
        if name in report.per_module:
            return report.per_module[name]
        return sum(gmacs_of(f"{name}.{child}") for child, _ in modules[name].named_children())

    rows = [
        {"module": n, "output_shape": shapes.get(n), "params": count_params(modules[n]), "gmacs": gmacs_of(n)}
        for n in names
    ]
    return Summary(rows, count_params(runner), report.total)
