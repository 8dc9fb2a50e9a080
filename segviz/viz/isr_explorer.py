"""The ISR explorer: slide the key/value reduction ratios, watch cost, speed, attention and
prediction change, on the same weights.

Inference spatial reduction (ISR, EDAFormer paper Sec. 3.3) pools the keys and values of
every spatial-reduction attention by a larger per-side ratio r at inference than in training. A
stage with N query tokens then attends to N / R keys, R = r², so its attention costs O(N² / R).

The pieces, pure functions first and the widget last:

* :func:`allowed_ratios` — the per-side ratios each stage can take at an input size;
* :func:`cost_table` — GMACs of every stage's attention at every offered ratio, counted once,
  from which the GMACs of any setting are added up;
* :func:`evaluate_setting` — one ratio setting: GMACs (total and attention per stage), the
  prediction on one image, its attention records, and mIoU on a held-out set;
* :func:`measure_latency` — median wall time of a forward pass under several settings;
* :func:`readout_html` and :func:`isr_figure` — the numbers and the picture, against the
  training setting;
* :class:`ISRExplorer` — the thin ipywidgets front: sliders, a preset menu, query and stage,
  and a button that times the latency.

Ratios are segviz's: the *total* per-side reduction, encoder stages 1..4 and decoder stages in
the order of the encoder stage they read, 2, 3, 4. The paper writes decoder ratios deepest
stage first: its decoder "[2, 4, 8]" is ``decoder=(8, 4, 2)`` here.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import statistics
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.transforms import Bbox
from torch import nn

from segviz.inspect.capture import capture
from segviz.inspect.costs import flops
from segviz.inspect.isr import feature_sizes, isr, training_ratios
from segviz.nn.reduction import SpatialReductionAttention
from segviz.training import evaluate
from segviz.viz import style
from segviz.viz.arrays import as_image
from segviz.viz.explorers import png_bytes  # noqa: F401  (also this module's name for it)
from segviz.viz.overlays import class_colors, draw_attention

# The EDAFormer paper's two ISR settings, in segviz's order (decoder stages 2, 3, 4).
PAPER_PRESETS = {
    "paper: enc [16,8,2,1], dec [2,4,8]": {"encoder": (16, 8, 2, 1), "decoder": (8, 4, 2)},
    "paper: enc [16,8,4,2], dec [2,4,8]": {"encoder": (16, 8, 4, 2), "decoder": (8, 4, 2)},
}
TRAINING = "training ratios"
CUSTOM = "custom"
# Default side of the input the explorer times latency at. benchmarks/isr_latency.py --sizes
# sweeps the size. On a 2-core CPU, one thread, the paper presets' speed-up on edaformer-nano
# is 1.08-1.09x at 256 px and 1.22-1.29x at 512 px with nothing else running (noise 1-2 %,
# 24 Nov 2026); with the machine shared with other work the run-to-run noise reached 13-14 %,
# which swamps the 256 px speed-up but not the 512 px one.
LATENCY_SIZE = 512

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


def _stage_sums(model: nn.Module, per_module: Mapping[str, float]) -> dict[str, float]:
    """Stage label -> GMACs of that stage's attention modules, from a FlopReport's per_module."""
    return {stage_label(*key): sum(per_module.get(name, 0.0) for name, _ in modules)
            for key, modules in stage_modules(model).items()}


@dataclasses.dataclass
class CostTable:
    """GMACs of every stage's attention at every offered ratio, at one input shape.

    A stage's ratio changes the cost of that stage's attention modules only (their k/v pooling
    and the attention product; the pooling itself, average or max, is not a multiply-add), so
    the cost of any setting is the cost at the training ratios plus, per stage, the change of
    that stage's attention. ``stage``: "enc 1" -> ratio -> GMACs; ``training``: "enc 1" ->
    training ratio; ``training_total``: the whole model at the training ratios.
    """

    input_shape: tuple[int, ...]
    training_total: float
    training: dict[str, int]
    stage: dict[str, dict[int, float]]

    def gmacs(self, stage_ratios: Mapping[str, int]) -> tuple[float, dict[str, float]] | None:
        """(total GMACs, stage label -> attention GMACs) of a setting given per stage, or None
        when some ratio is not in the table."""
        if set(stage_ratios) != set(self.stage) or \
                any(int(r) not in self.stage[label] for label, r in stage_ratios.items()):
            return None
        per_stage = {label: self.stage[label][int(stage_ratios[label])] for label in self.stage}
        total = self.training_total + sum(per_stage[s] - self.stage[s][self.training[s]] for s in self.stage)
        return total, per_stage


def cost_table(model: nn.Module, input_shape: Sequence[int],
               offered: Mapping[str, Mapping[int, Sequence[int]]] | None = None) -> CostTable:
    """Count the GMACs of every stage's attention at every ``offered`` ratio (default:
    :func:`allowed_ratios` at ``input_shape``'s size) with ``segviz.flops`` on the meta device
    (nothing is computed, whatever the size).

    All stages are set at once, pass k giving each stage its k-th offered ratio (its last one
    when it has fewer), so the table takes as many counting passes as the longest list of
    ratios, plus one at the training ratios. ``input_shape``: (B, C, H, W).
    """
    shape = tuple(int(v) for v in input_shape)
    offered = allowed_ratios(model, shape[-2:]) if offered is None else offered
    meta = copy.deepcopy(model).to("meta")
    train = training_ratios(meta)
    with isr(meta, encoder=train.get("encoder"), decoder=train.get("decoder")):  # whatever the model has set
        report = flops(meta, shape)
    training = {stage_label(g, s): int(train[g][i]) for g in offered for i, s in enumerate(offered[g])}
    stage: dict[str, dict[int, float]] = {label: {} for label in training}
    for label, value in _stage_sums(meta, report.per_module).items():
        stage[label][training[label]] = value
    passes = max(len(options) for stages in offered.values() for options in stages.values())
    for k in range(passes):
        setting = {g: tuple(options[min(k, len(options) - 1)] for options in stages.values())
                   for g, stages in offered.items()}
        with isr(meta, encoder=setting.get("encoder"), decoder=setting.get("decoder")) as in_force:
            counted = _stage_sums(meta, flops(meta, shape).per_module)
        for g, ratios in in_force.items():
            for s, r in zip(offered.get(g, ()), ratios):
                stage[stage_label(g, s)][int(r)] = counted[stage_label(g, s)]
    return CostTable(shape, report.total, training, stage)


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
                     eval_set=None, costs: CostTable | None = None) -> SettingResult:
    """Run ``model`` on ``x`` (1, 3, H, W) with ISR ``ratios`` ({"encoder": ..., "decoder": ...}).
    The model is left in eval mode with its ratios restored.

    Counts GMACs (``segviz.flops``, or read from ``costs``, a :func:`cost_table` at ``x``'s
    shape), records the attention of each stage's first block, predicts (logits bilinearly
    resized to H x W, argmax) and, with ``eval_set`` (e.g. a held-out :class:`segviz.data.Scenes`),
    computes its dataset mIoU (``segviz.training.evaluate``: batches of 16 images).
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one image (1, 3, H, W), got {tuple(x.shape)}")
    if costs is not None and tuple(costs.input_shape) != tuple(x.shape):
        raise ValueError(f"costs were counted for input {costs.input_shape}, x is {tuple(x.shape)}")
    stages = stage_modules(model)
    first = {modules[0][0]: stage_label(*key) for key, modules in stages.items()}
    model.eval()
    with isr(model, encoder=ratios.get("encoder"), decoder=ratios.get("decoder"), pool=pool) as in_force:
        stage_ratios = {stage_label(*key): modules[0][1].ratio for key, modules in stages.items()}
        counted = costs.gmacs(stage_ratios) if costs is not None else None
        if counted is None:
            report = flops(model, tuple(x.shape))
            counted = report.total, _stage_sums(model, report.per_module)
        # only each stage's first attention is shown: only those are recorded
        with torch.no_grad(), capture(model, kinds=["attention"], include=list(first)) as rec:
            logits = model(x)
        miou = evaluate(model, eval_set) if eval_set is not None else None
    total, per_stage = counted
    logits = F.interpolate(logits, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
    labels = logits.argmax(1)[0].cpu().numpy()
    records = {label: rec.attention[name] for name, label in first.items()}
    return SettingResult(dict(in_force), stage_ratios, pool, total, per_stage, labels, records, miou)


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
                 reference_latency_ms: float | None = None, *, latency_size: Sequence[int] | None = None,
                 latency_note: str | None = None, eval_images: int | None = None) -> str:
    """Latency, held-out mIoU and the share of changed pixels, against the training ratios.

    ``latency_size``: (H, W) the latency was timed at, printed with it; ``latency_note``: a line
    shown in place of the latency when none is given; ``eval_images``: how many held-out images
    the mIoU is over, printed with it."""
    lines = []
    if latency_ms is not None and reference_latency_ms is not None:
        at = f" at {latency_size[0]}×{latency_size[1]}" if latency_size is not None else ""
        lines.append(f"latency{at} {latency_ms:.1f} ms (training ratios: {reference_latency_ms:.1f} ms, "
                     f"{reference_latency_ms / latency_ms:.2f}× speed)")
    elif latency_note:
        lines.append(latency_note)
    if result.miou is not None and reference.miou is not None:
        over = f" ({eval_images} images)" if eval_images is not None else ""
        lines.append(f"held-out mIoU{over} {result.miou:.3f} (training ratios: {reference.miou:.3f}, "
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


class ISRFigure:
    """The four panels of :func:`isr_figure` in one persistent figure whose artists are updated.

    :meth:`update` shows a new setting / stage / query / head; :meth:`png` renders it for an
    explorer. The parts that never change (the photos under the prediction and the
    class-change map, the legend, the titles that stay) are drawn once into a background;
    a render restores that background and draws only what can change on top (the cost bars,
    the attention panel with its colour bar, the two overlays and the changing title). When
    only the stage, query or head changed since the last render, only the attention panel's
    part of the picture is restored and redrawn. The result is, pixel for pixel, the picture a
    full ``savefig`` at the same dpi gives (``tests/test_isr_explorer_cache.py``). ``figure``
    is an ordinary matplotlib ``Figure`` at :data:`segviz.viz.style.DPI`: saving or
    displaying it draws everything.
    """

    @style.styled
    def __init__(self, image, reference: SettingResult, class_names: Sequence[str] | None = None):
        self.image = as_image(image)
        self.reference = reference
        self.class_names = class_names
        # a fixed layout: the constrained layout engine would double the drawing time of an update
        fig = self.figure = style.figure(9.8, 6.9, layout=None)
        self.canvas = FigureCanvasAgg(fig)
        fig.subplots_adjust(left=0.08, right=0.97, bottom=0.03, top=0.9, wspace=0.3, hspace=0.3)
        (ax_bar, ax_att), (ax_pred, ax_diff) = fig.subplots(2, 2)
        self.ax_bar, self.ax_att, self.ax_pred, self.ax_diff = ax_bar, ax_att, ax_pred, ax_diff

        self.labels = list(reference.stage_gmacs)
        pos = np.arange(len(self.labels))
        ref = [1e3 * reference.stage_gmacs[s] for s in self.labels]
        ax_bar.bar(pos - 0.2, ref, 0.4, color="0.7", label="training ratios")
        self.bars = ax_bar.bar(pos + 0.2, ref, 0.4, color="tab:orange", label="now")
        ax_bar.set_xticks(pos, self.labels, fontsize=style.SMALL)
        ax_bar.set_ylabel("attention MMACs")
        ax_bar.legend(fontsize=style.SMALL)

        # the colour bar takes its room from the attention panel once; updates swap its mappable
        self.colorbar = fig.colorbar(ScalarMappable(Normalize(0, 1), "magma"), ax=ax_att, shrink=0.8,
                                     label="attention weight")

        blank = np.zeros(self.image.shape[:2] + (4,), np.float32)
        ax_pred.imshow(self.image)
        self.pred = ax_pred.imshow(blank, interpolation="nearest")
        ax_pred.set_title("prediction now", fontsize=style.NORMAL)
        ax_diff.imshow(self.image * 0.35 + 0.65)
        self.diff = ax_diff.imshow(blank, interpolation="nearest")
        self.diff_title = ax_diff.set_title("", fontsize=style.NORMAL)
        for ax in (ax_pred, ax_diff):
            ax.set_xticks([])
            ax.set_yticks([])
        if class_names is not None:
            colors = class_colors(len(class_names))
            handles = [Patch(color=colors[i], label=name) for i, name in enumerate(class_names)
                       if not (i == 0 and name.lower() == "background")]
            ax_pred.legend(handles=handles, fontsize=style.SMALL, loc="center right", bbox_to_anchor=(-0.04, 0.5),
                           frameon=False)
        # what a render draws over the background (the overlays' axes' spines after the overlays)
        self._attention_part = [ax_att, self.colorbar.ax]
        self._setting_part = [ax_bar, self.pred, self.diff, self.diff_title,
                              *ax_pred.spines.values(), *ax_diff.spines.values()]
        self._background = None  # (render dpi, saved region)
        self._frame = None       # the renderer holding our last render, and its dpi
        self._cell = None        # the attention panel's part of the picture (buffer pixels), or None
        self._cell_box = None
        self._shown = None       # the result on show
        self._view = None        # (stage, query, head) on show
        self._dirty = {"setting", "attention"}
        self.renders = {"full": 0, "attention part": 0}  # how many renders drew what

    @style.styled
    def update(self, result: SettingResult, stage: str, query: tuple[int, int], head: int = 0) -> Figure:
        """Show ``result`` against the reference, the attention of ``stage`` for ``query`` (y, x)."""
        if stage not in result.records:
            raise ValueError(f"unknown stage {stage!r}; choose one of {list(result.records)}")
        record = result.records[stage]
        head = min(head, record.probs.shape[1] - 1)
        view = (stage, (int(query[0]), int(query[1])), head)
        if result is not self._shown:
            self._show_setting(result)
            self._dirty.add("setting")
        if result is not self._shown or view != self._view:
            self._show_attention(result, stage, query, head)
            self._dirty.add("attention")
        self._shown, self._view = result, view
        return self.figure

    def _show_setting(self, result: SettingResult) -> None:
        reference, ax_bar = self.reference, self.ax_bar
        for bar, label in zip(self.bars, self.labels):
            bar.set_height(1e3 * result.stage_gmacs[label])
        ax_bar.relim()
        ax_bar.autoscale_view()
        ax_bar.set_title(f"attention cost per stage\nmodel total {_fmt(result.gmacs)} GMACs "
                         f"(training ratios: {_fmt(reference.gmacs)})", fontsize=style.NORMAL)
        if self.class_names is not None:
            n_classes = len(self.class_names)
        else:
            n_classes = int(max(result.labels.max(), reference.labels.max())) + 1
        colors = class_colors(n_classes)
        rgba = np.zeros(result.labels.shape + (4,), np.float32)
        rgba[..., :3] = colors[result.labels]
        rgba[..., 3] = 0.6
        if self.class_names is not None and self.class_names[0].lower() == "background":
            rgba[result.labels == 0, 3] = 0.0  # background left uncoloured
        self.pred.set_data(rgba)
        changed = result.labels != reference.labels
        overlay = np.zeros(changed.shape + (4,), np.float32)
        overlay[changed] = (0.9, 0.05, 0.05, 0.9)
        self.diff.set_data(overlay)
        self.diff_title.set_text(f"class changed vs training ratios (red):\n{100 * changed.mean():.1f} % of pixels")

    def _show_attention(self, result: SettingResult, stage: str, query: tuple[int, int], head: int) -> None:
        ax_att, record = self.ax_att, result.records[stage]
        # what draw_attention drew last time goes (faster than Axes.clear, which rebuilds the axes)
        for artist in [*ax_att.images, *ax_att.lines, *ax_att.patches, *ax_att.collections, *ax_att.texts,
                       *ax_att.artists]:
            artist.remove()
        heat = draw_attention(ax_att, self.image, record, query, head)
        kh, kw = record.k_hw
        r = result.stage_ratios[stage]
        ax_att.set_title(f"where the query looks: {stage}, head {head}\n"
                         f"r = {r} (R = r² = {r * r}), {kh}×{kw} keys", fontsize=style.NORMAL)
        self.colorbar.update_normal(heat)

    @contextlib.contextmanager
    def _at_dpi(self, dpi: float):
        fig = self.figure
        before = fig.dpi
        fig.set_dpi(dpi)
        try:
            yield
        finally:
            fig.set_dpi(before)

    def _attention_cell(self, renderer, full: bool) -> tuple[int, int, int, int] | None:
        """The picture's part for the attention panel, in buffer pixels: from midway between
        the cost bars and the panel to the right edge, from midway between the panel and the
        class-change title to the top. None when another changing artist reaches into it, or
        the panel out of it. ``full``: after a full render (the other artists may have moved)."""
        if full:
            fig_box = self.figure.bbox
            title = self.diff_title.get_window_extent(renderer)
            att = self.ax_att.get_window_extent(renderer)
            x0 = (self.ax_bar.get_window_extent(renderer).x1 + att.x0) / 2
            y0 = (att.y0 + title.y1) / 2
            # what of the cost bars' panel could reach right: the panel, its title and legend (its
            # tick labels sit under the bars; a tight bbox would cost more than the rest of this)
            bars = [self.ax_bar.get_window_extent(renderer), self.ax_bar.title.get_window_extent(renderer)]
            legend = self.ax_bar.get_legend()
            if legend is not None:
                bars.append(legend.get_window_extent(renderer))
            clear = all(b.x1 < x0 or b.y1 < y0 for b in bars) and title.y1 < y0
            self._cell_box = Bbox.from_extents(x0, y0, fig_box.x1, fig_box.y1) if clear else None
        cell = self._cell_box
        if cell is None:
            return None
        for artist in self._attention_part:
            b = artist.get_tightbbox(renderer)
            if b.x0 < cell.x0 or b.y0 < cell.y0 or b.x1 > cell.x1 or b.y1 > cell.y1:
                return None
        height = self.figure.bbox.height
        return (int(np.floor(cell.x0)), int(np.floor(height - cell.y1)),
                int(np.ceil(cell.x1)), int(np.ceil(height - cell.y0)))

    def rgba(self, scale: float = style.EXPLORER_SCALE) -> np.ndarray:
        """The figure as it stands, rendered at ``scale`` x its dpi: (H, W, 4) uint8.

        Drawn under the caller's rcParams, as ``savefig`` would draw it (the artists were made
        under the style's)."""
        dpi = self.figure.dpi * scale
        with self._at_dpi(dpi):
            if self._background is None or self._background[0] != dpi:
                hidden = [a for a in self._attention_part + self._setting_part if a.get_visible()]
                for a in hidden:
                    a.set_visible(False)
                try:
                    self.canvas.draw()
                finally:
                    for a in hidden:
                        a.set_visible(True)
                self._background = (dpi, self.canvas.copy_from_bbox(self.figure.bbox))
                self._frame = None
            renderer = self.canvas.get_renderer()
            if self._frame == (renderer, dpi) and self._dirty <= {"attention"} and self._cell is not None:
                if self._dirty:  # only the attention panel changed: restore and redraw its part
                    # bbox in buffer pixels; xy: where the saved region's own corner goes (it is the whole figure)
                    self.canvas.restore_region(self._background[1], bbox=self._cell, xy=(0, 0))
                    for artist in self._attention_part:
                        artist.draw(renderer)
                    self.renders["attention part"] += 1
                    self._cell = self._attention_cell(renderer, full=False)
                    if self._cell is None:  # the new panel reaches out of its part: draw it all
                        self._frame = None
            if self._frame != (renderer, dpi) or "setting" in self._dirty:
                self.canvas.restore_region(self._background[1])
                # a full draw places the titles first; the background was drawn with this one hidden
                self.ax_diff._update_title_position(renderer)
                for artist in self._setting_part + self._attention_part:
                    artist.draw(renderer)
                self.renders["full"] += 1
                self._cell = self._attention_cell(renderer, full=True)
            self._frame = (renderer, dpi)
            self._dirty.clear()
            return np.array(renderer.buffer_rgba())

    def png(self, scale: float = style.EXPLORER_SCALE) -> bytes:
        """:meth:`rgba` as PNG (RGB: the figure is opaque), by :func:`png_bytes`."""
        return png_bytes(self.rgba(scale)[..., :3])


def isr_figure(image, result: SettingResult, reference: SettingResult, stage: str, query: tuple[int, int],
               head: int = 0, class_names: Sequence[str] | None = None) -> Figure:
    """Four panels, two by two: attention GMACs per stage (training vs now) and where the
    query looks in ``stage``; the prediction, and which pixels' class changed against the
    training ratios."""
    if stage not in result.records:
        raise ValueError(f"unknown stage {stage!r}; choose one of {list(result.records)}")
    return ISRFigure(image, reference, class_names).update(result, stage, query, head)


class _Materialized:
    """A dataset's items, read once and kept (``evaluate`` then only stacks them)."""

    def __init__(self, dataset):
        self.items = [dataset[i] for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


# --------------------------------------------------------------------------- the widget
class ISRExplorer:
    """Sliders for every stage's ISR ratio; each change redraws cost, attention, prediction and
    mIoU against the training ratios; a button times the latency.

        val = Scenes(8, size=256, seed=0, split="val")
        image, _ = val[0]
        explorer = ISRExplorer(model, val.array(0), image[None], eval_set=val, class_names=SCENE_CLASSES)
        explorer            # in a notebook: the widget

    What one update does. A slider moved to a setting not seen before: GMACs are read from a
    table of every stage's attention cost at every offered ratio, counted once when the
    explorer is built (:func:`cost_table`, on the meta device); the image is predicted once with
    its stages' first attention recorded; the held-out mIoU is one batched pass over
    ``eval_set`` (read once and kept), run on a worker thread while the picture is drawn; the
    picture is redrawn over a kept background (:class:`ISRFigure`) and sent as a PNG. Results
    are cached per (ratios, pool): a setting seen before only redraws. A query pixel, stage or
    head only redraws the attention panel's part of the picture. Keep ``eval_set`` small: each
    image adds a forward pass to a new setting's update (8 images of 256 x 256 are about 80 ms
    of one core for edaformer-nano, 16 about 160 ms). ``benchmarks/isr_explorer_update.py``
    times the three kinds of update.

    Latency is timed on request, at ``latency_size``: the "time latency" button runs the
    current setting and the training ratios in interleaved rounds (``latency_repeats`` each,
    after one warm-up round) on the explorer's input resized to that size, and keeps the
    result per setting; the readout names the size. Timing every slider move would cost far
    more than the rest of the update, and at a 256 x 256 input the number can be noise: the
    paper presets' speed-up on edaformer-nano is about 1.08x at 256 x 256 and 1.22-1.29x at
    512 x 512 (2-core CPU, one thread), while on a busy machine the run-to-run noise reached
    13-14 %; see :data:`LATENCY_SIZE` and ``benchmarks/isr_latency.py --sizes 256 384 512 768 1024``.

    Args:
        model: EDAFormer (encoder and decoder sliders) or SegFormer (encoder sliders only).
        image: the picture to show, (H, W, 3) uint8 (what ``x`` was made from).
        x: the model input, (1, 3, H, W).
        eval_set: optional held-out set for mIoU (e.g. :class:`segviz.data.Scenes` with
            ``split="val"``); its size is printed with the mIoU.
        class_names: names of the model's classes, for the legend.
        latency_repeats: timed forward passes per setting per latency measurement (median).
        latency_size: side of the square input latency is timed at (default
            :data:`LATENCY_SIZE` = 512; never smaller than ``x``: each side is at least
            ``x``'s); None: ``x``'s own size.
        auto_latency: also time the latency on every change to a setting not timed yet (slow:
            seconds per update at 512 x 512); default False, the button does it.
        threads: torch CPU threads while the explorer computes (default 1: inputs this small gain
            little from more threads, and lose much when the cores are busy); None leaves
            torch's setting alone. Latencies are measured with this many threads. (The mIoU
            pass of a new setting runs on a second Python thread, beside the drawing.)

    Attributes: ``input`` (the model input), ``sliders`` ("enc 1" -> SelectionSlider, CSS class ``segviz-isr-slider``),
    ``preset`` (Dropdown), ``pool`` (ToggleButtons), ``stage`` (Dropdown), ``head``, ``y``,
    ``x`` (IntSliders), ``time_latency`` (Button), ``gmacs`` (HTML, CSS class ``segviz-gmacs``),
    ``readout`` (HTML), ``table`` (HTML per stage), ``view`` (Image, CSS class ``segviz-isr-view``), ``figure`` (the
    Figure shown, updated in place), ``result`` (last :class:`SettingResult`), ``reference``
    (training ratios), ``costs`` (:class:`CostTable`), ``latency_size`` ((H, W) timed at),
    ``latencies`` ((ratios, pool) key -> (ms now, ms at the training ratios)), ``widget``.
    """

    def __init__(self, model: nn.Module, image, x: torch.Tensor, *, eval_set=None,
                 class_names: Sequence[str] | None = None, latency_repeats: int = 3,
                 latency_size: int | None = LATENCY_SIZE, auto_latency: bool = False, threads: int | None = 1):
        import ipywidgets as widgets

        if latency_repeats < 1:
            raise ValueError(f"latency_repeats must be at least 1, got {latency_repeats}")
        self.model, self.input = model, x
        self.eval_set = _Materialized(eval_set) if eval_set is not None else None
        self.image = as_image(image)
        if self.image.shape[:2] != tuple(x.shape[-2:]):
            raise ValueError(f"image {self.image.shape[:2]} and input {tuple(x.shape[-2:])} differ in size")
        self.class_names = class_names
        self.latency_repeats = latency_repeats
        self.auto_latency = auto_latency
        self.threads = threads
        self.training = training_ratios(model)
        h, w = self.image.shape[:2]
        self.offered = allowed_ratios(model, (h, w))
        if latency_size is None:
            self.latency_size = (h, w)
        else:
            self.latency_size = (max(int(latency_size), h), max(int(latency_size), w))
        self.latencies: dict[tuple, tuple[float, float]] = {}
        self._cache: dict[tuple, SettingResult] = {}
        self._executor = None
        self._busy = False
        with self._threads():
            self.costs = cost_table(model, tuple(x.shape), self.offered)
            self.reference = self.evaluate(self.training, "avg")
        self._picture = ISRFigure(self.image, self.reference, class_names)

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
        self.stage = widgets.Dropdown(options=list(self.reference.records), description="stage",
                                      layout=widgets.Layout(width="200px"))
        self.head = widgets.IntSlider(0, min=0, max=7, description="head")
        self.y = widgets.IntSlider(h // 2, min=0, max=h - 1, description="query y")
        self.x = widgets.IntSlider(w // 2, min=0, max=w - 1, description="query x")
        self.x.add_class("segviz-isr-query-x")
        for control in (self.stage, self.head, self.y, self.x):
            control.observe(self._control_changed, names="value")
        lh, lw = self.latency_size
        self.time_latency = widgets.Button(
            description=f"time latency at {lh}×{lw}", layout=widgets.Layout(width="260px"),
            tooltip=f"time this setting and the training ratios on the input resized to {lh}×{lw}, "
                    f"{latency_repeats} interleaved runs each after a warm-up")
        self.time_latency.add_class("segviz-isr-time")
        self.time_latency.on_click(lambda _button: self.measure_latency())
        self.gmacs = widgets.HTML()
        self.gmacs.add_class("segviz-gmacs")
        self.readout = widgets.HTML()
        self.table = widgets.HTML()
        self.view = widgets.Image(format="png")
        self.view.add_class("segviz-isr-view")
        self.figure = self._picture.figure
        self.result = self.reference
        help_text = widgets.HTML(f"<small>{HELP}</small>", layout=widgets.Layout(width="100%"))
        enc = [s for n, s in self.sliders.items() if n.startswith("enc")]
        dec = [s for n, s in self.sliders.items() if n.startswith("dec")]
        columns = [widgets.VBox([widgets.HTML("<b>encoder ratios</b>"), *enc])]
        if dec:
            columns.append(widgets.VBox([widgets.HTML("<b>decoder ratios</b>"), *dec]))
        columns.append(widgets.VBox([self.preset, self.pool, self.stage, self.head, self.y, self.x]))
        self.widget = widgets.VBox([widgets.HBox(columns), help_text,
                                    widgets.HBox([widgets.VBox([self.gmacs, self.readout, self.time_latency]),
                                                  self.table]), self.view])
        self.redraw()

    @property
    def latency(self) -> float | None:
        """Milliseconds of a forward pass at the current setting, if it has been timed."""
        timed = self.latencies.get(_key(self.result.ratios, self.result.pool))
        return timed[0] if timed else None

    @property
    def reference_latency(self) -> float | None:
        """Milliseconds at the training ratios, timed alongside the current setting."""
        timed = self.latencies.get(_key(self.result.ratios, self.result.pool))
        return timed[1] if timed else None

    def ratios(self) -> dict[str, tuple[int, ...]]:
        """The setting the sliders show, {"encoder": (...), "decoder": (...)}."""
        return {group: tuple(self.sliders[stage_label(group, s)].value for s in stages)
                for group, stages in self.offered.items()}

    def evaluate(self, ratios: Mapping[str, Sequence[int]], pool: str) -> SettingResult:
        """The :class:`SettingResult` of a setting, computed once and kept."""
        key = _key(ratios, pool)
        if key not in self._cache:
            result = evaluate_setting(self.model, self.input, ratios, pool, costs=self.costs)
            result.miou = self._miou(ratios, pool)
            self._cache[key] = result
        return self._cache[key]

    def _miou(self, ratios: Mapping[str, Sequence[int]], pool: str) -> float | None:
        """Held-out mIoU under a setting: what :func:`evaluate_setting` computes with ``eval_set``."""
        if self.eval_set is None:
            return None
        self.model.eval()
        with isr(self.model, encoder=ratios.get("encoder"), decoder=ratios.get("decoder"), pool=pool):
            return evaluate(self.model, self.eval_set)

    def measure_latency(self) -> tuple[float, float]:
        """Time the current setting against the training ratios at :attr:`latency_size`
        (interleaved, median of ``latency_repeats``), keep it, update the readout; returns
        (ms now, ms at the training ratios)."""
        with self._threads():
            ratios, pool = self.ratios(), self.pool.value
            x = self.input
            if tuple(x.shape[-2:]) != self.latency_size:
                x = F.interpolate(x, size=self.latency_size, mode="bilinear", align_corners=False)
            timed = measure_latency(self.model, x, {"now": {**ratios, "pool": pool}, "training": {}},
                                    repeats=self.latency_repeats)
            self.latencies[_key(ratios, pool)] = (timed["now"], timed["training"])
            self._show_numbers()
        return timed["now"], timed["training"]

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

    def _worker(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segviz-isr-miou")
        return self._executor

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
        """Evaluate (or fetch) the current setting and redraw everything (and, with
        ``auto_latency``, time a setting not timed yet)."""
        with self._threads():
            self._redraw()

    def _redraw(self) -> None:
        ratios, pool = self.ratios(), self.pool.value
        key = _key(ratios, pool)
        pending = None
        if key in self._cache:
            self.result = self._cache[key]
        else:
            # A new setting: predict the image (the picture needs it), then run the held-out
            # mIoU pass on a worker thread while this one draws (torch leaves the interpreter
            # lock while it computes): on two cores the update takes about as long as the
            # longer of the two instead of both. Nothing else uses the model meanwhile.
            self.result = evaluate_setting(self.model, self.input, ratios, pool, costs=self.costs)
            if self.eval_set is not None:
                pending = self._worker().submit(self._miou, ratios, pool)
        record = self.result.records[self.stage.value]
        heads = int(record.probs.shape[1])
        self._busy = True
        try:
            self.head.max = heads - 1  # may clamp the head's value; no second redraw
        finally:
            self._busy = False
        if key not in self._cache:  # the GMACs are known already: show them while the picture is drawn
            self.gmacs.value = gmacs_html(self.result, self.reference)
        self._picture.update(self.result, self.stage.value, (self.y.value, self.x.value), self.head.value)
        self.view.value = self._picture.png()  # sent now: the picture does not wait for the mIoU pass
        self.view.width = str(style.display_width(self.figure))
        if key not in self._cache:
            self.result.miou = pending.result() if pending is not None else None
            self._cache[key] = self.result
        self._show_numbers()
        if self.auto_latency and _key(ratios, pool) not in self.latencies:
            self.measure_latency()

    def _show_numbers(self) -> None:
        lh, lw = self.latency_size
        note = (f"latency: not timed for this setting yet (the button times it and the training ratios "
                f"at {lh}×{lw})")
        eval_images = len(self.eval_set) if self.eval_set is not None else None
        self.gmacs.value = gmacs_html(self.result, self.reference)
        self.readout.value = readout_html(self.result, self.reference, self.latency, self.reference_latency,
                                          latency_size=self.latency_size, latency_note=note,
                                          eval_images=eval_images)
        self.table.value = stage_table_html(self.result, self.reference)

    def _repr_mimebundle_(self, **kwargs):
        # the widget, and a picture of its current state for a reader without a kernel
        return style.widget_bundle(self.widget, self.figure, **kwargs)
