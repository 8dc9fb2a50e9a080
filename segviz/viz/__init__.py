"""Pure plotting functions: tensors and arrays in, ``matplotlib`` figures out; thin ipywidgets explorers.

Nothing here changes a model; widgets only call these functions again with new values.
"""
from segviz.viz.data import plot_shapes  # noqa: F401
from segviz.viz.explorers import AttentionExplorer
from segviz.viz.overlays import (
    attention_grid, attention_overlay, class_colors, patch_figure, prediction_overlay, prediction_panels,
)
from segviz.viz.tables import attention_cost_rows, format_table, shape_rows, table_figure, table_html
from segviz.viz.tokens import decoder_steps, deviation_from_centre, padding_leak, pca_rgb, stage_pca, token_pyramid

__all__ = [
    "AttentionExplorer", "attention_cost_rows", "attention_grid", "attention_overlay", "class_colors",
    "decoder_steps", "deviation_from_centre", "format_table", "padding_leak", "patch_figure", "pca_rgb",
    "plot_shapes", "prediction_overlay", "prediction_panels", "shape_rows", "stage_pca", "table_figure",
    "table_html", "token_pyramid",
]
