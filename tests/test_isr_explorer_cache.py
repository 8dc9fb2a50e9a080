"""What the ISR explorer keeps between updates gives the numbers and the picture a fresh
computation gives: the GMACs cost table, the figure redrawn over a kept background (in whole or
only the attention panel's part), the PNG writer, the kept held-out set, and latency timed on
request at its own size. No timings are asserted here (benchmarks/isr_explorer_update.py)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import segviz
from segviz.data import SCENE_CLASSES, Scenes
from segviz.inspect.isr import isr, training_ratios
from segviz.training import evaluate
from segviz.viz import style
from segviz.viz.isr_explorer import (
    PAPER_PRESETS, ISRExplorer, ISRFigure, allowed_ratios, cost_table, evaluate_setting, isr_figure, png_bytes,
)
from tests.toys import threads

SIZE = 64


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with threads(1):
        yield


@pytest.fixture(scope="module")
def data():
    held_out = Scenes(3, size=SIZE, seed=11, split="val")
    return held_out, held_out.array(0), held_out[0][0][None]


@pytest.fixture(scope="module")
def eda():
    torch.manual_seed(0)
    return segviz.create_model("edaformer-nano").eval()


def _decoded(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _settings(model, size):
    """A few settings: each stage at its smallest and largest offered ratio, and the presets."""
    offered = allowed_ratios(model, (size, size))
    low = {g: tuple(options[0] for options in stages.values()) for g, stages in offered.items()}
    high = {g: tuple(options[-1] for options in stages.values()) for g, stages in offered.items()}
    mixed = {g: tuple(options[i % len(options)] for i, options in enumerate(stages.values()))
             for g, stages in offered.items()}
    presets = [{g: p[g] for g in offered} for p in PAPER_PRESETS.values()]
    return [low, high, mixed, *presets]


@pytest.mark.parametrize("name", ["edaformer-nano", "segformer-nano"])
def test_cost_table_adds_up_to_what_flops_counts(name, data):
    _, _, x = data
    torch.manual_seed(0)
    model = segviz.create_model(name).eval()
    table = cost_table(model, tuple(x.shape))
    assert set(table.stage) == set(evaluate_setting(model, x, training_ratios(model)).stage_gmacs)
    for setting in _settings(model, SIZE):
        for pool in ("avg", "max"):
            counted = evaluate_setting(model, x, setting, pool)
            read = evaluate_setting(model, x, setting, pool, costs=table)
            assert read.gmacs == pytest.approx(counted.gmacs, rel=1e-9)
            assert read.stage_gmacs == pytest.approx(counted.stage_gmacs, rel=1e-9)
            assert read.stage_ratios == counted.stage_ratios
            assert np.array_equal(read.labels, counted.labels)
    with isr(model, encoder=(16, 8, 4, 2)):  # ratios the model has set do not leak into the table
        assert cost_table(model, tuple(x.shape)) == table
    with pytest.raises(ValueError, match="counted for input"):
        evaluate_setting(model, torch.zeros(1, 3, 32, 32), training_ratios(model), costs=table)


def test_cost_table_outside_its_ratios_counts_instead(eda, data):
    _, _, x = data
    table = cost_table(eda, tuple(x.shape), {"encoder": {1: (8,), 2: (4,), 3: (2,), 4: (1,)},
                                             "decoder": {2: (4,), 3: (2,), 4: (1,)}})
    setting = PAPER_PRESETS[next(iter(PAPER_PRESETS))]
    assert table.gmacs({"enc 1": 16, "enc 2": 8, "enc 3": 2, "enc 4": 1, "dec 2": 8, "dec 3": 4, "dec 4": 2}) is None
    with isr(eda, **setting):
        counted = segviz.flops(eda, tuple(x.shape)).total
    assert evaluate_setting(eda, x, setting, costs=table).gmacs == pytest.approx(counted)


def test_kept_figure_renders_what_savefig_draws(eda, data):
    held_out, image, x = data
    ref = evaluate_setting(eda, x, training_ratios(eda), eval_set=held_out)
    results = [evaluate_setting(eda, x, s, eval_set=held_out) for s in _settings(eda, SIZE)[:3]]
    picture = ISRFigure(image, ref, SCENE_CLASSES)
    steps = [(ref, "enc 1", (32, 32), 0),
             (results[0], "enc 1", (32, 32), 0),     # new setting: everything redrawn
             (results[0], "enc 1", (5, 60), 0),      # query: the attention panel's part only
             (results[0], "dec 4", (5, 60), 7),      # stage and head
             (results[1], "dec 2", (40, 10), 1),
             (results[1], "enc 2", (40, 10), 1),
             (results[2], "enc 4", (63, 0), 3),
             (ref, "enc 1", (32, 32), 0)]
    partial = []
    for i, (result, stage, query, head) in enumerate(steps):
        before = dict(picture.renders)
        picture.update(result, stage, query, head)
        if i == 5:  # a save at another dpi replaces the canvas's renderer: the next render starts over
            style.png_bytes(picture.figure, 1)
        kept = _decoded(picture.png())
        partial.append(picture.renders["attention part"] > before["attention part"])
        assert sum(picture.renders.values()) == sum(before.values()) + 1
        assert picture.figure.dpi == style.DPI
        full = _decoded(style.png_bytes(isr_figure(image, result, ref, stage, query, head, SCENE_CLASSES), 2))
        assert kept.shape == full.shape
        differ = np.abs(kept.astype(int) - full.astype(int)).max(-1) > 0
        assert not differ.any(), f"step {i}: {differ.mean():.2%} of pixels differ from a full draw"
    # new settings and the first render after the save at 100 dpi draw everything; stage,
    # query and head changes only the attention panel's part
    assert partial == [False, False, True, True, False, False, False, False]
    # nothing changed: nothing drawn, the same picture
    assert np.array_equal(_decoded(picture.png()), kept) and picture.renders["full"] == 6


def test_png_bytes_round_trip():
    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    assert np.array_equal(_decoded(png_bytes(rgb)), rgb)
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(rgb.astype(np.float32))


def test_explorer_latency_on_request_at_its_size(eda, data):
    held_out, image, x = data
    explorer = ISRExplorer(eda, image, x, eval_set=held_out, class_names=SCENE_CLASSES, latency_repeats=1,
                           latency_size=128)
    assert explorer.latency_size == (128, 128)
    assert explorer.latency is None and "not timed" in explorer.readout.value
    assert "128×128" in explorer.time_latency.description
    assert "held-out mIoU (3 images)" in explorer.readout.value
    with isr(eda):
        assert explorer.reference.miou == evaluate(eda, held_out)
    now, training = explorer.measure_latency()
    assert now > 0 and training > 0
    assert "latency at 128×128" in explorer.readout.value
    assert explorer.latency == now and explorer.reference_latency == training
    explorer.sliders["enc 1"].value = 16
    assert explorer.latency is None and "not timed" in explorer.readout.value
    with isr(eda, encoder=(16, 4, 2, 1)):
        assert explorer.result.miou == evaluate(eda, held_out)
    explorer.time_latency.click()
    assert explorer.latency is not None and len(explorer.latencies) == 2
    explorer.sliders["enc 1"].value = 8  # back to a timed setting: its latency is shown again
    assert (explorer.latency, explorer.reference_latency) == (now, training)
    assert explorer.figure.dpi == style.DPI and explorer.view.width == str(style.display_width(explorer.figure))


def test_explorer_latency_size_and_auto(eda, data):
    _, image, x = data
    same = ISRExplorer(eda, image, x, latency_repeats=1, latency_size=None)
    assert same.latency_size == (SIZE, SIZE)
    smaller = ISRExplorer(eda, image, x, latency_repeats=1, latency_size=32)
    assert smaller.latency_size == (SIZE, SIZE)  # never smaller than the input
    auto = ISRExplorer(eda, image, x, latency_repeats=1, latency_size=None, auto_latency=True)
    assert auto.latency is not None and "latency at 64×64" in auto.readout.value
    auto.sliders["dec 2"].value = 8
    assert auto.latency is not None and len(auto.latencies) == 2
    with pytest.raises(ValueError, match="latency_repeats"):
        ISRExplorer(eda, image, x, latency_repeats=0)
