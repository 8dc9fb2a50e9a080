import pytest
import torch

import segviz
from segviz import registry
from segviz.weights import load_state_dict_strict, read_state_dict
from tests.toys import ToyNet


def _keep(state_dict, model):
    return state_dict


@pytest.fixture
def toy_registered(monkeypatch):
    spec = registry.ModelSpec("toy-net", ToyNet, {"num_classes": 3, "dim": 8}, _keep)
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


def test_register_keeps_published_numbers_read_only(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register("toy-pub", ToyNet, {"num_classes": 3}, _keep, published={"params": 123, "source": "here"})
    spec = registry.get_spec("toy-pub")
    assert spec.published == {"params": 123, "source": "here"}
    with pytest.raises(TypeError):
        spec.published["params"] = 1
    with pytest.raises(ValueError, match="already registered"):
        registry.register("toy-pub", ToyNet, {})


def test_create_model_reads_filters_and_takes_config_from_the_checkpoint(monkeypatch, tmp_path):
    """read_state_dict -> checkpoint_config -> build -> checkpoint_filter_fn -> strict load."""
    seen = {}

    def filter_fn(state_dict, model):
        seen["dim"] = model.stem.out_channels
        return {k.removeprefix("foreign."): v for k, v in state_dict.items()}

    def config_fn(state_dict):
        return {"dim": state_dict["foreign.stem.weight"].shape[0]}

    spec = registry.ModelSpec("toy-foreign", ToyNet, {"num_classes": 3, "dim": 8}, filter_fn, config_fn)
    monkeypatch.setitem(registry._REGISTRY, "toy-foreign", spec)
    source = ToyNet(num_classes=3, dim=4).eval()
    torch.save({f"foreign.{k}": v for k, v in source.state_dict().items()}, tmp_path / "w.pth")
    loaded = segviz.create_model("toy-foreign", weights=tmp_path / "w.pth").eval()
    assert seen["dim"] == 4 and loaded.segviz_config["dim"] == 4
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(loaded(x), source(x))
    # an explicit override wins over what the checkpoint asks for (and then fails to load, loudly)
    with pytest.raises(ValueError, match="shape mismatches"):
        segviz.create_model("toy-foreign", weights=tmp_path / "w.pth", dim=8)


def test_filter_errors_name_the_file(monkeypatch, tmp_path):
    def refuse(state_dict, model):
        raise ValueError("not a toy checkpoint")

    monkeypatch.setitem(registry._REGISTRY, "toy-refuse", registry.ModelSpec("toy-refuse", ToyNet, {}, refuse))
    torch.save(ToyNet().state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"w\.pth: not a toy checkpoint"):
        segviz.create_model("toy-refuse", weights=tmp_path / "w.pth")
    monkeypatch.setitem(registry._REGISTRY, "toy-none", registry.ModelSpec("toy-none", ToyNet, {}))
    with pytest.raises(ValueError, match="no checkpoint reader"):
        segviz.create_model("toy-none", weights=tmp_path / "w.pth")


def test_shared_conversion_helpers():
    from segviz.weights import drop_prefixes, fill_num_batches_tracked, join_tensors, rename_keys

    sd = {"blk1.q.weight": torch.ones(2, 4), "blk1.k.weight": torch.zeros(2, 4), "blk1.v.weight": 2 * torch.ones(2, 4),
          "blk1.k.bias": torch.zeros(2), "unused.w": torch.zeros(1)}
    sd = drop_prefixes(sd, ["unused."])
    sd = rename_keys(sd, [(r"^blk(\d)\.", lambda m: f"blocks.{int(m[1]) - 1}.")])
    assert sorted(sd) == ["blocks.0.k.bias", "blocks.0.k.weight", "blocks.0.q.weight", "blocks.0.v.weight"]
    joined = join_tensors(sd, r"(?P<prefix>.*\.)(?P<part>[qkv])\.(?P<kind>weight|bias)", ("q", "k", "v"), "qkv")
    assert torch.equal(joined["blocks.0.qkv.weight"][:, 0], torch.tensor([1.0, 1, 0, 0, 2, 2]))
    assert "blocks.0.k.bias" in joined and "blocks.0.qkv.bias" not in joined  # no partners: left for the loader
    with pytest.raises(ValueError, match="two checkpoint keys map to 'x'"):
        rename_keys({"a": torch.zeros(1), "b": torch.zeros(1)}, [(r"^[ab]$", "x")])
    bn = torch.nn.Sequential(torch.nn.BatchNorm2d(2))
    sd = {k: v for k, v in bn.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert fill_num_batches_tracked(sd, bn)["0.num_batches_tracked"] == 0
