"""Numerical parity of segviz's ResNet, DeepLabv3 and DeepLabv3+ with torchvision 0.28.

Random weights, randomised BatchNorm statistics, torchvision's state dicts saved to a file and read
back through ``segviz.create_model(name, weights=PATH)``; outputs must agree to 1e-4 at output
stride 16 and 8. Small inputs of odd size (97 x 129) keep it quick and test the rounding of
strided convs."""
import pytest
import torch
import torch.nn.functional as F

import segviz
from segviz.models.resnet import ResNet, checkpoint_filter_fn as resnet_filter, replace_stride_with_dilation
from segviz.weights import load_state_dict_strict
from tests_parity.reference import TorchvisionDeepLabV3Plus, randomise, tv_deeplabv3, tv_resnet

SIZE = (97, 129)
TOL = 1e-4
LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


@pytest.fixture(scope="module", autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def x():
    return torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------
# ResNet with replace_stride_with_dilation
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("output_stride", [32, 16, 8])
@torch.no_grad()
def test_resnet50_features_match_torchvision(output_stride, x):
    tv = randomise(tv_resnet(50, output_stride))
    ours = ResNet(LAYERS[50], replace_stride_with_dilation=replace_stride_with_dilation(output_stride),
                  num_classes=None).eval()
    load_state_dict_strict(ours, resnet_filter(tv.state_dict(), ours))
    h = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    expected = []
    for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
        h = layer(h)
        expected.append(h)
    got = ours(x)
    assert got[-1].shape[-2:] == (-(-SIZE[0] // output_stride), -(-SIZE[1] // output_stride))
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= TOL
    # the dilations torchvision chose, block by block, are ours
    tv_rates = tuple(tuple(block.conv2.dilation[0] for block in layer)
                     for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4))
    assert ours.dilations == tv_rates


@torch.no_grad()
def test_resnet50_classifier_matches_torchvision(x):
    tv = randomise(tv_resnet(50))
    ours = ResNet(LAYERS[50]).eval()
    load_state_dict_strict(ours, resnet_filter(tv.state_dict(), ours))
    assert segviz.count_params(ours) == segviz.count_params(tv) == 25_557_032
    assert (ours(x) - tv(x)).abs().max() <= TOL


# ---------------------------------------------------------------------------------------
# DeepLabv3: torchvision's deeplabv3_resnet50/101 through create_model(weights=path)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth, output_stride, aux", [(50, 8, False), (50, 8, True), (50, 16, True),
                                                       (101, 8, True), (101, 16, False)])
@torch.no_grad()
def test_deeplabv3_matches_torchvision(depth, output_stride, aux, x, tmp_path):
    if output_stride == 8:  # torchvision's own builder (always output stride 8)
        from torchvision.models.segmentation import deeplabv3_resnet50, deeplabv3_resnet101
        build = {50: deeplabv3_resnet50, 101: deeplabv3_resnet101}[depth]
        tv = build(weights=None, weights_backbone=None, num_classes=21, aux_loss=aux)
    else:
        tv = tv_deeplabv3(depth, output_stride, aux=aux)
    tv = randomise(tv)
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    ours = segviz.create_model(f"deeplabv3-r{depth}", weights=str(path), output_stride=output_stride,
                               aux_loss=aux).eval()
    assert segviz.count_params(ours) == segviz.count_params(tv)
    expected = tv(x)
    assert (ours.predict(x) - expected["out"]).abs().max() <= TOL
    if aux:
        aux_logits = ours.aux_classifier(ours.backbone.forward_features(x)[2])
        assert (F.interpolate(aux_logits, size=SIZE, mode="bilinear") - expected["aux"]).abs().max() <= TOL


# ---------------------------------------------------------------------------------------
# DeepLabv3+: torchvision's backbone and ASPP + the paper's decoder
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("output_stride", [16, 8])
@torch.no_grad()
def test_deeplabv3plus_matches_torchvision_parts(output_stride, x, tmp_path):
    tv = randomise(TorchvisionDeepLabV3Plus(50, output_stride))
    path = tmp_path / "tv.pth"
    torch.save(tv.torchvision_layout(), path)
    ours = segviz.create_model("deeplabv3plus-r50", weights=str(path), output_stride=output_stride).eval()
    assert segviz.count_params(ours) == segviz.count_params(tv) == 40_352_181
    assert (ours.predict(x) - tv(x)).abs().max() <= TOL


@torch.no_grad()
def test_a_torchvision_resnet_checkpoint_loads_as_the_deeplabv3plus_backbone(x, tmp_path):
    tv = randomise(tv_resnet(50, 16))
    path = tmp_path / "resnet50.pth"
    torch.save(tv.state_dict(), path)
    torch.manual_seed(3)
    ours = segviz.create_model("deeplabv3plus-r50", weights=str(path)).eval()
    features = ours.backbone(x)
    expected = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
    assert (features[-1] - expected).abs().max() <= TOL
    torch.manual_seed(3)  # the heads are those of a model built from the same seed
    fresh = segviz.create_model("deeplabv3plus-r50")
    assert torch.equal(ours.decoder.fuse[0].conv.weight, fresh.decoder.fuse[0].conv.weight)
