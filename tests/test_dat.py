"""DAT (Xia et al. 2022): published sizes and costs (meta device), the deformable attention against
an independent computation, the reference grid, the interpolated position bias, the record, the
checkpoint reader, and config errors."""
import pytest
import torch
import torch.nn.functional as F

import segviz
from segviz.models.dat import DATBackbone, DeformableAttention, checkpoint_filter_fn, reference_grid
from segviz.nn.recording import DeformedGridRecord
from segviz.registry import get_spec
from tests.toys import meta_model, threads


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with threads(1):
        yield


# ---------------------------------------------------------------------------------------- published numbers
@pytest.mark.parametrize("name", ["dat-t", "dat-s", "dat-b"])
def test_params_match_published(name):
    published = get_spec(name).published
    count = segviz.count_params(meta_model(name))
    # The official v1 code (LeapLabTHU/DAT at 42b489e, models/dat.py with configs/dat_{tiny,small,base}.yaml)
    # builds exactly 28,319,138 / 49,700,402 / 87,881,632 parameters, our counts too (checked on
    # 2026-11-23 by instantiating it); the paper's table gives them as "29M", "50M" and "88M". So T only
    # is held to 3 %, the others to the 1 % of the other published-size tests.
    tolerance = 0.03 if name == "dat-t" else 0.01
    assert abs(count / (published["params_m"] * 1e6) - 1) < tolerance, count


@pytest.mark.parametrize("name", ["dat-t", "dat-s", "dat-b"])
def test_gmacs_match_published(name):
    published = get_spec(name).published
    gmacs = segviz.flops(meta_model(name), (1, 3, *published["input_size"])).total
    assert abs(gmacs / published["gmacs"] - 1) < 0.03, gmacs


def test_stage_layout_of_dat_t():
    model = meta_model("dat-t")
    assert [len(s.blocks) for s in model.stages] == [2, 2, 6, 2]
    kinds = [[type(b).__name__[0] for b in s.blocks] for s in model.stages]
    assert kinds == [["S", "S"], ["S", "S"], ["S", "D"] * 3, ["S", "D"]]  # SwinBlock / DeformableBlock
    d = model.stages[2].blocks[1].attn
    assert (d.groups, d.num_heads, d.rpe_table.shape) == (3, 12, (12, 27, 27))  # 14x14 map at 224
    assert d.conv_offset[0].kernel_size == (5, 5) and model.stages[3].blocks[1].attn.conv_offset[0].kernel_size == (3, 3)
    assert model.stages[0].shift == 4  # ⌈7/2⌉, the official shift


def test_shapes():
    torch.manual_seed(0)
    backbone = DATBackbone(embed_dims=(8, 16, 32, 64), num_heads=(1, 2, 4, 8), stage_spec=("L", "S", "LD", "D"),
                           groups=(1, 1, 2, 4), strides=(1, 1, 2, 1), window_size=4, img_size=64).eval()
    feats = backbone(torch.randn(2, 3, 70, 50))
    assert [tuple(f.shape) for f in feats] == [(2, 8, 18, 13), (2, 16, 9, 7), (2, 32, 5, 4), (2, 64, 3, 2)]
    model = segviz.create_model("dat-nano").eval()
    assert segviz.count_params(model) < 1_200_000
    with torch.no_grad():
        assert model.predict(torch.randn(1, 3, 64, 96)).shape == (1, 6, 64, 96)


# ---------------------------------------------------------------------------------------- the block
def _attention(stride=1, h=5, w=6, dim=8, heads=4, groups=2):
    torch.manual_seed(0)
    attn = DeformableAttention(dim, heads, groups, (h, w), stride=stride, kernel_size=3).eval()
    with torch.no_grad():
        attn.rpe_table.normal_()  # a bias large enough to matter
    return attn, torch.randn(2, h, w, dim)


def test_reference_grid_is_cell_centres():
    ref = reference_grid(2, 4)
    assert ref.shape == (2, 4, 2)
    torch.testing.assert_close(ref[:, 0, 0], torch.tensor([-0.5, 0.5]))  # y of rows 0, 1
    torch.testing.assert_close(ref[0, :, 1], torch.tensor([-0.75, -0.25, 0.25, 0.75]))  # x of columns


def test_zero_offsets_put_the_points_on_the_reference_grid():
    attn, x = _attention(stride=2)
    with torch.no_grad():
        attn.conv_offset[-1].weight.zero_()
        ref, points = attn.offsets_and_points(attn.proj_q(x))
    assert ref.shape == (3, 3, 2) and points.shape == (4, 3, 3, 2)  # (B·G, ⌈5/2⌉, ⌈6/2⌉, 2)
    assert torch.equal(points, ref.expand_as(points))


def test_offsets_are_bounded_by_the_range_factor():
    attn, x = _attention(stride=1)
    with torch.no_grad():
        attn.conv_offset[-1].weight.normal_(std=100.0)  # saturate tanh
        ref, points = attn.offsets_and_points(attn.proj_q(x))
    moved = (points - ref).abs()
    bound = torch.tensor([2.0 / 5, 2.0 / 6])  # s / (Hk, Wk) in [-1, 1] units: one key cell
    assert torch.all(moved <= bound + 1e-6) and torch.all(moved.amax(dim=(0, 1, 2)) > 0.99 * bound)


def test_with_zero_offsets_it_is_global_attention_with_the_table_bias():
    """r = 1 and zero offsets: the keys are the map's own pixels and the bias between query (i, j) and
    key (k, l) is table entry (h - 1 + i - k, w - 1 + j - l), computed here independently."""
    attn, x = _attention(stride=1)
    h, w, heads, d = 5, 6, 4, 2
    with torch.no_grad():
        attn.conv_offset[-1].weight.zero_()
        out = attn(x)
        q = attn.proj_q(x).reshape(2, h * w, heads, d).transpose(1, 2)
        k = attn.proj_k(x).reshape(2, h * w, heads, d).transpose(1, 2)
        v = attn.proj_v(x).reshape(2, h * w, heads, d).transpose(1, 2)
        ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        ii, jj = ii.flatten(), jj.flatten()
        bias = attn.rpe_table[:, h - 1 + ii[:, None] - ii[None, :], w - 1 + jj[:, None] - jj[None, :]]
        probs = (q @ k.transpose(-1, -2) / d ** 0.5 + bias).softmax(-1)
        ref = attn.proj_out((probs @ v).transpose(1, 2).reshape(2, h, w, 8))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_position_bias_at_integer_and_half_displacements():
    attn, _ = _attention()
    h, w = 5, 6
    table = attn.rpe_table.detach()
    # one key, at pixel (2, 3) and then at (2, 3.5); (y, x) normalised with align_corners=False
    def at(py, px):
        return torch.tensor([[[[(2 * py + 1) / h - 1, (2 * px + 1) / w - 1]]]]).repeat(2, 1, 1, 1)  # (B·G, 1, 1, 2)
    with torch.no_grad():
        integer = attn.position_bias(at(2.0, 3.0), h, w)[0, :, :, 0].reshape(4, h, w)
        half = attn.position_bias(at(2.0, 3.5), h, w)[0, :, :, 0].reshape(4, h, w)
    for i, j in [(0, 0), (2, 3), (4, 5), (1, 4)]:
        torch.testing.assert_close(integer[:, i, j], table[:, h - 1 + i - 2, w - 1 + j - 3])
        mean = (table[:, h - 1 + i - 2, w - 1 + j - 3] + table[:, h - 1 + i - 2, w - 1 + j - 4]) / 2
        torch.testing.assert_close(half[:, i, j], mean)


# ---------------------------------------------------------------------------------------- recording
@torch.no_grad()
def test_the_record_holds_grid_points_and_attention():
    torch.manual_seed(0)
    model = segviz.create_model("dat-nano").eval()
    x = torch.randn(1, 3, 128, 96)
    with segviz.capture(model, kinds=["deformed_grid"]) as rec:
        out = model(x)
    torch.testing.assert_close(out, model(x))
    records = rec.attention
    assert sorted(records) == ["backbone.stages.2.blocks.1.attn", "backbone.stages.3.blocks.1.attn"]
    r = records["backbone.stages.2.blocks.1.attn"]
    assert isinstance(r, DeformedGridRecord)
    assert r.q_hw == (8, 6) and r.key_hw == (4, 3) and r.groups == 2 and r.heads == 4  # r = 2 in stage 3
    assert r.probs.shape == (1, 4, 48, 12) and r.points.shape == (1, 2, 4, 3, 2)
    torch.testing.assert_close(r.probs.sum(-1), torch.ones(1, 4, 48))
    torch.testing.assert_close(r.reference[0, 0], torch.tensor([1 / 6, 1 / 8]))  # (x, y) of cell (0, 0)
    moved = (r.points - r.reference).abs()
    assert torch.all(moved <= torch.tensor([1 / 3, 1 / 4]) + 1e-6)  # s/2 = one key cell: (1/Wk, 1/Hk)
    points, weights = r.points_for((3, 2), head=3)
    assert torch.equal(points, r.points[0, 1].reshape(-1, 2)) and torch.equal(weights, r.probs[0, 3, 3 * 6 + 2])
    amap = r.map_for((3, 2), head=3)
    assert amap.shape == (8, 6) and float(amap.sum()) <= 1 + 1e-5
    inside = ((points > 0.5 / torch.tensor([6, 8])) & (points < 1 - 0.5 / torch.tensor([6, 8]))).all(-1)
    assert float(amap.sum()) >= float(weights[inside].sum()) - 1e-5  # every point inside the centres counts fully
    with pytest.raises(ValueError, match="outside the query grid"):
        r.points_for((8, 0))
    with pytest.raises(ValueError, match="head 4 out of range"):
        r.map_for((0, 0), head=4)


def test_bad_records_are_refused():
    probs = torch.ones(1, 2, 4, 3) / 3
    with pytest.raises(ValueError, match="probs must be"):
        DeformedGridRecord(probs, (2, 2), (2, 2), torch.zeros(2, 2, 2), torch.zeros(1, 1, 2, 2, 2))
    with pytest.raises(ValueError, match="do not split"):
        DeformedGridRecord(torch.ones(1, 3, 4, 4), (2, 2), (2, 2), torch.zeros(2, 2, 2), torch.zeros(1, 2, 2, 2, 2))


# ---------------------------------------------------------------------------------------- checkpoints
def _official_names(sd, model):
    """Our state dict in the official v1 layout (the inverse of the reader, written out independently)."""
    import re
    out = {}
    for k, v in sd.items():
        m = re.match(r"stages\.(\d+)\.downsample\.(proj|norm)\.(.*)", k)
        if m:
            i, part, rest = int(m[1]), m[2], m[3]
            if i == 0:
                out[f"patch_proj.{0 if part == 'proj' else '1.norm'}.{rest}"] = v
            else:
                out[f"down_projs.{i - 1}.{0 if part == 'proj' else '1.norm'}.{rest}"] = v
            continue
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", k)
        if m:
            i, j, rest = m[1], int(m[2]), m[3]
            if rest.startswith("norm"):
                out[f"stages.{i}.layer_norms.{2 * j + int(rest[4]) - 1}.norm.{rest.split('.')[-1]}"] = v
            elif rest.startswith("mlp.fc"):
                out[f"stages.{i}.mlps.{j}.chunk.linear{rest[6]}.{rest.split('.')[-1]}"] = v
            else:
                rest = rest[len("attn."):].replace("qkv.", "proj_qkv.").replace("conv_offset.1.", "conv_offset.1.norm.")
                rest = re.sub(r"^proj\.", "proj_out.", rest)
                if re.match(r"proj_[qkvo]\w*\.weight", rest) and "qkv" not in rest and v.dim() == 2 \
                        and "conv_offset" not in rest and isinstance(model.stages[int(i)].blocks[j].attn,
                                                                     DeformableAttention):
                    v = v[:, :, None, None]  # 1x1 convs in the official code
                out[f"stages.{i}.attns.{j}.{rest}"] = v
            continue
        out[k.replace("norm.", "cls_norm.norm.").replace("head.", "cls_head.")] = v
    return out


def test_the_official_layout_loads():
    torch.manual_seed(0)
    overrides = dict(embed_dims=(8, 16, 32, 64), num_heads=(1, 2, 4, 8), groups=(1, 1, 2, 4), num_classes=10)
    model = segviz.create_model("dat-t", **overrides).eval()
    official = _official_names(model.state_dict(), model)
    assert "stages.2.attns.1.proj_q.weight" in official and official["stages.2.attns.1.proj_q.weight"].dim() == 4
    assert "down_projs.0.1.norm.weight" in official and "stages.0.layer_norms.3.norm.bias" in official
    torch.manual_seed(1)
    fresh = segviz.create_model("dat-t", **overrides).eval()
    fresh.load_state_dict(checkpoint_filter_fn(official, fresh))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


# ---------------------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("key, value, match", [
    ("groups", (1, 1, 5, 6), r"groups\[2\] = 5 must divide num_heads\[2\] = 12"),
    ("stage_spec", ("LS", "LS", "LX", "LD"), "stage_spec must be 4 non-empty strings over L"),
    ("stage_spec", ("LS", "LS", "", "LD"), "stage_spec"),
    ("stage_spec", "LSLSLDLD", "stage_spec"),
    ("offset_range_factor", (2.0, 2.0, 0.0, 2.0), r"offset_range_factor\[2\]"),
    ("offset_range_factor", (2.0, 2.0), "offset_range_factor must be 4"),
    ("strides", (1, 1, 0, 1), "strides"),
    ("num_heads", (3, 6, 12, 25), "num_heads|heads"),
    ("img_size", 0, "img_size"),
])
def test_bad_configs_say_what_is_wrong(key, value, match):
    with pytest.raises(ValueError, match=match):
        meta_model("dat-t", **{key: value})
