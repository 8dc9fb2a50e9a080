"""Figures of the Swin chapter: hierarchy, patch merging, window cost, the cyclic shift and its
mask, the relative position bias, and how far a query reaches through W-MSA / SW-MSA blocks.

Pure functions: tensors, modules or records in, a ``matplotlib.figure.Figure`` (or an array) out.
Everything about windows comes from the model's own code in :mod:`segviz.models.swin`
(``window_partition``, ``shifted_window_mask``, ``relative_position_index``, ``PatchMerging``),
so a figure shows what the model computes, not a re-implementation of it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.colors as mcolors
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from segviz.models.swin import (
    MASK_VALUE, PatchMerging, WindowAttention, relative_position_index, shifted_window_mask, window_partition,
)
from segviz.nn.recording import WindowAttentionRecord
from segviz.viz import style
from segviz.viz.arrays import as_image
from segviz.viz.overlays import QUERY_COLOR, _as_numpy, _photo, draw_attention

REGION_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#b8860b", "#76b7b2", "#ff9da7", "#9c755f")
PARITY_COLORS = ("#ff3b30", "#0a84ff", "#34c759", "#ffcc00")   # x0, x1, x2, x3 of PatchMerging
PARITY_NAMES = ("x0 = x[0::2, 0::2]", "x1 = x[1::2, 0::2]", "x2 = x[0::2, 1::2]", "x3 = x[1::2, 1::2]")
PARITY_WHERE = ("top-left", "bottom-left", "top-right", "bottom-right")


def _clean(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def _lines(ax, ys, xs, extent_y, extent_x, **kw):
    for y in ys:
        ax.plot(extent_x, [y, y], **kw)
    for x in xs:
        ax.plot([x, x], extent_y, **kw)


def _outlined(ax, x, y, text, size=style.NORMAL, color="white", **kw):
    import matplotlib.patheffects as pe

    t = ax.text(x, y, text, ha="center", va="center", fontsize=size, color=color, fontweight="bold", **kw)
    t.set_path_effects([pe.withStroke(linewidth=2.5, foreground="black")])
    return t


# --------------------------------------------------------------------------- 1. hierarchy
@style.styled
def hierarchy_figure(image, features: Mapping[str, object], *, window: int | None = None) -> Figure:
    """The four stages' token grids drawn over the photo the model saw.

    One panel per stage: thin white lines are the token grid (one cell = one token, 4, 8, 16,
    32 pixels wide), thick cyan lines the M x M windows the stage attends in (when ``window`` is
    given). The title gives the stride, the grid and the channels.

    Args:
        image: the photo (see :func:`segviz.viz.arrays.as_image`).
        features: stage label -> (1, C, h, w) or (C, h, w) map (e.g. ``rec.features``), finest first.
        window: M, the window side in tokens, or None to draw no windows.
    """
    if not features:
        raise ValueError("hierarchy_figure needs at least one stage map")
    img = as_image(image)
    h, w = img.shape[:2]
    n = len(features)
    fig = style.figure(2.45 * n, 3.0)
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, (label, f) in zip(axes, features.items()):
        shape = tuple(f.shape)
        if len(shape) == 4:
            shape = shape[1:]
        if len(shape) != 3:
            raise ValueError(f"{label}: a stage map must be (1, C, h, w) or (C, h, w), got {tuple(f.shape)}")
        c, fh, fw = shape
        cell_h, cell_w = h / fh, w / fw
        ax.imshow(img)
        _lines(ax, np.arange(1, fh) * cell_h - 0.5, np.arange(1, fw) * cell_w - 0.5, (-0.5, h - 0.5), (-0.5, w - 0.5),
               color="white", lw=0.5 if fh > 16 else 0.8, alpha=0.75)
        extra = ""
        if window:
            _lines(ax, np.arange(window, fh, window) * cell_h - 0.5, np.arange(window, fw, window) * cell_w - 0.5,
                   (-0.5, h - 0.5), (-0.5, w - 0.5), color=QUERY_COLOR, lw=1.8)
            nw = -(-fh // window) * -(-fw // window)
            extra = f"\n{nw} window{'s' if nw > 1 else ''} of {window}×{window}"
        ax.set_title(f"{label}: 1/{round(w / fw)}\n{fh}×{fw} tokens × {c} ch{extra}", fontsize=style.SMALL)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        _clean(ax)
    fig.suptitle("the hierarchy: one white cell = one token"
                 + ("; cyan = the windows attention stays inside" if window else ""))
    return fig


def merging_order(merging: PatchMerging, h: int = 4, w: int = 4) -> np.ndarray:
    """Which input token each quarter of a merged token's 4C vector comes from, read from the
    module itself: an (h, w) map whose tokens carry their own index in every channel goes
    through ``merging`` and the input of its LayerNorm (the concatenated 4C vectors) is caught.

    Returns (h/2, w/2, 4) int: [i, j, k] = flat index (y·w + x) of the token that fills
    channels k·C … (k+1)·C − 1 of merged token (i, j).
    """
    c = merging.dim
    index = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w).expand(1, c, h, w)
    caught = {}
    handle = merging.norm.register_forward_pre_hook(lambda _m, args: caught.setdefault("x", args[0].detach()))
    try:
        with torch.no_grad():
            merging(index.to(next(merging.parameters()).device))
    finally:
        handle.remove()
    x = caught["x"][0].cpu()                                      # (h/2, w/2, 4C)
    return x.reshape(h // 2, w // 2, 4, c)[..., 0].round().long().numpy()


@style.styled
def patch_merging_figure(image, merging: PatchMerging, *, at: tuple[int, int] = (0, 0), patch: int = 4,
                         tokens: int = 6) -> Figure:
    """Which 4 tokens become one in PatchMerging, and in which order they are concatenated.

    Left: a zoom of the photo with the stage's tokens (``patch`` pixels each), coloured by their
    role x0…x3 (row and column parity); one 2 x 2 group is outlined and named. Middle: the
    merged token's 4C vector, quarter by quarter, in the order the module concatenates them
    (read from ``merging`` by :func:`merging_order`, not assumed). Right: the merged grid on the
    same zoom: one token of the next stage covers the 2 x 2 group.

    Args:
        image: the photo the model saw.
        merging: the model's PatchMerging (e.g. ``model.backbone.stages[1].downsample``).
        at: (y, x) token of the zoom's top-left corner (even numbers keep groups whole).
        patch: pixels per token side at this stage (4 for stage 1).
        tokens: the zoom's side in tokens (even).
    """
    img = as_image(image)
    order = merging_order(merging, 2, 2)[0, 0]                   # flat indices into a 2 x 2 map
    roles = [(int(k) // 2, int(k) % 2) for k in order]            # (dy, dx) of x0..x3
    ty, tx = (at[0] // 2) * 2, (at[1] // 2) * 2
    y0, x0 = ty * patch, tx * patch
    side = tokens * patch
    if y0 + side > img.shape[0] or x0 + side > img.shape[1]:
        raise ValueError(f"the zoom at token {at} with {tokens} tokens of {patch} px leaves the "
                         f"{img.shape[0]}x{img.shape[1]} image")
    crop = img[y0:y0 + side, x0:x0 + side]
    fig = style.figure(10, 3.7)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1.25, 1]})
    ax = axes[0]
    ax.imshow(crop, extent=(-0.5, tokens - 0.5, tokens - 0.5, -0.5), interpolation="nearest")
    for i in range(tokens):
        for j in range(tokens):
            k = roles.index((i % 2, j % 2))
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=mcolors.to_rgba(PARITY_COLORS[k], 0.28),
                                   edgecolor="white", lw=0.6))
            _outlined(ax, j, i, f"x{k}", size=style.SMALL, color=PARITY_COLORS[k])
    g = tokens // 2 - 1 if tokens >= 4 else 0
    ax.add_patch(Rectangle((2 * g - 0.5, 2 * g - 0.5), 2, 2, fill=False, edgecolor="white", lw=3))
    ax.set_title(f"stage tokens ({patch}×{patch} px each),\nrole by row / column parity", fontsize=style.SMALL)
    _clean(ax)
    ax = axes[1]
    c = merging.dim
    for k in range(4):
        dy, dx = roles[k]
        ax.add_patch(Rectangle((k, 0), 1, 1, facecolor=PARITY_COLORS[k], edgecolor="black"))
        ax.text(k + 0.5, 0.5, f"x{k}\nC={c}", ha="center", va="center", fontsize=style.SMALL)
        where = PARITY_WHERE[k].replace("-", "-\n")
        ax.text(k + 0.5, -0.12, f"{where}\n(+{dy}, +{dx})", ha="center", va="top", fontsize=style.SMALL)
    ax.annotate("", xy=(2, 1.55), xytext=(2, 1.05), arrowprops=dict(arrowstyle="<-", lw=1.5))
    ax.text(2, 1.62, f"LayerNorm(4C = {4 * c}) → Linear {4 * c}→{2 * c}, no bias\n= one token of the next stage",
            ha="center", va="bottom", fontsize=style.SMALL)
    ax.set_xlim(-0.1, 4.1)
    ax.set_ylim(-1.15, 2.25)
    ax.set_axis_off()
    ax.set_title("the merged token: concat(x0, x1, x2, x3)\n(order read from the module)", fontsize=style.SMALL)
    ax = axes[2]
    ax.imshow(crop, extent=(-0.5, tokens - 0.5, tokens - 0.5, -0.5), interpolation="nearest")
    _lines(ax, np.arange(2, tokens, 2) - 0.5, np.arange(2, tokens, 2) - 0.5, (-0.5, tokens - 0.5),
           (-0.5, tokens - 0.5), color="white", lw=1.2)
    ax.add_patch(Rectangle((2 * g - 0.5, 2 * g - 0.5), 2, 2, fill=False, edgecolor="white", lw=3))
    ax.set_title(f"next stage: one token per 2×2 group\n({2 * patch}×{2 * patch} px, {2 * c} channels)",
                 fontsize=style.SMALL)
    _clean(ax)
    fig.suptitle("patch merging: 4 neighbours → 1 token, half the resolution, twice the channels")
    return fig


# --------------------------------------------------------------------------- 2. window cost
def window_cost_rows(sides: Sequence[int], *, dim: int = 96, window: int = 7, patch: int = 4) -> list[dict]:
    """The paper's eq. (1)-(2) for stage 1 of an H x H image (h = w = H / patch tokens, C = dim):

        Ω(MSA)   = 4hwC² + 2(hw)²C        Ω(W-MSA) = 4hwC² + 2M²hwC

    in GMACs (multiply-adds, the papers' "FLOPs"), one row per image side.
    """
    if window < 1 or dim < 1 or patch < 1:
        raise ValueError(f"window, dim and patch must be positive, got {window}, {dim}, {patch}")
    rows = []
    for side in sides:
        if side < patch:
            raise ValueError(f"image side {side} is smaller than the patch size {patch}")
        hw = (side // patch) ** 2
        msa = 4 * hw * dim ** 2 + 2 * hw ** 2 * dim
        wmsa = 4 * hw * dim ** 2 + 2 * window ** 2 * hw * dim
        rows.append({"image": f"{side}²", "tokens hw": hw, "Ω(MSA) GMACs": msa / 1e9,
                     "Ω(W-MSA) GMACs": wmsa / 1e9, "MSA / W-MSA": msa / wmsa})
    return rows


@style.styled
def window_cost_figure(sides: Sequence[int] = tuple(range(64, 1025, 32)), *, dim: int = 96, window: int = 7,
                       patch: int = 4, marks: Sequence[int] = (224, 512, 1024)) -> Figure:
    """Ω(MSA) and Ω(W-MSA) of one stage-1 attention layer against the image side (log scale):
    global attention grows with (hw)², window attention linearly in hw."""
    rows = window_cost_rows(sides, dim=dim, window=window, patch=patch)
    x = np.array(sides)
    msa = np.array([r["Ω(MSA) GMACs"] for r in rows])
    wmsa = np.array([r["Ω(W-MSA) GMACs"] for r in rows])
    fig = style.figure(7.5, 3.8)
    ax = fig.subplots()
    ax.plot(x, msa, "-", color="#e15759", lw=2, label="MSA (global): 4hwC² + 2(hw)²C")
    ax.plot(x, wmsa, "-", color="#4e79a7", lw=2, label=f"W-MSA (M = {window}): 4hwC² + 2M²hwC")
    for side in marks:
        r = window_cost_rows([side], dim=dim, window=window, patch=patch)[0]
        ax.plot([side, side], [r["Ω(W-MSA) GMACs"], r["Ω(MSA) GMACs"]], ":", color="grey")
        ax.text(side, r["Ω(MSA) GMACs"] * 1.25, f"×{r['MSA / W-MSA']:.0f}", ha="center", va="bottom",
                fontsize=style.SMALL)
    ax.set_yscale("log")
    ax.set_xlabel(f"image side H = W (pixels); stage 1 has (H/{patch})² tokens")
    ax.set_ylabel("GMACs of one attention layer")
    ax.set_title(f"stage-1 attention cost, C = {dim} (Swin-T): numbers = MSA / W-MSA")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_ylim(top=msa.max() * 4)
    return fig


# --------------------------------------------------------------------------- 3. the cyclic shift
def region_labels(h: int, w: int, window: int, shift: int) -> np.ndarray:
    """The regions of the shifted map, read from the model's own mask.

    :func:`segviz.models.swin.shifted_window_mask` says, window by window, which tokens may
    attend to each other (mask 0). Those groups are the regions; they are numbered in
    row-major order of first appearance on the **rolled** map. For an (h, w) map one window
    wider than the window on each side (e.g. 8 x 8 with window 4, shift 2) this is exactly the
    official code's numbering 0…8; on a larger map every window of the unaffected interior is a
    group of its own.

    Returns (h, w) int on the rolled map (``np.roll(labels, (shift, shift), (0, 1))`` puts
    them where those tokens sit before the roll).
    """
    if h % window or w % window:
        raise ValueError(f"the map {h}x{w} must be a multiple of the window {window} (pad it first)")
    mask = shifted_window_mask(h, w, window, shift)                       # (nW, M², M²)
    position = torch.arange(h * w).reshape(1, h, w, 1)
    where = window_partition(position, window)[..., 0]                    # (nW, M²) flat positions
    labels = np.full(h * w, -1, dtype=np.int64)
    group = np.full(h * w, -1, dtype=np.int64)
    for win in range(mask.shape[0]):
        for i in range(window * window):
            friends = (mask[win, i] == 0).nonzero().flatten()
            group[where[win, i]] = int(where[win, friends].min())          # the group's first member
    order = {}
    for p in range(h * w):                                                # row-major first appearance
        labels[p] = order.setdefault(group[p], len(order))
    return labels.reshape(h, w)


def _region_tint(ax, labels, cell, alpha=0.38):
    rgba = np.zeros(labels.shape + (4,))
    for r in np.unique(labels):
        rgba[labels == r] = mcolors.to_rgba(REGION_COLORS[r % len(REGION_COLORS)], alpha)
    hh, ww = labels.shape
    ax.imshow(rgba, extent=(-0.5, ww * cell - 0.5, hh * cell - 0.5, -0.5), interpolation="nearest")


def _pieces(labels):
    """[(region, (y0, y1, x0, x1))] of each contiguous rectangle of a label map."""
    out = []
    for r in np.unique(labels):
        ys, xs = np.nonzero(labels == r)
        ry, rx = sorted(set(ys.tolist())), sorted(set(xs.tolist()))
        from segviz.viz.overlays import _runs

        for a, b in _runs(ry):
            for c, d in _runs(rx):
                if (labels[a:b + 1, c:d + 1] == r).all():
                    out.append((int(r), (a, b, c, d)))
    return out


def _window_of_rolled(h, w, window):
    return (np.arange(h)[:, None] // window) * (w // window) + np.arange(w)[None, :] // window


@style.styled
def cyclic_shift_figure(image, *, grid: int = 8, window: int = 4, shift: int = 2) -> Figure:
    """SW-MSA's cyclic shift on the photo, step by step, on a grid x grid token map.

    (a) block l, W-MSA: the map cut into windows of M x M tokens.
    (b) block l+1, SW-MSA: the windows moved by s tokens; along the edges they would be cut
        (9 pieces, numbered by region; the label under each number is the window it joins).
    (c) ``torch.roll(x, (-s, -s))``: the top s rows go to the bottom, the left s columns to the
        right; the 9 pieces now fill 4 whole windows again, but a window may hold several
        regions that were never neighbours (window 3: the photo's four corners). The mask keeps
        them apart (next figure).

    The photo is resized to grid x grid tokens of equal size; the regions are those of
    :func:`region_labels` (from the model's mask).
    """
    if grid % window or not 0 < shift < window:
        raise ValueError(f"grid must be a multiple of window and 0 < shift < window, got {grid}, {window}, {shift}")
    img = as_image(image)
    cell = img.shape[0] // grid
    img = img[:cell * grid, :cell * grid]
    side = cell * grid
    rolled_labels = region_labels(grid, grid, window, shift)
    labels = np.roll(rolled_labels, (shift, shift), (0, 1))
    win_rolled = _window_of_rolled(grid, grid, window)
    win_orig = np.roll(win_rolled, (shift, shift), (0, 1))
    fig = style.figure(10, 4.1)
    axes = fig.subplots(1, 3)
    ext = (-0.5, side - 0.5)

    def tokens(ax):
        _lines(ax, np.arange(1, grid) * cell - 0.5, np.arange(1, grid) * cell - 0.5, ext, ext, color="white",
               lw=0.5, alpha=0.6)
        ax.set_xlim(*ext)
        ax.set_ylim(ext[1], ext[0])
        _clean(ax)

    ax = axes[0]
    ax.imshow(img)
    tokens(ax)
    _lines(ax, np.arange(window, grid, window) * cell - 0.5, np.arange(window, grid, window) * cell - 0.5, ext, ext,
           color=QUERY_COLOR, lw=2.5)
    for wi in range((grid // window) ** 2):
        wy, wx = divmod(wi, grid // window)
        _outlined(ax, (wx + 0.5) * window * cell, (wy + 0.5) * window * cell, f"w{wi}", size=style.LARGE)
    ax.set_title(f"(a) block l, W-MSA:\n{grid}×{grid} tokens, {window}×{window} windows")
    ax = axes[1]
    ax.imshow(img)
    _region_tint(ax, labels, cell)
    tokens(ax)
    cuts = [(k * window + shift) % grid for k in range(grid // window)]
    _lines(ax, np.array(cuts) * cell - 0.5, np.array(cuts) * cell - 0.5, ext, ext, color="white", lw=2.5, ls="--")
    for r, (a, b, c, d) in _pieces(labels):
        _outlined(ax, (c + d + 1) / 2 * cell, (a + b + 1) / 2 * cell, f"{r}\n(w{win_orig[a, c]})", size=style.SMALL)
    ax.set_title(f"(b) block l+1, SW-MSA: windows moved by\ns = {shift}: 9 pieces, region (window)")
    ax = axes[2]
    ax.imshow(np.roll(img, (-shift * cell, -shift * cell), (0, 1)))
    _region_tint(ax, rolled_labels, cell)
    tokens(ax)
    _lines(ax, np.arange(window, grid, window) * cell - 0.5, np.arange(window, grid, window) * cell - 0.5, ext, ext,
           color=QUERY_COLOR, lw=2.5)
    for r, (a, b, c, d) in _pieces(rolled_labels):
        _outlined(ax, (c + d + 1) / 2 * cell, (a + b + 1) / 2 * cell, str(r), size=style.NORMAL)
    ax.set_title(f"(c) torch.roll by −{shift}: 4 whole windows;\nw3 holds regions "
                 f"{', '.join(map(str, sorted(set(rolled_labels[win_rolled == (grid // window) ** 2 - 1]))))}")
    fig.suptitle("the cyclic shift: tint and number = region; a window may only mix tokens of one region")
    return fig


def _region_ticks(ax, labels_in_window, axis):
    m2 = len(labels_in_window)
    ticks = np.arange(m2)
    texts = [str(r) for r in labels_in_window]
    if axis == "x":
        ax.set_xticks(ticks, texts)
        tick_labels = ax.get_xticklabels()
    else:
        ax.set_yticks(ticks, texts)
        tick_labels = ax.get_yticklabels()
    for t, r in zip(tick_labels, labels_in_window):
        t.set_color(REGION_COLORS[r % len(REGION_COLORS)])
        t.set_fontweight("bold")
    ax.tick_params(length=0, pad=1)


@style.styled
def window_masks_figure(*, grid: int = 8, window: int = 4, shift: int = 2) -> Figure:
    """The SW-MSA mask of every window of a grid x grid map, as the model builds it.

    One M² x M² matrix per window (rows: query token, columns: key token, both in row-major
    order inside the window); red = −100 (the two tokens are in different regions: blocked),
    light = 0 (same region: allowed). The tick labels give each token's region (its colour as
    in :func:`cyclic_shift_figure`).
    """
    hp = -(-grid // window) * window
    mask = shifted_window_mask(hp, hp, window, shift).numpy()
    labels = region_labels(hp, hp, window, shift)
    per_window = window_partition(torch.from_numpy(labels).reshape(1, hp, hp, 1), window)[..., 0].numpy()
    n = mask.shape[0]
    if n > 4:
        raise ValueError(f"{n} windows: window_masks_figure draws up to 4 (use an {2 * window}x{2 * window} grid)")
    fig = style.figure(10, 3.3)
    axes = np.atleast_1d(fig.subplots(1, n))
    cmap = mcolors.ListedColormap(["#f4f4f4", "#d62728"])
    for wi, ax in enumerate(axes):
        ax.imshow(mask[wi] == MASK_VALUE, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        m2 = window * window
        _lines(ax, np.arange(m2 + 1) - 0.5, np.arange(m2 + 1) - 0.5, (-0.5, m2 - 0.5), (-0.5, m2 - 0.5),
               color="white", lw=0.4)
        _region_ticks(ax, per_window[wi], "x")
        _region_ticks(ax, per_window[wi], "y")
        regions = sorted(set(per_window[wi].tolist()))
        blocked = int((mask[wi] == MASK_VALUE).sum())
        ax.set_title(f"window {wi}: region{'s' if len(regions) > 1 else ''} {', '.join(map(str, regions))}\n"
                     f"{blocked} of {m2 * m2} entries = {MASK_VALUE:g}", fontsize=style.SMALL)
        ax.set_xlabel("key token (its region)", fontsize=style.SMALL)
        if wi == 0:
            ax.set_ylabel("query token (its region)", fontsize=style.SMALL)
    fig.legend(handles=[Patch(facecolor="#d62728", label=f"{MASK_VALUE:g}: different regions (blocked)"),
                        Patch(facecolor="#f4f4f4", edgecolor="grey", label="0: same region (allowed)")],
               loc="outside lower center", ncol=2)
    fig.suptitle(f"the SW-MSA mask (added to QKᵀ/√d + B before the softmax), {grid}×{grid} tokens, "
                 f"window {window}, shift {shift}")
    return fig


@style.styled
def masked_attention_figure(record: WindowAttentionRecord, *, window_index: int = -1, head: int = 0) -> Figure:
    """What the mask does to a real SW-MSA block: one window's attention probabilities.

    Left: the probabilities (rows sum to 1); right: the same on a log10 scale, where the
    blocked pairs (different regions) show at ~e^-100 ≈ 1e-44 of the allowed ones. Tick
    labels give each token's region (from :func:`region_labels` of the record's padded map).
    """
    if not isinstance(record, WindowAttentionRecord) or not record.shift:
        raise ValueError("masked_attention_figure needs a shifted WindowAttentionRecord (an SW-MSA block)")
    n = record.windows_hw[0] * record.windows_hw[1]
    wi = window_index % n
    probs = _as_numpy(record.probs[0, wi, head])
    hp, wp = record.padded_hw
    labels = region_labels(hp, wp, record.window, record.shift)
    per_window = window_partition(torch.from_numpy(labels).reshape(1, hp, wp, 1), record.window)[..., 0].numpy()[wi]
    different = per_window[:, None] != per_window[None, :]
    fig = style.figure(9.6, 4.3)
    axes = fig.subplots(1, 2)
    im = axes[0].imshow(probs, cmap="magma", interpolation="nearest", vmin=0)
    fig.colorbar(im, ax=axes[0], shrink=0.85, label="attention weight")
    logp = np.log10(np.maximum(probs.astype(np.float64), 1e-50))    # exact zeros (underflow) shown at -50
    im = axes[1].imshow(logp, cmap="viridis", interpolation="nearest", vmin=-50, vmax=0)
    fig.colorbar(im, ax=axes[1], shrink=0.85, label="log10 attention weight")
    across = float(probs[different].max()) if different.any() else 0.0
    within = float(probs[~different].min())
    for ax in axes:
        _region_ticks(ax, per_window, "x")
        _region_ticks(ax, per_window, "y")
        ax.set_xlabel("key token (its region)")
        ax.set_ylabel("query token (its region)")
    axes[0].set_title("probabilities", fontsize=style.SMALL)
    axes[1].set_title(f"log10: across regions at most {across:.0e}\n(within a region at least {within:.0e})",
                      fontsize=style.SMALL)
    wy, wx = divmod(wi, record.windows_hw[1])
    fig.suptitle(f"a trained SW-MSA block, window {wi} (row {wy}, column {wx} of the rolled map), head {head}")
    return fig


# --------------------------------------------------------------------------- 4. relative position bias
@style.styled
def relative_bias_figure(attn: WindowAttention, *, head: int = 0) -> Figure:
    """The relative position bias of one window-attention module, in three steps (eq. 4):

    (a) the learned table B̂ of (2M−1)² offsets for one head, drawn as a (2M−1) x (2M−1) image
        indexed by (Δy, Δx) = query − key;
    (b) the M² x M² index matrix (:func:`segviz.models.swin.relative_position_index`): which
        table row each (query, key) pair reads;
    (c) B = B̂[index], the M² x M² bias added to QKᵀ/√d for that head.
    """
    m = attn.window_size
    if not 0 <= head < attn.num_heads:
        raise ValueError(f"head must be in 0..{attn.num_heads - 1}, got {head}")
    table = _as_numpy(attn.relative_position_bias_table[:, head]).reshape(2 * m - 1, 2 * m - 1)
    index = relative_position_index(m).numpy()
    bias = _as_numpy(attn.relative_position_bias()[head])
    fig = style.figure(10, 3.9)
    axes = fig.subplots(1, 3)
    lim = float(np.abs(table).max()) or 1.0
    ax = axes[0]
    im = ax.imshow(table, cmap="RdBu_r", vmin=-lim, vmax=lim)
    offsets = np.arange(-(m - 1), m)
    ax.set_xticks(np.arange(2 * m - 1), offsets)
    ax.set_yticks(np.arange(2 * m - 1), offsets)
    ax.set_xlabel("Δx = x_query − x_key")
    ax.set_ylabel("Δy = y_query − y_key")
    ax.set_title(f"(a) table B̂, head {head}: (2M−1)²\n= {(2 * m - 1) ** 2} learned values", fontsize=style.SMALL)
    fig.colorbar(im, ax=ax, shrink=0.7, location="bottom", pad=0.2)
    m2 = m * m
    blocks = np.arange(m, m2, m) - 0.5

    def token_axes(ax):
        ax.set_xticks(np.arange(0, m2, m))
        ax.set_yticks(np.arange(0, m2, m))
        _lines(ax, blocks, blocks, (-0.5, m2 - 0.5), (-0.5, m2 - 0.5), color="black", lw=0.6, alpha=0.5)
        ax.set_xlabel("key token (row-major in the window)")
        ax.set_ylabel("query token")

    ax = axes[1]
    im = ax.imshow(index, cmap="viridis")
    token_axes(ax)
    ax.set_title(f"(b) index: the table row each pair reads,\n{m2}×{m2} (diagonal: Δ = (0, 0), row "
                 f"{index[0, 0]})", fontsize=style.SMALL)
    fig.colorbar(im, ax=ax, shrink=0.7, location="bottom", pad=0.2, label="table row")
    ax = axes[2]
    im = ax.imshow(bias, cmap="RdBu_r", vmin=-lim, vmax=lim)
    token_axes(ax)
    ax.set_title(f"(c) B = B̂[index], head {head}: added\nto QKᵀ/√d in every window", fontsize=style.SMALL)
    fig.colorbar(im, ax=ax, shrink=0.7, location="bottom", pad=0.2, label="bias")
    fig.suptitle(f"relative position bias, window M = {m}: the same offset always reads the same value")
    return fig


# --------------------------------------------------------------------------- 5. reach through blocks
def dense_attention(record: WindowAttentionRecord, head: int | None = None, batch: int = 0) -> torch.Tensor:
    """The record's window attention as one (N, N) matrix over the unpadded map's N = h·w
    tokens (row: query, column: key, row-major), the shift undone; ``head=None`` averages the
    heads. Entries outside the query's window are 0; weight on padding tokens is dropped.

    Built with the model's own :func:`segviz.models.swin.window_partition` of the rolled
    position map, so row q equals ``record.map_for(q).flatten()``.
    """
    hp, wp = record.padded_hw
    h, w = record.feature_hw
    s = record.shift
    probs = record.probs[batch]                                       # (nW, heads, M², M²)
    probs = probs.mean(1) if head is None else probs[:, head]
    position = torch.arange(hp * wp).reshape(1, hp, wp, 1)
    if s:
        position = torch.roll(position, shifts=(-s, -s), dims=(1, 2))
    where = window_partition(position, record.window)[..., 0]       # (nW, M²) padded flat positions
    full = probs.new_zeros(hp * wp, hp * wp)
    full[where[:, :, None], where[:, None, :]] = probs
    keep = (torch.arange(hp)[:, None] < h) & (torch.arange(wp)[None, :] < w)
    keep = keep.flatten()
    return full[keep][:, keep]


def _coarsen(values: torch.Tensor, hw_fine, hw_coarse) -> torch.Tensor:
    """(N_coarse,) -> (N_fine,): each coarse token's weight spread evenly over the fine tokens
    PatchMerging made it from (fine (y, x) -> coarse (y // 2, x // 2))."""
    hf, wf = hw_fine
    hc, wc = hw_coarse
    rows, cols = torch.arange(hf) // 2, torch.arange(wf) // 2
    if rows.max() >= hc or cols.max() >= wc:
        raise ValueError(f"a {hc}x{wc} map is not the patch merging of a {hf}x{wf} map")
    counts = torch.bincount(rows, minlength=hc)[:, None] * torch.bincount(cols, minlength=wc)[None, :]
    return (values.reshape(hc, wc) / counts)[rows[:, None], cols[None, :]].flatten()


def attention_reach(records: Sequence[WindowAttentionRecord], query_yx: tuple[int, int], image_hw,
                    *, residual: float = 0.5, dense: Sequence[torch.Tensor] | None = None) -> list[np.ndarray]:
    """How far one query pixel reaches after each of consecutive window-attention blocks.

    Attention rollout (Abnar & Zuidema 2020): each block mixes tokens by
    A = (1 − residual)·P + residual·I (P: its head-averaged attention; I: the skip connection),
    and the output at the query after blocks 1…l depends on the input tokens through
    row q of A_l ⋯ A_1. Where the map halves (PatchMerging), a coarse token's weight is spread
    evenly over the 2 x 2 fine tokens it merges. Every map is returned on the **first**
    record's grid, so the reach of all blocks can be drawn on the same photo.

    Args:
        records: the blocks' records in forward order (several stages allowed, finest first).
        query_yx: (y, x) pixel of the photo.
        image_hw: the photo's (H, W).
        residual: weight of the skip connection in each block (0.5: the usual rollout).
        dense: the records' :func:`dense_attention` (head-averaged), if already computed.

    Returns one (h1, w1) array per block, summing to 1.
    """
    if not records:
        raise ValueError("attention_reach needs at least one record")
    if not 0 <= residual < 1:
        raise ValueError(f"residual must be in [0, 1), got {residual}")
    mats = list(dense) if dense is not None else [dense_attention(r) for r in records]
    maps = []
    for last in range(len(records)):
        rec = records[last]
        ty, tx = rec.query_token(tuple(query_yx), tuple(image_hw))
        v = torch.zeros(rec.feature_hw[0] * rec.feature_hw[1])
        v[ty * rec.feature_hw[1] + tx] = 1.0
        for i in range(last, -1, -1):
            a = mats[i].float()
            v = (1 - residual) * (v @ a) + residual * v
            if i > 0 and tuple(records[i - 1].feature_hw) != tuple(records[i].feature_hw):
                v = _coarsen(v, records[i - 1].feature_hw, records[i].feature_hw)
        v = v / v.sum().clamp_min(1e-12)
        maps.append(v.reshape(records[0].feature_hw).numpy())
    return maps


def _block_kind(record) -> str:
    return "SW-MSA" if record.shift else "W-MSA"


def _draw_reach(ax, img, reach, record0, query, vmin_log=-4.0):
    h, w = img.shape[:2]
    _photo(ax, img)
    logr = np.log10(np.maximum(reach / reach.max(), 10 ** vmin_log))
    heat = ax.imshow(logr, cmap="magma", alpha=0.7, vmin=vmin_log, vmax=0, interpolation="nearest",
                     extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    fh, fw = record0.feature_hw
    m = record0.window
    _lines(ax, np.arange(m, fh, m) * h / fh - 0.5, np.arange(m, fw, m) * w / fw - 0.5, (-0.5, h - 0.5),
           (-0.5, w - 0.5), color="white", lw=0.8, alpha=0.7)
    ax.plot([query[1]], [query[0]], marker="+", color=QUERY_COLOR, ms=12, mew=2.2)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    _clean(ax)
    return heat


@style.styled
def reach_figure(image, records: Mapping[str, WindowAttentionRecord], query: tuple[int, int], *,
                 head: int = 0, residual: float = 0.5) -> Figure:
    """One query pixel through consecutive W-MSA / SW-MSA blocks.

    Top row: each block's own attention of the query (``head``), on the photo: cyan, the window
    it attends in (SW-MSA: moved by the shift, in pieces where it wraps around), dashed white the
    partition that block used. Bottom row: the query's reach after that many blocks
    (:func:`attention_reach`, heads averaged), on a log scale relative to its peak, with the
    first block's windows in white: after one W-MSA block it fills one window; each SW-MSA
    block lets it cross the borders, and after a patch merging the windows are twice as large.
    """
    if not records:
        raise ValueError("reach_figure needs at least one record")
    recs = list(records.values())
    if not all(isinstance(r, WindowAttentionRecord) for r in recs):
        raise ValueError("reach_figure needs WindowAttentionRecords (from segviz.capture on a Swin model)")
    img = as_image(image)
    reach = attention_reach(recs, query, img.shape[:2], residual=residual)
    n = len(recs)
    fig = style.figure(2.35 * n + 0.9, 5.3)
    axes = np.atleast_2d(fig.subplots(2, n, squeeze=False))
    heat = None
    for c, (label, record) in enumerate(records.items()):
        hd = min(head, record.heads - 1)
        draw_attention(axes[0, c], img, record, query, hd)
        axes[0, c].set_title(f"{label}\n{_block_kind(record)}, head {hd}", fontsize=style.SMALL)
        heat = _draw_reach(axes[1, c], img, reach[c], recs[0], query)
        spread = int((reach[c] >= 1e-2 * reach[c].max()).sum())
        axes[1, c].set_title(f"reach after {c + 1} block{'s' if c else ''}\n{spread} tokens ≥ 1% of peak",
                             fontsize=style.SMALL)
    axes[0, 0].set_ylabel("this block's\nattention", fontsize=style.SMALL)
    axes[1, 0].set_ylabel("composed reach\n(heads averaged)", fontsize=style.SMALL)
    cb = fig.colorbar(heat, ax=list(axes[1]), shrink=0.9, pad=0.01, aspect=12)
    cb.set_label("log10 of reach / peak", fontsize=style.SMALL)
    if any(r.shift for r in recs):
        what = "one block sees one window; shifted blocks cross the borders"
    else:
        what = "no shifted block: the reach grows only where patch merging enlarges the windows"
    fig.suptitle(f"query pixel (y={query[0]}, x={query[1]}) (cyan +): {what}")
    return fig
