import pytest
import torch

from segviz.inspect import capture
from segviz.nn import recording
from segviz.nn.recording import register_kind
from tests.toys import ToyNet


def test_capture_records_attention_and_features_by_name():
    model = ToyNet().eval()
    x = torch.randn(2, 3, 16, 20)
    with capture(model) as rec:
        out = model(x)
    assert sorted(rec.attention) == ["stages.0.attn", "stages.1.attn"]
    assert rec.attention["stages.0.attn"].probs.shape == (2, 2, 20, 20)
    assert rec.attention["stages.0.attn"].q_hw == (4, 5)
    assert sorted(rec.features) == ["stages.0", "stages.1"]
    assert rec.features["stages.1"].shape == (2, 8, 4, 5)
    assert not rec.features["stages.1"].requires_grad
    assert out.shape == (2, 3, 4, 5)


def test_recording_never_changes_the_output():
    model = ToyNet().eval()
    x = torch.randn(1, 3, 32, 32)
    before = model(x)
    with capture(model):
        during = model(x)
    assert (before - during).abs().max() < 1e-5


def test_nothing_is_stored_or_computed_outside_the_context(monkeypatch):
    model = ToyNet().eval()
    x = torch.randn(1, 3, 16, 16)
    with capture(model) as rec:
        model(x)
    n_before = len(rec.records())
    calls, softmax = [], torch.Tensor.softmax
    monkeypatch.setattr(torch.Tensor, "softmax", lambda *a, **k: calls.append(1) or softmax(*a, **k))
    model(x)  # after the context: the fused kernel, no explicit softmax, nothing stored
    assert calls == []
    assert len(rec.records()) == n_before
    assert not recording.is_recording()


def test_include_pattern_and_kinds_filter():
    model = ToyNet().eval()
    with capture(model, kinds=["attention"], include="stages.1*") as rec:
        model(torch.randn(1, 3, 16, 16))
    assert list(rec.attention) == ["stages.1.attn"]
    assert rec.features == {}


def test_modules_of_other_models_are_not_recorded():
    recorded, other = ToyNet().eval(), ToyNet().eval()
    with capture(recorded) as rec:
        other(torch.randn(1, 3, 16, 16))
    assert rec.attention == {} and rec.features == {}


def test_context_exits_cleanly_after_an_exception():
    model = ToyNet()
    with pytest.raises(RuntimeError):
        with capture(model):
            raise RuntimeError("boom")
    assert not recording.is_recording()


def test_record_kinds_are_extensible():
    import dataclasses

    @dataclasses.dataclass
    class Sampling:
        points: torch.Tensor

    register_kind("toy_sampling", Sampling)
    model = ToyNet()
    with capture(model) as rec:
        recording.emit(model.stages[0], "toy_sampling", points=torch.ones(3, 2))
    assert rec.records("stages.0", kind="toy_sampling")[0].points.shape == (3, 2)
    with pytest.raises(ValueError, match="unknown record kind"):
        recording.emit(model, "no_such_kind", x=1)
    with pytest.raises(ValueError, match="unknown record kinds"):
        with capture(model, kinds=["nope"]):
            pass
    with pytest.raises(ValueError, match="already registered"):
        register_kind("attention", Sampling)
