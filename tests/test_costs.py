import numpy as np
import pytest
import torch

import segviz
from segviz.inspect import capture, flops, summary
from segviz.nn import attention_macs
from tests.toys import ToyNet


def _toy_macs(h, w, dim=8, classes=3, heads=2):
    n = (h // 4) * (w // 4)
    stem = n * dim * 3 * 16
    per_stage = n * dim * 3 * dim + attention_macs(1, heads, n, n, dim // heads) + n * dim * dim
    head = n * dim * classes
    return stem + 2 * per_stage + head


def test_flops_match_the_analytic_count_including_attention():
    report = flops(ToyNet(), (1, 3, 32, 48))
    assert report.total == pytest.approx(_toy_macs(32, 48) / 1e9, rel=1e-9)
    assert report.per_module["stages.0.attn"] == pytest.approx(
        (96 * (8 * 24 + 8 * 8) + attention_macs(1, 2, 96, 96, 4)) / 1e9
    )


def test_flops_do_not_depend_on_device_or_attention_path():
    model = ToyNet()
    on_cpu = flops(model, (1, 3, 32, 32)).total
    on_meta = flops(model, (1, 3, 32, 32), device="meta").total
    with capture(model):
        while_recording = flops(model, (1, 3, 32, 32)).total
    assert on_cpu == on_meta == while_recording
    if torch.cuda.is_available():
        assert flops(model.cuda(), (1, 3, 32, 32)).total == on_cpu


def test_flops_restore_training_mode_and_check_shape():
    model = ToyNet().train()
    flops(model, (1, 3, 16, 16))
    assert model.training
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        flops(model, (3, 16, 16))


def test_summary_lists_blocks_with_shapes_params_and_gmacs():
    model = ToyNet()
    table = summary(model, (1, 3, 32, 32), depth=1)
    rows = {r["module"]: r for r in table.rows}
    assert list(rows) == ["stem", "stages", "head"]
    assert rows["stem"]["output_shape"] == (1, 8, 8, 8)
    assert rows["head"]["params"] == 8 * 3 + 3
    assert table.total_params == sum(p.numel() for p in model.parameters())
    assert sum(r["gmacs"] for r in table.rows) == pytest.approx(table.total_gmacs)
    text = str(table)
    assert "stages" in text and "1x8x8x8" in text and "995" in text
    with pytest.raises(ValueError, match="depth"):
        summary(model, (1, 3, 32, 32), depth=0)


def test_device_helper():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert segviz.device().type == expected


# --------------------------------------------------------------------------- refusals and accepted forms
SHAPE = "input_shape must be (B, C, H, W): 4 positive integers, got "


@pytest.mark.parametrize("shape", [
    (1, 3, 32, 32), [1, 3, 32, 32], torch.Size([1, 3, 32, 32]), np.array([1, 3, 32, 32]),
    np.array([1, 3, 32, 32], dtype=np.int32), torch.tensor([1, 3, 32, 32]), (np.int64(1), 3, torch.tensor(32), 32),
])
def test_flops_accept_integer_sequences_arrays_and_tensors(shape):
    report = flops(ToyNet(), shape)
    assert report.input_shape == (1, 3, 32, 32) and all(type(s) is int for s in report.input_shape)
    assert report.total == pytest.approx(_toy_macs(32, 32) / 1e9, rel=1e-9)


@pytest.mark.parametrize("shape, reason", [
    ((1, 3, 32.5, 32), "(1, 3, 32.5, 32) (32.5 is not an integer)"),
    ((1, 3, 32.0, 32), "(1, 3, 32.0, 32) (32.0 is not an integer)"),
    ((1, 3, True, 32), "(1, 3, True, 32) (True is not an integer)"),
    ((1, 3, None, 32), "(1, 3, None, 32) (None is not an integer)"),
    ((1, 3, "32", 32), "(1, 3, '32', 32) ('32' is not an integer)"),
    ((1, 3, 0, 32), "(1, 3, 0, 32) (0 is below 1)"),
    ((1, 3, -32, 32), "(1, 3, -32, 32) (-32 is below 1)"),
    ((3, 32, 32), "(3, 32, 32) (3 values, not 4)"),
    ((1, 1, 3, 32, 32), "(1, 1, 3, 32, 32) (5 values, not 4)"),
    ("1333", "'1333' (a str, not a flat sequence of integers)"),
    (None, "None (not a sequence)"),
    (32, "32 (an int, not a flat sequence of integers)"),
    (np.array([1.0, 3, 32, 32]), "array([ 1.,  3., 32., 32.]) (1.0 is not an integer)"),
    (torch.tensor([1.0, 3, 32, 32]), "tensor([ 1.,  3., 32., 32.]) (1.0 is not an integer)"),
    (np.array([[1, 3, 32, 32]]), "array([[ 1,  3, 32, 32]]) (a 2-D array, not a flat sequence of integers)"),
    ((1, 3, (32, 32)), "(1, 3, (32, 32)) (3 values, not 4)"),
])
@pytest.mark.parametrize("tool", ["flops", "summary"])
def test_bad_shapes_are_refused_with_what_was_given(tool, shape, reason):
    with pytest.raises(ValueError) as err:
        flops(ToyNet(), shape) if tool == "flops" else summary(ToyNet(), shape)
    assert str(err.value) == SHAPE + reason


@pytest.mark.parametrize("depth, message", [
    (1.5, "depth must be an integer >= 1, got 1.5 (a float)"),
    (2.0, "depth must be an integer >= 1, got 2.0 (a float)"),
    ("2", "depth must be an integer >= 1, got '2' (a str)"),
    (True, "depth must be an integer >= 1, got True (a bool)"),
    (None, "depth must be an integer >= 1, got None"),
    (0, "depth must be an integer >= 1, got 0"),
    (-1, "depth must be an integer >= 1, got -1"),
])
def test_summary_refuses_a_bad_depth(depth, message):
    with pytest.raises(ValueError) as err:
        summary(ToyNet(), (1, 3, 32, 32), depth=depth)
    assert str(err.value) == message


def test_summary_accepts_numpy_and_tensor_depths():
    assert [r["module"] for r in summary(ToyNet(), (1, 3, 32, 32), depth=np.int64(1)).rows] == ["stem", "stages", "head"]
    assert len(summary(ToyNet(), np.array([1, 3, 32, 32]), depth=torch.tensor(2)).rows) > 3


@pytest.mark.parametrize("device, message", [
    ("gpu", "device must be a torch.device or a string such as 'cpu', 'cuda', 'cuda:0' or 'meta', got 'gpu' ("),
    (3.5, "device must be a torch.device or a string such as 'cpu', 'cuda', 'cuda:0' or 'meta', got 3.5 (a float)"),
    (True, "device must be a torch.device or a string such as 'cpu', 'cuda', 'cuda:0' or 'meta', got True (a bool)"),
    ("cuda:99", "device 'cuda:99' is not available: this machine has "),
])
@pytest.mark.parametrize("tool", ["flops", "summary"])
def test_bad_devices_are_a_value_error(tool, device, message):
    with pytest.raises(ValueError) as err:
        run = flops if tool == "flops" else summary
        run(ToyNet(), (1, 3, 32, 32), device=device)
    assert str(err.value).startswith(message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_a_value_error():
    with pytest.raises(ValueError, match="device 'cuda' is not available: this machine has no CUDA GPU; use 'cpu' or 'meta'"):
        flops(ToyNet(), (1, 3, 32, 32), device="cuda")


def test_a_model_that_is_not_a_module_is_refused():
    with pytest.raises(ValueError, match="model must be a torch.nn.Module, got str"):
        flops("segformer-b0", (1, 3, 32, 32))
