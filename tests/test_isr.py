"""Inference spatial reduction: restore, bit-identity, validation, pooling, and the FLOP reduction."""
import numpy as np
import pytest
import torch

import segviz
from segviz.inspect.isr import current_ratios, feature_sizes, isr, set_isr, training_ratios
from segviz.nn import attention_macs

X = torch.randn(1, 3, 128, 128)
TRAIN = {"encoder": (8, 4, 2, 1), "decoder": (4, 2, 1)}


@pytest.fixture(scope="module")
def eda():
    torch.manual_seed(0)
    return segviz.create_model("edaformer-nano").eval()


@pytest.fixture(scope="module")
def seg():
    torch.manual_seed(0)
    return segviz.create_model("segformer-nano").eval()


def _attn(model, group, stage):
    return [m for m in model.modules() if getattr(m, "isr_role", None) == (group, stage)]


def test_training_and_current_ratios(eda, seg):
    assert training_ratios(eda) == current_ratios(eda) == TRAIN
    assert training_ratios(seg) == current_ratios(seg) == {"encoder": (8, 4, 2, 1)}
    assert feature_sizes(eda, (128, 96)) == {
        "encoder": {1: (32, 24), 2: (16, 12), 3: (8, 6), 4: (4, 3)},
        "decoder": {2: (16, 12), 3: (8, 6), 4: (4, 3)},
    }
    assert feature_sizes(seg, (64, 64)) == {"encoder": {1: (16, 16), 2: (8, 8), 3: (4, 4), 4: (2, 2)}}
    with pytest.raises(ValueError, match=r"encoder stage 4 \(feature map 2x2\): reduction ratio 4 is out of range"):
        set_isr(seg, encoder=(8, 4, 4, 4), input_size=(64, 64))


@torch.no_grad()
def test_training_ratios_are_bit_identical(eda, seg):
    for model, kwargs in ((eda, TRAIN), (seg, {"encoder": (8, 4, 2, 1)})):
        plain = model(X)
        with isr(model, **kwargs):
            assert torch.equal(model(X), plain)


@torch.no_grad()
def test_isr_changes_the_output_then_restores_it(eda):
    plain = eda(X)
    weights = {k: v.clone() for k, v in eda.state_dict().items()}
    with isr(eda, encoder=(16, 8, 4, 2), decoder=(8, 4, 2)) as in_force:
        assert in_force == current_ratios(eda) == {"encoder": (16, 8, 4, 2), "decoder": (8, 4, 2)}
        assert [m.ratio for m in _attn(eda, "decoder", 4)] == [2, 2, 2]
        reduced = eda(X)
    assert not torch.allclose(reduced, plain)
    assert current_ratios(eda) == TRAIN
    assert torch.equal(eda(X), plain)
    assert all(torch.equal(v, weights[k]) for k, v in eda.state_dict().items())  # same weights throughout


def test_none_leaves_a_group_at_training_ratios(eda):
    with isr(eda, encoder=(16, 8, 2, 1)):
        assert current_ratios(eda) == {"encoder": (16, 8, 2, 1), "decoder": (4, 2, 1)}
    with isr(eda, decoder=(8, 4, 2)):
        assert current_ratios(eda) == {"encoder": (8, 4, 2, 1), "decoder": (8, 4, 2)}


def test_restored_after_an_exception_and_nesting(eda):
    with pytest.raises(RuntimeError, match="boom"):
        with isr(eda, encoder=(16, 8, 4, 2), pool="max"):
            with isr(eda, decoder=(8, 8, 8)):
                assert current_ratios(eda)["decoder"] == (8, 8, 8)
            assert current_ratios(eda) == {"encoder": (16, 8, 4, 2), "decoder": (4, 2, 1)}
            raise RuntimeError("boom")
    assert current_ratios(eda) == TRAIN
    assert all(m.isr_pool == "avg" and m.inference_ratio is None for m in eda.modules() if hasattr(m, "isr_pool"))


def test_set_isr_is_permanent_until_reset(eda):
    try:
        assert set_isr(eda, encoder=(16, 8, 4, 2), decoder=(8, 4, 2)) == current_ratios(eda)
        assert current_ratios(eda)["encoder"] == (16, 8, 4, 2)
    finally:
        set_isr(eda)
    assert current_ratios(eda) == TRAIN


@torch.no_grad()
def test_max_pooling_option(eda):
    with isr(eda, encoder=(16, 8, 4, 2), decoder=(8, 4, 2)):
        avg = eda(X)
    with isr(eda, encoder=(16, 8, 4, 2), decoder=(8, 4, 2), pool="max"):
        assert {m.isr_pool for m in _attn(eda, "encoder", 1)} == {"max"}
        maxed = eda(X)
    assert maxed.shape == avg.shape and not torch.allclose(maxed, avg)
    assert {m.isr_pool for m in eda.modules() if hasattr(m, "isr_pool")} == {"avg"}


@pytest.mark.parametrize("kwargs, match", [
    (dict(encoder=(16, 8, 4)), r"encoder ratios need 4 values, one per encoder stage 1, 2, 3, 4"),
    (dict(decoder=(8, 4, 2, 1)), r"decoder ratios need 3 values, one per decoder stage 2, 3, 4"),
    (dict(encoder="8421"), r"encoder ratios need 4 values"),
    (dict(encoder=(16, 8, 2.5, 1)), r"encoder stage 3: reduction ratios are integers, got 2.5"),
    (dict(encoder=(16, True, 2, 1)), r"encoder stage 2: reduction ratios are integers, got True"),
    (dict(decoder=(8, 0, 2)), r"decoder stage 3: reduction ratio 0 is out of range"),
    (dict(encoder=(-2, 4, 2, 1)), r"encoder stage 1: reduction ratio -2 is out of range"),
    (dict(pool="mean"), r"pool must be one of \('avg', 'max'\), got 'mean'"),
    (dict(encoder=(64, 4, 2, 1), input_size=(128, 128)),
     r"encoder stage 1 \(feature map 32x32\): reduction ratio 64 is out of range; allowed: 1\.\.32"),
    (dict(decoder=(4, 2, 5), input_size=(128, 160)),
     r"decoder stage 4 \(feature map 4x5\): reduction ratio 5 is out of range; allowed: 1\.\.4"),
    (dict(input_size=(128, 0)), r"input_size must be \(H, W\) with two positive integers"),
])
def test_validation_errors_change_nothing(eda, kwargs, match):
    with pytest.raises(ValueError, match=match):
        with isr(eda, **kwargs):
            pass
    with pytest.raises(ValueError, match=match):
        set_isr(eda, **{"encoder": (16, 8, 4, 2), **kwargs} if "decoder" in kwargs else kwargs)
    assert current_ratios(eda) == TRAIN


@torch.no_grad()
@pytest.mark.parametrize("group, stage, side", [("encoder", 1, 32), ("encoder", 3, 8), ("decoder", 2, 16),
                                                ("decoder", 4, 4)])
def test_ratio_larger_than_the_map_fails_cleanly_at_forward(eda, group, stage, side):
    ratios = {g: list(r) for g, r in TRAIN.items()}
    index = stage - 1 if group == "encoder" else stage - 2
    ratios[group][index] = side  # exactly the map: one key token, fine
    with isr(eda, **ratios):
        assert eda(X).shape == (1, eda.num_classes, 16, 16)
    ratios[group][index] = side + 1
    with isr(eda, **ratios):
        with pytest.raises(ValueError) as err:  # a ValueError, nothing else, from inside the model
            eda(X)
    assert str(err.value) == (f"{group} stage {stage}: reduction ratio {side + 1} is larger than the feature map "
                              f"{side}x{side}; allowed ratios here are 1..{side}")


def test_segformer_has_only_an_encoder_group_and_sr_multiples(seg):
    with pytest.raises(ValueError, match="SegFormer has no decoder attention to reduce"):
        set_isr(seg, decoder=(8, 4, 2))
    with pytest.raises(ValueError, match="encoder stage 2: .*multiple of the learned reduction 4.*got 6"):
        set_isr(seg, encoder=(8, 6, 2, 1))
    assert current_ratios(seg) == {"encoder": (8, 4, 2, 1)}


def test_models_without_isr_roles_are_refused():
    with pytest.raises(ValueError, match="no spatial-reduction attention"):
        set_isr(torch.nn.Conv2d(3, 3, 1), encoder=(1,))


@pytest.mark.parametrize("encoder", [
    torch.tensor([16, 8, 2, 1]), np.array([16, 8, 2, 1]), np.array([16, 8, 2, 1], dtype=np.int32),
    [np.int64(16), torch.tensor(8), 2, 1],
])
def test_ratios_may_be_integer_arrays_and_tensors(eda, encoder):
    with isr(eda, encoder=encoder, decoder=torch.tensor([8, 4, 2])) as in_force:
        assert in_force == {"encoder": (16, 8, 2, 1), "decoder": (8, 4, 2)}
        assert all(type(r) is int for r in in_force["encoder"])
    assert current_ratios(eda) == TRAIN


ENCODER_NEEDS = "encoder ratios need 4 values, one per encoder stage 1, 2, 3, 4 in that order " \
    "(a tuple, list, or 1-D integer array); got "


@pytest.mark.parametrize("encoder, message", [
    (16, ENCODER_NEEDS + "an int: 16"),
    ("8421", ENCODER_NEEDS + "a str: '8421'"),
    ({1: 16}, ENCODER_NEEDS + "a dict: {1: 16}"),
    (np.array([16, 8, 2]), ENCODER_NEEDS + "3 values: array([16,  8,  2])"),
    (np.array([[16, 8, 2, 1]]), ENCODER_NEEDS + "a 2-D array: array([[16,  8,  2,  1]])"),
    (torch.tensor(16), ENCODER_NEEDS + "a 0-D tensor: tensor(16)"),
    ((16,), ENCODER_NEEDS + "1 value: (16,)"),
    (torch.tensor([16.0, 8, 2, 1]), "encoder stage 1: reduction ratios are integers, got 16.0; allowed: "
                                    "positive integers up to the feature map's shorter side"),
    (np.array([16, 8, 2.5, 1]), "encoder stage 1: reduction ratios are integers, got 16.0; allowed: "),
    ((16, 8, "2", 1), "encoder stage 3: reduction ratios are integers, got '2'; allowed: "),
    ((16, 8, None, 1), "encoder stage 3: reduction ratios are integers, got None; allowed: "),
    ((16, 8, 2.0, 1), "encoder stage 3: reduction ratios are integers, got 2.0; allowed: "),
    ((16, np.bool_(True), 2, 1), "encoder stage 2: reduction ratios are integers, got True; allowed: "),
    ((16, torch.tensor(True), 2, 1), "encoder stage 2: reduction ratios are integers, got True; allowed: "),
    (np.array([16, 0, 2, 1]), "encoder stage 2: reduction ratio 0 is out of range; allowed: "),
])
def test_bad_ratio_types_are_refused_and_change_nothing(eda, encoder, message):
    with pytest.raises(ValueError) as err:
        set_isr(eda, encoder=encoder)
    assert str(err.value).startswith(message)
    assert current_ratios(eda) == TRAIN


@pytest.mark.parametrize("pool", [None, 1, "Avg", np.array(["avg"]), ("avg",)])
def test_bad_pool_is_refused(eda, pool):
    with pytest.raises(ValueError, match=r"pool must be one of \('avg', 'max'\), got "):
        set_isr(eda, pool=pool)


@pytest.mark.parametrize("size", [(64, 48), [64, 48], np.array([64, 48]), torch.tensor([64, 48]),
                                  torch.Size([64, 48]), (np.int16(64), torch.tensor(48))])
def test_feature_sizes_accept_integer_sequences(seg, size):
    assert feature_sizes(seg, size)["encoder"][1] == (16, 12)


INPUT_SIZE = "input_size must be (H, W) with two positive integers, got "


@pytest.mark.parametrize("size, reason", [
    ((64.5, 64), "(64.5, 64) (64.5 is not an integer)"),
    ((64.0, 64), "(64.0, 64) (64.0 is not an integer)"),
    ((True, 64), "(True, 64) (True is not an integer)"),
    (("64", 64), "('64', 64) ('64' is not an integer)"),
    ((64, None), "(64, None) (None is not an integer)"),
    ((64,), "(64,) (1 value, not 2)"),
    ((1, 3, 64, 64), "(1, 3, 64, 64) (4 values, not 2)"),
    ((64, 0), "(64, 0) (0 is below 1)"),
    ((-64, 64), "(-64, 64) (-64 is below 1)"),
    (64, "64 (an int, not a flat sequence of integers)"),
    ("64x64", "'64x64' (a str, not a flat sequence of integers)"),
    (None, "None (not a sequence)"),
    (np.array([64.0, 64.0]), "array([64., 64.]) (64.0 is not an integer)"),
])
def test_bad_input_sizes_are_refused(seg, size, reason):
    with pytest.raises(ValueError) as err:
        feature_sizes(seg, size)
    assert str(err.value) == INPUT_SIZE + reason
    if size is not None:  # set_isr's input_size=None means "do not check against a size"
        with pytest.raises(ValueError) as err:
            set_isr(seg, encoder=(16, 8, 2, 1), input_size=size)
        assert str(err.value) == INPUT_SIZE + reason
    assert current_ratios(seg) == {"encoder": (8, 4, 2, 1)}


# ---------------------------------------------------------------------------------------
# Costs: segviz.flops sees ISR, and each stage's attention falls as N² / R²
# ---------------------------------------------------------------------------------------
def _efa_macs(model, name, n, hw_keys):
    """An EFA module's MACs: 1x1 conv on the pooled map + q kᵀ and probs·v + output Linear."""
    attn = dict(model.named_modules())[name]
    c = attn.proj.in_features
    nk = hw_keys[0] * hw_keys[1]
    return nk * c * c + attention_macs(1, attn.heads, n, nk, c // attn.heads) + n * c * c


def test_flops_follow_the_analytic_formula_per_stage(eda):
    sizes = feature_sizes(eda, (128, 128))
    ratios = {"encoder": (32, 8, 4, 2), "decoder": (16, 4, 2)}
    base = segviz.flops(eda, (1, 3, 128, 128))
    with isr(eda, **ratios):
        reduced = segviz.flops(eda, (1, 3, 128, 128))
    assert reduced.total < base.total
    for name, module in eda.named_modules():
        if getattr(module, "isr_role", None) is None:
            continue
        group, stage = module.isr_role
        h, w = sizes[group][stage]
        index = stage - 1 if group == "encoder" else stage - 2
        r0, r1 = TRAIN[group][index], ratios[group][index]
        for report, r in ((base, r0), (reduced, r1)):
            assert report.per_module[name] * 1e9 == pytest.approx(_efa_macs(eda, name, h * w, (h // r, w // r)))
        # the attention matmuls alone: N · N/R² · 2C, so doubling R quarters them
        c = module.proj.in_features
        attn_part = lambda r: (h * w) * (h // r) * (w // r) * 2 * c  # noqa: E731
        assert attn_part(r1) / attn_part(r0) == pytest.approx((r0 / r1) ** 2)
    # the whole saving is in the attention modules (conv on fewer tokens + the matmuls)
    saved = sum(base.per_module[n] - reduced.per_module[n] for n, m in eda.named_modules()
                if getattr(m, "isr_role", None))
    assert base.total - reduced.total == pytest.approx(saved)


def test_flops_on_segformer_reflect_isr(seg):
    base = segviz.flops(seg, (1, 3, 128, 128))
    with isr(seg, encoder=(16, 8, 4, 2)):
        reduced = segviz.flops(seg, (1, 3, 128, 128))
    for i, (side, c, heads) in enumerate(((32, 16, 1), (16, 32, 1), (8, 64, 2), (4, 128, 4))):
        name = f"encoder.stages.{i}.blocks.0.attn"
        n, nk0, nk1 = side * side, (side // (8 >> i)) ** 2, (side // (16 >> i)) ** 2
        # fewer key tokens: the kv Linear (2C outputs) and the two attention matmuls shrink
        expected = (nk0 - nk1) * 2 * c * c + attention_macs(1, heads, n, nk0, c // heads) \
            - attention_macs(1, heads, n, nk1, c // heads)
        assert (base.per_module[name] - reduced.per_module[name]) * 1e9 == pytest.approx(expected)
        assert nk1 * 4 == nk0
    assert reduced.total < base.total


# ---------------------------------------------------------------------------------------
# SegFormer's ISR order: learned conv -> LayerNorm -> extra pooling -> kv Linear, as the
# official EDAFormer code's modified MiT does (not conv -> pooling -> LayerNorm)
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def test_segformer_isr_pools_after_the_layer_norm_by_hand():
    from segviz.models.segformer import EfficientSelfAttention

    attn = EfficientSelfAttention(dim=2, num_heads=1, sr_ratio=2)
    attn.sr.weight.zero_()
    attn.sr.bias.zero_()
    attn.sr.weight[0, 0, 0, 0] = attn.sr.weight[1, 1, 0, 0] = 1.0  # the conv picks each 2x2 block's top-left pixel
    attn.norm.weight.copy_(torch.tensor([2.0, 3.0]))
    attn.norm.bias.copy_(torch.tensor([0.5, -0.25]))
    m = torch.randn(1, 2, 4, 4)  # a 4x4 map of 2 channels; only the top-left pixels reach the keys
    for (y, x), value in {(0, 0): (1.0, 0.0), (0, 2): (0.0, 1.0), (2, 0): (3.0, 0.0), (2, 2): (0.0, 5.0)}.items():
        m[0, :, y, x] = torch.tensor(value)
    tokens = m.flatten(2).transpose(1, 2)  # (1, 16, 2)
    attn.inference_ratio = 4  # ISR: the 2x2 map after the conv is pooled by 4 // 2 = 2 to one key token
    # By hand: LayerNorm over two channels sends (a, b) to gain * (±1, ∓1) + bias; the four picked
    # pixels give (+, -), (-, +), (+, -), (-, +), whose mean is 0, so pooling after the norm leaves
    # the bias (0.5, -0.25). Pooling first would normalise the mean pixel (1, 1.5): (-2, 3) + bias.
    official = torch.tensor([0.5, -0.25])
    pooled_first = torch.tensor([-1.5, 2.75])
    kv, k_hw = attn.reduce(tokens, (4, 4))
    assert k_hw == (1, 1)
    torch.testing.assert_close(kv[0, 0], official, atol=1e-4, rtol=0)
    assert (kv[0, 0] - pooled_first).abs().max() > 1
    # one key token: every query's output is proj(V) with V the value half of kv(x̂)
    value = torch.nn.functional.linear(official, attn.kv.weight[2:], attn.kv.bias[2:])
    expected = torch.nn.functional.linear(value, attn.proj.weight, attn.proj.bias).expand(1, 16, 2)
    torch.testing.assert_close(attn(tokens, (4, 4)), expected, atol=1e-4, rtol=0)
    # at the training ratio nothing is pooled: conv -> LayerNorm gives the four normalised pixels
    attn.inference_ratio = None
    kv, k_hw = attn.reduce(tokens, (4, 4))
    signs = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]])
    assert k_hw == (2, 2)
    torch.testing.assert_close(kv[0], signs * torch.tensor([2.0, 3.0]) + official, atol=1e-4, rtol=0)
