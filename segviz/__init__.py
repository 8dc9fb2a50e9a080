"""segviz: see inside modern semantic-segmentation architectures.

    model = segviz.create_model("segformer-b0")
    with segviz.capture(model) as rec:
        model(x)
    rec.attention["encoder.stages.0.blocks.0.attn"].probs   # (B, heads, Nq, Nk)
    segviz.flops(model, (1, 3, 512, 512)).total             # GMACs (the papers' "GFLOPs")

The public names below are imported on first use, so ``import segviz.nn`` (or any lower
layer) loads only that layer: the arrows between layers point one way (nn -> models ->
inspect -> training -> viz), and tests/test_layering.py keeps them so.
"""
import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "data": "segviz.data",
    "device": "segviz.nn.layers",
    "inference_state": "segviz.nn.settings",
    "create_model": "segviz.registry",
    "list_models": "segviz.registry",
    "list_weights": "segviz.zoo",
    "zoo": "segviz.zoo",
    "attention_distance": "segviz.inspect.attention_distance",
    "capture": "segviz.inspect.capture",
    "comparison_table": "segviz.inspect.compare",
    "count_params": "segviz.inspect.costs",
    "flops": "segviz.inspect.costs",
    "fuse_for_inference": "segviz.inspect.fuse",
    "summary": "segviz.inspect.costs",
    "isr": "segviz.inspect.isr",
    "receptive_field": "segviz.inspect.receptive_field",
    "erf": "segviz.inspect.receptive_field",
    "set_isr": "segviz.inspect.isr",
    "miou": "segviz.training",
    "train": "segviz.training",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'segviz' has no attribute {name!r}")
    module = importlib.import_module(_PUBLIC[name])
    value = module if name in ("data", "zoo") else getattr(module, name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
