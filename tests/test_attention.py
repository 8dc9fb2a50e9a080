import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from segviz.inspect import capture
from segviz.nn import attention, attention_macs, explicit_attention
from tests.toys import ToyAttention


def _qkv(b=2, h=3, nq=10, nk=7, d=16):
    return torch.randn(b, h, nq, d), torch.randn(b, h, nk, d), torch.randn(b, h, nk, d)


def _reference(q, k, v, bias=None):
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    return logits.softmax(-1) @ v


@pytest.mark.parametrize("kind", ["none", "bias", "mask", "mask+bias"])
def test_fast_and_explicit_paths_agree(kind):
    q, k, v = _qkv()
    bias = None
    if "bias" in kind:
        bias = torch.randn(1, 3, 10, 7)
    if "mask" in kind:
        mask = torch.zeros(2, 1, 10, 7)
        mask[..., 3:5] = float("-inf")
        bias = mask if bias is None else bias + mask
    fast = attention(q, k, v, bias=bias)
    with explicit_attention():
        explicit = attention(q, k, v, bias=bias)
    assert (fast - explicit).abs().max() < 1e-5
    assert (fast - _reference(q, k, v, bias)).abs().max() < 1e-5
    if "mask" in kind:  # masked keys get exactly zero weight, so their values cannot leak
        v2 = v.clone()
        v2[:, :, 3:5] = 1e3
        assert (attention(q, k, v2, bias=bias) - fast).abs().max() < 1e-4


def test_recording_path_agrees_and_records_probabilities():
    module = ToyAttention(dim=8, heads=2)
    x = torch.randn(1, 12, 8)
    plain = module(x, (3, 4))
    with capture(module) as rec:
        recorded = module(x, (3, 4))
    assert (plain - recorded).abs().max() < 1e-5
    record = rec.attention[""]
    assert record.probs.shape == (1, 2, 12, 12)
    assert record.q_hw == (3, 4) and record.k_hw == (3, 4)
    assert torch.allclose(record.probs.sum(-1), torch.ones(1, 2, 12), atol=1e-6)
    assert record.map_for((1, 2), head=1).shape == (3, 4)


def test_explicit_path_is_counted_like_the_formula():
    q, k, v = _qkv(b=2, h=3, nq=10, nk=7, d=16)
    counter = FlopCounterMode(display=False)
    with counter, explicit_attention():
        attention(q, k, v)
    assert counter.get_total_flops() == 2 * attention_macs(2, 3, 10, 7, 16)


def test_bad_shapes_raise_clear_errors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"\(B, heads, N, d\)"):
        attention(q[0], k, v)
    with pytest.raises(ValueError, match="same length Nk"):
        attention(q, k, v[:, :, :3])


def test_a_large_finite_negative_bias_is_recorded_as_computed_not_as_zeros():
    """Swin's -100 region mask: the recorded probabilities are the softmax as computed, e^-100-sized
    weights included (notebook 03 shows them on a log scale), and the output is the fast path's."""
    module = ToyAttention(dim=8, heads=2)
    q, k, v = _qkv(b=2, h=2, nq=10, nk=7, d=4)
    q = 0.1 * q  # small logits: the blocked weights stay near e^-100 ≈ 4e-44, above float32's smallest
    bias = 0.1 * torch.randn(1, 2, 10, 7)
    bias[..., 4:] -= 100.0
    fast = attention(q, k, v, bias=bias)
    with capture(module) as rec:
        recorded = attention(q, k, v, bias=bias, module=module, q_hw=(2, 5), k_hw=(1, 7))
    assert torch.equal(fast, recorded)
    probs = rec.attention[""].probs
    expected = (q @ k.transpose(-2, -1) / 2 + bias).softmax(-1)  # d = 4
    assert torch.equal(probs, expected) or (probs - expected).abs().max() < 1e-7
    tiny = probs[..., 4:]
    assert bool((tiny > 0).all()) and bool((tiny < 1e-30).all())  # blocked in practice, yet not zero
    assert torch.allclose(probs.sum(-1), torch.ones(2, 2, 10), atol=1e-6)


@pytest.mark.parametrize("bias_shape", [None, (1, 2, 1024, 512), (2, 1, 1024, 512)])
def test_long_maps_are_formed_in_row_blocks_with_the_same_numbers(bias_shape, monkeypatch):
    """Reading the probabilities of a long map (Nq·Nk >= 2^18 per head) on the CPU: they are
    formed in blocks of query rows and match the unblocked path and the formula."""
    import importlib

    kernel = importlib.import_module("segviz.nn.attention")  # the module (segviz.nn.attention is also the function)
    torch.manual_seed(0)
    module = ToyAttention(dim=8, heads=2)
    q, k, v = _qkv(b=2, h=2, nq=1024, nk=512, d=8)
    bias = None if bias_shape is None else torch.randn(bias_shape)
    if bias is not None:
        bias[..., :7] -= 100.0  # e^-100-sized weights: kept as computed, per block
    assert 1024 * 512 >= kernel._CHUNK_ABOVE
    with torch.no_grad():
        with capture(module) as rec:
            recorded = attention(q, k, v, bias=bias, module=module, q_hw=(32, 32), k_hw=(16, 32))
        blocked = rec.attention[""].probs
        monkeypatch.setattr(kernel, "_CHUNK_ABOVE", 1 << 40)
        with capture(module) as rec_plain:
            attention(q, k, v, bias=bias, module=module, q_hw=(32, 32), k_hw=(16, 32))
        unblocked = rec_plain.attention[""].probs
        fast = attention(q, k, v, bias=bias)
    assert blocked.shape == (2, 2, 1024, 512)
    assert (blocked - unblocked).abs().max() < 1e-7
    assert torch.equal(recorded, fast)
    assert (blocked - torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8) + (0 if bias is None else bias), -1)).abs().max() < 1e-6
    if bias is not None:
        assert bool((blocked[..., :7] < 1e-30).all())  # as computed (the formula above): tiny or underflowed


def test_recording_for_inference_keeps_the_fast_path_and_forms_probabilities_on_first_read():
    """Without autograd, recording does not change the output by a single bit, and the record's
    probabilities are formed only when read (then kept)."""
    torch.manual_seed(0)
    module = ToyAttention(dim=8, heads=2)
    x = torch.randn(2, 12, 8)
    with torch.no_grad():
        plain = module(x, (3, 4))
        with capture(module) as rec:
            recorded = module(x, (3, 4))
    assert torch.equal(plain, recorded)
    record = rec.attention[""]
    assert not record.is_computed("probs")
    assert record.heads == 2 and not record.is_computed("probs")  # the shape is known without forming them
    probs = record.probs
    assert record.is_computed("probs") and record.probs is probs  # formed once
    q, k, _ = module.qkv(x).reshape(2, 12, 3, 2, 4).permute(2, 0, 3, 1, 4)
    assert (probs - torch.softmax(q @ k.transpose(-2, -1) / 2, -1)).abs().max() < 1e-6


def test_probabilities_read_outside_inference_mode():
    module = ToyAttention(dim=8, heads=2)
    x = torch.randn(1, 12, 8)
    with torch.inference_mode(), capture(module) as rec:
        module(x, (3, 4))
    probs = rec.attention[""].probs  # read after the inference_mode block
    assert torch.allclose(probs.sum(-1), torch.ones(1, 2, 12), atol=1e-6)


def test_changing_q_in_place_before_the_first_read_is_a_clear_error():
    q, k, v = _qkv()
    module = ToyAttention(dim=8, heads=3)
    with capture(module) as rec:
        attention(q, k, v, module=module, q_hw=(2, 5), k_hw=(1, 7))
    q.mul_(2.0)
    with pytest.raises(ValueError, match="modified in place"):
        rec.attention[""].probs


def test_recording_with_autograd_changes_nothing_and_still_records():
    module = ToyAttention(dim=8, heads=2)
    x = torch.randn(1, 12, 8, requires_grad=True)
    plain = module(x, (3, 4))
    (grad_plain,) = torch.autograd.grad(plain.square().sum(), x)
    with capture(module) as rec:
        out = module(x, (3, 4))
    (grad_recorded,) = torch.autograd.grad(out.square().sum(), x)
    assert torch.equal(out, plain) and torch.equal(grad_recorded, grad_plain)
    probs = rec.attention[""].probs
    assert not probs.requires_grad  # records are detached
    assert torch.allclose(probs.sum(-1), torch.ones(1, 2, 12), atol=1e-6)
