"""The ISR explorer: slide the key/value reduction ratios, watch cost, speed, attention and
prediction change, on the same weights.

Inference spatial reduction (ISR, EDAFormer paper Sec. 3.3) pools the keys and values of
every spatial-reduction attention by a larger per-side ratio r at inference than in training. A
stage with N query tokens then attends to N / R keys, R = r², so its attention costs O(N² / R).

The pieces, pure functions first and the widget last:

* :func:`allowed_ratios` — the per-side ratios each stage can take at an input size;
* :func:`evaluate_setting` — one ratio setting: GMACs (total and attention per stage), the
  prediction on one image, its attention records, and mIoU on a held-out set;
* :func:`measure_latency` — median wall time of a forward pass under several settings;
* :func:`readout_html` and :func:`isr_figure` — the numbers and the picture, against the
  training setting;
* :class:`ISRExplorer` — the thin ipywidgets front: sliders, a preset menu, query and stage.

Ratios are segviz's: the *total* per-side reduction, encoder stages 1..4 and decoder stages in
the order of the encoder stage they read, 2, 3, 4. The paper writes decoder ratios deepest
stage first: its decoder "[2, 4, 8]" is ``decoder=(8, 4, 2)`` here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import nn

from segviz.inspect.capture import capture
from segviz.inspect.costs import flops
from segviz.inspect.isr import feature_sizes, isr, training_ratios
from segviz.nn.reduction import SpatialReductionAttention
from segviz.training import evaluate
from segviz.viz import style
from segviz.viz.arrays import as_image
from segviz.viz.overlays import draw_attention, class_colors

# The EDAFormer paper's two ISR settings, in segviz's order (decoder stages 2, 3, 4).
PAPER_PRESETS = {
    "paper: enc [16,8,2,1], dec [2,4,8]": {"encoder": (16, 8, 2, 1), "decoder": (8, 4, 2)},
    "paper: enc [16,8,4,2], dec [2,4,8]": {"encoder": (16, 8, 4, 2), "decoder": (8, 4, 2)},
}
TRAINING = "training ratios"
CUSTOM = "custom"

HELP = (
    "Each slider is one stage's <b>total</b> key/value reduction per side, r: a stage with N query "
    "tokens attends to N/R keys, R = r². Encoder sliders are stages 1-4; decoder sliders are in the order of "
    "the encoder stage they read, 2, 3, 4. <b>The paper writes decoder ratios the other way round</b> "
    "(deepest stage first): its decoder [2,4,8] is dec 2 = 8, dec 3 = 4, dec 4 = 2 here."
)


# --------------------------------------------------------------------------- pure functions
def stage_modules(model: nn.Module) -> dict[tuple[str, int], list[tuple[str, SpatialReductionAttention]]]:
    """(group, stage) -> [(qualified name, attention module)] for every ISR-addressable attention."""
    found: dict[tuple[str, int], list] = {}
    for name, module in model.named_modules():
        if isinstance(module, SpatialReductionAttention) and module.isr_role is not None:
            found.setdefault(tuple(module.isr_role), []).append((name, module))
    if not found:
        raise ValueError(f"{type(model).__name__} has no spatial-reduction attention that ISR can address")
    order = {"encoder": 0, "decoder": 1}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0][0], 2), kv[0][1])))


def stage_label(group: str, stage: int) -> str:
    return f"{'enc' if group == 'encoder' else 'dec'} {stage}"


def allowed_ratios(model: nn.Module, input_size: Sequence[int]) -> dict[str, dict[int, tuple[int, ...]]]:
    """group -> stage -> the per-side ratios offered at ``input_size`` = (H, W).

    Powers of two up to the stage's shorter feature side that the stage's attention accepts
    (SegFormer: multiples of its learned conv's stride), plus the training ratio.
    """
    sizes = feature_sizes(model, input_size)
    offered: dict[str, dict[int, tuple[int, ...]]] = {}
    for (group, stage), modules in stage_modules(model).items():
        module = modules[0][1]
        side = min(sizes[group][stage])
        ratios = {module.train_ratio}
        r = 1
        while r <= side:
            try:
                module.isr_check(r)
                ratios.add(r)
            except ValueError:
                pass
            r *= 2
        offered.setdefault(group, {})[stage] = tuple(sorted(ratios))
    return offered


def _key(ratios: Mapping[str, Sequence[int]], pool: str) -> tuple:
    return tuple((g, tuple(int(r) for r in ratios[g])) for g in sorted(ratios)) + (pool,)


@dataclasses.dataclass
class SettingResult:
    """What one ratio setting gives (everything but latency, which is measured separately).

    ``gmacs``: whole model; ``stage_gmacs``: "enc 1" -> GMACs of that stage's attention blocks
    (EFA / efficient self-attention, with their k/v conv and output Linear); ``stage_ratios``:
    "enc 1" -> its ratio; ``labels``: (H, W) predicted classes of the image; ``records``:
    "enc 1" -> the AttentionRecord of the stage's first attention; ``miou``: on the held-out
    set, or None.
    """

    ratios: dict[str, tuple[int, ...]]
    stage_ratios: dict[str, int]
    pool: str
    gmacs: float
    stage_gmacs: dict[str, float]
    labels: np.ndarray
    records: dict[str, object]
    miou: float | None


def evaluate_setting(model: nn.Module, x: torch.Tensor, ratios: Mapping[str, Sequence[int]], pool: str = "avg",
                     eval_set=None) -> SettingResult:
    """Run ``model`` on ``x`` (1, 3, H, W) with ISR ``ratios`` ({"encoder": ..., "decoder": ...}).
    The model is left in eval mode with its ratios restored.

    Counts GMACs (``segviz.flops``), records the attention of each stage's first block, predicts
    (logits bilinearly resized to H x W, argmax) and, with ``eval_set`` (e.g. a held-out
    :class:`segviz.data.Shapes`), computes its dataset mIoU.
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one image (1, 3, H, W), got {tuple(x.shape)}")
    stages = stage_modules(model)
    first = {modules[0][0]: stage_label(*key) for key, modules in stages.items()}
    names = {name: stage_label(*key) for key, modules in stages.items() for name, _ in modules}
    model.eval()
    with isr(model, encoder=ratios.get("encoder"), decoder=ratios.get("decoder"), pool=pool) as in_force:
        report = flops(model, tuple(x.shape))
        stage_ratios = {stage_label(*key): modules[0][1].ratio for key, modules in stages.items()}
        with torch.no_grad(), capture(model, kinds=["attention"]) as rec:
            logits = model(x)
        miou = evaluate(model, eval_set) if eval_set is not None else None
    per_stage = dict.fromkeys(first.values(), 0.0)
    for name, label in names.items():
        per_stage[label] += report.per_module.get(name, 0.0)
    logits = F.interpolate(logits, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
    labels = logits.argmax(1)[0].cpu().numpy()
    records = {label: rec.attention[name] for name, label in first.items()}
    return SettingResult(dict(in_force), stage_ratios, pool, report.total, per_stage, labels, records, miou)


def measure_latency(model: nn.Module, x: torch.Tensor, settings: Mapping[str, Mapping],
                    repeats: int = 3) -> dict[str, float]:
    """Median milliseconds of a forward pass of ``model`` on ``x`` under each ISR setting.

    ``settings``: label -> keyword arguments of :func:`segviz.isr` (``encoder``, ``decoder``,
    ``pool``; ``{}`` is the training ratios). The settings' runs are interleaved, round after
    round (the first round warms up), so a machine busy with other work slows them alike.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    times: dict[str, list[float]] = {label: [] for label in settings}
    model.eval()
    with torch.no_grad():
        for run in range(repeats + 1):
            for label, setting in settings.items():
                with isr(model, **setting):
                    start = time.perf_counter()
                    model(x)
                    if run:
                        times[label].append((time.perf_counter() - start) * 1e3)
    return {label: statistics.median(t) for label, t in times.items()}


def _fmt(gmacs: float) -> str:
    """GMACs with 4 significant digits below 1 (a nano model), 3 decimals above."""
    return f"{gmacs:.4g}" if gmacs < 1 else f"{gmacs:.3f}"


def _change(now: float, ref: float) -> str:
    return f"{round(100 * (now - ref) / ref, 1) + 0.0:+.1f} %" if ref else "n/a"


def gmacs_html(result: SettingResult, reference: SettingResult) -> str:
    """The whole model's GMACs now, against the training ratios."""
    return (f"<b>{_fmt(result.gmacs)} GMACs</b> (training ratios: {_fmt(reference.gmacs)}, "
            f"{_change(result.gmacs, reference.gmacs)})")


def readout_html(result: SettingResult, reference: SettingResult, latency_ms: float | None = None,
                 reference_latency_ms: float | None = None) -> str:
    """Latency, held-out mIoU and the share of changed pixels, against the training ratios."""
    lines = []
    if latency_ms is not None and reference_latency_ms is not None:
        lines.append(f"latency {latency_ms:.1f} ms (training ratios: {reference_latency_ms:.1f} ms, "
                     f"{reference_latency_ms / latency_ms:.2f}× speed)")
    if result.miou is not None and reference.miou is not None:
        lines.append(f"held-out mIoU {result.miou:.3f} (training ratios: {reference.miou:.3f}, "
                     f"{round(result.miou - reference.miou, 3) + 0.0:+.3f})")
    changed = float((result.labels != reference.labels).mean())
    lines.append(f"pixels whose predicted class changed: {100 * changed:.1f} %")
    return "<br>".join(lines)


def stage_table_html(result: SettingResult, reference: SettingResult) -> str:
    """Per stage: ratio, keys per query, attention GMACs now and at the training ratios."""
    rows = []
    for label, g in result.stage_gmacs.items():
        rec, ref = result.records[label], reference.stage_gmacs[label]
        kh, kw = rec.k_hw
        rows.append(f"<tr><td>{label}</td><td>{rec.q_hw[0]}×{rec.q_hw[1]}</td><td>{kh}×{kw}</td>"
                    f"<td>{g * 1e3:.2f}</td><td>{ref * 1e3:.2f}</td><td>{_change(g, ref)}</td></tr>")
    head = ("<tr><th>stage</th><th>queries</th><th>keys</th><th>attention MMACs</th>"
            "<th>at training</th><th>change</th></tr>")
    style = "<style>.segviz-isr-table td, .segviz-isr-table th {padding: 1px 8px; text-align: right}</style>"
    return f"{style}<table class='segviz-isr-table'>{head}{''.join(rows)}</table>"


@style.styled
def isr_figure(image, result: SettingResult, reference: SettingResult, stage: str, query: tuple[int, int],
               head: int = 0, class_names: Sequence[str] | None = None) -> Figure:
    """Four panels, two by two: attention GMACs per stage (training vs now) and where the
    query looks in ``stage``; the prediction, and which pixels' class changed against the
    training ratios."""
    img = as_image(image)
    if stage not in result.records:
        raise ValueError(f"unknown stage {stage!r}; choose one of {list(result.records)}")
    # a fixed layout: the constrained layout engine would double the drawing time of an update
    fig = style.figure(9.8, 6.9, layout=None)
    fig.subplots_adjust(left=0.08, right=0.97, bottom=0.03, top=0.9, wspace=0.3, hspace=0.3)
    (ax_bar, ax_att), (ax_pred, ax_diff) = fig.subplots(2, 2)

    labels = list(result.stage_gmacs)
    pos = np.arange(len(labels))
    ref = [1e3 * reference.stage_gmacs[s] for s in labels]
    now = [1e3 * result.stage_gmacs[s] for s in labels]
    ax_bar.bar(pos - 0.2, ref, 0.4, color="0.7", label="training ratios")
    ax_bar.bar(pos + 0.2, now, 0.4, color="tab:orange", label="now")
    ax_bar.set_xticks(pos, labels, fontsize=style.SMALL)
    ax_bar.set_ylabel("attention MMACs")
    ax_bar.set_title(f"attention cost per stage\nmodel total {_fmt(result.gmacs)} GMACs "
                     f"(training ratios: {_fmt(reference.gmacs)})", fontsize=style.NORMAL)
    ax_bar.legend(fontsize=style.SMALL)

    record = result.records[stage]
    head = min(head, record.probs.shape[1] - 1)
    heat = draw_attention(ax_att, img, record, query, head)
    kh, kw = record.k_hw
    r = result.stage_ratios[stage]
    ax_att.set_title(f"where the query looks: {stage}, head {head}\n"
                     f"r = {r} (R = r² = {r * r}), {kh}×{kw} keys", fontsize=style.NORMAL)
    fig.colorbar(heat, ax=ax_att, shrink=0.8, label="attention weight")

    if class_names is not None:
        n_classes = len(class_names)
    else:
        n_classes = int(max(result.labels.max(), reference.labels.max())) + 1
    colors = class_colors(n_classes)
    rgba = np.zeros(result.labels.shape + (4,), np.float32)
    rgba[..., :3] = colors[result.labels]
    rgba[..., 3] = 0.6
    if class_names is not None and class_names[0].lower() == "background":
        rgba[result.labels == 0, 3] = 0.0  # background left uncoloured
    ax_pred.imshow(img)
    ax_pred.imshow(rgba, interpolation="nearest")
    ax_pred.set_title("prediction now", fontsize=style.NORMAL)
    changed = result.labels != reference.labels
    ax_diff.imshow(img * 0.35 + 0.65)
    overlay = np.zeros(changed.shape + (4,), np.float32)
    overlay[changed] = (0.9, 0.05, 0.05, 0.9)
    ax_diff.imshow(overlay, interpolation="nearest")
    ax_diff.set_title(f"class changed vs training ratios (red):\n{100 * changed.mean():.1f} % of pixels",
                      fontsize=style.NORMAL)
    for ax in (ax_pred, ax_diff):
        ax.set_xticks([])
        ax.set_yticks([])
    if class_names is not None:
        handles = [Patch(color=colors[i], label=name) for i, name in enumerate(class_names)
                   if not (i == 0 and name.lower() == "background")]
        ax_pred.legend(handles=handles, fontsize=style.SMALL, loc="center right", bbox_to_anchor=(-0.04, 0.5),
                       frameon=False)
    return fig


# --------------------------------------------------------------------------- the widget
class ISRExplorer:
    """Sliders for every stage's ISR ratio; each change redraws cost, latency, attention,
    prediction and mIoU against the training ratios.

        explorer = ISRExplorer(model, photo_uint8, x, eval_set=Shapes(32, 64, seed=7),
                               class_names=Shapes.classes)
        explorer            # in a notebook: the widget

    Args:
        model: EDAFormer (encoder and decoder sliders) or SegFormer (encoder sliders only).
        image: the picture to show, (H, W, 3) uint8 (what ``x`` was made from).
        x: the model input, (1, 3, H, W).
        eval_set: optional held-out set for mIoU (e.g. :class:`segviz.data.Shapes`).
        class_names: names of the model's classes, for the legend.
        latency_repeats: forward passes per latency measurement (median); on every change of
            setting the training ratios are timed again alongside, runs interleaved.
        threads: torch CPU threads while the explorer computes (default 1: inputs this small gain
            nothing from more threads, and lose much when the cores are busy); None leaves
            torch's setting alone. Latencies are measured with this many threads.

    Attributes: ``input`` (the model input), ``sliders`` ("enc 1" -> SelectionSlider, CSS class ``segviz-isr-slider``),
    ``preset`` (Dropdown), ``pool`` (ToggleButtons), ``stage`` (Dropdown), ``head``, ``y``,
    ``x`` (IntSliders), ``gmacs`` (HTML, CSS class ``segviz-gmacs``), ``readout`` (HTML),
    ``table`` (HTML per stage), ``view`` (Image), ``figure`` (last Figure), ``result`` (last
    :class:`SettingResult`), ``reference`` (training ratios), ``widget``.
    Results are cached per (ratios, pool); latency is measured again, paired with the training
    ratios, on every change of setting.
    """

    def __init__(self, model: nn.Module, image, x: torch.Tensor, *, eval_set=None,
                 class_names: Sequence[str] | None = None, latency_repeats: int = 3, threads: int | None = 1):
        import ipywidgets as widgets

        self.model, self.input, self.eval_set = model, x, eval_set
        self.image = as_image(image)
        if self.image.shape[:2] != tuple(x.shape[-2:]):
            raise ValueError(f"image {self.image.shape[:2]} and input {tuple(x.shape[-2:])} differ in size")
        self.class_names = class_names
        self.latency_repeats = latency_repeats
        self.threads = threads
        self.training = training_ratios(model)
        self.offered = allowed_ratios(model, tuple(x.shape[-2:]))
        self._cache: dict[tuple, SettingResult] = {}
        self._busy = False
        with self._threads():
            self.reference = self.evaluate(self.training, "avg")
        self.latency = self.reference_latency = None

        self.sliders = {}
        for group, stages in self.offered.items():
            for stage, options in stages.items():
                label = stage_label(group, stage)
                start = self.training[group][list(stages).index(stage)]
                slider = widgets.SelectionSlider(options=list(options), value=start, description=label,
                                                 continuous_update=False,
                                                 layout=widgets.Layout(width="260px"))
                slider.add_class("segviz-isr-slider")
                slider.observe(self._ratio_changed, names="value")
                self.sliders[label] = slider
        self.presets = self._valid_presets()
        self.preset = widgets.Dropdown(options=list(self.presets) + [CUSTOM], value=TRAINING, description="preset",
                                       layout=widgets.Layout(width="330px"))
        self.preset.observe(self._preset_changed, names="value")
        self.pool = widgets.ToggleButtons(options=["avg", "max"], value="avg", description="ISR pool",
                                          tooltips=["average pooling (the paper's choice)", "max pooling"])
        self.pool.observe(self._control_changed, names="value")
        h, w = self.image.shape[:2]
        self.stage = widgets.Dropdown(options=list(self.reference.records), description="stage",
                                      layout=widgets.Layout(width="200px"))
        self.head = widgets.IntSlider(0, min=0, max=7, description="head")
        self.y = widgets.IntSlider(h // 2, min=0, max=h - 1, description="query y")
        self.x = widgets.IntSlider(w // 2, min=0, max=w - 1, description="query x")
        for control in (self.stage, self.head, self.y, self.x):
            control.observe(self._control_changed, names="value")
        self.gmacs = widgets.HTML()
        self.gmacs.add_class("segviz-gmacs")
        self.readout = widgets.HTML()
        self.table = widgets.HTML()
        self.view = widgets.Image(format="png")
        self.figure = None
        self.result = self.reference
        help_text = widgets.HTML(f"<small>{HELP}</small>", layout=widgets.Layout(width="100%"))
        enc = [s for n, s in self.sliders.items() if n.startswith("enc")]
        dec = [s for n, s in self.sliders.items() if n.startswith("dec")]
        columns = [widgets.VBox([widgets.HTML("<b>encoder ratios</b>"), *enc])]
        if dec:
            columns.append(widgets.VBox([widgets.HTML("<b>decoder ratios</b>"), *dec]))
        columns.append(widgets.VBox([self.preset, self.pool, self.stage, self.head, self.y, self.x]))
        self.widget = widgets.VBox([widgets.HBox(columns), help_text,
                                    widgets.HBox([widgets.VBox([self.gmacs, self.readout]), self.table]), self.view])
        self.redraw()

    def ratios(self) -> dict[str, tuple[int, ...]]:
        """The setting the sliders show, {"encoder": (...), "decoder": (...)}."""
        return {group: tuple(self.sliders[stage_label(group, s)].value for s in stages)
                for group, stages in self.offered.items()}

    def evaluate(self, ratios: Mapping[str, Sequence[int]], pool: str) -> SettingResult:
        key = _key(ratios, pool)
        if key not in self._cache:
            self._cache[key] = evaluate_setting(self.model, self.input, ratios, pool, self.eval_set)
        return self._cache[key]

    def _valid_presets(self) -> dict[str, dict[str, tuple[int, ...]]]:
        presets = {TRAINING: dict(self.training)}
        for name, setting in PAPER_PRESETS.items():
            chosen = {g: setting[g] for g in self.offered}
            if all(r in self.offered[g][s] for g in chosen for s, r in zip(self.offered[g], chosen[g])):
                presets[name] = chosen
        return presets

    def _preset_changed(self, change) -> None:
        if self._busy or change["new"] == CUSTOM:
            return
        setting = self.presets[change["new"]]
        self._busy = True
        try:
            for group, ratios in setting.items():
                for stage, ratio in zip(self.offered[group], ratios):
                    self.sliders[stage_label(group, stage)].value = ratio
        finally:
            self._busy = False
        self.redraw()

    def _control_changed(self, _change) -> None:
        if not self._busy:
            self.redraw()

    def _ratio_changed(self, _change) -> None:
        if self._busy:
            return
        now = self.ratios()
        match = next((name for name, setting in self.presets.items() if setting == now), CUSTOM)
        self._busy = True
        try:
            self.preset.value = match
        finally:
            self._busy = False
        self.redraw()

    @contextlib.contextmanager
    def _threads(self):
        if self.threads is None:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def redraw(self) -> None:
        """Evaluate (or fetch) the current setting, measure latency, redraw everything."""
        with self._threads():
            self._redraw()

    def _redraw(self) -> None:
        ratios, pool = self.ratios(), self.pool.value
        key = _key(ratios, pool)
        if self.latency is None or _key(self.result.ratios, self.result.pool) != key:
            self.result = self.evaluate(ratios, pool)
            timed = measure_latency(self.model, self.input, {"now": {**ratios, "pool": pool}, "training": {}},
                                    repeats=self.latency_repeats)
            self.latency, self.reference_latency = timed["now"], timed["training"]
        record = self.result.records[self.stage.value]
        heads = int(record.probs.shape[1])
        self._busy = True
        try:
            self.head.max = heads - 1  # may clamp the head's value; no second redraw
        finally:
            self._busy = False
        self.gmacs.value = gmacs_html(self.result, self.reference)
        self.readout.value = readout_html(self.result, self.reference, self.latency, self.reference_latency)
        self.table.value = stage_table_html(self.result, self.reference)
        self.figure = isr_figure(self.image, self.result, self.reference, self.stage.value,
                                 (self.y.value, self.x.value), self.head.value, self.class_names)
        style.show_png(self.view, self.figure)

    def _repr_mimebundle_(self, **kwargs):
        # the widget, and a picture of its current state for a reader without a kernel
        return style.widget_bundle(self.widget, self.figure, **kwargs)
