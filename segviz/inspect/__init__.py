"""Looking inside a model: recording (capture), costs (flops, summary), inference spatial reduction,
receptive fields (theoretical and effective)."""
from segviz.inspect.attention_distance import AttentionDistance, attention_distance, mean_pairwise_distance
from segviz.inspect.capture import Recorder, capture
from segviz.inspect.compare import ComparisonRow, ComparisonTable, comparison_table
from segviz.inspect.costs import FlopReport, Summary, count_params, flops, summary
from segviz.inspect.receptive_field import ERF, LayerRF, ReceptiveField, erf, receptive_field
from segviz.nn.recording import AttentionRecord, FeatureRecord, register_kind

__all__ = [
    "Recorder", "capture", "FlopReport", "Summary", "count_params", "flops", "summary",
    "AttentionRecord", "FeatureRecord", "register_kind",
    "ERF", "LayerRF", "ReceptiveField", "erf", "receptive_field",
    "AttentionDistance", "attention_distance", "mean_pairwise_distance",
    "ComparisonRow", "ComparisonTable", "comparison_table",
]
