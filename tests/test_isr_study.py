"""segviz.viz.isr_study: the ladder of ISR settings, curves over seeds, and the Table-5a rows."""
import math

import pytest
import torch

import segviz
from segviz.data import Scenes
from segviz.training import evaluate
from segviz.viz.isr_study import ISR_LADDER, PAPER_LABELS, isr_curve, model_ladder, plot_isr_curves, spread, table_5a


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: segviz.create_model(name).eval() for name in ("edaformer-nano", "segformer-nano")}


def test_ladder_starts_at_training_ratios_and_holds_the_paper_presets(models):
    first = next(iter(ISR_LADDER.values()))
    assert first == {"encoder": tuple(models["edaformer-nano"].segviz_config["pool_ratios"]),
                     "decoder": tuple(models["edaformer-nano"].segviz_config["decoder_pool_ratios"])}
    assert set(PAPER_LABELS) <= set(ISR_LADDER)
    # every step reduces at least as much as the one before, stage by stage
    steps = list(ISR_LADDER.values())
    for before, after in zip(steps, steps[1:]):
        for group in ("encoder", "decoder"):
            assert all(b <= a for b, a in zip(before[group], after[group]))


def test_segformer_takes_only_encoder_ratios_without_repeats(models):
    eda, seg = model_ladder(models["edaformer-nano"]), model_ladder(models["segformer-nano"])
    assert list(eda) == list(ISR_LADDER)
    assert all(set(s) == {"encoder"} for s in seg.values())
    encoders = [s["encoder"] for s in seg.values()]
    assert len(encoders) == len(set(encoders)) == len(ISR_LADDER) - 1   # paper 1 repeats "enc 16-8-2-1"


def test_curve_costs_fall_and_its_first_point_is_the_plain_model(models):
    data = Scenes(2, size=128, seed=0, split="val")
    cache = {}
    net = models["edaformer-nano"]
    rows = isr_curve(net, data, 128, gmacs_cache=cache)
    assert [r["setting"] for r in rows] == list(ISR_LADDER)
    gmacs = [r["gmacs"] for r in rows]
    assert all(a > b for a, b in zip(gmacs, gmacs[1:]))                 # each step is cheaper
    assert gmacs[0] == pytest.approx(segviz.flops(net, (1, 3, 128, 128)).total)
    assert rows[0]["miou"] == pytest.approx(evaluate(net, data))
    assert len(cache) == len(rows)
    # the cached GMACs are reused for a second model of the same config
    assert isr_curve(net, data, 128, gmacs_cache=cache)[3]["gmacs"] == gmacs[3] and len(cache) == len(rows)
    assert segviz.inference_state(net) == segviz.inference_state(segviz.create_model("edaformer-nano"))  # restored


def test_spread_and_table_5a_statistics():
    curves = [[{"setting": "a", "gmacs": 1.0, "miou": v}, {"setting": "b", "gmacs": 0.5, "miou": v - 0.1}]
              for v in (0.3, 0.4, 0.5)]
    rows = spread(curves)
    assert rows[0]["mean"] == pytest.approx(0.4) and rows[0]["std"] == pytest.approx(0.1) and rows[0]["n"] == 3
    assert rows[1]["mean"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="disagree"):
        spread([curves[0], curves[1][::-1]])
    table = table_5a([0.3, 0.32], [0.28, 0.30], [0.35, 0.37])
    assert [r["mean"] for r in table] == pytest.approx([0.36, 0.31, 0.29])
    assert table[1]["std"] == pytest.approx(math.sqrt(2) * 0.01)
    assert table[0]["seeds"] == 2 and table[2]["values"] == [0.28, 0.30]


def test_curves_figure_follows_the_style():
    curves = {"m1": [[{"setting": s, "gmacs": g, "miou": v} for s, g, v in zip(ISR_LADDER, range(6, 0, -1), (0.5, 0.49, 0.48, 0.47, 0.4, 0.3))]] * 3}
    fig = plot_isr_curves(curves)
    assert fig.get_figwidth() <= 10
    assert [ax.get_xlabel() for ax in fig.axes[:2]] == ["GMACs per 256×256 image", "GMACs, % of the training-ratio cost"]
