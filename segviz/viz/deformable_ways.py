"""Where does one query look? Six answers side by side, as initialised and as trained.

* global attention: every key of the map (a ViT; SegFormer's last stage, whose reduction is 1);
* spatial-reduction attention: the keys of a map shrunk r x r (SegFormer's early stages);
* window attention: the M x M window around the query (Swin);
* deformable convolution (DCNv2): the 9 taps of a 3 x 3 kernel, each moved by its own offset;
* multi-scale deformable attention (Deformable-DETR, Mask2Former's pixel decoder): K points per head
  on each level, each with its own weight;
* DAT's deformable attention: one grid of keys, moved as a whole by offsets predicted from the map,
  shared by every query; each query weighs all of them.

Pure functions: records (``segviz.capture``) or :class:`DCNTaps` in, ``matplotlib`` figures out.
:func:`where_a_query_looks` draws the comparison, :func:`deformed_grid_figure` DAT's grids per stage,
:class:`QueryLooksExplorer` is the thin widget that moves the query.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import torch
from matplotlib.figure import Figure

from segviz.nn.deformable_conv import tap_positions
from segviz.nn.recording import (
    AttentionRecord, DeformedGridRecord, SamplingRecord, WindowAttentionRecord,
)
from segviz.viz import style
from segviz.viz.arrays import as_image
from segviz.viz.explorers import FigureSender
from segviz.viz.mask2former import pixel_query_index
from segviz.viz.overlays import (
    LEVEL_COLORS, _describe, _draw_sampling, _finish, _heat, _photo, _segments, draw_attention,
)

STATES = ("init", "trained")
GROUP_COLORS = ("#ffcc00", "#ff3b30", "#34c759", "#af52de", "#00e5ff", "#ff9500")


# ----------------------------------------------------------------------------------------
# 1. Deformable convolution's taps for one output pixel
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class DCNTaps:
    """The K taps of a deformable convolution at one output position, in photo pixels (x, y):
    ``regular`` where a plain conv reads, ``moved`` where the deformable one reads (regular +
    offset), ``modulation`` (K,) the DCNv2 mask of each tap; ``cell`` the photo pixels per input
    pixel of the conv (y, x); ``query`` the photo pixel the output position stands for (y, x)."""

    regular: np.ndarray
    moved: np.ndarray
    modulation: np.ndarray
    cell: tuple[float, float]
    query: tuple[float, float]

    @property
    def taps(self) -> int:
        return int(self.regular.shape[0])


def dcn_taps(offset: torch.Tensor, mask: torch.Tensor | None, pixel_yx: tuple[int, int], image_hw: tuple[int, int],
             feature_hw: tuple[int, int], *, kernel: int = 3, stride: int = 1, padding: int = 1, dilation: int = 1,
             group: int = 0, batch: int = 0) -> DCNTaps:
    """The taps of the output position covering photo pixel ``pixel_yx``.

    Args:
        offset: (B, 2·G·K, H_out, W_out) and mask (B, G·K, H_out, W_out) or None, as
            :meth:`segviz.nn.deformable_conv.ModulatedDeformConv2d.offsets_and_mask` returns them;
        image_hw: the photo; feature_hw: the (H, W) of the map the conv reads (one input pixel covers
            H_img / H photo rows); kernel, stride, padding, dilation: the conv's.
    """
    h_img, w_img = image_hw
    fh, fw = feature_hw
    ho, wo = offset.shape[-2:]
    y, x = pixel_yx
    if not (0 <= y < h_img and 0 <= x < w_img):
        raise ValueError(f"query pixel {tuple(pixel_yx)} is outside the {h_img}x{w_img} image")
    oy, ox = min(y * ho // h_img, ho - 1), min(x * wo // w_img, wo - 1)
    k = kernel * kernel
    groups = offset.shape[1] // (2 * k)
    if not 0 <= group < groups:
        raise ValueError(f"group {group} out of range: this offset has {groups} offset groups")
    zero = torch.zeros_like(offset)
    moved = tap_positions(offset, (kernel, kernel), stride, padding, dilation)[batch, group, :, oy, ox]  # (K, 2) y, x
    regular = tap_positions(zero, (kernel, kernel), stride, padding, dilation)[batch, group, :, oy, ox]
    sy, sx = h_img / fh, w_img / fw

    def to_photo(p):  # input pixel p covers photo [p·s, (p+1)·s): centre (p + 0.5)·s - 0.5; returns (x, y)
        p = p.detach().float().cpu().numpy()
        return np.stack([(p[:, 1] + 0.5) * sx - 0.5, (p[:, 0] + 0.5) * sy - 0.5], axis=1)

    modulation = (np.ones(k, np.float32) if mask is None
                  else mask[batch, group * k:(group + 1) * k, oy, ox].detach().float().cpu().numpy())
    out_sy, out_sx = h_img / ho, w_img / wo
    return DCNTaps(to_photo(regular), to_photo(moved), modulation, (sy, sx),
                   ((oy + 0.5) * out_sy - 0.5, (ox + 0.5) * out_sx - 0.5))


def _draw_dcn(ax, img, taps: DCNTaps, query):
    """Grey squares: the plain conv's taps; dots: where the deformable conv reads (area = modulation),
    joined to their regular tap."""
    _photo(ax, img)
    sy, sx = taps.cell
    for rx, ry in taps.regular:
        ax.add_patch(_square(rx, ry, sx, sy))
    _segments(ax, np.stack([taps.regular, taps.moved], axis=1), color="white", lw=1.0, alpha=0.9)
    ax.scatter(taps.moved[:, 0], taps.moved[:, 1], s=15 + 120 * taps.modulation, facecolor=LEVEL_COLORS[1],
               edgecolor="black", lw=0.6, zorder=3)
    _finish(ax, img, query)
    return None


def _square(cx, cy, w, h):
    from matplotlib.patches import Rectangle
    return Rectangle((cx - w / 2, cy - h / 2), w, h, fill=False, edgecolor="#d0d0d0", lw=0.8)


# ----------------------------------------------------------------------------------------
# 2. DAT's deformed key grid for one query
# ----------------------------------------------------------------------------------------
def _photo_xy(points: np.ndarray, image_hw) -> np.ndarray:
    """(x, y) in [0, 1] of the map's extent -> photo pixel coordinates (pixel centres at integers)."""
    h, w = image_hw
    return np.stack([points[..., 0] * w - 0.5, points[..., 1] * h - 0.5], axis=-1)


def _draw_deformed_grid(ax, img, record: DeformedGridRecord, query, head):
    """The query's attention spread on its map (heat), the uniform reference grid (small white dots),
    the deformed points it reads (dots, area = weight relative to the largest) joined to their
    reference point."""
    token = record.query_token(tuple(query), img.shape[:2])
    amap = record.map_for(token, head=head).detach().float().cpu().numpy()
    _photo(ax, img)
    heat = _heat(ax, amap, img.shape[:2], None, None)
    points, weights = record.points_for(token, head=head)
    pts = _photo_xy(points.detach().float().cpu().numpy(), img.shape[:2])
    ref = _photo_xy(record.reference.reshape(-1, 2).detach().float().cpu().numpy(), img.shape[:2])
    wts = weights.detach().float().cpu().numpy()
    _segments(ax, np.stack([ref, pts], axis=1), color="white", lw=0.7, alpha=0.8)
    ax.scatter(ref[:, 0], ref[:, 1], s=4, color="white", alpha=0.9)
    color = GROUP_COLORS[record.group_of(head) % len(GROUP_COLORS)]
    ax.scatter(pts[:, 0], pts[:, 1], s=6 + 90 * wts / max(float(wts.max()), 1e-12), facecolor=color,
               edgecolor="black", lw=0.4, zorder=3)
    _finish(ax, img, query)
    return heat


# ----------------------------------------------------------------------------------------
# 3. One panel, any kind
# ----------------------------------------------------------------------------------------
def describe(item) -> str:
    """One short line: how many places the query reads."""
    if isinstance(item, DCNTaps):
        return f"{item.taps} taps, area = modulation"
    if isinstance(item, DeformedGridRecord):
        kh, kw = item.key_hw
        return f"{kh}×{kw} deformed keys, shared"
    if isinstance(item, SamplingRecord):
        levels, points = item.locations.shape[3:5]
        return f"{levels} levels × {points} points"
    return _describe(item, short=True)


def draw_look(ax, img, item, query: tuple[int, int], head: int = 0):
    """Where the query at photo pixel ``query`` (y, x) looks, for a record or :class:`DCNTaps`.
    ``head`` is clamped to the record's heads. Returns the heat-map artist (None for DCN)."""
    if isinstance(item, DCNTaps):
        return _draw_dcn(ax, img, item, query)
    heads = getattr(item, "heads", 1)
    head = min(head, heads - 1)
    if isinstance(item, DeformedGridRecord):
        return _draw_deformed_grid(ax, img, item, query, head)
    if isinstance(item, SamplingRecord):
        index = pixel_query_index(item, tuple(query), img.shape[:2], level=-1)
        return _draw_sampling(ax, img, item, index, head, None, None, query)
    if isinstance(item, (AttentionRecord, WindowAttentionRecord)):
        return draw_attention(ax, img, item, tuple(query), head)
    raise ValueError(f"cannot draw {type(item).__name__}: expected an attention, window, sampling or deformed-grid "
                     "record, or DCNTaps")


@style.styled
def where_a_query_looks(image, ways: Mapping[str, Mapping[str, object]], query: tuple[int, int], *, head: int = 0,
                        columns: int = 3, panel: float = 3.1, title: str | None = None,
                        states: tuple[str, ...] = STATES) -> Figure:
    """The comparison figure: for each way, the same query as initialised and as trained.

    Args:
        image: the photo the models saw.
        ways: title -> {"init": item, "trained": item} (either may be missing), each item a record from
            ``segviz.capture`` (attention, window attention, sampling, deformed grid) or :class:`DCNTaps`,
            in display order.
        query: (y, x) photo pixel; head: which head (clamped per record); columns: ways per row (each
            way takes one row per state: init above trained); panel: inches per panel;
        states: which of "init" and "trained" to draw, in row order.
    """
    if not states or any(state not in STATES for state in states):
        raise ValueError(f"states must be some of {STATES}, got {states!r}")
    if not ways:
        raise ValueError("no ways to draw")
    img = as_image(image)
    h, w = img.shape[:2]
    if not (0 <= query[0] < h and 0 <= query[1] < w):
        raise ValueError(f"query pixel {tuple(query)} is outside the {h}x{w} photo")
    names = list(ways)
    columns = min(columns, len(names))
    blocks = -(-len(names) // columns)
    rows = len(states)
    fig = style.figure(columns * panel, blocks * rows * panel * 1.12)
    axes = np.atleast_2d(fig.subplots(rows * blocks, columns, squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    _draw_looks(fig, axes, img, ways, query, head, columns, states, title)
    return fig


def _draw_looks(fig, axes, img, ways, query, head, columns, states, title) -> None:
    """Draw every way's panels on the axes laid out by :func:`where_a_query_looks`."""
    rows = len(states)
    for i, name in enumerate(ways):
        for s, state in enumerate(states):
            ax = axes[rows * (i // columns) + s, i % columns]
            item = ways[name].get(state)
            if item is None:
                continue
            ax.set_axis_on()
            draw_look(ax, img, item, query, head)
            label = name if len(states) == 1 else f"{name} · {state}"
            ax.set_title(f"{label}\n{describe(item)}", fontsize=style.SMALL)
            if isinstance(item, SamplingRecord) and state == states[-1]:
                ax.legend(loc="lower right", fontsize=style.SMALL, framealpha=0.8, handletextpad=0.2,
                          borderpad=0.3, labelspacing=0.2)
    weights = f"{states[0]} weights; " if len(states) == 1 else ""
    text = title or f"where does the query at (y={query[0]}, x={query[1]}) look? ({weights}+: the query)"
    kept = getattr(fig, "_suptitle", None)
    if kept is not None:  # a redraw: new text, where the layout put the old one (fig.suptitle would reset it)
        kept.set_text(text)
    else:
        fig.suptitle(text, fontsize=style.LARGE)


def _clear_overlays(ax) -> None:
    """Remove everything drawn over an axes' photo (heat, points, lines, boxes, legend), keeping the
    photo, the title and the limits, so that :func:`draw_look` can draw the next query on it."""
    for artist in [*ax.images[1:], *ax.lines, *ax.collections, *ax.patches, *ax.texts]:
        artist.remove()
    if ax.get_legend() is not None:
        ax.get_legend().remove()


# ----------------------------------------------------------------------------------------
# 4. DAT's deformed grids, per stage and offset group
# ----------------------------------------------------------------------------------------
def _mesh(ax, pts: np.ndarray, **kw):
    """Draw an (Hk, Wk, 2) grid of points as a mesh (rows and columns joined)."""
    for row in pts:
        ax.plot(row[:, 0], row[:, 1], **kw)
    for col in pts.transpose(1, 0, 2):
        ax.plot(col[:, 0], col[:, 1], **kw)


@style.styled
def deformed_grid_figure(image, records: Mapping[str, DeformedGridRecord], *, groups: int | None = None,
                         panel: float = 2.4, batch: int = 0) -> Figure:
    """DAT's key grids over the photo: one row per record (stage), one column per offset group.
    Thin white: the uniform reference grid; coloured: the deformed grid the keys are sampled on
    (the same points for every query of the map); arrows would be the offsets.

    Args:
        records: row label -> :class:`~segviz.nn.recording.DeformedGridRecord`, in display order;
        groups: at most this many groups per row (default all).
    """
    if not records:
        raise ValueError("no deformed-grid records to draw")
    for label, r in records.items():
        if not isinstance(r, DeformedGridRecord):
            raise ValueError(f"{label}: expected a DeformedGridRecord, got {type(r).__name__}")
    img = as_image(image)
    cols = max(r.groups for r in records.values())
    cols = cols if groups is None else min(cols, groups)
    fig = style.figure(cols * panel, len(records) * panel * 1.15)
    axes = fig.subplots(len(records), cols, squeeze=False)
    for row, (label, r) in enumerate(records.items()):
        ref = _photo_xy(r.reference.detach().float().cpu().numpy(), img.shape[:2])
        for g in range(cols):
            ax = axes[row, g]
            if g >= r.groups:
                ax.set_axis_off()
                continue
            pts = _photo_xy(r.points[batch, g].detach().float().cpu().numpy(), img.shape[:2])
            _photo(ax, img)
            _mesh(ax, ref, color="white", lw=0.5, alpha=0.6)
            _mesh(ax, pts, color=GROUP_COLORS[g % len(GROUP_COLORS)], lw=1.0)
            ax.scatter(pts[..., 0].ravel(), pts[..., 1].ravel(), s=5, color=GROUP_COLORS[g % len(GROUP_COLORS)])
            moved = np.abs(pts - ref).mean()
            _finish(ax, img)
            kh, kw = r.key_hw
            ax.set_title(f"{label} · group {g}\n{kh}×{kw} keys, mean shift {moved:.1f} px", fontsize=style.SMALL)
    return fig


# ----------------------------------------------------------------------------------------
# 5. The explorer
# ----------------------------------------------------------------------------------------
class QueryLooksExplorer:
    """Move the query (y, x), pick the head and the weights (trained, init or both); :func:`where_a_query_looks`
    redraws.

        QueryLooksExplorer(photo, ways)          # ways as for where_a_query_looks

    Attributes: ``y``, ``x`` (IntSliders, photo pixels), ``head`` (IntSlider), ``state`` (ToggleButtons),
    ``figure`` (the last drawn Figure), ``view`` (its Image widget), ``widget``.
    """

    def __init__(self, image, ways: Mapping[str, Mapping[str, object]], query: tuple[int, int] | None = None,
                 panel: float = 2.6):
        import ipywidgets as widgets

        self.image, self.ways, self.panel = as_image(image), dict(ways), panel
        h, w = self.image.shape[:2]
        qy, qx = (h // 2, w // 2) if query is None else query
        heads = max(getattr(item, "heads", 1) for pair in self.ways.values() for item in pair.values())
        self.y = widgets.IntSlider(qy, min=0, max=h - 1, description="query y")
        self.x = widgets.IntSlider(qx, min=0, max=w - 1, description="query x")
        self.head = widgets.IntSlider(0, min=0, max=heads - 1, description="head")
        self.state = widgets.ToggleButtons(options=["trained", "init", "both"], value="trained", description="weights")
        self.view = widgets.Image(format="png")
        self.figure = None
        self._layout = None  # (states, way names) the figure was laid out for
        self._sender = FigureSender()
        for control in (self.y, self.x, self.head, self.state):
            control.observe(lambda _change: self.redraw(), names="value")
        self.widget = widgets.VBox([widgets.HBox([self.y, self.x, self.head]), self.state, self.view])
        self.redraw()

    def redraw(self) -> None:
        """Draw the current query. A change of query or head keeps the figure, its axes and photos
        and redraws only what lies over them; a change of the weights shown lays the figure out anew."""
        states = STATES if self.state.value == "both" else (self.state.value,)
        query = (self.y.value, self.x.value)
        layout = (states, tuple(self.ways))
        if self.figure is None or layout != self._layout:
            self.figure = where_a_query_looks(self.image, self.ways, query, head=self.head.value,
                                              panel=self.panel, states=states)
            self._layout = layout
        else:
            axes = np.array(self.figure.axes).reshape(self.figure.axes[0].get_subplotspec().get_geometry()[:2])
            for ax in self.figure.axes:
                _clear_overlays(ax)
            with style.rc():
                _draw_looks(self.figure, axes, self.image, self.ways, query, self.head.value,
                            axes.shape[1], states, None)
        self._sender.show(self.view, self.figure)

    def _repr_mimebundle_(self, **kwargs):
        return style.widget_bundle(self.widget, self.figure, **kwargs)


__all__ = ["DCNTaps", "QueryLooksExplorer", "dcn_taps", "deformed_grid_figure", "describe", "draw_look",
           "where_a_query_looks"]
