"""segviz: see inside modern semantic-segmentation architectures.

    model = segviz.create_model("segformer-b0")
    with segviz.capture(model) as rec:
        model(x)
    rec.attention["encoder.stages.0.blocks.0.attn"].probs   # (B, heads, Nq, Nk)
    segviz.flops(model, (1, 3, 512, 512)).total             # GMACs (the papers' "GFLOPs")
"""
import torch

from segviz import data
from segviz.inspect import capture, count_params, flops, summary
from segviz.inspect.isr import isr, set_isr
from segviz.registry import create_model, list_models
from segviz.training import miou, train

__version__ = "0.1.0"


def device() -> torch.device:
    """``cuda`` when a GPU is available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


__all__ = ["data", "capture", "count_params", "create_model", "device", "flops", "isr", "list_models", "miou", "set_isr", "summary", "train"]
