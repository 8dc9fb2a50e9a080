"""The ISR study of notebook 02: accuracy against cost over a ladder of ISR settings, over seeds.

* :data:`ISR_LADDER` — settings from the training ratios up to the EDAFormer paper's two presets
  and one step beyond, each reducing the keys of one more stage (or of the decoder).
* :func:`isr_curve` — one trained model: for every setting of the ladder that the model can take,
  its GMACs at the given input size and its held-out mIoU.
* :func:`spread` — mean and (sample) standard deviation over seeds, per setting.
* :func:`plot_isr_curves` — mIoU against GMACs, one line per model (mean ± std over seeds, each
  seed faint), the paper's presets marked.
* :func:`table_5a` — the paper's Table 5a at toy scale: trained at the usual ratios then ISR, against
  trained directly at the large ratios, mean ± std over seeds.

GMACs are counted on the ``meta`` device (no compute), once per architecture and setting.
"""
from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from torch import nn

from segviz.inspect.costs import flops
from segviz.inspect.isr import isr
from segviz.training import evaluate
from segviz.viz import style
from segviz.viz.isr_explorer import PAPER_PRESETS, stage_modules

# label -> segviz.isr keyword arguments. Ratios are per side and total (not on top of training);
# decoder ratios in segviz's order (decoder stages 2, 3, 4; the paper writes them reversed).
ISR_LADDER: dict[str, dict[str, tuple[int, ...]]] = {
    "training ratios": {"encoder": (8, 4, 2, 1), "decoder": (4, 2, 1)},
    "enc 16-4-2-1": {"encoder": (16, 4, 2, 1), "decoder": (4, 2, 1)},
    "enc 16-8-2-1": {"encoder": (16, 8, 2, 1), "decoder": (4, 2, 1)},
    "paper 1: enc 16-8-2-1, dec [2,4,8]": PAPER_PRESETS["paper: enc [16,8,2,1], dec [2,4,8]"],
    "paper 2: enc 16-8-4-2, dec [2,4,8]": PAPER_PRESETS["paper: enc [16,8,4,2], dec [2,4,8]"],
    "beyond: enc 32-16-4-2, dec [2,4,8]": {"encoder": (32, 16, 4, 2), "decoder": (8, 4, 2)},
}
PAPER_LABELS = ("paper 1: enc 16-8-2-1, dec [2,4,8]", "paper 2: enc 16-8-4-2, dec [2,4,8]")


def _groups(model: nn.Module) -> set[str]:
    return {group for group, _ in stage_modules(model)}


def model_ladder(model: nn.Module, ladder: Mapping[str, Mapping] = ISR_LADDER) -> dict[str, dict]:
    """The ladder restricted to the model's ISR groups. A model without decoder attention
    (SegFormer) takes only the encoder ratios; a setting that then repeats an earlier one is left out."""
    groups, seen, kept = _groups(model), [], {}
    for label, setting in ladder.items():
        own = {g: tuple(r) for g, r in setting.items() if g in groups}
        if own not in seen:
            seen.append(own)
            kept[label] = own
    return kept


def isr_curve(model: nn.Module, dataset, size: int, ladder: Mapping[str, Mapping] = ISR_LADDER,
              batch_size: int = 20, gmacs_cache: dict | None = None) -> list[dict]:
    """Rows ``{"setting", "gmacs", "miou"}`` for every setting of :func:`model_ladder`: the model's
    GMACs on a (1, 3, size, size) input and its dataset mIoU on ``dataset``, under that ISR setting.

    ``gmacs_cache`` (a dict) is filled with (architecture, config, setting) -> GMACs, so that seeds
    of one architecture are counted once."""
    rows = []
    config = repr(sorted(getattr(model, "segviz_config", {}).items()))
    for label, setting in model_ladder(model, ladder).items():
        with isr(model, **setting):
            key = (type(model).__name__, config, repr(sorted(setting.items())), size)
            if gmacs_cache is None or key not in gmacs_cache:
                gmacs = flops(model, (1, 3, size, size), device="meta").total
                if gmacs_cache is not None:
                    gmacs_cache[key] = gmacs
            else:
                gmacs = gmacs_cache[key]
            rows.append({"setting": label, "gmacs": gmacs, "miou": evaluate(model, dataset, batch_size=batch_size)})
    return rows


def spread(curves: Sequence[Sequence[Mapping]]) -> list[dict]:
    """Per setting over seeds (curves of the same model): ``setting``, ``gmacs``, ``mean``,
    ``std`` (sample standard deviation, 0 for one seed), ``n`` and the per-seed ``values``."""
    rows = []
    for column in zip(*curves):
        labels = {r["setting"] for r in column}
        if len(labels) != 1:
            raise ValueError(f"curves disagree on the settings: {sorted(labels)}")
        values = [r["miou"] for r in column]
        rows.append({"setting": column[0]["setting"], "gmacs": column[0]["gmacs"], "mean": statistics.fmean(values),
                     "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values), "values": values})
    return rows


@style.styled
def plot_isr_curves(curves: Mapping[str, Sequence[Sequence[Mapping]]], title: str | None = None) -> Figure:
    """mIoU against GMACs: for each model (name -> its per-seed curves) the mean over seeds with a
    ±1 std band and every seed as a faint line; the paper's two presets ringed."""
    fig = style.figure(9.5, 5.0)
    ax_abs, ax_rel = fig.subplots(1, 2)
    colors = dict(zip(curves, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    for name, per_seed in curves.items():
        rows = spread(per_seed)
        base = rows[0]["gmacs"]
        for ax, xs in ((ax_abs, [r["gmacs"] for r in rows]), (ax_rel, [100 * r["gmacs"] / base for r in rows])):
            means, stds = np.array([r["mean"] for r in rows]), np.array([r["std"] for r in rows])
            for seed_curve in per_seed:
                ax.plot(xs, [r["miou"] for r in seed_curve], color=colors[name], alpha=0.25, lw=1)
            ax.fill_between(xs, means - stds, means + stds, color=colors[name], alpha=0.15, lw=0)
            ax.plot(xs, means, "o-", color=colors[name], lw=2, ms=4, label=f"{name} (mean of {rows[0]['n']} seeds ± std)")
            for x, r in zip(xs, rows):
                if r["setting"] in PAPER_LABELS:
                    ax.plot(x, r["mean"], "o", ms=11, mfc="none", mec="black", mew=1.2)
            ax.annotate("training\nratios", (xs[0], means[0]), textcoords="offset points", xytext=(-4, 6),
                        ha="right", fontsize=style.SMALL, color=colors[name])
    ax_abs.set_xlabel("GMACs per 256×256 image")
    ax_rel.set_xlabel("GMACs, % of the training-ratio cost")
    for ax in (ax_abs, ax_rel):
        ax.set_ylabel("held-out mIoU")
        ax.grid(alpha=0.3)
    ax_abs.plot([], [], "o", ms=11, mfc="none", mec="black", label="the paper's ISR presets")
    handles, labels = ax_abs.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=style.SMALL, frameon=False)
    fig.suptitle(title or "ISR: accuracy against cost, same weights, keys reduced further at inference")
    return fig


def table_5a(isr_rows: Sequence[float], trained_rows: Sequence[float], reference_rows: Sequence[float]) -> list[dict]:
    """Rows for the Table-5a comparison, from per-seed mIoUs: the model at its training ratios,
    (a) the same weights with ISR, (b) trained directly at the large ratios."""
    def cell(values):
        values = list(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return {"mean": statistics.fmean(values), "std": sd, "seeds": len(values), "values": values}

    return [{"model": "trained at 8-4-2-1 / 4-2-1, run at the training ratios", **cell(reference_rows)},
            {"model": "(a) trained at 8-4-2-1 / 4-2-1, run with ISR 16-8-2-1 / [2,4,8]", **cell(isr_rows)},
            {"model": "(b) trained at 16-8-2-1 / [2,4,8], run as trained", **cell(trained_rows)}]
