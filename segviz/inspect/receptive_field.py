"""Receptive fields: the theoretical one from the layers' geometry, and the effective one from gradients.

**Theoretical receptive field** (:func:`receptive_field`). A unit of a feature map "sees" a
window of the input. For a chain of layers with kernel k_l, stride s_l, padding p_l and
dilation d_l, with the dilated kernel k'_l = d_l (k_l - 1) + 1, going back from layer L
(r_L = 1) to the input (r_0 = the receptive field of layer L):

    r_{l-1} = s_l * r_l + (k'_l - s_l)

The same numbers come out going forward, which is what this module does, carrying for every
tensor its receptive-field size r, its jump j (the effective stride: input pixels between
neighbouring units) and the centre ``start`` of unit 0's window in input pixel coordinates
(pixel centres at 0, 1, 2, ...; negative = in the padding):

    j_l     = j_{l-1} * s_l
    r_l     = r_{l-1} + (k'_l - 1) * j_{l-1}
    start_l = start_{l-1} + ((k'_l - 1) / 2 - p_l) * j_{l-1}

Unit i of the map then sees the input pixels start + i*j -/+ (r - 1)/2; the *effective
padding* is how far unit 0's window reaches outside the image, (r - 1)/2 - start.

It follows the real data flow: one forward pass on a small input (on the meta device by
default: nothing is computed) under a ``TorchFunctionMode`` that sees every torch call —
module calls and plain functions alike, so ``x + identity`` in a residual block, a
``torch.cat`` of ASPP branches or an ``F.interpolate`` in a decoder are all followed. Where
paths join (add, cat, multiply), the window of a unit is the *union* of the paths' windows:
for a ResNet bottleneck with a strided 1x1 downsample shortcut that is the main path's
window, the largest. Each axis (height, width) is followed on its own.

What each kind of operation does:

* ``conv2d`` (any stride, padding — also "same"/"valid" —, dilation, groups), ``max_pool2d``,
  ``avg_pool2d``: the recurrence above; ``F.pad`` shifts ``start``; slicing a map
  (``x[..., a:b:s]``) shifts and strides it.
* pointwise work — activations, dropout, arithmetic, ``linear`` on channels, type casts,
  channel ``cat`` / ``split``, permutes (the height and width axes are followed) — passes the
  field through; where inputs meet it takes the union. **Normalisation layers** (batch, layer,
  group, instance norm) count as pointwise: their statistics are ignored, as in the usual
  definition (in eval mode BatchNorm is pointwise anyway).
* ``F.interpolate``: the jump scales by in/out (a fraction when the sizes do not divide), the
  window grows by the interpolation's taps (1 more input unit for bilinear, 3 for bicubic,
  none for nearest); ``start`` is where output unit 0 samples.
* ``adaptive_*_pool2d``: to 1x1 (global pooling) -> *whole input*; to bins that divide the
  map exactly -> a pooling with kernel = stride = in/out; to bins that do not divide it ->
  *whole input* (the windows differ from bin to bin; not a sliding window).
* anything that mixes positions otherwise — attention (``scaled_dot_product_attention``,
  ``matmul``, ``softmax`` over positions), reductions over height/width, reshapes that
  flatten the map into tokens, operations the tracker does not know — -> *whole input*.

"Whole input" (``ReceptiveField.whole_input``, ``size`` None) means "may depend on every input
pixel": true for global pooling and global attention, and an honest "not a sliding window"
for window attention (Swin) and token models, for which :func:`erf` is the tool.

About published numbers: 483 px is the receptive field of TF-slim's ``resnet_v1_50``, which
puts each stage's stride on the 3x3 of the stage's *last* unit (so more 3x3 convs run at the
finer stride): 11 after the stem, then 35, 99, 291, 483. It applies to that exact variant only.
torchvision's layout (the stride on the 3x3 of each stage's *first* block) gives 11 after the
max pool, then 35 (layer1), 91 (layer2), 267 (layer3) and 427 px (layer4, stride 32); with
dilation instead of stride in layer4 (output stride 16) layer4 reaches 555 px at stride 16.
:func:`receptive_field` computes it for whatever model it is given.

**Effective receptive field** (:func:`erf`, Luo et al., NeurIPS 2016). The gradient of an
output unit with respect to the input pixels: how much each pixel actually moves the unit.
It is roughly Gaussian, and much smaller than the theoretical window, which only bounds it.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import weakref
from collections.abc import Iterable, Sequence
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakTensorKeyDictionary

from segviz.inspect._args import as_int, as_int_tuple, kind
from segviz.inspect.capture import name_matches
from segviz.inspect.costs import _device_of, _on_device

__all__ = ["ERF", "LayerRF", "ReceptiveField", "erf", "receptive_field"]


# ----------------------------------------------------------------------------------------
# What every tensor carries
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Axis:
    """One spatial axis: window size r (None = whole input), jump j, centre of unit 0."""

    size: Fraction | None
    jump: Fraction
    start: Fraction


@dataclasses.dataclass(frozen=True)
class _Info:
    """Receptive field of a tensor: which of its dims are height and width, and each axis.

    ``dims`` None: the map layout is lost (flattened into tokens); then the field is the whole input.
    """

    dims: tuple[int, int] | None
    axes: tuple[_Axis, _Axis] | None
    reason: str = ""

    @property
    def whole(self) -> bool:
        return self.axes is None or any(a.size is None for a in self.axes)


def _whole(reason: str, info: _Info | None = None, dims=None) -> _Info:
    """The whole input; keeps the jump/start of ``info`` (the map geometry) when the dims survive."""
    if info is not None and info.axes is not None and dims is not None:
        axes = tuple(_Axis(None, a.jump, a.start) for a in info.axes)
        return _Info(dims, axes, info.reason or reason)
    return _Info(None, None, (info.reason if info is not None and info.reason else reason))


def _number(value: Fraction | None):
    """A Fraction as an int when whole, else a float; None stays None."""
    if value is None:
        return None
    return int(value) if value.denominator == 1 else float(value)


def _pair(value) -> tuple:
    if isinstance(value, (tuple, list, torch.Size)):
        return (value[0], value[1]) if len(value) == 2 else (value[0], value[0])
    return (value, value)


# ----------------------------------------------------------------------------------------
# The results
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LayerRF:
    """One module call in the forward pass and its output's receptive field (per axis (h, w))."""

    name: str
    type: str
    shape: tuple[int, ...]
    size: tuple | None
    stride: tuple | None
    start: tuple | None

    @property
    def whole_input(self) -> bool:
        return self.size is None


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """Theoretical receptive field of one layer's output, per axis ``(height, width)``.

    Attributes:
        layer: the module's qualified name ("" for the model's output).
        size: window of one unit in input pixels, e.g. (435, 435); None when it is the whole
            input (see the module docstring for what makes it so, and ``reason``).
        stride: the jump: input pixels between neighbouring units (the map's output stride).
        start: centre of unit 0's window in input pixel coordinates (negative: in the padding).
        reason: why the field is the whole input ("" when it is not).
        input_size: the (H, W) of the forward pass used to follow the data flow.
        layers: every module call up to and including ``layer``, in the order they finished,
            with its own receptive field (the growth curve; see :meth:`rows`, :meth:`table`).
    """

    layer: str
    size: tuple | None
    stride: tuple | None
    start: tuple | None
    reason: str
    input_size: tuple[int, int]
    layers: tuple[LayerRF, ...] = dataclasses.field(repr=False)

    @property
    def whole_input(self) -> bool:
        return self.size is None

    @property
    def padding(self) -> tuple | None:
        """Effective padding per axis: how far unit 0's window reaches before the image, (r - 1)/2 - start."""
        if self.size is None or self.start is None:
            return None
        return tuple(_number(Fraction(r - 1) / 2 - Fraction(s)) for r, s in zip(self.size, self.start))

    def window(self, unit: tuple[int, int]) -> tuple:
        """(top, left, bottom, right) input pixels (inclusive) seen by output unit (i, j); not clipped."""
        if self.size is None:
            raise ValueError(f"{self.layer or 'the output'} sees the whole input ({self.reason}); it has no window")
        out = []
        for axis, i in enumerate(unit):
            centre = Fraction(self.start[axis]) + i * Fraction(self.stride[axis])
            half = Fraction(self.size[axis] - 1) / 2
            out.append((_number(centre - half), _number(centre + half)))
        (top, bottom), (left, right) = out
        return top, left, bottom, right

    def at(self, name: str) -> LayerRF:
        """The row of module ``name`` (its last call up to ``layer``): read every layer's field
        from one :func:`receptive_field` call on the last one."""
        found = [r for r in self.layers if r.name == name]
        if not found:
            names = list(dict.fromkeys(r.name for r in self.layers))
            close = difflib.get_close_matches(name, names, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"no module {name!r} runs before {self.layer or 'the output'!r}.{hint}")
        return found[-1]

    def rows(self, types: Iterable[type] | None = None, leaves: bool = False) -> list[LayerRF]:
        """The layer calls, optionally only of some module ``types`` or only leaf modules."""
        rows = list(self.layers)
        if types is not None:
            names = {t.__name__ for t in types}
            rows = [r for r in rows if r.type in names]
        if leaves:
            prefixes = {r.name.rsplit(".", 1)[0] for r in self.layers if "." in r.name}
            rows = [r for r in rows if r.name not in prefixes and r.name]
        return rows

    def table(self, types: Iterable[type] | None = None, leaves: bool = False) -> str:
        """A text table of :meth:`rows`: module, type, output shape, size, stride, start."""
        rows = self.rows(types, leaves)
        width = max([len(r.name) for r in rows] + [6])

        def cell(v):
            if v is None:
                return "whole"
            return "x".join(f"{x:g}" if isinstance(x, float) else str(x) for x in dict.fromkeys(v))

        head = f"{'module':<{width}}  {'type':<18} {'output':>14} {'RF':>7} {'stride':>7} {'start':>7}"
        lines = [head, "-" * len(head)]
        for r in rows:
            shape = "x".join(str(s) for s in r.shape[-2:])
            lines.append(f"{r.name or '(model)':<{width}}  {r.type[:18]:<18} {shape:>14} {cell(r.size):>7} "
                         f"{cell(r.stride):>7} {cell(r.start):>7}")
        return "\n".join(lines)

    def __str__(self) -> str:
        where = self.layer or "output"
        if self.size is None:
            return f"{where}: whole input ({self.reason})"
        size = "x".join(str(v) for v in dict.fromkeys(self.size))
        stride = "x".join(str(v) for v in dict.fromkeys(self.stride))
        return f"{where}: receptive field {size} px, stride {stride}, start {self.start}, padding {self.padding}"


# ----------------------------------------------------------------------------------------
# The tracker
# ----------------------------------------------------------------------------------------
def _bind(args, kwargs, names: Sequence[str], defaults: dict) -> dict:
    bound = dict(defaults)
    bound.update(zip(names, args))
    bound.update(kwargs)
    return bound


# functions that make a tensor without reading the values of their tensor arguments
_NO_DEPENDENCE = {
    "new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "zeros_like", "ones_like", "empty_like",
    "full_like", "rand_like", "randn_like", "randint_like", "size", "dim", "numel", "__len__", "stride",
    "__get__", "__set__", "get_device", "is_contiguous", "type_as", "element_size", "data_ptr",
}
# functions that mix positions in a way no window describes
_MIXING = {
    "matmul", "bmm", "mm", "baddbmm", "addmm", "einsum", "scaled_dot_product_attention", "multi_head_attention_forward",
    "fft_fft2", "fft_rfft2", "conv_transpose2d", "conv_transpose1d", "conv3d", "conv1d", "grid_sample", "unfold",
    "fold", "pixel_shuffle", "pixel_unshuffle", "roll", "flip", "sort", "topk", "cumsum", "nonzero", "masked_select",
    "gather", "scatter", "index_select", "take", "stack", "tensordot",
}
# functions that act along ``dim``: fine when it is not a spatial axis
_ALONG_DIM = {
    "softmax", "log_softmax", "sum", "mean", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp",
    "prod", "argmax", "argmin", "all", "any", "median", "nansum", "nanmean", "count_nonzero", "cummax",
}
_LINEAR_TAPS = {"nearest": 0, "nearest-exact": 0, "bilinear": 1, "linear": 1, "bicubic": 3, "area": None}


class _Tracker(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.info = WeakTensorKeyDictionary()

    # -- helpers ---------------------------------------------------------------------------
    def _tracked(self, args, kwargs) -> list[tuple[Tensor, _Info]]:
        found = []

        def visit(value):
            if isinstance(value, Tensor):
                info = self.info.get(value)
                if info is not None:
                    found.append((value, info))
            elif isinstance(value, (list, tuple)):
                for v in value:
                    visit(v)

        for a in args:
            visit(a)
        for v in kwargs.values():
            visit(v)
        return found

    @staticmethod
    def _outputs(out) -> list[Tensor]:
        if isinstance(out, Tensor):
            return [out]
        if isinstance(out, (list, tuple)):
            return [o for o in out if isinstance(o, Tensor)]
        return []

    @staticmethod
    def _spatial(x: Tensor, info: _Info) -> bool:
        """Is ``x`` laid out with height and width as its last two dims (what conv/pool need)?"""
        return info.dims is not None and info.dims == (x.dim() - 2, x.dim() - 1)

    @staticmethod
    def _union(items: list[tuple[Tensor, _Info]], out: Tensor, name: str) -> _Info:
        """The union of the inputs' windows, for an output with the same layout as the inputs."""
        infos = [i for _, i in items]
        dims = infos[0].dims
        if dims is None or any(i.dims != dims for i in infos) or out.dim() != items[0][0].dim():
            return _whole(f"'{name}' combines maps whose layouts differ", next((i for i in infos if i.reason), None))
        whole = [i for i in infos if i.whole]
        if whole:
            return _whole(whole[0].reason, whole[0], dims)
        if len(infos) == 1:
            return infos[0]
        axes = []
        for a, dim in enumerate(dims):
            n = out.shape[dim]
            lo_hi = []
            for info in infos:
                ax = info.axes[a]
                half = (ax.size - 1) / 2
                lo_hi.append([(ax.start + i * ax.jump - half, ax.start + i * ax.jump + half) for i in (0, max(n - 1, 0))])
            extent = max(max(h[k][1] for h in lo_hi) - min(h[k][0] for h in lo_hi) + 1 for k in (0, 1))
            lo0 = min(h[0][0] for h in lo_hi)
            hi0 = max(h[0][1] for h in lo_hi)
            jump = max(info.axes[a].jump for info in infos)
            axes.append(_Axis(extent, jump, (lo0 + hi0) / 2))
        return _Info(dims, tuple(axes))

    @staticmethod
    def _window_op(info: _Info, kernel, stride, padding, dilation) -> _Info:
        axes = []
        for a in range(2):
            ax = info.axes[a]
            k_eff = dilation[a] * (kernel[a] - 1) + 1
            size = None if ax.size is None else ax.size + (k_eff - 1) * ax.jump
            start = ax.start + (Fraction(k_eff - 1, 2) - padding[a]) * ax.jump
            axes.append(_Axis(size, ax.jump * stride[a], start))
        return _Info(info.dims, tuple(axes), info.reason)

    # -- the operations --------------------------------------------------------------------
    def _conv(self, x, info, args, kwargs) -> _Info:
        b = _bind(args, kwargs, ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
                  {"stride": 1, "padding": 0, "dilation": 1})
        kernel = tuple(b["weight"].shape[-2:])
        dilation, stride = _pair(b["dilation"]), _pair(b["stride"])
        padding = b["padding"]
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":  # total d(k-1), the smaller half first (PyTorch's rule)
            padding = tuple((d * (k - 1)) // 2 for d, k in zip(dilation, kernel))
        return self._window_op(info, kernel, stride, _pair(padding), dilation)

    def _pool(self, name, x, info, args, kwargs) -> _Info:
        names = ("input", "kernel_size", "stride", "padding") + (("dilation",) if name.startswith("max") else ())
        b = _bind(args, kwargs, names, {"stride": None, "padding": 0, "dilation": 1})
        kernel = _pair(b["kernel_size"])
        stride = kernel if b["stride"] in (None, [], ()) else _pair(b["stride"])
        return self._window_op(info, kernel, stride, _pair(b["padding"]), _pair(b.get("dilation", 1)))

    def _adaptive(self, name, x, info, out) -> _Info:
        in_hw, out_hw = tuple(x.shape[-2:]), tuple(out.shape[-2:])
        if out_hw == (1, 1):
            return _whole(f"global pooling ({name})", None)
        if any(i % o for i, o in zip(in_hw, out_hw)):
            return _whole(f"{name} to {out_hw[0]}x{out_hw[1]} bins that do not divide a {in_hw[0]}x{in_hw[1]} map "
                          "(bins of unequal size: not a sliding window)", info, info.dims)
        kernel = tuple(i // o for i, o in zip(in_hw, out_hw))
        return self._window_op(info, kernel, kernel, (0, 0), (1, 1))

    def _interpolate(self, x, info, out, args, kwargs) -> _Info:
        b = _bind(args, kwargs, ("input", "size", "scale_factor", "mode", "align_corners"),
                  {"mode": "nearest", "align_corners": None, "antialias": False})
        mode = b["mode"]
        taps = _LINEAR_TAPS.get(mode)
        if taps is None or b.get("antialias"):
            return _whole(f"interpolate(mode={mode!r}, antialias={b.get('antialias')}) is not followed", info, info.dims)
        axes = []
        for a in range(2):
            ax = info.axes[a]
            n_in, n_out = x.shape[-2 + a], out.shape[-2 + a]
            if b["align_corners"]:
                scale = Fraction(n_in - 1, n_out - 1) if n_out > 1 else Fraction(0)
                first = Fraction(0)
            else:
                scale = Fraction(n_in, n_out)
                first = max(scale / 2 - Fraction(1, 2), Fraction(0)) if taps else Fraction(0)
                if mode == "nearest-exact":
                    first = Fraction(math.floor(scale / 2))
            size = None if ax.size is None else ax.size + taps * ax.jump
            axes.append(_Axis(size, ax.jump * scale, ax.start + first * ax.jump))
        return _Info(info.dims, tuple(axes), info.reason)

    def _pad(self, x, info, args, kwargs) -> _Info:
        b = _bind(args, kwargs, ("input", "pad"), {})
        pad = list(b["pad"]) + [0] * 4
        # pad = (left, right, top, bottom, ...) for the last, then the second-to-last dim
        left, top = pad[0], pad[2]
        h, w = info.axes
        return _Info(info.dims, (_Axis(h.size, h.jump, h.start - top * h.jump),
                                 _Axis(w.size, w.jump, w.start - left * w.jump)), info.reason)

    def _getitem(self, x, info, index, out) -> _Info:
        index = index if isinstance(index, tuple) else (index,)
        if any(i is None or i is Ellipsis or not isinstance(i, (slice, int)) for i in index):
            if out.dim() == x.dim() and tuple(out.shape[d] for d in info.dims) == tuple(x.shape[d] for d in info.dims):
                return info
            return _whole("indexing that moves the map's axes", info)
        axes = list(info.axes)
        dims = list(info.dims)
        for d, i in enumerate(index):
            if d in info.dims:
                a = info.dims.index(d)
                if isinstance(i, int):
                    return _whole("indexing one row or column of a map", info)
                start, _, step = i.indices(x.shape[d])
                ax = axes[a]
                axes[a] = _Axis(ax.size, ax.jump * step, ax.start + start * ax.jump)
            elif isinstance(i, int):
                dims = [dd - 1 if dd > d else dd for dd in dims]
        return _Info(tuple(dims), tuple(axes), info.reason)

    def _after(self, func, name, args, kwargs, out, tracked) -> _Info | None:
        x, info = tracked[0]
        outs = self._outputs(out)
        first = outs[0]
        if name in _MIXING:
            return _whole(f"'{name}' mixes positions (attention, reordering, ...)", info)
        if name == "conv2d":
            return self._conv(x, info, args, kwargs) if self._spatial(x, info) else _whole("conv2d on a moved layout", info)
        if name in ("max_pool2d", "avg_pool2d", "max_pool2d_with_indices"):
            return self._pool(name, x, info, args, kwargs) if self._spatial(x, info) else _whole(f"{name} on a moved layout", info)
        if name in ("adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"):
            return self._adaptive(name, x, info, first) if self._spatial(x, info) else _whole(f"{name}", info)
        if name in ("interpolate", "upsample", "upsample_bilinear", "upsample_nearest"):
            return self._interpolate(x, info, first, args, kwargs) if self._spatial(x, info) else _whole(name, info)
        if name == "pad":
            return self._pad(x, info, args, kwargs) if self._spatial(x, info) else _whole("pad on a moved layout", info)
        if info.dims is None:
            return _whole(info.reason or "a map flattened into tokens", info)
        if name in ("permute", "transpose", "swapaxes", "movedim", "swapdims"):
            return self._permute(name, x, info, args, kwargs, first)
        if name == "__getitem__":
            return self._getitem(x, info, args[1], first)
        along = _bind(args, kwargs, ("input", "dim"), {"dim": None})["dim"] if name in _ALONG_DIM else None
        if name in _ALONG_DIM and not isinstance(along, Tensor):   # torch.max(a, b) is pointwise
            dim = along
            dims = list(range(x.dim())) if dim is None else [d % x.dim() for d in (dim if isinstance(dim, (tuple, list)) else [dim])]
            if set(dims) & set(info.dims):
                return _whole(f"'{name}' over the map's height or width", None)
            if first.dim() != x.dim():  # reduced without keepdim: the axes move left
                return _Info(tuple(d - sum(r < d for r in dims) for d in info.dims), info.axes, info.reason)
            return info
        if name in ("layer_norm", "linear", "group_norm", "batch_norm", "instance_norm"):
            if name in ("linear",) and (x.dim() - 1) in info.dims:
                return _whole("linear over the map's width", info)
            return self._union(tracked, first, name) if len(tracked) > 1 else info
        if name in ("cat", "concat", "concatenate"):
            b = _bind(args, kwargs, ("tensors", "dim"), {"dim": 0})
            if b["dim"] % first.dim() in info.dims:
                return _whole("concatenation along height or width", info)
            return self._union(tracked, first, name)
        # anything else: pointwise when the output keeps the inputs' layout and map size
        same = all(
            o.dim() == t.dim() and inf.dims is not None
            and all(o.shape[d] == t.shape[d] or t.shape[d] == 1 for d in inf.dims)
            for o in outs for t, inf in tracked
        )
        if name in ("flatten", "view", "reshape", "unflatten", "view_as", "reshape_as"):
            same = same and all(tuple(o.shape[-2:]) == tuple(x.shape[-2:]) for o in outs) and info.dims == (x.dim() - 2, x.dim() - 1)
        if same:
            return self._union(tracked, first, name)
        if name in ("flatten", "view", "reshape"):
            return _whole("the map is flattened into tokens", None)
        return _whole(f"'{name}' changes the map's layout", None)

    def _permute(self, name, x, info, args, kwargs, out) -> _Info:
        n = x.dim()
        if name == "permute":
            order = args[1:] if len(args) > 2 or not isinstance(args[1] if len(args) > 1 else None, (tuple, list)) else args[1]
            order = kwargs.get("dims", order)
            order = [int(d) % n for d in order]
        else:
            a, b = [int(v) % n for v in (list(args[1:3]) + [kwargs.get(k) for k in ("dim0", "dim1") if k in kwargs])[:2]]
            order = list(range(n))
            if name in ("transpose", "swapaxes", "swapdims"):
                order[a], order[b] = order[b], order[a]
            else:  # movedim(source, destination)
                order.pop(a)
                order.insert(b, a)
        return _Info(tuple(order.index(d) for d in info.dims), info.axes, info.reason)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in _NO_DEPENDENCE:
            return out
        outs = self._outputs(out)
        if not outs:
            return out
        tracked = self._tracked(args, kwargs)
        if not tracked:
            return out
        info = self._after(func, name, args, kwargs, out, tracked)
        if info is not None and info.whole:  # name the first cause, not this op
            cause = next((i.reason for _, i in tracked if i.whole and i.reason), None)
            if cause and cause != info.reason:
                info = dataclasses.replace(info, reason=cause)
        if info is not None:
            for o in outs:
                self.info[o] = info
        return out


# ----------------------------------------------------------------------------------------
# receptive_field
# ----------------------------------------------------------------------------------------
def _module_named(model: nn.Module, layer: str | None, what: str = "layer") -> str:
    if layer is None or layer == "":
        return ""
    if not isinstance(layer, str):
        raise ValueError(f"{what} must be a qualified module name (a str such as 'backbone.layer3'), got {kind(layer)}")
    names = [n for n, _ in model.named_modules() if n]
    if layer not in names and any(c in layer for c in "*?"):   # a capture-style pattern naming one module
        matches = [n for n in names if name_matches(n, layer)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            shown = ", ".join(matches[:6]) + (", ..." if len(matches) > 6 else "")
            raise ValueError(f"{what} pattern {layer!r} matches {len(matches)} modules ({shown}); name one")
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        top = [n for n in names if "." not in n]
        raise ValueError(f"{type(model).__name__} has no module {layer!r}.{hint} "
                         f"Its top-level modules: {', '.join(top)}")
    return layer


def _input_hw(input_size) -> tuple[int, int]:
    if isinstance(input_size, (int, np.integer)) and not isinstance(input_size, bool):
        size = as_int(input_size, "input_size")
        return size, size
    return as_int_tuple(input_size, "input_size", length=2, expected="an integer or (H, W), integers >= 1")


def _first_tensor(output) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (list, tuple)):
        for o in output:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(output, dict):
        for o in output.values():
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def receptive_field(model: nn.Module, layer: str | None = None, input_size=224, in_channels: int | None = None,
                    device="meta") -> ReceptiveField:
    """Theoretical receptive field, stride and start of ``layer``'s output (see the module docstring).

    Args:
        model: any ``nn.Module`` taking a (B, C, H, W) image.
        layer: qualified module name (``"backbone.layer3"``; a :func:`segviz.capture` name
            pattern such as ``"**.layer3"`` when it names exactly one module), or None for the
            model's output. A module called several times reports its last call.
        input_size: (H, W) (or one int) of the forward pass used to follow the data flow. The
            answer does not depend on it, except for adaptive pooling (whether its bins divide
            the map) and a map that gets smaller than 1 px (too small an input errors).
        in_channels: channels of the input image; default the model's ``in_chans``, else the
            first ``Conv2d``'s input channels, else 3.
        device: where the forward runs; ``"meta"`` (default) computes nothing.

    Returns:
        a :class:`ReceptiveField` (size/stride/start per axis (h, w); ``rows()``/``table()`` for
        every module on the way).

    Raises:
        ValueError: unknown layer (with close matches), a layer not called in the forward pass,
            a layer whose output is not a tensor, or bad ``input_size`` / ``in_channels``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layer = _module_named(model, layer)
    hw = _input_hw(input_size)
    if in_channels is None:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        in_channels = getattr(model, "in_chans", None) or (first.in_channels if first is not None else 3)
    in_channels = as_int(in_channels, "in_channels")
    runner = _on_device(model, device)
    modules = dict(runner.named_modules())
    tracker = _Tracker()
    calls: list[tuple[str, str, Tensor]] = []
    results: dict[str, Tensor] = {}

    def hook_for(name):
        def hook(module, _inputs, output):
            t = _first_tensor(output)
            if t is not None:
                calls.append((name, type(module).__name__, t))
                results[name] = t

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in modules.items()]
    x = torch.zeros((1, in_channels) + hw, device=_device_of(runner))
    one = Fraction(1)
    tracker.info[x] = _Info((2, 3), (_Axis(one, one, Fraction(0)), _Axis(one, one, Fraction(0))))
    was_training = runner.training
    runner.eval()
    try:
        with torch.no_grad(), tracker:
            runner(x)
    finally:
        runner.train(was_training)
        for h in handles:
            h.remove()
    if layer not in results:
        raise ValueError(f"module {layer!r} of {type(model).__name__} is not called in the forward pass "
                         "(or returns no tensor); pick a module that computes a feature map")

    def describe(name, type_name, t) -> LayerRF:
        info = tracker.info.get(t)
        if info is None:  # a tensor that does not depend on the input (e.g. a constant)
            return LayerRF(name, type_name, tuple(t.shape), (0, 0), None, None)
        size, stride, start = _axes_numbers(info)
        return LayerRF(name, type_name, tuple(t.shape), size, stride, start)

    rows = []
    for name, type_name, t in calls:
        rows.append(describe(name, type_name, t))
        if name == layer and t is results[layer]:
            last = len(rows)
    rows = rows[:last]
    target = tracker.info.get(results[layer])
    if target is None:
        raise ValueError(f"the output of {layer!r} does not depend on the input image")
    size, stride, start = _axes_numbers(target)
    return ReceptiveField(layer, size, stride, start, target.reason if size is None else "", hw, tuple(rows))


def _axes_numbers(info: _Info):
    if info.axes is None:
        return None, None, None
    size = None if info.whole else tuple(_number(a.size) for a in info.axes)
    return size, tuple(_number(a.jump) for a in info.axes), tuple(_number(a.start) for a in info.axes)


# ----------------------------------------------------------------------------------------
# erf
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ERF:
    """Effective receptive field of the centre unit(s) of one layer.

    Attributes:
        map: (H, W) float64 array over the input, |d unit / d pixel| summed over the input's
            channels, averaged over the images, divided by its maximum (so max 1; all zeros when
            the gradient is zero everywhere).
        area: threshold t -> fraction of the input's pixels where ``map >= t`` (t of the maximum).
        layer: the module's name ("" for the model's output).
        units: the output units whose channel sum was differentiated ((rows), (cols)).
        output_size: (h, w) of the layer's output map.
        images: how many images were averaged.
    """

    map: np.ndarray
    area: dict
    layer: str
    units: tuple
    output_size: tuple[int, int]
    images: int

    def box(self, threshold: float = 0.0) -> tuple[int, int, int, int] | None:
        """(top, left, bottom, right), inclusive, of the pixels where ``map > threshold``; None if none."""
        rows, cols = np.nonzero(self.map > threshold)
        if rows.size == 0:
            return None
        return int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())

    def __repr__(self) -> str:
        ratios = ", ".join(f">= {t:g}: {100 * a:.3g}%" for t, a in self.area.items())
        return f"ERF({self.layer or 'output'}, {self.map.shape[0]}x{self.map.shape[1]} input, area {ratios})"


ERF_THRESHOLDS = (0.2, 0.5, 0.9)


def _map_of(output, layer: str) -> Tensor:
    """The (B, C, h, w) map in a module's output: a 4-D tensor, or ``(tokens (B, N, C), (h, w))``."""
    if isinstance(output, Tensor) and output.dim() == 4:
        return output
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        if (len(output) == 2 and isinstance(output[0], Tensor) and output[0].dim() == 3
                and isinstance(output[1], (tuple, list, torch.Size)) and len(output[1]) == 2):
            tokens, (h, w) = output
            if tokens.shape[1] == h * w:
                return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
        for o in output:
            if isinstance(o, Tensor) and o.dim() == 4:
                return o
    shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
    raise ValueError(f"the output of {layer or 'the model'!r} is not a (B, C, h, w) map (got {shape}); "
                     "pick a layer that outputs a feature map")


def erf(model: nn.Module, images: Tensor, layer: str | None = None,
        thresholds: Sequence[float] = ERF_THRESHOLDS, objective: str = "norm") -> ERF:
    """Effective receptive field (Luo et al. 2016) of the centre unit(s) of ``layer``.

    For each image, the gradient of the centre unit y (a C-vector) of ``layer``'s output map
    with respect to the input pixels; |gradient| summed over the input channels and averaged
    over the images; divided by its maximum. "Centre unit(s)": the middle unit of each axis,
    or the two middle units when the axis is even (so a symmetric network gives a symmetric
    map); their objectives are added.

    The objective differentiated at the centre unit:

    * ``"norm"`` (default): ½‖y‖², whose gradient Σ_c y_c ∂y_c/∂x weighs each channel's
      gradient by its activation there;
    * ``"sum"``: Σ_c y_c, Luo et al.'s "gradient 1 at the centre, 0 elsewhere" on every
      channel. It cancels to exactly zero after a LayerNorm with its initial affine (the
      channels of a normalised vector sum to a constant), e.g. SegFormer's stage outputs;
      hence the default.

    Args:
        model: any segviz model (or ``nn.Module``); it is run in eval mode (restored after).
        images: (B, 3, H, W) or (3, H, W) float tensor, prepared as the model expects (e.g.
            ``segviz.data.sample_image(...).tensor``).
        layer: qualified module name (or a name pattern naming one module, as for
            :func:`receptive_field`) whose output is a (B, C, h, w) map (or a ``(tokens, (h, w))``
            pair), or None for the model's output: ``model.predict(x)`` where the model has one
            (a segviz model's semantic logits at the input size), else the first map ``model(x)``
            returns.
        thresholds: fractions of the maximum in (0, 1]; ``area[t]`` is the fraction of input
            pixels at or above t. Default (0.2, 0.5, 0.9).
        objective: "norm" or "sum" (above).

    Raises:
        ValueError: bad images (not a float tensor of 3 or 4 dims, empty), unknown layer, a layer
            output that is not a map, bad thresholds.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a (B, 3, H, W) float tensor, got {kind(images)}")
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.numel() == 0 or not images.is_floating_point():
        raise ValueError(f"images must be a non-empty (B, C, H, W) or (C, H, W) float tensor, "
                         f"got shape {tuple(images.shape)} of {images.dtype}")
    thresholds = tuple(thresholds) if isinstance(thresholds, Iterable) and not isinstance(thresholds, str) else None
    if not thresholds or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t <= 1 for t in thresholds):
        raise ValueError("thresholds must be a non-empty sequence of numbers in (0, 1], e.g. (0.2, 0.5, 0.9)")
    if objective not in ("norm", "sum"):
        raise ValueError(f"objective must be 'norm' or 'sum', got {objective!r}")
    layer = _module_named(model, layer)
    module = dict(model.named_modules())[layer]
    captured = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    device = _device_of(model)
    x = images.detach().to(device).clone().requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            output = model.predict(x) if layer == "" and callable(getattr(model, "predict", None)) else model(x)
            if layer == "":
                captured.append(output)
            if not captured:
                raise ValueError(f"module {layer!r} is not called in the forward pass")
            fmap = _map_of(captured[-1], layer)
            h, w = fmap.shape[-2:]
            rows = tuple(sorted({(h - 1) // 2, h // 2}))
            cols = tuple(sorted({(w - 1) // 2, w // 2}))
            centre = fmap[:, :, list(rows)][:, :, :, list(cols)]
            target = centre.sum() if objective == "sum" else 0.5 * centre.float().pow(2).sum()
            (grad,) = torch.autograd.grad(target, x)
    finally:
        handle.remove()
        model.train(was_training)
    contribution = grad.abs().sum(1).mean(0).double().cpu().numpy()
    top = contribution.max()
    emap = contribution / top if top > 0 else contribution
    area = {float(t): float((emap >= t).mean()) if top > 0 else 0.0 for t in thresholds}
    return ERF(emap, area, layer, (rows, cols), (int(h), int(w)), int(x.shape[0]))
