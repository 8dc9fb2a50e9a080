"""The Swin explorer: window size, shift on/off, block, head and query pixel, on a real photo.

The pieces, pure functions first and the widget last:

* :func:`window_setting` — run a trained Swin with a smaller window and/or without the shift
  (restored afterwards);
* :func:`swin_records` — one recorded forward pass: every block's window attention, in order;
* :func:`explorer_figure` — the chosen block's attention of the query and the query's reach
  through all blocks up to it;
* :class:`SwinExplorer` — the thin ipywidgets front. It records each (window, shift) setting
  once, when first asked for; moving the block, head or query only redraws.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from segviz.inspect.capture import capture
from segviz.models.swin import SwinStage, window_partition
from segviz.nn.recording import WindowAttentionRecord
from segviz.viz import style
from segviz.viz.arrays import as_image
from segviz.viz.explorers import FigureSender
from segviz.viz.overlays import draw_attention
from segviz.viz.swin import _block_kind, _draw_reach, attention_reach, dense_attention


def _stages(model: nn.Module) -> list[tuple[str, SwinStage]]:
    stages = [(name, m) for name, m in model.named_modules() if isinstance(m, SwinStage)]
    if not stages:
        raise ValueError(f"{type(model).__name__} has no Swin stages (segviz.models.swin.SwinStage)")
    return stages


def trained_window(model: nn.Module) -> int:
    """M, the window the model's relative-position tables were built for (the largest it can use)."""
    return min(block.attn.window_size for _, stage in _stages(model) for block in stage.blocks)


def allowed_windows(model: nn.Module) -> tuple[int, ...]:
    """Window sides the model can run with: 2 … M. A window m < M reads the (2m−1)² central
    offsets of the (2M−1)² bias table, as the official classifier does when a map is smaller
    than its window; a larger window has offsets the table never learned."""
    return tuple(range(2, trained_window(model) + 1))


@contextlib.contextmanager
def window_setting(model: nn.Module, window: int | None = None, shift: bool = True):
    """Inside the ``with``, every Swin stage of ``model`` uses windows of ``window`` tokens
    (default: its own M) and, with ``shift=False``, its SW-MSA blocks do not shift (they become
    W-MSA blocks: no mask, the same windows as the block before). Weights are untouched; the
    settings are restored on exit.

    This is an illustration, not a setting the paper uses: the model was trained with M and
    the shift. ``ValueError`` for a window outside :func:`allowed_windows`.
    """
    stages = _stages(model)
    if window is not None and window not in allowed_windows(model):
        raise ValueError(f"window must be one of {allowed_windows(model)} (the bias tables were learned for "
                         f"M = {trained_window(model)}), got {window}")
    saved = [(stage, stage.window_size, [block.shifted for block in stage.blocks]) for _, stage in stages]
    try:
        for stage, size, shifted in saved:
            if window is not None:
                stage.window_size = window
            for block, was in zip(stage.blocks, shifted):
                block.shifted = was and shift
        yield model
    finally:
        for stage, size, shifted in saved:
            stage.window_size = size
            for block, was in zip(stage.blocks, shifted):
                block.shifted = was


def swin_records(model: nn.Module, x: torch.Tensor, *, window: int | None = None,
                 shift: bool = True) -> dict[str, WindowAttentionRecord]:
    """One forward pass of ``model`` on ``x`` (1, 3, H, W) under :func:`window_setting`;
    returns "stage s · block b" -> that block's WindowAttentionRecord, in forward order."""
    model.eval()
    with window_setting(model, window, shift), torch.no_grad(), capture(model, kinds=["window_attention"]) as rec:
        model(x)
    out = {}
    for name, stage in _stages(model):
        s = int(name.rsplit(".", 1)[-1]) + 1
        for b in range(len(stage.blocks)):
            out[f"stage {s} · block {b + 1}"] = rec.attention[f"{name}.blocks.{b}.attn"]
    return out


class WindowOperator:
    """A record's head-averaged window attention A, as :func:`dense_attention` gives it ((N, N)
    over the unpadded map's tokens, shift undone), kept as its (nW, M², M²) windows: ``v @ op``
    is ``v @ A`` computed window by window (the same sums, without the N² matrix, which at 224
    px is 3136² floats per stage-1 block). ``op.float()`` is ``op``; ``op.dense()`` builds A.
    What :func:`attention_reach` needs from its ``dense`` matrices."""

    def __init__(self, record: WindowAttentionRecord, batch: int = 0):
        self.record = record
        hp, wp = record.padded_hw
        h, w = record.feature_hw
        self.probs = record.probs[batch].float().mean(1)                  # (nW, M², M²)
        position = torch.arange(hp * wp).reshape(1, hp, wp, 1)
        if record.shift:
            position = torch.roll(position, shifts=(-record.shift, -record.shift), dims=(1, 2))
        self.where = window_partition(position, record.window)[..., 0]   # (nW, M²) padded flat positions
        keep = (torch.arange(hp)[:, None] < h) & (torch.arange(wp)[None, :] < w)
        self.keep = keep.flatten().nonzero().squeeze(1)                   # unpadded token -> padded position
        self.padded = hp * wp

    def float(self) -> WindowOperator:
        return self

    def dense(self) -> torch.Tensor:
        return dense_attention(self.record)

    def __rmatmul__(self, v: torch.Tensor) -> torch.Tensor:
        padded = v.new_zeros(self.padded)
        padded[self.keep] = v
        out = torch.bmm(padded[self.where].unsqueeze(1), self.probs).squeeze(1)  # (nW, M²)
        result = v.new_zeros(self.padded)
        result[self.where] = out
        return result[self.keep]


@style.styled
def explorer_figure(image, records: Mapping[str, WindowAttentionRecord], block: str, query: tuple[int, int], *,
                    head: int = 0, dense: Sequence[torch.Tensor] | None = None, note: str = "") -> Figure:
    """Left: the chosen block's attention of the query pixel (its window in cyan, the block's
    partition dashed). Right: the query's reach after all blocks up to this one
    (:func:`segviz.viz.swin.attention_reach`, heads averaged, log scale), with this stage's
    windows in white.

    Args:
        records: every block's record in forward order (e.g. :func:`swin_records`).
        block: the key of the chosen block.
        dense: the records' head-averaged :func:`dense_attention` matrices, or their
            :class:`WindowOperator` objects, when cached.
        note: a line added to the title (e.g. the window setting).
    """
    if block not in records:
        raise ValueError(f"block must be one of {list(records)}, got {block!r}")
    img = as_image(image)
    labels = list(records)
    upto = labels.index(block) + 1
    chosen = records[block]
    head = min(max(int(head), 0), chosen.heads - 1)
    reach = attention_reach([records[k] for k in labels[:upto]], query, img.shape[:2],
                            dense=None if dense is None else list(dense)[:upto])[-1]
    fig = style.figure(9.6, 4.6)
    axes = fig.subplots(1, 2)
    heat = draw_attention(axes[0], img, chosen, query, head)
    fig.colorbar(heat, ax=axes[0], shrink=0.8, label="attention weight")
    axes[0].set_title(f"{block}: {_block_kind(chosen)}, head {head}\n{chosen.window}×{chosen.window} windows"
                      + (f", shifted by {chosen.shift}" if chosen.shift else ""), fontsize=style.SMALL)
    first = records[labels[0]]
    grid = WindowAttentionRecord(first.probs, first.window, first.feature_hw, 0) if first.shift else first
    if tuple(chosen.feature_hw) != tuple(first.feature_hw):
        grid = chosen
    heat = _draw_reach(axes[1], img, reach, grid, query)
    fig.colorbar(heat, ax=axes[1], shrink=0.8, label="log10 of reach / peak")
    spread = int((reach >= 1e-2 * reach.max()).sum())
    axes[1].set_title(f"reach after {upto} block{'s' if upto > 1 else ''} (heads averaged)\n"
                      f"{spread} stage-1 tokens ≥ 1% of peak; white: this stage's windows", fontsize=style.SMALL)
    fig.suptitle(f"query pixel (y={query[0]}, x={query[1]})" + (f" · {note}" if note else ""))
    return fig


class SwinExplorer:
    """Pick a window size, shift on/off, a block, a head and a query pixel.

        SwinExplorer(model, photo.array, photo.tensor, query=(30, 30))

    Attributes: ``window`` (Dropdown), ``shift`` (Checkbox), ``block`` (Dropdown), ``head``,
    ``y``, ``x`` (IntSliders; y, x in pixels), ``figure`` (the last drawn Figure), ``view``
    (the Image widget showing it), ``widget``. Each (window, shift) setting is recorded once
    (one forward pass); other controls only redraw.
    """

    def __init__(self, model: nn.Module, image, x: torch.Tensor, query: tuple[int, int] | None = None,
                 windows: Sequence[int] | None = None):
        self.model, self.x = model, x
        self.image = as_image(image)
        if tuple(x.shape[-2:]) != self.image.shape[:2]:
            raise ValueError(f"the picture {self.image.shape[:2]} and the input {tuple(x.shape[-2:])} differ in size")
        allowed = allowed_windows(model)
        windows = tuple(allowed if windows is None else windows)
        bad = [w for w in windows if w not in allowed]
        if bad or not windows:
            raise ValueError(f"windows must be among {allowed}, got {list(windows)}")
        self._cache: dict[tuple[int, bool], tuple[dict, list]] = {}
        h, w = self.image.shape[:2]
        qy, qx = (h // 2, w // 2) if query is None else query
        trained = trained_window(model)
        self.window = widgets.Dropdown(options=[(f"{m}×{m}" + (" (trained)" if m == trained else ""), m)
                                                for m in windows],
                                       value=trained if trained in windows else windows[-1], description="window")
        self.shift = widgets.Checkbox(value=True, description="shift (SW-MSA)")
        self.block = widgets.Dropdown(options=list(self._records()[0]), description="block")
        self.head = widgets.IntSlider(0, min=0, max=self._heads() - 1, description="head")
        self.y = widgets.IntSlider(qy, min=0, max=h - 1, description="query y")
        self.x_pixel = widgets.IntSlider(qx, min=0, max=w - 1, description="query x")
        self.view = widgets.Image(format="png")
        self.figure = None
        self._sender = FigureSender()
        for control in (self.window, self.shift, self.block):
            control.observe(self._setting_changed, names="value")
        for control in (self.head, self.y, self.x_pixel):
            control.observe(lambda _change: self.redraw(), names="value")
        self.widget = widgets.VBox([widgets.HBox([self.window, self.shift, self.block]),
                                    widgets.HBox([self.head, self.y, self.x_pixel]), self.view])
        self.redraw()

    def _records(self) -> tuple[dict, list]:
        key = (self.window.value if hasattr(self, "window") else trained_window(self.model),
               self.shift.value if hasattr(self, "shift") else True)
        if key not in self._cache:
            records = swin_records(self.model, self.x, window=key[0], shift=key[1])
            self._cache[key] = (records, [WindowOperator(r) for r in records.values()])
        return self._cache[key]

    def _heads(self) -> int:
        return self._records()[0][self.block.value].heads

    def _setting_changed(self, _change) -> None:
        with self.head.hold_trait_notifications():
            self.head.value = min(self.head.value, self._heads() - 1)
            self.head.max = self._heads() - 1
        self.redraw()

    def redraw(self) -> None:
        records, dense = self._records()
        note = f"window {self.window.value}, shift {'on' if self.shift.value else 'off'}"
        if self.window.value != trained_window(self.model) or not self.shift.value:
            note += " (not how it was trained)"
        self.figure = explorer_figure(self.image, records, self.block.value, (self.y.value, self.x_pixel.value),
                                      head=self.head.value, dense=dense, note=note)
        self._sender.show(self.view, self.figure)

    def _repr_mimebundle_(self, **kwargs):
        return style.widget_bundle(self.widget, self.figure, **kwargs)
