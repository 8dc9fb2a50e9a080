"""segviz.fuse_for_inference: the fused SegFormer decoder computes the readable model's
function (<= 1e-5) on every variant, leaves the readable model alone, keeps capture and ISR
working, really saves the fuse's multiply-adds, and refuses what it cannot fuse; folding
every convolution-BatchNorm pair keeps every other model kind's function too."""
import pytest
import torch
from torch import nn

import segviz
from segviz.inspect.fuse import fuse_for_inference
from segviz.models.segformer import AllMLPDecoder, FusedMLPDecoder
from segviz.nn.layers import FoldedBatchNorm, fold_batch_norm
from segviz.registry import get_spec

SEGFORMERS = segviz.list_models("segformer-")
X = torch.randn(2, 3, 72, 88)  # odd size: stage maps 18x22, 9x11, 5x6, 3x3
TOL = 1e-5


def test_every_variant_is_listed():
    assert {f"segformer-b{i}" for i in range(6)} | {"segformer-nano"} <= set(SEGFORMERS)


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine, so folding them is really exercised."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)


def _decoder(name: str) -> AllMLPDecoder:
    config = get_spec(name).config
    decoder = AllMLPDecoder(config["embed_dims"], config["decoder_dim"], config["num_classes"])
    _randomise_bn(decoder)
    return decoder.eval()


def _features(decoder: AllMLPDecoder, batch: int = 2) -> list[torch.Tensor]:
    sizes = [(18, 22), (9, 11), (5, 6), (3, 3)]
    return [torch.randn(batch, p.proj.in_features, h, w) for p, (h, w) in zip(decoder.linear_c, sizes)]


@pytest.mark.parametrize("name", SEGFORMERS)
@torch.no_grad()
def test_fused_decoder_equals_the_readable_one_for_every_variant(name):
    # the transform touches only the decoder; each variant's decoder config comes from the registry
    decoder = _decoder(name)
    fused = fuse_for_inference(decoder)
    assert isinstance(fused, FusedMLPDecoder) and not fused.training
    feats = _features(decoder)
    ref = decoder(feats)
    out = fused(feats)
    assert out.shape == ref.shape == (2, decoder.linear_pred.out_channels, 18, 22)
    assert ref.abs().max() > 0.1  # a real signal, not two zero maps
    assert (out - ref).abs().max() <= TOL
    # and the fused decoder really is different work: no 4C-wide 1x1 conv left
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Dropout2d)) for m in fused.modules())


@pytest.fixture(scope="module", params=[
    ("segformer-nano", {}),
    ("segformer-b0", {}),
    ("segformer-b2", {"depths": (1, 1, 1, 1)}),  # B2's wide encoder and 768-wide decoder, shallow to stay fast
], ids=["nano", "b0", "b2-shallow"])
def pair(request):
    name, overrides = request.param
    torch.manual_seed(0)
    model = segviz.create_model(name, **overrides)
    _randomise_bn(model)
    model.eval()
    return model, fuse_for_inference(model)


@torch.no_grad()
def test_fused_model_equals_the_readable_one(pair):
    model, fused = pair
    ref = model(X)
    out = fused(X)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= TOL
    assert (fused.predict(X) - model.predict(X)).abs().max() <= TOL
    # batch > 1 means each image on its own: the second image alone gives its own logits
    assert (fused(X[1:]) - out[1:]).abs().max() <= TOL


@torch.no_grad()
def test_the_readable_model_is_left_untouched():
    torch.manual_seed(1)
    model = segviz.create_model("segformer-nano")
    _randomise_bn(model)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_for_inference(model)
    assert model.training and not fused.training  # the copy is in eval mode, the original keeps its mode
    assert type(model.decoder) is AllMLPDecoder and type(fused.decoder) is FusedMLPDecoder
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert fused.encoder is not model.encoder  # a deep copy: nothing shared
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(fused.encoder.parameters(), model.encoder.parameters()))
    # a model in training mode is fused as what it computes in eval mode
    model.eval()
    assert (fused(X) - model(X)).abs().max() <= TOL


def test_the_fused_model_refuses_training():
    fused = fuse_for_inference(segviz.create_model("segformer-nano"))
    with pytest.raises(ValueError, match="inference only.*train the readable model"):
        fused.train()
    fused.eval()  # still fine


@torch.no_grad()
def test_capture_records_the_same_features_except_the_per_stage_maps(pair):
    model, fused = pair
    with segviz.capture(model) as rec:
        model(X)
    with segviz.capture(fused) as rec_fused:
        fused(X)
    per_stage = {f"decoder.linear_c.{i}" for i in range(4)}
    assert per_stage <= rec.features.keys()
    # the per-stage maps U(W_i x_i + b_i) are never formed in the fused decoder (documented)
    assert rec_fused.features.keys() == rec.features.keys() - per_stage
    assert "decoder" in rec_fused.features  # the fused map F, emitted by the decoder
    for name, value in rec_fused.features.items():
        ref = rec.features[name]
        # float rounding grows with the values (the fused map F reaches ~10 here): 1e-5 of the largest
        assert (value - ref).abs().max() <= TOL * max(1.0, ref.abs().max().item()), name
    assert rec_fused.attention.keys() == rec.attention.keys() and rec.attention
    for name, record in rec_fused.attention.items():
        assert torch.allclose(record.probs, rec.attention[name].probs, atol=TOL), name


@torch.no_grad()
def test_isr_works_on_the_fused_model():
    # ISR acts on the encoder, which fusing leaves as it is: one small model is enough
    torch.manual_seed(2)
    model = segviz.create_model("segformer-nano")
    _randomise_bn(model)
    model.eval()
    fused = fuse_for_inference(model)
    ratios = dict(encoder=(16, 8, 2, 1))
    first = "encoder.stages.0.blocks.0.attn"
    plain = fused(X)
    with segviz.capture(fused, include=first) as rec:
        fused(X)
    with segviz.isr(model, **ratios), segviz.isr(fused, **ratios):
        reduced = fused(X)
        assert (reduced - model(X)).abs().max() <= TOL
        with segviz.capture(fused, include=first) as rec_isr:
            fused(X)
    # ISR did act on the fused model: stage 1 attends to 4x fewer keys, and the logits moved
    assert rec_isr.attention[first].probs.shape[-1] * 4 == rec.attention[first].probs.shape[-1]
    assert not torch.equal(reduced, plain)
    assert torch.equal(fused(X), plain)  # and was undone


def test_the_fused_decoder_saves_the_fuse_multiply_adds():
    # readable: per-stage Linears + the 4C -> C fuse at 1/4; fused: one C_i -> C Linear per stage
    # (for B0 at 512, C = 256 at 128x128: 4.29 of its ~8.4 GMACs)
    model = segviz.create_model("segformer-nano")
    fused = fuse_for_inference(model)
    c, (h, w) = 64, (24, 20)
    readable = segviz.flops(model, (1, 3, 96, 80)).total
    saved = readable - segviz.flops(fused, (1, 3, 96, 80)).total
    assert saved == pytest.approx(4 * c * c * h * w / 1e9, rel=1e-6)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="needs a torch.nn.Module, got str"):
        fuse_for_inference("segformer-b0")
    with pytest.raises(ValueError, match="SwinClassifier has no exact inference transform; models with one: SegFormer"):
        fuse_for_inference(segviz.create_model("swin-nano"))  # LayerNorm only
    with pytest.raises(ValueError, match="has no exact inference transform"):
        fuse_for_inference(nn.Conv2d(3, 8, 1))
    with pytest.raises(ValueError, match="has no exact inference transform"):  # a BatchNorm before the conv
        fuse_for_inference(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 8, 1)))
    folded = fuse_for_inference(nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)))
    with pytest.raises(ValueError, match="already fused"):
        fuse_for_inference(folded)
    with pytest.raises(ValueError, match="for inference only"):
        folded.train()
    fused = fuse_for_inference(segviz.create_model("segformer-nano"))
    with pytest.raises(ValueError, match="already fused"):
        fuse_for_inference(fused)
    with pytest.raises(ValueError):  # the model's own input check still runs
        fused(torch.randn(1, 4, 32, 32))
    decoder = _decoder("segformer-nano")
    decoder.linear_fuse.bn = nn.BatchNorm2d(64, track_running_stats=False)
    with pytest.raises(ValueError, match="without running statistics"):
        fuse_for_inference(decoder)


def test_gradients_through_the_fused_model_match():
    # the in-place sum and ReLU must not break autograd (segviz.erf takes input gradients)
    model = segviz.create_model("segformer-nano").eval()
    fused = fuse_for_inference(model)
    grads = []
    for net in (model, fused):
        x = X[:1].clone().requires_grad_(True)
        net(x)[0, 1, 9, 11].backward()
        grads.append(x.grad)
    assert grads[0].abs().max() > 0
    assert (grads[1] - grads[0]).abs().max() <= TOL * grads[0].abs().max()


@torch.no_grad()
def test_a_fuse_conv_with_a_bias_folds_too():
    # the official fuse conv has none (mmseg drops it before a norm), but a bias would join the BN shift
    decoder = _decoder("segformer-nano")
    old = decoder.linear_fuse.conv
    decoder.linear_fuse.conv = nn.Conv2d(old.in_channels, old.out_channels, 1, bias=True)
    nn.init.normal_(decoder.linear_fuse.conv.bias)
    feats = _features(decoder)
    assert (fuse_for_inference(decoder)(feats) - decoder(feats)).abs().max() <= TOL


CONV_BN_MODELS = ["deeplabv3plus-nano", "deeplabv3-nano", "deeplabv3plus-r50", "upernet-swin-nano", "edaformer-nano",
                  "mask2former-r50", "dat-nano"]


@pytest.mark.parametrize("name", CONV_BN_MODELS)
@torch.no_grad()
def test_folding_every_conv_batch_norm_pair_keeps_the_function(name):
    """Every BatchNorm2d that follows a convolution is folded into it, none is left behind, and the
    fused model computes the readable one's outputs (BatchNorm statistics randomised first)."""
    torch.manual_seed(0)
    model = segviz.create_model(name)
    _randomise_bn(model)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    fused = fuse_for_inference(model)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert bns > 0 and not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert sum(isinstance(m, FoldedBatchNorm) for m in fused.modules()) == bns
    want, got = model(x), fused(x)
    for a, b in zip(want if isinstance(want, (tuple, list)) else [want], got if isinstance(got, (tuple, list)) else [got]):
        if isinstance(a, dict):
            a, b = a["pred_masks"], b["pred_masks"]
        assert (a - b).abs().max() <= 1e-4 * max(1.0, a.abs().max().item()), name
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the readable model keeps its BatchNorms
    with pytest.raises(ValueError, match="for inference only"):
        fused.train()


def test_fold_batch_norm_is_the_affine_map_of_the_formula():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, padding=2, dilation=2, bias=True), nn.BatchNorm2d(4)
    _randomise_bn(bn)
    bn.eval()
    folded = fold_batch_norm(conv, bn)
    x = torch.randn(2, 3, 9, 7)
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    assert torch.allclose(folded.weight, conv.weight * s[:, None, None, None], atol=1e-6)
    assert torch.allclose(folded.bias, bn.bias + s * (conv.bias - bn.running_mean), atol=1e-6)
    assert (folded(x) - bn(conv(x))).abs().max() < 1e-5
    assert folded is not conv and conv.weight.data_ptr() != folded.weight.data_ptr()
    with pytest.raises(ValueError, match="BatchNorm of 5 channels"):
        fold_batch_norm(conv, nn.BatchNorm2d(5))
