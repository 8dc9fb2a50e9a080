"""Swin Transformer: published sizes and costs, the window machinery against independent
constructions, parity with HuggingFace, every checkpoint layout, and the window-attention records."""
import math

import pytest
import torch
from safetensors.torch import save_file

import segviz
from segviz.models import swin
from segviz.models.swin import (
    PatchMerging, SwinBackbone, SwinClassifier, relative_position_index, shifted_window_mask, window_partition,
    window_reverse,
)
from segviz.nn.recording import WindowAttentionRecord
from segviz.registry import get_spec
from segviz.weights import load_state_dict_strict
from tests.toys import meta_model, threads

transformers = pytest.importorskip("transformers")

PUBLISHED = ["swin-t", "swin-s", "swin-b", "swin-b-384", "swin-l"]
SMALL = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)


@pytest.fixture(scope="module", autouse=True)
def _threads():
    with threads(2):
        yield



# ---------------------------------------------------------------------------------------
# Published numbers
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PUBLISHED)
def test_params_match_published(name):
    published = get_spec(name).published
    count = segviz.count_params(meta_model(name))
    if "params" in published:  # exact counts from the official configs
        assert count == published["params"]
    assert abs(count / (published["params_m"] * 1e6) - 1) < 0.01 or count == published.get("params")


@pytest.mark.parametrize("name", PUBLISHED)
def test_gmacs_match_published(name):
    published = get_spec(name).published
    gmacs = segviz.flops(meta_model(name), (1, 3, *published["input_size"])).total
    assert abs(gmacs / published["gmacs"] - 1) < 0.03, gmacs


def test_nano_stage_one_holds_several_windows_at_256px():
    model = segviz.create_model("swin-nano").eval()
    with torch.no_grad(), segviz.capture(model, kinds=["window_attention"]) as rec:
        model(torch.randn(1, 3, 256, 256))
    first, second = rec.attention["stages.0.blocks.0.attn"], rec.attention["stages.0.blocks.1.attn"]
    # a 64 x 64 map padded to 70 x 70: 10 x 10 windows of the paper's 7 x 7 tokens, shift 3
    assert first.feature_hw == (64, 64) and first.padded_hw == (70, 70) and first.windows_hw == (10, 10)
    assert first.shift == 0 and first.window == 7
    assert second.shift == 3 and second.window == 7
    # stage 4 (8 x 8 > 7) keeps the full window even in the classifier: 2 x 2 padded windows
    last = rec.attention["stages.3.blocks.1.attn"]
    assert last.feature_hw == (8, 8) and last.windows_hw == (2, 2) and last.shift == 3


# ---------------------------------------------------------------------------------------
# The window machinery
# ---------------------------------------------------------------------------------------
def test_window_partition_is_row_major_and_reversible():
    x = torch.arange(2 * 4 * 6 * 3, dtype=torch.float32).reshape(2, 4, 6, 3)
    windows = window_partition(x, 2)
    assert windows.shape == (2 * 2 * 3, 4, 3)
    # window 4 is image 0's window (row 1, column 1): rows 2-3, columns 2-3, row-major inside
    torch.testing.assert_close(windows[4], x[0, 2:4, 2:4].reshape(4, 3))
    torch.testing.assert_close(windows[6], x[1, 0:2, 0:2].reshape(4, 3))
    torch.testing.assert_close(window_reverse(windows, 2, 4, 6), x)


@pytest.mark.parametrize("m", [1, 2, 4, 7])
def test_relative_position_index_reads_the_offset(m):
    index = relative_position_index(m)
    assert index.shape == (m * m, m * m)
    for i in range(m * m):
        for j in range(m * m):
            dy, dx = i // m - j // m, i % m - j % m
            assert index[i, j] == (dy + m - 1) * (2 * m - 1) + (dx + m - 1)
    assert index.max() < (2 * m - 1) ** 2


def test_a_smaller_window_reads_the_same_offsets_of_the_larger_table():
    attn = swin.WindowAttention(8, 7, 2)
    small, full = attn.relative_position_bias(3), attn.relative_position_bias(7)
    # tokens (0,0) and (2,1) of a 3x3 window are tokens (0,0) and (2,1) of the 7x7 one
    torch.testing.assert_close(small[:, 0, 2 * 3 + 1], full[:, 0, 2 * 7 + 1])
    torch.testing.assert_close(small[:, 2 * 3 + 1, 0], full[:, 2 * 7 + 1, 0])


def official_mask(h, w, window, shift):
    """The official construction: label the 9 slices of the (padded) map, partition, compare."""
    img_mask = torch.zeros(1, h, w, 1)
    slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    count = 0
    for hs in slices:
        for ws in slices:
            img_mask[:, hs, ws, :] = count
            count += 1
    mask_windows = window_partition(img_mask, window).view(-1, window * window)
    mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


@pytest.mark.parametrize("h, w, window, shift", [(8, 8, 4, 2), (56, 56, 7, 3), (14, 21, 7, 3), (12, 12, 12, 6),
                                                 (16, 8, 4, 1), (6, 9, 3, 1)])
def test_mask_equals_the_official_region_construction(h, w, window, shift):
    mask = shifted_window_mask(h, w, window, shift)
    assert mask.shape == ((h // window) * (w // window), window ** 2, window ** 2)
    torch.testing.assert_close(mask, official_mask(h, w, window, shift), rtol=0, atol=0)
    # only the last window row / column mixes regions; the first window is free when there are several
    assert (mask[-1] == -100).any()
    if h > window and w > window:
        assert (mask[0] == 0).all()


def test_patch_merging_concatenates_in_the_official_order():
    merging = PatchMerging(1)
    seen = {}
    merging.norm.register_forward_pre_hook(lambda _m, args: seen.update(x=args[0]))  # returns None
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)  # [[a, b], [c, d]]
    merging(x)
    # x0 = [0::2, 0::2] = a, x1 = [1::2, 0::2] = c, x2 = [0::2, 1::2] = b, x3 = [1::2, 1::2] = d
    assert seen["x"].flatten().tolist() == [1.0, 3.0, 2.0, 4.0]
    assert merging(torch.zeros(2, 1, 5, 7)).shape == (2, 3, 4, 2)  # odd sides padded


def test_the_two_window_rules():
    classifier, backbone = SwinClassifier(**SMALL), SwinBackbone(**SMALL)
    assert classifier.stages[3].window_and_shift(7, 7) == (7, 0)
    assert classifier.stages[3].window_and_shift(3, 5) == (3, 0)
    assert classifier.stages[0].window_and_shift(56, 56) == (7, 3)
    assert backbone.stages[3].window_and_shift(3, 5) == (7, 3)
    assert not hasattr(classifier, "predict")


def test_config_derived_buffers_are_not_saved():
    model = SwinClassifier(**SMALL)
    assert not [k for k in model.state_dict() if "relative_position_index" in k or "mask" in k]


def test_drop_path_rises_linearly_over_all_blocks():
    model = SwinClassifier(**SMALL, drop_path_rate=0.35)
    rates = [block.drop_path.p for stage in model.stages for block in stage.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.35, 8))


# ---------------------------------------------------------------------------------------
# Parity with HuggingFace (random weights from a small config)
# ---------------------------------------------------------------------------------------
def randomize(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def hf_config(**extra):
    return transformers.SwinConfig(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=7, **extra)


@pytest.fixture(scope="module")
def hf_classifier():
    return randomize(transformers.SwinForImageClassification(hf_config(num_labels=10)))


@pytest.fixture(scope="module")
def hf_backbone():
    return randomize(transformers.SwinBackbone(hf_config(out_features=["stage1", "stage2", "stage3", "stage4"])))


@pytest.mark.parametrize("size", [(224, 224), (200, 264)])
@torch.no_grad()
def test_classifier_parity_with_hf(hf_classifier, size):
    ours = SwinClassifier(num_classes=10, **SMALL).eval()
    load_state_dict_strict(ours, swin.checkpoint_filter_fn(hf_classifier.state_dict(), ours))
    x = torch.randn(2, 3, *size)
    expected = hf_classifier(x).logits
    assert (ours(x) - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("size", [(224, 224), (200, 264)])
@torch.no_grad()
def test_backbone_stage_parity_with_hf(hf_backbone, size):
    ours = SwinBackbone(**SMALL).eval()
    sd = {k: v for k, v in hf_backbone.state_dict().items() if not k.startswith("swin.layernorm.")}
    load_state_dict_strict(ours, swin.checkpoint_filter_fn(sd, ours))
    x = torch.randn(2, 3, *size)
    expected = hf_backbone(x).feature_maps
    got = ours(x)
    assert [tuple(f.shape) for f in got] == [tuple(f.shape) for f in expected]
    for a, b in zip(got, expected):
        assert (a - b).abs().max() <= 1e-4


# ---------------------------------------------------------------------------------------
# Checkpoint layouts through create_model(name, weights=path)
# ---------------------------------------------------------------------------------------
SMALL_OVERRIDES = dict(num_classes=10, **SMALL)


def to_microsoft(sd, model):
    """Our classifier keys -> the official code's, with the buffers it stores."""
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if key.startswith("stages.0.downsample."):
            key = "patch_embed." + ".".join(parts[3:])
        elif parts[0] == "stages" and parts[2] == "downsample":
            key = f"layers.{int(parts[1]) - 1}.downsample." + ".".join(parts[3:])
        elif parts[0] == "stages":
            key = "layers." + ".".join(parts[1:])
        out[key] = value
    for name, block in [(n, m) for n, m in model.named_modules() if isinstance(m, swin.SwinBlock)]:
        prefix = name.replace("stages.", "layers.")
        out[prefix + ".attn.relative_position_index"] = block.attn.relative_position_index.clone()
        if block.shifted:
            out[prefix + ".attn_mask"] = torch.zeros(4, 49, 49)
    return out


def to_timm(sd):
    out = {}
    for key, value in sd.items():
        if key.startswith("stages.0.downsample."):
            key = key.replace("stages.0.downsample.", "patch_embed.")
        elif key.startswith("head."):
            key = "head.fc." + key[len("head."):]
        key = key.replace("stages.", "layers.", 1) if key.startswith("stages.") else key
        out[key] = value
    return out


@pytest.fixture(scope="module")
def source_model():
    torch.manual_seed(3)
    model = SwinClassifier(**SMALL_OVERRIDES).eval()
    return model, torch.randn(1, 3, 96, 112)


@pytest.mark.parametrize("layout", ["segviz", "microsoft", "timm"])
@torch.no_grad()
def test_official_timm_and_own_layouts_load(source_model, layout, tmp_path):
    model, x = source_model
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if layout == "microsoft":
        path = tmp_path / "swin.pth"
        torch.save({"model": to_microsoft(sd, model)}, path)
    else:
        path = tmp_path / "swin.safetensors"
        save_file(to_timm(sd) if layout == "timm" else sd, str(path))
    loaded = segviz.create_model("swin-t", weights=path, **SMALL_OVERRIDES).eval()
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("layout", ["hf4", "hf5"])
@torch.no_grad()
def test_hf_layouts_load(hf_classifier, layout, tmp_path):
    if layout == "hf4":  # what save_pretrained writes and hub checkpoints hold
        hf_classifier.save_pretrained(tmp_path)
        path = tmp_path / "model.safetensors"
        assert any(".attention.self.query." in k for k in segviz.weights.read_state_dict(path))
    else:  # transformers 5.x module names
        path = tmp_path / "swin.safetensors"
        save_file({k: v.contiguous() for k, v in hf_classifier.state_dict().items()}, str(path))
    loaded = segviz.create_model("swin-t", weights=path, **SMALL_OVERRIDES).eval()
    x = torch.randn(1, 3, 224, 224)
    assert (loaded(x) - hf_classifier(x).logits).abs().max() <= 1e-4


def test_an_unknown_layout_is_a_value_error(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a Swin checkpoint"):
        segviz.create_model("swin-nano", weights=path)


# ---------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def swin_t_records():
    torch.manual_seed(0)
    model = segviz.create_model("swin-t").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        plain = model(x)
        with segviz.capture(model, kinds=["window_attention"]) as rec:
            recorded = model(x)
    return model, rec, plain, recorded


def test_every_swin_t_block_records_its_window_attention(swin_t_records):
    model, rec, plain, recorded = swin_t_records
    torch.testing.assert_close(recorded, plain, atol=1e-4, rtol=1e-4)
    records = rec.records(kind="window_attention")
    assert len(records) == 12 == sum(len(s.blocks) for s in model.stages)
    sizes = {0: 56, 1: 28, 2: 14, 3: 7}
    for i, stage in enumerate(model.stages):
        for j, _ in enumerate(stage.blocks):
            record = rec.attention[f"stages.{i}.blocks.{j}.attn"]
            assert isinstance(record, WindowAttentionRecord)
            assert record.feature_hw == (sizes[i],) * 2 and record.window == 7
            # the classifier's stage 4 (7x7 = one window) does not shift
            assert record.shift == (3 if j % 2 and i < 3 else 0)
            assert record.probs.shape == (1, (sizes[i] // 7) ** 2, stage.blocks[j].attn.num_heads, 49, 49)
            torch.testing.assert_close(record.probs.sum(-1), torch.ones(record.probs.shape[:-1]))


def brute_force_map(block, normed, query, window, shift):
    """A query's attention computed token by token: no window partition, the shift as index
    arithmetic, regions from the rolled coordinates, then placed back on the unshifted map."""
    h, w, c = normed.shape
    hp, wp = -(-h // window) * window, -(-w // window) * window
    padded = torch.zeros(hp, wp, c)
    padded[:h, :w] = normed
    attn = block.attn
    d = c // attn.num_heads
    qkv = attn.qkv(padded)  # (hp, wp, 3C)
    q_all, k_all = qkv[..., :c], qkv[..., c:2 * c]
    y, x = query
    ys, xs = (y - shift) % hp, (x - shift) % wp  # rolled position of the query

    def region(i, n):
        return 0 if i < n - window else (1 if i < n - shift else 2)

    out = torch.zeros(hp, wp)
    keys, logits = [], []
    head = 0
    for r in range(ys // window * window, ys // window * window + window):
        for s in range(xs // window * window, xs // window * window + window):
            ky, kx = (r + shift) % hp, (s + shift) % wp  # where that rolled key sits in the map
            qv = q_all[y, x, head * d:(head + 1) * d]  # the query, at its unshifted place
            kv = k_all[ky, kx, head * d:(head + 1) * d]
            offset = (ys - r + window - 1) * (2 * window - 1) + (xs - s + window - 1)
            logit = (qv @ kv) / math.sqrt(d) + attn.relative_position_bias_table[offset, head]
            if shift and (region(ys, hp), region(xs, wp)) != (region(r, hp), region(s, wp)):
                logit = logit - 100.0
            keys.append((ky, kx))
            logits.append(logit)
    probs = torch.stack(logits).softmax(0)
    for (ky, kx), p in zip(keys, probs):
        out[ky, kx] = p
    return out[:h, :w]


@torch.no_grad()
def test_map_for_on_a_shifted_block_matches_brute_force():
    torch.manual_seed(1)
    backbone = SwinBackbone(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), window_size=4).eval()
    block = backbone.stages[0].blocks[1]  # SW-MSA on a 10 x 13 map (padded to 12 x 16)
    seen = {}
    block.norm1.register_forward_hook(lambda _m, _i, out: seen.update(normed=out[0]))  # returns None
    with segviz.capture(backbone, kinds=["window_attention"]) as rec:
        backbone(torch.randn(1, 3, 40, 52))
    record = rec.attention["stages.0.blocks.1.attn"]
    assert record.shift == 2 and record.feature_hw == (10, 13) and record.padding == (2, 3)
    for query in [(0, 0), (9, 12), (5, 6), (1, 11), (8, 1), (3, 3)]:
        expected = brute_force_map(block, seen["normed"], query, 4, 2)
        torch.testing.assert_close(record.map_for(query, head=0), expected, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_masked_probabilities_vanish_and_rows_sum_to_one():
    model = segviz.create_model("swin-nano").eval()
    with segviz.capture(model, kinds=["window_attention"]) as rec:
        model(torch.randn(2, 3, 64, 80))
    record = rec.attention["stages.0.blocks.1.attn"]  # 16 x 20 map (padded to 21 x 21), window 7, shift 3
    assert record.window == 7 and record.shift == 3
    mask = shifted_window_mask(*record.padded_hw, record.window, record.shift)  # (nW, 49, 49)
    probs = record.probs  # (B, nW, heads, 49, 49)
    blocked = (mask == -100)[None, :, None].expand_as(probs)
    assert blocked.any()
    assert probs[blocked].max() < 1e-40
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))


def test_inference_reuses_buffers_without_changing_a_number_or_what_hooks_saw(monkeypatch):
    """Without autograd a Swin block overwrites its own intermediate buffers (GELU in place, residual
    adds into the branch output). The output equals the out-of-place computation bit for bit, the
    block's input is untouched, and a tensor a forward hook saw (or ``capture`` recorded) is not
    overwritten afterwards."""
    torch.manual_seed(0)
    block = swin.SwinBlock(32, 2, 4, shifted=True).eval()
    x = torch.randn(2, 8, 8, 32)
    layout = swin.window_layout(8, 8, 4, 2)
    x_before = x.clone()
    with torch.no_grad():
        reused = block(x, layout)
    assert torch.equal(x, x_before)
    with monkeypatch.context() as m, torch.no_grad():
        m.setattr(swin, "_may_overwrite", lambda *_: False)
        reference = block(x, layout)  # out of place
    assert torch.equal(reused, reference)
    with torch.enable_grad():  # autograd: out of place, the same function
        assert torch.allclose(block(x.clone().requires_grad_(True), layout), reference, atol=1e-5)
    seen = {}
    def saver(name):
        def hook(_module, _inputs, out):
            seen[name] = (out, out.clone())  # returns None: the output is left as it is

        return hook

    handles = [m.register_forward_hook(saver(n))
               for n, m in [("fc1", block.mlp.fc1), ("fc2", block.mlp.fc2), ("drop_path", block.drop_path)]]
    try:
        with torch.no_grad():
            hooked = block(x, layout)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(hooked, reference)
    for name, (out, copy) in seen.items():
        assert torch.equal(out, copy), f"{name}'s output was overwritten after its hook saw it"
    with torch.no_grad(), segviz.capture(block, features="mlp.fc1") as rec:
        recorded = block(x, layout)
    fc1 = rec.features["mlp.fc1"]
    assert torch.equal(recorded, reference)
    assert torch.equal(fc1, seen["fc1"][1]) and fc1.min() < -0.2  # fc1's output, not GELU's (GELU >= -0.17)
