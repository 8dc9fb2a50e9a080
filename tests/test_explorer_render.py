"""What makes the explorers quick: the PNG path (segviz.viz.explorers), same pixels as
style.png_bytes; the Swin explorer's window-wise attention operator, same products as the dense matrix."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from segviz.nn.recording import WindowAttentionRecord

from segviz.viz import style
from segviz.viz.explorers import FigureSender, figure_rgb, png_bytes
from segviz.viz.swin import attention_reach, dense_attention
from segviz.viz.swin_explorer import WindowOperator


def _figure(photo, heat, title):
    fig = style.figure(4.0, 3.0)
    ax = fig.subplots()
    ax.imshow(photo)
    im = ax.imshow(heat, alpha=0.6, cmap="magma", extent=(-0.5, photo.shape[1] - 0.5, photo.shape[0] - 0.5, -0.5))
    ax.plot([3], [4], "+", color="cyan")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return fig


def _decoded(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_png_bytes_and_figure_rgb_match_savefig():
    """Two copies of one figure: one render each (each draw re-runs the layout, and matplotlib's
    constrained layout moves a colorbar a little on every run, so a second render of the same
    figure is not the reference)."""
    rng = np.random.default_rng(0)
    photo, heat = rng.random((16, 20, 3)), rng.random((4, 5))
    rgb = figure_rgb(_figure(photo, heat, "a"))
    assert np.array_equal(rgb, _decoded(style.png_bytes(_figure(photo, heat, "a"))))
    assert np.array_equal(_decoded(png_bytes(rgb)), rgb)


def test_sender_keeps_the_photo_and_draws_the_rest_over_it():
    rng = np.random.default_rng(1)
    photo = rng.random((16, 20, 3))
    sender = FigureSender()
    heat = rng.random((4, 5))
    first = _figure(photo, heat, "first")
    assert np.array_equal(sender.rgb(first), _decoded(style.png_bytes(_figure(photo, heat, "first"))))
    second = _figure(photo.copy(), rng.random((4, 5)), "second, a longer title")
    got = sender.rgb(second)
    assert sender.renders == {"full": 1, "over kept photos": 1}
    # the second figure now has the first one's layout; a full render of it gives the same pixels
    assert np.array_equal(got, figure_rgb(second))
    assert not np.array_equal(got, sender.rgb(_figure(photo, heat, "first")))  # the heat and title changed
    assert sender.renders == {"full": 1, "over kept photos": 2}
    photo2, heat2 = rng.random((16, 20, 3)), rng.random((4, 5))
    other = sender.rgb(_figure(photo2, heat2, "another photo"))
    assert sender.renders["full"] == 2
    assert np.array_equal(other, _decoded(style.png_bytes(_figure(photo2, heat2, "another photo"))))


@pytest.mark.parametrize("shift, hw", [(0, (10, 9)), (2, (10, 9)), (3, (14, 14))])
def test_window_operator_acts_like_the_dense_matrix(shift, hw):
    torch.manual_seed(0)
    windows = -(-hw[0] // 7) * -(-hw[1] // 7)
    record = WindowAttentionRecord(torch.rand(windows, 3, 49, 49).softmax(-1), 7, hw, shift)
    op, dense = WindowOperator(record), dense_attention(record)
    assert torch.equal(op.dense(), dense)
    v = torch.rand(hw[0] * hw[1])
    torch.testing.assert_close(v @ op, v @ dense, rtol=1e-5, atol=1e-6)
    records = [WindowAttentionRecord(torch.rand(windows, 3, 49, 49).softmax(-1), 7, hw, s) for s in (0, 3)]
    by_op = attention_reach(records, (5, 5), (40, 36), dense=[WindowOperator(r) for r in records])
    by_dense = attention_reach(records, (5, 5), (40, 36))
    for a, b in zip(by_op, by_dense):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
