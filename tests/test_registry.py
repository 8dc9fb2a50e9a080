import pytest
import torch

import segviz
from segviz import registry
from segviz.weights import load_state_dict_strict, read_state_dict
from tests.toys import ToyNet


@pytest.fixture
def toy_registered(monkeypatch):
    def reader(path, config):
        return {}, read_state_dict(path)

    spec = registry.ModelSpec("toy-net", ToyNet, {"num_classes": 3, "dim": 8}, reader)
    monkeypatch.setitem(registry._REGISTRY, "toy-net", spec)
    return spec


def test_create_model_builds_with_config_and_overrides(toy_registered):
    model = segviz.create_model("toy-net", num_classes=7, dim=16)
    assert model.head.out_channels == 7 and model.stem.out_channels == 16
    assert model.segviz_name == "toy-net"
    assert model.segviz_config == {"num_classes": 7, "dim": 16}
    assert "toy-net" in segviz.list_models() and segviz.list_models("toy") == ["toy-net"]


def test_unknown_names_and_bad_overrides_raise_clear_errors(toy_registered):
    with pytest.raises(ValueError, match="unknown model 'toy-nt'.*Did you mean toy-net.*Valid names:.*toy-net"):
        segviz.create_model("toy-nt")
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['width'\]; allowed keys: dim, num_classes"):
        segviz.create_model("toy-net", width=3)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        segviz.create_model("toy-net", num_classes=0)


def test_weights_round_trip_through_safetensors_and_torch_files(toy_registered, tmp_path):
    from safetensors.torch import save_file

    source = segviz.create_model("toy-net").eval()
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    torch.save({"state_dict": source.state_dict()}, tmp_path / "w.pth")
    x = torch.randn(1, 3, 16, 16)
    for name in ("w.safetensors", "w.pth"):
        loaded = segviz.create_model("toy-net", weights=tmp_path / name).eval()
        assert torch.equal(loaded(x), source(x))


def test_broken_and_mismatched_checkpoints_raise_value_errors(toy_registered, tmp_path):
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read checkpoint .*garbage.pth"):
        segviz.create_model("toy-net", weights=tmp_path / "garbage.pth")
    with pytest.raises(ValueError, match="checkpoint file not found"):
        segviz.create_model("toy-net", weights=tmp_path / "missing.pth")
    state = ToyNet().state_dict()
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(1)
    state["stem.weight"] = torch.zeros(2, 3, 4, 4)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        segviz.create_model("toy-net", weights=tmp_path / "bad.pth")
    message = str(err.value)
    assert "missing keys (1): head.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "stem.weight: checkpoint (2, 3, 4, 4) vs model (8, 3, 4, 4)" in message


def test_pickled_objects_are_refused(tmp_path):
    import fractions  # any object that is not a tensor must not be unpickled

    torch.save({"w": fractions.Fraction(1, 3)}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="could not read checkpoint"):
        read_state_dict(tmp_path / "evil.pth")


def test_strict_loader_accepts_an_exact_match():
    model = ToyNet()
    load_state_dict_strict(model, ToyNet().state_dict())
