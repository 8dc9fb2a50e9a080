"""DeepLabv3 (Chen et al. 2017) and DeepLabv3+ (Chen et al., ECCV 2018), block by block.

    image (B, 3, H, W)
      -> ResNet with atrous convolution (segviz/models/resnet.py)
           layer1: low-level features        (B, 256,  H/4,  W/4)
           layer4: high-level features       (B, 2048, H/os, W/os)      os = output stride, 16 or 8
      -> ASPP on layer4: five parallel branches, concatenated, projected to 256   (B, 256, H/os, W/os)
      DeepLabv3 (torchvision's head):  3x3 conv -> 1x1 classifier                 (B, K, H/os, W/os)
      DeepLabv3+ (the paper's decoder):
           low-level 1x1 -> 48; ASPP output upsampled to H/4; concatenate (256 + 48)
           -> two 3x3 convs of 256 -> 1x1 classifier                               (B, K, H/4, W/4)
      -> bilinear upsampling to (H, W) in ``predict``

**Atrous convolution** (see ``resnet.py`` for the backbone side): a k x k kernel at rate r reads
taps r pixels apart, covering k' = r(k - 1) + 1 pixels per side with k² weights; padding r keeps
a 3x3 conv's map size. It lets the last stages keep a finer map (output stride 16 or 8 instead
of 32) while every conv still sees as much of the image as it did in the classifier.

**ASPP** (atrous spatial pyramid pooling, DeepLabv2/v3): the same map is probed at several
scales at once,

    b_0 = ReLU(BN(Conv1x1(x)))
    b_i = ReLU(BN(Conv3x3_{rate r_i}(x)))                         i = 1, 2, 3
    b_4 = Upsample_{h x w}(ReLU(BN(Conv1x1(GlobalAvgPool(x)))))    "image pooling": the whole image
    ASPP(x) = Dropout(ReLU(BN(Conv1x1(Concat(b_0, ..., b_4)))))

each branch 256 channels, with rates (6, 12, 18) at output stride 16 and (12, 24, 36) at 8
(twice the rates on a map twice as fine: the same image distances). At a very large rate on a
small map most taps of the 3x3 fall into the padding and the conv degenerates to its centre 1x1
weight; image pooling is the fix the DeepLabv3 paper adds for that.

**Two heads that exist in practice**, both built here and measured against their references:

* :class:`DeepLabV3` is torchvision's ``deeplabv3_resnet50/101``: ASPP with dropout **0.5** after
  the projection, then one more 3x3 conv of 256 + BN + ReLU, then the 1x1 classifier; the backbone
  at output stride **8** (torchvision's fixed ``replace_stride_with_dilation=[False, True, True]``
  and rates (12, 24, 36)); optional auxiliary FCN head on layer3 (``aux_loss``). Registered as
  ``deeplabv3-r50`` / ``deeplabv3-r101``; ``output_stride=16`` is an override.
* :class:`DeepLabV3Plus` is the paper's encoder–decoder: ASPP with dropout **0.1** (the official
  TensorFlow code's keep_prob 0.9), no extra 3x3 conv, then the decoder (below) at output stride
  16 by default. This is the "paper-style" model whose size is 40,352,181 parameters on
  ResNet-50 and 59,344,309 on ResNet-101 with 21 classes. Compared with torchvision's DeepLabv3
  (39,638,869 / 58,630,997) it lacks the 3x3 conv after ASPP (-590,336) and adds the decoder
  (+1,303,648: the 48-channel skip projection 12,384, the two 3x3 convs 700,928 + 590,336; the
  classifiers are the same size), +713,312 in all.

**The decoder** (DeepLabv3+): ASPP's output is 1/16 of the image; the decoder brings back detail
from layer1 (1/4):

    s = ReLU(BN(Conv1x1_{256 -> 48}(layer1)))          48 channels, so the skip does not outweigh ASPP's 256
    d = Concat(Upsample_{x4}(ASPP(layer4)), s)         (B, 256 + 48, H/4, W/4)
    d = ReLU(BN(Conv3x3(ReLU(BN(Conv3x3(d))))))        two 3x3 convs of 256
    logits = Conv1x1(d)                                (B, K, H/4, W/4), upsampled x4 by ``predict``

Cost: at 513 x 513 the ResNet-101 model is 92.8 GMACs at output stride 16 and 267.9 at 8
(``segviz.flops``: convolutions only); the paper's Table 3 gives 101.28B and 297.92B Multiply-Adds for
its ResNet-101 (TF-slim's, not torchvision's layout, and counted with TensorFlow's tools), 81.02B and
276.18B without the decoder. The decoder itself costs 21.8 GMACs here, the paper's increments are
20.3B (output stride 16) and 21.7B (8).

The official code (Xception) uses depthwise-separable 3x3 convs in ASPP and the decoder; with a
ResNet backbone the paper's ablations use ordinary convs, as here (and as the counts above).
Upsampling is bilinear with ``align_corners=False`` as in torchvision (the TensorFlow code
resizes with ``align_corners=True`` to sizes of the form (n - 1)/4 + 1).

**SPP and its relatives** (:class:`SpatialPyramidPooling`): He et al. (2014) max-pool the last
conv map into a {4x4, 2x2, 1x1} pyramid of bins, 21 per channel, a fixed-length vector for a
classifier whatever the input size. PSPNet's pyramid pooling module (in this kit:
:class:`segviz.models.upernet.PyramidPoolingModule`) average-pools into 1, 2, 3 and 6 bins per
side and upsamples each level back to a map. ASPP keeps the map at full resolution and samples
the neighbourhood at several *rates* instead of pooling into bins; its image-pooling branch is
the PPM's 1x1 bin.

Initialisation: the ResNet as torchvision; torchvision's DeepLabv3 heads keep PyTorch's default
conv init (as torchvision does); the DeepLabv3+ head and decoder use He-normal (fan-out) convs,
BN 1 / 0, and the classifier normal(0, 0.01) with zero bias (the official code's logits init).

Checkpoints: torchvision's ``deeplabv3_resnet50/101().state_dict()`` and a bare
``resnet50/101().state_dict()`` (backbone only; the heads keep their fresh init) load through
``create_model(name, weights=PATH)``, see :func:`checkpoint_filter_fn` at the end.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segviz.models.resnet import ResNet, replace_stride_with_dilation
from segviz.nn.checks import check_bool, check_int, check_int_list, check_positive, check_probability
from segviz.nn.contract import AuxiliaryHeadModel
from segviz.nn.layers import ConvBNReLU
from segviz.registry import register
from segviz.weights import fill_num_batches_tracked, rename_keys

OUTPUT_STRIDES = (8, 16)


def _up(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def atrous_rates(output_stride: int, owner: str = "DeepLab") -> tuple[int, int, int]:
    """ASPP's three rates: (6, 12, 18) at output stride 16, (12, 24, 36) at 8."""
    replace_stride_with_dilation(output_stride, owner, OUTPUT_STRIDES)  # the check
    return tuple(r * 16 // int(output_stride) for r in (6, 12, 18))


# ----------------------------------------------------------------------------------------
# 1. Spatial pyramid pooling (He et al. 2014), for comparison
# ----------------------------------------------------------------------------------------
class SpatialPyramidPooling(nn.Module):
    """SPP-net's layer: max-pool a (B, C, h, w) map into n x n bins for each level n of the
    pyramid (4, 2, 1), flatten, concatenate: (B, C · Σ n²) = (B, 21·C) for any h, w.

    A bin of level n covers about h/n x w/n cells (adaptive pooling: bin i spans
    [⌊i·h/n⌋, ⌈(i+1)·h/n⌉); the paper computes a window ⌈h/n⌉ and stride ⌊h/n⌋, which can differ
    by a cell at the edges). Unlike ASPP or the PPM the output is a vector, not a map: SPP let a
    classifier with fully connected layers accept any image size.
    """

    def __init__(self, bins: Sequence[int] = (4, 2, 1)):
        super().__init__()
        self.bins = check_int_list("SpatialPyramidPooling", "bins", bins, len(bins) if isinstance(bins, Sequence)
                                   else 3, per="level")

    @property
    def bins_per_channel(self) -> int:
        return sum(n * n for n in self.bins)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([F.adaptive_max_pool2d(x, n).flatten(1) for n in self.bins], dim=1)


# ----------------------------------------------------------------------------------------
# 2. ASPP
# ----------------------------------------------------------------------------------------
class ASPPPooling(nn.Module):
    """Image pooling: global average -> 1x1 conv -> BN -> ReLU -> bilinear back to (h, w).

    Shapes: (B, C_in, h, w) -> (B, C, h, w), the same vector at every position."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return _up(self.relu(self.bn(self.conv(self.pool(x)))), x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (see the module docstring): ``convs`` are the 1x1 branch
    and the three atrous 3x3 branches, ``pooling`` the image-pooling branch, ``project`` the
    1x1 fusion conv, then dropout. Branch order in the concatenation: 1x1, rates r_1..r_3, pool.

    Shapes: (B, C_in, h, w) -> (B, channels, h, w).
    """

    def __init__(self, in_channels: int, rates: Sequence[int], channels: int = 256, dropout: float = 0.1):
        super().__init__()
        self.rates = tuple(rates)
        self.convs = nn.ModuleList(
            [ConvBNReLU(in_channels, channels)]
            + [ConvBNReLU(in_channels, channels, 3, padding=r, dilation=r) for r in self.rates]
        )
        self.pooling = ASPPPooling(in_channels, channels)
        self.project = ConvBNReLU((len(self.rates) + 2) * channels, channels)
        self.dropout = nn.Dropout(dropout)

    def branches(self, x: Tensor) -> list[Tensor]:
        """The five branch outputs b_0 .. b_4, each (B, channels, h, w)."""
        return [conv(x) for conv in self.convs] + [self.pooling(x)]

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.project(torch.cat(self.branches(x), dim=1)))


# ----------------------------------------------------------------------------------------
# 3. The DeepLabv3+ decoder
# ----------------------------------------------------------------------------------------
class Decoder(nn.Module):
    """Low-level skip (1x1 to ``skip_channels``) + upsampled ASPP output -> two 3x3 convs.

    Shapes: aspp (B, C_a, h, w), low (B, C_l, h_4, w_4) -> (B, channels, h_4, w_4).
    """

    def __init__(self, low_channels: int, aspp_channels: int, skip_channels: int = 48, channels: int = 256):
        super().__init__()
        self.project = ConvBNReLU(low_channels, skip_channels)
        self.fuse = nn.Sequential(
            ConvBNReLU(aspp_channels + skip_channels, channels, 3, padding=1),
            ConvBNReLU(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor, low: Tensor) -> Tensor:
        skip = self.project(low)
        return self.fuse(torch.cat([_up(x, skip.shape[-2:]), skip], dim=1))


# ----------------------------------------------------------------------------------------
# 4. torchvision's auxiliary head
# ----------------------------------------------------------------------------------------
class AuxFCNHead(nn.Module):
    """torchvision's ``FCNHead`` on layer3, used only for the training loss (``aux_loss``):

        M_aux = Conv1x1(Dropout_{0.1}(ReLU(BN(Conv3x3_{C -> C/4}(layer3)))))

    (mmseg's FCNHead, :class:`segviz.models.upernet.FCNHead`, is the same with a fixed width and
    channel-wise ``Dropout2d``; torchvision drops single activations.)
    Shapes: (B, C, h, w) -> (B, num_classes, h, w).
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.block = ConvBNReLU(in_channels, in_channels // 4, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(in_channels // 4, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.block(x)))


def init_head(m: nn.Module) -> None:
    """He-normal (fan-out) convs and BN 1 / 0 in the DeepLabv3+ head and decoder."""
    for module in m.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------
# 5. The models
# ----------------------------------------------------------------------------------------
class _DeepLab(AuxiliaryHeadModel):
    """What DeepLabv3 and DeepLabv3+ share: the atrous ResNet, ASPP, the optional auxiliary head,
    ``predict`` (bilinear to the input size) and ``loss``.

    ``forward`` in eval mode returns the logits at the head's resolution; in training mode with
    the auxiliary head, ``(main, auxiliary)``. :meth:`loss` is torchvision's reference recipe:
    cross-entropy of the main logits + ``aux_weight`` (0.5) x that of the auxiliary logits, both
    upsampled to the label size, label 255 ignored.
    """

    def __init__(self, num_classes, layers, widths, stem_width, output_stride, aspp_channels, dropout, aux_loss,
                 aux_weight, in_chans, atrous_rates_=None):
        super().__init__()
        owner = type(self).__name__
        self.num_classes = check_int(owner, "num_classes", num_classes)
        self.in_chans = check_int(owner, "in_chans", in_chans)
        dilate = replace_stride_with_dilation(output_stride, owner, OUTPUT_STRIDES)
        rates = atrous_rates(output_stride, owner) if atrous_rates_ is None else \
            check_int_list(owner, "atrous_rates", atrous_rates_, 3, per="atrous branch")
        check_int(owner, "aspp_channels", aspp_channels)
        check_probability(owner, "dropout", dropout)
        check_bool(owner, "aux_loss", aux_loss)
        self.aux_weight = check_positive(owner, "aux_weight", aux_weight)
        self.output_stride = int(output_stride)
        self.backbone = ResNet(layers, widths, stem_width, dilate, num_classes=None, in_chans=in_chans)
        channels = self.backbone.embed_dims
        self.aspp = ASPP(channels[3], rates, aspp_channels, dropout)
        self.aux_classifier = AuxFCNHead(channels[2], num_classes) if aux_loss else None

    def head(self, features: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        self.check_input(x)
        features = self.backbone(x)  # (a module call, so that hooks on "backbone" see it)
        logits = self.head(features)
        if self.training and self.aux_classifier is not None:
            return logits, self.aux_classifier(features[2])
        return logits


class DeepLabV3(_DeepLab):
    """torchvision's DeepLabv3: ResNet -> ASPP -> 3x3 conv (``head_conv``) -> 1x1 ``classifier``.

    ``forward`` (eval): (B, 3, H, W) -> (B, num_classes, ⌈H/os⌉, ⌈W/os⌉).
    ``capture`` records the four ResNet stages, ASPP's output and the head conv as features.
    """

    feature_modules = ("backbone.layer?", "aspp", "head_conv")

    def __init__(self, num_classes: int = 21, layers: Sequence[int] = (3, 4, 6, 3),
                 widths: Sequence[int] = (64, 128, 256, 512), stem_width: int = 64, output_stride: int = 8,
                 aspp_channels: int = 256, dropout: float = 0.5, aux_loss: bool = False, aux_weight: float = 0.5,
                 in_chans: int = 3, atrous_rates: Sequence[int] | None = None):
        super().__init__(num_classes, layers, widths, stem_width, output_stride, aspp_channels, dropout, aux_loss,
                         aux_weight, in_chans, atrous_rates)
        self.head_conv = ConvBNReLU(aspp_channels, aspp_channels, 3, padding=1)
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)

    def head(self, features: list[Tensor]) -> Tensor:
        return self.classifier(self.head_conv(self.aspp(features[3])))


class DeepLabV3Plus(_DeepLab):
    """DeepLabv3+: ResNet -> ASPP -> :class:`Decoder` with layer1 -> 1x1 ``classifier``.

    ``forward`` (eval): (B, 3, H, W) -> (B, num_classes, ⌈H/4⌉, ⌈W/4⌉).
    ``capture`` records the four ResNet stages, ASPP's output and the decoder's output.
    """

    feature_modules = ("backbone.layer?", "aspp", "decoder")

    def __init__(self, num_classes: int = 21, layers: Sequence[int] = (3, 4, 6, 3),
                 widths: Sequence[int] = (64, 128, 256, 512), stem_width: int = 64, output_stride: int = 16,
                 aspp_channels: int = 256, skip_channels: int = 48, decoder_channels: int = 256,
                 dropout: float = 0.1, aux_loss: bool = False, aux_weight: float = 0.5, in_chans: int = 3,
                 atrous_rates: Sequence[int] | None = None):
        super().__init__(num_classes, layers, widths, stem_width, output_stride, aspp_channels, dropout, aux_loss,
                         aux_weight, in_chans, atrous_rates)
        owner = type(self).__name__
        check_int(owner, "skip_channels", skip_channels)
        check_int(owner, "decoder_channels", decoder_channels)
        self.decoder = Decoder(self.backbone.embed_dims[0], aspp_channels, skip_channels, decoder_channels)
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)
        for module in (self.aspp, self.decoder) + ((self.aux_classifier,) if self.aux_classifier else ()):
            init_head(module)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def head(self, features: list[Tensor]) -> Tensor:
        return self.classifier(self.decoder(self.aspp(features[3]), features[0]))


# ----------------------------------------------------------------------------------------
# Variants, with the published numbers
# ----------------------------------------------------------------------------------------
R50, R101 = (3, 4, 6, 3), (3, 4, 23, 3)
_TV = "torchvision 0.28 (models/segmentation/deeplabv3.py; DeepLabV3_ResNet{}_Weights num_params and VOC-val mIoU)"
PUBLISHED = {
    "deeplabv3-r50": dict(params=39_638_869, params_aux=42_004_074, backbone_params=25_557_032, miou=66.4,
                          num_classes=21, counted="backbone + ASPP + head (params_aux: + the auxiliary FCN head)",
                          source=_TV.format(50) + "; the 66.4 mIoU is for the COCO-trained weights, at 520 px"),
    "deeplabv3-r101": dict(params=58_630_997, params_aux=60_996_202, backbone_params=44_549_160, miou=67.4,
                           num_classes=21, counted="backbone + ASPP + head (params_aux: + the auxiliary FCN head)",
                           source=_TV.format(101) + "; the 67.4 mIoU is for the COCO-trained weights, at 520 px"),
    "deeplabv3plus-r50": dict(params=40_352_181, backbone_params=25_557_032, num_classes=21, input_size=(513, 513),
                              counted="backbone + ASPP + decoder + classifier (paper-style, ordinary convs)",
                              source="Chen et al. 2018 (DeepLabv3+) architecture on torchvision's ResNet-50, counted"),
    "deeplabv3plus-r101": dict(params=59_344_309, backbone_params=44_549_160, num_classes=21, input_size=(513, 513),
                               counted="backbone + ASPP + decoder + classifier (paper-style, ordinary convs)",
                               gmacs_os16=101.28, gmacs_os8=297.92, gmacs_no_decoder_os16=81.02,
                               gmacs_no_decoder_os8=276.18, miou_os16=78.85, miou_os8=79.35,
                               source="params: Chen et al. 2018 (DeepLabv3+) architecture on torchvision's ResNet-101, "
                                      "counted; Multiply-Adds (B) and VOC 2012 val mIoU at 513x513: the paper's "
                                      "Table 3 (ResNet-101, train output stride 16), for TF-slim's ResNet-101, "
                                      "whose stem and block layout differ from torchvision's"),
}

# ----------------------------------------------------------------------------------------
# Reading checkpoints written by other code bases (the timm convention)
# ----------------------------------------------------------------------------------------
# torchvision's DeepLabV3 (``_SimpleSegmentationModel``): backbone.* is our backbone as it is (an
# IntermediateLayerGetter over the ResNet, without avgpool / fc); the head is one nn.Sequential
# ``classifier`` = [ASPP, conv3x3, BN, ReLU, conv1x1] whose ASPP holds convs.0 (1x1), convs.1-3
# (atrous), convs.4 (pooling: [pool, conv, BN, ReLU]) and project [conv, BN, ReLU, Dropout];
# aux_classifier = [conv3x3, BN, ReLU, Dropout, conv1x1].
_TORCHVISION = [
    (r"^classifier\.0\.convs\.4\.1\.", "aspp.pooling.conv."),
    (r"^classifier\.0\.convs\.4\.2\.", "aspp.pooling.bn."),
    (r"^classifier\.0\.convs\.(\d)\.0\.", r"aspp.convs.\1.conv."),
    (r"^classifier\.0\.convs\.(\d)\.1\.", r"aspp.convs.\1.bn."),
    (r"^classifier\.0\.project\.0\.", "aspp.project.conv."),
    (r"^classifier\.0\.project\.1\.", "aspp.project.bn."),
    (r"^classifier\.1\.", "head_conv.conv."),
    (r"^classifier\.2\.", "head_conv.bn."),
    (r"^classifier\.4\.", "classifier."),
    (r"^aux_classifier\.0\.", "aux_classifier.block.conv."),
    (r"^aux_classifier\.1\.", "aux_classifier.block.bn."),
    (r"^aux_classifier\.4\.", "aux_classifier.classifier."),
]


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """A DeepLab state dict in a known layout -> ``model``'s layout.

    * ours: unchanged;
    * torchvision ``deeplabv3_resnet50/101(...).state_dict()``: ASPP and heads renamed (table
      above), the backbone as it is;
    * a bare torchvision ResNet (``resnet50().state_dict()``, keys ``conv1.``, ``layer1.``, ...,
      ``fc.``): loaded as the backbone (``fc`` dropped), every head tensor kept from ``model``
      as it was built (the usual start: ImageNet backbone, freshly initialised heads).

    Keys that no rule understands keep their names, so the strict loader lists them; a missing
    BatchNorm ``num_batches_tracked`` counter is filled with 0.
    """
    if not any(k.startswith("backbone.") for k in state_dict) and any(k.startswith("layer1.") for k in state_dict):
        sd = {f"backbone.{k}": v for k, v in state_dict.items() if not k.startswith("fc.")}
        sd.update({k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")})
        return fill_num_batches_tracked(sd, model)
    return fill_num_batches_tracked(rename_keys(state_dict, _TORCHVISION), model)


_NANO = dict(num_classes=6, layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_width=16, aspp_channels=64)

for _depth, _layers in ((50, R50), (101, R101)):
    register(f"deeplabv3-r{_depth}", DeepLabV3, dict(num_classes=21, layers=_layers, output_stride=8, dropout=0.5),
             checkpoint_filter_fn, published=PUBLISHED[f"deeplabv3-r{_depth}"],
             description=f"torchvision's deeplabv3_resnet{_depth} (output stride 8, ASPP rates 12/24/36), "
                         "21 VOC classes")
    register(f"deeplabv3plus-r{_depth}", DeepLabV3Plus, dict(num_classes=21, layers=_layers, output_stride=16),
             checkpoint_filter_fn, published=PUBLISHED[f"deeplabv3plus-r{_depth}"],
             description=f"DeepLabv3+ on ResNet-{_depth} (Chen et al. 2018), output stride 16, 21 VOC classes")
register("deeplabv3-nano", DeepLabV3, dict(_NANO, output_stride=16, dropout=0.1), checkpoint_filter_fn,
         description="a tiny DeepLabv3 (torchvision's head) for CPU notebooks, 6 Scenes classes")
register("deeplabv3plus-nano", DeepLabV3Plus, dict(_NANO, output_stride=16, skip_channels=16, decoder_channels=64),
         checkpoint_filter_fn, description="a tiny DeepLabv3+ for CPU notebooks (ResNet widths 16-128, one block "
                                           "per stage), 6 Scenes classes, 256 px")
