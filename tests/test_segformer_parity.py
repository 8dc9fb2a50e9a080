"""segviz's SegFormer gives HuggingFace transformers' logits from the same weights, in every
checkpoint layout we read: transformers 4.x keys (what hub files and save_pretrained hold),
transformers 5.x module names (its state_dict()), and the original NVlabs/mmseg names.
Nothing is downloaded: the reference model is built from a config with random weights."""
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

import transformers  # a test extra

import segviz
from segviz.models.segformer import checkpoint_config, checkpoint_filter_fn
from segviz.weights import read_state_dict

HF_CONFIGS = {
    "segformer-b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "segformer-b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
}
SIZES = [(64, 64), (72, 88)]  # 72 x 88 is not a multiple of 32


def random_hf_model(name, num_labels=150):
    """A transformers SegFormer with every parameter and the BN statistics randomized."""
    torch.manual_seed(0)
    config = transformers.SegformerConfig(num_labels=num_labels, **HF_CONFIGS[name])
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # LayerNorm gains, biases too
        bn = model.decode_head.batch_norm
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.num_batches_tracked.fill_(7)
    return model


_SAVED = {}


def _save(name, tmp_path_factory):
    """(variant name, HF model, directory written by save_pretrained), built once per module."""
    if name not in _SAVED:
        model = random_hf_model(name)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        _SAVED[name] = (name, model, path)
    return _SAVED[name]


@pytest.fixture(params=sorted(HF_CONFIGS))
def saved(request, tmp_path_factory):
    return _save(request.param, tmp_path_factory)


@pytest.fixture
def saved_b0(tmp_path_factory):
    return _save("segformer-b0", tmp_path_factory)


def assert_same_logits(ours, hf):
    for h, w in SIZES:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            ref = hf(pixel_values=x).logits
            out = ours(x)
        assert out.shape == ref.shape == (2, 150, -(-h // 4), -(-w // 4))
        assert ref.std().item() > 0.2  # logits of order 1, so 1e-4 is a tight bound
        assert (out - ref).abs().max().item() < 1e-4


def to_nvlabs(hf4: dict) -> dict:
    """transformers 4.x keys -> the names of the original NVlabs/SegFormer code (test helper)."""
    rules = [
        (r"^segformer\.encoder\.patch_embeddings\.(\d)\.layer_norm\.", lambda m: f"backbone.patch_embed{int(m[1]) + 1}.norm."),
        (r"^segformer\.encoder\.patch_embeddings\.(\d)\.", lambda m: f"backbone.patch_embed{int(m[1]) + 1}."),
        (r"^segformer\.encoder\.block\.(\d)\.", lambda m: f"backbone.block{int(m[1]) + 1}."),
        (r"^segformer\.encoder\.layer_norm\.(\d)\.", lambda m: f"backbone.norm{int(m[1]) + 1}."),
        (r"attention\.self\.query\.", "attn.q."),
        (r"attention\.self\.sr\.", "attn.sr."),
        (r"attention\.self\.layer_norm\.", "attn.norm."),
        (r"attention\.output\.dense\.", "attn.proj."),
        (r"layer_norm_1\.", "norm1."), (r"layer_norm_2\.", "norm2."),
        (r"mlp\.dense1\.", "mlp.fc1."), (r"mlp\.dense2\.", "mlp.fc2."),
        (r"^decode_head\.linear_c\.(\d)\.", lambda m: f"decode_head.linear_c{int(m[1]) + 1}."),
        (r"^decode_head\.linear_fuse\.weight", "decode_head.linear_fuse.conv.weight"),
        (r"^decode_head\.batch_norm\.", "decode_head.linear_fuse.bn."),
        (r"^decode_head\.classifier\.", "decode_head.linear_pred."),
    ]
    out = {}
    for key, tensor in hf4.items():
        if ".attention.self.value." in key:
            continue  # joined with the key below
        if ".attention.self.key." in key:
            tensor = torch.cat([tensor, hf4[key.replace(".key.", ".value.")]], dim=0)
            key = key.replace(".attention.self.key.", ".attn.kv.")
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = tensor
    # mmseg's base head always builds an unused classifier "conv_seg" (channels=128 in the configs)
    out["decode_head.conv_seg.weight"] = torch.randn(150, 128, 1, 1)
    out["decode_head.conv_seg.bias"] = torch.randn(150)
    return out


def test_save_pretrained_safetensors(saved):
    name, hf, path = saved
    keys = load_file(str(path / "model.safetensors")).keys()
    assert any(k.startswith("segformer.encoder.block.0.0.attention.self.query") for k in keys)  # 4.x layout on disk
    ours = segviz.create_model(name, num_classes=150, weights=path / "model.safetensors").eval()
    assert ours.segviz_config["layer_norm_eps"] == 1e-5
    assert_same_logits(ours, hf)


def test_pytorch_model_bin_with_4x_keys(saved_b0, tmp_path):
    name, hf, path = saved_b0
    torch.save(load_file(str(path / "model.safetensors")), tmp_path / "pytorch_model.bin")
    ours = segviz.create_model(name, num_classes=150, weights=tmp_path / "pytorch_model.bin").eval()
    assert_same_logits(ours, hf)


def test_transformers_5x_state_dict(saved, tmp_path):
    name, hf, _ = saved
    sd = hf.state_dict()
    assert any(k.startswith("segformer.stages.0.blocks.0.attention.q_proj") for k in sd)  # 5.x module names
    torch.save(sd, tmp_path / "pytorch_model.bin")
    ours = segviz.create_model(name, num_classes=150, weights=tmp_path / "pytorch_model.bin").eval()
    assert_same_logits(ours, hf)


def test_nvlabs_layout(saved, tmp_path):
    name, hf, path = saved
    nvlabs = to_nvlabs(load_file(str(path / "model.safetensors")))
    torch.save({"meta": {"CLASSES": ["x"] * 150}, "state_dict": nvlabs}, tmp_path / "iter_160000.pth")
    with torch.device("meta"):
        target = segviz.create_model(name, num_classes=150)
    nv_file, hf_file = read_state_dict(tmp_path / "iter_160000.pth"), read_state_dict(path / "model.safetensors")
    assert checkpoint_config(nv_file) == {}  # the official epsilons are kept for official checkpoints
    assert checkpoint_config(hf_file) == {"layer_norm_eps": 1e-5}
    ours, from_hf = checkpoint_filter_fn(nv_file, target), checkpoint_filter_fn(hf_file, target)
    assert ours.keys() == from_hf.keys() == target.state_dict().keys()
    assert all(torch.equal(ours[k], from_hf[k]) for k in ours)
    # with HF's epsilons the NVlabs file gives HF's logits
    model = segviz.create_model(name, num_classes=150, weights=tmp_path / "iter_160000.pth", layer_norm_eps=1e-5)
    assert_same_logits(model.eval(), hf)


def test_missing_and_unexpected_keys_are_listed(saved_b0, tmp_path):
    name, _, path = saved_b0
    sd = load_file(str(path / "model.safetensors"))
    del sd["segformer.encoder.block.1.0.mlp.dense2.bias"]
    sd["decode_head.extra_layer.weight"] = torch.zeros(3)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        segviz.create_model(name, num_classes=150, weights=tmp_path / "model.safetensors")
    msg = str(err.value)
    assert "missing keys (1): encoder.stages.1.blocks.0.mlp.fc2.bias" in msg
    assert "unexpected keys (1): decode_head.extra_layer.weight" in msg


def test_wrong_class_count_is_a_shape_error(saved_b0):
    name, _, path = saved_b0
    with pytest.raises(ValueError, match=r"decoder.linear_pred.weight: checkpoint \(150, "):
        segviz.create_model(name, num_classes=19, weights=path / "model.safetensors")


def test_garbage_and_foreign_files(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="could not read checkpoint"):
        segviz.create_model("segformer-b0", weights=tmp_path / "model.safetensors")
    torch.save({"resnet.conv1.weight": torch.zeros(1)}, tmp_path / "other.bin")
    with pytest.raises(ValueError, match="not a SegFormer checkpoint.*resnet.conv1.weight"):
        segviz.create_model("segformer-b0", weights=tmp_path / "other.bin")
