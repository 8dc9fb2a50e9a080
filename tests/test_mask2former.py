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
    ours = segviz.create_model("mask2former-nano", weights=str(path / "model.safetensors"),
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
    # every prediction (the learnable queries' and each layer's) is recorded as the heads' output
    heads = rec.records("decoder.heads", "feature")
    assert len(heads) == layers + 1
    for record, (classes, masks) in zip(heads, predictions):
        assert torch.equal(record.features[0], classes) and torch.equal(record.features[1], masks)
    samplings = rec.records(kind="sampling")
    assert len(samplings) == len(ours.pixel_decoder.encoder)
    assert samplings[0].level_shapes == [(8, 7), (16, 14), (32, 28)]
    assert samplings[0].locations.shape == (1, 8 * 7 + 16 * 14 + 32 * 28, 4, 3, 4, 2)


def test_bad_mask2former_config():
    with pytest.raises(ValueError, match="divisible by heads"):
        meta_model("mask2former-nano", heads=3)
    with pytest.raises(ValueError, match="GroupNorm"):
        meta_model("mask2former-nano", hidden_dim=48, heads=4)
    with pytest.raises(ValueError, match="importance_sample_ratio"):
        meta_model("mask2former-nano", importance_sample_ratio=1.5)
    with pytest.raises(ValueError, match="oversample_ratio"):
        meta_model("mask2former-nano", oversample_ratio=0.5)


# ---------------------------------------------------------------------------------------
# Matching and the criterion
# ---------------------------------------------------------------------------------------
def _set_problem(seed=0, b=2, queries=6, classes=5, hw=(12, 10), targets=(3, 2), layers=3):
    g = torch.Generator().manual_seed(seed)
    preds = [(torch.randn(b, queries, classes + 1, generator=g) * 2, torch.randn(b, queries, *hw, generator=g) * 3)
             for _ in range(layers)]
    tgts = []
    for t in targets:
        labels = torch.randperm(classes, generator=g)[:t]
        masks = torch.rand(t, hw[0] * 4, hw[1] * 4, generator=g) < 0.4  # targets at 4x the prediction's size
        tgts.append((labels, masks))
    return preds, tgts


def test_matching_cost_and_assignment_equal_huggingface(monkeypatch):
    preds, tgts = _set_problem()
    (class_logits, mask_logits) = preds[-1]
    seen = []
    real = hf_m2f.linear_sum_assignment
    monkeypatch.setattr(hf_m2f, "linear_sum_assignment", lambda cost: seen.append(cost.clone()) or real(cost))
    matcher = hf_m2f.Mask2FormerHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=500)
    torch.manual_seed(3)
    theirs = matcher(mask_logits, class_logits, [m.float() for _, m in tgts], [c for c, _ in tgts])
    torch.manual_seed(3)  # the same uniform points: both draw torch.rand(1, P, 2) per image, in order
    for i, (c, m) in enumerate(tgts):
        cost = m2f.matching_cost(class_logits[i], mask_logits[i], c, m, 500)
        torch.testing.assert_close(cost["total"], seen[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cost["total"], 2 * cost["class"] + 5 * cost["mask"] + 5 * cost["dice"])
        rows, cols = m2f.hungarian_match(cost["total"])
        assert torch.equal(rows, theirs[i][0]) and torch.equal(cols, theirs[i][1])


@pytest.mark.parametrize("seed", range(6))
def test_assignment_is_the_brute_force_minimum(seed):
    g = torch.Generator().manual_seed(seed)
    queries, targets = [(5, 3), (4, 4), (6, 2)][seed % 3]
    cost = torch.rand(queries, targets, generator=g) * 10 - 3
    rows, cols = m2f.hungarian_match(cost)
    assert len(rows) == targets and len(set(rows.tolist())) == targets and sorted(cols.tolist()) == list(range(targets))
    best = min(sum(cost[q, t].item() for q, t in zip(perm, range(targets)))
               for perm in itertools.permutations(range(queries), targets))
    assert abs(cost[rows, cols].sum().item() - best) < 1e-5
    # a non-finite cost is taken only when nothing else is left
    cost[rows[0], cols[0]] = math.nan
    rows2, cols2 = m2f.hungarian_match(cost)
    assert not any(r == rows[0] and c == cols[0] for r, c in zip(rows2.tolist(), cols2.tolist()))


def test_pairwise_costs_equal_the_pointwise_losses():
    g = torch.Generator().manual_seed(4)
    logits, targets = torch.randn(4, 50, generator=g), (torch.rand(3, 50, generator=g) < 0.5).float()
    bce, dice = m2f.pairwise_bce(logits, targets), m2f.pairwise_dice(logits, targets)
    one = torch.tensor(1.0)
    for q in range(4):
        for t in range(3):
            torch.testing.assert_close(bce[q, t], m2f.bce_loss(logits[q:q + 1], targets[t:t + 1], one))
            torch.testing.assert_close(dice[q, t], m2f.dice_loss(logits[q:q + 1], targets[t:t + 1], one))
    torch.testing.assert_close(bce, hf_m2f.pair_wise_sigmoid_cross_entropy_loss(logits, targets))
    torch.testing.assert_close(dice, hf_m2f.pair_wise_dice_loss(logits, targets))


def test_criterion_equals_huggingface_loss_with_the_same_random_points():
    """Both draw their random points in the same order (matcher of the final prediction, its
    importance sampling, then each intermediate prediction in turn), so with the same seed they
    sample the same points and every loss term must agree."""
    preds, tgts = _set_problem(seed=5, layers=4)
    config = Mask2FormerConfig(backbone_config=SwinConfig(out_features=["stage1", "stage2", "stage3", "stage4"]),
                               num_labels=5, train_num_points=300)
    weights = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    hf_loss = hf_m2f.Mask2FormerLoss(config, weights)
    torch.manual_seed(7)
    theirs = hf_loss(preds[-1][1], preds[-1][0], [m.float() for _, m in tgts], [c for c, _ in tgts],
                     auxiliary_predictions=[{"masks_queries_logits": m, "class_queries_logits": c}
                                            for c, m in preds[:-1]])
    ours = m2f.SetCriterion(5, num_points=300)
    torch.manual_seed(7)
    total, per_layer = ours(preds, tgts)
    names = {"class": "loss_cross_entropy", "mask": "loss_mask", "dice": "loss_dice"}
    for i, losses in enumerate(per_layer):
        suffix = "" if i == 0 else f"_{i - 1}"
        for ours_name, hf_name in names.items():
            torch.testing.assert_close(losses[ours_name], theirs[hf_name + suffix], atol=1e-5, rtol=1e-5)
    expected = sum(weights[k.rsplit("_", 1)[0] if k[-1].isdigit() else k] * v for k, v in theirs.items())
    torch.testing.assert_close(total, expected, atol=1e-4, rtol=1e-5)
    assert len(per_layer) == 4


def test_importance_sampling_keeps_the_most_uncertain_candidates():
    logits = torch.full((1, 1, 20, 20), 8.0)
    logits[..., :, 9:11] = 0.0  # a band of uncertain logits (|logit| = 0) in the middle columns
    torch.manual_seed(0)
    points = m2f.uncertain_points(logits, 200, oversample=3.0, importance=0.75)
    assert points.shape == (1, 200, 2)
    torch.manual_seed(0)  # the same draws: 600 uniform candidates, then 50 uniform extra points
    candidates = torch.rand(1, 600, 2)
    extra = torch.rand(1, 50, 2)
    cand_values = m2f.point_sample(logits, candidates)[0, 0].abs()
    kept_values = m2f.point_sample(logits, points[:, :150])[0, 0].abs()
    # the 150 kept are the 150 candidates with the smallest |logit| (ties at 8 may pick any)
    torch.testing.assert_close(kept_values.sort().values, cand_values.sort().values[:150])
    assert (kept_values == 0).sum() == (cand_values == 0).sum() > 20
    assert torch.equal(points[:, 150:], extra)


def test_loss_from_labels_and_from_instances_trains_through_the_trainer():
    from segviz.data import Scenes
    from segviz.training import _loss

    torch.manual_seed(0)
    model = segviz.create_model("mask2former-nano").train()
    data = Scenes(2, size=64)
    images = torch.stack([data[i][0] for i in range(2)])
    labels = torch.stack([data[i][1] for i in range(2)])
    targets = m2f.semantic_targets(labels)
    assert all(torch.equal(c, l.unique()) for (c, _), l in zip(targets, labels))
    for (c, m), l in zip(targets, labels):  # exactly one segment per pixel, of the pixel's class
        assert (m.sum(0) == 1).all() and torch.equal(c[m.long().argmax(0)], l)
    loss = _loss(model, images, labels)  # the trainer's call: model.loss(model(images), labels)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.decoder.query_feat.weight.grad.abs().sum() > 0
    assert model.pixel_decoder.encoder[0].self_attn.sampling_offsets.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="forward_heads"):  # eval-mode forward gives semantic scores
        model.loss(model.eval()(images), labels)
    model.train()
    instance = model.loss(model(images), [data.instances(i) for i in range(2)])
    assert torch.isfinite(instance) and instance.requires_grad
    # one optimiser step on the same batch lowers the loss
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = []
    for _ in range(2):
        torch.manual_seed(1)  # the same random points both times
        value = model.loss(model(images), labels)
        before.append(value.item())
        opt.zero_grad()
        value.backward()
        opt.step()
    assert before[1] < before[0]


def test_swin_t_gmacs_at_512_reproduce_the_published_counts():
    """FlopCounterMode on the meta device: the forward pass (every prediction) equals HF's 69.23
    GMACs; with the semantic-inference step (100 mask logits upsampled to 512x512 and combined with
    150 class scores, 3.93 GMACs) about 73.2 — the paper's 74 GFLOPs (fvcore) count that step too."""
    from torch.utils.flop_counter import FlopCounterMode

    from segviz.models.resnet import ResNet
    from segviz.nn.attention import explicit_attention

    model = meta_model("mask2former-swin-t").eval()
    published = get_spec("mask2former-swin-t").published
    x = torch.zeros(1, 3, 512, 512, device="meta")
    counts = {}
    for name, fn in (("forward", model.forward_heads), ("predict", model.predict)):
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), explicit_attention(), counter:
            fn(x)
        counts[name] = counter.get_total_flops() / 2e9
    assert abs(counts["forward"] - published["gmacs_forward_hf"]) < 0.01
    step = published["gmacs_inference_step"]
    assert abs(counts["predict"] - counts["forward"] - step) < 0.01
    assert abs(counts["predict"] - published["gmacs"]) < 1.0


@torch.no_grad()
def test_both_hf_layouts_load_to_the_same_weights(pair, tmp_path):
    """save_pretrained writes the hub's (4.x) names; a transformers 5.x state_dict() has other
    backbone names (q_proj, ...): both load into the same model."""
    from safetensors.torch import save_file

    hf, ours, _, _ = pair
    path = tmp_path / "hf5.safetensors"
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(path))
    loaded = segviz.create_model("mask2former-nano", weights=str(path),
                                 **{k: v for k, v in SMALL.items() if k != "num_classes"})
    expected = ours.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())


def test_resnet50_builder_params_and_gmacs():
    """Mask2Former R50 (``mask2former-r50``): 44.0M params (the paper's 44M) and, at 512, the
    forward plus the semantic-inference step near the paper's 71 GFLOPs, as for Swin-T (73.2 vs 74)."""
    from torch.utils.flop_counter import FlopCounterMode

    from segviz.models.resnet import ResNet
    from segviz.nn.attention import explicit_attention

    model = meta_model("mask2former-r50").eval()
    assert isinstance(model.backbone, ResNet)
    # the backbone: torchvision's ResNet-50 (25,557,032 params) without its 1000-class fc
    assert count_params(model.backbone) == 25_557_032 - (2048 * 1000 + 1000)
    # the heads differ from Swin-T's only in the input projections (res3..res5) and the res2 lateral
    swin_t = meta_model("mask2former-swin-t")
    heads = count_params(model) - count_params(model.backbone)
    swin_heads = count_params(swin_t) - count_params(swin_t.backbone)
    assert heads - swin_heads == 256 * ((512 + 1024 + 2048) - (192 + 384 + 768)) + 256 * (256 - 96)
    assert abs(count_params(model) / 1e6 - 44) < 0.5
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), explicit_attention(), counter:
        model.predict(torch.zeros(1, 3, 512, 512, device="meta"))
    assert abs(counter.get_total_flops() / 2e9 - 71) < 1.0
    with pytest.raises(ValueError, match="layers"):
        m2f.mask2former_resnet(150, layers=(3, 4, 6))


def test_panoptic_targets_give_one_segment_per_object_and_agree_with_scenes_instances():
    from segviz.data import Scenes

    data = Scenes(3, size=64, target="panoptic")
    labels = torch.stack([data[i][1] for i in range(3)])
    assert labels.shape == (3, 2, 64, 64) and labels.dtype == torch.int64
    for (classes, masks), i in zip(m2f.panoptic_targets(labels), range(3)):
        obj_classes, obj_masks = data.instances(i)  # the dataset's own list of visible objects
        # background (class 0) first as one stuff segment, then every object in id order
        assert classes[0] == 0 and torch.equal(classes[1:], obj_classes)
        assert torch.equal(masks[1:], obj_masks)
        assert (masks.sum(0) == 1).all()  # a partition of the image
        assert torch.equal(classes[masks.long().argmax(0)], labels[i, 0])
    # two objects of one class stay two targets (the semantic targets would merge them)
    sem = torch.zeros(1, 8, 8, dtype=torch.int64)
    inst = torch.zeros(1, 8, 8, dtype=torch.int64)
    sem[0, :2, :2], inst[0, :2, :2] = 3, 1
    sem[0, 5:, 5:], inst[0, 5:, 5:] = 3, 2
    classes, masks = m2f.panoptic_targets(torch.stack([sem, inst], 1))[0]
    assert classes.tolist() == [0, 3, 3] and masks.sum((1, 2)).tolist() == [64 - 4 - 9, 4, 9]
    assert len(m2f.semantic_targets(sem)[0][0]) == 2
    ignore = sem.clone()
    ignore[0, 0, 0] = 255
    classes, masks = m2f.panoptic_targets(torch.stack([ignore, inst], 1))[0]
    assert not masks[:, 0, 0].any()
    inst[0, 7, 0] = 2  # one object with pixels of two classes (3 and the background 0) is refused
    with pytest.raises(ValueError, match="instance 2 covers pixels of classes"):
        m2f.panoptic_targets(torch.stack([sem, inst], 1))


def test_loss_reports_every_predictions_terms_and_refuses_other_target_shapes():
    from segviz.data import Scenes

    torch.manual_seed(0)
    model = segviz.create_model("mask2former-nano").train()
    assert model.train_target == "panoptic"
    data = Scenes(2, size=64, target="panoptic")
    images = torch.stack([data[i][0] for i in range(2)])
    labels = torch.stack([data[i][1] for i in range(2)])
    torch.manual_seed(1)
    outputs = model(images)
    total = model.loss(outputs, labels)
    terms = model.last_loss_terms
    layers = len(model.decoder.layers)
    assert sorted(terms) == sorted(f"p{i}/{t}" for i in range(layers + 1) for t in ("class", "mask", "dice"))
    # the weighted sum of the reported terms is the loss (class 2, mask 5, dice 5)
    weighted = sum({"class": 2.0, "mask": 5.0, "dice": 5.0}[k.split("/")[1]] * v for k, v in terms.items())
    assert weighted == pytest.approx(total.item(), rel=1e-5)
    # p{L} is the final prediction: its class term is the class loss of pred_logits alone
    torch.manual_seed(1)
    _, per_layer = model.criterion([(outputs["pred_logits"], outputs["pred_masks"])],
                                   m2f.panoptic_targets(labels))
    assert terms[f"p{layers}/class"] == pytest.approx(per_layer[0]["class"].item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"\(B, H, W\) or class and instance-id maps \(B, 2, H, W\)"):
        model.loss(outputs, labels[:, :1].repeat(1, 3, 1, 1))


def test_panoptic_inference_gives_disjoint_segments_and_merges_stuff():
    torch.manual_seed(0)
    model = segviz.create_model("mask2former-nano", num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    # hand-made predictions: query 0 and 1 are class 2 ("stuff" here) on two halves, query 2 is a
    # thing (class 1) on a square, query 3 is confident "no object", query 4 is unsure
    queries = model.decoder.query_feat.num_embeddings
    classes = torch.full((1, queries, 5), -20.0)
    classes[0, :, 4] = 20  # everything "no object" ...
    for k, c in ((0, 2), (1, 2), (2, 1)):
        classes[0, k, 4], classes[0, k, c] = -20, 20
    classes[0, 4, 4], classes[0, 4, 1] = 0, 0.1  # best class 1 at p ~ 0.5 < 0.8: dropped
    masks = torch.full((1, queries, 64, 64), -10.0)  # at the input size, so that no upsampling blurs the edges
    masks[0, 0, :, :32] = 10
    masks[0, 1, :, 32:] = 10
    masks[0, 2, 16:32, 16:32] = 20  # on top of query 0's half, and more confident there
    masks[0, 4] = 10
    model.predictions = lambda x: [(classes, masks)]
    (cls, segs, scores), = model.panoptic(x, stuff_classes=[2])
    assert cls.tolist() == [2, 1] and segs.shape == (2, 64, 64) and (scores > 0.99).all()
    assert not (segs[0] & segs[1]).any()  # disjoint
    assert segs[1][16:32, 16:32].all() and segs[1].sum() == 16 * 16  # the square
    assert segs[0].sum() == 64 * 64 - 16 * 16  # both halves merged into one stuff segment, minus the thing
    (cls, segs, _), = model.panoptic(x)  # no stuff classes: the two halves stay two segments
    assert cls.tolist() == [2, 2, 1]
    masks[0, 2, 16:32, 8:32] = 20  # widen query 2's square to the left ...
    masks[0, 0, 16:32, 8:16] = 30  # query 0 takes back a third of query 2's mask: 2/3 < 0.8, dropped
    (cls, _, _), = model.panoptic(x)
    assert cls.tolist() == [2, 2]
    with pytest.raises(ValueError, match="stuff_classes"):
        model.panoptic(x, stuff_classes=[7])
    with pytest.raises(ValueError, match="object_threshold"):
        model.panoptic(x, object_threshold=1.5)


def _num_masks_on_rank(rank, port, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        out[rank] = float(m2f.average_num_masks([3.0, 8.0][rank]))
    finally:
        dist.destroy_process_group()


def test_num_masks_is_averaged_over_processes():
    import socket

    import torch.multiprocessing as mp

    assert float(m2f.average_num_masks(5.0)) == 5.0 and float(m2f.average_num_masks(0.0)) == 1.0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = mp.get_context("spawn").Manager().dict()
    mp.spawn(_num_masks_on_rank, args=(port, out), nprocs=2, join=True)
    assert dict(out) == {0: 5.5, 1: 5.5}  # both ranks divide by the mean of 3 and 8
