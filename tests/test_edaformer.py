"""EDAFormer: every block's shapes and equations, the configs, and the official checkpoint reader."""
import math
import re

import pytest
import torch
import torch.nn.functional as F

import segviz
from segviz.inspect import capture, count_params
from segviz.inspect.isr import isr
from segviz.models.edaformer import (
    AllAttentionDecoder, EDAFormer, EFTBlock, EFTEncoder, EmbeddingFreeAttention, EncoderFeedForward,
    checkpoint_filter_fn, to_official,
)
from segviz.data import SCENE_CLASSES
from segviz.registry import get_spec
from segviz.models.segformer import MixFFN
from segviz.nn import map_to_tokens, tokens_to_map

NANO = dict(embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8), depths=(1, 1, 2, 1))
NANO_CLASSES = get_spec("edaformer-nano").config["num_classes"]  # the Scenes classes


def _reference_efa(attn, x, hw, pool="avg"):
    """EFA written out from the paper's equations, one head at a time."""
    b, n, c = x.shape
    r = attn.ratio
    m = tokens_to_map(x, hw)
    pooled = F.avg_pool2d(m, r) if pool == "avg" else F.max_pool2d(m, r)
    kv = map_to_tokens(F.conv2d(pooled, attn.sr.weight, attn.sr.bias))
    if attn.decoder:
        kv = F.gelu(F.layer_norm(kv, (c,), attn.norm.weight, attn.norm.bias, eps=1e-5))
    d = c // attn.heads
    heads = []
    for i in range(attn.heads):
        q_i, kv_i = x[..., i * d:(i + 1) * d], kv[..., i * d:(i + 1) * d]
        heads.append(torch.softmax(q_i @ kv_i.transpose(1, 2) / math.sqrt(d), -1) @ kv_i)
    return F.linear(torch.cat(heads, -1), attn.proj.weight, attn.proj.bias)


@pytest.mark.parametrize("decoder", [False, True])
def test_efa_matches_the_equations_and_has_no_qkv_projections(decoder):
    attn = EmbeddingFreeAttention(dim=16, heads=4, pool_ratio=4, decoder=decoder)
    x = torch.randn(2, 8 * 8, 16)
    with capture(attn) as rec:
        out = attn(x, (8, 8))
    assert out.shape == (2, 64, 16)
    assert (out - _reference_efa(attn, x, (8, 8))).abs().max() < 1e-5
    record = rec.attention[""]
    assert record.probs.shape == (2, 4, 64, 4) and record.q_hw == (8, 8) and record.k_hw == (2, 2)
    # embedding-free: the only Linear is the output projection, the only conv the shared 1x1 on k/v
    linears = [n for n, m in attn.named_modules() if isinstance(m, torch.nn.Linear)]
    convs = [n for n, m in attn.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert linears == ["proj"] and convs == ["sr"] and attn.sr.kernel_size == (1, 1)
    assert count_params(attn) == 2 * (16 * 16 + 16) + (2 * 16 if decoder else 0)
    if decoder:
        assert attn.norm.eps == 1e-5


def test_efa_floors_ragged_maps_and_ratio_one_keeps_every_token():
    attn = EmbeddingFreeAttention(dim=8, heads=2, pool_ratio=4)
    x = torch.randn(1, 9 * 10, 8)
    with capture(attn) as rec:
        out = attn(x, (9, 10))
    assert rec.attention[""].k_hw == (2, 2)  # floor(9/4), floor(10/4), as nn.AvgPool2d
    assert (out - _reference_efa(attn, x, (9, 10))).abs().max() < 1e-5
    full = EmbeddingFreeAttention(dim=8, heads=2, pool_ratio=1)
    with capture(full) as rec:
        full(x, (9, 10))
    assert rec.attention[""].k_hw == (9, 10)


def test_efa_max_pooling_option():
    attn = EmbeddingFreeAttention(dim=8, heads=2, pool_ratio=2)
    x = torch.randn(1, 36, 8)
    avg = attn(x, (6, 6))
    attn.isr_pool = "max"
    out = attn(x, (6, 6))
    assert (out - _reference_efa(attn, x, (6, 6), pool="max")).abs().max() < 1e-5
    assert not torch.allclose(out, avg)


def test_feed_forward_layers():
    x = torch.randn(2, 12, 8)
    enc = EncoderFeedForward(8, 30)
    dw = lambda t, m: map_to_tokens(m.dwconv(tokens_to_map(t, (3, 4))))  # noqa: E731
    expected = enc.fc2(F.gelu(dw(torch.relu(enc.fc1(x)), enc)))
    assert (enc(x, (3, 4)) - expected).abs().max() < 1e-6
    dec = MixFFN(8, 30)
    assert (dec(x, (3, 4)) - dec.fc2(F.gelu(dw(dec.fc1(x), dec)))).abs().max() < 1e-6


@pytest.mark.parametrize("decoder", [False, True])
def test_eft_block_is_pre_norm_residual(decoder):
    block = EFTBlock(dim=16, heads=2, pool_ratio=2, mlp_ratio=2.0, drop_path=0.3, decoder=decoder).eval()
    x = torch.randn(2, 16, 16)
    y = x + block.attn(block.norm1(x), (4, 4))
    y = y + block.mlp(block.norm2(y), (4, 4))
    assert torch.allclose(block(x, (4, 4)), y, atol=1e-6)
    assert block.norm1.eps == block.norm2.eps == (1e-5 if decoder else 1e-6)
    assert isinstance(block.mlp, MixFFN) and isinstance(block.mlp, EncoderFeedForward) != decoder
    assert block.mlp.fc1.out_features == 32


def test_encoder_stage_shapes_and_feature_records():
    enc = EFTEncoder(NANO["embed_dims"], NANO["num_heads"], NANO["depths"], (8, 4, 2, 1), mlp_ratio=4.0)
    with capture(enc, kinds=["feature"], features="stages.*") as rec:  # a part of a model: name its features
        feats = enc(torch.randn(2, 3, 128, 96))
    assert [tuple(f.shape) for f in feats] == [(2, 16, 32, 24), (2, 32, 16, 12), (2, 64, 8, 6), (2, 128, 4, 3)]
    assert sorted(rec.features) == [f"stages.{i}" for i in range(4)]
    assert torch.equal(rec.features["stages.2"], feats[2])
    for i, stage in enumerate(enc.stages):
        assert stage.norm.eps == 1e-6
        assert [b.attn.isr_role for b in stage.blocks] == [("encoder", i + 1)] * NANO["depths"][i]
        assert stage.patch_embed.proj.kernel_size == ((7, 7) if i == 0 else (3, 3))


def test_decoder_upsamples_and_concatenates_deepest_first():
    dec = AllAttentionDecoder((32, 64, 128), (2, 4, 8), (3, 2, 1), (4, 2, 1), 2.0, 24, num_classes=5).eval()
    feats = [torch.randn(1, c, s, s) for c, s in ((16, 32), (32, 16), (64, 8), (128, 4))]
    with capture(dec, kinds=["feature"], features="stage*") as rec:
        out = dec(feats)
    assert out.shape == (1, 5, 16, 16)
    s2, s3, s4 = (rec.features[f"stage{s}"] for s in (2, 3, 4))
    assert s4.shape == (1, 128, 4, 4) and s3.shape == (1, 64, 8, 8) and s2.shape == (1, 32, 16, 16)
    up = lambda t: F.interpolate(t, size=(16, 16), mode="bilinear", align_corners=False)  # noqa: E731
    expected = dec.classifier(dec.fuse(torch.cat([up(s4), up(s3), s2], 1)))
    assert torch.allclose(out, expected, atol=1e-5)
    assert dec.fuse.conv.bias is None and dec.fuse.conv.in_channels == 32 + 64 + 128
    # pool ratios are given for stages 2, 3, 4; roles name the encoder stage each reads
    for s, ratio, heads, depth in ((2, 4, 2, 1), (3, 2, 4, 2), (4, 1, 8, 3)):
        blocks = getattr(dec, f"stage{s}").blocks
        assert len(blocks) == depth
        assert all(b.attn.train_ratio == ratio and b.attn.heads == heads and b.attn.isr_role == ("decoder", s)
                   and b.attn.decoder for b in blocks)


@pytest.mark.parametrize("depths", [(2, 2, 2), (1, 2, 3), (1, 4, 1)])
def test_decoder_block_layouts_of_the_paper(depths):
    model = EDAFormer(num_classes=3, decoder_depths=depths, decoder_dim=16, **NANO).eval()
    assert [len(getattr(model.decoder, f"stage{s}").blocks) for s in (4, 3, 2)] == list(depths)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3, 8, 8)


def test_model_logits_at_one_eighth_and_bad_input():
    model = segviz.create_model("edaformer-nano").eval()
    assert model(torch.randn(2, 3, 128, 160)).shape == (2, NANO_CLASSES, 16, 20)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        model(torch.randn(3, 128, 128))


@pytest.mark.parametrize("bad, match", [
    (dict(num_heads=(1, 3, 4, 8)), "stage 2 width 32 is not divisible by its 3 heads"),
    (dict(num_heads=(1, 2, 0, 8)), "num_heads must all be at least 1"),
    (dict(depths=(1, 1, 1)), "depths needs 4 integers"),
    (dict(depths=(1, -1, 2, 1)), r"EDAFormer: depths must all be at least 1, got \(1, -1, 2, 1\)"),
    (dict(embed_dims=(16, 32, 0, 128)), "embed_dims must all be at least 1"),
    (dict(decoder_depths=(3, 0, 1)), "decoder_depths must all be at least 1"),
    (dict(decoder_depths=(3, 2)), r"decoder_depths needs 3 integers, one per decoder stage \(4, 3, 2\)"),
    (dict(pool_ratios=(8, 4, 2.5, 1)), "pool_ratios needs 4 integers"),
    (dict(pool_ratios=(8, 4, 2, 0)), "pool_ratios must all be at least 1"),
    (dict(decoder_pool_ratios=(4, -2, 1)), "decoder_pool_ratios must all be at least 1"),
    (dict(mlp_ratio=-1.0), "EDAFormer: mlp_ratio must be a positive finite number, got -1.0"),
    (dict(decoder_mlp_ratio=float("inf")), "decoder_mlp_ratio must be a positive finite number, got inf"),
    (dict(decoder_dim=0), "EDAFormer: decoder_dim must be an integer >= 1, got 0"),
    (dict(num_classes=-3), "EDAFormer: num_classes must be an integer >= 1, got -3"),
    (dict(in_chans=0), "EDAFormer: in_chans must be an integer >= 1, got 0"),
    (dict(drop_path_rate=-0.1), r"drop_path_rate must be a number in \[0, 1\), got -0.1"),
    (dict(decoder_drop_path=1), r"decoder_drop_path must be a number in \[0, 1\), got 1"),
    (dict(dropout=1.5), r"EDAFormer: dropout must be a number in \[0, 1\), got 1.5"),
])
def test_config_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        EDAFormer(**{**dict(num_classes=3, **NANO), **bad})


def test_official_initialisation():
    model = EDAFormer(num_classes=3, **NANO)
    fc1 = model.encoder.stages[3].blocks[0].mlp.fc1
    assert abs(fc1.weight.std().item() - 0.02) < 0.002 and fc1.bias.abs().max() == 0
    sr = model.decoder.stage2.blocks[0].attn.sr  # 1x1, 32 -> 32: N(0, 2 / 32)
    assert abs(sr.weight.std().item() - math.sqrt(2 / 32)) < 0.1 * math.sqrt(2 / 32)
    assert torch.equal(model.decoder.stage4.blocks[0].attn.norm.weight, torch.ones(128))


def test_model_predict_is_at_input_size():
    model = segviz.create_model("edaformer-nano").eval()
    x = torch.randn(2, 3, 72, 88)
    with torch.no_grad():
        full = model.predict(x)
        expected = F.interpolate(model(x), size=(72, 88), mode="bilinear", align_corners=False)
    assert full.shape == (2, NANO_CLASSES, 72, 88)
    assert torch.equal(full, expected)


@pytest.mark.parametrize("name", ["edaformer-t", "edaformer-b"])
def test_published_parameter_counts(name):
    """The official code's exact counts (less its unused conv_seg), read from the registry entry."""
    pub = get_spec(name).published
    with torch.device("meta"):
        model = segviz.create_model(name)
    assert count_params(model) == pub["params"]
    assert pub["params_official"] - pub["params"] == 19_350  # conv_seg: 150 x 128 + 150 (T); B as the official
    assert round(pub["params"] / 1e6, 1) == pub["params_m"]


@pytest.mark.parametrize("name", ["edaformer-t", "edaformer-b"])
def test_published_gmacs_with_and_without_isr(name):
    """GMACs as FlopCounterMode counts the official code (the *_flop_counter figures), and ISR's savings."""
    pub = get_spec(name).published
    with torch.device("meta"):
        model = segviz.create_model(name, num_classes=pub["num_classes"]).eval()
    shape = (1, 3, *pub["input_size"])
    assert segviz.flops(model, shape, device="meta").total == pytest.approx(pub["gmacs_flop_counter"], abs=0.015)
    assert pub["gmacs_flop_counter"] == pytest.approx(pub["gmacs"], rel=0.01)  # mmcv adds biases, ReLU, pooling
    for setting in pub["isr"]:
        with isr(model, encoder=setting["encoder"], decoder=setting["decoder"]):
            total = segviz.flops(model, shape, device="meta").total
        assert total == pytest.approx(setting["gmacs_flop_counter"], abs=0.015)


def test_published_cityscapes_isr_saving():
    """EDAFormer-T on a full Cityscapes image: 151.5 GMACs, -37% and -61% (the paper's "up to 61%") with ISR."""
    city = get_spec("edaformer-t").published["cityscapes"]
    with torch.device("meta"):
        model = segviz.create_model("edaformer-t", num_classes=city["num_classes"]).eval()
    shape = (1, 3, *city["input_size"])
    base = segviz.flops(model, shape, device="meta").total
    assert base == pytest.approx(city["gmacs"], rel=0.01)
    for setting in city["isr"]:
        with isr(model, encoder=setting["encoder"], decoder=setting["decoder"]):
            reduced = segviz.flops(model, shape, device="meta").total
        assert 1 - reduced / base == pytest.approx(1 - setting["gmacs"] / city["gmacs"], abs=0.01)


def test_published_config_details():
    with torch.device("meta"):
        tiny, base = segviz.create_model("edaformer-t"), segviz.create_model("edaformer-b")
    assert tiny.encoder.stages[0].blocks[0].mlp.fc1.out_features == int(32 * 3.8)
    assert base.decoder.fuse.conv.out_channels == 768 and tiny.decoder.fuse.conv.out_channels == 128
    assert len(base.encoder.stages[2].blocks) == 22
    assert segviz.create_model("edaformer-nano").decoder.classifier.out_channels == len(SCENE_CLASSES) == 6


# ---------------------------------------------------------------------------------------
# Official checkpoints
# ---------------------------------------------------------------------------------------
_ISSUE_LAYOUT = [  # the official key families, as issue 4 lists them
    r"backbone\.patch_embed[1-4]\.(proj|norm)\.(weight|bias)",
    r"backbone\.block[1-4]\.\d+\.(norm1|norm2)\.(weight|bias)",
    r"backbone\.block[1-4]\.\d+\.attn\.(sr|proj)\.(weight|bias)",
    r"backbone\.block[1-4]\.\d+\.mlp\.(fc1|dwconv\.dwconv|fc2)\.(weight|bias)",
    r"backbone\.norm[1-4]\.(weight|bias)",
    r"decode_head\.attn(4|44|444|3|33|2)\.(norm1|norm2)\.(weight|bias)",
    r"decode_head\.attn(4|44|444|3|33|2)\.attn\.(sr|norm|proj)\.(weight|bias)",
    r"decode_head\.attn(4|44|444|3|33|2)\.mlp\.(fc1|dwconv\.dwconv|fc2)\.(weight|bias)",
    r"decode_head\.linear_fuse\.conv\.weight",
    r"decode_head\.linear_fuse\.bn\.(weight|bias|running_mean|running_var|num_batches_tracked)",
    r"decode_head\.linear_pred\.(weight|bias)",
]


def _official(model):
    return {to_official(k): v.clone() for k, v in model.state_dict().items()}


def test_official_layout_of_the_published_config():
    with torch.device("meta"):
        model = segviz.create_model("edaformer-t")
    keys = _official(model)
    assert all(any(re.fullmatch(p, k) for p in _ISSUE_LAYOUT) for k in keys), [
        k for k in keys if not any(re.fullmatch(p, k) for p in _ISSUE_LAYOUT)]
    assert {k.split(".")[1] for k in keys if k.startswith("decode_head.attn")} == {
        "attn4", "attn44", "attn444", "attn3", "attn33", "attn2"}
    assert keys["backbone.block1.0.attn.sr.weight"].shape == (32, 32, 1, 1)
    assert keys["backbone.block3.9.mlp.dwconv.dwconv.weight"].shape == (486, 1, 3, 3)
    assert keys["decode_head.attn444.attn.norm.weight"].shape == (256,)
    assert "decode_head.linear_fuse.conv.bias" not in keys


@pytest.fixture
def trained_nano():
    model = segviz.create_model("edaformer-nano")
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the round trip checks them too
        model.decoder.fuse.bn.running_mean.uniform_(-1, 1)
        model.decoder.fuse.bn.running_var.uniform_(0.5, 2)
    return model.eval()


@pytest.mark.parametrize("wrapped", [True, False])
def test_official_checkpoint_round_trip(tmp_path, trained_nano, wrapped):
    state = _official(trained_nano)
    state["decode_head.conv_seg.weight"] = torch.randn(NANO_CLASSES, 64, 1, 1)  # unused by the official head
    path = tmp_path / "edaformer_nano.pth"
    torch.save({"state_dict": state, "meta": {}} if wrapped else state, path)
    loaded = segviz.create_model("edaformer-nano", weights=str(path)).eval()
    x = torch.randn(1, 3, 96, 128)
    assert torch.equal(loaded(x), trained_nano(x))


def test_official_checkpoint_errors(tmp_path, trained_nano):
    state = _official(trained_nano)
    del state["decode_head.attn33.mlp.fc1.weight"]
    state["decode_head.attn5.attn.sr.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError) as err:
        segviz.create_model("edaformer-nano", weights=str(path))
    message = str(err.value)
    assert "missing keys (1): decode_head.attn33.mlp.fc1.weight" in message
    assert "unexpected keys (1): decode_head.attn5.attn.sr.weight" in message
    torch.save(_official(trained_nano), path)
    with pytest.raises(ValueError, match=f"{NANO_CLASSES}-class classifier .* pass num_classes={NANO_CLASSES}"):
        segviz.create_model("edaformer-nano", num_classes=19, weights=str(path))


def test_checkpoint_filter_reads_both_layouts_and_refuses_others(trained_nano):
    own = trained_nano.state_dict()
    official = _official(trained_nano)
    del official["decode_head.linear_fuse.bn.num_batches_tracked"]  # some files lack the counter
    for given in (own, official):
        converted = checkpoint_filter_fn(given, trained_nano)
        assert converted.keys() == own.keys()
        assert all(torch.equal(converted[k], own[k]) for k in own if not k.endswith("num_batches_tracked"))
    with pytest.raises(ValueError, match="not an EDAFormer checkpoint in a known layout.*segformer.encoder"):
        checkpoint_filter_fn({"segformer.encoder.block.0.0.x": torch.zeros(1)}, trained_nano)
