"""ResNet (He et al., CVPR 2016) in torchvision's layout, with atrous (dilated) convolution for
dense prediction (Chen et al., DeepLab v2/v3).

    image (B, 3, H, W)
      -> stem: conv 7x7 s2 (64) -> BN -> ReLU -> max-pool 3x3 s2        (B, 64,   H/4,  W/4)
      -> layer1: n_1 Bottlenecks, width  64, out  256, stride 1           (B, 256,  H/4,  W/4)   low-level features
      -> layer2: n_2 Bottlenecks, width 128, out  512, stride 2           (B, 512,  H/8,  W/8)
      -> layer3: n_3 Bottlenecks, width 256, out 1024, stride 2 or dil.   (B, 1024, H/16, W/16)  (H/8 at OS 8)
      -> layer4: n_4 Bottlenecks, width 512, out 2048, stride 2 or dil.   (B, 2048, H/32, W/32)  (or H/16, H/8)
      [-> global average pool -> Linear 2048 -> 1000: the ImageNet classifier]

ResNet-50 has (n_1, n_2, n_3, n_4) = (3, 4, 6, 3), ResNet-101 (3, 4, 23, 3). Sizes are
⌈·⌉ of the fractions shown (every stride-2 conv here pads so that an odd side rounds up).

The Bottleneck (torchvision's "ResNet v1.5"): 1x1 reduce -> 3x3 -> 1x1 expand (x4), with the
stride of a downsampling block on the 3x3 conv (the original paper, and Caffe/TF-slim's
resnet_v1, put it on the first 1x1), and a 1x1 projection (conv + BN, same stride) on the
shortcut where the shape changes:

    y = ReLU(x' + BN(Conv1x1(ReLU(BN(Conv3x3_{s, r}(ReLU(BN(Conv1x1(x)))))))))
    x' = x, or BN(Conv1x1_{s}(x)) for the first block of a stage

Atrous convolution. A 3x3 conv with rate (dilation) r reads its nine taps r pixels apart:

    y[i, j] = sum_{a, b in {-1, 0, 1}} w[a, b] · x[i + r·a, j + r·b]

so a k x k kernel covers an effective k' = r(k - 1) + 1 pixels per side (3x3: 3, 5, 9, 13 at
r = 1, 2, 4, 6) with the same nine weights and the same cost. Padding r (= (k' - 1) / 2 for
k = 3) keeps an h x w map h x w at stride 1.

Output stride (the input size over the size of the last map) is 32 for the classifier. To make
dense features, DeepLab removes the stride of the last one or two stages and dilates their
convs instead, so that every later conv sees the same neighbourhood of the image it saw
before: torchvision's ``replace_stride_with_dilation`` (for layer2, layer3, layer4)

    output stride 32: (False, False, False)
    output stride 16: (False, False, True)    layer4 at rate 2
    output stride  8: (False, True,  True)    layer3 at rate 2, layer4 at rate 4

Which convs are dilated (torchvision's rule, followed here exactly): when a stage gives up its
stride, its *first* block keeps the previous dilation (that block's 3x3 conv used to do the
downsampling, so it still sees the map at the old sampling), and only the following blocks
use the new, doubled rate. At output stride 8 layer3's blocks have rates 1, 2, 2, ... and
layer4's 2, 4, 4. (segmentation_models_pytorch dilates *every* 3x3 of a dilated stage,
first block included: layer4 at 2, 2, 2 for output stride 16 — a slightly different network.)
The DeepLab papers' TF-slim resnet_v1 also applies "multi-grid" rates inside layer4; torchvision
and this file do not.

Initialisation as torchvision: He-normal (fan-out, ReLU gain) for every conv, BatchNorm
weight 1 and bias 0, the classifier Linear at PyTorch's default; ``zero_init_residual=True``
(off by default, as in torchvision) starts each block's last BN at 0.

State-dict keys are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer2.0.downsample.0/1``, ``fc``), so ``torchvision.models.resnet50().state_dict()`` loads
as it is (the backbone drops ``fc``).
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segviz.nn.checks import check_bool, check_image_batch, check_int, check_int_list

#: output stride -> replace_stride_with_dilation for (layer2, layer3, layer4)
DILATION_FOR_OUTPUT_STRIDE = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}


def replace_stride_with_dilation(output_stride: int, owner: str = "ResNet",
                                 allowed: Sequence[int] = (8, 16, 32)) -> tuple[bool, bool, bool]:
    """torchvision's ``replace_stride_with_dilation`` for an output stride in ``allowed``."""
    if not isinstance(output_stride, numbers.Integral) or isinstance(output_stride, bool) \
            or output_stride not in allowed:
        raise ValueError(f"{owner}: output_stride must be one of {', '.join(map(str, sorted(allowed)))}, "
                         f"got {output_stride!r}")
    return DILATION_FOR_OUTPUT_STRIDE[int(output_stride)]


class Bottleneck(nn.Module):
    """1x1 (reduce to ``width``) -> 3x3 (stride s, rate r) -> 1x1 (expand to 4 · width), each
    followed by BN, ReLU after the first two and after the residual sum.

    Shapes: (B, C_in, h, w) -> (B, 4·width, ⌈h/s⌉, ⌈w/s⌉).
    """

    expansion = 4

    def __init__(self, inplanes: int, width: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity  # in place, as torchvision (one allocation fewer per block)
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet with Bottleneck blocks: the ImageNet classifier (``num_classes`` an int), or a
    dense backbone (``num_classes=None``) whose forward returns the four stage outputs
    ``[layer1, layer2, layer3, layer4]``.

    Args:
        layers: blocks per stage, (3, 4, 6, 3) for ResNet-50, (3, 4, 23, 3) for ResNet-101.
        widths: Bottleneck widths per stage (64, 128, 256, 512); stage outputs are 4x these.
        stem_width: channels of the 7x7 stem conv (64).
        replace_stride_with_dilation: three bools for layer2..4, torchvision's semantics (see
            the module docstring); :func:`replace_stride_with_dilation` gives them for an
            output stride.
        num_classes: the classifier's classes (1000), or None for the dense backbone.
        zero_init_residual: start every block's last BN weight at 0 (torchvision's option).
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), widths: Sequence[int] = (64, 128, 256, 512),
                 stem_width: int = 64, replace_stride_with_dilation: Sequence[bool] = (False, False, False),
                 num_classes: int | None = 1000, zero_init_residual: bool = False, in_chans: int = 3):
        super().__init__()
        owner = type(self).__name__
        layers = check_int_list(owner, "layers", layers, 4)
        widths = check_int_list(owner, "widths", widths, 4)
        stem_width = check_int(owner, "stem_width", stem_width)
        self.in_chans = check_int(owner, "in_chans", in_chans)
        dilate = replace_stride_with_dilation
        if (isinstance(dilate, (str, bytes)) or not isinstance(dilate, Sequence) or len(dilate) != 3
                or not all(isinstance(v, bool) for v in dilate)):
            raise ValueError(f"{owner}: replace_stride_with_dilation needs three bools (layer2, layer3, layer4), "
                             f"got {replace_stride_with_dilation!r}")
        check_bool(owner, "zero_init_residual", zero_init_residual)
        if num_classes is not None:
            num_classes = check_int(owner, "num_classes", num_classes)
        self.num_classes = num_classes
        self.embed_dims = tuple(w * Bottleneck.expansion for w in widths)  # channels of the four stage outputs

        self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._inplanes, self._dilation = stem_width, 1
        dilate = (False,) + tuple(replace_stride_with_dilation)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            self._make_layer(w, n, stride=1 if i == 0 else 2, dilate=d)
            for i, (w, n, d) in enumerate(zip(widths, layers, dilate))
        )
        self.dilations = tuple(  # the 3x3 rates of every block, per stage (read by tests and notebooks)
            tuple(block.conv2.dilation[0] for block in layer) for layer in self.stages
        )
        self.output_stride = 4 * 2 ** sum(1 for d in dilate[1:] if not d)
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(self.embed_dims[-1], num_classes)
        init_resnet(self, zero_init_residual)

    @property
    def stages(self) -> tuple[nn.Sequential, ...]:
        return self.layer1, self.layer2, self.layer3, self.layer4

    def _make_layer(self, width: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        previous = self._dilation
        if dilate:  # give up the stride, dilate the blocks after the first instead
            self._dilation *= stride
            stride = 1
        out = width * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self._inplanes, out, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out))
        layer = [Bottleneck(self._inplanes, width, stride, previous, downsample)]
        layer += [Bottleneck(out, width, dilation=self._dilation) for _ in range(1, blocks)]
        self._inplanes = out
        return nn.Sequential(*layer)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The four stage outputs [(B, 4·w_1, H/4, W/4), ..., (B, 4·w_4, H/os, W/os)]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for layer in self.stages:
            x = layer(x)
            features.append(x)
        return features

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """Classifier: logits (B, num_classes). Backbone: the four stage outputs."""
        check_image_batch(x, self.in_chans, type(self).__name__)
        features = self.forward_features(x)
        if self.num_classes is None:
            return features
        return self.fc(torch.flatten(self.avgpool(features[-1]), 1))


def init_resnet(model: nn.Module, zero_init_residual: bool = False) -> None:
    """torchvision's ResNet init: He-normal (fan-out, ReLU) convs, BN weight 1 / bias 0, and
    optionally each Bottleneck's last BN weight 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)


def resnet50(**kwargs) -> ResNet:
    """ResNet-50: 25,557,032 parameters with the 1000-class head (torchvision)."""
    return ResNet((3, 4, 6, 3), **kwargs)


def resnet101(**kwargs) -> ResNet:
    """ResNet-101: 44,549,160 parameters with the 1000-class head (torchvision)."""
    return ResNet((3, 4, 23, 3), **kwargs)


PUBLISHED = {
    "resnet50": dict(params=25_557_032, source="torchvision ResNet50_Weights.IMAGENET1K_V1 num_params"),
    "resnet101": dict(params=44_549_160, source="torchvision ResNet101_Weights.IMAGENET1K_V1 num_params"),
}


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """A torchvision ResNet state dict -> ``model``'s (the same names); a dense backbone
    (``num_classes=None``) drops the classifier's ``fc``."""
    if getattr(model, "num_classes", None) is None:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    return dict(state_dict)
