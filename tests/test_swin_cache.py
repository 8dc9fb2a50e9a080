"""Swin's autograd-free caches (segviz.models.swin): the window layouts a stage keeps and the
attention bias (B [+ mask]) a WindowAttention keeps. They must give the numbers of the uncached
path, be rebuilt whenever the weights (however written), dtype or map size change, and never be used
with autograd on."""
import pytest
import torch

from segviz.models.swin import (
    SwinBackbone, WindowAttention, shifted_window_mask, take_rows, window_layout, window_partition, window_reverse,
)

SMALL = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4)


def backbone(seed=0):
    torch.manual_seed(seed)
    model = SwinBackbone(**SMALL).eval()
    with torch.no_grad():  # non-trivial bias tables
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(0, 1.0)
    return model


def loss(features):
    """A random projection of every output (a plain sum would have zero gradient through the stage norms)."""
    generator = torch.Generator().manual_seed(0)
    return sum((f * torch.randn(f.shape, generator=generator)).sum() for f in features)


def uncached(model, x):
    """The forward with autograd on (no cache read or written), detached."""
    with torch.enable_grad():
        return [f.detach() for f in model(x)]


@pytest.mark.parametrize("h, w, window, shift", [(8, 8, 4, 2), (10, 13, 4, 2), (7, 7, 7, 0), (5, 9, 3, 1)])
def test_the_layout_gathers_are_roll_partition_and_their_inverse(h, w, window, shift):
    x = torch.randn(2, h, w, 3)
    layout = window_layout(h, w, window, shift)
    hp, wp = -(-h // window) * window, -(-w // window) * window
    padded = torch.nn.functional.pad(x, (0, 0, 0, wp - w, 0, hp - h))
    expected = window_partition(torch.roll(padded, (-shift, -shift), (1, 2)), window)
    windows = take_rows(padded.reshape(2, -1, 3), layout.take).view(-1, window * window, 3)
    assert torch.equal(windows, expected)
    back = torch.roll(window_reverse(expected, window, hp, wp), (shift, shift), (1, 2))[:, :h, :w]
    assert torch.equal(take_rows(windows.view(2, -1, 3), layout.put).view(2, h, w, 3), back)
    assert torch.equal(back, x)
    if shift:
        assert torch.equal(layout.mask, shifted_window_mask(hp, wp, window, shift))
    else:
        assert layout.mask is None


def test_cached_forward_equals_uncached_across_sizes_and_batches():
    model = backbone()
    for shape in [(1, 3, 40, 52), (2, 3, 64, 64), (1, 3, 40, 52), (2, 3, 36, 28)]:
        x = torch.randn(shape)
        with torch.no_grad():
            cached = model(x)
        for a, b in zip(cached, uncached(model, x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert all(len(stage._layouts) <= 2 for stage in model.stages)


def test_the_bias_is_reused_until_the_table_changes():
    attn = WindowAttention(8, 4, 2)
    mask = shifted_window_mask(8, 8, 4, 2)
    with torch.no_grad():
        first = attn.attention_bias(4, mask)
        assert attn.attention_bias(4, mask) is first
        assert attn.attention_bias(4, None) is not first  # another mask: rebuilt
        torch.testing.assert_close(attn.attention_bias(4, mask), first, rtol=0, atol=0)
        attn.relative_position_bias_table.add_(1.0)  # any in-place write bumps the version
        second = attn.attention_bias(4, mask)
    torch.testing.assert_close(second, first + 1.0)
    assert second.shape == (4, 2, 16, 16) and second.is_contiguous()


def test_load_state_dict_and_an_optimizer_step_invalidate_the_cache():
    model, other = backbone(0), backbone(1)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)  # fills the caches with model's own tables
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        for a, b in zip(model(x), other(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loss(model(x)).backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after = model(x)
    for a, b in zip(after, uncached(model, x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(after, other(x)):
        assert not torch.allclose(a, b)  # the step changed the output; the cache saw it


@pytest.mark.parametrize("write", ["data", "fused_adamw"])
def test_writes_the_version_counter_misses_are_seen(write):
    """Neither a write through .data nor a fused optimizer step bumps the table's version counter."""
    model = backbone()
    x = torch.randn(1, 3, 32, 32)
    table = model.stages[0].blocks[1].attn.relative_position_bias_table
    with torch.no_grad():
        before = model(x)
    version = table._version
    if write == "data":
        table.data.mul_(-1.0)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.5, fused=True)
        loss(model(x)).backward()
        optimizer.step()
    assert table._version == version  # the counter indeed saw nothing
    with torch.no_grad():
        after = model(x)
    assert not torch.allclose(after[0], before[0])
    for a, b in zip(after, uncached(model, x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_no_cache_with_autograd_on_and_gradients_reach_the_table():
    model = backbone()
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        model(x)  # caches filled in inference mode ...
    loss(model(x)).backward()  # ... do not leak into a training forward
    for block in (b for stage in model.stages for b in stage.blocks):
        assert block.attn.relative_position_bias_table.grad.abs().sum() > 0
    attn = model.stages[0].blocks[1].attn
    cached = attn._bias_cache
    bias = attn.attention_bias(4, None)
    assert bias.requires_grad and attn._bias_cache is cached


def test_a_dtype_change_rebuilds_the_cache():
    model = backbone()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
        model.double()
        out = model(x.double())
    assert all(f.dtype == torch.float64 for f in out)
    for a, b in zip(out, uncached(model, x.double())):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
