"""The DeepLab chapter's figures: atrous taps, gridding, receptive-field growth, the effective
receptive field, ASPP's reach, SPP's bins, and a thin explorer.

Pure functions first (data in, ``Figure`` out), the widget last:

* :func:`atrous_taps_figure` — a 3x3 kernel's taps at rates 1, 2, 4, 6 on a pixel grid;
* :func:`gridding_counts` / :func:`gridding_figure` — how often each input pixel reaches one output
  unit through a stack of atrous convs: rates (2, 2, 2) leave holes (the gridding effect), rates
  (1, 2, 3) (hybrid dilated convolution, Wang et al. 2018) cover every pixel;
* :func:`rf_growth_figure` — receptive field and stride layer by layer, for several variants;
* :func:`erf_figure` — effective receptive fields over the photo, with the theoretical window;
* :func:`aspp_windows_figure` — each ASPP branch's receptive field as a square on the photo;
* :func:`spp_bins` / :func:`spp_figure` — SPP's {4x4, 2x2, 1x1} bins on maps of two sizes, and the
  21 numbers per channel each gives;
* :func:`explorer_figure` and :class:`DeepLabExplorer` — rate, output stride, branches on/off and a
  query pixel.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from segviz.viz import style
from segviz.viz.arrays import as_image, as_labels, as_plane
from segviz.viz.explorers import FigureSender
from segviz.viz.overlays import class_colors

BRANCH_COLORS = ("#1f77b4", "#2ca02c", "#ff7f0e", "#d62728", "#9467bd", "#8c564b")


def _clean(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _check_rates(rates, what="rates") -> tuple[int, ...]:
    rates = tuple(rates) if isinstance(rates, Sequence) and not isinstance(rates, str) else None
    if not rates or not all(isinstance(r, (int, np.integer)) and not isinstance(r, bool) and r >= 1 for r in rates):
        raise ValueError(f"{what} must be a non-empty sequence of integers >= 1, e.g. (1, 2, 4, 6)")
    return tuple(int(r) for r in rates)


# --------------------------------------------------------------------------- 1. atrous taps
@style.styled
def atrous_taps_figure(rates: Sequence[int] = (1, 2, 4, 6), kernel: int = 3) -> Figure:
    """A k x k kernel at each rate r on one pixel grid: its k² taps r pixels apart, spanning
    k' = r(k - 1) + 1 pixels per side (outlined); padding r(k - 1)/2 keeps the map size."""
    rates = _check_rates(rates)
    if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be an odd integer >= 1, got {kernel!r}")
    span = max(r * (kernel - 1) + 1 for r in rates)
    n = span + 2
    fig = style.figure(2.45 * len(rates), 2.9)
    axes = fig.subplots(1, len(rates), squeeze=False)[0]
    c = n // 2
    for ax, r in zip(axes, rates):
        grid = np.zeros((n, n))
        offsets = (np.arange(kernel) - kernel // 2) * r
        for dy in offsets:
            for dx in offsets:
                grid[c + dy, c + dx] = 1
        ax.imshow(grid, cmap="Blues", vmin=0, vmax=1.3)
        ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
        ax.grid(which="minor", color="0.8", linewidth=0.5)
        ax.tick_params(which="both", length=0)
        _clean(ax)
        k_eff = r * (kernel - 1) + 1
        half = (k_eff - 1) / 2
        ax.add_patch(Rectangle((c - half - 0.5, c - half - 0.5), k_eff, k_eff, fill=False, edgecolor="#d62728", lw=1.5))
        ax.plot([c], [c], marker="x", color="white", markersize=6)
        ax.set_title(f"rate {r}: k' = {r}·({kernel}−1)+1 = {k_eff}\n{kernel * kernel} taps, padding {r * (kernel - 1) // 2}",
                     fontsize=style.SMALL)
    fig.suptitle(f"A {kernel}×{kernel} atrous kernel: same weights, taps spread r pixels apart")
    return fig


# --------------------------------------------------------------------------- 2. gridding
def gridding_counts(rates: Sequence[int], kernel: int = 3) -> np.ndarray:
    """(n, n) int array: through how many paths each input pixel reaches one output unit of a
    stack of k x k convs at ``rates`` (all-ones kernels; n = the stack's receptive field).
    Zeros inside the square are the gridding effect's holes."""
    rates = _check_rates(rates)
    n = sum(r * (kernel - 1) for r in rates) + 1
    x = torch.zeros(1, 1, n, n, dtype=torch.float64)
    x[0, 0, n // 2, n // 2] = 1
    w = torch.ones(1, 1, kernel, kernel, dtype=torch.float64)
    for r in rates:
        x = F.conv2d(x, w, padding=r * (kernel - 1) // 2, dilation=r)
    return x[0, 0].round().long().numpy()


@style.styled
def gridding_figure(stacks: Mapping[str, Sequence[int]] | None = None, kernel: int = 3) -> Figure:
    """Side by side, for each stack of rates, how often each pixel of the receptive field is
    read by one output unit (white = never: a hole)."""
    stacks = dict(stacks or {"rates 2, 2, 2": (2, 2, 2), "rates 1, 2, 3 (HDC)": (1, 2, 3)})
    if not stacks:
        raise ValueError("stacks must map a label to a sequence of rates")
    counts = {label: gridding_counts(rates, kernel) for label, rates in stacks.items()}
    n = max(c.shape[0] for c in counts.values())
    fig = style.figure(3.3 * len(counts), 3.6)
    axes = fig.subplots(1, len(counts), squeeze=False)[0]
    for ax, (label, count) in zip(axes, counts.items()):
        pad = (n - count.shape[0]) // 2
        shown = np.pad(count.astype(float), pad)
        holes = int((count == 0).sum())
        masked = np.ma.masked_equal(shown, 0)
        ax.imshow(masked, cmap="viridis")
        side = count.shape[0]
        ax.add_patch(Rectangle((pad - 0.5, pad - 0.5), side, side, fill=False, edgecolor="#d62728", lw=1.2))
        _clean(ax)
        ax.set_title(f"{label}\nfield {side}×{side}: {holes} of {side * side} pixels never read", fontsize=style.SMALL)
    fig.suptitle("Gridding: paths from each input pixel to one output unit (white = none)")
    return fig


# --------------------------------------------------------------------------- 3. RF growth
@style.styled
def rf_growth_figure(curves: Mapping[str, Sequence[tuple[str, object, object]]], *, input_size: int | None = None,
                     title: str = "Receptive field through the network", ticks: Sequence[str] | None = None) -> Figure:
    """Receptive field (left) and stride (right) layer by layer, one line per variant.

    Args:
        curves: label -> [(layer name, size, stride), ...] in forward order; size / stride as
            numbers or (h, w) pairs (the h value is drawn). Lines share the x positions, so the
            variants should list the same layers (e.g. every Conv2d / MaxPool2d of a ResNet).
        input_size: draw the image size as a dotted line on the left.
        ticks: layer names to label on the x axis (default: where the stage name changes).
    """
    if not curves or not all(len(rows) for rows in curves.values()):
        raise ValueError("curves must map a label to a non-empty list of (layer, size, stride)")
    fig = style.figure(9.8, 3.8)
    ax_rf, ax_stride = fig.subplots(1, 2)
    first = next(iter(curves.values()))
    names = [row[0] for row in first]

    def value(v):
        return float(v[0]) if isinstance(v, (tuple, list)) else float(v)

    styles = ["-", "--", ":", "-."]
    for i, (label, rows) in enumerate(curves.items()):
        xs = np.arange(len(rows))
        ax_rf.plot(xs, [value(r[1]) for r in rows], styles[i % 4], color=BRANCH_COLORS[i % len(BRANCH_COLORS)],
                   label=label, lw=1.8, drawstyle="steps-post")
        ax_stride.plot(xs, [value(r[2]) for r in rows], styles[i % 4], color=BRANCH_COLORS[i % len(BRANCH_COLORS)],
                       label=label, lw=1.8, drawstyle="steps-post")
    if input_size:
        ax_rf.axhline(input_size, color="0.5", ls=":", lw=1)
        ax_rf.text(len(names) - 1, input_size, f"input {input_size} px ", va="top", ha="right", fontsize=style.SMALL,
                   color="0.4")
    if ticks is None:  # the first layer of each stage ("layer1", ...; the stem counts as one)
        parts = [n.split(".") for n in names]
        stages = [p[1] if p[0] == "backbone" and len(p) > 1 else p[0] for p in parts]
        stages = [s if s.startswith("layer") else "stem" for s in stages]
        ticks_at = [i for i, s in enumerate(stages) if i == 0 or s != stages[i - 1]]
        gap = max(len(names) // 25, 2)   # labels closer than this would overlap: keep the later one
        ticks_at = [t for k, t in enumerate(ticks_at) if k + 1 == len(ticks_at) or ticks_at[k + 1] - t > gap]
        labels = [stages[i] for i in ticks_at]
    else:
        ticks_at = [names.index(t) for t in ticks if t in names]
        labels = [names[i] for i in ticks_at]
    for ax in (ax_rf, ax_stride):
        ax.set_xticks(ticks_at)
        ax.set_xticklabels(labels, rotation=30, ha="right")
        ax.grid(alpha=0.3)
        ax.set_xlabel("layer (forward order)")
    ax_rf.set_ylabel("receptive field (px)")
    ax_stride.set_ylabel("stride (px between units)")
    ax_stride.set_yscale("log", base=2)
    ax_stride.yaxis.set_major_formatter("{x:.0f}")
    ax_rf.legend(loc="upper left", bbox_to_anchor=(0.0, 0.93))
    fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------- 4. ERF
def _window_patch(window, color, label=None, lw=1.6, ls="-"):
    top, left, bottom, right = window
    return Rectangle((left - 0.5, top - 0.5), right - left + 1, bottom - top + 1, fill=False, edgecolor=color,
                     lw=lw, ls=ls, label=label)


@style.styled
def erf_figure(image, maps: Mapping[str, np.ndarray], windows: Mapping[str, tuple | None] | None = None, *,
               title: str = "Effective receptive field of the centre unit", gamma: float = 0.5) -> Figure:
    """Each effective receptive field over the photo (a heat map, shown as map**gamma so the
    tail is visible), with the theoretical window as a dashed square when given (None: whole input).

    Args:
        image: the photo the ERFs were measured on (H, W, 3).
        maps: label -> (H, W) ERF map normalised to max 1 (``segviz.erf(...).map``).
        windows: label -> (top, left, bottom, right) of the theoretical field (``window`` of
            :class:`segviz.inspect.ReceptiveField`), or None.
    """
    img = as_image(image)
    if not maps:
        raise ValueError("maps must map a label to an (H, W) ERF map")
    planes = {k: as_plane(v) for k, v in maps.items()}
    for k, p in planes.items():
        if p.shape != img.shape[:2]:
            raise ValueError(f"ERF map {k!r} is {p.shape}, the image {img.shape[:2]}: measure it on this image")
    n = len(planes)
    cols = n if n <= 5 else 4
    rows = -(-n // cols)
    fig = style.figure(2.45 * cols, 2.75 * rows + 0.5)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    h, w = img.shape[:2]
    for ax, (label, plane) in zip(axes, planes.items()):
        ax.imshow(img * 0.55 + 0.45 * img.mean(-1, keepdims=True))
        ax.imshow(np.clip(plane, 0, 1) ** gamma, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
        window = (windows or {}).get(label, "absent")
        text = ""
        if window is None:
            text = "theoretical: whole image"
        elif window != "absent":
            ax.add_patch(_window_patch(window, "#00bfff", ls="--"))
            text = f"theoretical {window[2] - window[0] + 1:g} px"
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        _clean(ax)
        ax.set_title(f"{label}\n{text}" if text else label, fontsize=style.SMALL)
    for ax in axes[n:]:
        ax.axis("off")
    fig.suptitle(f"{title}\n(colour: ERF^{gamma:g}, so the faint tail shows; dashed: the theoretical field)",
                 fontsize=style.NORMAL)
    return fig


# --------------------------------------------------------------------------- 5. ASPP windows
@style.styled
def aspp_windows_figure(image, windows: Mapping[str, tuple | None], query: tuple[int, int], *,
                        title: str = "What one ASPP position sees") -> Figure:
    """Each branch's receptive field for the unit at ``query`` as a square over the photo,
    unclipped (a square larger than the photo shows how far the rate reaches into the padding).

    Args:
        image: the photo.
        windows: branch label -> (top, left, bottom, right) in image pixels, or None for a branch
            that sees the whole image (image pooling).
        query: (y, x) of the centre of the unit, in image pixels.
    """
    img = as_image(image)
    if not windows:
        raise ValueError("windows must map a branch label to a window (top, left, bottom, right) or None")
    h, w = img.shape[:2]
    boxes = [v for v in windows.values() if v is not None]
    top = min([0] + [b[0] for b in boxes]) - 4
    left = min([0] + [b[1] for b in boxes]) - 4
    bottom = max([h - 1] + [b[2] for b in boxes]) + 4
    right = max([w - 1] + [b[3] for b in boxes]) + 4
    extent_h, extent_w = bottom - top, right - left
    fig = style.figure(6.4 * min(1.0, extent_w / max(extent_h, 1)) + 3.2, 5.4)
    ax = fig.subplots()
    ax.add_patch(Rectangle((left, top), extent_w, extent_h, color="0.93", zorder=0))
    ax.imshow(img, extent=(-0.5, w - 0.5, h - 0.5, -0.5), zorder=1)
    for i, (label, window) in enumerate(windows.items()):
        color = BRANCH_COLORS[i % len(BRANCH_COLORS)]
        if window is None:
            ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, edgecolor=color, lw=3.5, ls=":",
                                   label=f"{label}: whole image", zorder=3))
        else:
            side = window[2] - window[0] + 1
            ax.add_patch(_window_patch(window, color, f"{label}: {side:g} px", lw=2, ls="-"))
    ax.plot([query[1]], [query[0]], marker="+", color="white", markersize=14, mew=2.5, zorder=4)
    ax.plot([query[1]], [query[0]], marker="+", color="black", markersize=12, mew=1.2, zorder=5)
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_aspect("equal")
    ax.set_xlabel("x (px); grey: outside the image (zero padding)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(title)
    return fig


# --------------------------------------------------------------------------- 6. SPP
def spp_bins(size: int, n: int) -> list[tuple[int, int]]:
    """[start, end) of the n bins over ``size`` cells, as adaptive pooling cuts them:
    bin i spans [⌊i·size/n⌋, ⌈(i+1)·size/n⌉)."""
    if n < 1 or size < 1:
        raise ValueError(f"need size >= 1 and n >= 1, got size={size}, n={n}")
    return [((i * size) // n, -(-((i + 1) * size) // n)) for i in range(n)]


@style.styled
def spp_figure(maps: Sequence, levels: Sequence[int] = (4, 2, 1)) -> Figure:
    """SPP on one channel of maps of different sizes: per map a row with the bins of each level
    drawn over it (the max of each bin written in) and the resulting 21-number vector.

    Args:
        maps: (h, w) maps (e.g. one channel of layer4 for two input sizes).
        levels: bins per side of each pyramid level (He et al.: 4, 2, 1).
    """
    levels = _check_rates(levels, "levels")
    planes = [as_plane(m) for m in maps]
    if not planes:
        raise ValueError("spp_figure needs at least one map")
    length = sum(n * n for n in levels)
    fig = style.figure(9.8, 2.5 * len(planes) + 0.6)
    grid = fig.add_gridspec(len(planes), len(levels) + 1, width_ratios=[1] * len(levels) + [1.6])
    vmin = min(p.min() for p in planes)
    vmax = max(p.max() for p in planes)
    for row, plane in enumerate(planes):
        h, w = plane.shape
        pooled = []
        for col, n in enumerate(levels):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(plane, cmap="viridis", vmin=vmin, vmax=vmax)
            ys, xs = spp_bins(h, n), spp_bins(w, n)
            values = F.adaptive_max_pool2d(torch.from_numpy(plane)[None, None], n)[0, 0].numpy()
            for i, (y0, y1) in enumerate(ys):
                for j, (x0, x1) in enumerate(xs):
                    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white", lw=1.2))
                    if n <= 4:
                        ax.text((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, f"{values[i, j]:.1f}", ha="center",
                                va="center", color="white", fontsize=style.SMALL,
                                bbox=dict(boxstyle="round,pad=0.1", fc="black", alpha=0.35, lw=0))
            pooled.append(values.ravel())
            _clean(ax)
            ax.set_title(f"{h}×{w} map, {n}×{n} bins" if col == 0 else f"{n}×{n} bins", fontsize=style.SMALL)
        vector = np.concatenate(pooled)
        ax = fig.add_subplot(grid[row, -1])
        ax.imshow(vector[None], cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        edges = np.cumsum([n * n for n in levels])[:-1]
        for e in edges:
            ax.axvline(e - 0.5, color="white", lw=2)
        ax.set_yticks([])
        ax.set_xticks([0, length - 1])
        ax.set_title(f"max per bin: {len(vector)} numbers per channel", fontsize=style.SMALL)
    fig.suptitle(f"SPP: bins adapt to the map, so any size gives {' + '.join(str(n * n) for n in levels)} = {length} "
                 "values per channel")
    return fig


# --------------------------------------------------------------------------- 7. explorer
@style.styled
def explorer_figure(image, labels, windows: Mapping[str, tuple | None], query: tuple[int, int], rate: int,
                    output_stride: int, class_names: Sequence[str] | None = None, *, title: str | None = None) -> Figure:
    """Left: a 3x3 atrous kernel at ``rate`` on the ``output_stride`` feature grid, centred on the
    query (its 9 taps in image pixels, rate x output stride apart), with the receptive fields of
    the branches that are on. Right: the prediction with the branches that are off.

    Args:
        image: the photo; labels: (K, h, w) logits or (h, w) classes of the prediction;
        windows: branch label -> window (top, left, bottom, right) or None (whole image), only
            the branches that are on; query: (y, x) in pixels.
    """
    img = as_image(image)
    lab = as_labels(labels)
    h, w = img.shape[:2]
    fig = style.figure(9.8, 4.6)
    ax, ax_pred = fig.subplots(1, 2)
    ax.imshow(img)
    for i, (label, window) in enumerate(windows.items()):
        color = BRANCH_COLORS[i % len(BRANCH_COLORS)]
        if window is None:
            ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, edgecolor=color, lw=4, ls=":", label=f"{label}: whole"))
        else:
            ax.add_patch(_window_patch(window, color, f"{label}: {window[2] - window[0] + 1:g} px"))
    step = rate * output_stride
    cy, cx = query
    taps = [(cy + dy * step, cx + dx * step) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    inside = [(y, x) for y, x in taps if 0 <= y < h and 0 <= x < w]
    if inside:
        ys, xs = zip(*inside)
        ax.scatter(xs, ys, s=36, c="white", edgecolors="black", zorder=5)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    _clean(ax)
    ax.set_title(f"3×3 at rate {rate}, output stride {output_stride}: taps {step} px apart\n"
                 f"{len(inside)} of 9 taps inside the image", fontsize=style.SMALL)
    if windows:
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.02), ncol=2, fontsize=style.SMALL, borderaxespad=0)
    n = max(int(lab.max()) + 1, len(class_names) if class_names else 0)
    colors = class_colors(n)
    pred = np.kron(lab, np.ones((max(h // lab.shape[0], 1), max(w // lab.shape[1], 1)), dtype=np.int64))[:h, :w]
    # a class called "background" (class 0) is left uncoloured, as in prediction_panels
    plain = bool(class_names) and str(class_names[0]).lower() == "background"
    coloured = img * 0.45 + 0.55 * colors[pred]
    if plain:
        coloured = np.where((pred == 0)[..., None], img, coloured)
    ax_pred.imshow(coloured)
    _clean(ax_pred)
    ax_pred.set_title(title or "prediction", fontsize=style.SMALL)
    if class_names:
        shown = range(1 if plain else 0, len(class_names))
        handles = [Rectangle((0, 0), 1, 1, color=colors[i]) for i in shown]
        ax_pred.legend(handles, [class_names[i] for i in shown], loc="upper left", bbox_to_anchor=(0.0, -0.02),
                       ncol=3, fontsize=style.SMALL, borderaxespad=0)
    return fig


class DeepLabExplorer:
    """Rate, output stride, ASPP branches on/off and a query pixel.

    Thin: the two callbacks do the model's work and the figure is :func:`explorer_figure`.

    Args:
        image: the photo (H, W, 3).
        predict: ``predict(output_stride, rate, branches_on) -> logits`` (K, h, w) or (1, K, h, w);
            ``branches_on`` a tuple of branch labels; ``rate`` the slider's value (e.g. the rate of
            one atrous branch, changed at inference).
        windows: ``windows(output_stride, rate, query) -> {branch label: window or None}`` for every branch.
        branches: the branch labels, in order.
        output_strides: the choices (default (16, 8)); rates: the rate slider's range.

    Attributes: ``rate``, ``output_stride``, ``branches`` (label -> Checkbox), ``y``, ``x``,
    ``figure``, ``view``, ``widget``.
    """

    def __init__(self, image, predict: Callable, windows: Callable, branches: Sequence[str], *,
                 output_strides: Sequence[int] = (16, 8), rates: tuple[int, int] = (1, 24), rate: int = 6,
                 class_names: Sequence[str] | None = None, query: tuple[int, int] | None = None):
        import ipywidgets as widgets

        self.image = as_image(image)
        h, w = self.image.shape[:2]
        if not branches:
            raise ValueError("branches must name at least one ASPP branch")
        self._predict, self._windows, self.class_names = predict, windows, class_names
        self._cache: dict = {}
        qy, qx = (h // 2, w // 2) if query is None else query
        self.rate = widgets.IntSlider(rate, min=rates[0], max=rates[1], description="rate")
        self.output_stride = widgets.ToggleButtons(options=list(output_strides), description="output stride")
        self.branches = {b: widgets.Checkbox(True, description=b, indent=False) for b in branches}
        self.y = widgets.IntSlider(qy, min=0, max=h - 1, description="query y")
        self.x = widgets.IntSlider(qx, min=0, max=w - 1, description="query x")
        self.view = widgets.Image(format="png")
        self.figure = None
        self._sender = FigureSender()
        for control in [self.rate, self.output_stride, self.y, self.x, *self.branches.values()]:
            control.observe(lambda _change: self.redraw(), names="value")
        self.widget = widgets.VBox([
            widgets.HBox([self.rate, self.output_stride]),
            widgets.HBox(list(self.branches.values())),
            widgets.HBox([self.y, self.x]), self.view,
        ])
        self.redraw()

    def on(self) -> tuple[str, ...]:
        return tuple(b for b, box in self.branches.items() if box.value)

    def redraw(self) -> None:
        os_, rate, on = self.output_stride.value, self.rate.value, self.on()
        key = (os_, rate, on)
        if key not in self._cache:   # the model runs once per (output stride, rate, branches) setting
            self._cache[key] = self._predict(os_, rate, on)
        query = (self.y.value, self.x.value)
        windows = {b: v for b, v in self._windows(os_, rate, query).items() if b in on}
        off = [b for b in self.branches if b not in on]
        title = "prediction, all branches on" if not off else f"prediction without {', '.join(off)}"
        self.figure = explorer_figure(self.image, self._cache[key], windows, query, self.rate.value, os_,
                                      self.class_names, title=title)
        self._sender.show(self.view, self.figure)

    def _repr_mimebundle_(self, **kwargs):
        return style.widget_bundle(self.widget, self.figure, **kwargs)
