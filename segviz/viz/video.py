"""Video Mask2Former's figures: each query's tube across the frames of a clip, and the masked
attention of one query over time.

Pure functions: tensors and arrays in, a ``matplotlib`` Figure out (the conventions of
:mod:`segviz.viz.style`). The video decoder records its cross-attention over the T·h·w pixels of
a clip as a :class:`~segviz.nn.recording.MaskedAttentionRecord` whose key grid is (T·h, w), the
frames stacked top to bottom; :func:`split_frames` cuts such a map into its T frames.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from segviz.nn.recording import MaskedAttentionRecord
from segviz.viz import style
from segviz.viz.arrays import as_image


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float32)


def _clean(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def split_frames(grid_map, frames: int) -> np.ndarray:
    """A map on a video key grid (T·h, w) -> (T, h, w) (frame τ is rows τ·h .. (τ+1)·h - 1)."""
    m = _np(grid_map)
    if m.ndim != 2 or m.shape[0] % frames:
        raise ValueError(f"a ({m.shape}) map is not {frames} frames stacked on a (T·h, w) grid")
    return m.reshape(frames, m.shape[0] // frames, m.shape[1])


def _frames(clip) -> list[np.ndarray]:
    """(T, H, W, 3) uint8 / float, or a list of T images -> list of (H, W, 3) uint8."""
    return [as_image(f) for f in clip]


def tube_colors(n: int) -> np.ndarray:
    """(n, 3) RGB in [0, 1], one per shown query: tab10 then tab20 without their greys (the frames
    are drawn in grey under the colours)."""
    palette = [c[:3] for name in ("tab10", "tab20") for c in matplotlib.colormaps[name].colors
               if not np.allclose(c[0], c[1:3], atol=0.05)]
    return np.array([palette[i % len(palette)] for i in range(n)])


def real_queries(class_logits) -> list[int]:
    """The queries whose most likely class is a real one (not the last, "no object" column)."""
    probs = torch.as_tensor(class_logits).detach().float().softmax(-1)
    return [q for q in range(probs.shape[0]) if int(probs[q].argmax()) != probs.shape[1] - 1]


def _paint(img: np.ndarray, owner: np.ndarray, colors: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Pixels with owner j >= 0 tinted with colors[j] over a grey copy of the photo ([0, 1] floats)."""
    out = np.repeat(img.mean(-1, keepdims=True), 3, axis=-1).astype(np.float64)
    for j, color in enumerate(colors):
        sel = owner == j
        out[sel] = (1 - alpha) * out[sel] + alpha * color
    return out.clip(0, 1)


def _resize_probs(masks: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(N, T, h, w) probabilities -> (N, T, H, W), bilinear."""
    n, t = masks.shape[:2]
    up = torch.nn.functional.interpolate(masks.reshape(n * t, 1, *masks.shape[-2:]), size=hw, mode="bilinear",
                                         align_corners=False)
    return up.reshape(n, t, *hw)


@style.styled
def tube_figure(clip, class_logits, mask_logits, class_names: Sequence[str], *, instances=None,
                matches: Mapping[int, int] | None = None, queries: Sequence[int] | None = None,
                stuff_classes: Sequence[int] = (), title: str | None = None) -> Figure:
    """The clip (top row), its objects (optional middle row, one colour per instance id, the same in
    every frame) and the model's tubes (bottom row): each shown query gets one colour, and a pixel
    of frame τ takes the colour of the query whose mask σ(M_q(τ)) is highest there (if above 0.5).
    A query keeps its colour in every frame, so an object that stays one colour is one tube.

    Args:
        clip: T frames (T, H, W, 3).
        class_logits: (Q, K + 1) of one clip, the last column "no object".
        mask_logits: (Q, T, h, w) tube mask logits (any h, w; resized to the frames).
        class_names: the K class names.
        instances: optional (T, H, W) instance-id maps (0 = background).
        matches: optional {instance id: query} (e.g. the tube matching of the clip): an object is then
            drawn in its query's colour (white when its query is not shown); without it, in colours
            of its own.
        queries: the queries to show; default those predicting a real class that is not one of
            ``stuff_classes`` (e.g. the background, which would cover the picture) and that win at
            least 0.1% of the clip's pixels.
    """
    frames = _frames(clip)
    t = len(frames)
    logits = torch.as_tensor(mask_logits).detach().float()
    probs_cls = torch.as_tensor(class_logits).detach().float().softmax(-1)
    if logits.dim() != 4 or logits.shape[1] != t:
        raise ValueError(f"mask_logits must be (Q, T={t}, h, w), got {tuple(logits.shape)}")
    if probs_cls.shape[0] != logits.shape[0]:
        raise ValueError(f"{probs_cls.shape[0]} queries in class_logits but {logits.shape[0]} tubes")
    if len(class_names) != probs_cls.shape[1] - 1:
        raise ValueError(f"{probs_cls.shape[1] - 1} classes in the logits (plus no-object) but "
                         f"{len(class_names)} class names")
    h, w = frames[0].shape[:2]
    if queries is None:
        stuff = {int(c) for c in stuff_classes}
        queries = [q for q in real_queries(probs_cls.log()) if int(probs_cls[q, :-1].argmax()) not in stuff]
        if queries:  # keep the ones that win a pixel somewhere
            probs = _resize_probs(logits[queries].sigmoid(), (h, w))
            best, arg = probs.max(0)
            won = torch.bincount(arg[best > 0.5].flatten(), minlength=len(queries))
            queries = [q for j, q in enumerate(queries) if won[j] >= 1e-3 * best.numel()]
    else:
        queries = [int(q) for q in queries]
    colors = tube_colors(max(1, len(queries)))
    probs = _resize_probs(logits[queries].sigmoid(), (h, w)) if queries else torch.zeros(0, t, h, w)
    rows = 3 if instances is not None else 2
    fig = style.figure(9.8, 9.8 / t * rows * 1.05 + 1.3)
    axes = np.asarray(fig.subplots(rows, t)).reshape(rows, t)
    for f in range(t):
        axes[0, f].imshow(frames[f])
        axes[0, f].set_title(f"frame {f}", fontsize=style.SMALL)
        if instances is not None:
            inst = _np(instances[f]).astype(np.int64)
            ids = sorted(int(k) for k in np.unique(_np(instances).astype(np.int64)) if k > 0)
            owner = np.full(inst.shape, -1)
            if matches is None:
                for j, k in enumerate(ids):
                    owner[inst == k] = j
                palette = tube_colors(max(1, len(ids)))
            else:
                palette = np.vstack([colors, np.ones((1, 3))])          # the last: an unshown query
                for k in ids:
                    q = matches.get(k)
                    owner[inst == k] = queries.index(q) if q in queries else len(colors)
            axes[1, f].imshow(_paint(frames[f], owner, palette))
            if f == 0:
                axes[1, f].set_ylabel("objects", fontsize=style.SMALL)
        if queries:
            best, arg = probs[:, f].max(0)
            owner = np.where(_np(best) > 0.5, _np(arg).astype(np.int64), -1)
        else:
            owner = np.full((h, w), -1)
        axes[-1, f].imshow(_paint(frames[f], owner, colors))
        if f == 0:
            axes[-1, f].set_ylabel("tubes", fontsize=style.SMALL)
    for ax in axes.reshape(-1):
        _clean(ax)
    handles = [Patch(color=colors[j], label=f"q{q} {class_names[int(probs_cls[q, :-1].argmax())]} "
                                               f"{float(probs_cls[q, :-1].max()):.2f}")
               for j, q in enumerate(queries)]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=style.SMALL,
                   frameon=False)
    fig.suptitle(title or "one query = one tube: the same colour in every frame", fontsize=style.NORMAL)
    return fig


@style.styled
def tube_attention_figure(clip, records: Sequence[MaskedAttentionRecord], mask_logits, query: int, *,
                          head: int | None = None, title: str | None = None) -> Figure:
    """The masked cross-attention of one query over time. Top row: the query's final mask in each
    frame (σ over a grey copy of the frame, white line at 0.5). Then one row per decoder layer: its
    attention over the T·h·w pixels of the level it reads, cut into frames; grey where the mask
    blocked it. One colour scale per row (the row's peak), so the rows show how a query spreads its
    attention over the frames; each panel's title gives the share of the attention mass in that frame.

    Args:
        clip: T frames (T, H, W, 3).
        records: the decoder layers' records (key grid (T·h, w)), in order.
        mask_logits: the query's final tube mask logits (T, h, w).
        query: the query's index; head: an attention head, or None for the mean over heads.
    """
    frames = _frames(clip)
    t = len(frames)
    final = torch.as_tensor(mask_logits).detach().float()
    if final.dim() != 3 or final.shape[0] != t:
        raise ValueError(f"mask_logits must be the query's (T={t}, h, w) tube, got {tuple(final.shape)}")
    h, w = frames[0].shape[:2]
    ext = (-0.5, w - 0.5, h - 0.5, -0.5)
    layers = len(records)
    fig = style.figure(9.8, 9.8 / t * (layers + 1) * 1.1 + 0.8)
    axes = np.asarray(fig.subplots(layers + 1, t)).reshape(layers + 1, t)
    p = _np(final.sigmoid())
    for f in range(t):
        ax = axes[0, f]
        ax.imshow(frames[f].mean(-1), cmap="gray", vmin=0, vmax=1, extent=ext)
        ax.imshow(p[f], cmap="viridis", vmin=0, vmax=1, alpha=0.6, extent=ext)
        ph, pw = p[f].shape
        yy, xx = np.mgrid[0:ph, 0:pw]
        if p[f].min() < 0.5 < p[f].max():
            ax.contour((xx + 0.5) * w / pw - 0.5, (yy + 0.5) * h / ph - 0.5, p[f], levels=[0.5], colors="white",
                       linewidths=1.2)
        ax.set_title(f"frame {f}: final mask", fontsize=style.SMALL)
    for i, record in enumerate(records):
        if head is None:
            amap = _np(record.probs[0, :, int(query)].mean(0).reshape(record.k_hw))
        else:
            amap = _np(record.map_for(int(query), head=head))
        blocked = _np(record.mask_for(int(query), head=0 if head is None else head)).astype(bool)
        amaps, blocks = split_frames(amap, t), split_frames(blocked, t) > 0.5
        peak = max(float(amap.max()), 1e-12)
        total = max(float(amap.sum()), 1e-12)
        for f in range(t):
            ax = axes[i + 1, f]
            ax.imshow(frames[f], extent=ext)
            ax.imshow(amaps[f], cmap="magma", alpha=0.75, interpolation="nearest", extent=ext, vmin=0, vmax=peak)
            shade = np.zeros(blocks[f].shape + (4,), np.float32)
            shade[blocks[f]] = (0.55, 0.55, 0.55, 0.85)
            ax.imshow(shade, interpolation="nearest", extent=ext)
            ax.set_title(f"layer {i}, frame {f}: {100 * float(amaps[f].sum()) / total:.0f}%", fontsize=style.SMALL)
    for ax in axes.reshape(-1):
        _clean(ax)
    kh, kw = records[0].k_hw if records else (0, 0)
    fig.suptitle((title + ": " if title else "") + f"query {query} attends to all {t} frames at once; "
                 + ("mean of heads" if head is None else f"head {head}")
                 + "\none colour scale per layer (black 0, bright = its peak), grey = blocked by the tube mask",
                 fontsize=style.NORMAL)
    return fig
