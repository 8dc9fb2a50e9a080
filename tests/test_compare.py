"""Comparing architectures: ERF checks against kernel geometry, the comparison table against
segviz.flops, the viz.compare figures (style, plotly data with a static fallback), and the saved
notebook 07 (plotly without any CDN)."""
import json
import pathlib
import re

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from torch import nn

import segviz
from segviz.inspect.attention_distance import attention_distance
from segviz.inspect.compare import comparison_table, interleaved_medians
from segviz.nn.recording import AttentionRecord, DeformedGridRecord, SamplingRecord, WindowAttentionRecord
from segviz.viz import compare as cviz
from segviz.viz import style

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "07_compare.ipynb"
OUT = ROOT / "test-output" / "figures"


# --------------------------------------------------------------------------- ERF against geometry
def test_erf_of_one_3x3_conv_is_its_kernel_support():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    images = torch.randn(5, 3, 15, 15)  # odd: one centre unit, (7, 7)
    e = segviz.erf(conv, images, objective="sum")
    support = np.argwhere(e.map > 0)
    assert support.min(0).tolist() == [6, 6] and support.max(0).tolist() == [8, 8]
    assert (e.map > 0).sum() == 9
    # the gradient of sum_c y_c(7, 7) w.r.t. x[cin, 7 + dy, 7 + dx] is sum_c w[c, cin, 1 + dy, 1 + dx]
    expected = conv.weight.detach().sum(0).abs().sum(0).double().numpy()
    assert np.allclose(e.map[6:9, 6:9], expected / expected.max())
    assert e.area[0.2] == pytest.approx((expected / expected.max() >= 0.2).sum() / 15 ** 2)


def test_erf_of_a_dilated_stack_spans_the_theoretical_field():
    torch.manual_seed(0)
    stack = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=2, dilation=2), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=4, dilation=4))
    images = torch.rand(8, 3, 31, 31) + 0.5
    rf = segviz.receptive_field(stack, None, input_size=31)
    assert rf.size == (15, 15)  # 1 + 2 + 4 + 8
    e = segviz.erf(stack, images, objective="norm")
    assert e.box() == rf.window((15, 15))  # the centre unit's window: (8, 8, 22, 22)
    assert e.box() == (8, 8, 22, 22)


# --------------------------------------------------------------------------- the comparison table
def test_table_gmacs_are_segviz_flops_and_mious_come_from_the_cards():
    table = comparison_table(["segformer-nano", "deeplabv3plus-nano"], input_size=64, runs=1, warmup=0)
    for row in table:
        model = segviz.create_model(row.model, weights="scenes")
        assert row.gmacs == pytest.approx(segviz.flops(model, (1, 3, 64, 64)).total, rel=1e-12)
        assert row.params == segviz.count_params(model)
        assert row.miou == segviz.zoo.find(row.model, "scenes").val_miou
        assert row.latency_s is not None and row.latency_s > 0
        assert row.model in row.card and "mIoU" in row.card
    text = table.text()
    assert "segformer-nano" in text and "CPU ms" in text and "CPU ms" not in table.text(latency=False)


def test_table_of_published_configs_on_meta():
    table = comparison_table(["segformer-b0"], input_size=512, latency=False)
    row = table.row("segformer-b0")
    with torch.device("meta"):
        model = segviz.create_model("segformer-b0")
    assert row.gmacs == pytest.approx(segviz.flops(model, (1, 3, 512, 512), device="meta").total, rel=1e-12)
    assert row.published_gmacs == segviz.registry.get_spec("segformer-b0").published["gmacs"]
    assert row.published_input_size == (512, 512)
    assert row.latency_s is None and row.miou is None
    assert comparison_table(["segformer-b0"], input_size=64, latency=False, miou={"segformer-b0": 0.5}).rows[0].miou == 0.5


def test_table_bad_inputs():
    for kwargs in ({"input_size": 0}, {"input_size": (64,)}, {"input_size": "512"}, {"runs": 0}, {"warmup": -1},
                   {"threads": 0}):
        with pytest.raises(ValueError):
            comparison_table(["segformer-nano"], latency=False, **kwargs)
    with pytest.raises(ValueError, match="unknown model"):
        comparison_table(["segformer-nan"], latency=False)
    with pytest.raises(ValueError, match="empty"):
        comparison_table([], latency=False)
    with pytest.raises(ValueError, match="not in this table"):
        comparison_table(["segformer-nano"], input_size=64, latency=False).row("swin-t")


def test_interleaved_medians_alternate():
    calls = []
    medians = interleaved_medians([lambda: calls.append("a"), lambda: calls.append("b")], warmup=1, runs=3)
    assert calls == ["a", "b"] * 4 and len(medians) == 2 and all(m >= 0 for m in medians)


# --------------------------------------------------------------------------- figures
def _check_style(name, fig):
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / f"{name}.png", dpi=fig.dpi, bbox_inches="tight")
    shown, _ = style.displayed_size(fig)
    assert shown <= style.MAX_WIDTH + 0.05, f"{name}: displayed {shown:.2f} in wide"
    assert style.check(fig) == []


def _erfs():
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, 2, 3, padding=1)
    images = torch.rand(2, 3, 17, 17, generator=g)
    one = segviz.erf(conv, images)
    return {m: {c: one for c in ("stage 1", "stage 2", "head")} for m in ("model a", "model b")}


@pytest.fixture(scope="module")
def table():
    return comparison_table(["segformer-nano", "edaformer-nano"], input_size=64, latency=False)


def test_erf_grid_figure(table):
    fig = cviz.erf_grid_figure(_erfs(), windows={"model a": {"stage 1": (7, 7, 9, 9)}})
    _check_style("compare_erf_grid", fig)
    labels = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel().endswith("%")]
    assert len(labels) == 6  # one area ratio under every panel
    with pytest.raises(ValueError):
        cviz.erf_grid_figure({})
    with pytest.raises(ValueError):
        cviz.erf_grid_figure(_erfs(), threshold=0)


def test_attention_distance_figure():
    rec = {"stage 1": AttentionRecord(torch.full((1, 2, 16, 4), 0.25), (4, 4), (2, 2)),
           "window": WindowAttentionRecord(torch.full((4, 1, 4, 4), 0.25), 2, (4, 4), 1)}
    distances = {"model a": attention_distance(rec, 64), "model b": attention_distance(rec, 64)}
    _check_style("compare_attention_distance", cviz.attention_distance_figure(distances, 64))
    with pytest.raises(ValueError):
        cviz.attention_distance_figure({"model a": {}}, 64)


def test_cost_quality_plotly_and_static(table):
    fig = cviz.cost_quality_figure(table)
    assert len(fig.data) == 2
    assert {t.name for t in fig.data} == {"segformer-nano", "edaformer-nano"}
    for trace, row in zip(fig.data, table):
        assert trace.x[0] == row.gmacs and trace.y[0] == row.miou
        assert "held-out mIoU" in trace.hovertemplate and "parameters" in row.card
    sizes = [t.marker.size[0] for t in fig.data]
    assert sizes[1] > sizes[0]  # edaformer-nano has more parameters
    _check_style("compare_cost_quality", cviz.cost_quality_static(table))
    with pytest.raises(ValueError):
        cviz.cost_quality_figure("not a table")


def test_cost_quality_static_moves_a_crowded_label_below_its_marker():
    from segviz.inspect.compare import ComparisonRow, ComparisonTable

    rows = (ComparisonRow("low", 10**6, 3.2, (64, 64), miou=0.23), ComparisonRow("high", 2 * 10**6, 3.5, (64, 64), miou=0.26),
            ComparisonRow("alone", 10**6, 1.0, (64, 64), miou=0.23))
    fig = cviz.cost_quality_static(ComparisonTable(rows, (64, 64)))
    below = {a.get_text().split("\n")[0]: a.xyann[1] < 0 for a in fig.axes[0].texts}
    assert below == {"low": True, "high": False, "alone": False}  # only the one with a close neighbour above


def test_heatmap_and_the_fallback_bundle():
    values = torch.arange(12.0).reshape(3, 4)
    fig = cviz.heatmap_figure(values, x_labels=list("abcd"), marked=[(0, 1), (2, 3)], value_name="cost")
    assert np.array_equal(np.asarray(fig.data[0].z), values.numpy())
    assert len(fig.layout.shapes) == 2
    static = cviz.heatmap_static(values, x_labels=list("abcd"), marked=[(0, 1)])
    _check_style("compare_heatmap", static)
    bundle = cviz.WithFallback(fig, static)._repr_mimebundle_()
    assert set(bundle) == {"application/vnd.plotly.v1+json", "image/png", "text/plain"}
    text = json.dumps(bundle["application/vnd.plotly.v1+json"])
    assert "<script" not in text and "cdn" not in text.lower()
    assert bundle["application/vnd.plotly.v1+json"]["data"][0]["type"] == "heatmap"
    for bad in ({"values": torch.zeros(3)}, {"values": values, "x_labels": ["a"]}, {"values": values, "marked": [(5, 0)]}):
        with pytest.raises(ValueError):
            cviz.heatmap_figure(**bad)


def test_query_row_figure():
    g = torch.Generator().manual_seed(0)
    photo = np.zeros((32, 32, 3), np.uint8)
    shapes = [(2, 2), (4, 4)]
    lq = 20
    locs = torch.rand(1, lq, 2, 2, 3, 2, generator=g)
    weights = torch.softmax(torch.randn(1, lq, 2, 6, generator=g), -1).view(1, lq, 2, 2, 3)
    conv = nn.Conv2d(3, 2, 3, padding=1)
    panels = {
        "reduced": AttentionRecord(torch.softmax(torch.randn(1, 2, 64, 4, generator=g), -1), (8, 8), (2, 2)),
        "window": WindowAttentionRecord(torch.softmax(torch.randn(4, 1, 16, 16, generator=g), -1), 4, (8, 8), 2),
        "sampling": SamplingRecord(locs, weights, shapes, None, (2, 2)),
        "erf": segviz.erf(conv, torch.rand(1, 3, 32, 32, generator=g)),
    }
    _check_style("compare_query_row", cviz.query_row_figure(photo, panels, (16, 16), windows={"erf": (15, 15, 17, 17)}))
    wrapped = cviz.query_row_figure(photo, panels, (16, 16), columns=3)
    visible = [ax for ax in wrapped.axes if ax.axison and ax.get_title()]
    assert len(visible) == 4 and len({round(ax.get_position().y0, 3) for ax in visible}) == 2  # 3 + 1 panels
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError):
            cviz.query_row_figure(photo, panels, (16, 16), columns=bad)
    with pytest.raises(ValueError):
        cviz.query_row_figure(photo, panels, (40, 0))
    with pytest.raises(ValueError):
        cviz.query_row_figure(photo, {"bad": torch.zeros(3)}, (1, 1))


def test_query_row_figure_draws_dat_deformed_points_per_group():
    g = torch.Generator().manual_seed(1)
    photo = np.zeros((32, 32, 3), np.uint8)
    ky, kx = torch.meshgrid((torch.arange(2) + 0.5) / 2, (torch.arange(3) + 0.5) / 3, indexing="ij")
    reference = torch.stack([kx, ky], -1)  # (2, 3, 2): (x, y) cell centres
    points = (reference + 0.05 * torch.randn(1, 2, 2, 3, 2, generator=g)).clamp(0, 1)  # 2 groups
    probs = torch.softmax(torch.randn(1, 4, 8 * 8, 6, generator=g), -1)  # 4 heads, 2 per group
    record = DeformedGridRecord(probs, (8, 8), (2, 3), reference, points)
    fig = cviz.query_row_figure(photo, {"dat": record}, (10, 20))
    _check_style("compare_query_row_dat", fig)
    ax = fig.axes[0]
    dots = [c for c in ax.collections if len(c.get_offsets()) == 6]
    assert len(dots) == 2  # one set of 6 deformed keys per offset group
    token = record.query_token((10, 20), (32, 32))
    for group, dot in enumerate(dots):
        expected = points[0, group].reshape(-1, 2).numpy() * 32 - 0.5
        np.testing.assert_allclose(np.asarray(dot.get_offsets()), expected, atol=1e-5)
        mean_weight = probs[0, 2 * group:2 * group + 2, token[0] * 8 + token[1]].mean(0).numpy()
        assert np.argmax(dot.get_sizes()) == np.argmax(mean_weight)  # area follows the group's mean weight
    assert ax.get_xlabel() == "2×3 deformed keys\n2 groups (dot colour)"


# --------------------------------------------------------------------------- the saved notebook
CDN_SCRIPT = re.compile(r"<script[^>]*src=[\"']?https?://|cdn\.plot\.ly|https://cdn", re.I)


def test_notebook_plotly_outputs_need_no_cdn_and_carry_a_static_image():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    text = NOTEBOOK.read_text(encoding="utf-8")
    found = CDN_SCRIPT.search(text)
    assert found is None, f"{NOTEBOOK.name} refers to a CDN: {found.group(0)}"
    plotly_outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
                      if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(plotly_outputs) >= 3, "the cost/quality scatter and two heat maps are plotly outputs"
    for output in plotly_outputs:
        data = output["data"]
        assert "image/png" in data, "every plotly output carries a static PNG for readers of the saved file"
        assert "text/html" not in data, "no embedded plotly.js (the notebook renderer) in the saved file"
        assert data["application/vnd.plotly.v1+json"]["data"], "the plotly output holds its traces"
