"""The model contract, checked over every registered model: a new architecture gets all of
this by registering its variants.

* every variant builds on the meta device, ``predict`` gives (B, K, H, W) at the input size,
  and its persistent buffers are only normalisation statistics (config-derived tables are
  ``persistent=False``);
* every ``-nano`` variant runs at an odd size, a batch of 2 equals two batches of 1,
  ``capture`` changes nothing and records probability rows that sum to 1, ``flops`` runs,
  and a safetensors file of its state dict loads back through ``create_model(weights=...)``;
* bad config overrides and bad inputs are ``ValueError``s that say what is wrong.

A video model (``input_kind = "video"``, e.g. video Mask2Former) takes clips (B, T, C, H, W) and
predicts per frame, (B, T, K, H, W); the same checks run on clips of ``FRAMES`` frames.
"""
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import segviz
from segviz.registry import get_spec
from tests.toys import meta_model, threads

MODELS = segviz.list_models()
NANO = [name for name in MODELS if name.endswith("-nano")]
ODD = (72, 88)  # not a multiple of 32
CONVOLUTIONAL = ("deeplabv3-", "deeplabv3plus-")  # families without attention (capture records features)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small tensors: one thread is fastest, and immune to other processes on a shared CPU."""
    with threads(1):
        yield



def test_the_registry_has_models_and_nano_variants():
    assert len(MODELS) >= 2 and NANO
    families = [n[: -len("nano")] for n in NANO]  # "swin-", "upernet-swin-", ...
    assert all(any(name.startswith(f) for f in families) for name in MODELS)


FRAMES = 2  # the clip length of the checks on video models


def is_video(model):
    """A video model takes clips (B, T, C, H, W) and predicts (B, T, K, H, W) (``input_kind``)."""
    return getattr(model, "input_kind", "image") == "video"


def batch_of(model, b, c, h, w, **kw):
    """A zero input of the model's kind: (b, c, h, w) images, or clips of FRAMES frames."""
    return torch.zeros((b, FRAMES, c, h, w) if is_video(model) else (b, c, h, w), **kw)


def dense_shape(model, b, k, h, w):
    return (b, FRAMES, k, h, w) if is_video(model) else (b, k, h, w)


def is_classifier(model):
    """An image classifier (forward -> (B, num_classes)) has no ``predict``: the dense-output
    checks below apply to segmentation models only."""
    return not callable(getattr(model, "predict", None))


# ---------------------------------------------------------------------------------------
# Every registered model
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_builds_on_meta_and_predicts_at_input_size(name):
    model = meta_model(name).eval()
    assert all(p.device.type == "meta" for p in model.parameters())
    k, c = model.num_classes, model.in_chans
    assert k == get_spec(name).config["num_classes"]
    x = batch_of(model, 2, c, 96, 64, device="meta")
    if is_classifier(model):
        assert tuple(model(x).shape) == (2, k)
    else:
        assert tuple(model.predict(x).shape) == dense_shape(model, 2, k, 96, 64)


_NORM_STATS = (nn.modules.batchnorm._NormBase,)


@pytest.mark.parametrize("name", MODELS)
def test_persistent_buffers_are_only_normalisation_statistics(name):
    """Buffers derived from the config (index tables, masks) must be registered with
    ``persistent=False``, so that checkpoints hold only what was learned."""
    model = meta_model(name)
    modules = dict(model.named_modules())
    saved = set(model.state_dict())
    for buffer_name, _ in model.named_buffers():
        if buffer_name in saved:
            owner = modules[buffer_name.rpartition(".")[0]]
            assert isinstance(owner, _NORM_STATS), f"{buffer_name} is a persistent buffer of {type(owner).__name__}"


def _bad_overrides(name):
    """(key, bad value) for every numeric config field of ``name``, plus the unknown key."""
    cases = [("no_such_key", 1)]
    for key, value in get_spec(name).config.items():
        if isinstance(value, bool) or key == "num_classes":
            continue
        if isinstance(value, (tuple, list)):
            cases += [(key, (0,) + tuple(value[1:])), (key, (-1,) + tuple(value[1:])), (key, tuple(value[:-1]))]
        elif isinstance(value, int):
            cases += [(key, 0), (key, -1)]
        elif isinstance(value, float):
            cases += [(key, -1.0), (key, math.nan)]
    params = segviz.registry._builder_params(get_spec(name).builder)
    if "layer_norm_eps" in params:
        cases += [("layer_norm_eps", -1e-6), ("layer_norm_eps", 0.0)]
    return cases


@pytest.mark.parametrize("name, key, value", [(n, *case) for n in MODELS for case in _bad_overrides(n)])
def test_bad_config_overrides_name_the_field(name, key, value):
    with pytest.raises(ValueError, match=key):
        meta_model(name, **{key: value})


@pytest.mark.parametrize("name", MODELS)
def test_bad_num_classes(name):
    with pytest.raises(ValueError, match="num_classes"):
        meta_model(name, num_classes=0)


def _bad_inputs(c):
    return [
        (torch.zeros(c, 64, 64), r"got a tensor of shape \(3, 64, 64\): an unbatched image\? add the batch dimension"),
        (np.zeros((64, 64, c), dtype=np.float32), r"got a numpy\.ndarray of shape \(64, 64, 3\).*permute\(2, 0, 1\)"),
        (torch.zeros(0, c, 64, 64), r"the batch is empty \(B = 0\)"),
        (torch.zeros(1, c, 64, 64, dtype=torch.uint8), r"dtype torch\.uint8: convert with x\.float\(\)"),
        (torch.zeros(1, c, 64, 64, dtype=torch.bool), r"dtype torch\.bool"),
        (torch.zeros(1, c + 1, 64, 64), rf"with {c + 1} channels"),
        (torch.zeros(1, 64, 64, c), r"channels last\? use x\.permute\(0, 3, 1, 2\)"),
        (torch.zeros(1, 1, c, 64, 64), r"5 dimensions instead of 4"),
        ([[0.0]], r"got a list"),
    ]


def _bad_clips(c):
    """The bad inputs of a video model: the image mistakes one dimension up."""
    return [
        (torch.zeros(1, c, 64, 64), r"4 dimensions instead of 5\): a batch of images\? a clip of one frame is x\[:, None\]"),
        (np.zeros((1, 2, c, 64, 64), dtype=np.float32), r"got a numpy\.ndarray of shape \(1, 2, 3, 64, 64\)"),
        (torch.zeros(0, 2, c, 64, 64), r"the batch is empty \(B = 0\)"),
        (torch.zeros(1, 0, c, 64, 64), r"the clips are empty \(T = 0\)"),
        (torch.zeros(1, 2, c, 64, 64, dtype=torch.uint8), r"dtype torch\.uint8: convert with x\.float\(\)"),
        (torch.zeros(1, 2, c + 1, 64, 64), rf"with {c + 1} channels"),
        (torch.zeros(1, 2, 64, 64, c), r"channels last\? use x\.permute\(0, 1, 4, 2, 3\)"),
        (torch.zeros(1, 1, 1, c, 64, 64), r"6 dimensions instead of 5"),
        ([[0.0]], r"got a list"),
    ]


@pytest.mark.parametrize("name", MODELS)
def test_bad_inputs_say_what_was_given_and_what_is_expected(name):
    model = meta_model(name)
    expected = rf"{type(model).__name__} expects a float tensor \(B, {model.in_chans}, H, W\); "
    cases = _bad_inputs(model.in_chans)
    if is_video(model):
        expected = rf"{type(model).__name__} expects a float tensor \(B, T, {model.in_chans}, H, W\), a batch of clips"
        cases = _bad_clips(model.in_chans)
    for x, match in cases:
        if isinstance(x, torch.Tensor):
            x = x.to("meta")  # the checks read no data: the meta device is enough
        for method in (model,) if is_classifier(model) else (model, model.predict):
            with pytest.raises(ValueError, match=expected + ".*" + match):
                method(x)


# ---------------------------------------------------------------------------------------
# Every -nano model, computed
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=NANO)
def nano(request):
    torch.manual_seed(0)
    model = segviz.create_model(request.param)
    with torch.no_grad():  # non-trivial normalisation statistics, so that loading must restore them
        for module in model.modules():
            if isinstance(module, _NORM_STATS) and module.running_mean is not None:
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(dense_shape(model, 2, model.in_chans, *ODD))
    with torch.no_grad():
        out = model(x)
    return request.param, model, x, out


@torch.no_grad()
def test_odd_size_and_batch_independence(nano):
    _, model, x, out = nano
    assert torch.isfinite(out).all()
    singles = torch.cat([model(x[:1]), model(x[1:])])
    torch.testing.assert_close(out, singles, atol=1e-5, rtol=1e-5)
    if is_classifier(model):
        assert out.shape == (2, model.num_classes)
    else:
        assert model.predict(x).shape == dense_shape(model, 2, model.num_classes, *ODD)


@torch.no_grad()
def test_capture_changes_nothing_and_rows_sum_to_one(nano):
    name, model, x, out = nano
    with segviz.capture(model) as rec:
        recorded = model(x)
    torch.testing.assert_close(recorded, out, atol=1e-5, rtol=1e-5)
    if name.startswith(CONVOLUTIONAL):  # nothing attends: the feature_modules' outputs are what capture gives
        assert not rec.attention and rec.features, "no features were recorded"
        assert all(torch.isfinite(f).all() for f in rec.features.values())
        return
    assert rec.attention, "no attention was recorded"
    for name, record in rec.attention.items():
        probs = record.probs
        # a video model's per-frame blocks (backbone, pixel decoder) see the B·T frames as their batch
        batches = (2, 2 * FRAMES) if is_video(model) else (2,)
        assert probs.dim() in (4, 5) and probs.shape[0] in batches, name  # window records: (B, nW, heads, M², M²)
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-5, rtol=1e-5)


def test_flops_runs(nano):
    _, model, x, _ = nano
    if is_video(model):
        # segviz.flops takes an image shape (B, C, H, W); a clip model is counted here with torch's own
        # counter on one clip (an extension of flops to clips is left to segviz.inspect)
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x[:1])
        assert counter.get_total_flops() > 0
        return
    report = segviz.flops(model, (1, model.in_chans, *ODD))
    assert report.total > 0 and report.per_module


@torch.no_grad()
def test_safetensors_round_trip_through_create_model(nano, tmp_path):
    name, model, x, out = nano
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    torch.manual_seed(1)  # a different random init, which the weights must overwrite
    loaded = segviz.create_model(name, weights=path).eval()
    assert type(loaded) is type(model)
    assert torch.equal(loaded(x), out)
