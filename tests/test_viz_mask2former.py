"""segviz.viz.mask2former and its explorer: the figures draw what the records hold."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.collections import PathCollection
from matplotlib.patches import Rectangle

import segviz
from segviz.data import SCENE_CLASSES
from segviz.models import mask2former as M
from segviz.viz import mask2former as mv
from segviz.viz import style
from segviz.viz.mask2former_explorer import SamplingExplorer, encoder_sampling_records

S = 64


@pytest.fixture(scope="module")
def run():
    torch.manual_seed(0)
    model = segviz.create_model("mask2former-nano").eval()
    x = torch.rand(1, 3, S, S, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), segviz.capture(model) as rec:
        preds = model.predictions(x)
    image = (x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    return model, x, image, rec, preds


def _encoder(rec, i=1):
    return rec.sampling[f"pixel_decoder.encoder.{i}.self_attn"]


def test_pixel_query_index_finds_the_pixel_of_each_level(run):
    _, _, _, rec, _ = run
    r = _encoder(rec)
    shapes = r.level_shapes                       # 1/32, 1/16, 1/8 of 64 px: 2x2, 4x4, 8x8
    assert shapes == [(2, 2), (4, 4), (8, 8)]
    assert mv.pixel_query_index(r, (63, 63), (S, S)) == 4 + 16 + 63
    assert mv.pixel_query_index(r, (0, 0), (S, S), level=-1) == 20
    assert mv.pixel_query_index(r, (20, 40), (S, S), level=1) == 4 + 1 * 4 + 2
    assert mv.pixel_query_index(r, (40, 10), (S, S), level=0) == 2
    # the reference point of that query is the centre of its cell
    ref = r.reference_points[0, mv.pixel_query_index(r, (20, 40), (S, S), level=1)]
    assert torch.allclose(ref, torch.tensor([2.5 / 4, 1.5 / 4]))
    with pytest.raises(ValueError, match="outside"):
        mv.pixel_query_index(r, (S, 0), (S, S))
    with pytest.raises(ValueError, match="level"):
        mv.pixel_query_index(r, (0, 0), (S, S), level=3)


def test_init_records_are_the_direction_grid_with_uniform_weights(run):
    model, x, _, rec, _ = run
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init = mv.init_sampling_records(model, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # the model is untouched
    r = init["pixel_decoder.encoder.0.self_attn"]
    heads, levels, points = r.weights.shape[2:]
    assert torch.allclose(r.weights, torch.full_like(r.weights, 1 / (levels * points)))
    # head 1 of 4 looks along θ = 90°: straight down, point k at k + 1 pixels of each level
    q = mv.pixel_query_index(r, (36, 28), (S, S))
    locs, _ = r.points_for(q, head=1)
    ref = r.reference_points[0, q]
    for level, (h, w) in enumerate(r.level_shapes):
        offsets = (locs[level] - ref) * torch.tensor([w, h], dtype=torch.float32)
        expected = torch.tensor([[0.0, k + 1.0] for k in range(points)])
        assert torch.allclose(offsets, expected, atol=1e-4)
    # the fixture's model is freshly initialised: its own record is the same grid
    assert torch.allclose(_encoder(rec, 0).locations, r.locations, atol=1e-6)


def test_sampling_figure_puts_each_level_points_where_the_record_says(run):
    _, x, image, rec, _ = run
    r = _encoder(rec)
    fig = mv.sampling_figure(image, {"now": r}, (30, 12), head=2)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 3
    q = mv.pixel_query_index(r, (30, 12), (S, S))
    locs, weights = r.points_for(q, head=2)
    for level, ax in enumerate(axes):
        dots = [c for c in ax.collections if isinstance(c, PathCollection)]
        assert len(dots) == 1
        xy = dots[0].get_offsets()
        assert np.allclose(xy[:, 0], locs[level, :, 0].numpy() * S - 0.5, atol=1e-4)
        assert np.allclose(xy[:, 1], locs[level, :, 1].numpy() * S - 0.5, atol=1e-4)
        sizes = dots[0].get_sizes()
        assert np.argmax(sizes) == int(weights[level].argmax())
        assert f"{float(weights[level].sum()):.2f}" in ax.get_title()
    both = mv.sampling_figure(image, {"init": r, "trained": r}, (30, 12))
    assert len([ax for ax in both.axes if ax.get_visible()]) == 6
    with pytest.raises(ValueError, match="head"):
        mv.sampling_figure(image, {"now": r}, (30, 12), head=4)
    with pytest.raises(ValueError, match="SamplingRecord"):
        mv.sampling_figure(image, {"now": rec.attention["decoder.layers.0.cross_attn"]}, (30, 12))


def test_query_figure_greys_exactly_the_no_object_queries(run):
    _, _, image, _, preds = run
    classes, masks = preds[-1]
    classes = classes[0].clone()
    classes[:5, -1] = 50.0                      # five queries certainly "no object"
    classes[5:, -1] = -50.0                     # the others certainly not
    fig = mv.query_predictions_figure(image, classes, masks[0], SCENE_CLASSES)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert len(titles) == classes.shape[0]
    assert sum("no object" in t for t in titles) == 5
    assert "11 of 16" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="class names"):
        mv.query_predictions_figure(image, classes, masks[0], SCENE_CLASSES[:3])


def test_matching_figure_boxes_the_hungarian_pairs(run):
    _, _, _, _, preds = run
    classes, masks = preds[-1]
    label = torch.zeros(S, S, dtype=torch.long)
    label[10:30, 10:30] = 2
    label[40:60, 5:50] = 4
    (tc, tm), = M.semantic_targets(label[None])
    torch.manual_seed(0)
    costs = M.matching_cost(classes[0], masks[0], tc, tm, 256)
    rows, cols = M.hungarian_match(costs["total"])
    fig = mv.matching_figure(costs, (rows, cols), [SCENE_CLASSES[c] for c in tc])
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 4
    for ax in panels:
        boxes = sorted((int(p.get_y() + 0.5), int(p.get_x() + 0.5)) for p in ax.patches if isinstance(p, Rectangle))
        assert boxes == sorted(zip(rows.tolist(), cols.tolist()))
        assert np.allclose(ax.images[0].get_array(), costs[{0: "class", 1: "mask", 2: "dice", 3: "total"}[
            panels.index(ax)]].numpy())
    with pytest.raises(ValueError, match="target names"):
        mv.matching_figure(costs, (rows, cols), ["one"])
    with pytest.raises(ValueError, match="dice"):
        mv.matching_figure({k: v for k, v in costs.items() if k != "dice"}, (rows, cols), ["a", "b", "c"])


def test_masked_attention_figure_counts_the_open_pixels(run):
    _, _, image, rec, preds = run
    records = [rec.attention[f"decoder.layers.{i}.cross_attn"] for i in range(3)]
    q = 3
    fig = mv.masked_attention_layers_figure(image, records, [p[1][0, q] for p in preds], q)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    for i, r in enumerate(records):
        open_ = int((~r.mask_for(q)).sum())
        assert any(t.startswith(f"layer {i} reads") and f"{open_} of {r.k_hw[0] * r.k_hw[1]}" in t for t in titles)
    # the heads' mean is what the bottom row shows
    bottom = [ax for ax in fig.axes if ax.get_title().startswith("layer 0 reads")][0]
    shown = bottom.images[1].get_array()
    assert np.allclose(shown, records[0].probs[0, :, q].mean(0).reshape(records[0].k_hw).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="mask predictions"):
        mv.masked_attention_layers_figure(image, records, [p[1][0, q] for p in preds[:-1]], q)


def test_uncertain_points_figure_splits_the_points(run):
    _, _, image, _, preds = run
    logits = preds[-1][1][0, 0]
    torch.manual_seed(0)
    pts = M.uncertain_points(logits[None, None], 64, 3.0, 0.75)[0]
    fig = mv.uncertain_points_figure(image, logits, pts, 48, target=torch.zeros(S, S))
    middle = fig.axes[1]
    counts = sorted(len(c.get_offsets()) for c in middle.collections if isinstance(c, PathCollection))
    assert counts == [16, 48]
    with pytest.raises(ValueError, match="uncertain"):
        mv.uncertain_points_figure(image, logits, pts, 65)


def test_training_figure_plots_the_card(run):
    losses = [10.0 - 0.01 * i for i in range(100)]
    layer = [{"class": 1.0, "mask": 0.2, "dice": 0.3}] * 4
    fig = mv.training_figure(losses, [(50, 0.2), (100, 0.3)], layer)
    first = fig.axes[0].lines[0]
    assert np.allclose(first.get_ydata(), losses)
    bars = [p for p in fig.axes[1].patches if isinstance(p, Rectangle)]
    assert len(bars) == 12
    assert np.isclose(max(b.get_y() + b.get_height() for b in bars), 2 * 1.0 + 5 * 0.2 + 5 * 0.3)
    with pytest.raises(ValueError):
        mv.training_figure([], [])


def test_sampling_explorer_redraws_from_the_cache(run, monkeypatch):
    model, x, image, _, _ = run
    explorer = SamplingExplorer(model, image, x, query=(10, 10))
    assert explorer.view.value[:4] == b"\x89PNG"
    assert len([ax for ax in explorer.figure.axes if ax.get_visible()]) == 3      # the trained row
    explorer.state.value = "both"                                                  # records the init once
    assert len([ax for ax in explorer.figure.axes if ax.get_visible()]) == 6
    assert explorer.figure._suptitle.get_text().count("init") == 0 and "init" in explorer._cache
    calls = []
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1))       # no forward pass on a redraw
    before = bytes(explorer.view.value)
    explorer.y.value = 50
    explorer.head.value = 3
    explorer.layer.value = "encoder layer 1"
    explorer.state.value = "trained"
    assert len([ax for ax in explorer.figure.axes if ax.get_visible()]) == 3
    assert "encoder layer 1" in explorer.figure._suptitle.get_text() and "y=50" in explorer.figure._suptitle.get_text()
    assert bytes(explorer.view.value) != before and not calls
    records = encoder_sampling_records(segviz.create_model("mask2former-nano").eval(), x)
    assert list(records) == ["pixel_decoder.encoder.0.self_attn", "pixel_decoder.encoder.1.self_attn"]
    data, _ = explorer._repr_mimebundle_()
    assert data["image/png"]
    with pytest.raises(ValueError, match="differ"):
        SamplingExplorer(model, image[:32], x)


def test_loss_terms_figure_draws_the_cards_terms_and_refuses_others():
    steps = list(range(10, 110, 10))
    terms = {"steps": steps}
    for i in range(3):
        for t in ("class", "mask", "dice"):
            terms[f"p{i}/{t}"] = [1.0 / s + i for s in steps]
    fig = mv.loss_terms_figure([5.0 - 0.01 * i for i in range(100)], [(50, 0.2), (100, 0.3)], terms)
    left, mid, right = fig.axes[:3]
    assert len(mid.lines) == 3 and len(right.lines) == 3  # 3 terms of the final prediction; 3 predictions
    # the right panel's last line is the final prediction's weighted sum: (2 + 5 + 5) * (1/s + 2)
    np.testing.assert_allclose(right.lines[-1].get_ydata(), [12 * (1.0 / s + 2) for s in steps])
    np.testing.assert_allclose(mid.lines[0].get_ydata(), [2 * (1.0 / s + 2) for s in steps])
    assert style.check(fig) == []
    with pytest.raises(ValueError, match="loss_terms"):
        mv.loss_terms_figure([1.0], [], {"p0/class": [1.0]})
    with pytest.raises(ValueError, match="unknown entry"):
        mv.loss_terms_figure([1.0], [], {"steps": [1], "p0/focal": [1.0]})
    bad = dict(terms, **{"p0/mask": [1.0]})
    with pytest.raises(ValueError, match="has 1 values for 10 steps"):
        mv.loss_terms_figure([1.0], [], bad)


def test_panoptic_figure_colours_every_object_and_names_stuff():
    img = np.zeros((16, 16, 3), np.uint8)
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[0] = True
    masks[1, :4, :4] = True
    masks[2, 8:, 8:] = True
    masks[0] &= ~(masks[1] | masks[2])
    classes = torch.tensor([0, 2, 2])
    fig = mv.panoptic_figure(img, (classes, masks), (classes[:2], masks[:2]), ["bg", "a", "b"], stuff_classes=[0])
    left, right = fig.axes[:2]
    assert left.get_title().endswith("3 segments") and right.get_title().endswith("2 segments")
    shown = left.images[0].get_array()
    # two objects of one class get two different colours; the stuff stays the (black) photo
    assert not np.array_equal(shown[0, 0], shown[15, 15]) and (np.asarray(shown[0, 15]) == 0).all()
    assert sorted(t.get_text() for t in left.texts) == ["b", "b", "bg"]
    with pytest.raises(ValueError, match="at the image size"):
        mv.panoptic_figure(img, (classes, masks[:, :8]), (classes, masks), ["bg", "a", "b"])
