"""segviz.receptive_field and segviz.erf against hand-computed small nets, the backward recurrence,
gradient supports, the torchvision ResNet-50 layout, and every model of the kit."""
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segviz
from segviz.inspect.receptive_field import receptive_field, erf
from tests.toys import meta_model

# the image models among the -nano variants: receptive fields and ERFs are taken on one image, so a video
# model (input (B, T, C, H, W), ``input_kind = "video"``) is left out of the every-model checks
NANO_IMAGE = [n for n in segviz.list_models()
              if n.endswith("-nano") and getattr(meta_model(n), "input_kind", "image") == "image"]


def conv(k, s=1, p=0, d=1, c_in=1, c_out=1):
    return nn.Conv2d(c_in, c_out, k, stride=s, padding=p, dilation=d, bias=False)


def backward_recurrence(layers):
    """r_{l-1} = s_l * r_l + (k'_l - s_l), from r_L = 1 back to the input (the issue's formula)."""
    r = 1
    for k, s, d in reversed(layers):
        r = s * r + (d * (k - 1) + 1 - s)
    return r


# --------------------------------------------------------------------------- hand-computed nets
def test_plain_conv_stack():
    # 3x3 p1 (r 3), 5x5 p0 (r 7, unit 0 centred on pixel 2), 3x3 p1 (r 9)
    net = nn.Sequential(conv(3, p=1), conv(5), conv(3, p=1))
    rf = receptive_field(net, "2", input_size=32)
    assert rf.size == (9, 9) and rf.stride == (1, 1) and rf.start == (2, 2)
    assert rf.padding == (2, 2)                      # (9 - 1)/2 - 2: two pixels of zero padding
    assert rf.window((0, 0)) == (-2, -2, 6, 6)
    assert receptive_field(net, "0", input_size=32).size == (3, 3)
    assert receptive_field(net, "1", input_size=32).size == (7, 7)
    assert not rf.whole_input and rf.reason == ""


def test_strided_and_dilated_convs():
    # 3x3/2 p1 -> r 3, j 2; 3x3 rate 2 (k' 5) p2 -> r 3 + 4*2 = 11; 3x3/2 p0 -> r 11 + 2*2 = 15, j 4
    net = nn.Sequential(conv(3, 2, 1), conv(3, 1, 2, 2), conv(3, 2, 0))
    rf = receptive_field(net, "2", input_size=40)
    assert rf.size == (15, 15) and rf.stride == (4, 4)
    assert rf.start == (2, 2)                        # the last conv has no padding: unit 0 sits one jump (2 px) in
    assert rf.size[0] == backward_recurrence([(3, 2, 1), (3, 1, 2), (3, 2, 1)])
    assert receptive_field(net, "1", input_size=40).size == (11, 11)


def test_non_square_kernels_are_followed_per_axis():
    net = nn.Sequential(nn.Conv2d(1, 1, (1, 7), padding=(0, 3)), nn.Conv2d(1, 1, (5, 1), stride=(2, 1), padding=(2, 0)))
    rf = receptive_field(net, "1", input_size=(16, 20))
    assert rf.size == (5, 7) and rf.stride == (2, 1)


@pytest.mark.parametrize("seed", range(5))
def test_forward_numbers_match_the_backward_recurrence(seed):
    rng = random.Random(seed)
    layers = [(rng.choice([1, 3, 5, 7]), rng.choice([1, 2]), rng.choice([1, 2, 3])) for _ in range(rng.randint(2, 6))]
    net = nn.Sequential(*[conv(k, s, d * (k - 1) // 2, d) for k, s, d in layers])
    rf = receptive_field(net, str(len(layers) - 1), input_size=256)
    assert rf.size[0] == backward_recurrence(layers)
    assert rf.stride[0] == math.prod(s for _, s, _ in layers)


class Residual(nn.Module):
    """A ResNet basic block with a strided shortcut: the add joins two paths of different reach."""

    def __init__(self, main, shortcut):
        super().__init__()
        self.main, self.shortcut = main, shortcut

    def forward(self, x):
        return F.relu(self.main(x) + self.shortcut(x))


def test_residual_block_takes_the_larger_path():
    # main: 3x3/2 p1 then 3x3 p1 -> 3 + 2*2 = 7 px; shortcut 1x1/2 -> 1 px; the union is 7
    block = Residual(nn.Sequential(conv(3, 2, 1), conv(3, 1, 1)), conv(1, 2))
    rf = receptive_field(block, None, input_size=16)
    assert rf.size == (7, 7) and rf.stride == (2, 2) and rf.start == (0, 0)
    assert receptive_field(block, "shortcut", input_size=16).size == (1, 1)
    # the larger path may be the shortcut: main 1x1/2, shortcut 5x5/2 p2
    block = Residual(conv(1, 2), conv(5, 2, 2))
    assert receptive_field(block, None, input_size=16).size == (5, 5)


def test_union_of_off_centre_paths():
    class TwoPaths(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = conv(3), conv(3, p=1)

        def forward(self, x):  # a: 3x3 without padding, centred on pixel 1; b on pixel 0, cropped by one
            return self.a(x) + self.b(x)[:, :, 1:-1, 1:-1]

    rf = receptive_field(TwoPaths(), None, input_size=12)
    assert rf.size == (3, 3) and rf.start == (1, 1)      # both centred on pixel 1 after the crop

    class Shifted(TwoPaths):
        def forward(self, x):
            return self.a(x) + self.b(x)[:, :, :-2, :-2]   # b's unit 0 centred on pixel 0: windows [-1, 1] and [0, 2]

    rf = receptive_field(Shifted(), None, input_size=12)
    assert rf.size == (4, 4) and rf.start == (0.5, 0.5)


def test_maxpool_and_the_resnet_stem():
    stem = nn.Sequential(nn.Conv2d(3, 4, 7, 2, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
    assert receptive_field(stem, "0").size == (7, 7)
    rf = receptive_field(stem, "3")
    assert rf.size == (11, 11) and rf.stride == (4, 4) and rf.start == (0, 0)
    rf = receptive_field(nn.Sequential(nn.MaxPool2d(2)), "0", input_size=8)
    assert rf.size == (2, 2) and rf.stride == (2, 2) and rf.start == (0.5, 0.5)   # between pixels 0 and 1
    rf = receptive_field(nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1)), "0", input_size=8)
    assert rf.size == (3, 3) and rf.stride == (1, 1)


@pytest.mark.parametrize("k,s,d", [(3, 1, 1), (3, 2, 1), (5, 2, 1), (3, 1, 2), (1, 2, 1)])
def test_windows_are_the_gradient_supports(k, s, d):
    """With positive weights, a positive input and no nonlinearity, the input pixels that move
    unit (i, j) are exactly its window, clipped to the image: this checks size, stride and start.
    (Average pooling, not max: a max pool passes the gradient to one pixel of its window.)"""
    torch.manual_seed(0)
    net = nn.Sequential(conv(3, 1, 1), conv(k, s, d * (k - 1) // 2, d), nn.AvgPool2d(2), conv(3, 1, 0, 2))
    for m in net:
        if isinstance(m, nn.Conv2d):
            nn.init.uniform_(m.weight, 0.5, 1.0)
    n = 30
    rf = receptive_field(net, "3", input_size=n)
    x = torch.rand(1, 1, n, n) + 1
    x.requires_grad_(True)
    out = net(x)
    for unit in [(0, 0), (1, 2), (out.shape[2] - 1, out.shape[3] - 1)]:
        (g,) = torch.autograd.grad(out[0, 0, unit[0], unit[1]], x, retain_graph=True)
        rows, cols = np.nonzero(g[0, 0].numpy())
        top, left, bottom, right = rf.window(unit)
        assert (rows.min(), cols.min()) == (max(math.ceil(top), 0), max(math.ceil(left), 0))
        assert (rows.max(), cols.max()) == (min(math.floor(bottom), n - 1), min(math.floor(right), n - 1))


# --------------------------------------------------------------------------- what is not a window
def test_global_pooling_and_attention_are_the_whole_input():
    net = nn.Sequential(conv(3, p=1), nn.AdaptiveAvgPool2d(1))
    rf = receptive_field(net, "1", input_size=16)
    assert rf.whole_input and rf.size is None and "global pooling" in rf.reason
    with pytest.raises(ValueError, match="whole input"):
        rf.window((0, 0))

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = conv(4, 4, c_out=8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            return self.attn(t, t, t)[0]

    rf = receptive_field(Tokens(), "attn", input_size=16)
    assert rf.whole_input and "token" in rf.reason
    assert receptive_field(Tokens(), "embed", input_size=16).size == (4, 4)


def test_adaptive_pooling_into_dividing_bins_is_a_window():
    net = nn.Sequential(nn.AdaptiveMaxPool2d(4))
    rf = receptive_field(net, "0", input_size=16)
    assert rf.size == (4, 4) and rf.stride == (4, 4)
    assert receptive_field(net, "0", input_size=18).whole_input   # bins of 4 and 5 cells


def test_pointwise_channel_work_and_permutes_pass_through():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = conv(3, p=1, c_out=4), conv(5, p=2, c_out=4)
            self.norm = nn.LayerNorm(8)
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            y = torch.cat([self.a(x), self.b(x)], dim=1)                    # channels: union = 5
            y = self.fc(self.norm(y.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)   # channels-last and back
            return torch.maximum(torch.sigmoid(y) * y, torch.max(y, y.mean(1, keepdim=True)))

    rf = receptive_field(Net(), None, input_size=12)
    assert rf.size == (5, 5) and rf.stride == (1, 1)


def test_reductions_over_height_or_width_are_the_whole_input():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = conv(3, p=1, c_out=4)

        def forward(self, x):
            y = self.a(x)
            return y * torch.softmax(y, dim=-1)     # weights over the width: mixes a whole row

    rf = receptive_field(Net(), None, input_size=8)
    assert rf.whole_input and "softmax" in rf.reason


def test_interpolation_adds_its_taps_and_scales_the_stride():
    class Up(nn.Module):
        def __init__(self, mode):
            super().__init__()
            self.down, self.mode = conv(2, 2), mode

        def forward(self, x):
            return F.interpolate(self.down(x), scale_factor=2, mode=self.mode)

    assert receptive_field(Up("nearest"), None, input_size=16).size == (2, 2)
    rf = receptive_field(Up("bilinear"), None, input_size=16)
    assert rf.size == (4, 4) and rf.stride == (1, 1)            # two taps one jump (2 px) apart: 2 + 2


def test_unknown_layer_names_close_matches():
    net = nn.Sequential()
    net.add_module("layer3", conv(3))
    with pytest.raises(ValueError, match="Did you mean 'layer3'"):
        receptive_field(net, "layr3")
    with pytest.raises(ValueError, match="module name"):
        receptive_field(net, 3)
    assert receptive_field(net, "lay*3", input_size=8).layer == "layer3"     # a pattern naming one module
    net.add_module("layer4", conv(3))
    with pytest.raises(ValueError, match="matches 2 modules"):
        receptive_field(net, "layer?")
    with pytest.raises(ValueError, match="input_size"):
        receptive_field(net, "layer3", input_size=(16, 0))
    with pytest.raises(ValueError, match="nn.Module"):
        receptive_field("resnet", "layer3")

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = conv(3), conv(3)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(ValueError, match="not called"):
        receptive_field(Unused(), "spare")


def test_table_lists_the_layers_in_order():
    net = nn.Sequential(conv(3, p=1), nn.ReLU(), conv(3, 2, 1))
    rf = receptive_field(net, "2", input_size=16)
    assert [r.name for r in rf.rows()] == ["0", "1", "2"]
    assert [r.size for r in rf.rows(types=[nn.Conv2d])] == [(3, 3), (5, 5)]   # 3 + 2 * 1
    assert [r.name for r in rf.rows(leaves=True)] == ["0", "1", "2"]
    assert rf.at("0").size == (3, 3) and rf.at("2").stride == (2, 2)
    with pytest.raises(ValueError, match="no module"):
        rf.at("3")
    table = rf.table()
    assert "Conv2d" in table and " 5 " in table
    assert [r.name for r in receptive_field(net, "1", input_size=16).rows()] == ["0", "1"]   # up to the layer


# --------------------------------------------------------------------------- ResNet-50 (torchvision layout)
def slim_resnet_v1_50():
    """TF-slim's resnet_v1_50 geometry on one channel: the stride on the 3x3 of the *last* unit of
    blocks 1-3 (shortcut: a 1x1 subsampling), stem 7x7/2 + 3x3/2 max pool."""
    units = []
    for n, strided in zip((3, 4, 6, 3), (True, True, True, False)):
        for i in range(n):
            s = 2 if strided and i == n - 1 else 1
            units.append(Residual(nn.Sequential(conv(1), conv(3, s, 1), conv(1)), nn.MaxPool2d(1, s)))
    return nn.Sequential(conv(7, 2, 3), nn.MaxPool2d(3, 2, 1), *units)


def test_tf_slim_resnet_v1_50_is_483():
    assert receptive_field(slim_resnet_v1_50(), None, input_size=224).size == (483, 483)


@pytest.fixture(scope="module")
def r50():
    from segviz.models.resnet import resnet50

    with torch.device("meta"):
        return resnet50()


def test_torchvision_resnet50_by_hand(r50):
    # conv1 7x7/2: 7 px, jump 2. maxpool 3x3/2 at jump 2: 7 + 2*2 = 11, jump 4.
    # layer1: three bottlenecks, one 3x3 each at jump 4: 11 + 3*8 = 35.
    # layer2: the first 3x3 is strided (at jump 4: +8, then jump 8), three more at jump 8: 35 + 8 + 3*16 = 91.
    # layer3: 91 + 16 + 5*32 = 267 at jump 16; layer4: 267 + 32 + 2*64 = 427 at jump 32.
    expected = {"conv1": (7, 2), "maxpool": (11, 4), "layer1": (35, 4), "layer2": (91, 8), "layer3": (267, 16),
                "layer4": (427, 32), "layer1.0.conv2": (19, 4), "layer2.0.conv2": (43, 8)}
    for layer, (size, stride) in expected.items():
        rf = receptive_field(r50, layer, input_size=64)
        assert (rf.size, rf.stride) == ((size, size), (stride, stride)), layer
        assert rf.start == (0, 0), layer   # every padding in torchvision's ResNet is (k' - 1)/2
    # the downsample shortcut (1x1/2) of layer2 sees less than the main path; the block reports the main path
    assert receptive_field(r50, "layer2.0.downsample", input_size=64).size == (35, 35)
    assert receptive_field(r50, "layer2.0", input_size=64).size == (43, 43)


@pytest.mark.parametrize(("dilate", "layer3", "layer4"), [((False, False, True), (267, 16), (427, 16)),
                                                           ((False, True, True), (267, 8), (427, 8))])
def test_dilation_keeps_the_field_and_the_resolution(dilate, layer3, layer4):
    # output stride 16: layer4's first 3x3 keeps rate 1 (now at jump 16: +32), the next two rate 2
    # (k' 5: +64 each): 267 + 32 + 128 = 427, as without dilation, but at jump 16.
    from segviz.models.resnet import resnet50

    with torch.device("meta"):
        net = resnet50(replace_stride_with_dilation=dilate)
    for layer, (size, stride) in (("layer3", layer3), ("layer4", layer4)):
        rf = receptive_field(net, layer, input_size=64)
        assert (rf.size, rf.stride) == ((size, size), (stride, stride)), layer


def test_deeplab_aspp_branches():
    model = segviz.create_model("deeplabv3plus-nano")
    # nano: one bottleneck per stage; layer4 at jump 16 sees 75 px; a rate-r 3x3 adds 2r jumps
    backbone = receptive_field(model, "backbone.layer4", input_size=64).size[0]
    assert backbone == 11 + 8 + 8 + 16 + 32
    for i, rate in enumerate(model.aspp.rates, start=1):
        assert receptive_field(model, f"aspp.convs.{i}", input_size=64).size == (backbone + 2 * rate * 16,) * 2
    rf = receptive_field(model, None, input_size=64)
    assert rf.whole_input and "global pooling" in rf.reason   # image pooling reaches every pixel


@pytest.mark.parametrize("name", NANO_IMAGE)
def test_every_model_gets_an_answer(name):
    model = segviz.create_model(name)
    rf = receptive_field(model, None, input_size=64)
    first = rf.rows(types=[nn.Conv2d])[0]
    assert first.size is not None and first.size[0] >= 3       # the patch embedding / stem conv
    # attention, or DeepLab's image pooling, makes every output depend on the whole input; the reason says which
    assert rf.whole_input and rf.reason


# --------------------------------------------------------------------------- erf
def ones_stack(n=3, k=3):
    net = nn.Sequential(*[conv(k, p=k // 2) for _ in range(n)])
    for m in net:
        nn.init.ones_(m.weight)
    return net


def test_erf_of_an_all_ones_stack_is_binomial_like_and_fills_the_theoretical_field():
    net = ones_stack(3)
    x = torch.rand(2, 1, 21, 21)
    result = erf(net, x)
    # three 3x3 box filters: per axis the coefficients of (1 + z + z^2)^3 = 1 3 6 7 6 3 1
    v = np.array([1, 3, 6, 7, 6, 3, 1], dtype=float)
    expected = np.zeros((21, 21))
    expected[7:14, 7:14] = np.outer(v, v) / 49
    np.testing.assert_allclose(result.map, expected, atol=1e-12)
    rf = receptive_field(net, None, input_size=21)
    assert result.box() == rf.window((10, 10))          # support = the theoretical window of the centre unit
    assert result.units == ((10,), (10,)) and result.output_size == (21, 21) and result.images == 2
    assert result.area[0.5] == pytest.approx((expected >= 0.5).mean())
    assert result.area[0.2] > result.area[0.5] > result.area[0.9] > 0


def test_erf_support_equals_the_receptive_field_of_a_strided_dilated_relu_net():
    torch.manual_seed(0)
    net = nn.Sequential(conv(3, 2, 1), nn.ReLU(), conv(3, 1, 2, 2), nn.ReLU(), conv(3, 1, 1))
    for m in net:
        if isinstance(m, nn.Conv2d):
            nn.init.uniform_(m.weight, 0.1, 1.0)
    x = torch.rand(1, 1, 41, 41) + 0.5
    result = erf(net, x)
    rf = receptive_field(net, None, input_size=41)
    assert result.box() == rf.window(result.units[0] + result.units[1])
    assert result.map.max() == 1.0


def test_erf_centre_units_of_an_even_map_give_a_symmetric_map():
    net = ones_stack(2)
    result = erf(net, torch.ones(1, 1, 10, 10))
    assert result.units == ((4, 5), (4, 5))
    np.testing.assert_allclose(result.map, result.map[::-1, ::-1])


def test_erf_of_a_layer_and_mode_is_restored():
    net = nn.Sequential(ones_stack(1), nn.Dropout(0.5), ones_stack(2))
    net.train()
    inner = erf(net, torch.rand(1, 1, 15, 15), layer="0")
    assert inner.box() == (6, 6, 8, 8)                  # one 3x3 conv around the centre pixel 7
    assert net.training                                  # eval for the measurement, train again after
    assert erf(net, torch.rand(1, 1, 15, 15)).box() == (4, 4, 10, 10)   # no dropout noise: eval mode


def test_erf_refuses_bad_inputs():
    net = ones_stack(1)
    with pytest.raises(ValueError, match="float tensor"):
        erf(net, np.zeros((1, 1, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="float tensor"):
        erf(net, torch.zeros(1, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="float tensor"):
        erf(net, torch.zeros(8, 8))
    with pytest.raises(ValueError, match="float tensor"):
        erf(net, torch.zeros(0, 1, 8, 8))
    with pytest.raises(ValueError, match="thresholds"):
        erf(net, torch.zeros(1, 1, 8, 8), thresholds=(0.0, 0.5))
    with pytest.raises(ValueError, match="thresholds"):
        erf(net, torch.zeros(1, 1, 8, 8), thresholds=(1.5,))
    with pytest.raises(ValueError, match="Did you mean"):
        erf(nn.Sequential(nn.Sequential(conv(3))), torch.zeros(1, 1, 8, 8), layer="0.1")

    flat = nn.Sequential(conv(3), nn.Flatten())
    with pytest.raises(ValueError, match="not a \\(B, C, h, w\\) map"):
        erf(flat, torch.zeros(1, 1, 8, 8), layer="1")
    with pytest.raises(ValueError, match="not a \\(B, C, h, w\\) map"):
        erf(segviz.create_model("swin-nano"), torch.zeros(1, 3, 32, 32))     # a classifier's logits


@pytest.mark.parametrize(("name", "layer"), [("segformer-nano", "encoder.stages.1"), ("edaformer-nano", None),
                                             ("upernet-swin-nano", "backbone.stages.1"),
                                             ("deeplabv3plus-nano", "backbone.layer2"), ("deeplabv3plus-nano", None)]
                         + [("swin-nano", "stages.1")]   # a classifier: its output is not a map
                         + [(n, None) for n in NANO_IMAGE
                            if n not in ("segformer-nano", "upernet-swin-nano", "deeplabv3plus-nano", "swin-nano")])
def test_erf_works_for_every_model(name, layer):
    model = segviz.create_model(name).eval()
    result = erf(model, torch.randn(1, 3, 64, 64), layer=layer)
    assert result.map.shape == (64, 64) and result.map.max() == 1.0 and np.isfinite(result.map).all()
    assert 0 < result.area[0.2] <= 1
