"""The ISR explorer, headless: set each control's ``.value`` and check what it redraws."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import segviz
from segviz.data import SCENE_CLASSES, Scenes
from segviz.inspect.isr import current_ratios, training_ratios
from segviz.viz.isr_explorer import (
    CUSTOM, PAPER_PRESETS, TRAINING, ISRExplorer, allowed_ratios, evaluate_setting, isr_figure, measure_latency,
)
from tests.toys import threads

SIZE = 64


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny inputs run fastest on one thread, and much faster than on two when the cores are busy."""
    with threads(1):
        yield


@pytest.fixture(scope="module")
def data():
    held_out = Scenes(4, size=SIZE, seed=77, split="val")  # the -nano models' 6 classes
    return held_out, held_out.array(0), held_out[0][0][None]


@pytest.fixture(scope="module")
def eda():
    torch.manual_seed(0)
    return segviz.create_model("edaformer-nano").eval()


@pytest.fixture(scope="module")
def explorer(eda, data):
    held_out, image, x = data
    return ISRExplorer(eda, image, x, eval_set=held_out, class_names=SCENE_CLASSES, latency_repeats=1)


def _gmacs_text(explorer) -> float:
    return float(explorer.gmacs.value.split("<b>")[1].split(" GMACs")[0])


def test_allowed_ratios_fit_the_feature_maps(eda):
    offered = allowed_ratios(eda, (SIZE, SIZE))
    # 64 px: encoder maps 16, 8, 4, 2 per side; decoder stages 2, 3, 4 read 8, 4, 2
    assert offered["encoder"] == {1: (1, 2, 4, 8, 16), 2: (1, 2, 4, 8), 3: (1, 2, 4), 4: (1, 2)}
    assert offered["decoder"] == {2: (1, 2, 4, 8), 3: (1, 2, 4), 4: (1, 2)}


def test_starts_at_training_ratios(explorer, eda):
    assert explorer.ratios() == training_ratios(eda)
    assert explorer.preset.value == TRAINING
    assert explorer.result is explorer.reference
    assert "held-out mIoU" in explorer.readout.value
    assert set(explorer.sliders) == {"enc 1", "enc 2", "enc 3", "enc 4", "dec 2", "dec 3", "dec 4"}
    assert all("segviz-isr-slider" in s._dom_classes for s in explorer.sliders.values())
    assert "segviz-gmacs" in explorer.gmacs._dom_classes
    assert explorer.view.value[:4] == b"\x89PNG"


def test_raising_a_ratio_lowers_gmacs_and_restoring_it_matches_training(explorer, eda):
    before_gmacs, before_png = _gmacs_text(explorer), explorer.view.value
    before_stage = explorer.result.stage_gmacs["enc 1"]
    explorer.sliders["enc 1"].value = 16
    assert _gmacs_text(explorer) < before_gmacs
    assert explorer.result.stage_gmacs["enc 1"] < before_stage
    assert explorer.result.stage_gmacs["enc 2"] == explorer.reference.stage_gmacs["enc 2"]
    assert explorer.result.records["enc 1"].k_hw == (1, 1)  # 16x16 map pooled by 16
    assert explorer.view.value != before_png
    assert explorer.preset.value == CUSTOM
    assert current_ratios(eda) == training_ratios(eda), "the explorer must not leave ISR set on the model"
    explorer.sliders["enc 1"].value = 8
    assert explorer.preset.value == TRAINING
    assert _gmacs_text(explorer) == pytest.approx(before_gmacs)


def test_lowering_a_ratio_below_training_raises_gmacs(explorer):
    start = _gmacs_text(explorer)
    explorer.sliders["dec 2"].value = 1
    assert _gmacs_text(explorer) > start
    assert explorer.result.records["dec 2"].k_hw == (8, 8)
    explorer.sliders["dec 2"].value = 4


def test_preset_sets_every_slider(explorer):
    name = next(iter(PAPER_PRESETS))
    explorer.preset.value = name
    assert explorer.ratios() == PAPER_PRESETS[name]
    assert {s: explorer.sliders[s].value for s in ("enc 1", "dec 2", "dec 4")} == {"enc 1": 16, "dec 2": 8, "dec 4": 2}
    assert _gmacs_text(explorer) < explorer.reference.gmacs
    assert "%" in explorer.table.value and "dec 4" in explorer.table.value
    explorer.preset.value = TRAINING
    assert explorer.ratios() == explorer.training


def test_query_and_stage_redraw_without_recomputing(explorer):
    explorer.preset.value = TRAINING
    result, cached = explorer.result, len(explorer._cache)
    png = explorer.view.value
    explorer.y.value = 5
    explorer.x.value = 60
    assert explorer.view.value != png
    explorer.stage.value = "dec 4"
    assert explorer.head.max == explorer.result.records["dec 4"].probs.shape[1] - 1 == 7
    explorer.head.value = 7
    explorer.stage.value = "enc 1"
    assert explorer.head.max == 0 and explorer.head.value == 0
    assert explorer.result is result and len(explorer._cache) == cached


def test_max_pooling_changes_the_attention(explorer):
    explorer.preset.value = TRAINING
    avg = explorer.result.records["enc 1"].probs
    explorer.pool.value = "max"
    assert explorer.result.pool == "max"
    assert not torch.allclose(explorer.result.records["enc 1"].probs, avg)
    explorer.pool.value = "avg"


def test_evaluate_setting_at_training_ratios_is_the_plain_prediction(eda, data):
    _, _, x = data
    result = evaluate_setting(eda, x, training_ratios(eda))
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(eda(x), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    assert np.array_equal(result.labels, logits.argmax(1)[0].numpy())
    assert result.miou is None
    assert result.gmacs == pytest.approx(segviz.flops(eda, (1, 3, SIZE, SIZE)).total)
    with pytest.raises(ValueError, match="one image"):
        evaluate_setting(eda, torch.cat([x, x]), training_ratios(eda))
    with pytest.raises(ValueError, match="unknown stage"):
        isr_figure(data[1], result, result, "enc 9", (0, 0))
    settings = {"training": {}, "paper, max pool": {**PAPER_PRESETS[next(iter(PAPER_PRESETS))], "pool": "max"}}
    times = measure_latency(eda, x, settings, repeats=1)
    assert set(times) == set(settings) and min(times.values()) > 0
    assert current_ratios(eda) == training_ratios(eda)
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(eda, x, settings, repeats=0)


def test_segformer_gets_encoder_sliders_only(data):
    _, image, x = data
    torch.manual_seed(0)
    model = segviz.create_model("segformer-nano").eval()
    explorer = ISRExplorer(model, image, x, latency_repeats=1)
    assert list(explorer.sliders) == ["enc 1", "enc 2", "enc 3", "enc 4"]
    # SegFormer pools on top of its learned stride-sr conv: only multiples of sr are offered
    assert explorer.sliders["enc 1"].options == (8, 16)
    assert set(explorer.presets) == {TRAINING, *PAPER_PRESETS}
    start = _gmacs_text(explorer)
    explorer.preset.value = list(PAPER_PRESETS)[1]
    assert explorer.ratios() == {"encoder": (16, 8, 4, 2)}
    assert _gmacs_text(explorer) < start
    assert "held-out mIoU" not in explorer.readout.value


def test_image_and_input_must_match(eda, data):
    _, image, x = data
    with pytest.raises(ValueError, match="differ in size"):
        ISRExplorer(eda, image[:32], x)


def test_decoder_diagram_is_read_from_the_model(eda):
    from segviz.inspect.isr import isr
    from segviz.viz.edaformer_diagram import decoder_diagram, decoder_structure

    rows = decoder_structure(eda, (128, 128))
    assert [(r["level"], r["blocks"], r["heads"], r["channels"], r["hw"]) for r in rows] == [
        (4, 3, 8, 128, (4, 4)), (3, 2, 4, 64, (8, 8)), (2, 1, 2, 32, (16, 16))]
    assert [r["ratio"] for r in rows] == [1, 2, 4]
    with isr(eda, decoder=(8, 4, 2)):
        assert [r["ratio"] for r in decoder_structure(eda)] == [2, 4, 8]
    variant = segviz.create_model("edaformer-nano", decoder_depths=(1, 4, 1))
    assert [r["blocks"] for r in decoder_structure(variant)] == [1, 4, 1]
    fig = decoder_diagram(variant, (128, 128))
    assert "{1-4-1}" in fig.axes[0].get_title()
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sum(t.startswith("EFT block") for t in texts) == 6
    with pytest.raises(ValueError, match="no EDAFormer all-attention decoder"):
        decoder_structure(segviz.create_model("segformer-nano"))
