"""EDAFormer (Yu et al., ECCV 2024): "Embedding-Free Transformer with Inference Spatial
Reduction for Efficient Semantic Segmentation". Official code: hyunwoo137/EDAFormer.

The file reads top-down like the paper:

* :class:`EmbeddingFreeAttention` (EFA): attention without query/key/value projections;
* :class:`EncoderFeedForward` (the encoder's FFL; the decoder's is SegFormer's Mix-FFN) and
  :class:`EFTBlock`;
* :class:`EFTStage` and :class:`EFTEncoder`: the hierarchical Embedding-Free Transformer
  encoder, four stages at 1/4, 1/8, 1/16 and 1/32 of the input;
* :class:`DecoderStage` and :class:`AllAttentionDecoder`: EFT blocks on encoder stages 4, 3
  and 2 (the paper's {3-2-1} design), upsampling, fusion and the classifier;
* :class:`EDAFormer`: encoder + decoder; logits at 1/8 of the input.

Every EFA is a :class:`segviz.nn.SpatialReductionAttention`, so
``segviz.isr(model, encoder=..., decoder=...)`` (inference spatial reduction, the paper's
Fig. 3) can change its key/value reduction ratio at inference on the same weights.

Checkpoints in the official (mmseg) layout, and segviz's own, load through
``create_model("edaformer-t", weights=PATH)``; :func:`checkpoint_filter_fn` at the end of
this file converts them.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segviz.models.segformer import MiTStage, MixFFN, OverlapPatchEmbed, init_official
from segviz.nn import ConvBNReLU, DropPath, SpatialReductionAttention, attention, drop_path_rates
from segviz.nn import FeaturePyramid, map_to_tokens, tokens_to_map
from segviz.nn.checks import (
    check_heads, check_hidden_width, check_int, check_int_list, check_positive, check_probability,
)
from segviz.nn.contract import SegmentationModel
from segviz.registry import register
from segviz.weights import drop_prefixes, fill_num_batches_tracked, rename_keys


class EmbeddingFreeAttention(SpatialReductionAttention):
    """Embedding-free attention (EFA), the paper's Fig. 1.

    With x the (normalised) tokens of an h×w map, r the per-side reduction ratio:

        Q = x                                   (B, N, C),   N = h·w
        K = V = SR(x) = Conv1x1(AvgPool_r(x))   (B, N', C),  N' = ⌊h/r⌋·⌊w/r⌋
        EFA(x) = Linear( softmax(Q Kᵀ / sqrt(d)) V )

    split into ``heads`` heads of d = C / heads channels (consecutive channel groups).

    What "embedding-free" removes: the three token-wise Linear projections W_q, W_k, W_v of
    standard attention (3·C² weights). Queries are the input itself, keys and values are one
    and the same tensor. What it keeps: the output Linear (``proj``) and, on the key/value
    side, the 1×1 conv (``sr``, with bias) applied to the *pooled* map and shared by K and V;
    it works at the reduced resolution N', so it costs N'·C² instead of N·C².

    The decoder version (``decoder=True``) adds LayerNorm (eps 1e-5) and GELU after the
    shared conv, as in the official decode head.

    The pooling uses the ratio in force (:attr:`ratio`): the training ratio, or the one set by
    ISR (``segviz.isr``), and average pooling unless ISR asks for max. It floors (⌊h/r⌋): a
    ragged border is dropped, as by ``nn.AvgPool2d``. Ratio 1 leaves the map as is.

    Shapes: x (B, N, C) with ``hw`` = (h, w) -> (B, N, C).
    """

    def __init__(self, dim: int, heads: int, pool_ratio: int, decoder: bool = False):
        super().__init__(pool_ratio)
        if dim % heads:
            raise ValueError(f"EmbeddingFreeAttention: dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.decoder = decoder
        self.sr = nn.Conv2d(dim, dim, kernel_size=1)  # the one 1x1 conv shared by K and V
        if decoder:
            self.norm = nn.LayerNorm(dim, eps=1e-5)
            self.act = nn.GELU()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        b, n, c = x.shape
        h, w = hw
        self.check_map(h, w)
        d = c // self.heads
        q = x.reshape(b, n, self.heads, d).transpose(1, 2)  # (B, heads, N, d)
        kv_map = self.sr(self.pool(tokens_to_map(x, hw), self.ratio))  # (B, C, h', w')
        k_hw = tuple(kv_map.shape[-2:])
        kv = map_to_tokens(kv_map)  # (B, N', C)
        if self.decoder:
            kv = self.act(self.norm(kv))
        kv = kv.reshape(b, -1, self.heads, d).transpose(1, 2)  # (B, heads, N', d)
        out = attention(q, kv, kv, module=self, q_hw=(h, w), k_hw=k_hw)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, train_ratio={self.train_ratio}, decoder={self.decoder}"


class EncoderFeedForward(MixFFN):
    """The encoder's FFL: SegFormer's Mix-FFN with a ReLU after the first Linear
    (PVTv2's "linear" variant, as the official backbone builds it):

        FFL(x) = Linear(GELU(DWConv3x3(ReLU(Linear(x)))))

    The decoder's FFL is the plain :class:`~segviz.models.segformer.MixFFN` (no ReLU).
    Shapes: x (B, N, C) with ``hw`` = (h, w) -> (B, N, C).
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__(dim, hidden_dim)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        x = self.relu(self.fc1(x))
        x = map_to_tokens(self.dwconv(tokens_to_map(x, hw)))
        return self.fc2(self.act(x))


class EFTBlock(nn.Module):
    """Embedding-Free Transformer block, pre-norm (paper Fig. 2b):

        x = x + DropPath(EFA(LN(x)))
        x = x + DropPath(FFL(LN(x)))

    LayerNorm eps is 1e-6 in the encoder and 1e-5 (PyTorch's default) in the decoder, as in
    the official code. Shapes: (B, N, C) with ``hw`` -> (B, N, C).
    """

    def __init__(self, dim: int, heads: int, pool_ratio: int, mlp_ratio: float,
                 drop_path: float = 0.0, decoder: bool = False):
        super().__init__()
        eps = 1e-5 if decoder else 1e-6
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EmbeddingFreeAttention(dim, heads, pool_ratio, decoder=decoder)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = (MixFFN if decoder else EncoderFeedForward)(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x), hw))


def _set_role(blocks: nn.ModuleList, group: str, stage: int) -> None:
    for block in blocks:
        block.attn.isr_role = (group, stage)


class EFTStage(MiTStage):
    """One encoder stage: overlapping patch embedding, EFT blocks, LayerNorm (eps 1e-6).
    It runs exactly like SegFormer's :class:`~segviz.models.segformer.MiTStage`, whose
    forward it inherits; only the blocks differ.

    (B, C_in, H, W) -> (B, C, H / stride, W / stride); ``capture`` records its output as a "feature".
    """

    def __init__(self, stage: int, in_chans: int, dim: int, heads: int, depth: int, pool_ratio: int,
                 mlp_ratio: float, drop_paths: Sequence[float]):
        patch, stride = (7, 4) if stage == 1 else (3, 2)
        blocks = [EFTBlock(dim, heads, pool_ratio, mlp_ratio, drop_path=p) for p in drop_paths[:depth]]
        super().__init__(OverlapPatchEmbed(in_chans, dim, patch, stride), blocks, dim, eps=1e-6)
        self.stage = stage
        _set_role(self.blocks, "encoder", stage)


class EFTEncoder(FeaturePyramid):
    """The Embedding-Free Transformer encoder: four stages at strides 4, 8, 16, 32.

    (B, 3, H, W) -> [ (B, C_i, H / 2^(i+1), W / 2^(i+1)) for i = 1..4 ].
    """

    def __init__(self, embed_dims: Sequence[int], num_heads: Sequence[int], depths: Sequence[int],
                 pool_ratios: Sequence[int], mlp_ratio: float, drop_path_rate: float = 0.0, in_chans: int = 3):
        super().__init__()
        rates = drop_path_rates(drop_path_rate, list(depths))
        self.stages = nn.ModuleList(
            EFTStage(i + 1, in_chans if i == 0 else embed_dims[i - 1], embed_dims[i], num_heads[i],
                     depths[i], pool_ratios[i], mlp_ratio, rates[i])
            for i in range(4)
        )


class DecoderStage(nn.Module):
    """EFT blocks (decoder version) on one encoder stage's map, at its own resolution.

    ``level`` is the encoder stage it reads (2, 3 or 4). (B, C, h, w) -> (B, C, h, w);
    ``capture`` records its output as a "feature".
    """

    def __init__(self, level: int, dim: int, heads: int, depth: int, pool_ratio: int,
                 mlp_ratio: float, drop_path: float):
        super().__init__()
        self.level = level
        self.blocks = nn.ModuleList(
            EFTBlock(dim, heads, pool_ratio, mlp_ratio, drop_path=drop_path, decoder=True) for _ in range(depth)
        )
        _set_role(self.blocks, "decoder", level)

    def forward(self, x: Tensor) -> Tensor:
        hw = tuple(x.shape[-2:])
        tokens = map_to_tokens(x)
        for block in self.blocks:
            tokens = block(tokens, hw)
        return tokens_to_map(tokens, hw)


class AllAttentionDecoder(nn.Module):
    """The all-attention decoder (paper Fig. 2a).

    Encoder stages 2, 3, 4 (strides 8, 16, 32) each pass through their own EFT blocks
    ({3-2-1} by default: more global reasoning on the coarser, more semantic maps), then

        F = Conv1x1-BN-ReLU( [ up(s4), up(s3), s2 ] )     (concatenated on channels, s4 first)
        logits = Conv1x1( Dropout(F) )

    where up(·) is bilinear resizing to the stride-8 size.

    Args:
        in_dims: channels of encoder stages 2, 3, 4.
        heads: heads for stages 2, 3, 4.
        depths: EFT blocks per stage, deepest first (stages 4, 3, 2), as the paper writes
            {3-2-1}; {2-2-2}, {1-2-3} and {1-4-1} are its alternatives.
        pool_ratios: training key/value reduction for stages 2, 3, 4 (official: 4, 2, 1).

    (features of stages 1..4) -> (B, num_classes, H/8, W/8)
    """

    def __init__(self, in_dims: Sequence[int], heads: Sequence[int], depths: Sequence[int],
                 pool_ratios: Sequence[int], mlp_ratio: float, embed_dim: int, num_classes: int,
                 dropout: float = 0.1, drop_path: float = 0.1):
        super().__init__()
        c2, c3, c4 = in_dims
        self.stage4 = DecoderStage(4, c4, heads[2], depths[0], pool_ratios[2], mlp_ratio, drop_path)
        self.stage3 = DecoderStage(3, c3, heads[1], depths[1], pool_ratios[1], mlp_ratio, drop_path)
        self.stage2 = DecoderStage(2, c2, heads[0], depths[2], pool_ratios[0], mlp_ratio, drop_path)
        self.fuse = ConvBNReLU(c2 + c3 + c4, embed_dim)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        _, c2, c3, c4 = features
        s2 = self.stage2(c2)
        size = s2.shape[-2:]
        s4 = F.interpolate(self.stage4(c4), size=size, mode="bilinear", align_corners=False)
        s3 = F.interpolate(self.stage3(c3), size=size, mode="bilinear", align_corners=False)
        x = self.fuse(torch.cat([s4, s3, s2], dim=1))
        return self.classifier(self.dropout(x))


def check_config(num_classes, embed_dims, num_heads, depths, mlp_ratio, pool_ratios, decoder_depths,
                 decoder_pool_ratios, decoder_mlp_ratio, decoder_dim, drop_path_rate, decoder_drop_path,
                 dropout, in_chans) -> None:
    """ValueError naming the field unless the EDAFormer config is buildable."""
    owner = "EDAFormer"
    check_int(owner, "num_classes", num_classes)
    check_int(owner, "in_chans", in_chans)
    embed_dims = check_int_list(owner, "embed_dims", embed_dims, 4)
    num_heads = check_int_list(owner, "num_heads", num_heads, 4)
    check_int_list(owner, "depths", depths, 4)
    check_int_list(owner, "pool_ratios", pool_ratios, 4)
    check_int_list(owner, "decoder_depths", decoder_depths, 3, per="decoder stage (4, 3, 2)")
    check_int_list(owner, "decoder_pool_ratios", decoder_pool_ratios, 3, per="decoder stage (2, 3, 4)")
    check_heads(owner, embed_dims, num_heads)
    check_positive(owner, "mlp_ratio", mlp_ratio)
    check_hidden_width(owner, "mlp_ratio", mlp_ratio, embed_dims)
    check_positive(owner, "decoder_mlp_ratio", decoder_mlp_ratio)
    check_hidden_width(owner, "decoder_mlp_ratio", decoder_mlp_ratio, embed_dims[1:])
    check_int(owner, "decoder_dim", decoder_dim)
    check_probability(owner, "drop_path_rate", drop_path_rate)
    check_probability(owner, "decoder_drop_path", decoder_drop_path)
    check_probability(owner, "dropout", dropout)


class EDAFormer(SegmentationModel):
    """EDAFormer: EFT encoder + all-attention decoder.

    ``forward``: (B, 3, H, W) -> logits (B, K, H/8, W/8) (what the official head returns).
    ``predict``: the same logits upsampled bilinearly to (B, K, H, W).

    Args:
        num_classes: classifier size K.
        embed_dims, num_heads, depths: per encoder stage.
        mlp_ratio: encoder FFL hidden size = int(C · mlp_ratio) (T: 3.8, B: 4).
        pool_ratios: training key/value reduction per encoder stage (official [8, 4, 2, 1]).
        decoder_depths: EFT blocks on encoder stages 4, 3, 2 (deepest first, the paper's {3-2-1}).
        decoder_pool_ratios: training reduction for decoder stages 2, 3, 4 (official [4, 2, 1]).
        decoder_mlp_ratio: decoder FFL ratio (T: 2, B: 1).
        decoder_dim: channels after fusion (T: 128, B: 768).
        drop_path_rate: stochastic depth over the encoder blocks, rising linearly from 0.
        decoder_drop_path: stochastic depth of every decoder block (official 0.1).
        dropout: before the classifier (official 0.1).
        in_chans: input channels (3).

    Every config field is checked here: a bad value is a ``ValueError`` naming the field.

    The decoder stage reading encoder stage s uses that stage's head count (for the official
    T and B configs this is the 8 / 4 / 2 heads the official head hard-codes).
    """

    # module outputs that ``segviz.capture`` records as features by default (see segviz.nn.recording)
    feature_modules = ("encoder.stages.*", "decoder.stage*")

    def __init__(self, num_classes: int = 150, embed_dims=(32, 64, 128, 256), num_heads=(1, 2, 4, 8),
                 depths=(2, 2, 10, 2), mlp_ratio: float = 3.8, pool_ratios=(8, 4, 2, 1),
                 decoder_depths=(3, 2, 1), decoder_pool_ratios=(4, 2, 1), decoder_mlp_ratio: float = 2.0,
                 decoder_dim: int = 128, drop_path_rate: float = 0.1, decoder_drop_path: float = 0.1,
                 dropout: float = 0.1, in_chans: int = 3):
        super().__init__()
        check_config(num_classes, embed_dims, num_heads, depths, mlp_ratio, pool_ratios, decoder_depths,
                     decoder_pool_ratios, decoder_mlp_ratio, decoder_dim, drop_path_rate, decoder_drop_path,
                     dropout, in_chans)
        self.num_classes, self.in_chans = num_classes, in_chans
        self.encoder = EFTEncoder(embed_dims, num_heads, depths, pool_ratios, mlp_ratio, drop_path_rate, in_chans)
        self.decoder = AllAttentionDecoder(
            embed_dims[1:], num_heads[1:], decoder_depths, decoder_pool_ratios, decoder_mlp_ratio,
            decoder_dim, num_classes, dropout=dropout, drop_path=decoder_drop_path,
        )
        # the official initialisation (the same as SegFormer's); the classifier keeps PyTorch's
        self.encoder.apply(init_official)
        for stage in (self.decoder.stage4, self.decoder.stage3, self.decoder.stage2, self.decoder.fuse):
            stage.apply(init_official)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) float images -> logits (B, num_classes, H/8, W/8)."""
        self.check_input(x)
        return self.decoder(self.encoder(x))


# ----------------------------------------------------------------------------------------
# Variants, with the official code's numbers
# ----------------------------------------------------------------------------------------
_COMMON = dict(num_heads=(1, 2, 4, 8), pool_ratios=(8, 4, 2, 1), decoder_depths=(3, 2, 1),
               decoder_pool_ratios=(4, 2, 1))
CONFIGS = {
    "edaformer-t": dict(num_classes=150, embed_dims=(32, 64, 128, 256), depths=(2, 2, 10, 2), mlp_ratio=3.8,
                        decoder_mlp_ratio=2.0, decoder_dim=128, **_COMMON),
    "edaformer-b": dict(num_classes=150, embed_dims=(64, 128, 256, 512), depths=(3, 3, 22, 3), mlp_ratio=4.0,
                        decoder_mlp_ratio=1.0, decoder_dim=768, **_COMMON),
    "edaformer-nano": dict(num_classes=6, embed_dims=(16, 32, 64, 128), depths=(1, 1, 2, 1), mlp_ratio=4.0,
                           decoder_mlp_ratio=2.0, decoder_dim=64, drop_path_rate=0.0, **_COMMON),
}
# From the official code with random weights (the paper's tables could not be read here):
# parameters counted, GMACs ("GFLOPs") from its get_flops.py (mmcv's counter, which also counts
# conv biases, ReLU and pooling) and, as *_flop_counter, from FlopCounterMode (matmuls and
# convolutions only, what segviz.flops counts). ISR settings in segviz's order (decoder stages
# 2, 3, 4); the official code's presets encoder "2211" / decoder "222" are the first one.
_SOURCE = ("official code hyunwoo137/EDAFormer (ECCV 2024) with random weights: parameters counted, "
           "GFLOPs from its get_flops.py (mmcv counter); ADE20K config, 150 classes, 512x512")
PUBLISHED = {
    "edaformer-t": dict(
        params=4_929_914, params_official=4_949_264, params_m=4.9, gmacs=5.62, gmacs_flop_counter=5.59,
        input_size=(512, 512), num_classes=150,
        isr=(dict(encoder=(16, 8, 2, 1), decoder=(8, 4, 2), gmacs=4.70, gmacs_flop_counter=4.67),
             dict(encoder=(16, 8, 4, 2), decoder=(8, 4, 2), gmacs=4.09, gmacs_flop_counter=4.05)),
        cityscapes=dict(input_size=(1024, 2048), num_classes=19, gmacs=151.5,
                        isr=(dict(encoder=(16, 8, 2, 1), decoder=(8, 4, 2), gmacs=94.8),
                             dict(encoder=(16, 8, 4, 2), decoder=(8, 4, 2), gmacs=58.9))),
        source=_SOURCE,
    ),
    "edaformer-b": dict(
        params=29_438_166, params_official=29_457_516, params_m=29.4, gmacs=31.93, gmacs_flop_counter=31.82,
        input_size=(512, 512), num_classes=150,
        isr=(dict(encoder=(16, 8, 2, 1), decoder=(8, 4, 2), gmacs=29.37, gmacs_flop_counter=29.26),
             dict(encoder=(16, 8, 4, 2), decoder=(8, 4, 2), gmacs=26.58, gmacs_flop_counter=26.47)),
        source=_SOURCE,
    ),
}
# (params_official includes the official model's unused 19,350-parameter decode_head.conv_seg.)


# ----------------------------------------------------------------------------------------
# Reading checkpoints: the official (mmseg) layout and segviz's own
# ----------------------------------------------------------------------------------------
# A checkpoint file holds {"state_dict": {...}} or the state dict itself. Official keys:
#
#   official (mmseg)                                          segviz
#   backbone.patch_embed{s}.{proj,norm}.*                     encoder.stages.{s-1}.patch_embed.*
#   backbone.block{s}.{i}.{norm1,norm2,attn.sr,attn.proj}.*   encoder.stages.{s-1}.blocks.{i}.*
#   backbone.block{s}.{i}.mlp.{fc1,fc2}.*                     encoder.stages.{s-1}.blocks.{i}.mlp.*
#   backbone.block{s}.{i}.mlp.dwconv.dwconv.*                 encoder.stages.{s-1}.blocks.{i}.mlp.dwconv.*
#   backbone.norm{s}.*                                        encoder.stages.{s-1}.norm.*
#   decode_head.attn4 / attn44 / attn444.*                    decoder.stage4.blocks.{0,1,2}.*
#   decode_head.attn3 / attn33.*, decode_head.attn2.*         decoder.stage3.blocks.*, decoder.stage2.blocks.*
#   decode_head.linear_fuse.{conv,bn}.*                       decoder.fuse.{conv,bn}.*
#   decode_head.linear_pred.*                                 decoder.classifier.*
#   decode_head.conv_seg.*                                    (unused by the official head; dropped)
#
# (The official head names its j-th block on stage s by repeating the digit: attn4, attn44, ...)
OFFICIAL_RULES = [
    (r"^backbone\.patch_embed(\d)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.patch_embed."),
    (r"^backbone\.block(\d)\.(\d+)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.blocks.{m[2]}."),
    (r"^backbone\.norm(\d)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.norm."),
    (r"^decode_head\.attn((\d)\2*)\.", lambda m: f"decoder.stage{m[2]}.blocks.{len(m[1]) - 1}."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^decode_head\.linear_fuse\.", "decoder.fuse."),
    (r"^decode_head\.linear_pred\.", "decoder.classifier."),
]
_IGNORED = ("decode_head.conv_seg.",)


def to_official(key: str) -> str:
    """A segviz EDAFormer state-dict key in the official layout (the inverse of OFFICIAL_RULES)."""
    if m := re.fullmatch(r"encoder\.stages\.(\d)\.patch_embed\.(.+)", key):
        return f"backbone.patch_embed{int(m[1]) + 1}.{m[2]}"
    if m := re.fullmatch(r"encoder\.stages\.(\d)\.blocks\.(\d+)\.(.+)", key):
        return f"backbone.block{int(m[1]) + 1}.{m[2]}.{_official_dwconv(m[3])}"
    if m := re.fullmatch(r"encoder\.stages\.(\d)\.norm\.(.+)", key):
        return f"backbone.norm{int(m[1]) + 1}.{m[2]}"
    if m := re.fullmatch(r"decoder\.stage(\d)\.blocks\.(\d+)\.(.+)", key):
        return f"decode_head.attn{m[1] * (int(m[2]) + 1)}.{_official_dwconv(m[3])}"
    if m := re.fullmatch(r"decoder\.fuse\.(.+)", key):
        return f"decode_head.linear_fuse.{m[1]}"
    if m := re.fullmatch(r"decoder\.classifier\.(.+)", key):
        return f"decode_head.linear_pred.{m[1]}"
    raise ValueError(f"not an EDAFormer key: {key!r}")


def _official_dwconv(rest: str) -> str:
    return "mlp.dwconv.dwconv." + rest[len("mlp.dwconv."):] if rest.startswith("mlp.dwconv.") else rest


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """An EDAFormer state dict, official (mmseg) or segviz layout -> ``model``'s layout.

    Official files are checked here, so that errors use the official names: every missing
    and unexpected key is listed, and a classifier of another size says which
    ``num_classes`` to pass. Missing BatchNorm ``num_batches_tracked`` counters are filled
    with 0. segviz files are left to the strict loader.
    """
    if not any(k.startswith(("backbone.", "decode_head.")) for k in state_dict):
        if not any(k.startswith(("encoder.stages.", "decoder.")) for k in state_dict):
            sample = ", ".join(sorted(state_dict)[:5]) or "(no keys)"
            raise ValueError("not an EDAFormer checkpoint in a known layout (segviz, or the official "
                             f"mmseg layout with backbone.* / decode_head.* keys); first keys: {sample}")
        return fill_num_batches_tracked(state_dict, model)
    given = drop_prefixes(state_dict, _IGNORED)
    converted = rename_keys(given, OFFICIAL_RULES)
    own = model.state_dict()
    missing = sorted(to_official(k) for k in own if k not in converted and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k, new in zip(given, converted) if new not in own)
    if missing or unexpected:
        lines = ["not an official EDAFormer checkpoint for this configuration:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        raise ValueError("\n".join(lines))
    classes, wanted = converted["decoder.classifier.weight"].shape[0], own["decoder.classifier.weight"].shape[0]
    if classes != wanted:
        raise ValueError(f"the checkpoint has a {classes}-class classifier but the model is built for "
                         f"{wanted} classes; pass num_classes={classes}")
    return fill_num_batches_tracked(converted, model)


_DESCRIPTIONS = {
    "edaformer-t": "EDAFormer-T (ADE20K config): EFT-T encoder + {3-2-1} all-attention decoder",
    "edaformer-b": "EDAFormer-B (ADE20K config): EFT-B encoder + {3-2-1} all-attention decoder",
    "edaformer-nano": "tiny EDAFormer for CPU notebooks (6 Scenes classes, 256 px)",
}
for _name, _cfg in CONFIGS.items():
    register(_name, EDAFormer, _cfg, checkpoint_filter_fn, description=_DESCRIPTIONS[_name],
             published=PUBLISHED.get(_name))
