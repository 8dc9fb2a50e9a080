"""Blocks shared by several architectures: the one attention kernel, spatial reduction, layers."""
from segviz.nn.attention import attention, attention_macs, explicit_attention
from segviz.nn.layers import ConvBNReLU, DropPath, FeaturePyramid, drop_path_rates, map_to_tokens, tokens_to_map
from segviz.nn.reduction import SpatialReductionAttention

__all__ = [
    "attention", "attention_macs", "explicit_attention", "ConvBNReLU", "DropPath", "FeaturePyramid",
    "drop_path_rates", "map_to_tokens", "tokens_to_map", "SpatialReductionAttention",
]
