"""Thin ipywidgets explorers: controls change a value, a pure ``segviz.viz`` function redraws.

They redraw from records already captured: the model never runs again on an update.
"""
from __future__ import annotations

from collections.abc import Mapping

import ipywidgets as widgets

from segviz.viz import style
from segviz.viz.arrays import as_image
from segviz.viz.overlays import _check_record, attention_overlay


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
        style.show_png(self.view, self.figure)   # rendered at 2x, shown at 1x: sharp on a dense screen

    def _repr_mimebundle_(self, **kwargs):
        # the widget, and a picture of its current state for a reader without a kernel
        return style.widget_bundle(self.widget, self.figure, **kwargs)
