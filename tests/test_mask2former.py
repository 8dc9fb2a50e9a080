"""Mask2Former against HuggingFace ``Mask2FormerForUniversalSegmentation`` (random weights, saved
with ``save_pretrained`` and loaded through ``create_model(name, weights=path)``): pixel decoder,
every layer's class and mask logits; the parameter count of the published Swin-T config; the
masked attention's records; the matcher and the criterion against HuggingFace's."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
from transformers.models.mask2former import modeling_mask2former as hf_m2f

import segviz
from segviz.inspect.costs import count_params
from segviz.models import mask2former as m2f
from segviz.registry import get_spec
from tests.toys import meta_model, threads

SIDE = 256  # Swin window 7: HF's backbone shrinks windows on maps <= 7, ours never; at 256 stage 4 is 8x8
SMALL = dict(num_classes=6, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7,
             hidden_dim=64, mask_dim=64, num_queries=5, heads=4, enc_layers=2, enc_ffn_dim=128, enc_points=4,
             dec_layers=3, dec_ffn_dim=128)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with threads(1):
        yield


def hf_config(num_classes=6, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7,
              hidden_dim=64, mask_dim=64, num_queries=5, heads=4, enc_layers=2, enc_ffn_dim=128, enc_points=4,
              dec_layers=3, dec_ffn_dim=128):
    assert enc_points == 4  # HF fixes 4 points and 3 levels
    backbone = SwinConfig(embed_dim=embed_dim, depths=list(depths), num_heads=list(num_heads), window_size=window_size,
                          out_features=["stage1", "stage2", "stage3", "stage4"], drop_path_rate=0.0)
    return Mask2FormerConfig(backbone_config=backbone, num_labels=num_classes, feature_size=hidden_dim,
                             mask_feature_size=mask_dim, hidden_dim=hidden_dim, num_queries=num_queries,
                             num_attention_heads=heads, encoder_layers=enc_layers, encoder_feedforward_dim=enc_ffn_dim,
                             decoder_layers=dec_layers + 1, dim_feedforward=dec_ffn_dim)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A small HF model with random weights (every parameter perturbed, so that the zero-initialised
    deformable weights matter too), saved and loaded into ours."""
    torch.manual_seed(0)
    hf = Mask2FormerForUniversalSegmentation(hf_config()).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    path = tmp_path_factory.mktemp("m2f")
    hf.save_pretrained(path)
    ours = segviz.create_model("mask2former-swin-nano", weights=str(path / "model.safetensors"),
                               **{k: v for k, v in SMALL.items() if k != "num_classes"}).eval()
    x = torch.randn(2, 3, SIDE, SIDE - 32, generator=g)
    with torch.no_grad():
        theirs = hf(x, output_hidden_states=True, output_auxiliary_logits=True)
    return hf, ours, x, theirs


def _attention_masks(predictions):
    """The thresholded masks the next layers attend with (σ < 0.5 on the mask logits resized to the
    level each next layer reads), and the smallest |resized logit| among them."""
    sizes = [(8, 7), (16, 14), (32, 28)]  # 1/32, 1/16, 1/8 of 256 x 224
    masks, margin = [], math.inf
    for i, (_, logits) in enumerate(predictions[:-1]):
        resized = F.interpolate(logits, size=sizes[i % 3], mode="bilinear", align_corners=False)
        masks.append(resized.sigmoid() < 0.5)
        margin = min(margin, resized.abs().min().item())
    return masks, margin


@torch.no_grad()
def test_parity_with_huggingface_every_layer(pair):
    hf, ours, x, theirs = pair
    features = ours.backbone(x)
    mask_features, maps = ours.pixel_decoder(features)
    torch.testing.assert_close(mask_features, theirs.pixel_decoder_last_hidden_state, atol=1e-4, rtol=1e-4)
    for got, expected in zip(maps, theirs.pixel_decoder_hidden_states):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    predictions = ours.predictions(x)
    expected = [(a["class_queries_logits"], a["masks_queries_logits"]) for a in theirs.auxiliary_logits]
    expected.append((theirs.class_queries_logits, theirs.masks_queries_logits))
    assert len(predictions) == len(expected) == 4
    # the thresholded attention masks: a logit within float noise of 0 could flip a mask and send
    # the two models apart; here every one of them is the same in both (which the logit tolerance
    # below then confirms layer by layer), and the closest logit to the threshold is reported
    ours_masks, margin = _attention_masks(predictions)
    hf_masks, _ = _attention_masks(expected)
    assert all(torch.equal(a, b) for a, b in zip(ours_masks, hf_masks))
    print(f"closest resized mask logit to the threshold: {margin:.2e}")
    for (c, m), (ce, me) in zip(predictions, expected):
        torch.testing.assert_close(c, ce, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(m, me, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_semantic_inference_from_huggingface_logits(pair):
    """predict: the paper's semantic inference (mask logits upsampled to the input first, then
    Σ_q softmax(class)[:K] · σ(mask)), here written out on HuggingFace's final logits; eval
    forward: the same combination at 1/4."""
    hf, ours, x, theirs = pair
    probs = theirs.class_queries_logits.softmax(-1)[..., :-1]
    masks = F.interpolate(theirs.masks_queries_logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    expected = torch.einsum("bqc,bqhw->bchw", probs, masks.sigmoid())
    got = ours.predict(x)
    assert got.shape == (2, 6, *x.shape[-2:])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    dense = ours(x)
    assert dense.shape == (2, 6, SIDE // 4, (SIDE - 32) // 4)
    expected = torch.einsum("bqc,bqhw->bchw", probs, theirs.masks_queries_logits.sigmoid())
    torch.testing.assert_close(dense, expected, atol=1e-4, rtol=1e-4)


def test_swin_t_config_param_count_equals_huggingface():
    ours = meta_model("mask2former-swin-t")
    with torch.device("meta"):
        hf = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(
            backbone_config=SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                                       out_features=["stage1", "stage2", "stage3", "stage4"]),
            num_labels=150))
    published = get_spec("mask2former-swin-t").published
    hf_count = sum(p.numel() for p in hf.parameters())
    assert hf_count == published["params_hf"]
    # HF's Swin backbone keeps an unused final LayerNorm (2 x 768 params) that ours does not have
    assert count_params(ours) == hf_count - 2 * 768
    assert abs(count_params(ours) / 1e6 - published["params_m"]) < 0.5


@torch.no_grad()
def test_records_masked_cross_attention_self_attention_and_sampling(pair):
    _, ours, x, _ = pair
    with segviz.capture(ours) as rec:
        predictions = ours.predictions(x[:1])
    layers = len(ours.decoder.layers)
    for i in range(layers):
        record = rec.attention[f"decoder.layers.{i}.cross_attn"]
        h, w = [(8, 7), (16, 14), (32, 28)][i % 3]
        assert type(record).__name__ == "MaskedAttentionRecord" and record.k_hw == (h, w)
        # the mask is the previous prediction resized to this level, thresholded, empty rows opened
        previous = F.interpolate(predictions[i][1], size=(h, w), mode="bilinear", align_corners=False)
        blocked = (previous.sigmoid() < 0.5).flatten(2)
        blocked &= ~blocked.all(-1, keepdim=True)
        assert torch.equal(record.mask[:, 0], blocked)
        assert (record.probs.masked_select(record.mask.expand_as(record.probs)) == 0).all()
        assert rec.attention[f"decoder.layers.{i}.self_attn"].probs.shape == (1, 4, 5, 5)
    samplings = rec.records(kind="sampling")
    assert len(samplings) == len(ours.pixel_decoder.encoder)
    assert samplings[0].level_shapes == [(8, 7), (16, 14), (32, 28)]
    assert samplings[0].locations.shape == (1, 8 * 7 + 16 * 14 + 32 * 28, 4, 3, 4, 2)


def test_bad_mask2former_config():
    with pytest.raises(ValueError, match="divisible by heads"):
        meta_model("mask2former-swin-nano", heads=3)
    with pytest.raises(ValueError, match="GroupNorm"):
        meta_model("mask2former-swin-nano", hidden_dim=48, heads=4)
    with pytest.raises(ValueError, match="importance_sample_ratio"):
        meta_model("mask2former-swin-nano", importance_sample_ratio=1.5)
    with pytest.raises(ValueError, match="oversample_ratio"):
        meta_model("mask2former-swin-nano", oversample_ratio=0.5)
