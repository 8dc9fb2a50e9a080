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

from segviz.nn.recording import AttentionRecord, MaskedAttentionRecord, SamplingRecord, WindowAttentionRecord
from segviz.viz import style
from segviz.viz.arrays import as_image, as_labels

PATCH_COLORS = ("#ff3b30", "#34c759", "#0a84ff", "#ffcc00")
QUERY_COLOR = "#00e5ff"


# --------------------------------------------------------------------------- patches
def _grid_lines(ax, starts_y, starts_x, extent_y, extent_x, **style):
    """Horizontal lines at ``starts_y`` across ``extent_x`` and vertical ones at ``starts_x`` across
    ``extent_y``, as one LineCollection (one artist: quick to build and to draw in explorers)."""
    segments = [[(extent_x[0], y), (extent_x[1], y)] for y in starts_y]
    segments += [[(x, extent_y[0]), (x, extent_y[1])] for x in starts_x]
    return _segments(ax, segments, **style)


def _segments(ax, segments, color, lw, alpha=None, **style):
    """Line segments [[(x0, y0), (x1, y1)], ...] as one LineCollection."""
    from matplotlib.collections import LineCollection

    lines = LineCollection(segments, colors=color, linewidths=lw, alpha=alpha, **style)
    ax.add_collection(lines, autolim=False)
    return lines


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


@style.styled
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
    fig = style.figure(10, 9.6)
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
RECORD_TYPES = (AttentionRecord, WindowAttentionRecord, SamplingRecord, MaskedAttentionRecord)
LEVEL_COLORS = ("#00e5ff", "#ffcc00", "#ff3b30", "#34c759")


def _check_record(record):
    if not isinstance(record, RECORD_TYPES):
        names = ", ".join(t.__name__ for t in RECORD_TYPES)
        raise ValueError(f"expected an attention or sampling record from segviz.capture ({names}), "
                         f"got {type(record).__name__}")
    if isinstance(record, AttentionRecord) and (record.q_hw is None or record.k_hw is None):
        raise ValueError("this attention record has no grid sizes (q_hw, k_hw); it cannot be drawn on the image")
    return record


def _pixel_queries(record) -> bool:
    """Are the record's queries pixels of a map (given as (y, x)) rather than object queries (an index)?"""
    return not isinstance(record, MaskedAttentionRecord) and getattr(record, "q_hw", None) is not None


def _query_of(record, query, image_hw):
    """The record's own query from what the caller gave: a pixel (y, x) for pixel queries, an index
    for object queries."""
    if _pixel_queries(record):
        if isinstance(query, (int, np.integer)):
            raise ValueError(f"{type(record).__name__} has pixel queries: give the query as a (y, x) pixel")
        return record.query_token(tuple(query), image_hw)
    if not isinstance(query, (int, np.integer)):
        raise ValueError(f"{type(record).__name__} has object queries: give the query as an index, got {query!r}")
    return int(query)


def reduction_of(record: AttentionRecord) -> int:
    """The per-side reduction r of a record: query grid side / key grid side."""
    return max(record.q_hw[0] // record.k_hw[0], 1)


def _photo(ax, img):
    """The photo, slightly greyed so that overlays stand out. An axes whose bottom image is already
    this photo keeps it (explorers clear what lies over the photo and draw the next query on it)."""
    if ax.images:
        shown = getattr(ax.images[0], "segviz_photo", None)
        if shown is not None and (shown is img or (shown.shape == img.shape and np.array_equal(shown, img))):
            return
    shown = ax.imshow(img * 0.75 + 0.25 * img.mean(-1, keepdims=True))
    shown.segviz_photo = img


def _heat(ax, amap, extent_hw, vmin, vmax, cmap="magma"):
    grid_h, grid_w = extent_hw
    return ax.imshow(amap, cmap=cmap, alpha=0.62, interpolation="nearest",
                     vmin=float(amap.min()) if vmin is None else vmin,
                     vmax=float(amap.max()) if vmax is None else vmax,
                     extent=(-0.5, grid_w - 0.5, grid_h - 0.5, -0.5))


def _finish(ax, img, query=None):
    h, w = img.shape[:2]
    if query is not None:
        ax.plot([query[1]], [query[0]], marker="+", color=QUERY_COLOR, ms=12, mew=2.2)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])


def _as_numpy(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _draw_grid_attention(ax, img, record: AttentionRecord, token, head, vmin, vmax, query):
    """Global / spatial-reduction attention: the key grid, and the key cell holding the query
    split into its r x r query tokens."""
    h, w = img.shape[:2]
    qh, qw = record.q_hw
    kh, kw = record.k_hw
    ty, tx = token
    amap = _as_numpy(record.map_for(token, head=head))
    r = reduction_of(record)
    tok_h, tok_w = h / qh, w / qw          # pixels per query token
    cell_h, cell_w = r * tok_h, r * tok_w  # pixels per key cell
    grid_h, grid_w = kh * cell_h, kw * cell_w
    _photo(ax, img)
    heat = _heat(ax, amap, (grid_h, grid_w), vmin, vmax)
    _grid_lines(ax, np.arange(kh + 1) * cell_h - 0.5, np.arange(kw + 1) * cell_w - 0.5,
                (-0.5, grid_h - 0.5), (-0.5, grid_w - 0.5), color="white", lw=0.6, alpha=0.8)
    ky, kx = min(ty // r, kh - 1), min(tx // r, kw - 1)
    y0, x0 = ky * cell_h - 0.5, kx * cell_w - 0.5
    if r > 1:
        _grid_lines(ax, y0 + np.arange(1, r) * tok_h, x0 + np.arange(1, r) * tok_w,
                    (y0, y0 + cell_h), (x0, x0 + cell_w), color=QUERY_COLOR, lw=0.5, alpha=0.6)
    ax.add_patch(Rectangle((x0, y0), cell_w, cell_h, fill=False, edgecolor=QUERY_COLOR, lw=1.2, ls="--"))
    ax.add_patch(Rectangle((tx * tok_w - 0.5, ty * tok_h - 0.5), tok_w, tok_h, fill=False,
                           edgecolor=QUERY_COLOR, lw=1.5))
    _finish(ax, img, query)
    return heat


def _runs(indices) -> list[tuple[int, int]]:
    """Sorted integers -> [(first, last)] of their consecutive runs."""
    runs = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _draw_window_attention(ax, img, record: WindowAttentionRecord, token, head, vmin, vmax, query):
    """Window attention: the map is zero outside the query's window. Dashed: the window
    partition as the block saw it (offset by the shift); cyan: the query's window, in pieces
    where the cyclic shift wrapped it around the map's edge."""
    h, w = img.shape[:2]
    fh, fw = record.feature_hw
    cell_h, cell_w = h / fh, w / fw
    amap = _as_numpy(record.map_for(token, head=head))
    _photo(ax, img)
    heat = _heat(ax, amap, (h, w), vmin, vmax)
    m, s = record.window, record.shift
    hp, wp = record.padded_hw
    # window k covers shifted rows k·M .. k·M + M - 1, i.e. unshifted rows from (k·M + s) mod h_p
    rows = sorted({(k * m + s) % hp for k in range(hp // m)} - {0})
    cols = sorted({(k * m + s) % wp for k in range(wp // m)} - {0})
    rows, cols = [y for y in rows if y < fh], [x for x in cols if x < fw]
    _grid_lines(ax, np.array(rows) * cell_h - 0.5, np.array(cols) * cell_w - 0.5, (-0.5, h - 0.5), (-0.5, w - 0.5),
                color="white", lw=1.0, alpha=0.8, ls="--")
    win_rows, win_cols = record.window_of(token)
    for y0, y1 in _runs(r for r in win_rows.tolist() if r < fh):
        for x0, x1 in _runs(c for c in win_cols.tolist() if c < fw):
            ax.add_patch(Rectangle((x0 * cell_w - 0.5, y0 * cell_h - 0.5), (x1 - x0 + 1) * cell_w,
                                   (y1 - y0 + 1) * cell_h, fill=False, edgecolor=QUERY_COLOR, lw=1.6))
    ty, tx = token
    ax.add_patch(Rectangle((tx * cell_w - 0.5, ty * cell_h - 0.5), cell_w, cell_h, fill=False,
                           edgecolor=QUERY_COLOR, lw=1.2))
    _finish(ax, img, query)
    return heat


def _draw_sampling(ax, img, record: SamplingRecord, query_index, head, vmin, vmax, query):
    """Deformable attention: the sampling points of every level (colour = level, area = weight)
    over their weights spread on the finest grid; the star is the reference point."""
    h, w = img.shape[:2]
    amap = _as_numpy(record.map_for(query_index, head=head))
    _photo(ax, img)
    heat = _heat(ax, amap, (h, w), vmin, vmax)
    locs, weights = record.points_for(query_index, head=head)
    locs, weights = _as_numpy(locs), _as_numpy(weights)
    for level in range(locs.shape[0]):
        color = LEVEL_COLORS[level % len(LEVEL_COLORS)]
        lh, lw = record.level_shapes[level]
        ax.scatter(locs[level, :, 0] * w - 0.5, locs[level, :, 1] * h - 0.5, s=20 + 400 * weights[level],
                   facecolor=color, edgecolor="black", lw=0.6, alpha=0.9, label=f"level {level} ({lh}×{lw})")
    if record.reference_points is not None:
        ref = _as_numpy(record.reference_points[0, query_index]).reshape(-1, 2)[0]
        ax.plot([ref[0] * w - 0.5], [ref[1] * h - 0.5], marker="*", color="white", mec="black", ms=14)
    _finish(ax, img, query if _pixel_queries(record) else None)
    return heat


def _draw_masked_attention(ax, img, record: MaskedAttentionRecord, query_index, head, vmin, vmax, query):
    """Masked attention: the object query's attention over the pixels; hatched grey where the
    mask from the previous layer blocked it."""
    h, w = img.shape[:2]
    amap = _as_numpy(record.map_for(query_index, head=head))
    blocked = _as_numpy(record.mask_for(query_index, head=head))
    _photo(ax, img)
    heat = _heat(ax, amap, (h, w), vmin, vmax)
    shade = np.zeros(blocked.shape + (4,), np.float32)
    shade[blocked > 0] = (0.5, 0.5, 0.5, 0.75)
    ax.imshow(shade, interpolation="nearest", extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    _finish(ax, img)
    return heat


_DRAWERS = {
    AttentionRecord: _draw_grid_attention,
    WindowAttentionRecord: _draw_window_attention,
    SamplingRecord: _draw_sampling,
    MaskedAttentionRecord: _draw_masked_attention,
}


def draw_attention(ax, img, record, query, head, vmin=None, vmax=None):
    """Photo + where one query looks, for every record kind; returns the heat-map artist.

    ``query`` is a (y, x) pixel of the photo for records whose queries are pixels of a map
    (global, spatial-reduction, window attention, the pixel decoder's deformable attention),
    and an index for object queries (masked attention, the decoder's deformable attention).
    Each kind is drawn with its own geometry: the key grid (and the r x r tokens of a key
    cell), the (shifted) window, the sampling points, or the mask.
    """
    _check_record(record)
    drawer = next(f for t, f in _DRAWERS.items() if isinstance(record, t))
    token = _query_of(record, query, img.shape[:2])
    return drawer(ax, img, record, token, head, vmin, vmax, query)


def _describe(record, short: bool = False) -> str:
    """One line of what the record's query can see (``short``: fits under a row label)."""
    if isinstance(record, WindowAttentionRecord):
        shift = f", shifted by {record.shift}" if record.shift else ""
        return f"{record.window}×{record.window} windows{shift}" + ("" if short else f": {record.window ** 2} keys")
    if isinstance(record, SamplingRecord):
        levels, points = record.locations.shape[3:5]
        return f"{levels} level(s) × {points} points" + ("" if short else f" = {levels * points} samples")
    if isinstance(record, MaskedAttentionRecord):
        kh, kw = record.k_hw
        return f"{kh}×{kw} pixels" + ("" if short else ", masked where grey")
    r = reduction_of(record)
    kh, kw = record.k_hw
    return f"{kh}×{kw} keys, R={r * r}" if short else f"{kh}×{kw} keys: r = {r}, R = r² = {r * r}"


def _uniform_keys(record, query, head, image_hw) -> int | None:
    """How many keys the query can attend to (for the colorbar's uniform level), or None."""
    if isinstance(record, WindowAttentionRecord):
        token = _query_of(record, query, image_hw)
        return int((record.map_for(token, head=head) > 0).sum()) or None
    if isinstance(record, MaskedAttentionRecord):
        return int((~record.mask_for(_query_of(record, query, image_hw), head=head)).sum()) or None
    if isinstance(record, AttentionRecord):
        return record.k_hw[0] * record.k_hw[1]
    return None


@style.styled
def attention_overlay(image, record, query, *, head: int = 0, title: str | None = None) -> Figure:
    """Where one query looks, on the photo, for any attention or sampling record.

    For spatial-reduction attention: white lines are the key grid (kh x kw); each key is one
    cell made from r x r query tokens (dashed cyan: the cell holding the query, with its
    tokens), so a query sees N / R keys, R = r². For window attention the map is zero outside
    the query's (shifted) window, outlined in cyan; for deformable attention the dots are the
    sampling points (area = weight); for masked attention grey marks the blocked pixels.
    The cyan square is the query token, + the query pixel. Colours run from the map's
    smallest to its largest weight; the colorbar's cyan line marks uniform attention over the
    keys the query can reach.

    Args:
        image: the photo the model saw (see :func:`segviz.viz.arrays.as_image`).
        record: a record from ``segviz.capture`` (``rec.attention[name]`` or ``rec.sampling[name]``).
        query: (y, x) pixel in the photo, or an object query's index (masked attention,
            the decoder's deformable attention).
        head: which head.
        title: first title line (default: ``head {head}``).
    """
    record = _check_record(record)
    img = as_image(image)
    fig = style.figure(6.4, 5.4)
    ax = fig.subplots()
    heat = draw_attention(ax, img, record, query, head)
    where = (f"query pixel (y={query[0]}, x={query[1]})" if _pixel_queries(record) else f"object query {query}")
    ax.set_title(f"{title or f'head {head}'} · {where}\n{_describe(record)}")
    if isinstance(record, SamplingRecord):
        ax.legend(loc="lower right", fontsize=style.SMALL, framealpha=0.8)
    colorbar = fig.colorbar(heat, ax=ax, shrink=0.85)
    keys = _uniform_keys(record, query, head, img.shape[:2])
    if keys:
        _uniform_mark(colorbar, keys)
    else:
        colorbar.set_label("sampling weight, spread on the finest grid")
    return fig


def _uniform_mark(colorbar, n_keys: int, label: bool = True) -> None:
    """Draw the level of uniform attention, 1 / N_k, on a colorbar (and say so in its label)."""
    if label:
        colorbar.set_label(f"attention weight (cyan line: uniform, 1/{n_keys})")
    lo, hi = colorbar.mappable.get_clim()
    if lo <= 1.0 / n_keys <= hi:
        colorbar.ax.axhline(1.0 / n_keys, color=QUERY_COLOR, lw=2)


@style.styled
def attention_grid(image, records: Mapping[str, object], query, *, heads: Sequence[int] | None = None) -> Figure:
    """Stages x heads: the same query's attention in every stage and head.

    One row per record (e.g. the first block of each stage), one column per head; a row
    shares one colour scale (its colorbar at the right), so heads can be compared.

    Args:
        image: the photo.
        records: row label -> record from ``segviz.capture`` (any attention kind), in display order.
        query: (y, x) pixel in the photo (or an object query's index, see :func:`attention_overlay`).
        heads: which heads to show (default: all heads of each record).
    """
    if not records:
        raise ValueError("attention_grid needs at least one record")
    recs = {label: _check_record(r) for label, r in records.items()}
    img = as_image(image)
    chosen = {label: list(range(r.heads)) if heads is None else [h for h in heads if 0 <= h < r.heads]
              for label, r in recs.items()}
    cols = max(len(v) for v in chosen.values())
    if cols == 0:
        raise ValueError(f"none of heads={list(heads)} exists in these records")
    rows = len(recs)
    fig = style.figure(max(1.9 * cols + 1.4, 6.0), 2.05 * rows + 0.7)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for r, (label, record) in enumerate(recs.items()):
        token = _query_of(record, query, img.shape[:2])
        maps = [record.map_for(token, head=hd) for hd in chosen[label]]
        vmin = min(float(m.min()) for m in maps) if maps else 0.0
        vmax = max(float(m.max()) for m in maps) if maps else 1.0
        heat = None
        for c in range(cols):
            ax = axes[r, c]
            if c >= len(chosen[label]):
                ax.set_axis_off()
                continue
            heat = draw_attention(ax, img, record, query, chosen[label][c], vmin=vmin, vmax=vmax)
            ax.set_title(f"head {chosen[label][c]}", fontsize=style.SMALL)
        axes[r, 0].set_ylabel(f"{label}\n{_describe(record, short=True)}", fontsize=style.SMALL)
        keys = _uniform_keys(record, query, chosen[label][0], img.shape[:2]) if chosen[label] else None
        if heat is not None:
            colorbar = fig.colorbar(heat, ax=list(axes[r]), shrink=0.9, pad=0.01, aspect=12)
            if keys:
                _uniform_mark(colorbar, keys, label=False)
    where = f"query pixel (y={query[0]}, x={query[1]}) (cyan +)" if _pixel_queries(next(iter(recs.values()))) \
        else f"object query {query}"
    grids = "white lines = key grid; " if all(isinstance(r, AttentionRecord) for r in recs.values()) else ""
    fig.suptitle(f"where {where} looks: one row per stage\n"
                 f"{grids}one colour scale per row, cyan line on it = uniform attention")
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


@style.styled
def prediction_panels(panels: Sequence[tuple], class_names: Sequence[str] | None = None, *,
                      alpha: float = 0.55, same_scale: bool = True) -> Figure:
    """Several ``(image, labels, title)`` predictions side by side, one shared legend.

    Up to three panels stand in one row, more wrap onto further rows. With ``same_scale``
    (and one row) the panels are drawn at one scale, pixels for pixels (axes are labelled in
    pixels), so the same model run at two resolutions shows as two pictures of different
    size (up to 2x apart: beyond that the small ones would be unreadable, and all panels get
    the same size, as with ``same_scale=False``).
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
    cols = min(len(items), 3)
    rows = -(-len(items) // cols)
    widths = [img.shape[1] for img, _, _ in items]
    if rows > 1 or not same_scale or max(widths) > 2 * min(widths):
        widths = [1] * cols
    fig = style.figure(3.6 * cols + 1.6, 3.9 * rows + 0.3)
    grid = fig.add_gridspec(rows, cols, width_ratios=widths)
    axes = [fig.add_subplot(grid[i // cols, i % cols]) for i in range(len(items))]
    for ax, (img, lab, title) in zip(axes, items):
        full = _upsample_labels(lab, img.shape[:2])
        rgba = np.zeros(full.shape + (4,), np.float32)
        rgba[..., :3] = colors[full]
        rgba[..., 3] = alpha
        if names[0].lower() == "background":
            rgba[full == 0, 3] = 0.0
        ax.imshow(img)
        ax.imshow(rgba, interpolation="nearest")
        ax.set_title(title or "prediction", fontsize=style.NORMAL)
        ax.set_xlabel(f"{img.shape[1]} px")
        ax.set_ylabel(f"{img.shape[0]} px")
        ax.set_xticks([])
        ax.set_yticks([])
    present = sorted(set().union(*(np.unique(lab).tolist() for _, lab, _ in items)))
    handles = [Patch(facecolor=mcolors.to_hex(colors[i]), edgecolor="black",
                     label=names[i] + ("" if i in present else " (absent)"))
               for i in range(n_classes)
               if not (i == 0 and names[0].lower() == "background")]
    fig.legend(handles=handles, loc="outside right center", title="class", fontsize=style.SMALL)
    return fig
