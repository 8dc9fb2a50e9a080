"""Comparing architectures: ERF grid, attention distance, cost against quality, one query in every model.

Matplotlib figures follow ``segviz.viz.style``. The interactive charts are **plotly** figures;
:class:`WithFallback` shows one in a notebook together with a static matplotlib picture of the
same data, in one output: JupyterLab renders the plotly data with its plotly extension
(``jupyterlab-plotly``, installed with plotly 5+; mimetype ``application/vnd.plotly.v1+json``,
no plotly.js in the notebook, no CDN), and a reader of the saved file in a repository browser,
which cannot run plotly, sees the PNG. (Plotly's own ``notebook`` renderer would instead embed
3.5 MB of plotly.js in every saved notebook, or load it from a CDN.)

plotly is imported inside the functions that need it, so ``import segviz.viz`` does not pay for it.
"""
from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from segviz.inspect.attention_distance import AttentionDistance, mean_pairwise_distance
from segviz.inspect.compare import ComparisonTable
from segviz.inspect.receptive_field import ERF
from segviz.nn.recording import AttentionRecord, DeformedGridRecord, SamplingRecord, WindowAttentionRecord
from segviz.viz import style
from segviz.viz.arrays import as_image, as_plane

__all__ = [
    "WithFallback", "attention_distance_figure", "cost_quality_figure", "cost_quality_static", "erf_grid_figure",
    "heatmap_figure", "heatmap_static", "query_row_figure",
]

PLOTLY_MIME = "application/vnd.plotly.v1+json"


# --------------------------------------------------------------------------- plotly with a static fallback
class WithFallback:
    """A plotly figure and a matplotlib picture of the same data, shown as one notebook output
    holding both: ``application/vnd.plotly.v1+json`` (JupyterLab's plotly extension draws it,
    interactive, offline) and ``image/png`` (what a repository browser shows)."""

    def __init__(self, plotly_figure, fallback: Figure):
        self.figure = plotly_figure
        self.fallback = fallback

    def png(self) -> bytes:
        buffer = io.BytesIO()
        self.fallback.savefig(buffer, format="png", dpi=self.fallback.dpi, bbox_inches="tight")
        return buffer.getvalue()

    def plotly_json(self) -> dict:
        """The figure as the plotly mimetype carries it (JSON-safe, no plotly.js, no script)."""
        import plotly.io as pio

        return json.loads(pio.to_json(self.figure, validate=False, remove_uids=False))

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {PLOTLY_MIME: self.plotly_json(), "image/png": base64.b64encode(self.png()).decode("ascii"),
                "text/plain": f"<{type(self.figure).__name__} with a static PNG fallback>"}


def _plotly_layout(fig, title: str, width: int = 900, height: int = 520) -> None:
    fig.update_layout(title=dict(text=title, font=dict(size=15)), width=width, height=height, template="plotly_white",
                      font=dict(size=13), margin=dict(l=70, r=30, t=70, b=60))


# --------------------------------------------------------------------------- ERF grid
def _erf_map(value) -> tuple[np.ndarray, float | None]:
    if isinstance(value, ERF):
        return value.map, None
    return as_plane(value), None


def _area(value, plane: np.ndarray, threshold: float) -> float:
    if isinstance(value, ERF) and float(threshold) in value.area:
        return value.area[float(threshold)]
    top = plane.max()
    return float((plane / top >= threshold).mean()) if top > 0 else 0.0


@style.styled
def erf_grid_figure(erfs: Mapping[str, Mapping[str, object]], *, threshold: float = 0.2, gamma: float = 0.5,
                    title: str = "Effective receptive fields", windows: Mapping[str, Mapping[str, tuple]] | None = None,
                    panel: float = 1.75) -> Figure:
    """The ERF grid: one row per model, one column per stage (and head), one colour scale.

    Args:
        erfs: model -> {column label -> :class:`segviz.inspect.ERF` (or an (H, W) map)}; maps
            normalised to max 1 (``segviz.erf`` does so); columns are taken in the order given.
        threshold: fraction of the maximum; under each panel the share of the image's pixels at or
            above it (the high-contribution area ratio, ``ERF.area[threshold]``).
        gamma: colour = map**gamma on one scale [0, 1] for every panel (0.5 lifts the faint tail).
        windows: model -> {column -> (top, left, bottom, right)} theoretical fields, drawn dashed.
        panel: panel size in inches (the figure is scaled to at most 10 inches wide).
    """
    if not erfs or not all(isinstance(v, Mapping) and v for v in erfs.values()):
        raise ValueError("erfs must map each model to a non-empty {column: ERF} mapping")
    if not 0 < threshold <= 1 or not gamma > 0:
        raise ValueError(f"threshold must be in (0, 1] and gamma > 0, got {threshold}, {gamma}")
    columns = list(dict.fromkeys(c for row in erfs.values() for c in row))
    n_rows, n_cols = len(erfs), len(columns)
    fig = style.figure(panel * n_cols + 0.9, (panel + 0.42) * n_rows + 0.75)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    norm = mcolors.PowerNorm(gamma, 0, 1)
    image = None
    for r, (model, row) in enumerate(erfs.items()):
        for c, col in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if col not in row:
                ax.axis("off")
                continue
            plane, _ = _erf_map(row[col])
            top = plane.max()
            image = ax.imshow(plane / top if top > 0 else plane, cmap="inferno", norm=norm, interpolation="nearest")
            box = ((windows or {}).get(model) or {}).get(col)
            if box is not None:
                t, l, b, rgt = box
                ax.add_patch(Rectangle((l - 0.5, t - 0.5), rgt - l + 1, b - t + 1, fill=False, ec="#00bfff", lw=1.2, ls="--"))
                ax.set_xlim(-0.5, plane.shape[1] - 0.5)
                ax.set_ylim(plane.shape[0] - 0.5, -0.5)
            ax.set_xlabel(f"{100 * _area(row[col], plane, threshold):.2f}%", fontsize=style.SMALL, labelpad=2)
            if r == 0:
                ax.set_title(col, fontsize=style.NORMAL)
            if c == 0:
                ax.set_ylabel(model, fontsize=style.SMALL)
    fig.colorbar(image, ax=axes, shrink=0.5, label=f"ERF / max (colour ∝ value^{gamma:g})", pad=0.02)
    fig.suptitle(f"{title}\nunder each panel: share of the image at ≥ {threshold:g} × the maximum", fontsize=style.NORMAL)
    return fig


# --------------------------------------------------------------------------- attention distance
@style.styled
def attention_distance_figure(distances: Mapping[str, Mapping[str, AttentionDistance]], image_size,
                              *, title: str = "Mean attention distance per head (ViT-style)",
                              layer_names: Mapping[str, Sequence[str]] | None = None) -> Figure:
    """One panel per model: mean attention distance (input pixels, y) of every head (one dot each)
    against the layer's depth (x, in call order), the ViT paper's Fig. 7 plot. The dashed line is
    a uniform global attention over a 32×32 grid on the image (what "looks everywhere" gives).

    Args:
        distances: model -> {layer -> :class:`AttentionDistance`} (``segviz.attention_distance(rec, size)``).
        image_size: (H, W) or S the records were made on.
        layer_names: model -> short tick labels, one per layer (default: L1, L2, ...).
    """
    if not distances or not all(isinstance(v, Mapping) and v for v in distances.values()):
        raise ValueError("distances must map each model to a non-empty {layer: AttentionDistance} mapping")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    uniform = mean_pairwise_distance((32, 32), size)
    n = len(distances)
    cols = min(n, 2)
    rows = -(-n // cols)
    fig = style.figure(4.9 * cols, 2.9 * rows + 0.5)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False, sharey=True)).ravel()
    kinds = {"attention": ("o", "#1f77b4"), "window_attention": ("s", "#2ca02c"), "sampling": ("^", "#d62728"),
             "deformed_grid": ("D", "#9467bd")}
    for ax, (model, layers) in zip(axes, distances.items()):
        for i, d in enumerate(layers.values()):
            if not isinstance(d, AttentionDistance):
                raise ValueError(f"{model}: values must be AttentionDistance, got {type(d).__name__}")
            marker, color = kinds.get(d.kind, ("o", "k"))
            jitter = np.linspace(-0.15, 0.15, d.heads) if d.heads > 1 else np.zeros(1)
            ax.scatter(i + jitter, d.per_head, s=22, marker=marker, color=color, alpha=0.8,
                       label=d.kind.replace("_", " ") if d.kind not in ax.get_legend_handles_labels()[1] else None)
        ax.axhline(uniform, color="0.4", ls="--", lw=1)
        ax.set_ylim(0, uniform * 1.12)
        names = (layer_names or {}).get(model) or [f"L{i + 1}" for i in range(len(layers))]
        ax.set_xticks(range(len(layers)), names, fontsize=style.SMALL, rotation=90 if len(layers) > 6 else 0)
        ax.set_title(model, fontsize=style.NORMAL)
        ax.set_xlabel("layer (call order)")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        seen = dict(zip(labels, handles))
        ax.legend(seen.values(), [k.replace("window attention", "window").replace("attention", "global/reduced")
                                  for k in seen], fontsize=style.SMALL, loc="best")
    for ax in axes[::cols]:
        ax.set_ylabel("mean distance (px)")
    for ax in axes[n:]:
        ax.axis("off")
    fig.suptitle(f"{title}\non {size[0]}×{size[1]} images; dashed: uniform attention over the image "
                 f"({uniform:.0f} px)", fontsize=style.NORMAL)
    return fig


# --------------------------------------------------------------------------- cost against quality
def _table_rows(table: ComparisonTable):
    rows = [r for r in table.rows if r.miou is not None]
    if not rows:
        raise ValueError("no model in the table has an mIoU: build it from models with shipped weights "
                         "(or pass miou=...)")
    return rows


def cost_quality_figure(table: ComparisonTable, *, title: str | None = None):
    """Plotly scatter: GMACs (x) against held-out mIoU (y), marker area ∝ parameters; hovering a
    point shows the model's card summary, params, GMACs and latency."""
    import plotly.graph_objects as go

    if not isinstance(table, ComparisonTable):
        raise ValueError(f"table must be a ComparisonTable (segviz.inspect.compare.comparison_table), got {type(table).__name__}")
    rows = _table_rows(table)
    h, w = table.input_size
    biggest = max(r.params for r in rows)
    fig = go.Figure()
    for r in rows:
        latency = f"{1e3 * r.latency_s:.0f} ms on this CPU" if r.latency_s is not None else "not measured"
        card = "<br>".join(html.escape(r.card[i:i + 80]) for i in range(0, len(r.card), 80))
        fig.add_trace(go.Scatter(
            x=[r.gmacs], y=[r.miou], mode="markers+text", name=r.model, text=[r.model], textposition="top center",
            marker=dict(size=[12 + 40 * (r.params / biggest) ** 0.5], sizemode="diameter", opacity=0.75,
                        line=dict(width=1, color="black")),
            hovertemplate=(f"<b>{html.escape(r.model)}</b><br>{r.params:,} params<br>{r.gmacs:.2f} GMACs at {h}×{w}"
                           f"<br>latency {latency}<br>held-out mIoU {r.miou:.3f}<br><br>{card}<extra></extra>")))
    _plotly_layout(fig, title or f"Cost against quality: nano models (GMACs at {h}×{w}; marker size ∝ parameters)")
    fig.update_xaxes(title="GMACs (multiply-adds, billions)", rangemode="tozero")
    fig.update_yaxes(title="held-out Scenes mIoU")
    fig.update_layout(showlegend=False)
    return fig


@style.styled
def cost_quality_static(table: ComparisonTable, *, title: str | None = None) -> Figure:
    """The matplotlib twin of :func:`cost_quality_figure` (the static fallback)."""
    if not isinstance(table, ComparisonTable):
        raise ValueError(f"table must be a ComparisonTable, got {type(table).__name__}")
    rows = _table_rows(table)
    h, w = table.input_size
    biggest = max(r.params for r in rows)
    fig = style.figure(7.5, 4.6)
    ax = fig.subplots()
    span = max(r.gmacs for r in rows) or 1.0
    for r in rows:
        area = (12 + 40 * (r.params / biggest) ** 0.5) ** 2 / 2.5
        ax.scatter(r.gmacs, r.miou, s=area, alpha=0.6, edgecolor="k")
        # the label goes above the marker, or below it when a close neighbour sits just above
        crowded = any(o is not r and abs(o.gmacs - r.gmacs) < 0.15 * span and 0 <= o.miou - r.miou < 0.06 for o in rows)
        gap = (area / np.pi) ** 0.5 + 3
        ax.annotate(f"{r.model}\n{r.params / 1e6:.2f} M params", (r.gmacs, r.miou), textcoords="offset points",
                    xytext=(0, -gap if crowded else gap), ha="center", va="top" if crowded else "bottom",
                    fontsize=style.SMALL)
    ax.set_xlabel("GMACs (multiply-adds, billions)")
    ax.set_ylabel("held-out Scenes mIoU")
    ax.set_xlim(0, max(r.gmacs for r in rows) * 1.2)
    lo, hi = min(r.miou for r in rows), max(r.miou for r in rows)
    ax.set_ylim(lo - 0.05, hi + 0.07)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"Cost against quality (GMACs at {h}×{w}; marker area ∝ parameters)", fontsize=style.NORMAL)
    return fig


# --------------------------------------------------------------------------- heat maps
def _matrix(values) -> np.ndarray:
    arr = values.detach().cpu().double().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, float)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"a heat map needs a non-empty 2-D matrix, got shape {arr.shape}")
    return arr


def _labels(labels, n, what):
    labels = [str(v) for v in labels] if labels is not None else [str(i) for i in range(n)]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} {what} labels for {n} {what}s")
    return labels


def heatmap_figure(values, *, x_labels=None, y_labels=None, title: str = "", x_title: str = "", y_title: str = "",
                   colorscale: str = "Viridis", marked: Sequence[tuple[int, int]] = (), value_name: str = "value",
                   width: int = 700, height: int | None = None):
    """Plotly heat map of a matrix with each cell's value (and its row/column labels) on hover;
    cells in ``marked`` ((row, col) pairs, e.g. a Hungarian assignment) get a white frame."""
    import plotly.graph_objects as go

    arr = _matrix(values)
    ys, xs = _labels(y_labels, arr.shape[0], "row"), _labels(x_labels, arr.shape[1], "column")
    fig = go.Figure(go.Heatmap(z=arr, x=list(range(arr.shape[1])), y=list(range(arr.shape[0])), colorscale=colorscale,
                               customdata=[[[ys[i], xs[j]] for j in range(arr.shape[1])] for i in range(arr.shape[0])],
                               hovertemplate=("%{customdata[0]} × %{customdata[1]}<br>" + html.escape(value_name)
                                              + " %{z:.4g}<extra></extra>"),
                               colorbar=dict(title=value_name)))
    for i, j in marked:
        if not (0 <= i < arr.shape[0] and 0 <= j < arr.shape[1]):
            raise ValueError(f"marked cell {(i, j)} is outside the {arr.shape} matrix")
        fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5, line=dict(color="white", width=3))
    _plotly_layout(fig, title, width, height or int(min(900, max(320, 140 + 24 * arr.shape[0]))))
    fig.update_xaxes(title=x_title, tickvals=list(range(arr.shape[1])), ticktext=xs)
    fig.update_yaxes(title=y_title, tickvals=list(range(arr.shape[0])), ticktext=ys, autorange="reversed")
    return fig


@style.styled
def heatmap_static(values, *, x_labels=None, y_labels=None, title: str = "", x_title: str = "", y_title: str = "",
                   cmap: str = "viridis", marked: Sequence[tuple[int, int]] = (), value_name: str = "value",
                   width: float = 7.0) -> Figure:
    """The matplotlib twin of :func:`heatmap_figure` (the static fallback)."""
    arr = _matrix(values)
    ys, xs = _labels(y_labels, arr.shape[0], "row"), _labels(x_labels, arr.shape[1], "column")
    fig = style.figure(width, min(9.0, max(2.6, 1.2 + 0.26 * arr.shape[0])))
    ax = fig.subplots()
    im = ax.imshow(arr, cmap=cmap, aspect="auto", interpolation="nearest")
    for i, j in marked:
        if not (0 <= i < arr.shape[0] and 0 <= j < arr.shape[1]):
            raise ValueError(f"marked cell {(i, j)} is outside the {arr.shape} matrix")
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="white", lw=2.5))
    step_y = max(1, arr.shape[0] // 24)
    step_x = max(1, arr.shape[1] // 16)
    ax.set_yticks(range(0, arr.shape[0], step_y), ys[::step_y], fontsize=style.SMALL)
    ax.set_xticks(range(0, arr.shape[1], step_x), xs[::step_x], fontsize=style.SMALL,
                  rotation=45 if max(len(x) for x in xs) > 4 else 0)
    ax.set_xlabel(x_title)
    ax.set_ylabel(y_title)
    ax.set_title(title, fontsize=style.NORMAL)
    fig.colorbar(im, ax=ax, label=value_name)
    return fig


# --------------------------------------------------------------------------- one query, every model
def _upsample(plane: np.ndarray, hw) -> np.ndarray:
    h, w = hw
    ry = np.minimum((np.arange(h) * plane.shape[0]) // h, plane.shape[0] - 1)
    rx = np.minimum((np.arange(w) * plane.shape[1]) // w, plane.shape[1] - 1)
    return plane[ry][:, rx]


@style.styled
def query_row_figure(image, panels: Mapping[str, object], query: tuple[int, int], *,
                     windows: Mapping[str, tuple] | None = None, title: str = "One query pixel, every model",
                     level: int = -1, columns: int | None = None) -> Figure:
    """Where one query pixel looks, one panel per model, in one row (or rows of ``columns``).

    Args:
        image: the image (H, W, 3) the records were made on.
        panels: label -> what to draw, averaged over heads:
            an ``AttentionRecord`` (global/reduced; the query's attention over the key grid),
            a ``WindowAttentionRecord`` (the query's window and its attention inside it),
            a ``SamplingRecord`` with pixel queries (the sampling points of the query's pixel on
            ``level``, dot area ∝ weight, colour = level),
            a ``DeformedGridRecord`` (DAT: the query's attention, heads averaged, spread on its map,
            and the deformed key points every offset group reads, dot area ∝ the group's heads'
            mean weight relative to the largest, colour = group),
            an :class:`segviz.inspect.ERF` (the effective receptive field of the centre unit; pick
            the image centre as ``query`` for it to be this query's).
        query: (y, x) in image pixels.
        windows: label -> (top, left, bottom, right) theoretical receptive field, drawn dashed.
        level: which level's pixel stands for the query in sampling records (-1: finest).
        columns: panels per row (None: all in one row); more panels than fit in 10 inches
            at a readable size wrap onto further rows.
    """
    from segviz.viz.mask2former import pixel_query_index

    img = as_image(image)
    hw = img.shape[:2]
    if not panels:
        raise ValueError("panels must map a label to a record or an ERF")
    y, x = query
    if not (0 <= y < hw[0] and 0 <= x < hw[1]):
        raise ValueError(f"query {tuple(query)} is outside the {hw[0]}x{hw[1]} image")
    n = len(panels)
    if columns is not None and (isinstance(columns, bool) or not isinstance(columns, int) or columns < 1):
        raise ValueError(f"columns must be a positive integer or None, got {columns!r}")
    cols = n if columns is None else min(columns, n)
    rows = -(-n // cols)
    fig = style.figure(2.0 * cols if columns is None else 3.0 * cols, (2.8 if columns is None else 3.8) * rows + 0.3)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.axis("off")
    grey = img.mean(-1, keepdims=True) * np.ones(3)
    for ax, (label, item) in zip(axes, panels.items()):
        ax.imshow(grey * 0.7 + 0.3, interpolation="nearest")
        note = ""
        if isinstance(item, (AttentionRecord, WindowAttentionRecord)):
            token = item.query_token((y, x), hw)
            maps = torch.stack([item.map_for(token, h).double() for h in range(item.heads)]).mean(0).numpy()
            plane = _upsample(maps, hw)
            ax.imshow(np.ma.masked_where(plane <= 0, plane / plane.max()), cmap="inferno", alpha=0.75,
                      interpolation="nearest", vmin=0, vmax=1)
            nonzero = maps[maps > 1e-8]  # keys a shifted window masks off get ~exp(-100)
            spread = f"max/min {nonzero.max() / nonzero.min():.1f}"  # 1.0: uniform over the keys it sees
            if isinstance(item, WindowAttentionRecord):
                note = f"window {item.window}, shift {item.shift}\n{spread}"
            else:
                note = f"keys {item.k_hw[0]}×{item.k_hw[1]}, {spread}"
        elif isinstance(item, SamplingRecord):
            index = pixel_query_index(item, (y, x), hw, level)
            locs = item.locations[0, index].double()  # (heads, L, P, 2)
            wts = item.weights[0, index].double()  # (heads, L, P)
            levels = locs.shape[1]
            palette = ["#ffd92f", "#66c2a5", "#fc8d62", "#8da0cb"]
            for lv in range(levels):
                px = locs[:, lv, :, 0].reshape(-1).numpy() * hw[1] - 0.5
                py = locs[:, lv, :, 1].reshape(-1).numpy() * hw[0] - 0.5
                ax.scatter(px, py, s=8 + 400 * wts[:, lv].reshape(-1).numpy(), color=palette[lv % 4], alpha=0.8,
                           edgecolor="k", lw=0.3, label=f"level {item.level_shapes[lv][0]}×{item.level_shapes[lv][1]}")
            names = ["yellow", "green", "orange", "blue"]
            note = (f"{item.heads} heads × {levels} levels × {locs.shape[2]} pts\n"
                    + "/".join(names[lv % 4] for lv in range(levels)) + ": coarse→fine")
        elif isinstance(item, DeformedGridRecord):
            token = item.query_token((y, x), hw)
            maps = torch.stack([item.map_for(token, h).double() for h in range(item.heads)]).mean(0).numpy()
            plane = _upsample(maps, hw)
            ax.imshow(np.ma.masked_where(plane <= 0, plane / plane.max()), cmap="inferno", alpha=0.6,
                      interpolation="nearest", vmin=0, vmax=1)
            per_group = item.heads // item.groups
            palette = ["#00e5ff", "#34c759", "#ffcc00", "#ff3b30", "#af52de", "#ff9500"]
            for g in range(item.groups):
                heads = range(g * per_group, (g + 1) * per_group)
                points = item.points_for(token, heads[0])[0].double().numpy()
                wts = torch.stack([item.points_for(token, h)[1].double() for h in heads]).mean(0).numpy()
                ax.scatter(points[:, 0] * hw[1] - 0.5, points[:, 1] * hw[0] - 0.5, s=4 + 60 * wts / max(wts.max(), 1e-12),
                           color=palette[g % len(palette)], alpha=0.85, edgecolor="k", lw=0.3)
            kh, kw = item.key_hw
            note = f"{kh}×{kw} deformed keys\n{item.groups} groups (dot colour)"
        elif isinstance(item, ERF):
            plane = item.map
            if plane.shape != hw:
                raise ValueError(f"{label}: ERF is {plane.shape}, the image {hw}")
            ax.imshow(np.clip(plane, 0, 1) ** 0.5, cmap="inferno", alpha=0.7, vmin=0, vmax=1, interpolation="nearest")
            note = "ERF (centre unit)"
        else:
            raise ValueError(f"{label}: cannot draw {type(item).__name__}; give an attention/window/sampling/deformed-grid record or an ERF")
        box = (windows or {}).get(label)
        if box is not None:
            t, l, b, r = box
            ax.add_patch(Rectangle((l - 0.5, t - 0.5), r - l + 1, b - t + 1, fill=False, ec="#00bfff", lw=1.2, ls="--"))
            note += f"\nRF {b - t + 1} px (dashed)"
        ax.plot([x], [y], marker="+", color="#00ff00", ms=12, mew=2)
        ax.set_xlim(-0.5, hw[1] - 0.5)
        ax.set_ylim(hw[0] - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=style.SMALL)
        ax.set_xlabel(note, fontsize=style.SMALL)
    fig.suptitle(f"{title}: query (y, x) = ({y}, {x}), green cross; heads averaged", fontsize=style.NORMAL)
    return fig
