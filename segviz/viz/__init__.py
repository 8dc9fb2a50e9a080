"""Pure plotting functions: tensors and arrays in, ``matplotlib`` figures out; thin ipywidgets explorers.

Nothing here changes a model; widgets only call these functions again with new values.
"""
from segviz.viz.compare import (
    WithFallback, attention_distance_figure, cost_quality_figure, cost_quality_static, erf_grid_figure, heatmap_figure,
    heatmap_static, query_row_figure,
)
from segviz.viz.data import plot_shapes  # noqa: F401
from segviz.viz.deformable_ways import (
    DCNTaps, QueryLooksExplorer, dcn_taps, deformed_grid_figure, where_a_query_looks,
)
from segviz.viz.deeplab import (
    DeepLabExplorer, aspp_windows_figure, atrous_taps_figure, erf_figure, gridding_counts, gridding_figure,
    rf_growth_figure, spp_bins, spp_figure,
)
from segviz.viz.explorers import AttentionExplorer
from segviz.viz.mask2former import (
    init_sampling_records, masked_attention_layers_figure, matching_figure, pixel_query_index,
    query_predictions_figure, sampling_figure, training_figure, uncertain_points_figure,
)
from segviz.viz.mask2former_explorer import SamplingExplorer
from segviz.viz.overlays import (
    attention_grid, attention_overlay, class_colors, patch_figure, prediction_overlay, prediction_panels,
)
from segviz.viz.swin import (
    attention_reach, cyclic_shift_figure, dense_attention, hierarchy_figure, masked_attention_figure,
    patch_merging_figure, reach_figure, region_labels, relative_bias_figure, window_cost_figure, window_cost_rows,
    window_masks_figure,
)
from segviz.viz.swin_explorer import SwinExplorer
from segviz.viz.tables import attention_cost_rows, format_table, shape_rows, table_figure, table_html
from segviz.viz.tokens import decoder_steps, deviation_from_centre, padding_leak, pca_rgb, stage_pca, token_pyramid
from segviz.viz.video import tube_attention_figure, tube_figure

__all__ = [
    "AttentionExplorer", "DeepLabExplorer", "SamplingExplorer", "SwinExplorer", "aspp_windows_figure", "atrous_taps_figure", "erf_figure",
    "gridding_counts", "gridding_figure", "rf_growth_figure", "spp_bins", "spp_figure", "attention_cost_rows", "attention_grid", "attention_overlay",
    "attention_reach", "class_colors", "cyclic_shift_figure", "decoder_steps", "dense_attention",
    "deviation_from_centre", "format_table", "hierarchy_figure", "masked_attention_figure", "padding_leak",
    "patch_figure", "patch_merging_figure", "pca_rgb", "plot_shapes", "prediction_overlay", "prediction_panels",
    "reach_figure", "region_labels", "relative_bias_figure", "shape_rows", "stage_pca", "table_figure",
    "table_html", "token_pyramid", "window_cost_figure", "window_cost_rows", "window_masks_figure",
    "init_sampling_records", "masked_attention_layers_figure", "matching_figure", "pixel_query_index",
    "query_predictions_figure", "sampling_figure", "training_figure", "uncertain_points_figure",
    "WithFallback", "attention_distance_figure", "cost_quality_figure", "cost_quality_static", "erf_grid_figure",
    "heatmap_figure", "heatmap_static", "query_row_figure",
    "DCNTaps", "QueryLooksExplorer", "dcn_taps", "deformed_grid_figure", "where_a_query_looks",
    "tube_attention_figure", "tube_figure",
]
