"""Figure conventions in one place: how wide, how large the text, how sharp.

Every figure of ``segviz.viz`` is made by :func:`figure` (at most :data:`MAX_WIDTH` inches
wide at :data:`DPI`, so at most 1000 px as JupyterLab shows it) with text of at least
:data:`MIN_FONT` points (12.5 px at 100 dpi). A notebook shows a returned figure at the
figure's own dpi, cropped to its drawn area (IPython's ``bbox_inches="tight"``), so what is
checked here is what the reader sees.

Explorers (ipywidgets) show a PNG in an ``Image`` widget. :func:`png_bytes` renders it at
:data:`EXPLORER_SCALE` times the dpi and :func:`show_png` sets the widget's width to the 1x
size, so the picture keeps its layout size and stays sharp on a high-density screen.

    from segviz.viz import style

    @style.styled                          # default text sizes >= MIN_FONT while drawing
    def my_figure(...):
        fig = style.figure(12, 4)          # clamped to 10 x 3.33 (aspect kept)
        ax = fig.subplots()
        ax.set_title("...", fontsize=style.SMALL)
        return fig

    style.check(my_figure(...))            # [] when width and fonts follow the conventions
"""
from __future__ import annotations

import base64
import functools
import io

import matplotlib
from matplotlib.figure import Figure
from matplotlib.text import Text

MAX_WIDTH = 10.0        # inches, as displayed
DPI = 100               # dots per inch of every figure (what the notebook shows at 1x)
MIN_FONT = 9.0          # points, as displayed
SMALL = 9.0             # annotations, legends, tick labels, table cells
NORMAL = 10.0           # axis labels, panel titles
LARGE = 11.0            # figure titles
EXPLORER_SCALE = 2      # explorers render their PNG at 2x and show it at 1x
PAD = 0.1               # inches IPython's bbox_inches="tight" adds on each side (savefig.pad_inches)
FIGURE_WIDTH = MAX_WIDTH - 2 * PAD   # widest figure that displays at most MAX_WIDTH

RC = {
    "font.size": NORMAL,
    "axes.titlesize": NORMAL,
    "axes.labelsize": NORMAL,
    "xtick.labelsize": SMALL,
    "ytick.labelsize": SMALL,
    "legend.fontsize": SMALL,
    "legend.title_fontsize": SMALL,
    "figure.titlesize": LARGE,
    "figure.dpi": DPI,
}


def font(size: float) -> float:
    """A font size no smaller than :data:`MIN_FONT`."""
    return max(float(size), MIN_FONT)


def rc():
    """``matplotlib.rc_context`` with the conventions' font sizes (all >= MIN_FONT)."""
    return matplotlib.rc_context(RC)


def styled(function):
    """Decorator: run a figure function under :func:`rc`, so that whatever the user's
    rcParams say, its default text sizes follow the conventions."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with rc():
            return function(*args, **kwargs)

    return wrapper


def fit(width: float, height: float) -> tuple[float, float]:
    """(width, height) in inches scaled down, aspect kept, so that width <= FIGURE_WIDTH."""
    if width <= 0 or height <= 0:
        raise ValueError(f"a figure needs a positive size, got {width} x {height}")
    scale = min(1.0, FIGURE_WIDTH / width)
    return width * scale, height * scale


def figure(width: float, height: float, *, layout: str | None = "constrained", clamp: str = "scale") -> Figure:
    """A ``Figure`` at :data:`DPI`, at most :data:`FIGURE_WIDTH` inches wide (so that with the
    margin a notebook adds it displays at most :data:`MAX_WIDTH` wide).

    Text sizes are read from rcParams when each artist is made: decorate the figure
    function with :func:`styled` (or draw inside ``with rc():``) to get the conventions' sizes.

    Args:
        width, height: wanted size in inches.
        layout: matplotlib layout engine ("constrained", "tight" or None for a fixed layout).
        clamp: "scale" keeps the aspect when the width is clamped; "width" keeps the height.
    """
    if clamp == "scale":
        width, height = fit(width, height)
    elif clamp == "width":
        width = min(width, FIGURE_WIDTH)
    else:
        raise ValueError(f"clamp must be 'scale' or 'width', got {clamp!r}")
    return Figure(figsize=(width, height), dpi=DPI, layout=layout)


def displayed_size(fig: Figure) -> tuple[float, float]:
    """(width, height) in inches at :data:`DPI` as a notebook shows ``fig``: rendered the way
    IPython does (``bbox_inches="tight"``, cropped to what is drawn, at the figure's dpi)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, bbox_inches="tight")
    header = buffer.getvalue()[16:24]
    return int.from_bytes(header[:4], "big") / DPI, int.from_bytes(header[4:], "big") / DPI


def small_texts(fig: Figure, minimum: float = MIN_FONT) -> list[tuple[str, float]]:
    """(text, size) of every visible, non-empty Text artist smaller than ``minimum`` points."""
    found = []
    for text in fig.findobj(Text):
        if text.get_visible() and text.get_text().strip() and text.get_fontsize() < minimum - 1e-9:
            found.append((text.get_text(), text.get_fontsize()))
    return found


def check(fig: Figure) -> list[str]:
    """What in ``fig`` breaks the conventions ([] when nothing does)."""
    problems = []
    width, _ = fig.get_size_inches() * fig.dpi / DPI
    if width > MAX_WIDTH + 1e-6:
        problems.append(f"figure width {width:.2f} in > {MAX_WIDTH} in")
    shown, _ = displayed_size(fig)
    if shown > MAX_WIDTH + 0.05:
        problems.append(f"displayed width {shown:.2f} in > {MAX_WIDTH} in (drawn outside the figure)")
    problems += [f"text {t!r} at {s:g} pt < {MIN_FONT:g} pt" for t, s in small_texts(fig)]
    return problems


def png_bytes(fig: Figure, scale: float = EXPLORER_SCALE) -> bytes:
    """The figure as PNG at ``scale`` x its dpi (the whole figure, not cropped: an explorer's
    picture keeps one size while its controls move)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi * scale)
    return buffer.getvalue()


def display_width(fig: Figure) -> int:
    """The figure's width in CSS pixels at 1x (its width in inches times its dpi)."""
    return int(round(fig.get_figwidth() * fig.dpi))


def show_png(image_widget, fig: Figure, scale: float = EXPLORER_SCALE) -> None:
    """Put ``fig`` into an ipywidgets ``Image``: rendered at ``scale`` x, shown at 1x width
    (sharp on a high-density screen, same size on any screen)."""
    image_widget.value = png_bytes(fig, scale)
    image_widget.width = str(display_width(fig))


def static_bundle(fig: Figure, scale: float = 1) -> tuple[dict, dict]:
    """(data, metadata) of an ``image/png`` display of ``fig`` at 1x width: the picture a saved
    notebook or a repository browser shows in place of a widget it cannot run. Rendered at 1x
    by default, like the notebooks' other figures: the saved notebook already holds the
    widget's own 2x picture in its widget state."""
    data = {"image/png": base64.b64encode(png_bytes(fig, scale)).decode("ascii")}
    width, height = fig.get_size_inches() * fig.dpi
    return data, {"image/png": {"width": int(round(width)), "height": int(round(height))}}


def widget_bundle(widget, fig: Figure | None, **kwargs):
    """A widget's mimebundle with a static ``image/png`` of ``fig`` alongside it.

    JupyterLab, with a kernel or the saved widget state, renders the widget view (it ranks
    above ``image/png``); a viewer that cannot run widgets shows the picture.
    """
    bundle = widget._repr_mimebundle_(**kwargs)
    data, metadata = (bundle if isinstance(bundle, tuple) else (bundle, {}))
    data, metadata = dict(data or {}), dict(metadata or {})
    if fig is not None:
        png, png_meta = static_bundle(fig)
        data.update(png)
        metadata.update(png_meta)
    return data, metadata

