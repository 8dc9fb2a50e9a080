"""Mask2Former's figures: object queries, the Hungarian matching, deformable sampling points,
masked attention through the decoder layers, and the importance-sampled loss points.

Pure functions: tensors and arrays in, a ``matplotlib`` Figure out (the conventions of
:mod:`segviz.viz.style`). Two helpers prepare data from a model without changing it:

* :func:`pixel_query_index` — which of the pixel decoder's queries sits under a pixel of the
  photo, on a chosen level (its queries are the pixels of all three levels, 1/32 first);
* :func:`init_sampling_records` — the sampling points a freshly initialised deformable
  attention would use on the same image (the official init: ``heads`` directions, points at
  1 .. K pixels, uniform weights), recorded by the same code path as the trained ones.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from segviz.inspect.capture import capture
from segviz.nn.deformable import MSDeformAttn
from segviz.nn.recording import MaskedAttentionRecord, SamplingRecord
from segviz.viz import style
from segviz.viz.arrays import as_image
from segviz.viz.overlays import LEVEL_COLORS, QUERY_COLOR, _photo

NO_OBJECT_GREY = "#9e9e9e"


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float32)


def _clean(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def level_name(shape: tuple[int, int], image_hw: tuple[int, int]) -> str:
    """'1/8 (32×32)' for a (32, 32) level of a 256 px image."""
    stride = max(1, round(image_hw[0] / shape[0]))
    return f"1/{stride} ({shape[0]}×{shape[1]})"


# ----------------------------------------------------------------------------------------
# 1. Object queries
# ----------------------------------------------------------------------------------------
@style.styled
def query_predictions_figure(image, class_logits, mask_logits, class_names: Sequence[str], *,
                             title: str | None = None, columns: int = 8) -> Figure:
    """One panel per object query: its mask σ(m_q) over the photo in grey, titled with the class it
    predicts and that class's probability. A query whose most likely class is "no object" (the
    last column of the logits) is drawn in grey with a grey title: it does not take part.

    Args:
        image: the photo (H, W, 3).
        class_logits: (N, K + 1) logits of one image, the last column "no object".
        mask_logits: (N, h, w) mask logits (any size; shown stretched over the photo).
        class_names: the K class names.
    """
    img = as_image(image)
    probs = torch.as_tensor(class_logits).float().softmax(-1)
    masks = torch.as_tensor(mask_logits).float().sigmoid()
    n, k1 = probs.shape
    if len(class_names) != k1 - 1:
        raise ValueError(f"{k1 - 1} classes in the logits (plus no-object) but {len(class_names)} class names")
    if masks.shape[0] != n:
        raise ValueError(f"{n} queries in class_logits but {masks.shape[0]} masks")
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    fig = style.figure(9.8, 9.8 / columns * rows * 1.3 + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, columns)).reshape(-1)
    h, w = img.shape[:2]
    real = 0
    for q in range(n):
        ax = axes[q]
        best = int(probs[q].argmax())
        empty = best == k1 - 1
        m = _np(masks[q])
        if empty:
            ax.imshow(img.mean(-1), cmap="gray", vmin=0, vmax=255 * 3, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
            ax.imshow(m, cmap="Greys", vmin=0, vmax=1, alpha=0.35, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
            label, color = f"q{q}\nno object {probs[q, best]:.2f}", NO_OBJECT_GREY
        else:
            real += 1
            ax.imshow(img.mean(-1), cmap="gray", vmin=0, vmax=255, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
            ax.imshow(m, cmap="viridis", vmin=0, vmax=1, alpha=0.7, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
            label, color = f"q{q}\n{class_names[best]} {probs[q, best]:.2f}", "black"
        ax.set_title(label, fontsize=style.SMALL, color=color)
        _clean(ax)
        if empty:
            for spine in ax.spines.values():
                spine.set_edgecolor(NO_OBJECT_GREY)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle((title + "\n" if title else "") + f"{real} of {n} queries predict an object (colour: σ(mask)); "
                 f"grey: 'no object'", fontsize=style.NORMAL)
    return fig


# ----------------------------------------------------------------------------------------
# 2. Hungarian matching
# ----------------------------------------------------------------------------------------
@style.styled
def matching_figure(costs: Mapping[str, torch.Tensor], assignment: tuple, target_names: Sequence[str], *,
                    weights: tuple[float, float, float] = (2.0, 5.0, 5.0), title: str | None = None) -> Figure:
    """The matching cost of one image, queries (rows) × ground-truth segments (columns): the
    three terms side by side (class −p_q(c_t), mask BCE, Dice) and their weighted sum; the
    Hungarian assignment (one query per segment, least total cost) is boxed in every panel.

    Args:
        costs: :func:`segviz.models.mask2former.matching_cost`'s dict (``class``, ``mask``,
            ``dice``, ``total``, each (Q, T)).
        assignment: (query indices, target indices) from ``hungarian_match``.
        target_names: a label per segment (its class name).
        weights: the weights of class, mask, dice in the total (for the titles).
    """
    terms = [("class", f"class: −p(class)  ×{weights[0]:g}"), ("mask", f"mask BCE  ×{weights[1]:g}"),
             ("dice", f"Dice  ×{weights[2]:g}"), ("total", "weighted sum = cost")]
    for key, _ in terms:
        if key not in costs:
            raise ValueError(f"costs needs the keys class, mask, dice, total; {key!r} is missing")
    q, t = costs["total"].shape
    if len(target_names) != t:
        raise ValueError(f"{t} targets in the cost matrix but {len(target_names)} target names")
    rows, cols = (_np(a).astype(int) for a in assignment)
    fig = style.figure(9.8, 1.6 + 0.24 * q)
    axes = fig.subplots(1, 4, sharey=True)
    for ax, (key, label) in zip(axes, terms):
        c = _np(costs[key])
        im = ax.imshow(c, cmap="viridis_r", aspect="auto", interpolation="nearest")
        for r, col in zip(rows, cols):
            ax.add_patch(Rectangle((col - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="#ff3b30", lw=2.2))
        ax.set_xticks(range(t))
        ax.set_xticklabels(target_names, rotation=45, ha="right")
        ax.set_title(label, fontsize=style.SMALL)
        fig.colorbar(im, ax=ax, shrink=0.85)
    axes[0].set_yticks(range(q))
    axes[0].set_yticklabels([f"q{i}" for i in range(q)])
    axes[0].set_ylabel("object query")
    fig.suptitle((title + ": " if title else "") + f"{q} queries × {t} segments; red box: the Hungarian match "
                 f"(yellow = cheap)", fontsize=style.NORMAL)
    return fig


# ----------------------------------------------------------------------------------------
# 3. Deformable sampling points
# ----------------------------------------------------------------------------------------
def pixel_query_index(record: SamplingRecord, pixel_yx: tuple[int, int], image_hw: tuple[int, int],
                      level: int = -1) -> int:
    """The index, among the pixel decoder's queries, of the pixel of ``level`` (an index into
    ``record.level_shapes``; -1: the finest) under the photo's pixel (y, x). The queries are the
    pixels of every level, flattened row-major, level 0 first."""
    shapes = list(record.level_shapes)
    if not -len(shapes) <= level < len(shapes):
        raise ValueError(f"level must be in [-{len(shapes)}, {len(shapes) - 1}], got {level}")
    level %= len(shapes)
    if sum(h * w for h, w in shapes) != record.locations.shape[1]:
        raise ValueError("these queries are not the pixels of the levels (object queries?); give an index")
    h, w = image_hw
    y, x = pixel_yx
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"pixel {tuple(pixel_yx)} is outside the image {tuple(image_hw)}")
    lh, lw = shapes[level]
    row, col = min(int(y * lh / h), lh - 1), min(int(x * lw / w), lw - 1)
    return sum(a * b for a, b in shapes[:level]) + row * lw + col


@torch.no_grad()
def init_sampling_records(model: nn.Module, x: torch.Tensor) -> dict[str, SamplingRecord]:
    """Record every deformable attention of a copy of ``model`` whose :class:`MSDeformAttn`
    modules are re-initialised (the official init), on ``x``: where the points sit before any
    training. The model itself is not touched. Returns name -> record (as ``rec.sampling``)."""
    fresh = copy.deepcopy(model).eval()
    torch.manual_seed(0)
    for m in fresh.modules():
        if isinstance(m, MSDeformAttn):
            m.reset_parameters()
    with capture(fresh, kinds=["sampling"]) as rec:
        fresh(x)
    return dict(rec.sampling)


def _draw_level_points(ax, img, record: SamplingRecord, index: int, head: int, level: int, *, all_levels: bool):
    h, w = img.shape[:2]
    locs, weights = (_np(t) for t in record.points_for(index, head=head))
    _photo(ax, img)
    lh, lw = record.level_shapes[level]
    ch, cw = h / lh, w / lw
    if lh <= 64:
        for i in range(1, lh):
            ax.axhline(i * ch - 0.5, color="white", lw=0.4, alpha=0.35)
        for j in range(1, lw):
            ax.axvline(j * cw - 0.5, color="white", lw=0.4, alpha=0.35)
    ref = _np(record.reference_points[0, index]).reshape(-1, 2)
    ref = ref[level if ref.shape[0] > 1 else 0]
    rx, ry = ref[0] * w - 0.5, ref[1] * h - 0.5
    shown = range(locs.shape[0]) if all_levels else [level]
    for lev in shown:
        color = LEVEL_COLORS[lev % len(LEVEL_COLORS)]
        px, py = locs[lev, :, 0] * w - 0.5, locs[lev, :, 1] * h - 0.5
        for x1, y1 in zip(px, py):
            ax.plot([rx, x1], [ry, y1], color=color, lw=0.8, alpha=0.7)
        ax.scatter(px, py, s=15 + 900 * weights[lev], facecolor=color, edgecolor="black", lw=0.7, zorder=3)
    ax.plot([rx], [ry], marker="*", color="white", mec="black", ms=15, zorder=4)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    _clean(ax)
    outside = int(((locs[level] < 0) | (locs[level] > 1)).any(-1).sum())
    return float(weights[level].sum()), outside


@style.styled
def sampling_figure(image, records: Mapping[str, SamplingRecord], pixel_yx: tuple[int, int], *, head: int = 0,
                    query_level: int = -1, title: str | None = None, panel: float = 3.2) -> Figure:
    """Where one query pixel of the pixel decoder's deformable attention samples: one row per
    record (e.g. "init" and "trained"), one panel per level. The star is the reference point
    (the query pixel's centre, the same image point on every level); dots are the head's K
    sampling points on that level, their area proportional to the attention weight, joined to
    the star by their offset; faint lines are the level's pixel grid. The title of each panel
    gives the share of the head's weight (which sums to 1 over all levels' points) on that level.

    Args:
        image: the photo the model saw (H, W, 3).
        records: label -> :class:`SamplingRecord` of a pixel-decoder encoder layer.
        pixel_yx: the query pixel in the photo.
        head: the attention head.
        query_level: which level's pixel is the query (an index into ``level_shapes``; -1 finest).
        panel: the side of one panel in inches (an explorer draws smaller panels, faster).
    """
    if not isinstance(records, Mapping) or not records:
        raise ValueError("records must be a non-empty mapping: label -> SamplingRecord")
    img = as_image(image)
    for label, record in records.items():
        if not isinstance(record, SamplingRecord):
            raise ValueError(f"records[{label!r}] is a {type(record).__name__}, not a SamplingRecord")
    first = next(iter(records.values()))
    levels = len(first.level_shapes)
    fig = style.figure(levels * (panel + 0.07), 0.75 + (panel + 0.15) * len(records))
    axes = np.asarray(fig.subplots(len(records), levels)).reshape(len(records), levels)
    for row, (label, record) in enumerate(records.items()):
        if not 0 <= head < record.heads:
            raise ValueError(f"head must be in [0, {record.heads - 1}], got {head}")
        index = pixel_query_index(record, pixel_yx, img.shape[:2], query_level)
        for level in range(levels):
            share, outside = _draw_level_points(axes[row, level], img, record, index, head, level, all_levels=False)
            color = LEVEL_COLORS[level % len(LEVEL_COLORS)]
            axes[row, level].set_title(f"{label}: level {level_name(record.level_shapes[level], img.shape[:2])}\n"
                                       f"Σ weight here = {share:.2f}"
                                       + (f", {outside} point(s) off the map" if outside else ""),
                                       fontsize=style.SMALL)
            for spine in axes[row, level].spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(2.5)
    q_level = first.level_shapes[query_level % levels]
    fig.suptitle((title + ": " if title else "") + f"query pixel (y={pixel_yx[0]}, x={pixel_yx[1]}) on level "
                 f"{level_name(q_level, img.shape[:2])}, head {head}\n★ reference point, dot area = weight",
                 fontsize=style.NORMAL)
    return fig


# ----------------------------------------------------------------------------------------
# 4. Masked attention through the decoder layers
# ----------------------------------------------------------------------------------------
@style.styled
def masked_attention_layers_figure(image, records: Sequence[MaskedAttentionRecord], mask_logits: Sequence,
                                   query: int, *, head: int | None = None, title: str | None = None) -> Figure:
    """One object query through the decoder. Top row: the mask it predicted before each layer,
    σ(m) over the photo (white line: 0.5, the attention mask's threshold) and, last, its final
    mask. Bottom row: that layer's cross-attention over the level it reads, grey where the mask
    blocked it (σ < 0.5), so the weight can only sit inside the white line.

    Args:
        records: the decoder layers' :class:`MaskedAttentionRecord` s, in order.
        mask_logits: the query's mask logits (h, w) before layer 0, 1, ... and after the last
            (``len(records) + 1`` maps; the heads' predictions in order).
        query: the object query's index.
        head: an attention head, or None for the mean over heads.
    """
    img = as_image(image)
    layers = len(records)
    if len(mask_logits) != layers + 1:
        raise ValueError(f"{layers} layers need {layers + 1} mask predictions (before each, and the final one), "
                         f"got {len(mask_logits)}")
    h, w = img.shape[:2]
    ext = (-0.5, w - 0.5, h - 0.5, -0.5)
    fig = style.figure(9.8, 5.4)
    axes = fig.subplots(2, layers + 1)
    for i, m in enumerate(mask_logits):
        ax = axes[0, i]
        p = _np(torch.as_tensor(m).float().sigmoid())
        ax.imshow(img.mean(-1), cmap="gray", vmin=0, vmax=255, extent=ext)
        ax.imshow(p, cmap="viridis", vmin=0, vmax=1, alpha=0.6, extent=ext)
        ph, pw = p.shape
        yy, xx = np.mgrid[0:ph, 0:pw]
        if p.min() < 0.5 < p.max():
            ax.contour((xx + 0.5) * w / pw - 0.5, (yy + 0.5) * h / ph - 0.5, p, levels=[0.5], colors="white",
                       linewidths=1.5)
        ax.set_title(f"mask before layer {i}" if i < layers else "final mask", fontsize=style.SMALL)
        _clean(ax)
    for i, record in enumerate(records):
        ax = axes[1, i]
        if head is None:
            amap = _np(record.probs[0, :, int(query)].mean(0).reshape(record.k_hw))
        else:
            amap = _np(record.map_for(int(query), head=head))
        blocked = _np(record.mask_for(int(query), head=0 if head is None else head))
        ax.imshow(img, extent=ext)
        ax.imshow(amap, cmap="magma", alpha=0.75, interpolation="nearest", extent=ext, vmin=0,
                  vmax=max(float(amap.max()), 1e-12))
        shade = np.zeros(blocked.shape + (4,), np.float32)
        shade[blocked > 0] = (0.55, 0.55, 0.55, 0.85)
        ax.imshow(shade, interpolation="nearest", extent=ext)
        kh, kw = record.k_hw
        open_ = int((blocked == 0).sum())
        ax.set_title(f"layer {i} reads {level_name((kh, kw), (h, w))}\n{open_} of {kh * kw} open, "
                     f"peak {float(amap.max()):.2f}",
                     fontsize=style.SMALL)
        _clean(ax)
    axes[1, layers].axis("off")
    axes[1, layers].text(0.05, 0.5, "bottom row:\nattention of the\nquery, black = 0,\nbright = the\npanel's peak;\ngrey = blocked",
                         fontsize=style.SMALL, va="center", transform=axes[1, layers].transAxes)
    fig.suptitle((title + ": " if title else "") + f"query {query}, "
                 + ("mean of heads" if head is None else f"head {head}") + "; grey = blocked by the mask",
                 fontsize=style.NORMAL)
    return fig


# ----------------------------------------------------------------------------------------
# 5. Importance-sampled loss points
# ----------------------------------------------------------------------------------------
@style.styled
def uncertain_points_figure(image, mask_logits, points, uncertain: int, *, target=None,
                            title: str | None = None) -> Figure:
    """The points a mask loss is computed on (PointRend's importance sampling): left, the
    predicted mask σ(m) with the 0.5 line; middle, the uncertainty −|m| (bright near 0.5) with the
    first ``uncertain`` points (the most uncertain of 3× as many random candidates, red) and the
    rest (fresh uniform points, cyan); right, the points on the ground-truth mask, when given.

    Args:
        mask_logits: (h, w) logits of one mask.
        points: (P, 2), (x, y) in [0, 1], the uncertain ones first (as ``uncertain_points`` returns them).
        uncertain: how many of the points are the importance-sampled ones.
        target: optional (H, W) ground-truth mask.
    """
    img = as_image(image)
    logits = _np(torch.as_tensor(mask_logits).float())
    pts = _np(points)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must be (P, 2), got {pts.shape}")
    if not 0 <= uncertain <= len(pts):
        raise ValueError(f"uncertain must be in [0, {len(pts)}], got {uncertain}")
    h, w = img.shape[:2]
    ext = (-0.5, w - 0.5, h - 0.5, -0.5)
    panels = 3 if target is not None else 2
    fig = style.figure(9.8, 9.8 / panels + 0.6)
    axes = fig.subplots(1, panels)
    p = 1 / (1 + np.exp(-logits))
    axes[0].imshow(img.mean(-1), cmap="gray", vmin=0, vmax=255, extent=ext)
    im = axes[0].imshow(p, cmap="viridis", vmin=0, vmax=1, alpha=0.6, extent=ext)
    ph, pw = p.shape
    yy, xx = np.mgrid[0:ph, 0:pw]
    gx, gy = (xx + 0.5) * w / pw - 0.5, (yy + 0.5) * h / ph - 0.5
    if p.min() < 0.5 < p.max():
        axes[0].contour(gx, gy, p, levels=[0.5], colors="white", linewidths=1.5)
    fig.colorbar(im, ax=axes[0], shrink=0.8, label="σ(mask)")
    axes[0].set_title("predicted mask", fontsize=style.SMALL)
    im = axes[1].imshow(-np.abs(logits), cmap="magma", extent=ext)
    fig.colorbar(im, ax=axes[1], shrink=0.8, label="−|logit|")
    x, y = pts[:, 0] * w - 0.5, pts[:, 1] * h - 0.5
    for ax in axes[1:]:
        ax.scatter(x[uncertain:], y[uncertain:], s=9, c=QUERY_COLOR, edgecolors="black", linewidths=0.3,
                   label=f"{len(pts) - uncertain} random")
        ax.scatter(x[:uncertain], y[:uncertain], s=9, c="#ff3b30", edgecolors="black", linewidths=0.3,
                   label=f"{uncertain} most uncertain")
    axes[1].set_title("uncertainty and the loss points", fontsize=style.SMALL)
    axes[1].legend(loc="lower left", fontsize=style.SMALL, framealpha=0.85)
    if target is not None:
        axes[2].imshow(_np(torch.as_tensor(target).float()), cmap="gray", vmin=0, vmax=1, extent=ext)
        axes[2].set_title("the points on the ground truth", fontsize=style.SMALL)
    for ax in axes:
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        _clean(ax)
    fig.suptitle((title + ": " if title else "") + f"{len(pts)} points instead of {h * w} pixels; "
                 f"{uncertain} where the mask is unsure", fontsize=style.NORMAL)
    return fig


# ----------------------------------------------------------------------------------------
# 6. Training
# ----------------------------------------------------------------------------------------
@style.styled
def training_figure(losses: Sequence[float], val_history: Sequence[tuple[int, float]],
                    layer_losses: Sequence[Mapping[str, float]] | None = None, *,
                    weights: tuple[float, float, float] = (2.0, 5.0, 5.0), smooth: int = 25,
                    title: str | None = None) -> Figure:
    """Left: the training loss per step (thin) and its running mean over ``smooth`` steps, with
    the held-out mIoU on a second axis. Right (when given): the weighted class / mask / Dice
    losses of every prediction, from the learnable queries (before layer 0) to the final one:
    deep supervision makes each of them a segmentation on its own.

    Args:
        losses: the total loss of every step (the card's ``losses``).
        val_history: [(step, mIoU)] (the card's ``val_history``).
        layer_losses: per prediction, in decoder order, the unweighted ``class``, ``mask``, ``dice``.
    """
    loss = np.asarray(losses, dtype=np.float64)
    if loss.ndim != 1 or not len(loss):
        raise ValueError("losses must be a non-empty sequence of numbers")
    panels = 2 if layer_losses else 1
    fig = style.figure(9.8, 3.6)
    axes = np.atleast_1d(fig.subplots(1, panels))
    ax = axes[0]
    steps = np.arange(1, len(loss) + 1)
    ax.plot(steps, loss, color="#90caf9", lw=0.6, label="loss per step")
    k = max(1, min(int(smooth), len(loss)))
    mean = np.convolve(loss, np.ones(k) / k, mode="valid")
    ax.plot(steps[k - 1:], mean, color="#1565c0", lw=2, label=f"mean of {k} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("set-criterion loss (all layers)")
    if val_history:
        v = np.asarray(val_history, dtype=np.float64)
        twin = ax.twinx()
        twin.plot(v[:, 0], v[:, 1], "o-", color="#e65100", label="held-out mIoU")
        twin.set_ylabel("held-out mIoU", color="#e65100")
        twin.tick_params(axis="y", colors="#e65100")
        twin.legend(loc="lower right", fontsize=style.SMALL)
    ax.legend(loc="upper right", fontsize=style.SMALL)
    ax.set_title("training", fontsize=style.SMALL)
    if layer_losses:
        ax = axes[1]
        n = len(layer_losses)
        bottom = np.zeros(n)
        for key, wt, color in (("class", weights[0], "#8e24aa"), ("mask", weights[1], "#43a047"),
                               ("dice", weights[2], "#fb8c00")):
            vals = np.array([float(l[key]) * wt for l in layer_losses])
            ax.bar(range(n), vals, bottom=bottom, color=color, label=f"{key} ×{wt:g}")
            bottom += vals
        ax.set_xticks(range(n))
        ax.set_xticklabels(["learnable\nqueries"] + [f"after\nlayer {i}" for i in range(n - 1)])
        ax.set_ylabel("weighted loss")
        ax.set_ylim(0, 1.35 * float(bottom.max()))
        ax.legend(fontsize=style.SMALL, ncols=3, loc="upper center")
        ax.set_title("each prediction's loss (deep supervision)", fontsize=style.SMALL)
    if title:
        fig.suptitle(title, fontsize=style.NORMAL)
    return fig


def _term_curves(terms: Mapping[str, Sequence[float]]) -> tuple[np.ndarray, dict[int, dict[str, np.ndarray]]]:
    """The card's ``loss_terms`` as (steps, {prediction index: {term: values}})."""
    if "steps" not in terms:
        raise ValueError("terms must be a card's loss_terms: {'steps': [...], 'p0/class': [...], ...}")
    steps = np.asarray(terms["steps"], dtype=np.float64)
    by_pred: dict[int, dict[str, np.ndarray]] = {}
    for key, values in terms.items():
        if key == "steps":
            continue
        pred, _, term = key.partition("/")
        if not pred.startswith("p") or not pred[1:].isdigit() or term not in ("class", "mask", "dice"):
            raise ValueError(f"terms: unknown entry {key!r}; allowed 'p<i>/class', 'p<i>/mask', 'p<i>/dice'")
        values = np.asarray(values, dtype=np.float64)
        if values.shape != steps.shape:
            raise ValueError(f"terms: {key!r} has {len(values)} values for {len(steps)} steps")
        by_pred.setdefault(int(pred[1:]), {})[term] = values
    if not by_pred or any(set(t) != {"class", "mask", "dice"} for t in by_pred.values()):
        raise ValueError("terms must hold class, mask and dice for every prediction")
    return steps, dict(sorted(by_pred.items()))


@style.styled
def loss_terms_figure(losses: Sequence[float], val_history: Sequence[tuple[int, float]],
                      terms: Mapping[str, Sequence[float]], *, weights: tuple[float, float, float] = (2.0, 5.0, 5.0),
                      smooth: int = 25, title: str | None = None) -> Figure:
    """Training curves from a model card: (left) the total loss and held-out mIoU; (middle) the
    final prediction's matched losses, class / mask / Dice, weighted as in the total; (right) every
    prediction's weighted loss (the learnable queries' p0, then after each decoder layer): the
    auxiliary losses of deep supervision.

    Args:
        losses, val_history: the card's ``losses`` and ``val_history``.
        terms: the card's ``loss_terms``, ``{"steps": [...], "p<i>/<term>": [...]}``, each value
            the mean over the steps since the previous entry.
    """
    loss = np.asarray(losses, dtype=np.float64)
    if loss.ndim != 1 or not len(loss):
        raise ValueError("losses must be a non-empty sequence of numbers")
    steps, by_pred = _term_curves(terms)
    fig = style.figure(9.8, 3.4)
    ax, mid, right = fig.subplots(1, 3)
    x = np.arange(1, len(loss) + 1)
    ax.plot(x, loss, color="#90caf9", lw=0.6, label="per step")
    k = max(1, min(int(smooth), len(loss)))
    ax.plot(x[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), color="#1565c0", lw=2, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("total loss (all predictions)")
    ax.legend(loc="upper right", fontsize=style.SMALL)
    if val_history:
        v = np.asarray(val_history, dtype=np.float64)
        twin = ax.twinx()
        twin.plot(v[:, 0], v[:, 1], "o-", color="#e65100", ms=4)
        twin.set_ylabel("held-out mIoU", color="#e65100")
        twin.tick_params(axis="y", colors="#e65100")
    ax.set_title("training loss, mIoU (orange)", fontsize=style.SMALL)
    final = max(by_pred)
    for (key, wt), color in zip(zip(("class", "mask", "dice"), weights), ("#8e24aa", "#43a047", "#fb8c00")):
        mid.plot(steps, wt * by_pred[final][key], color=color, lw=1.5, label=f"{key} ×{wt:g}")
    mid.set_xlabel("step")
    mid.set_ylabel("weighted loss")
    top = max(float(np.nanmax(wt * by_pred[final][key])) for key, wt in zip(("class", "mask", "dice"), weights))
    mid.set_ylim(0, 1.3 * top)  # room for the legend above the curves
    mid.legend(fontsize=style.SMALL, loc="upper center", ncols=3, handlelength=1.0, columnspacing=0.8)
    mid.set_title("final prediction: matched losses", fontsize=style.SMALL)
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(by_pred)))
    for (i, t), color in zip(by_pred.items(), colors):
        total = sum(wt * t[key] for key, wt in zip(("class", "mask", "dice"), weights))
        label = "learnable queries" if i == 0 else f"after layer {i - 1}"
        right.plot(steps, total, color=color, lw=2.2 if i == final else 1.2, label=label)
    right.set_xlabel("step")
    right.set_ylabel("weighted loss")  # not from 0: the differences between the predictions are the point
    right.legend(fontsize=style.SMALL, loc="lower left", title="prediction", title_fontsize=style.SMALL,
                 framealpha=0.8)
    right.set_title("every prediction (auxiliary losses)", fontsize=style.SMALL)
    if title:
        fig.suptitle(title, fontsize=style.NORMAL)
    return fig


def _segments_overlay(ax, img: np.ndarray, classes, masks, class_names: Sequence[str], stuff=(),
                      alpha: float = 0.6) -> None:
    """Each object segment in its own colour over the photo, outlined, its class written at its
    centre; ``stuff`` classes are outlined and named but not filled."""
    cmap = matplotlib.colormaps["tab10"]
    out = np.asarray(img, dtype=np.float64) * (255.0 if np.asarray(img).dtype.kind == "f" else 1.0)
    masks = _np(masks).astype(bool)
    things = [k for k, c in enumerate(torch.as_tensor(classes).long().tolist()) if c not in stuff]
    for n, k in enumerate(things):
        color = np.asarray(cmap(n % 10)[:3]) * 255
        out[masks[k]] = (1 - alpha) * out[masks[k]] + alpha * color
    ax.imshow(out.astype(np.uint8))
    for k, (c, mask) in enumerate(zip(torch.as_tensor(classes).long().tolist(), masks)):
        if mask.any():
            ax.contour(mask, levels=[0.5], colors="white", linewidths=0.8)
            ys, xs = np.nonzero(mask)
            iy = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)  # a pixel of the segment near its centre
            ax.text(xs[iy], ys[iy], class_names[c], color="black", fontsize=style.SMALL, ha="center", va="center",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    _clean(ax)


@style.styled
def panoptic_figure(image, truth: tuple, prediction: tuple, class_names: Sequence[str], *,
                    stuff_classes: Sequence[int] = (), title: str | None = None) -> Figure:
    """The objects of an image (left) and the segments of a panoptic prediction (right), one colour
    per segment, so that two objects of one class show as two segments.

    Args:
        image: (H, W, 3) photo.
        truth, prediction: ``(classes (S,), masks (S, H, W) bool)`` (more entries are ignored), e.g.
            ``panoptic_targets(...)[0]`` and ``model.panoptic(x)[0]``.
        stuff_classes: classes drawn as outlined regions without a colour (e.g. the background).
    """
    img = as_image(image)
    for name, seg in (("truth", truth), ("prediction", prediction)):
        classes, masks = seg[0], seg[1]
        if len(classes) != len(masks) or (len(masks) and tuple(masks.shape[1:]) != img.shape[:2]):
            raise ValueError(f"{name}: need (classes (S,), masks (S, H, W)) at the image size {img.shape[:2]}, "
                             f"got {len(classes)} classes and masks {tuple(masks.shape)}")
    fig = style.figure(8.0, 4.2)
    axes = fig.subplots(1, 2)
    for ax, (name, seg) in zip(axes, (("the objects (ground truth)", truth), ("panoptic prediction", prediction))):
        _segments_overlay(ax, img, seg[0], seg[1], class_names, stuff=set(int(c) for c in stuff_classes))
        ax.set_title(f"{name}: {len(seg[0])} segments", fontsize=style.NORMAL)
    if title:
        fig.suptitle(title, fontsize=style.LARGE)
    return fig
