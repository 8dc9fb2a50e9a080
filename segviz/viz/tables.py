"""Small tables without pandas: rows are lists of dicts (column -> value), rendered as
aligned text (deterministic, for printing), HTML (for notebooks) or a matplotlib table.
"""
from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from segviz.viz import style


def _columns(rows: Sequence[Mapping], columns: Sequence[str] | None) -> list[str]:
    if not rows:
        raise ValueError("a table needs at least one row")
    if columns is None:
        columns = list(rows[0])
    missing = [c for c in columns if any(c not in r for r in rows)]
    if missing:
        raise ValueError(f"columns {missing} are missing from some rows; rows have {list(rows[0])}")
    return list(columns)


def _cell(value, float_format: str) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return float_format.format(value)
    return str(value)


def format_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None, *,
                 float_format: str = "{:.2f}") -> str:
    """Aligned plain text: text left-aligned, numbers right-aligned, ints with thousands separators."""
    cols = _columns(rows, columns)
    cells = [[_cell(r[c], float_format) for c in cols] for r in rows]
    numeric = [all(isinstance(r[c], (int, float)) and not isinstance(r[c], bool) for r in rows) for c in cols]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]

    def line(values):
        return "  ".join(v.rjust(wd) if num else v.ljust(wd) for v, wd, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(cols), line(["-" * wd for wd in widths])] + [line(row) for row in cells])


def table_html(rows: Sequence[Mapping], columns: Sequence[str] | None = None, *,
               float_format: str = "{:.2f}", caption: str | None = None) -> str:
    """An HTML ``<table>`` (escaped), for ``IPython.display.HTML``."""
    cols = _columns(rows, columns)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align:right'>{html.escape(_cell(r[c], float_format))}</td>"
                         for c in cols) + "</tr>"
        for r in rows
    )
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def draw_table(ax, rows: Sequence[Mapping], columns: Sequence[str] | None = None, *,
               float_format: str = "{:.2f}"):
    """Draw the rows as a matplotlib table filling ``ax`` (its frame hidden); returns the table."""
    cols = _columns(rows, columns)
    ax.set_axis_off()
    table = ax.table(cellText=[[_cell(r[c], float_format) for c in cols] for r in rows], colLabels=cols,
                     loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(style.SMALL)
    table.auto_set_column_width(list(range(len(cols))))
    table.scale(1.0, 1.35)
    for (row, _), cell in table.get_celld().items():
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e8e8e8")
    return table


@style.styled
def table_figure(rows: Sequence[Mapping], columns: Sequence[str] | None = None, *, title: str | None = None,
                 float_format: str = "{:.2f}") -> Figure:
    """The rows as a standalone figure."""
    cols = _columns(rows, columns)
    fig = style.figure(max(1.2 * len(cols), 5), 0.3 * (len(rows) + 1) + 0.6, clamp="width")
    draw_table(fig.subplots(), rows, cols, float_format=float_format)
    if title:
        fig.suptitle(title)
    return fig


def shape_rows(features: Mapping[str, object], input_hw: tuple[int, int]) -> list[dict]:
    """One row per stage map (C, h, w) or (B, C, h, w): its grid, channels, token count and stride."""
    rows = []
    for label, f in features.items():
        shape = tuple(f.shape)
        if len(shape) not in (3, 4):
            raise ValueError(f"{label}: a feature map is (C, h, w) or (B, C, h, w), got {shape}")
        c, h, w = shape[-3:]
        rows.append({"stage": str(label), "grid h×w": f"{h}×{w}", "channels C": int(c), "tokens N": int(h * w),
                     "stride": f"1/{round(input_hw[1] / w)}"})
    return rows


def attention_cost_rows(input_hw: tuple[int, int] = (512, 512), strides: Sequence[int] = (4, 8, 16, 32),
                        sr_ratios: Sequence[int] = (8, 4, 2, 1), dims: Sequence[int] | None = None) -> list[dict]:
    """Self-attention cost per stage, full (N²) versus spatially reduced (N²/R, R = r²).

    N = (H/stride)·(W/stride) query tokens; the keys are the map shrunk by r = ``sr_ratios[i]``
    per side, so N/R keys with R = r² (rounded down per side, as the reduction conv does). With
    ``dims`` (C per stage) two more columns give the GMACs of one attention layer,
    q kᵀ plus probs·v: 2·N·Nk·C.
    """
    if len(strides) != len(sr_ratios) or (dims is not None and len(dims) != len(strides)):
        raise ValueError(f"strides, sr_ratios (and dims) need one entry per stage, got "
                         f"{len(strides)}, {len(sr_ratios)}" + ("" if dims is None else f", {len(dims)}"))
    if min(strides) < 1 or min(sr_ratios) < 1:
        raise ValueError("strides and sr_ratios must be positive integers")
    rows = []
    for i, (stride, sr) in enumerate(zip(strides, sr_ratios)):
        h, w = -(-input_hw[0] // stride), -(-input_hw[1] // stride)
        n, nk = h * w, (h // sr) * (w // sr)
        row = {"stage": i + 1, "tokens N": n, "r": sr, "R = r²": sr * sr, "keys N/R": nk,
               "pairs N²": n * n, "pairs N²/R": n * nk}
        if dims is not None:
            row["attn GMACs (N²)"] = round(2 * n * n * dims[i] / 1e9, 3)
            row["attn GMACs (N²/R)"] = round(2 * n * nk * dims[i] / 1e9, 3)
        rows.append(row)
    return rows
