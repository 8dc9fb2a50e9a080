"""SegFormer is the published architecture: sizes, costs, shapes, recording, ISR hook, init."""
import math

import pytest
import torch
from torch import nn

import segviz
from segviz.registry import get_spec
from segviz.models.segformer import (
    EfficientSelfAttention,
    MixFFN,
    MixTransformer,
    OverlapPatchEmbed,
    SegFormer,
)
from tests.toys import meta_model

# Xie et al. 2021, Table 1, as the registry entries carry it (segviz.registry.get_spec(name).published)
PUBLISHED = {name: get_spec(name).published for name in segviz.list_models("segformer-b")}



@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_param_counts_match_the_paper(name):
    pub = PUBLISHED[name]
    enc_pub, dec_pub, total_pub = pub["encoder_params_m"], pub["decoder_params_m"], pub["params_m"]
    model = meta_model(name, num_classes=pub["num_classes"])
    enc = segviz.count_params(model.encoder) / 1e6
    dec = segviz.count_params(model.decoder) / 1e6
    assert segviz.count_params(model) / 1e6 == pytest.approx(enc + dec)
    assert round(enc + dec, 1) == total_pub
    assert round(dec, 1) == dec_pub
    # The paper's encoder column is (rounded total) - (rounded decoder): B0 has 3.32 M, B1 13.15 M
    # and B3 44.07 M encoder parameters, listed as 3.4, 13.1 and 44.0.
    assert round(round(enc + dec, 1) - round(dec, 1), 1) == enc_pub
    assert abs(enc - enc_pub) < 0.1


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_gmacs_match_the_paper(name):
    pub = PUBLISHED[name]
    report = segviz.flops(meta_model(name), (1, 3, *pub["input_size"]), device="meta")
    assert report.total == pytest.approx(pub["gmacs"], rel=0.03)
    # the attention matmuls are part of the count (mmcv-style tables include them)
    attn = report.per_module["encoder.stages.0.blocks.0.attn"]
    linears = sum(report.per_module[f"encoder.stages.0.blocks.0.attn.{n}"] for n in ("q", "kv", "proj", "sr"))
    assert attn > linears


def test_published_numbers_live_in_the_registry():
    assert sorted(PUBLISHED) == [f"segformer-b{i}" for i in range(6)]
    b0 = PUBLISHED["segformer-b0"]
    assert (b0["params_m"], b0["gmacs"], b0["input_size"]) == (3.8, 8.4, (512, 512))
    assert "Xie et al. 2021" in b0["source"]
    with pytest.raises(TypeError):
        b0["gmacs"] = 1.0  # read-only
    assert get_spec("segformer-nano").published == {}
    # B5's table entry is at 640x640; the paper gives 111.6 at 512x512 as well
    b5 = segviz.flops(meta_model("segformer-b5"), (1, 3, 512, 512), device="meta")
    assert b5.total == pytest.approx(PUBLISHED["segformer-b5"]["gmacs_at_512"], rel=0.03)


def test_b0_stage_shapes_at_512():
    model = meta_model("segformer-b0")
    feats = model.encoder(torch.zeros(1, 3, 512, 512, device="meta"))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 128, 128), (1, 64, 64, 64), (1, 160, 32, 32), (1, 256, 16, 16)]
    assert tuple(model(torch.zeros(1, 3, 512, 512, device="meta")).shape) == (1, 150, 128, 128)


def test_decoder_width_per_variant():
    assert meta_model("segformer-b1").decoder.linear_pred.in_channels == 256
    assert meta_model("segformer-b2").decoder.linear_pred.in_channels == 768


def test_patch_embed_overlaps_and_shapes():
    emb = OverlapPatchEmbed(3, 8, patch_size=7, stride=4)
    assert (emb.proj.kernel_size, emb.proj.stride, emb.proj.padding) == ((7, 7), (4, 4), (3, 3))
    assert emb.norm.eps == 1e-5
    tokens, hw = emb(torch.randn(2, 3, 30, 41))
    assert hw == (8, 11) and tokens.shape == (2, 88, 8)
    emb3 = OverlapPatchEmbed(8, 16, patch_size=3, stride=2, eps=1e-6)
    assert emb3.proj.padding == (1, 1) and emb3.norm.eps == 1e-6


@pytest.mark.parametrize("size", [(97, 131), (64, 200), (33, 47)])
def test_runs_at_odd_sizes(size):
    model = segviz.create_model("segformer-nano").eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        logits = model(x)
        full = model.predict(x)
    h, w = size
    classes = get_spec("segformer-nano").config["num_classes"]
    assert classes == 6  # the Scenes classes
    assert logits.shape == (1, classes, math.ceil(h / 4), math.ceil(w / 4))
    assert full.shape == (1, classes, h, w)
    assert torch.isfinite(full).all()


def test_too_small_input_is_a_clear_error():
    model = segviz.create_model("segformer-nano")
    with pytest.raises(ValueError, match="larger than the feature map"):
        model(torch.randn(1, 3, 16, 16))


def test_recorded_attention_has_reduced_keys_and_does_not_change_output():
    model = segviz.create_model("segformer-nano").eval()
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        plain = model(x)
        with segviz.capture(model) as rec:
            recorded = model(x)
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=1e-5)
    stage_hw = [tuple(rec.features[f"encoder.stages.{i}"].shape[-2:]) for i in range(4)]
    assert stage_hw == [(25, 33), (13, 17), (7, 9), (4, 5)]
    for i, (h, w) in enumerate(stage_hw):
        attn = model.encoder.stages[i].blocks[0].attn
        r = rec.attention[f"encoder.stages.{i}.blocks.0.attn"]
        sr = attn.sr_ratio
        assert r.q_hw == (h, w) and r.k_hw == (h // sr, w // sr)
        assert r.probs.shape == (2, attn.num_heads, h * w, (h // sr) * (w // sr))
        torch.testing.assert_close(r.probs.sum(-1), torch.ones(r.probs.shape[:-1]))


def test_decoder_records_its_steps():
    model = segviz.create_model("segformer-nano").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), segviz.capture(model) as rec:
        logits = model(x)
    for i in range(4):
        assert rec.features[f"decoder.linear_c.{i}"].shape == (1, 64, 16, 24)
    fused = rec.features["decoder"]
    assert fused.shape == (1, 64, 16, 24) and (fused >= 0).all()  # after the ReLU
    with torch.no_grad():
        torch.testing.assert_close(model.decoder.linear_pred(fused), logits)


def test_layer_norm_epsilons_follow_the_official_code():
    model = segviz.create_model("segformer-nano")
    stage = model.encoder.stages[0]
    assert stage.patch_embed.norm.eps == 1e-5
    assert stage.blocks[0].attn.norm.eps == 1e-5
    assert stage.blocks[0].norm1.eps == stage.blocks[0].norm2.eps == stage.norm.eps == 1e-6
    hf_like = segviz.create_model("segformer-nano", layer_norm_eps=1e-5)
    assert {m.eps for m in hf_like.modules() if isinstance(m, nn.LayerNorm)} == {1e-5}


def test_official_init():
    torch.manual_seed(0)
    model = segviz.create_model("segformer-b0")
    fc1 = model.encoder.stages[3].blocks[0].mlp.fc1
    assert fc1.weight.std().item() == pytest.approx(0.02, rel=0.1)
    # (timm's / torch's trunc_normal_ cut at +-2 absolute, i.e. 100 std here: plain normal in effect)
    assert (fc1.bias == 0).all()
    sr = model.encoder.stages[0].blocks[0].attn.sr  # fan_out = 8*8*32
    assert sr.weight.std().item() == pytest.approx(math.sqrt(2 / (8 * 8 * 32)), rel=0.1)
    dw = model.encoder.stages[0].blocks[0].mlp.dwconv  # depthwise: fan_out = 3*3*128/128
    assert dw.weight.std().item() == pytest.approx(math.sqrt(2 / 9), rel=0.1)
    assert model.decoder.linear_fuse.conv.bias is None
    assert model.encoder.stages[0].blocks[1].drop_path.p == pytest.approx(0.1 / 7)
    assert model.decoder.dropout.p == 0.1


def test_attention_reduces_each_side_by_sr():
    attn = EfficientSelfAttention(dim=8, num_heads=2, sr_ratio=4)
    assert (attn.sr.kernel_size, attn.sr.stride) == ((4, 4), (4, 4))
    x = torch.randn(1, 16 * 12, 8)
    kv, k_hw = attn.reduce(x, (16, 12))
    assert k_hw == (4, 3) and kv.shape == (1, 12, 8)  # N / sr² = 192 / 16
    assert attn(x, (16, 12)).shape == x.shape
    plain = EfficientSelfAttention(dim=8, num_heads=2, sr_ratio=1)
    assert not hasattr(plain, "sr") and plain.reduce(x, (16, 12))[0] is x


def test_isr_hook_pools_after_the_learned_conv_and_its_norm():
    model = segviz.create_model("segformer-nano").eval()
    roles = [(blk.attn.isr_role, blk.attn.train_ratio) for s in model.encoder.stages for blk in s.blocks]
    assert roles == [(("encoder", 1), 8), (("encoder", 2), 4), (("encoder", 3), 2), (("encoder", 4), 1)]
    attn1 = model.encoder.stages[0].blocks[0].attn
    attn4 = model.encoder.stages[3].blocks[0].attn
    attn1.inference_ratio, attn4.inference_ratio = 16, 2
    with torch.no_grad(), segviz.capture(model) as rec:
        model(torch.randn(1, 3, 128, 128))
    assert rec.attention["encoder.stages.0.blocks.0.attn"].k_hw == (2, 2)  # 32 / 16
    assert rec.attention["encoder.stages.3.blocks.0.attn"].k_hw == (2, 2)  # 4 / 2
    x = torch.randn(1, 32 * 32, 16)
    kv, k_hw = attn1.reduce(x, (32, 32))
    conv = attn1.sr(x.transpose(1, 2).reshape(1, 16, 32, 32))  # (1, 16, 4, 4)
    normed = attn1.norm(conv.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(1, 16, 4, 4)
    expected = nn.functional.avg_pool2d(normed, 2).flatten(2).transpose(1, 2)
    assert k_hw == (2, 2)
    torch.testing.assert_close(kv, expected)


def test_isr_ratio_must_be_a_multiple_of_sr():
    attn = EfficientSelfAttention(dim=8, num_heads=1, sr_ratio=4)
    attn.isr_check(8)
    with pytest.raises(ValueError, match="multiple of the learned reduction 4"):
        attn.isr_check(6)
    with pytest.raises(ValueError, match="positive integers"):
        attn.isr_check(0)


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="not divisible"):
        EfficientSelfAttention(dim=10, num_heads=3, sr_ratio=1)
    with pytest.raises(ValueError, match="MixTransformer: depths needs 4 integers, one per stage"):
        MixTransformer(depths=(1, 1, 1))
    with pytest.raises(ValueError, match="unknown override"):
        segviz.create_model("segformer-nano", depth=3)


@pytest.mark.parametrize("bad, match", [
    (dict(depths=(2, -1, 2, 2)), r"SegFormer: depths must all be at least 1, got \(2, -1, 2, 2\)"),
    (dict(depths=(2, 2, 2)), r"SegFormer: depths needs 4 integers, one per stage; got \(2, 2, 2\)"),
    (dict(embed_dims=(32, 64, 0, 256)), r"embed_dims must all be at least 1"),
    (dict(num_heads=(1, 2, 0, 8)), r"num_heads must all be at least 1"),
    (dict(num_heads=(1, 3, 5, 8)), r"stage 2 width 64 is not divisible by its 3 heads"),
    (dict(sr_ratios=(8, 4, 2, 0)), r"sr_ratios must all be at least 1"),
    (dict(sr_ratios=(8, 4, 2.5, 1)), r"sr_ratios needs 4 integers"),
    (dict(depths=(2, True, 2, 2)), r"depths needs 4 integers"),
    (dict(layer_norm_eps=-1e-6), r"SegFormer: layer_norm_eps .* must be a positive finite number, got -1e-06"),
    (dict(layer_norm_eps=float("nan")), r"layer_norm_eps .* must be a positive finite number, got nan"),
    (dict(mlp_ratio=0), r"SegFormer: mlp_ratio must be a positive finite number, got 0"),
    (dict(mlp_ratio=0.01), r"mlp_ratio=0.01 gives stage 1 \(width 32\) no hidden channels"),
    (dict(decoder_dim=0), r"SegFormer: decoder_dim must be an integer >= 1, got 0"),
    (dict(num_classes=0), r"SegFormer: num_classes must be an integer >= 1, got 0"),
    (dict(in_chans=0), r"SegFormer: in_chans must be an integer >= 1, got 0"),
    (dict(drop_path_rate=1.0), r"SegFormer: drop_path_rate must be a number in \[0, 1\), got 1.0"),
    (dict(decoder_dropout=-0.1), r"SegFormer: decoder_dropout must be a number in \[0, 1\), got -0.1"),
    (dict(qkv_bias="yes"), r"SegFormer: qkv_bias must be True or False"),
])
def test_every_config_field_is_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        SegFormer(**bad)


def test_other_input_channels():
    model = SegFormer(num_classes=2, in_chans=1, embed_dims=(8, 8, 8, 8), depths=(1, 1, 1, 1),
                      num_heads=(1, 1, 1, 1), decoder_dim=8).eval()
    assert model.predict(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)
    with pytest.raises(ValueError, match=r"SegFormer expects a float tensor \(B, 1, H, W\)"):
        model(torch.randn(1, 3, 64, 64))


def test_mixffn_has_depthwise_conv_between_linears():
    ffn = MixFFN(8, 32)
    assert ffn.dwconv.groups == 32 and ffn.dwconv.kernel_size == (3, 3) and ffn.dwconv.padding == (1, 1)
    assert ffn(torch.randn(2, 20, 8), (4, 5)).shape == (2, 20, 8)


def test_own_layout_round_trip(tmp_path):
    from safetensors.torch import save_file

    model = segviz.create_model("segformer-nano").eval()
    save_file(model.state_dict(), str(tmp_path / "nano.safetensors"))
    loaded = segviz.create_model("segformer-nano", weights=tmp_path / "nano.safetensors").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert isinstance(loaded, SegFormer)
