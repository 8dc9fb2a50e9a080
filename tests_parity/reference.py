"""Reference models assembled from torchvision's own parts, for the parity tests and the benchmark.

torchvision has no DeepLabv3+, and its ``deeplabv3_resnet50/101`` fix the output stride at 8
(rates 12/24/36). The builders below keep torchvision's modules (``resnet50/101`` with
``replace_stride_with_dilation``, ``IntermediateLayerGetter``, ``ASPP``, ``FCNHead``,
``DeepLabV3``) and only choose the stride, the rates, and — for DeepLabv3+ — add the paper's
decoder made of plain ``nn`` layers. Their state dicts are in torchvision's layout, which
``segviz.create_model(name, weights=PATH)`` reads.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50, resnet101
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabV3
from torchvision.models.segmentation.fcn import FCNHead

DILATION = {16: [False, False, True], 8: [False, True, True]}
RATES = {16: [6, 12, 18], 8: [12, 24, 36]}
RESNETS = {50: resnet50, 101: resnet101}


def tv_resnet(depth: int, output_stride: int = 32, num_classes: int = 1000) -> nn.Module:
    dilation = DILATION.get(output_stride, [False, False, False])
    return RESNETS[depth](weights=None, num_classes=num_classes, replace_stride_with_dilation=dilation)


def tv_deeplabv3(depth: int, output_stride: int, num_classes: int = 21, aux: bool = False) -> DeepLabV3:
    """torchvision's DeepLabV3 at output stride 8 or 16 (at 8 it is ``deeplabv3_resnet{depth}``)."""
    layers = {"layer4": "out", **({"layer3": "aux"} if aux else {})}
    backbone = IntermediateLayerGetter(tv_resnet(depth, output_stride), return_layers=layers)
    head = nn.Sequential(ASPP(2048, RATES[output_stride]), nn.Conv2d(256, 256, 3, padding=1, bias=False),
                         nn.BatchNorm2d(256), nn.ReLU(), nn.Conv2d(256, num_classes, 1))
    return DeepLabV3(backbone, head, FCNHead(1024, num_classes) if aux else None)


def _conv_bn_relu(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
                                     bn=nn.BatchNorm2d(c_out), relu=nn.ReLU()))


class TorchvisionDeepLabV3Plus(nn.Module):
    """torchvision's atrous ResNet and ASPP + the DeepLabv3+ decoder (48-channel skip from layer1,
    two 3x3 convs of 256, 1x1 classifier), logits upsampled to the input size.

    State-dict keys: ``backbone.*`` (torchvision), ``classifier.0.*`` (torchvision's ASPP, as in its
    DeepLabV3), ``decoder.project/fuse.*`` and ``classifier.weight/bias`` (named as segviz's)."""

    def __init__(self, depth: int = 50, output_stride: int = 16, num_classes: int = 21):
        super().__init__()
        self.backbone = IntermediateLayerGetter(tv_resnet(depth, output_stride),
                                                return_layers={"layer1": "low", "layer4": "out"})
        self.aspp = ASPP(2048, RATES[output_stride])
        self.decoder = nn.Module()
        self.decoder.project = _conv_bn_relu(256, 48, 1)
        self.decoder.fuse = nn.Sequential(_conv_bn_relu(256 + 48, 256, 3), _conv_bn_relu(256, 256, 3))
        self.head = nn.Conv2d(256, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        low = self.decoder.project(features["low"])
        high = F.interpolate(self.aspp(features["out"]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.head(self.decoder.fuse(torch.cat([high, low], dim=1)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def torchvision_layout(self) -> dict[str, torch.Tensor]:
        """The state dict with torchvision's DeepLabV3 names for the ASPP (``classifier.0.``)."""
        out = {}
        for key, value in self.state_dict().items():
            if key.startswith("aspp."):
                key = "classifier.0." + key[len("aspp."):]
            elif key.startswith("head."):
                key = "classifier." + key[len("head."):]
            out[key] = value
        return out


@torch.no_grad()
def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (the default init is 1 / 0 / 0 / 1,
    which would hide a swapped or missing BN), scaled so that activations stay O(1) through 100+ layers."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.5)
            m.bias.copy_((torch.rand(n, generator=gen) - 0.5) * 0.2)
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.copy_((torch.rand(m.bias.shape, generator=gen) - 0.5) * 0.2)
    return model.eval()
