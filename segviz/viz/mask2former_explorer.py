"""The deformable-attention explorer: pick a query pixel, an encoder layer of Mask2Former's pixel
decoder and a head; see where it samples on each level, trained or as initialised.

* :func:`encoder_sampling_records` — one recorded forward pass: every encoder layer's
  :class:`~segviz.nn.recording.SamplingRecord`, in order;
* :class:`SamplingExplorer` — the thin ipywidgets front over
  :func:`segviz.viz.mask2former.sampling_figure`. The trained records are taken once when it is
  made, the initialised ones (:func:`segviz.viz.mask2former.init_sampling_records`) the first
  time they are asked for; moving a control only redraws.
"""
from __future__ import annotations

import ipywidgets as widgets
import torch
from torch import nn

from segviz.inspect.capture import capture
from segviz.nn.recording import SamplingRecord
from segviz.viz import style
from segviz.viz.arrays import as_image
from segviz.viz.explorers import FigureSender
from segviz.viz.mask2former import init_sampling_records, sampling_figure

STATES = ("trained", "init", "both")
PANEL = 2.4  # inches per panel: smaller than the notebook's figure, so that a redraw stays quick


def _layer_labels(records: dict[str, SamplingRecord]) -> dict[str, str]:
    return {f"encoder layer {i + 1}": name for i, name in enumerate(records)}


@torch.no_grad()
def encoder_sampling_records(model: nn.Module, x: torch.Tensor) -> dict[str, SamplingRecord]:
    """One forward pass of ``model`` (eval mode) on ``x`` (1, 3, H, W); returns module name ->
    SamplingRecord of every deformable attention whose queries are pixels (the pixel decoder's
    encoder layers), in forward order."""
    model.eval()
    with capture(model, kinds=["sampling"]) as rec:
        model(x)
    out = {name: r for name, r in rec.sampling.items() if r.q_hw is not None}
    if not out:
        raise ValueError(f"{type(model).__name__} recorded no deformable attention over pixels")
    return out


class SamplingExplorer:
    """Pick a query pixel (y, x), an encoder layer, a head and trained / init / both.

        SamplingExplorer(model, photo_array, x)     # x: (1, 3, H, W), the photo as the model sees it

    Attributes: ``layer`` (Dropdown), ``head`` (IntSlider), ``state`` (ToggleButtons), ``y``,
    ``x_pixel`` (IntSliders, pixels of the photo), ``query_level`` (Dropdown: which level's pixel
    is the query), ``figure`` (the last drawn Figure), ``view`` (its Image widget), ``widget``.
    """

    def __init__(self, model: nn.Module, image, x: torch.Tensor, query: tuple[int, int] | None = None):
        self.model, self.x = model, x
        self.image = as_image(image)
        if tuple(x.shape[-2:]) != self.image.shape[:2]:
            raise ValueError(f"the picture {self.image.shape[:2]} and the input {tuple(x.shape[-2:])} differ in size")
        self._cache = {"trained": encoder_sampling_records(model, x)}
        self.layers = _layer_labels(self._cache["trained"])
        first = next(iter(self._cache["trained"].values()))
        h, w = self.image.shape[:2]
        qy, qx = (h // 2, w // 2) if query is None else query
        self.layer = widgets.Dropdown(options=list(self.layers), value=list(self.layers)[-1], description="layer")
        self.head = widgets.IntSlider(0, min=0, max=first.heads - 1, description="head")
        self.state = widgets.ToggleButtons(options=list(STATES), value="trained", description="weights")
        levels = [(f"1/{round(h / s[0])} ({s[0]}×{s[1]})", i) for i, s in enumerate(first.level_shapes)]
        self.query_level = widgets.Dropdown(options=levels, value=len(levels) - 1, description="query on")
        self.y = widgets.IntSlider(qy, min=0, max=h - 1, description="query y")
        self.x_pixel = widgets.IntSlider(qx, min=0, max=w - 1, description="query x")
        self.view = widgets.Image(format="png")
        self.figure = None
        self._sender = FigureSender()
        for control in (self.layer, self.head, self.state, self.query_level, self.y, self.x_pixel):
            control.observe(lambda _change: self.redraw(), names="value")
        self.widget = widgets.VBox([widgets.HBox([self.layer, self.head, self.query_level]), self.state,
                                    widgets.HBox([self.y, self.x_pixel]), self.view])
        self.redraw()

    def records(self, state: str) -> dict[str, SamplingRecord]:
        """name -> record for "trained" or "init" (recorded once, then cached)."""
        if state not in ("trained", "init"):
            raise ValueError(f"state must be 'trained' or 'init', got {state!r}")
        if state not in self._cache:
            names = set(self._cache["trained"])
            self._cache["init"] = {n: r for n, r in init_sampling_records(self.model, self.x).items() if n in names}
        return self._cache[state]

    def redraw(self) -> None:
        name = self.layers[self.layer.value]
        states = ("init", "trained") if self.state.value == "both" else (self.state.value,)
        shown = {state: self.records(state)[name] for state in states}
        self.figure = sampling_figure(self.image, shown, (self.y.value, self.x_pixel.value), head=self.head.value,
                                      query_level=self.query_level.value, title=self.layer.value, panel=PANEL)
        self._sender.show(self.view, self.figure)

    def _repr_mimebundle_(self, **kwargs):
        return style.widget_bundle(self.widget, self.figure, **kwargs)
