"""Blocks shared by several architectures, and the low-level half of recording: the one
attention kernel, the record types, inference-time settings, spatial reduction, the model
contract's base class, input and config checks, layers. Nothing here imports from above
``segviz.nn``."""
from segviz.nn.attention import attention, attention_macs, explicit_attention
from segviz.nn.contract import SegmentationModel, upsample_logits
from segviz.nn.layers import ConvBNReLU, DropPath, FeaturePyramid, device, drop_path_rates, map_to_tokens, tokens_to_map
from segviz.nn.recording import (
    AttentionRecord, FeatureRecord, MaskedAttentionRecord, SamplingRecord, WindowAttentionRecord,
)
from segviz.nn.reduction import SpatialReductionAttention
from segviz.nn.settings import InferenceSetting, inference_state

__all__ = [
    "attention", "attention_macs", "explicit_attention", "SegmentationModel", "upsample_logits",
    "ConvBNReLU", "DropPath", "FeaturePyramid", "device", "drop_path_rates", "map_to_tokens", "tokens_to_map",
    "AttentionRecord", "FeatureRecord", "MaskedAttentionRecord", "SamplingRecord", "WindowAttentionRecord",
    "SpatialReductionAttention", "InferenceSetting", "inference_state",
]
