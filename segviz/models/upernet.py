"""UperNet (Xiao et al., ECCV 2018), the decode head the Swin paper uses for ADE20K.

    backbone pyramid [F1 (1/4), F2 (1/8), F3 (1/16), F4 (1/32)]
      -> Pyramid Pooling Module on F4 (PSPNet's PPM: context of the whole image)
      -> FPN: lateral 1x1 convs on F1..F3, top-down path (upsample + add), 3x3 conv on each level
      -> upsample every level to 1/4, concatenate, 3x3 fuse conv, dropout, 1x1 classifier
      -> logits (B, num_classes, H/4, W/4)

plus, in training, an auxiliary FCN head on stage 3 (F3) whose loss is added with weight 0.4.

Faithful to mmsegmentation's ``UPerHead`` and ``FCNHead`` (the config of the Swin paper's
ADE20K models: channels 512, pool scales 1, 2, 3, 6, dropout 0.1; auxiliary head 256 channels,
one 3x3 conv) and to HuggingFace ``UperNetForSemanticSegmentation``, whose checkpoints load
through ``create_model(name, weights=PATH)`` (:func:`checkpoint_filter_fn` at the end).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segviz.models import swin
from segviz.nn.checks import check_bool, check_int, check_int_list, check_positive, check_probability
from segviz.nn.contract import AuxiliaryHeadModel
from segviz.nn.layers import ConvBNReLU
from segviz.registry import register
from segviz.weights import fill_num_batches_tracked, rename_keys


def _up(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------
# 1. Pyramid Pooling Module
# ----------------------------------------------------------------------------------------
class PyramidPoolingModule(nn.Module):
    """PSPNet's pyramid pooling (Zhao et al. 2017), the "PPM" of UperNet, on the last stage:

        P_b = Upsample_{h x w}(ConvBNReLU_1x1(AvgPool_{b x b}(F4)))      for b in (1, 2, 3, 6)
        out = ConvBNReLU_3x3(Concat(F4, P_1, P_2, P_3, P_6))

    Each branch average-pools the map into b x b bins (adaptive: any input size), so a bin sees
    1/b of the image per side: the 1x1 bin is the global context, the 6x6 bins are regional.

    Relation to SPP (He et al. 2014): spatial pyramid pooling *max*-pools the last conv map into
    {4x4, 2x2, 1x1} bins and flattens them into one fixed-length vector (21 bins per channel) for
    a classifier, whatever the input size. The PPM keeps the idea (bins that adapt to the map
    size, several pyramid levels) but *average*-pools into 1, 2, 3 and 6 bins, projects each
    level with a 1x1 conv, and upsamples it back to a map that is concatenated with the input:
    context for every pixel instead of one vector for the image.

    Shapes: (B, C_in, h, w) -> (B, channels, h, w).
    """

    def __init__(self, in_channels: int, channels: int, bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.bins = tuple(bins)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNReLU(in_channels, channels)) for b in self.bins
        )
        self.bottleneck = ConvBNReLU(in_channels + len(self.bins) * channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = [_up(branch(x), x.shape[-2:]) for branch in self.branches]
        return self.bottleneck(torch.cat([x] + pooled, dim=1))


# ----------------------------------------------------------------------------------------
# 2. The UperNet head: PPM + FPN + fusion
# ----------------------------------------------------------------------------------------
class UperNetHead(nn.Module):
    """The unified perceptual parsing head (mmseg ``UPerHead``):

        L_4 = PPM(F4);  L_i = ConvBNReLU_1x1(F_i)                     i = 1..3   (laterals)
        L_i = L_i + Upsample(L_(i+1))                                 i = 3..1   (top-down)
        P_i = ConvBNReLU_3x3(L_i) (i = 1..3);  P_4 = L_4                          (FPN convs)
        F   = ConvBNReLU_3x3(Concat(P_1, Up(P_2), Up(P_3), Up(P_4)))  all at 1/4  (fuse)
        M   = Conv_1x1(Dropout(F))                                                (classify)

    Shapes: four maps (B, C_i, h_i, w_i) -> logits (B, num_classes, h_1, w_1).
    ``capture`` records the fused map F of the head as its "feature".
    """

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int,
                 bins: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__()
        self.ppm = PyramidPoolingModule(in_channels[-1], channels, bins)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3, padding=1) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3, padding=1)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def fuse(self, features: Sequence[Tensor]) -> Tensor:
        """The fused map F (B, channels, h_1, w_1), before dropout and the classifier."""
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)] + [self.ppm(features[-1])]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _up(laterals[i], laterals[i - 1].shape[-2:])
        levels = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        size = levels[0].shape[-2:]
        return self.fpn_bottleneck(torch.cat([levels[0]] + [_up(p, size) for p in levels[1:]], dim=1))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.classifier(self.dropout(self.fuse(features)))


class FCNHead(nn.Module):
    """The auxiliary head (mmseg ``FCNHead``, one conv): a deep-supervision classifier on one
    backbone stage, used only for the training loss.

        M_aux = Conv_1x1(Dropout(ConvBNReLU_3x3(F_stage)))

    Shapes: (B, C_in, h, w) -> (B, num_classes, h, w).
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.convs = nn.Sequential(ConvBNReLU(in_channels, channels, 3, padding=1))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.convs(x)))


def init_mmseg(m: nn.Module) -> None:
    """mmcv's init of the heads: He-normal (fan-out) convs in ConvModules, BN 1 / 0, and the
    1x1 classifiers normal(0, 0.01) with zero bias."""
    for module in m.modules():
        if isinstance(module, ConvBNReLU):
            nn.init.kaiming_normal_(module.conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.ones_(module.bn.weight)
            nn.init.zeros_(module.bn.bias)
    for head in (getattr(m, "classifier", None),):
        if isinstance(head, nn.Conv2d):
            nn.init.normal_(head.weight, 0.0, 0.01)
            nn.init.zeros_(head.bias)


# ----------------------------------------------------------------------------------------
# 3. The whole model
# ----------------------------------------------------------------------------------------
class UperNet(AuxiliaryHeadModel):
    """A backbone pyramid + :class:`UperNetHead` (+ :class:`FCNHead` for training).

    ``forward`` in eval mode: (B, 3, H, W) -> main logits (B, num_classes, ⌈H/4⌉, ⌈W/4⌉).
    In training mode, with the auxiliary head: ``(main, auxiliary)``, the auxiliary logits at
    the resolution of their stage; :meth:`loss` adds ``aux_weight`` x the auxiliary
    cross-entropy (mmseg / HuggingFace: 0.4). ``predict`` upsamples the main logits to (H, W)
    as HuggingFace ``UperNetForSemanticSegmentation`` does. The auxiliary head is part of the
    model (and of its parameter count, as the published figures count it) but not of inference.

    Args:
        backbone: a module returning four maps; its ``embed_dims`` gives their channels.
        num_classes, channels (UperNet's width, 512), bins (PPM pool scales), dropout,
        auxiliary (build the FCN head), aux_stage (1-based stage it reads: 3), aux_channels (256),
        aux_weight (0.4).
    """

    feature_modules = ("backbone.norms.*", "decode_head.ppm", "decode_head.fpn_bottleneck")

    def __init__(self, backbone: nn.Module, num_classes: int = 150, channels: int = 512,
                 bins: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1, auxiliary: bool = True,
                 aux_stage: int = 3, aux_channels: int = 256, aux_weight: float = 0.4, in_chans: int = 3):
        super().__init__()
        self.num_classes = check_int("UperNet", "num_classes", num_classes)
        check_int("UperNet", "channels", channels)
        bins = check_int_list("UperNet", "bins", bins, len(bins) if isinstance(bins, Sequence) else 4, per="level")
        check_probability("UperNet", "dropout", dropout)
        check_bool("UperNet", "auxiliary", auxiliary)
        in_channels = tuple(backbone.embed_dims)
        check_int("UperNet", f"aux_stage (1..{len(in_channels)})", aux_stage)
        if aux_stage > len(in_channels):
            raise ValueError(f"UperNet: aux_stage must be a stage 1..{len(in_channels)}, got {aux_stage}")
        check_int("UperNet", "aux_channels", aux_channels)
        check_positive("UperNet", "aux_weight", aux_weight)
        self.in_chans, self.aux_stage, self.aux_weight = in_chans, aux_stage, aux_weight
        self.backbone = backbone
        self.decode_head = UperNetHead(in_channels, channels, num_classes, bins, dropout)
        init_mmseg(self.decode_head)
        self.auxiliary_head = None
        if auxiliary:
            self.auxiliary_head = FCNHead(in_channels[aux_stage - 1], aux_channels, num_classes, dropout)
            init_mmseg(self.auxiliary_head)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Main logits at 1/4 (eval); ``(main, auxiliary)`` in training with the auxiliary head."""
        self.check_input(x)
        features = self.backbone(x)
        logits = self.decode_head(features)
        if self.training and self.auxiliary_head is not None:
            return logits, self.auxiliary_head(features[self.aux_stage - 1])
        return logits



def upernet_swin(
    num_classes: int = 150,
    embed_dim: int = 96,
    depths: Sequence[int] = (2, 2, 6, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    window_size: int = 7,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    drop_path_rate: float = 0.3,
    channels: int = 512,
    bins: Sequence[int] = (1, 2, 3, 6),
    dropout: float = 0.1,
    auxiliary: bool = True,
    aux_stage: int = 3,
    aux_channels: int = 256,
    aux_weight: float = 0.4,
    in_chans: int = 3,
) -> UperNet:
    """UperNet on the dense Swin backbone (:class:`segviz.models.swin.SwinBackbone`), as the Swin
    paper's ADE20K models (drop path 0.3 for Swin-T)."""
    check_int("UperNet", "num_classes", num_classes)  # before building a large backbone
    backbone = swin.SwinBackbone(in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias,
                                 drop_path_rate)
    return UperNet(backbone, num_classes, channels, bins, dropout, auxiliary, aux_stage, aux_channels, aux_weight,
                   in_chans)


# ----------------------------------------------------------------------------------------
# Variants, with the published numbers
# ----------------------------------------------------------------------------------------
PUBLISHED = {
    "upernet-swin-t": dict(
        params_m=60.0, params_hf=59_943_398, gmacs=945.0, input_size=(512, 2048), num_classes=150, miou=44.51,
        counted="backbone + UperNet head + auxiliary FCN head (the auxiliary head is used only in training)",
        source="Liu et al. 2021 (Swin Transformer), Table 3, ADE20K (FLOPs at 512x2048, as mmseg counts them); "
               "HuggingFace UperNetForSemanticSegmentation "
               "(Swin-T, 150 classes, auxiliary head) counted: 59,943,398, which includes SwinBackbone's "
               "unused final LayerNorm (1,536 params)",
    ),
}
# ----------------------------------------------------------------------------------------
# Reading checkpoints written by other code bases (the timm convention)
# ----------------------------------------------------------------------------------------
# The backbone keys (under "backbone.") are converted by Swin's own rules
# (:func:`segviz.models.swin.convert_swin_keys`: microsoft, HuggingFace 4.x / 5.x); the heads:
#
# * microsoft: Swin-Transformer-Semantic-Segmentation (mmseg 0.x): decode_head.psp_modules.{i}.1.conv/bn,
#   decode_head.bottleneck, lateral_convs, fpn_convs, fpn_bottleneck, conv_seg; auxiliary_head.convs.0, conv_seg;
# * hf4 / hf5: the same names with .batch_norm for .bn and .classifier for .conv_seg. HuggingFace's SwinBackbone
#   also holds an unused final LayerNorm (swin.layernorm, 5.x only), which is dropped.
_HEADS = [
    (r"^decode_head\.psp_modules\.(\d+)\.", r"decode_head.ppm.branches.\1."),
    (r"^decode_head\.bottleneck\.", "decode_head.ppm.bottleneck."),
    (r"\.batch_norm\.", ".bn."),
    (r"\.conv_seg\.", ".classifier."),
]


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """A UperNet + Swin state dict in any known layout -> ``model``'s layout.

    Keys that no rule understands keep their names, so the strict loader lists them; a missing
    BatchNorm ``num_batches_tracked`` counter is filled with 0.
    """
    prefix = "backbone."
    backbone = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    heads = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
    if backbone:
        backbone = swin.convert_swin_keys(backbone)
        # the classifier's final LayerNorm, which a dense backbone does not have (HF 5.x SwinBackbone keeps one)
        if not hasattr(getattr(model, "backbone", None), "norm"):
            backbone = {k: v for k, v in backbone.items() if not k.startswith("norm.")}
    sd = {prefix + k: v for k, v in backbone.items()}
    sd.update(rename_keys(heads, _HEADS))
    return fill_num_batches_tracked(sd, model)


register(
    "upernet-swin-t", upernet_swin,
    dict(num_classes=150, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
         mlp_ratio=4.0, drop_path_rate=0.3, channels=512, aux_channels=256, dropout=0.1, aux_weight=0.4),
    checkpoint_filter_fn,
    description="UperNet + Swin-T for ADE20K (Liu et al. 2021), 150 classes, auxiliary FCN head on stage 3",
    published=PUBLISHED["upernet-swin-t"],
)
register(
    "upernet-swin-nano", upernet_swin,
    dict(num_classes=6, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7,
         mlp_ratio=4.0, drop_path_rate=0.1, channels=64, aux_channels=32, dropout=0.1, aux_weight=0.4),
    checkpoint_filter_fn,
    description="a tiny UperNet + Swin for CPU notebooks (window 7, 6 Scenes classes, 256 px)",
)
