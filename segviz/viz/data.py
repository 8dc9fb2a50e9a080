"""Pictures of the data: Shapes images next to their per-pixel label maps."""
from __future__ import annotations

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from segviz.viz import style
from segviz.viz.overlays import class_colors


def label_colormap(num_classes: int) -> ListedColormap:
    """Class index -> colour: the colours of :func:`class_colors` (as in prediction overlays),
    with the background (class 0) black."""
    colors = class_colors(num_classes)
    colors[0] = 0.0
    return ListedColormap(colors, name=f"labels{num_classes}")


@style.styled
def plot_shapes(dataset, indices=(0, 1, 2, 3)) -> Figure:
    """Images of a :class:`segviz.data.Shapes` dataset (top row) over their label maps
    (bottom row), with a legend naming every class colour."""
    indices = list(indices)
    if not indices:
        raise ValueError("plot_shapes needs at least one index")
    classes = dataset.classes
    cmap = label_colormap(len(classes))
    fig = style.figure(2.2 * len(indices) + 1.6, 4.6, layout=None)
    axes = fig.subplots(2, len(indices), squeeze=False)
    for col, i in enumerate(indices):
        labels = dataset.label_array(i)
        axes[0, col].imshow(dataset.array(i))
        axes[0, col].set_title(f"image {i}", fontsize=style.NORMAL)
        axes[1, col].imshow(labels, cmap=cmap, vmin=-0.5, vmax=len(classes) - 0.5, interpolation="nearest")
        present = ", ".join(classes[k] for k in np.unique(labels) if k > 0)
        axes[1, col].set_title(present or "(background only)", fontsize=style.SMALL)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("image")
    axes[1, 0].set_ylabel("label map")
    handles = [Patch(facecolor=cmap(k), edgecolor="gray", label=f"{k} {name}") for k, name in enumerate(classes)]
    fig.legend(handles=handles, loc="center right", title="class", frameon=False)
    fig.suptitle(f"{dataset!r}: images (shape colours are random) and per-pixel class labels")
    fig.tight_layout(rect=(0, 0, 1 - 1.5 / fig.get_figwidth(), 1))
    return fig
