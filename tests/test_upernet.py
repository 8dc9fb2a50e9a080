"""UperNet on Swin: published size and cost, parity with HuggingFace UperNetForSemanticSegmentation,
checkpoint layouts, the pyramid pooling module, and the auxiliary head in training."""
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import segviz
from segviz.models.upernet import PyramidPoolingModule, UperNet, checkpoint_filter_fn, upernet_swin
from segviz.registry import get_spec
from segviz.weights import load_state_dict_strict
from tests.toys import meta_model, threads

transformers = pytest.importorskip("transformers")

SMALL = dict(num_classes=5, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7, channels=32,
             aux_channels=16)
HF_FINAL_NORM = 2 * 768  # the unused final LayerNorm HuggingFace's SwinBackbone holds


@pytest.fixture(scope="module", autouse=True)
def _threads():
    with threads(2):
        yield



# ---------------------------------------------------------------------------------------
# Published numbers
# ---------------------------------------------------------------------------------------
def test_params_match_published_with_the_auxiliary_head():
    published = get_spec("upernet-swin-t").published
    model = meta_model("upernet-swin-t")
    count = segviz.count_params(model)  # backbone + UperNet head + auxiliary FCN head
    assert abs(count / (published["params_m"] * 1e6) - 1) < 0.01
    assert count == published["params_hf"] - HF_FINAL_NORM
    without = segviz.count_params(meta_model("upernet-swin-t", auxiliary=False))
    assert count - without == segviz.count_params(model.auxiliary_head) > 0


def test_gmacs_match_published():
    published = get_spec("upernet-swin-t").published
    gmacs = segviz.flops(meta_model("upernet-swin-t"), (1, 3, *published["input_size"])).total
    assert abs(gmacs / published["gmacs"] - 1) < 0.03, gmacs


# ---------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------
def test_pyramid_pooling_bins_and_shapes():
    ppm = PyramidPoolingModule(8, 4, bins=(1, 2, 3, 6))
    seen = []
    for branch in ppm.branches:
        branch[0].register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[-2:])))
    out = ppm(torch.randn(2, 8, 13, 17))
    assert seen == [(1, 1), (2, 2), (3, 3), (6, 6)]
    assert out.shape == (2, 4, 13, 17)
    assert ppm.bottleneck.conv.in_channels == 8 + 4 * 4


def test_forward_in_training_gives_main_and_auxiliary_and_the_loss_uses_both():
    torch.manual_seed(0)
    model = upernet_swin(**SMALL).train()
    x, target = torch.randn(2, 3, 64, 96), torch.randint(0, 5, (2, 64, 96))
    main, aux = model(x)
    assert main.shape == (2, 5, 16, 24) and aux.shape == (2, 5, 4, 6)  # 1/4 and stage 3 (1/16)
    both, only_main = model.loss((main, aux), target), model.loss(main, target)
    assert both.requires_grad and both > only_main
    assert model.predict(x).shape == (2, 5, 64, 96)
    model.eval()
    assert isinstance(model(x), torch.Tensor)


def test_without_the_auxiliary_head():
    model = upernet_swin(**SMALL, auxiliary=False).train()
    assert model.auxiliary_head is None
    assert isinstance(model(torch.randn(2, 3, 64, 64)), torch.Tensor)  # (BatchNorm after the 1x1 bin needs B > 1)


@pytest.mark.parametrize("key, value", [("aux_stage", 5), ("aux_stage", 0), ("bins", (1, 0)), ("channels", 0)])
def test_bad_head_settings(key, value):
    with pytest.raises(ValueError, match=key):
        upernet_swin(**{**SMALL, key: value})


# ---------------------------------------------------------------------------------------
# Parity with HuggingFace (random weights and statistics from a small config)
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_upernet():
    torch.manual_seed(0)
    backbone = transformers.SwinConfig(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=7,
                                       out_features=["stage1", "stage2", "stage3", "stage4"])
    config = transformers.UperNetConfig(backbone_config=backbone, hidden_size=32, auxiliary_channels=16, num_labels=5)
    model = transformers.UperNetForSemanticSegmentation(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("size", [(224, 224), (200, 264)])
@torch.no_grad()
def test_parity_with_hf(hf_upernet, size):
    ours = upernet_swin(**SMALL).eval()
    load_state_dict_strict(ours, checkpoint_filter_fn(hf_upernet.state_dict(), ours))
    x = torch.randn(2, 3, *size)
    expected = hf_upernet(x).logits
    assert (ours.predict(x) - expected).abs().max() <= 1e-4


def to_mmseg(sd):
    """Our keys -> Swin-Transformer-Semantic-Segmentation's (mmseg 0.x)."""
    out = {}
    for key, value in sd.items():
        key = key.replace("backbone.stages.0.downsample.", "backbone.patch_embed.")
        parts = key.split(".")
        if key.startswith("backbone.stages.") and parts[3] == "downsample":
            key = f"backbone.layers.{int(parts[2]) - 1}.downsample." + ".".join(parts[4:])
        elif key.startswith("backbone.stages."):
            key = "backbone.layers." + ".".join(parts[2:])
        elif key.startswith("backbone.norms."):
            key = f"backbone.norm{parts[2]}." + ".".join(parts[3:])
        key = key.replace("decode_head.ppm.branches.", "decode_head.psp_modules.")
        key = key.replace("decode_head.ppm.bottleneck.", "decode_head.bottleneck.")
        key = key.replace(".classifier.", ".conv_seg.")
        out[key] = value
        if key.endswith("attn.relative_position_bias_table"):
            out[key.replace("bias_table", "index")] = torch.zeros(49, 49, dtype=torch.long)
    return out


@pytest.mark.parametrize("layout", ["hf4", "hf5", "microsoft"])
@torch.no_grad()
def test_layouts_load_through_create_model(hf_upernet, layout, tmp_path):
    x = torch.randn(1, 3, 96, 128)
    expected = hf_upernet(x).logits
    if layout == "hf4":
        hf_upernet.save_pretrained(tmp_path)
        path = tmp_path / "model.safetensors"
    elif layout == "hf5":
        path = tmp_path / "upernet.safetensors"
        save_file({k: v.contiguous() for k, v in hf_upernet.state_dict().items()}, str(path))
    else:  # the official mmseg 0.x names, from our own conversion of the HF model
        ours = upernet_swin(**SMALL).eval()
        load_state_dict_strict(ours, checkpoint_filter_fn(hf_upernet.state_dict(), ours))
        path = tmp_path / "upernet.pth"
        torch.save({"state_dict": to_mmseg(ours.state_dict())}, path)
    loaded = segviz.create_model("upernet-swin-t", weights=path, **SMALL).eval()
    assert isinstance(loaded, UperNet)
    assert (loaded.predict(x) - expected).abs().max() <= 1e-4


@torch.no_grad()
def test_capture_records_every_block_and_the_stage_features():
    model = segviz.create_model("upernet-swin-nano").eval()
    with segviz.capture(model) as rec:
        model(torch.randn(1, 3, 72, 88))
    assert len(rec.records(kind="window_attention")) == 8
    assert [tuple(rec.features[f"backbone.norms.{i}"].shape[-2:]) for i in range(4)] == [(18, 22), (9, 11), (5, 6),
                                                                                       (3, 3)]
    # the dense backbone never shrinks its window: the 3x3 stage-4 map is one padded 7x7 window, shifted by 3
    last = rec.attention["backbone.stages.3.blocks.1.attn"]
    assert last.window == 7 and last.windows_hw == (1, 1) and last.shift == 3
