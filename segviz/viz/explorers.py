"""Thin ipywidgets explorers: controls change a value, a pure ``segviz.viz`` function redraws.

They redraw from records already captured: the model never runs again on an update.

Every explorer sends its pictures through a :class:`FigureSender`: the pixels of
``style.png_bytes`` (the figure at :data:`~segviz.viz.style.EXPLORER_SCALE` x its dpi), produced
with one render instead of ``savefig``'s two (with a layout engine, ``savefig`` first draws the
whole figure once with drawing disabled, images resampled included, only to place the axes) and
encoded by :func:`png_bytes` at zlib level 1. Between two figures of one explorer that differ
only above their photos (a new query pixel), the sender keeps the axes where the first figure's
layout put them and paints the photos from the first render instead of resampling them again.
``benchmarks/widget_latency.py`` times every explorer.
"""
from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping

import ipywidgets as widgets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from segviz.viz import style
from segviz.viz.arrays import as_image
from segviz.viz.overlays import _check_record, attention_overlay


def png_bytes(rgb: np.ndarray, level: int = 1) -> bytes:
    """A PNG (8-bit RGB) of an (H, W, 3) uint8 array: unfiltered rows compressed at zlib
    ``level`` (1: fastest). For an explorer's 2x figure this encodes about twice as fast as
    Pillow's PNG writer at its fastest setting, for a somewhat larger file (which stays on
    the local connection between kernel and browser)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"need an (H, W, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    h, w, _ = rgb.shape
    rows = np.zeros((h, 3 * w + 1), np.uint8)  # each row: its filter type (0, none), then its pixels
    rows[:, 1:] = rgb.reshape(h, 3 * w)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, no filter, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
            + chunk(b"IEND", b""))


def figure_rgb(fig: Figure, scale: float = style.EXPLORER_SCALE) -> np.ndarray:
    """The figure rendered at ``scale`` x its dpi, (H, W, 3) uint8: the pixels that
    ``style.png_bytes(fig, scale)`` decodes to (an opaque figure), from one draw (the layout
    engine runs inside it, as in ``savefig``'s first pass). Like ``savefig``, each call re-runs
    the layout, and matplotlib's constrained layout moves a colorbar slightly on every run."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    before = fig.dpi
    fig.set_dpi(before * scale)
    try:
        canvas.draw()
        return np.array(canvas.buffer_rgba())[..., :3]
    finally:
        fig.set_dpi(before)


def show(image_widget, fig: Figure, scale: float = style.EXPLORER_SCALE) -> None:
    """``style.show_png`` with the same picture, faster (see the module docstring)."""
    image_widget.value = png_bytes(figure_rgb(fig, scale))
    image_widget.width = str(style.display_width(fig))


def _bottom_image(ax) -> AxesImage | None:
    """The image an axes draws first, right over its background patch (a photo), if any."""
    children = [a for a in ax.get_children() if a.get_visible() and a is not ax.patch]
    if not children:
        return None
    first = min(children, key=lambda a: a.get_zorder())  # min keeps the first of equal zorders, as the sort does
    return first if isinstance(first, AxesImage) else None


def _image_key(ax, image: AxesImage | None):
    if image is None:
        return None
    norm = image.norm
    return (image.get_extent(), image.get_alpha(), image.get_interpolation(), image.get_cmap().name,
            norm.vmin, norm.vmax, ax.get_xlim(), ax.get_ylim())


def _same_image(a: tuple[tuple, np.ndarray] | None, b: tuple[tuple, np.ndarray] | None) -> bool:
    if a is None or b is None:
        return a is b
    return a[0] == b[0] and a[1].shape == b[1].shape and np.array_equal(a[1], b[1])


class FigureSender:
    """Sends an explorer's figures to its ``Image`` widget, each as the PNG of the figure at
    ``scale`` x its dpi.

    The first figure, and any figure whose size, axes or photos differ from the last full
    render, is rendered whole (:func:`figure_rgb`). A figure with the same size and axes and the
    same photo (each axes' bottom image, with its extent, colours and view) is drawn over a kept
    background instead: the figure and axes backgrounds with those photos, painted from the
    full render, and everything above them drawn at the axes positions of that render (its
    layout is kept, so the picture does not jump between queries). ``renders`` counts both.
    """

    def __init__(self, scale: float = style.EXPLORER_SCALE):
        self.scale = scale
        self.renders = {"full": 0, "over kept photos": 0}
        self._kept = None  # (key, positions, photos, canvas, background)

    def _key(self, fig: Figure) -> tuple:
        return tuple(fig.get_size_inches()), fig.dpi, len(fig.axes)

    def _photos(self, fig: Figure) -> list:
        out = []
        for ax in fig.axes:
            image = _bottom_image(ax)
            out.append(None if image is None else (_image_key(ax, image), np.asarray(image.get_array())))
        return out

    def rgb(self, fig: Figure) -> np.ndarray:
        """(H, W, 3) uint8 of ``fig`` at ``scale`` x its dpi."""
        kept = self._kept
        if kept is not None and kept[0] == self._key(fig) and any(p is not None for p in kept[2]):
            photos = self._photos(fig)
            if all(_same_image(a, b) for a, b in zip(photos, kept[2])):
                return self._over_kept(fig, kept)
        return self._full(fig)

    def _full(self, fig: Figure) -> np.ndarray:
        rgb = figure_rgb(fig, self.scale)
        canvas = fig.canvas
        before = fig.dpi
        fig.set_dpi(before * self.scale)
        try:
            renderer = canvas.get_renderer()
            renderer.clear()
            fig.patch.draw(renderer)
            for ax in fig.axes:
                if ax.axison and ax.get_frame_on():
                    ax.patch.draw(renderer)
                image = _bottom_image(ax)
                if image is not None:
                    image.draw(renderer)
            background = renderer.copy_from_bbox(fig.bbox)
        finally:
            fig.set_dpi(before)
        positions = [(ax.get_position(original=True), ax.get_position()) for ax in fig.axes]
        self._kept = (self._key(fig), positions, self._photos(fig), renderer, background)
        self.renders["full"] += 1
        return rgb

    def _over_kept(self, fig: Figure, kept) -> np.ndarray:
        _, positions, _, renderer, background = kept
        fig.set_layout_engine("none")
        for ax, (original, active) in zip(fig.axes, positions):
            ax.set_position(original, which="original")
            ax.set_position(active, which="active")
        hidden = [fig.patch] + [ax.patch for ax in fig.axes]
        hidden += [im for im in (_bottom_image(ax) for ax in fig.axes) if im is not None]
        before = fig.dpi
        fig.set_dpi(before * self.scale)
        try:
            for artist in hidden:
                artist.set_visible(False)
            renderer.restore_region(background)
            fig.draw(renderer)
            rgb = np.array(renderer.buffer_rgba())[..., :3]
        finally:
            for artist in hidden:
                artist.set_visible(True)
            fig.set_dpi(before)
        self.renders["over kept photos"] += 1
        return rgb

    def show(self, image_widget, fig: Figure) -> None:
        """Put ``fig`` into the widget: rendered at ``scale`` x, shown at 1x width."""
        image_widget.value = png_bytes(self.rgb(fig))
        image_widget.width = str(style.display_width(fig))


class AttentionExplorer:
    """Pick a stage, a head and a query pixel; see where that query looks.

        with segviz.capture(model) as rec:
            model(x)
        AttentionExplorer(photo, {"stage 1": rec.attention["encoder.stages.0.blocks.0.attn"], ...})

    Attributes: ``stage`` (Dropdown), ``head``, ``y``, ``x`` (IntSliders; y, x in pixels),
    ``figure`` (the last drawn Figure), ``view`` (the Image widget showing it), ``widget``.
    """

    def __init__(self, image, records: Mapping[str, object], query: tuple[int, int] | None = None):
        if not isinstance(records, Mapping) or not records:
            raise ValueError("records must be a non-empty mapping: label -> AttentionRecord")
        self.records = {label: _check_record(r) for label, r in records.items()}
        self.image = as_image(image)
        h, w = self.image.shape[:2]
        qy, qx = (h // 2, w // 2) if query is None else query
        self.stage = widgets.Dropdown(options=list(self.records), description="stage")
        self.head = widgets.IntSlider(0, min=0, max=self._heads() - 1, description="head")
        self.y = widgets.IntSlider(qy, min=0, max=h - 1, description="query y")
        self.x = widgets.IntSlider(qx, min=0, max=w - 1, description="query x")
        self.view = widgets.Image(format="png")
        self.figure = None
        self._sender = FigureSender()
        self.stage.observe(self._stage_changed, names="value")
        for control in (self.head, self.y, self.x):
            control.observe(lambda _change: self.redraw(), names="value")
        self.widget = widgets.VBox([widgets.HBox([self.stage, self.head]), widgets.HBox([self.y, self.x]), self.view])
        self.redraw()

    def _heads(self) -> int:
        return self.records[self.stage.value].heads

    def _stage_changed(self, _change) -> None:
        with self.head.hold_trait_notifications():
            self.head.value = min(self.head.value, self._heads() - 1)
            self.head.max = self._heads() - 1
        self.redraw()

    def redraw(self) -> None:
        self.figure = attention_overlay(self.image, self.records[self.stage.value], (self.y.value, self.x.value),
                                        head=self.head.value, title=f"{self.stage.value}, head {self.head.value}")
        self._sender.show(self.view, self.figure)   # rendered at 2x, shown at 1x: sharp on a dense screen

    def _repr_mimebundle_(self, **kwargs):
        # the widget, and a picture of its current state for a reader without a kernel
        return style.widget_bundle(self.widget, self.figure, **kwargs)
