"""Drawings on top of the photo: patches, attention maps, predictions.

Pure functions: arrays or tensors in, a ``matplotlib.figure.Figure`` out, nothing shown.
In a notebook a returned figure displays itself; elsewhere call ``fig.savefig(path)``.
Pixel positions are (y, x) in the photo's coordinates throughout.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.colors as mcolors
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from segviz.inspect.recording import AttentionRecord
from segviz.viz.arrays import as_image, as_labels

PATCH_COLORS = ("#ff3b30", "#34c759", "#0a84ff", "#ffcc00")
QUERY_COLOR = "#00e5ff"


# --------------------------------------------------------------------------- patches
def _grid_lines(ax, starts_y, starts_x, extent_y, extent_x, **style):
    for y in starts_y:
        ax.plot(extent_x, [y, y], **style)
    for x in starts_x:
        ax.plot([x, x], extent_y, **style)


def _zoom(ax, img, top, left, size, pixel_grid=True):
    """Show img[top:top+size, left:left+size] with pixel coordinates kept."""
    ax.imshow(img, interpolation="nearest")
    ax.set_xlim(left - 0.5, left + size - 0.5)
    ax.set_ylim(top + size - 0.5, top - 0.5)
    if pixel_grid:
        edges_y = np.arange(top, top + size + 1) - 0.5
        edges_x = np.arange(left, left + size + 1) - 0.5
        _grid_lines(ax, edges_y, edges_x, (edges_y[0], edges_y[-1]), (edges_x[0], edges_x[-1]),
                    color="white", lw=0.4, alpha=0.35)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")


def _patch_boxes(ax, token_y, token_x, kernel, stride, padding, neighbours):
    """Draw an n x n block of neighbouring conv patches starting at token (token_y, token_x)."""
    boxes = []
    for i in range(neighbours):
        for j in range(neighbours):
            color = PATCH_COLORS[(i * neighbours + j) % len(PATCH_COLORS)]
            top = (token_y + i) * stride - padding
            left = (token_x + j) * stride - padding
            box = Rectangle((left - 0.5, top - 0.5), kernel, kernel, facecolor=mcolors.to_rgba(color, 0.2),
                            edgecolor=color, lw=2.5)
            ax.add_patch(box)
            ax.plot([left + kernel // 2], [top + kernel // 2], "o", color=color, ms=5, mec="black", mew=0.6)
            boxes.append(box)
    return boxes


def patch_figure(image, *, overlap: tuple[int, int, int] = (7, 4, 3), vit: int = 16,
                 at: tuple[int, int] | None = None, neighbours: int = 2) -> Figure:
    """SegFormer's overlapping patches next to ViT's non-overlapping ones.

    Top row: the photo with the zoom box, and the zoom, where an n x n block of
    neighbouring ``kernel x kernel`` patches taken every ``stride`` pixels is outlined:
    neighbours share ``kernel - stride`` pixels (7 - 4 = 3 for SegFormer stage 1).
    Bottom row: ViT's ``vit x vit`` patches, which tile the photo without sharing a pixel.

    Args:
        image: the photo (see :func:`segviz.viz.arrays.as_image`).
        overlap: (kernel, stride, padding) of the overlapping patch embedding.
        vit: ViT's patch size.
        at: (y, x) pixel around which to zoom; default the centre.
        neighbours: n, the side of the block of patches drawn (n² patches per zoom).
    """
    img = as_image(image)
    h, w = img.shape[:2]
    kernel, stride, padding = overlap
    if not (kernel >= stride >= 1 and 0 <= padding < kernel):
        raise ValueError(f"overlap must be (kernel, stride, padding) with kernel >= stride >= 1, got {overlap}")
    if neighbours < 1 or vit < 1:
        raise ValueError(f"neighbours and vit must be positive, got {neighbours} and {vit}")
    cy, cx = (h // 2, w // 2) if at is None else at
    if not (0 <= cy < h and 0 <= cx < w):
        raise ValueError(f"at={at} is outside the {h}x{w} image")
    fig = Figure(figsize=(10, 9.6), layout="constrained")
    axes = fig.subplots(2, 2, gridspec_kw={"width_ratios": [1, 1]})

    def clamp(v, size, limit):
        return int(min(max(v, 0), max(limit - size, 0)))

    # SegFormer: n x n overlapping patches.
    out_h, out_w = (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1
    ty = min(max(cy // stride, 1), out_h - neighbours)
    tx = min(max(cx // stride, 1), out_w - neighbours)
    span = (neighbours - 1) * stride + kernel
    size = span + 4
    top = clamp(ty * stride - padding - 2, size, h)
    left = clamp(tx * stride - padding - 2, size, w)
    ax = axes[0, 0]
    ax.imshow(img)
    ax.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False, edgecolor="yellow", lw=2))
    ax.set_title(f"SegFormer stage 1: {kernel}×{kernel} patches every {stride} px\n"
                 f"(padding {padding}) → {out_h}×{out_w} = {out_h * out_w:,} tokens")
    ax.set_axis_off()
    ax = axes[0, 1]
    _zoom(ax, img, top, left, size)
    _patch_boxes(ax, ty, tx, kernel, stride, padding, neighbours)
    ax.set_title(f"zoom (yellow box): {neighbours}×{neighbours} neighbouring patches\n"
                 f"overlap by {kernel - stride} px ({kernel} − {stride}); dots = patch centres")
    ax.spines[:].set_edgecolor("yellow")
    ax.spines[:].set_linewidth(2)

    # ViT: n x n non-overlapping patches.
    vh, vw = h // vit, w // vit
    vy = min(cy // vit, max(vh - neighbours, 0))
    vx = min(cx // vit, max(vw - neighbours, 0))
    vsize = neighbours * vit + 2 * max(vit // 4, 1)
    vtop = clamp(vy * vit - vit // 4, vsize, h)
    vleft = clamp(vx * vit - vit // 4, vsize, w)
    ax = axes[1, 0]
    ax.imshow(img)
    _grid_lines(ax, np.arange(0, vh * vit + 1, vit) - 0.5, np.arange(0, vw * vit + 1, vit) - 0.5,
                (-0.5, vh * vit - 0.5), (-0.5, vw * vit - 0.5), color="white", lw=0.6, alpha=0.7)
    ax.add_patch(Rectangle((vleft - 0.5, vtop - 0.5), vsize, vsize, fill=False, edgecolor="yellow", lw=2))
    ax.set_title(f"ViT: {vit}×{vit} patches every {vit} px (no overlap)\n→ {vh}×{vw} = {vh * vw:,} tokens")
    ax.set_axis_off()
    ax = axes[1, 1]
    _zoom(ax, img, vtop, vleft, vsize, pixel_grid=vsize <= 24)
    _patch_boxes(ax, vy, vx, vit, vit, 0, neighbours)
    ax.set_title(f"zoom: {neighbours}×{neighbours} neighbouring ViT patches\n"
                 "touch but share no pixel: an edge can fall between them")
    ax.spines[:].set_edgecolor("yellow")
    ax.spines[:].set_linewidth(2)
    return fig


# --------------------------------------------------------------------------- attention
def _query_token(record: AttentionRecord, query: tuple[int, int], image_hw: tuple[int, int]):
    h, w = image_hw
    y, x = query
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"query pixel {query} is outside the {h}x{w} image")
    qh, qw = record.q_hw
    return min(y * qh // h, qh - 1), min(x * qw // w, qw - 1)


def _check_record(record) -> AttentionRecord:
    if not isinstance(record, AttentionRecord):
        raise ValueError(f"expected an AttentionRecord (from segviz.capture), got {type(record).__name__}")
    if record.q_hw is None or record.k_hw is None:
        raise ValueError("this attention record has no grid sizes (q_hw, k_hw); it cannot be drawn on the image")
    return record


def reduction_of(record: AttentionRecord) -> int:
    """The per-side reduction ``sr`` of a record: query grid side / key grid side."""
    return max(record.q_hw[0] // record.k_hw[0], 1)


def draw_attention(ax, img, record, query, head, vmin=None, vmax=None):
    """Photo + the query's attention over the key grid; returns the heat-map artist."""
    h, w = img.shape[:2]
    qh, qw = record.q_hw
    kh, kw = record.k_hw
    ty, tx = _query_token(record, query, (h, w))
    amap = record.map_for((ty, tx), head=head).detach().float().cpu().numpy()
    sr = reduction_of(record)
    tok_h, tok_w = h / qh, w / qw           # pixels per query token
    cell_h, cell_w = sr * tok_h, sr * tok_w  # pixels per key cell
    grid_h, grid_w = kh * cell_h, kw * cell_w
    ax.imshow(img * 0.75 + 0.25 * img.mean(-1, keepdims=True))
    heat = ax.imshow(amap, cmap="magma", alpha=0.62, interpolation="nearest",
                     vmin=float(amap.min()) if vmin is None else vmin,
                     vmax=float(amap.max()) if vmax is None else vmax,
                     extent=(-0.5, grid_w - 0.5, grid_h - 0.5, -0.5))
    style = dict(color="white", lw=0.6, alpha=0.8)
    _grid_lines(ax, np.arange(kh + 1) * cell_h - 0.5, np.arange(kw + 1) * cell_w - 0.5,
                (-0.5, grid_h - 0.5), (-0.5, grid_w - 0.5), **style)
    # the key cell holding the query, split into its sr x sr query tokens
    ky, kx = min(ty // sr, kh - 1), min(tx // sr, kw - 1)
    y0, x0 = ky * cell_h - 0.5, kx * cell_w - 0.5
    if sr > 1:
        _grid_lines(ax, y0 + np.arange(1, sr) * tok_h, x0 + np.arange(1, sr) * tok_w,
                    (y0, y0 + cell_h), (x0, x0 + cell_w), color=QUERY_COLOR, lw=0.5, alpha=0.6)
    ax.add_patch(Rectangle((x0, y0), cell_w, cell_h, fill=False, edgecolor=QUERY_COLOR, lw=1.2, ls="--"))
    ax.add_patch(Rectangle((tx * tok_w - 0.5, ty * tok_h - 0.5), tok_w, tok_h, fill=False,
                           edgecolor=QUERY_COLOR, lw=1.5))
    ax.plot([query[1]], [query[0]], marker="+", color=QUERY_COLOR, ms=12, mew=2.2)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    return heat


def attention_overlay(image, record: AttentionRecord, query: tuple[int, int], *, head: int = 0,
                      title: str | None = None) -> Figure:
    """Where one query pixel looks: its attention over the reduced key grid, on the photo.

    White lines: the key grid (kh x kw). Each key is one cell made from sr x sr query
    tokens (dashed cyan: the cell holding the query, with its tokens), so a query sees
    N / R keys, R = sr². The cyan square is the query token, + the query pixel. Colours
    run from the map's smallest to its largest weight; the colorbar's cyan line marks
    uniform attention, 1 / N_k.

    Args:
        image: the photo the model saw (see :func:`segviz.viz.arrays.as_image`).
        record: an ``AttentionRecord`` from ``segviz.capture`` (probs (B, heads, Nq, Nk)).
        query: (y, x) pixel in the photo.
        head: which head.
        title: first title line (default: ``head {head}``).
    """
    record = _check_record(record)
    img = as_image(image)
    sr = reduction_of(record)
    fig = Figure(figsize=(6.4, 5.4), layout="constrained")
    ax = fig.subplots()
    heat = draw_attention(ax, img, record, query, head)
    kh, kw = record.k_hw
    qh, qw = record.q_hw
    ax.set_title(f"{title or f'head {head}'} · query pixel (y={query[0]}, x={query[1]})\n"
                 f"{qh}×{qw} queries → {kh}×{kw} keys: sr = {sr}, R = sr² = {sr * sr}")
    _uniform_mark(fig.colorbar(heat, ax=ax, shrink=0.85), kh * kw)
    return fig


def _uniform_mark(colorbar, n_keys: int, label: bool = True) -> None:
    """Draw the level of uniform attention, 1 / N_k, on a colorbar (and say so in its label)."""
    if label:
        colorbar.set_label(f"attention weight (cyan line: uniform, 1/{n_keys})")
    lo, hi = colorbar.mappable.get_clim()
    if lo <= 1.0 / n_keys <= hi:
        colorbar.ax.axhline(1.0 / n_keys, color=QUERY_COLOR, lw=2)


def attention_grid(image, records: Mapping[str, AttentionRecord], query: tuple[int, int], *,
                   heads: Sequence[int] | None = None) -> Figure:
    """Stages x heads: the same query pixel's attention in every stage and head.

    One row per record (e.g. the first block of each stage), one column per head; a row
    shares one colour scale (its colorbar at the right), so heads can be compared.

    Args:
        image: the photo.
        records: row label -> AttentionRecord, in display order.
        query: (y, x) pixel in the photo.
        heads: which heads to show (default: all heads of each record).
    """
    if not records:
        raise ValueError("attention_grid needs at least one record")
    recs = {label: _check_record(r) for label, r in records.items()}
    img = as_image(image)
    chosen = {label: list(range(r.probs.shape[1])) if heads is None else [h for h in heads if h < r.probs.shape[1]]
              for label, r in recs.items()}
    cols = max(len(v) for v in chosen.values())
    if cols == 0:
        raise ValueError(f"none of heads={list(heads)} exists in these records")
    rows = len(recs)
    fig = Figure(figsize=(1.9 * cols + 1.2, 2.05 * rows + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for r, (label, record) in enumerate(recs.items()):
        ty, tx = _query_token(record, query, img.shape[:2])
        maps = [record.map_for((ty, tx), head=hd) for hd in chosen[label]]
        vmin = min(float(m.min()) for m in maps) if maps else 0.0
        vmax = max(float(m.max()) for m in maps) if maps else 1.0
        heat = None
        for c in range(cols):
            ax = axes[r, c]
            if c >= len(chosen[label]):
                ax.set_axis_off()
                continue
            heat = draw_attention(ax, img, record, query, chosen[label][c], vmin=vmin, vmax=vmax)
            ax.set_title(f"head {chosen[label][c]}", fontsize=9)
        sr = reduction_of(record)
        kh, kw = record.k_hw
        axes[r, 0].set_ylabel(f"{label}\n{record.k_hw[0]}×{record.k_hw[1]} keys, R={sr * sr}", fontsize=9)
        if heat is not None:
            _uniform_mark(fig.colorbar(heat, ax=list(axes[r]), shrink=0.9, pad=0.01, aspect=12), kh * kw, label=False)
    fig.suptitle(f"where query pixel (y={query[0]}, x={query[1]}) (cyan +) looks: one row per stage\n"
                 "white lines = key grid; one colour scale per row, cyan line on it = uniform attention")
    return fig


# --------------------------------------------------------------------------- predictions
def class_colors(n: int) -> np.ndarray:
    """(n, 3) RGB colours in [0, 1]: tab10, then tab20 for more classes."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return np.array([cmap(i % cmap.N)[:3] for i in range(n)])


def _upsample_labels(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    rows = np.arange(h) * labels.shape[0] // h
    cols = np.arange(w) * labels.shape[1] // w
    return labels[rows][:, cols]


def prediction_overlay(image, labels, class_names: Sequence[str] | None = None, *,
                       title: str | None = None, alpha: float = 0.55) -> Figure:
    """The predicted classes coloured over the photo, with a legend.

    Args:
        image: the photo.
        labels: (h, w) class indices or (K, h, w) logits at any resolution (nearest-upsampled).
        class_names: names by class index; a class named "background" is left uncoloured.
        title: figure title.
        alpha: opacity of the colours.
    """
    return prediction_panels([(image, labels, title)], class_names, alpha=alpha)


def prediction_panels(panels: Sequence[tuple], class_names: Sequence[str] | None = None, *,
                      alpha: float = 0.55) -> Figure:
    """Several ``(image, labels, title)`` predictions side by side, one shared legend.

    Each panel keeps its own pixel size (axes are labelled in pixels), so the same model
    run at two resolutions shows as two pictures of different size.
    """
    if not panels:
        raise ValueError("prediction_panels needs at least one (image, labels, title) panel")
    items = []
    for panel in panels:
        if len(panel) != 3:
            raise ValueError("each panel is (image, labels, title)")
        image, labels, title = panel
        items.append((as_image(image), as_labels(labels), title))
    n_classes = max(int(lab.max()) + 1 for _, lab, _ in items)
    if class_names is not None:
        if len(class_names) < n_classes:
            raise ValueError(f"labels use {n_classes} classes but only {len(class_names)} class names were given")
        n_classes = len(class_names)
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(n_classes)]
    colors = class_colors(n_classes)
    widths = [img.shape[1] for img, _, _ in items]
    fig = Figure(figsize=(min(4.2 * len(items), 14) + 1.6, 4.6), layout="constrained")
    axes = fig.subplots(1, len(items), squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    for ax, (img, lab, title) in zip(axes, items):
        full = _upsample_labels(lab, img.shape[:2])
        rgba = np.zeros(full.shape + (4,), np.float32)
        rgba[..., :3] = colors[full]
        rgba[..., 3] = alpha
        if names[0].lower() == "background":
            rgba[full == 0, 3] = 0.0
        ax.imshow(img)
        ax.imshow(rgba, interpolation="nearest")
        ax.set_title(title or "prediction", fontsize=10)
        ax.set_xlabel(f"{img.shape[1]} px")
        ax.set_ylabel(f"{img.shape[0]} px")
        ax.set_xticks([])
        ax.set_yticks([])
    present = sorted(set().union(*(np.unique(lab).tolist() for _, lab, _ in items)))
    handles = [Patch(facecolor=mcolors.to_hex(colors[i]), edgecolor="black",
                     label=names[i] + ("" if i in present else " (absent)"))
               for i in range(n_classes)
               if not (i == 0 and names[0].lower() == "background")]
    fig.legend(handles=handles, loc="outside right center", title="class", fontsize=9)
    return fig
