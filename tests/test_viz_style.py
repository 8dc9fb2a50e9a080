"""Every public figure of segviz.viz follows segviz.viz.style: at most 10 inches wide as displayed
(at 100 dpi) and no text under 9 pt. Each figure is also saved under test-output/figures/ to be looked at.
"""
import matplotlib

matplotlib.use("Agg")

import pathlib

import numpy as np
import pytest
import torch
from matplotlib.text import Text

import segviz
from segviz import viz
from segviz.data import CLASSES, SCENE_CLASSES, Scenes
from segviz.nn.recording import AttentionRecord
from segviz.viz import style

OUT = pathlib.Path(__file__).resolve().parents[1] / "test-output" / "figures"
H = W = 64


def photo():
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([x * 4, y * 4, (x + y) * 2], -1).clip(0, 255).astype(np.uint8)


def record(q_hw=(16, 16), sr=4, heads=2):
    kh, kw = q_hw[0] // sr, q_hw[1] // sr
    probs = torch.softmax(torch.randn(1, heads, q_hw[0] * q_hw[1], kh * kw, generator=torch.Generator().manual_seed(0)), -1)
    return AttentionRecord(probs, q_hw, (kh, kw))


def stage_maps(channels=(4, 8, 16, 32)):
    g = torch.Generator().manual_seed(0)
    return {f"stage {i + 1}": torch.randn(1, c, H // 4 >> i, W // 4 >> i, generator=g) for i, c in enumerate(channels)}


def four_stages():
    return {f"stage {i + 1}": record((16 >> i, 16 >> i), max(4 >> i, 1), heads) for i, heads in enumerate((1, 2, 5, 8))}


def decoder_inputs():
    g = torch.Generator().manual_seed(1)
    projected = [torch.randn(1, 6, 16 >> i, 16 >> i, generator=g) for i in range(4)]
    upsampled = [torch.nn.functional.interpolate(p, size=(16, 16), mode="bilinear") for p in projected]
    logits = torch.randn(1, 5, 16, 16, generator=g)
    return projected, upsampled, torch.randn(1, 6, 16, 16, generator=g), logits, CLASSES


def leaks(n=5):
    g = torch.Generator().manual_seed(2)
    return {f"stage {i + 1}, flat grey photo" if i else "one Mix-FFN, identical tokens":
            viz.deviation_from_centre(torch.randn(1, 4, 16 >> (i // 2), 16 >> (i // 2), generator=g)) for i in range(n)}


@pytest.fixture(scope="module")
def eda():
    torch.manual_seed(0)
    return segviz.create_model("edaformer-nano").eval()


def _isr_figure(eda):
    from segviz.viz.isr_explorer import PAPER_PRESETS, evaluate_setting, isr_figure

    data = Scenes(2, size=64, seed=5, split="val")
    x = data[0][0][None]
    ref = evaluate_setting(eda, x, {}, eval_set=data)
    now = evaluate_setting(eda, x, PAPER_PRESETS["paper: enc [16,8,2,1], dec [2,4,8]"], eval_set=data)
    return isr_figure(data.array(0), now, ref, "enc 1", (32, 32), class_names=SCENE_CLASSES)


def _diagram(eda):
    from segviz.viz.edaformer_diagram import decoder_diagram

    return decoder_diagram(eda, (256, 256))


FIGURES = {
    "patch_figure": lambda: viz.patch_figure(photo(), at=(30, 30)),
    "prediction_overlay": lambda: viz.prediction_overlay(photo(), torch.randn(1, 5, 16, 16), CLASSES, title="segformer-nano on a 64×64 photo"),
    "prediction_panels_3": lambda: viz.prediction_panels(
        [(photo(), torch.randn(1, 5, 16, 16), "held-out Shapes image 3: truth"), (photo(), torch.randn(1, 5, 16, 16), "its prediction"),
         (np.repeat(np.repeat(photo(), 4, 0), 4, 1), torch.randn(1, 5, 64, 64), "a photo the model never saw")], CLASSES,
        same_scale=False),
    "prediction_panels_2_sizes": lambda: viz.prediction_panels(
        [(photo(), torch.randn(1, 5, 16, 16), "256×256 input"), (np.repeat(np.repeat(photo(), 2, 0), 2, 1)[:100, :100], torch.randn(1, 5, 25, 25), "400×400 input")], CLASSES),
    "prediction_panels_3_scaled": lambda: viz.prediction_panels(
        [(photo(), torch.randn(1, 5, 16, 16), "held-out Shapes image 3: truth"), (photo(), torch.randn(1, 5, 16, 16), "its prediction"),
         (np.repeat(np.repeat(photo(), 4, 0), 4, 1), torch.randn(1, 5, 64, 64), "a photo the model never saw")], CLASSES),
    "prediction_panels_5": lambda: viz.prediction_panels([(photo(), torch.randn(1, 5, 16, 16), f"panel {i}") for i in range(5)], CLASSES),
    "token_pyramid": lambda: viz.token_pyramid(stage_maps(), photo()),
    "stage_pca_4": lambda: viz.stage_pca(stage_maps(), photo()),
    "stage_pca_3": lambda: viz.stage_pca({f"decoder stage {s}": m for s, m in zip((4, 3, 2), list(stage_maps((8, 8, 8)).values())[::-1])}, photo()),
    "decoder_steps": lambda: viz.decoder_steps(*decoder_inputs()),
    "padding_leak_5": lambda: viz.padding_leak(leaks(5)),
    "padding_leak_1": lambda: viz.padding_leak(leaks(1)),
    "table_figure": lambda: viz.table_figure(viz.attention_cost_rows((512, 512), dims=(32, 64, 160, 256)), title="attention cost"),
    "plot_shapes": lambda: viz.plot_shapes(Scenes(4, size=128, seed=0), [0, 1, 2, 3]),
    "attention_overlay": lambda: viz.attention_overlay(photo(), record(), (10, 50), title="stage 1"),
    "attention_grid": lambda: viz.attention_grid(photo(), four_stages(), (10, 50)),
    "attention_grid_4_heads": lambda: viz.attention_grid(photo(), four_stages(), (10, 50), heads=[0, 1, 2, 3]),
}


def _swin_figures():
    """The Swin chapter's figures (segviz.viz.swin), on small random inputs."""
    from segviz.models.swin import PatchMerging, WindowAttention
    from segviz.nn.recording import WindowAttentionRecord
    from segviz.viz import swin as sv
    from segviz.viz.swin_explorer import explorer_figure

    def window_record(shift, hw=(16, 16)):
        n = (hw[0] // 4) * (hw[1] // 4)
        probs = torch.softmax(torch.randn(n, 2, 16, 16, generator=torch.Generator().manual_seed(shift)), -1)
        return WindowAttentionRecord(probs, 4, hw, shift)

    blocks = {"block 1": window_record(0), "block 2": window_record(2)}
    return {
        "swin_hierarchy": lambda: sv.hierarchy_figure(photo(), stage_maps(), window=4),
        "swin_patch_merging": lambda: sv.patch_merging_figure(photo(), PatchMerging(4), at=(4, 4)),
        "swin_window_cost": lambda: sv.window_cost_figure(),
        "swin_cyclic_shift": lambda: sv.cyclic_shift_figure(photo()),
        "swin_window_masks": lambda: sv.window_masks_figure(),
        "swin_masked_attention": lambda: sv.masked_attention_figure(window_record(2, (8, 8)), window_index=3),
        "swin_relative_bias": lambda: sv.relative_bias_figure(WindowAttention(8, 4, 2), head=1),
        "swin_reach": lambda: sv.reach_figure(photo(), blocks, (30, 30)),
        "swin_explorer_figure": lambda: explorer_figure(photo(), blocks, "block 2", (30, 30), head=1),
    }


FIGURES.update(_swin_figures())


def _deeplab_figures():
    """The DeepLab chapter's figures (segviz.viz.deeplab), on small inputs."""
    from segviz.viz import deeplab as dv

    g = torch.Generator().manual_seed(0)
    erf_map = torch.rand(H, W, generator=g).numpy()
    windows = {"1x1": (20, 20, 44, 44), "rate 6": (-40, -40, 104, 104), "image pooling": None}
    curves = {"stride 32": [("conv1", 7, 2), ("maxpool", 11, 4), ("layer1.0.conv2", 19, 4), ("layer4.0.conv2", 299, 32)],
              "stride 16": [("conv1", 7, 2), ("maxpool", 11, 4), ("layer1.0.conv2", 19, 4), ("layer4.0.conv2", 299, 16)]}
    return {
        "deeplab_atrous_taps": lambda: dv.atrous_taps_figure(),
        "deeplab_gridding": lambda: dv.gridding_figure(),
        "deeplab_rf_growth": lambda: dv.rf_growth_figure(curves, input_size=513),
        "deeplab_erf": lambda: dv.erf_figure(photo(), {f"layer{i}": erf_map for i in range(1, 6)},
                                             {"layer1": (28, 28, 36, 36), "layer5": None}),
        "deeplab_aspp_windows": lambda: dv.aspp_windows_figure(photo(), windows, (32, 32)),
        "deeplab_spp": lambda: dv.spp_figure([torch.rand(13, 17, generator=g), torch.rand(8, 8, generator=g)]),
        "deeplab_explorer_figure": lambda: dv.explorer_figure(photo(), torch.randn(6, 16, 16, generator=g), windows,
                                                              (32, 32), 2, 16, list(SCENE_CLASSES)),
    }


FIGURES.update(_deeplab_figures())


def _mask2former_figures():
    """The Mask2Former chapter's figures (segviz.viz.mask2former), on small made-up records."""
    from segviz.nn.recording import MaskedAttentionRecord, SamplingRecord
    from segviz.viz import mask2former as mv
    from segviz.viz.mask2former_explorer import SamplingExplorer  # noqa: F401  (imports cleanly)

    g = torch.Generator().manual_seed(0)
    shapes = [(2, 2), (4, 4), (8, 8)]
    lq = sum(h * w for h, w in shapes)
    ref = torch.cat([torch.stack(torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w,
                                                indexing="ij")[::-1], -1).reshape(-1, 2) for h, w in shapes])[None]
    locs = ref[:, :, None, None, None] + 0.1 * torch.randn(1, lq, 2, 3, 4, 2, generator=g)
    weights = torch.softmax(torch.randn(1, lq, 2, 12, generator=g), -1).view(1, lq, 2, 3, 4)
    sampling = SamplingRecord(locs, weights, shapes, ref, (2, 2))
    masked = [MaskedAttentionRecord(torch.softmax(torch.randn(1, 2, 4, h * w, generator=g), -1),
                                    torch.rand(1, 1, 4, h * w, generator=g) < 0.5, (h, w)) for h, w in shapes]
    costs = {k: torch.rand(16, 4, generator=g) for k in ("class", "mask", "dice", "total")}
    logits = torch.randn(16, 16, generator=g) * 3
    return {
        "m2f_queries": lambda: mv.query_predictions_figure(photo(), torch.randn(16, 7, generator=g),
                                                           torch.randn(16, 16, 16, generator=g), SCENE_CLASSES,
                                                           title="mask2former-nano"),
        "m2f_matching": lambda: mv.matching_figure(costs, (torch.tensor([1, 3, 7, 12]), torch.tensor([2, 0, 3, 1])),
                                                   ["background", "disc", "rectangle", "cross"], title="image 0"),
        "m2f_sampling": lambda: mv.sampling_figure(photo(), {"init": sampling, "trained": sampling}, (30, 40),
                                                   head=1, title="encoder layer 2"),
        "m2f_masked_attention": lambda: mv.masked_attention_layers_figure(photo(), masked, [logits] * 4, 2,
                                                                          title="image 0"),
        "m2f_uncertain_points": lambda: mv.uncertain_points_figure(photo(), logits, torch.rand(64, 2, generator=g),
                                                                   48, target=torch.zeros(H, W)),
        "m2f_training": lambda: mv.training_figure([10.0 - 0.01 * i for i in range(300)], [(100, 0.2), (300, 0.3)],
                                                   [{"class": 1.0, "mask": 0.2, "dice": 0.3}] * 4),
    }


FIGURES.update(_mask2former_figures())

def _params():
    for name, make in FIGURES.items():
        yield pytest.param(name, make, id=name)


def _assert_style(name, fig):
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / f"{name}.png", dpi=fig.dpi, bbox_inches="tight")  # as a notebook shows it
    width, _ = fig.get_size_inches() * fig.dpi / style.DPI
    assert width <= style.MAX_WIDTH + 1e-6, f"{name}: {width:.2f} in wide"
    shown, _ = style.displayed_size(fig)
    assert shown <= style.MAX_WIDTH + 0.05, f"{name}: displayed {shown:.2f} in wide (something is drawn outside)"
    small = [(t.get_text(), t.get_fontsize()) for t in fig.findobj(Text)
             if t.get_visible() and t.get_text().strip() and t.get_fontsize() < style.MIN_FONT]
    assert not small, f"{name}: text under {style.MIN_FONT} pt: {small}"
    assert style.check(fig) == []


@pytest.mark.parametrize(("name", "make"), list(_params()))
def test_figure_follows_the_style(name, make):
    _assert_style(name, make())


def test_isr_figure_follows_the_style(eda):
    _assert_style("isr_figure", _isr_figure(eda))


def test_decoder_diagram_follows_the_style(eda):
    _assert_style("decoder_diagram", _diagram(eda))


def test_style_helpers():
    fig = style.figure(19.6, 4)
    assert tuple(fig.get_size_inches()) == pytest.approx((9.8, 2)) and fig.dpi == style.DPI
    assert tuple(style.figure(20, 4, clamp="width").get_size_inches()) == pytest.approx((9.8, 4))
    ax = fig.subplots()
    ax.set_title("tiny", fontsize=6)
    assert any("tiny" in p for p in style.check(fig))
    png = style.png_bytes(fig)
    assert png.startswith(b"\x89PNG")
    assert int.from_bytes(png[16:20], "big") == 2 * style.display_width(fig) == 1960  # rendered at 2x
    with style.rc():
        assert matplotlib.rcParams["xtick.labelsize"] >= style.MIN_FONT
    with pytest.raises(ValueError):
        style.figure(0, 3)


def test_explorer_shows_sharp_png_and_a_static_fallback():
    explorer = viz.AttentionExplorer(photo(), four_stages(), query=(10, 50))
    png = bytes(explorer.view.value)
    assert int(explorer.view.width) == style.display_width(explorer.figure)
    assert int.from_bytes(png[16:20], "big") == 2 * int(explorer.view.width)   # 2x pixels, shown at 1x
    data, metadata = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data and data["image/png"]
    assert metadata["image/png"]["width"] == int(explorer.view.width)
