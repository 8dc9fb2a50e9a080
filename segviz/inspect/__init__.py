"""Looking inside a model: recording (capture), costs (flops, summary), inference spatial reduction."""
from segviz.inspect.capture import Recorder, capture
from segviz.inspect.costs import FlopReport, Summary, count_params, flops, summary
from segviz.nn.recording import AttentionRecord, FeatureRecord, register_kind

__all__ = [
    "Recorder", "capture", "FlopReport", "Summary", "count_params", "flops", "summary",
    "AttentionRecord", "FeatureRecord", "register_kind",
]
