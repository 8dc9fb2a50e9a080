"""Video Mask2Former: the 3-D sine encoding, tubes (one query -> masks in every frame), tube
matching against brute force, the tube criterion, T = 1 against the image model, bad inputs."""
import itertools
import math

import numpy as np
import pytest
import torch

import segviz
from segviz.models import mask2former as m2f
from segviz.models import mask2former_video as vid
from segviz.nn.position import sine_position_encoding, sine_position_encoding_3d
from tests.toys import threads


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with threads(1):
        yield


TINY = dict(num_classes=4, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=4,
            drop_path_rate=0.0, hidden_dim=32, mask_dim=32, num_queries=5, heads=2, enc_layers=1,
            enc_ffn_dim=32, dec_layers=3, dec_ffn_dim=32, groups=8, train_num_points=64)


def tiny(**overrides):
    """A very small video model (random init), for fast tests."""
    return vid.mask2former_video_swin(**{**TINY, "num_frames": 3, **overrides})


def tiny_image(**overrides):
    """The image Mask2Former of the same size (the same weights fit both)."""
    return m2f.mask2former_swin(**{**TINY, **overrides})


# ---------------------------------------------------------------------------------------
# The 3-D sine position encoding
# ---------------------------------------------------------------------------------------
def test_3d_encoding_shape_and_spatial_part_is_the_2d_pattern():
    t, h, w, c = 3, 5, 7, 16
    pe = sine_position_encoding_3d(t, h, w, c)
    assert pe.shape == (1, t, c, h, w)
    spatial = sine_position_encoding(h, w, c)[0]                   # (c, h, w)
    # subtracting the 2-D pattern leaves, in every frame, one vector per frame (constant over pixels)
    rest = pe[0] - spatial[None]
    assert torch.allclose(rest, rest[..., :1, :1].expand_as(rest), atol=1e-6)
    # and that vector is the 1-D sine encoding of the frame number with c frequencies of its own
    tau = torch.arange(1, t + 1) / (t + 1e-6) * 2 * math.pi
    omega = 10000 ** (2 * (torch.arange(c) // 2) / c)
    expected = torch.where(torch.arange(c) % 2 == 0, (tau[:, None] / omega).sin(), (tau[:, None] / omega).cos())
    torch.testing.assert_close(rest[:, :, 0, 0], expected)


def test_3d_encoding_frames_are_distinct_and_pixels_within_a_frame_too():
    pe = sine_position_encoding_3d(4, 3, 3, 32)[0]                 # (t, c, h, w)
    frames = pe.flatten(1)
    dist = torch.cdist(frames, frames)
    assert (dist + torch.eye(4) * 1e9).min() > 1e-2                # every pair of frames differs
    pixels = pe[1].flatten(1).T                                     # (h·w, c) of one frame
    dist = torch.cdist(pixels, pixels)
    assert (dist + torch.eye(9) * 1e9).min() > 1e-2


@pytest.mark.parametrize("args", [(0, 2, 2, 8), (2, 0, 2, 8), (2, 2, 2, 7), (2, 2, 2, 0), (2.0, 2, 2, 8),
                                  (True, 2, 2, 8)])
def test_3d_encoding_bad_input(args):
    with pytest.raises(ValueError, match="3-D sine position encoding"):
        sine_position_encoding_3d(*args)


# ---------------------------------------------------------------------------------------
# Tubes: one query, masks in every frame
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def test_shapes_and_every_frame_comes_from_the_same_query():
    torch.manual_seed(0)
    model = tiny().train()
    x = torch.randn(2, 3, 3, 64, 64)
    out = model(x)
    assert out["pred_logits"].shape == (2, 5, 5)
    assert out["pred_masks"].shape == (2, 5, 3, 16, 16)
    assert len(out["aux_outputs"]) == 3 and all(a["pred_masks"].shape == (2, 5, 3, 16, 16) for a in out["aux_outputs"])
    model.eval()
    assert model(x).shape == (2, 3, 4, 16, 16)
    assert model.predict(x).shape == (2, 3, 4, 64, 64)
    # the masks of query q in every frame are MLP(q)·E(τ): change q's decoder output and every frame changes,
    # the other queries' masks do not
    heads = model.decoder.heads
    xq = torch.randn(2, 5, 32)
    e = torch.randn(2, 3, 32, 8, 8)
    _, masks, _ = heads(xq, e, (4, 4))
    xq2 = xq.clone()
    xq2[:, 2] += torch.randn(32)  # (a constant shift would vanish in the LayerNorm)
    _, masks2, _ = heads(xq2, e, (4, 4))
    changed = (masks2 - masks).abs().amax(dim=(-2, -1))              # (B, Q, T)
    assert (changed[:, 2] > 1e-4).all()
    assert torch.equal(masks2[:, [0, 1, 3, 4]], masks[:, [0, 1, 3, 4]])
    # the frame-τ mask is exactly the image heads' mask on frame τ's features
    for t in range(3):
        _, image_masks, _ = m2f.PredictionHeads.forward(heads, xq, e[:, t], (4, 4))
        torch.testing.assert_close(masks[:, :, t], image_masks)


@torch.no_grad()
def test_a_query_embedding_change_moves_all_frames_of_its_tube():
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(1, 3, 3, 64, 64)
    before = model.predictions(x)[-1][1]
    model.decoder.query_feat.weight[1] += 0.5
    after = model.predictions(x)[-1][1]
    assert ((after - before)[0, 1].abs().amax(dim=(-2, -1)) > 1e-4).all()     # every frame of query 1


@torch.no_grad()
def test_queries_attend_to_all_frames_at_once():
    """The memory is T·h·w long: a change in frame 2 alone changes the frame-0 masks (through the
    queries), which a per-frame model could not do."""
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(1, 3, 3, 64, 64)
    with segviz.capture(model) as rec:
        before = model.predictions(x)[-1][1]
    cross = [r for n, r in rec.attention.items() if "cross_attn" in n]
    assert len(cross) == 3
    for r in cross:
        kh, kw = r.k_hw
        assert r.probs.shape[-1] == 3 * (kh // 3) * kw and kh % 3 == 0          # T·h·w keys, frames stacked
        assert vid.frames_of(r.map_for(0), 3).shape == (3, kh // 3, kw)
    x2 = x.clone()
    x2[:, 2] += torch.randn_like(x2[:, 2])
    after = model.predictions(x2)[-1][1]
    assert (after[:, :, 0] - before[:, :, 0]).abs().max() > 1e-4


@torch.no_grad()
def test_one_frame_reduces_to_the_image_model():
    """With T = 1 and the same weights, the video model *is* the image model: the 3-D encoding is
    the 2-D one plus one constant vector c (the time part of frame 1), which adds q·W_k c to every
    logit of a query's row, and softmax ignores that. Compared: every prediction (the one from the
    learnable queries and after each of the 3 layers; classes and masks), and predict. With T = 2
    the time part does act: leaving it out changes the predictions."""
    torch.manual_seed(0)
    video = tiny(num_frames=1).eval()
    image = tiny_image(num_classes=4).eval()
    image.load_state_dict(video.state_dict())
    x = torch.randn(2, 3, 64, 64)
    ref = image.predictions(x)
    got = video.predictions(x[:, None])
    assert len(got) == len(ref) == 4
    for (gc, gm), (rc, rm) in zip(got, ref):
        torch.testing.assert_close(gc, rc, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gm[:, :, 0], rm, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(video.predict(x[:, None])[:, 0], image.predict(x), atol=1e-5, rtol=1e-5)

    clip = torch.randn(1, 2, 3, 64, 64)
    with_time = video.predictions(clip)[-1][1]

    def spatial_only(t, h, w, device, dtype):
        pos = sine_position_encoding(h, w, video.decoder.dim, device=device, dtype=dtype).flatten(2).transpose(1, 2)
        return pos.repeat(1, t, 1)

    video.decoder.positions = spatial_only
    assert (video.predictions(clip)[-1][1] - with_time).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------
# Tube matching and the criterion
# ---------------------------------------------------------------------------------------
def brute_force(cost):
    q, n = cost.shape
    best = min(itertools.permutations(range(q), n), key=lambda rows: sum(cost[r, c] for c, r in enumerate(rows)))
    return sum(float(cost[r, c]) for c, r in enumerate(best))


@pytest.mark.parametrize("seed", range(4))
def test_tube_matching_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    q, n, t = 5, 3, 3
    class_logits = torch.randn(q, 5, generator=g)
    mask_logits = torch.randn(q, t, 6, 6, generator=g) * 3
    classes = torch.randint(0, 4, (n,), generator=g)
    masks = torch.rand(n, t, 12, 12, generator=g) > 0.5
    cost = vid.tube_matching_cost(class_logits, mask_logits, classes, masks, 64,
                                  points=torch.rand(64, 2, generator=g))["total"]
    rows, cols = m2f.hungarian_match(cost)
    assert len(rows) == n and sorted(cols.tolist()) == list(range(n))
    assert float(cost[rows, cols].sum()) == pytest.approx(brute_force(cost), abs=1e-5)


def test_tube_cost_reads_the_same_points_in_every_frame():
    """BCE over the tube is the mean of the per-frame BCEs on the same points; the tube Dice pools
    the frames (so a tube matching in one frame only is not a cheap match)."""
    g = torch.Generator().manual_seed(0)
    class_logits, mask_logits = torch.randn(4, 5, generator=g), torch.randn(4, 3, 8, 8, generator=g) * 2
    classes, masks = torch.tensor([1, 2]), torch.rand(2, 3, 8, 8, generator=g) > 0.5
    points = torch.rand(32, 2, generator=g)
    tube = vid.tube_matching_cost(class_logits, mask_logits, classes, masks, 32, points=points)
    frames = [vid.tube_matching_cost(class_logits, mask_logits[:, t:t + 1], classes, masks[:, t:t + 1], 32,
                                     points=points) for t in range(3)]
    torch.testing.assert_close(tube["mask"], sum(f["mask"] for f in frames) / 3)
    torch.testing.assert_close(tube["class"], frames[0]["class"])
    pred = m2f.point_sample(mask_logits, points[None].expand(4, -1, -1)).flatten(1)
    tgt = m2f.point_sample(masks.float(), points[None].expand(2, -1, -1)).flatten(1)
    torch.testing.assert_close(tube["dice"], m2f.pairwise_dice(pred, tgt))
    assert not torch.allclose(tube["dice"], sum(f["dice"] for f in frames) / 3)


def test_video_targets_are_tubes_with_one_id_over_the_clip():
    clip = segviz.data.Scenes(4, 64, seed=3).clip(1, 3)
    labels = torch.from_numpy(np.stack([np.stack([s.semantic, s.instances]) for s in clip]))[None]
    (classes, masks), = vid.video_targets(labels)
    ids = sorted({int(k) for s in clip for k in np.unique(s.instances) if k > 0})
    assert len(classes) == 1 + len(ids) and classes[0] == 0                  # the background tube, then objects
    assert masks.shape == (1 + len(ids), 3, 64, 64)
    for j, k in enumerate(ids, start=1):
        for t, s in enumerate(clip):
            assert np.array_equal(masks[j, t].numpy(), s.instances == k)
        assert classes[j] == clip[0].objects[k - 1].label
    # the tubes cover every pixel of every frame exactly once
    assert (masks.sum(0) == 1).all()


def test_training_loss_is_finite_with_grad():
    torch.manual_seed(0)
    model = tiny(num_classes=6).train()
    scenes = segviz.data.Scenes(4, 64, seed=1)
    clips = [scenes.clip(i, 3) for i in range(2)]
    x = torch.stack([torch.stack([segviz.data.images.normalize(s.image) for s in c]) for c in clips])
    labels = torch.from_numpy(np.stack([np.stack([np.stack([s.semantic, s.instances]) for s in c]) for c in clips]))
    out = model(x)
    loss = model.loss(out, labels)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert set(model.last_loss_terms) == {f"p{i}/{k}" for i in range(4) for k in ("class", "mask", "dice")}
    # the same targets given as per-clip (classes, tube masks) give the same loss (same random points)
    targets = vid.video_targets(labels)
    torch.manual_seed(5)
    a = model.loss(out, labels)
    torch.manual_seed(5)
    b = model.loss(out, targets)
    torch.testing.assert_close(a, b)


def test_frame_assignments_follow_one_query_when_the_tube_is_one_query():
    """Masks made so that query 2 is object 0 in every frame and query 0 object 1: the frame-by-frame
    matching finds the same query along each row (what the identity measure counts)."""
    t, n = 3, 2
    masks = torch.zeros(n, t, 16, 16, dtype=torch.bool)
    masks[0, :, 2:7, 2:7] = True
    masks[1, :, 9:14, 8:15] = True
    masks[1, 1] = False                                           # object 1 hidden in frame 1
    logits = torch.full((4, t, 16, 16), -8.0)
    logits[2][masks[0]] = 8.0
    logits[0][masks[1]] = 8.0
    classes = torch.tensor([1, 3])
    class_logits = torch.zeros(4, 5)
    got = vid.frame_assignments(class_logits, logits, classes, masks, num_points=256)
    assert got.tolist() == [[2, 2, 2], [0, -1, 0]]


def test_tube_identity_of_a_model_and_an_image_model_on_clips():
    torch.manual_seed(0)
    model = tiny(num_classes=6).eval()
    image = tiny_image(num_classes=6).eval()
    clips = segviz.data.Scenes(2, 64, seed=0, split="val", target="panoptic", frames=3)
    got = vid.tube_identity(model, clips, image)
    objects = sum(len({int(k) for k in clips[i][1][:, 1].unique() if k > 0}) for i in range(2))
    for key in ("video", "image_model_per_frame"):
        assert 0 < got[key]["objects"] <= objects and 0 <= got[key]["same_query"] <= 1
    assert got == vid.tube_identity(model, clips, image)                      # repeatable
    with pytest.raises(ValueError, match="target='panoptic'"):
        vid.tube_identity(model, segviz.data.Scenes(2, 64, frames=3))


# ---------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("x, match", [
    (torch.zeros(1, 3, 32, 32), r"4 dimensions instead of 5.*x\[:, None\]"),
    (torch.zeros(3, 32, 32), r"3 dimensions instead of 5"),
    (torch.zeros(1, 2, 4, 32, 32), r"with 4 channels"),
    (torch.zeros(1, 2, 32, 32, 3), r"channels last\? use x\.permute\(0, 1, 4, 2, 3\)"),
    (torch.zeros(0, 2, 3, 32, 32), r"the batch is empty"),
    (torch.zeros(1, 0, 3, 32, 32), r"the clips are empty \(T = 0\)"),
    (torch.zeros(1, 2, 3, 32, 32, dtype=torch.uint8), r"dtype torch\.uint8: convert with x\.float\(\)"),
    (np.zeros((1, 2, 3, 32, 32), np.float32), r"numpy\.ndarray of shape \(1, 2, 3, 32, 32\)"),
])
def test_bad_inputs(x, match):
    model = tiny().eval()
    expected = r"VideoMask2Former expects a float tensor \(B, T, 3, H, W\), a batch of clips of T frames; "
    for method in (model, model.predict):
        with pytest.raises(ValueError, match=expected + ".*" + match):
            method(x)


def test_bad_loss_inputs_and_config():
    model = tiny().train()
    out = model(torch.randn(1, 3, 3, 64, 64))
    with pytest.raises(ValueError, match="needs the set predictions"):
        model.loss(torch.zeros(1, 3, 4, 16, 16), torch.zeros(1, 3, 64, 64, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target's \(B, T\) \(1, 2\)"):
        model.loss(out, torch.zeros(1, 2, 2, 64, 64, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, T, 2, H, W\)"):
        model.loss(out, torch.zeros(1, 3, 3, 64, 64, dtype=torch.long))
    with pytest.raises(ValueError, match=r"tube masks must be \(N, T=3, H, W\)"):
        model.loss(out, [(torch.tensor([1]), torch.zeros(1, 64, 64, dtype=torch.bool))])
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="num_frames"):
            with torch.device("meta"):
                tiny(num_frames=bad)
    with pytest.raises(ValueError, match="equal height"):
        vid.frames_of(torch.zeros(7, 4), 3)


@torch.no_grad()
def test_evaluate_scores_every_frame_of_every_clip():
    from segviz.training import evaluate, intersection_union, iou_from_counts

    torch.manual_seed(0)
    model = tiny(num_classes=6).eval()
    clips = segviz.data.Scenes(3, 64, seed=0, split="val", frames=2)
    got = evaluate(model, clips, batch_size=2, device="cpu")
    inter = union = 0
    for i in range(3):
        x, y = clips[i]
        pred = model.predict(x[None])[0].argmax(1)                       # (T, H, W)
        a, b = intersection_union(pred, y, 6)
        inter, union = inter + a, union + b
    assert got == pytest.approx(iou_from_counts(inter, union), abs=1e-6)


def test_scenes_clip_items_for_the_trainer():
    clips = segviz.data.Scenes(3, 48, seed=2, target="panoptic", frames=3)
    images = segviz.data.Scenes(3, 48, seed=2, target="panoptic")
    x, y = clips[1]
    assert x.shape == (3, 3, 48, 48) and y.shape == (3, 2, 48, 48) and y.dtype == torch.int64
    x0, y0 = images[1]
    assert torch.equal(x[0], x0) and torch.equal(y[0], y0)             # frame 0 is the still scene
    clip = images.clip(1, 3)
    for t in range(3):
        assert np.array_equal(y[t, 1].numpy(), clip[t].instances)
    assert not torch.equal(x[0], x[2])                                   # the objects moved
    assert clips.description()["frames"] == 3 and "frames" not in images.description()
    semantic = segviz.data.Scenes(3, 48, seed=2, frames=2)[0][1]
    assert semantic.shape == (2, 48, 48)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="frames"):
            segviz.data.Scenes(3, 48, frames=bad)


# ---------------------------------------------------------------------------------------
# Figures (segviz.viz.video)
# ---------------------------------------------------------------------------------------
def test_identity_summary_counts_consecutive_visible_frames():
    a = np.array([[2, 2, 2, 2],      # kept: 3 same pairs
                  [1, 1, 3, 3],      # 2 same of 3, not kept over the clip
                  [0, -1, 0, -1],    # absent frames skipped: 1 pair, same
                  [4, -1, -1, -1]])  # visible once: no pair, not an object of the measure
    got = vid.identity_summary([a])
    assert got["pairs"] == 7 and got["same_query"] == pytest.approx(6 / 7)
    assert got["objects"] == 3 and got["whole_clip"] == pytest.approx(2 / 3)


def test_split_frames_inverts_the_stacked_key_grid():
    from segviz.viz.video import split_frames

    frames = torch.arange(3 * 4 * 5).reshape(3, 4, 5).float()
    stacked = frames.reshape(12, 5)
    assert np.array_equal(split_frames(stacked, 3), frames.numpy())
    with pytest.raises(ValueError, match="not 5 frames"):
        split_frames(stacked, 5)


def test_figures_draw_and_refuse_mismatched_inputs():
    import matplotlib

    matplotlib.use("Agg")
    from segviz.viz.video import tube_attention_figure, tube_figure

    torch.manual_seed(0)
    model = tiny(num_classes=6).eval()
    scenes = segviz.data.Scenes(2, 64, seed=0, split="val", frames=3)
    x, _ = scenes[0]
    clip = np.stack([s.image for s in scenes.clip(0, 3)])
    with segviz.capture(model) as rec:
        cls, masks = model.predictions(x[None])[-1]
    names = segviz.data.SCENE_CLASSES
    fig = tube_figure(clip, cls[0], masks[0], names, instances=np.stack([s.instances for s in scenes.clip(0, 3)]),
                      matches={1: 0, 2: 3}, queries=[0, 1, 3])
    assert len(fig.axes) == 9
    records = [r for n, r in rec.attention.items() if "cross_attn" in n]
    fig = tube_attention_figure(clip, records, masks[0, 2], 2)
    assert len(fig.axes) == 3 * 4
    with pytest.raises(ValueError, match=r"\(Q, T=3, h, w\)"):
        tube_figure(clip, cls[0], masks[0, :, :2], names)
    with pytest.raises(ValueError, match="class names"):
        tube_figure(clip, cls[0], masks[0], names[1:])
    with pytest.raises(ValueError, match=r"\(T=3, h, w\) tube"):
        tube_attention_figure(clip, records, masks[0], 2)
