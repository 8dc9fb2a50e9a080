"""SegFormer (Xie et al., NeurIPS 2021), block by block, in the order of the paper.

    image (B, 3, H, W)
      -> MixTransformer encoder: four stages, each OverlapPatchEmbed -> MiTBlocks -> LayerNorm,
         giving maps at 1/4, 1/8, 1/16, 1/32 of the input with C1..C4 channels
      -> AllMLPDecoder: per-stage Linear to C, upsample to 1/4, concat, fuse, classify
      -> logits (B, num_classes, H/4, W/4)

There is no positional encoding anywhere, so any input size works: the 3x3 depthwise
convolution inside every Mix-FFN gives the tokens a sense of where they are.

Faithful to the official code (NVlabs/SegFormer, ``mix_transformer.py`` and
``segformer_head.py``): names, shapes, order of operations, initialisation, and the
LayerNorm epsilons (1e-6 in blocks and stage norms; the plain ``nn.LayerNorm`` default
1e-5 in the patch embeddings and the key/value reduction). Checkpoints from the
original code and from HuggingFace ``transformers`` load through
``create_model(name, weights=PATH)``; :func:`checkpoint_filter_fn` at the end of this file
converts them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segviz.nn import recording
from segviz.nn.attention import attention
from segviz.nn.checks import (
    check_bool, check_heads, check_hidden_width, check_int, check_int_list, check_positive, check_probability,
)
from segviz.nn.contract import SegmentationModel
from segviz.nn.layers import (
    ConvBNReLU, DropPath, FeaturePyramid, batch_norm_as_affine, drop_path_rates, init_linear_and_norm, map_to_tokens,
    tokens_to_map,
)
from segviz.nn.reduction import SpatialReductionAttention
from segviz.registry import register
from segviz.weights import drop_prefixes, fill_num_batches_tracked, join_tensors, rename_keys

BLOCK_EPS = 1e-6  # LayerNorms inside blocks and closing each stage (official: partial(nn.LayerNorm, eps=1e-6))
PLAIN_EPS = 1e-5  # LayerNorms the official code builds as plain nn.LayerNorm (patch embed, k/v reduction)


# ----------------------------------------------------------------------------------------
# 1. Overlapped patch merging
# ----------------------------------------------------------------------------------------
class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: a strided convolution whose kernel is larger than its
    stride, so neighbouring patches share pixels (ViT's patches do not overlap).

        tokens = LayerNorm(flatten(Conv_{K, S, P}(x)))

    Stage 1 uses K=7, S=4, P=3; stages 2-4 use K=3, S=2, P=1 (padding = K // 2).

    Shapes: x (B, C_in, H, W) -> tokens (B, h·w, D) and (h, w), with
    h = floor((H + 2P - K) / S) + 1 (= ceil(H / S) for these kernels).
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int, eps: float = PLAIN_EPS):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(map_to_tokens(x)), (h, w)


# ----------------------------------------------------------------------------------------
# 2. Efficient self-attention
# ----------------------------------------------------------------------------------------
class EfficientSelfAttention(SpatialReductionAttention):
    """Multi-head self-attention whose keys and values come from a shrunken map.

        Q = x W_q                                       (B, heads, N, d),   N = h·w
        x̂ = LayerNorm(Conv_{r, stride r}(x as map))     (B, N / r², C),     r = sr_ratio
        [K, V] = x̂ W_kv                                 (B, heads, N / r², d) each
        out = softmax(Q Kᵀ / sqrt(d)) V W_o             (B, N, C)

    ``sr_ratio`` (r) shrinks each *side* of the map, so the key sequence is r² times
    shorter. The paper's "reduction ratio R" is that sequence factor, R = r², and the
    cost drops from O(N²) to O(N² / R). Stages with ``sr_ratio == 1`` have no conv and no
    LayerNorm: they attend over all N tokens.

    Inference spatial reduction (ISR, from the EDAFormer paper): :func:`segviz.isr` can set
    a larger per-side ratio for inference only. It must be a multiple of ``sr_ratio``. As in
    the official EDAFormer code's modified MiT (``mix_transformer.py``), the learned conv and
    its LayerNorm run first, then the map is average-pooled by ``ratio // sr_ratio``, then
    the k/v Linear:

        x̂ = AvgPool_{r_isr / r}(LayerNorm(Conv_{r, stride r}(x as map)))     (r_isr: the ratio in force)

    The official code does this only in stages with ``sr_ratio > 1``. Pooling a stage with
    ``sr_ratio == 1`` (no conv, no LayerNorm: x̂ = AvgPool_{r_isr}(x)) is an *extension* of
    segviz beyond the official code. SegFormer was *not* trained with ISR (EDAFormer was),
    so expect some loss of accuracy when using it here.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True, eps: float = PLAIN_EPS):
        super().__init__(train_ratio=sr_ratio)
        check_int("EfficientSelfAttention", "dim", dim)
        check_int("EfficientSelfAttention", "num_heads", num_heads)
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.dim, self.num_heads, self.sr_ratio = dim, num_heads, sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=eps)

    def isr_check(self, ratio: int) -> None:
        super().isr_check(ratio)
        if ratio % self.sr_ratio:
            raise ValueError(
                f"{self._where()}: an inference ratio must be a multiple of the learned reduction "
                f"{self.sr_ratio} (the conv runs first, then pooling); got {ratio}"
            )

    def reduce(self, x: Tensor, hw: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """The key/value tokens: (B, N, C) -> (B, Nk, C) and their grid (kh, kw).

        conv -> LayerNorm (stages with ``sr_ratio > 1``), then ISR's extra pooling, if any.
        """
        kv, k_hw = x, tuple(hw)
        if self.sr_ratio > 1:
            m = self.sr(tokens_to_map(x, hw))
            kv, k_hw = self.norm(map_to_tokens(m)), tuple(m.shape[-2:])
        factor = self.ratio // self.sr_ratio
        if factor > 1:
            m = self.pool(tokens_to_map(kv, k_hw), factor)
            kv, k_hw = map_to_tokens(m), tuple(m.shape[-2:])
        return kv, k_hw

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        b, n, c = x.shape
        self.check_map(*hw)
        heads, d = self.num_heads, c // self.num_heads
        q = self.q(x).reshape(b, n, heads, d).transpose(1, 2)
        kv_tokens, k_hw = self.reduce(x, hw)
        k, v = self.kv(kv_tokens).reshape(b, -1, 2, heads, d).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, module=self, q_hw=tuple(hw), k_hw=k_hw)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.num_heads}, sr_ratio={self.sr_ratio}"


# ----------------------------------------------------------------------------------------
# 3. Mix-FFN
# ----------------------------------------------------------------------------------------
class MixFFN(nn.Module):
    """The feed-forward network with a 3x3 depthwise convolution between its two Linears:

        x_out = MLP(GELU(Conv3x3(MLP(x_in)))) + x_in     (the residual is added by MiTBlock)

    The zero-padded depthwise conv leaks enough position information that SegFormer needs
    no positional encoding. Shapes: (B, N, C) -> (B, N, C), hidden width C·mlp_ratio.
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        x = self.fc1(x)
        x = map_to_tokens(self.dwconv(tokens_to_map(x, hw)))
        return self.fc2(self.act(x))


# ----------------------------------------------------------------------------------------
# 4. The transformer block and the hierarchical encoder
# ----------------------------------------------------------------------------------------
class MiTBlock(nn.Module):
    """One Mix Transformer block, pre-norm:

        x = x + DropPath(EfficientSelfAttention(LN(x)))
        x = x + DropPath(MixFFN(LN(x)))

    Shapes: (B, N, C) -> (B, N, C).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        qkv_bias: bool = True,
        eps: float = BLOCK_EPS,
        reduction_eps: float = PLAIN_EPS,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, qkv_bias=qkv_bias, eps=reduction_eps)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x), hw))


class MiTStage(nn.Module):
    """One encoder stage: OverlapPatchEmbed -> ``depth`` MiTBlocks -> LayerNorm.

    (B, C_in, H, W) -> (B, C, h, w); ``capture`` records the output map as a "feature".
    """

    def __init__(self, patch_embed: OverlapPatchEmbed, blocks: Sequence[MiTBlock], dim: int, eps: float):
        super().__init__()
        self.patch_embed = patch_embed
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x, hw = self.patch_embed(x)
        for block in self.blocks:
            x = block(x, hw)
        return tokens_to_map(self.norm(x), hw)


def init_official(m: nn.Module) -> None:
    """The official encoder init: trunc-normal(0.02) Linear, unit LayerNorm, He-normal conv (fan-out)."""
    init_linear_and_norm(m)
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def check_encoder_config(owner, in_chans, embed_dims, depths, num_heads, sr_ratios, mlp_ratio, qkv_bias,
                         drop_path_rate, layer_norm_eps):
    """ValueError naming the field unless the MiT config is buildable; returns the four lists as tuples."""
    check_int(owner, "in_chans", in_chans)
    embed_dims = check_int_list(owner, "embed_dims", embed_dims, 4)
    depths = check_int_list(owner, "depths", depths, 4)
    num_heads = check_int_list(owner, "num_heads", num_heads, 4)
    sr_ratios = check_int_list(owner, "sr_ratios", sr_ratios, 4)
    check_heads(owner, embed_dims, num_heads)
    check_positive(owner, "mlp_ratio", mlp_ratio)
    check_hidden_width(owner, "mlp_ratio", mlp_ratio, embed_dims)
    check_bool(owner, "qkv_bias", qkv_bias)
    check_probability(owner, "drop_path_rate", drop_path_rate)
    if layer_norm_eps is not None:
        check_positive(owner, "layer_norm_eps (None keeps the official epsilons)", layer_norm_eps)
    return embed_dims, depths, num_heads, sr_ratios


class MixTransformer(FeaturePyramid):
    """The hierarchical encoder MiT: four stages at strides 4, 8, 16, 32.

    (B, 3, H, W) -> [(B, C1, H/4, W/4), (B, C2, H/8, W/8), (B, C3, H/16, W/16), (B, C4, H/32, W/32)]
    (sizes rounded up for inputs that are not multiples of 32).

    Args:
        layer_norm_eps: None (default) keeps the official epsilons (1e-6 in blocks and stage
            norms, 1e-5 in patch embeddings and k/v reduction). A number sets every LayerNorm
            to it; HuggingFace ``transformers`` builds all of them with 1e-5, so its
            checkpoints load with ``layer_norm_eps=1e-5`` to give identical outputs.
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (32, 64, 160, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.1,
        layer_norm_eps: float | None = None,
    ):
        super().__init__()
        embed_dims, depths, num_heads, sr_ratios = check_encoder_config(
            "MixTransformer", in_chans, embed_dims, depths, num_heads, sr_ratios, mlp_ratio, qkv_bias,
            drop_path_rate, layer_norm_eps,
        )
        block_eps = BLOCK_EPS if layer_norm_eps is None else layer_norm_eps
        plain_eps = PLAIN_EPS if layer_norm_eps is None else layer_norm_eps
        self.embed_dims = tuple(embed_dims)
        rates = drop_path_rates(drop_path_rate, list(depths))
        stages = []
        for i in range(4):
            dim = embed_dims[i]
            patch_embed = OverlapPatchEmbed(
                in_chans if i == 0 else embed_dims[i - 1], dim,
                patch_size=7 if i == 0 else 3, stride=4 if i == 0 else 2, eps=plain_eps,
            )
            blocks = [
                MiTBlock(dim, num_heads[i], sr_ratios[i], mlp_ratio, rates[i][j], qkv_bias, block_eps, plain_eps)
                for j in range(depths[i])
            ]
            for block in blocks:
                block.attn.isr_role = ("encoder", i + 1)
            stages.append(MiTStage(patch_embed, blocks, dim, block_eps))
        self.stages = nn.ModuleList(stages)
        self.apply(init_official)


# ----------------------------------------------------------------------------------------
# 5. The all-MLP decoder
# ----------------------------------------------------------------------------------------
class MLPProjection(nn.Module):
    """Decoder steps 1-2 for one stage: a Linear from C_i to C, then bilinear upsampling
    to 1/4 of the input.

        F̂_i = Upsample_{H/4 x W/4}(Linear(C_i, C)(F_i))

    (B, C_i, h_i, w_i) -> (B, C, H/4, W/4); ``capture`` records the result as a "feature".
    """

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        out = tokens_to_map(self.proj(map_to_tokens(x)), tuple(x.shape[-2:]))
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


class AllMLPDecoder(nn.Module):
    """The paper's lightweight decoder, four steps:

        F̂_i = Linear(C_i, C)(F_i)                     for i = 1..4        (1: unify channels)
        F̂_i = Upsample(H/4 x W/4)(F̂_i)                                   (2: common resolution)
        F   = Linear(4C, C)(Concat(F̂_4, F̂_3, F̂_2, F̂_1))                  (3: fuse; 1x1 conv+BN+ReLU)
        M   = Linear(C, N_cls)(Dropout(F))                                 (4: classify)

    Shapes: four maps (B, C_i, H/2^(i+1), W/2^(i+1)) -> logits (B, num_classes, H/4, W/4).
    Records: ``linear_c.{0..3}`` give the projected, upsampled maps; the decoder itself
    records the fused map F as its "feature".
    """

    def __init__(self, in_dims: Sequence[int], dim: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.linear_c = nn.ModuleList(MLPProjection(c, dim) for c in in_dims)
        self.linear_fuse = ConvBNReLU(len(in_dims) * dim, dim)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(dim, num_classes, 1)
        # mmcv's ConvModule init for the fuse conv; the Linears and the classifier keep
        # PyTorch's defaults, as in the official head.
        nn.init.kaiming_normal_(self.linear_fuse.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        size = tuple(features[0].shape[-2:])
        projected = [proj(f, size) for proj, f in zip(self.linear_c, features)]
        fused = self.linear_fuse(torch.cat(projected[::-1], dim=1))
        if recording.wants(self, "feature"):
            recording.emit(self, "feature", features=fused)
        return self.linear_pred(self.dropout(fused))


class FusedMLPDecoder(nn.Module):
    """:class:`AllMLPDecoder` rewritten for inference: the same function, with the fuse's
    1x1 convolution (and its BatchNorm) merged into each stage's Linear, *before*
    upsampling. Build it with :meth:`from_decoder` (``segviz.fuse_for_inference`` does).

    The readable decoder computes, with U the bilinear upsampling to 1/4 and the fuse's
    weight W_f (C, 4C) cut into four C x C blocks, one per stage,

        F = ReLU(BN(W_f [U(W_4 x_4 + b_4); U(W_3 x_3 + b_3); U(W_2 x_2 + b_2); U(W_1 x_1 + b_1)]))
          = ReLU(BN(Σ_i W_f,i U(W_i x_i + b_i)))                   (a block matrix times a stack)
          = ReLU(BN(Σ_i U(W_f,i W_i x_i + W_f,i b_i)))             (W_f,i and U commute, below)

    (the fuse conv has no bias: mmseg's ConvModule drops it before a norm, and HF builds it
    with ``bias=False``; one would simply join t below), and eval-mode BatchNorm is itself an
    affine map per channel, BN(z) = s ⊙ z + t with s = γ / sqrt(σ² + ε) and t = β - s ⊙ μ
    (running statistics), so it folds in as well:

        F = ReLU(Σ_i U(A_i x_i + c_i)),   A_i = diag(s) W_f,i W_i    (C x C_i)
                                          c_i = s ⊙ (W_f,i b_i)      (+ t, added to c_1 only)

    **Why U and W_f,i commute.** Write one map as a matrix X (channels x pixels). A 1x1
    convolution mixes channels with the same weights at every pixel: X -> A X. Bilinear
    upsampling mixes pixels with the same weights in every channel: X -> X Kᵀ, where row p
    of K holds the (at most four) weights of the input pixels that output pixel p
    interpolates. So A (X Kᵀ) = (A X) Kᵀ: the two products act on different sides of X.
    Biases survive too: a bias is a constant map b 1ᵀ, and U(b 1ᵀ) = b (K 1)ᵀ = b 1ᵀ because
    each output pixel is a convex combination of input pixels, its weights summing to 1.
    That holds for ``align_corners=False`` and ``True`` alike (they pick other pixels and
    weights, but each row of K still sums to 1); what matters is that the fused decoder
    upsamples with the same mode as the readable one. (A resampling that pads with zeros at
    the border, such as ``grid_sample(padding_mode="zeros")``, would break the bias step.)
    Stage 1 is already at 1/4, where U is the identity, so it is not resampled at all.

    **What it saves.** The readable decoder spends C_i·C multiply-adds per pixel of stage i
    and then 4C·C per pixel at 1/4 for the fuse; the fused one spends only C_i·C per pixel of
    stage i, at that stage's own resolution. For B0 at 512 (C = 256) the fuse was 4.3 of
    the model's 8.4 GMACs. The results agree up to float rounding (the products A_i are
    formed in float64, then cast).

    **What it gives up.** The per-stage maps F̂_i = U(W_i x_i + b_i) never exist here, so
    ``capture`` has no ``linear_c.*`` features; the fused map F is still recorded as the
    decoder's "feature". Dropout is gone and BatchNorm is frozen: the decoder refuses to be
    put in training mode (train the readable model, then fuse again).

    Shapes: as :class:`AllMLPDecoder`, four maps (B, C_i, H/2^(i+1), W/2^(i+1)) -> logits
    (B, num_classes, H/4, W/4), the same values laid out channels-last in memory (the maps
    are views of token tensors; call ``.contiguous()`` if you need the other layout).
    """

    def __init__(self, in_dims: Sequence[int], dim: int, num_classes: int):
        super().__init__()
        self.stage_proj = nn.ModuleList(nn.Linear(c, dim) for c in in_dims)  # x_i -> A_i x_i + c_i
        self.linear_pred = nn.Linear(dim, num_classes)  # the readable 1x1 conv, as a Linear on tokens
        self.train(False)

    @classmethod
    @torch.no_grad()
    def from_decoder(cls, decoder: AllMLPDecoder) -> FusedMLPDecoder:
        """The fused decoder computing what ``decoder`` computes in eval mode (same device and dtype)."""
        conv, bn = decoder.linear_fuse.conv, decoder.linear_fuse.bn
        scale, shift = batch_norm_as_affine(bn, conv.bias)  # s, t (t includes a conv bias)
        dim = conv.out_channels
        weight = conv.weight
        fused = cls([p.proj.in_features for p in decoder.linear_c], dim, decoder.linear_pred.out_channels)
        fused = fused.to(device=weight.device, dtype=weight.dtype)
        blocks = weight.double().flatten(1).split(dim, dim=1)[::-1]  # W_f,1 .. W_f,4 (concat runs stage 4 first)
        for i, (proj, w_fuse, out) in enumerate(zip(decoder.linear_c, blocks, fused.stage_proj)):
            out.weight.copy_(scale[:, None] * (w_fuse @ proj.proj.weight.double()))  # A_i
            bias = scale * (w_fuse @ proj.proj.bias.double())  # c_i
            out.bias.copy_(bias + shift if i == 0 else bias)
        fused.linear_pred.weight.copy_(decoder.linear_pred.weight.flatten(1))
        fused.linear_pred.bias.copy_(decoder.linear_pred.bias)
        return fused

    def train(self, mode: bool = True) -> FusedMLPDecoder:
        if mode:
            raise ValueError(
                "FusedMLPDecoder is for inference only (its BatchNorm is folded into fixed weights and it has "
                "no dropout); train the readable model and call segviz.fuse_for_inference again"
            )
        return super().train(False)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        size = tuple(features[0].shape[-2:])
        fused = None
        for proj, f in zip(self.stage_proj, features):
            # A_i x_i + c_i at stage i's size, as a (B, C, h, w) view of the (B, h, w, C) tokens: a true
            # channels-last map (also for B = 1), which bilinear upsampling on CPU handles without a copy
            y = proj(map_to_tokens(f)).unflatten(1, tuple(f.shape[-2:])).permute(0, 3, 1, 2)
            if tuple(y.shape[-2:]) != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)  # U, as in MLPProjection
            fused = y if fused is None else fused.add_(y)  # Σ_i, into the first stage's fresh map
        fused = F.relu(fused, inplace=True)
        if recording.wants(self, "feature"):
            recording.emit(self, "feature", features=fused)
        # the classifier on the (B, H, W, C) tokens the channels-last map is a view of
        return self.linear_pred(fused.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------
# 6. The whole model
# ----------------------------------------------------------------------------------------
class SegFormer(SegmentationModel):
    """SegFormer = MixTransformer encoder + AllMLPDecoder.

    ``forward``: (B, 3, H, W) -> logits (B, num_classes, ceil(H/4), ceil(W/4)).
    ``predict``: the same logits upsampled to (B, num_classes, H, W).

    Every config field is checked here: a bad value is a ``ValueError`` naming the field.

    Args:
        num_classes: classifier size (150 for ADE20K).
        embed_dims, depths, num_heads, sr_ratios, mlp_ratio, qkv_bias, drop_path_rate,
        layer_norm_eps: see :class:`MixTransformer`.
        decoder_dim: the decoder's C (256 for B0/B1, 768 for B2-B5).
        decoder_dropout: dropout before the classifier (0.1 officially).
    """

    # module outputs that ``segviz.capture`` records as features by default (see segviz.nn.recording)
    feature_modules = ("encoder.stages.*", "decoder.linear_c.*")

    def __init__(
        self,
        num_classes: int = 150,
        embed_dims: Sequence[int] = (32, 64, 160, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.1,
        decoder_dim: int = 256,
        decoder_dropout: float = 0.1,
        layer_norm_eps: float | None = None,
        in_chans: int = 3,
    ):
        super().__init__()
        embed_dims, *_ = check_encoder_config(
            "SegFormer", in_chans, embed_dims, depths, num_heads, sr_ratios, mlp_ratio, qkv_bias,
            drop_path_rate, layer_norm_eps,
        )
        self.num_classes = check_int("SegFormer", "num_classes", num_classes)
        check_int("SegFormer", "decoder_dim", decoder_dim)
        check_probability("SegFormer", "decoder_dropout", decoder_dropout)
        self.in_chans = in_chans
        self.encoder = MixTransformer(
            in_chans, embed_dims, depths, num_heads, sr_ratios, mlp_ratio, qkv_bias, drop_path_rate, layer_norm_eps
        )
        self.decoder = AllMLPDecoder(embed_dims, decoder_dim, num_classes, decoder_dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) float images -> logits (B, num_classes, ceil(H/4), ceil(W/4)).

        ``predict`` (from :class:`segviz.nn.contract.SegmentationModel`) upsamples them
        bilinearly to (B, num_classes, H, W)."""
        self.check_input(x)
        return self.decoder(self.encoder(x))


# ----------------------------------------------------------------------------------------
# Variants, with the paper's numbers (Xie et al. 2021, Table 1; 150-class ADE20K head)
# ----------------------------------------------------------------------------------------
_WIDE = (64, 128, 320, 512)
CONFIGS = {
    "segformer-b0": dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), decoder_dim=256),
    "segformer-b1": dict(embed_dims=_WIDE, depths=(2, 2, 2, 2), decoder_dim=256),
    "segformer-b2": dict(embed_dims=_WIDE, depths=(3, 4, 6, 3), decoder_dim=768),
    "segformer-b3": dict(embed_dims=_WIDE, depths=(3, 4, 18, 3), decoder_dim=768),
    "segformer-b4": dict(embed_dims=_WIDE, depths=(3, 8, 27, 3), decoder_dim=768),
    "segformer-b5": dict(embed_dims=_WIDE, depths=(3, 6, 40, 3), decoder_dim=768),
}
_COMMON = dict(num_classes=150, num_heads=(1, 2, 5, 8), sr_ratios=(8, 4, 2, 1), mlp_ratio=4.0, drop_path_rate=0.1)
_SOURCE = "Xie et al. 2021 (SegFormer), Table 1; ADE20K, 150-class head"
# variant: (encoder M, decoder M, total M params, GFLOPs = GMACs, at input side)
_TABLE_1 = {
    "segformer-b0": (3.4, 0.4, 3.8, 8.4, 512),
    "segformer-b1": (13.1, 0.6, 13.7, 15.9, 512),
    "segformer-b2": (24.2, 3.3, 27.5, 62.4, 512),
    "segformer-b3": (44.0, 3.3, 47.3, 79.0, 512),
    "segformer-b4": (60.8, 3.3, 64.1, 95.7, 512),
    "segformer-b5": (81.4, 3.3, 84.7, 183.3, 640),
}
PUBLISHED = {
    name: dict(encoder_params_m=enc, decoder_params_m=dec, params_m=total, gmacs=gmacs, input_size=(side, side),
               num_classes=150, source=_SOURCE)
    for name, (enc, dec, total, gmacs, side) in _TABLE_1.items()
}
PUBLISHED["segformer-b5"]["gmacs_at_512"] = 111.6


# ----------------------------------------------------------------------------------------
# Reading checkpoints written by other code bases (the timm convention)
# ----------------------------------------------------------------------------------------
# Four layouts are recognised from their keys:
#
# * segviz: our own names (encoder.stages.0.blocks.0.attn.q.weight), loaded as they are;
# * nvlabs: the official NVlabs/SegFormer (mmseg 0.x) code (backbone.block1.0.attn.q.weight,
#   attn.kv, attn.sr, decode_head.linear_c1.proj, decode_head.linear_fuse.conv/.bn,
#   decode_head.linear_pred); its decode_head.conv_seg is an unused classifier that mmseg's
#   base head always builds, and is dropped;
# * hf4: HuggingFace transformers files as hub checkpoints store them, and as save_pretrained
#   still writes them in transformers 5.x (segformer.encoder.block.0.0.attention.self.query,
#   decode_head.linear_c.0.proj, decode_head.linear_fuse, decode_head.batch_norm, .classifier);
# * hf5: the module names of transformers 5.x, what model.state_dict() gives there
#   (segformer.stages.0.blocks.0.attention.q_proj, attention.sequence_reduction.*,
#   layernorm_before/after, decode_head.linear_projections.0.proj).
#
# HuggingFace keeps separate key and value Linears where the official code (and segviz) has
# one joint kv Linear whose first C outputs are the keys and the next C the values: they are
# concatenated in that order.
#
# LayerNorm epsilon: transformers builds every SegFormer LayerNorm as a plain nn.LayerNorm
# (eps 1e-5), while the official code uses 1e-6 in blocks and stage norms. The layer_norm_eps
# of a transformers config.json (1e-6 by default) is *not* read by its modeling code, so we
# do not read it either: checkpoint_config gives layer_norm_eps=1e-5 for both HF layouts,
# which reproduces the HF model exactly.
HF_EPS = 1e-5

_NVLABS = [
    (r"^backbone\.patch_embed(\d)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.patch_embed."),
    (r"^backbone\.block(\d)\.(\d+)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.blocks.{m[2]}."),
    (r"^backbone\.norm(\d)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.norm."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^decode_head\.linear_c(\d)\.", lambda m: f"decoder.linear_c.{int(m[1]) - 1}."),
    (r"^decode_head\.", "decoder."),
]
_HF4 = [
    (r"^segformer\.encoder\.patch_embeddings\.(\d)\.layer_norm\.", r"encoder.stages.\1.patch_embed.norm."),
    (r"^segformer\.encoder\.patch_embeddings\.(\d)\.", r"encoder.stages.\1.patch_embed."),
    (r"^segformer\.encoder\.block\.(\d)\.(\d+)\.", r"encoder.stages.\1.blocks.\2."),
    (r"^segformer\.encoder\.layer_norm\.(\d)\.", r"encoder.stages.\1.norm."),
    (r"\.attention\.self\.query\.", ".attn.q."),
    (r"\.attention\.self\.key\.", ".attn.k."),
    (r"\.attention\.self\.value\.", ".attn.v."),
    (r"\.attention\.self\.sr\.", ".attn.sr."),
    (r"\.attention\.self\.layer_norm\.", ".attn.norm."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.layer_norm_1\.", ".norm1."),
    (r"\.layer_norm_2\.", ".norm2."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
]
_HF5 = [
    (r"^segformer\.stages\.(\d)\.patch_embeddings\.layer_norm\.", r"encoder.stages.\1.patch_embed.norm."),
    (r"^segformer\.stages\.(\d)\.patch_embeddings\.", r"encoder.stages.\1.patch_embed."),
    (r"^segformer\.stages\.(\d)\.layer_norm\.", r"encoder.stages.\1.norm."),
    (r"^segformer\.stages\.", "encoder.stages."),
    (r"\.attention\.q_proj\.", ".attn.q."),
    (r"\.attention\.k_proj\.", ".attn.k."),
    (r"\.attention\.v_proj\.", ".attn.v."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attn.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attn.norm."),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^decode_head\.linear_projections\.", "decode_head.linear_c."),
]
_HF_DECODER = [
    (r"^decode_head\.linear_c\.", "decoder.linear_c."),
    (r"^decode_head\.linear_fuse\.weight$", "decoder.linear_fuse.conv.weight"),
    (r"^decode_head\.batch_norm\.", "decoder.linear_fuse.bn."),
    (r"^decode_head\.classifier\.", "decoder.linear_pred."),
]
RULES = {"segviz": [], "nvlabs": _NVLABS, "hf4": _HF4 + _HF_DECODER, "hf5": _HF5 + _HF_DECODER}
_IGNORED = {"nvlabs": ("decode_head.conv_seg.",)}
_LAYOUT_PREFIXES = {
    "segviz": "encoder.stages.",
    "nvlabs": "backbone.block1.",
    "hf4": "segformer.encoder.block.",
    "hf5": "segformer.stages.",
}


def detect_layout(keys) -> str:
    """Which code base wrote a state dict with these keys: segviz, nvlabs, hf4 or hf5."""
    keys = list(keys)
    for layout, prefix in _LAYOUT_PREFIXES.items():
        if any(k.startswith(prefix) for k in keys):
            return layout
    sample = ", ".join(sorted(keys)[:5]) or "(no keys)"
    raise ValueError(
        "not a SegFormer checkpoint in a known layout (segviz, NVlabs/mmseg 0.x, transformers 4.x "
        f"or 5.x); no key starts with any of {sorted(_LAYOUT_PREFIXES.values())}; first keys: {sample}"
    )


def checkpoint_config(state_dict: dict[str, Tensor]) -> dict:
    """Config overrides a checkpoint's layout needs: ``layer_norm_eps=1e-5`` for HuggingFace files."""
    return {"layer_norm_eps": HF_EPS} if detect_layout(state_dict) in ("hf4", "hf5") else {}


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """A SegFormer state dict in any known layout -> ``model``'s layout.

    Keys that no rule understands keep their names, so the strict loader lists them; a
    missing BatchNorm ``num_batches_tracked`` counter is filled with 0.
    """
    layout = detect_layout(state_dict)
    sd = drop_prefixes(state_dict, _IGNORED.get(layout, ()))
    sd = rename_keys(sd, RULES[layout])
    if layout in ("hf4", "hf5"):
        sd = join_tensors(sd, r"(?P<prefix>.*\.attn\.)(?P<part>[kv])\.(?P<kind>weight|bias)", ("k", "v"), "kv")
    return fill_num_batches_tracked(sd, model)


for _name, _cfg in CONFIGS.items():
    register(
        _name, SegFormer, {**_COMMON, **_cfg}, checkpoint_filter_fn, checkpoint_config,
        description=f"SegFormer-{_name[-2:].upper()} (Xie et al. 2021), published config",
        published=PUBLISHED[_name],
    )
register(
    "segformer-nano",
    SegFormer,
    dict(
        num_classes=6, embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 4),
        sr_ratios=(8, 4, 2, 1), mlp_ratio=4.0, drop_path_rate=0.1, decoder_dim=64,
    ),
    checkpoint_filter_fn, checkpoint_config,
    description="a tiny SegFormer for CPU notebooks (6 Scenes classes, 256 px)",
)
