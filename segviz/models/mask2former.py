"""Mask2Former (Cheng et al., CVPR 2022), block by block, in the order a reader meets them.

Segmentation as *set prediction*: N object queries each predict one (class, mask) pair; a
semantic map is their combination. For an image (B, 3, H, W):

    backbone (Swin)          -> res2 .. res5 at strides 4, 8, 16, 32
    pixel decoder            -> 6 multi-scale deformable-attention encoder layers over
                                res5, res4, res3 (1/32, 1/16, 1/8), then an FPN step to 1/4
                                with res2: the per-pixel embeddings E (B, C_E, H/4, W/4)
    transformer decoder      -> 9 layers, round-robin over the 1/32, 1/16, 1/8 maps; each
                                layer: masked cross-attention -> self-attention -> FFN
    prediction heads         -> per query: class logits (K + 1, the last is "no object") and
                                mask logits  M_q = MLP(q) · E   (B, N, H/4, W/4)

Masked attention (eq. 2 of the paper) lets query q attend only inside the foreground of the
mask it predicted one layer earlier,

    X_l = softmax(M_{l-1} + Q_l K_lᵀ) V_l + X_{l-1},   M_{l-1}(x, y) = 0 if σ(mask_{l-1}(x, y)) ≥ 0.5 else -∞

(the mask resized to the level the layer attends to; a query whose mask is empty everywhere
attends everywhere). A prediction is made from the learnable queries before the first layer
and after every layer, and every one of them is supervised (deep supervision).

Training (:meth:`Mask2Former.loss`): each image's ground-truth segments are matched one-to-one
to the queries by the Hungarian algorithm on the cost

    C = 2 · (-p_q(c_t)) + 5 · BCE(m_q, m_t) + 5 · Dice(m_q, m_t)

with the mask terms on K = 12544 points sampled uniformly; then cross-entropy on the classes
(the unmatched queries' target is "no object", weighted 0.1), and BCE and Dice on points chosen
by importance sampling (3K random candidates, the 0.75·K most uncertain, |logit| smallest,
plus 0.25·K random ones). For semantic segmentation the segments are the classes present in
the label map (one binary mask per class), as the paper trains on ADE20K.

Semantic inference (:meth:`Mask2Former.predict`): Σ_q softmax(class_q)[:K] · σ(mask_q) per
class, the masks upsampled to the input size first.

The reference is the official code (facebookresearch/Mask2Former: ``MSDeformAttnPixelDecoder``,
``MultiScaleMaskedTransformerDecoder``, ``SetCriterion``, ``HungarianMatcher``) and HuggingFace
``Mask2FormerForUniversalSegmentation``, whose checkpoints load through
``create_model(name, weights=PATH)`` (:func:`checkpoint_filter_fn` at the end). Dropout is
0 in the official configs and is left out.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from segviz.models import resnet, swin
from segviz.nn.attention import attention
from segviz.nn.checks import check_int, check_positive
from segviz.nn.contract import SegmentationModel
from segviz.nn.deformable import MSDeformAttn, reference_points
from segviz.nn.position import sine_position_encoding
from segviz.registry import register
from segviz.weights import rename_keys

LEVELS = 3  # the pixel decoder's deformable encoder and the transformer decoder use res5, res4, res3


def c2_xavier_fill(module: nn.Module) -> None:
    """detectron2's ``c2_xavier_fill`` (Caffe2's "XavierFill"): kaiming-uniform with a = 1,
    i.e. U(±sqrt(3 / fan_in)), zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------
# 1. The pixel decoder: multi-scale deformable attention over res5..res3, then FPN to 1/4
# ----------------------------------------------------------------------------------------
class DeformableEncoderLayer(nn.Module):
    """One encoder layer of the pixel decoder (Deformable DETR's encoder layer, post-norm):

        x = LN(x + MSDeformAttn(x + pos, reference points = pixel centres, values = x))
        x = LN(x + W_2 ReLU(W_1 x))                                         (FFN 256 -> 1024 -> 256)

    Every pixel of every level is a query; it samples ``points`` points per head on each of the
    three levels around its own position. Shapes: (B, S, C) -> (B, S, C), S = Σ h_l·w_l.
    Its :class:`~segviz.nn.recording.SamplingRecord` has all S queries, the 1/32 level's pixels
    first (``q_hw`` is that level's grid, so a query given as (y, x) is one of its pixels), then
    the 1/16 and 1/8 levels' pixels by index.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, points: int, levels: int = LEVELS):
        super().__init__()
        self.self_attn = MSDeformAttn(dim, heads, levels, points)
        self.norm1 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor, ref: Tensor, shapes, q_hw=None) -> Tensor:
        x = self.norm1(x + self.self_attn(x, ref, x, shapes, query_pos=pos, q_hw=q_hw))
        return self.norm2(x + self.fc2(F.relu(self.fc1(x))))


class PixelDecoder(nn.Module):
    """``MSDeformAttnPixelDecoder``: from the backbone's res2..res5 to the mask features at 1/4
    and the three maps the transformer decoder attends to.

        s_l   = GN(Conv1x1(res_l)) for res5, res4, res3                     (C channels each)
        tokens = [s_5; s_4; s_3] flattened, + sine position + level embedding (as the position)
        tokens -> 6 x DeformableEncoderLayer                               -> m_5, m_4, m_3
        p_2   = ReLU(GN(Conv3x3(GN(Conv1x1(res2)) + up(m_3))))             (FPN step to 1/4)
        E     = Conv1x1(p_2)                                               (the mask features)

    Returns (E (B, C_E, H/4, W/4), [m_5, m_4, m_3]) with m_l (B, C, h_l, w_l).
    Initialisation as the official code: xavier-uniform for every matrix of the encoder and the
    input projections, the deformable attention's own init (:class:`MSDeformAttn`), N(0, 1)
    level embeddings, ``c2_xavier_fill`` for the FPN convs and the mask-feature conv.
    """

    def __init__(self, in_channels: Sequence[int], dim: int = 256, mask_dim: int = 256, heads: int = 8,
                 ffn_dim: int = 1024, layers: int = 6, points: int = 4, groups: int = 32):
        super().__init__()
        self.dim = dim
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, dim, 1), nn.GroupNorm(groups, dim)) for c in list(in_channels)[::-1][:LEVELS]
        )
        self.level_embed = nn.Parameter(torch.empty(LEVELS, dim))
        self.encoder = nn.ModuleList(DeformableEncoderLayer(dim, heads, ffn_dim, points) for _ in range(layers))
        self.lateral = nn.Sequential(nn.Conv2d(in_channels[0], dim, 1, bias=False), nn.GroupNorm(groups, dim))
        self.output = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.GroupNorm(groups, dim), nn.ReLU())
        self.mask_features = nn.Conv2d(dim, mask_dim, 1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)
        for p in self.encoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.encoder.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)
        for conv in (self.lateral[0], self.output[0], self.mask_features):
            c2_xavier_fill(conv)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        b = features[0].shape[0]
        maps = [proj(f) for proj, f in zip(self.input_proj, list(features)[::-1][:LEVELS])]  # res5, res4, res3
        shapes = [tuple(m.shape[-2:]) for m in maps]
        tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)
        pos = torch.cat([
            sine_position_encoding(h, w, self.dim, device=tokens.device, dtype=tokens.dtype).flatten(2).transpose(1, 2)
            + self.level_embed[i]
            for i, (h, w) in enumerate(shapes)
        ], dim=1)
        ref = reference_points(shapes, device=tokens.device, dtype=tokens.dtype)[None]  # (1, S, 2)
        for layer in self.encoder:
            tokens = layer(tokens, pos, ref, shapes, q_hw=shapes[0])
        out = [t.transpose(1, 2).reshape(b, self.dim, h, w)
               for t, (h, w) in zip(tokens.split([h * w for h, w in shapes], dim=1), shapes)]
        lateral = self.lateral(features[0])
        fpn = self.output(lateral + F.interpolate(out[-1], size=lateral.shape[-2:], mode="bilinear",
                                                  align_corners=False))
        return self.mask_features(fpn), out


# ----------------------------------------------------------------------------------------
# 2. Attention of object queries (masked cross-attention and self-attention)
# ----------------------------------------------------------------------------------------
class QueryAttention(nn.Module):
    """Multi-head attention of the object queries, DETR style: the positional embeddings are
    added to queries and keys, not to values,

        out = W_o · Attention((x + p_x) W_q, (y + p_y) W_k, y W_v)

    Self-attention when y is x (query embeddings on both sides); masked cross-attention when y
    are the pixels of a feature map (sine positions) and ``mask`` says, per query, which pixels
    are blocked. Both go through the one attention kernel (:func:`segviz.nn.attention`), which
    records an :class:`~segviz.nn.recording.AttentionRecord` (self) or a
    :class:`~segviz.nn.recording.MaskedAttentionRecord` (cross, with the mask and the pixel grid).

    Shapes: x (B, N, C), y (B, M, C), mask (B, N, M) boolean (True = blocked) -> (B, N, C).
    """

    def __init__(self, dim: int, heads: int, masked: bool = False):
        super().__init__()
        self.heads, self.masked = heads, masked
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``nn.MultiheadAttention``'s init after the official layers' xavier pass: one
        xavier-uniform matrix for the joined [W_q; W_k; W_v] (3C x C), zero in-projection and
        output biases, xavier-uniform output weight."""
        dim = self.q.weight.shape[1]
        joined = torch.empty(3 * dim, dim, device=self.q.weight.device, dtype=self.q.weight.dtype)
        nn.init.xavier_uniform_(joined)
        for lin, part in zip((self.q, self.k, self.v), joined.chunk(3)):
            lin.weight.copy_(part)
            nn.init.zeros_(lin.bias)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, x_pos: Tensor, y: Tensor | None = None, y_pos: Tensor | None = None,
                mask: Tensor | None = None, k_hw: tuple[int, int] | None = None) -> Tensor:
        if y is None:
            y, y_pos = x, x_pos
        b, n, c = x.shape
        m, heads = y.shape[1], self.heads
        q = self.q(x + x_pos).view(b, n, heads, c // heads).transpose(1, 2)
        k = self.k(y + y_pos).view(b, m, heads, c // heads).transpose(1, 2)
        v = self.v(y).view(b, m, heads, c // heads).transpose(1, 2)
        if self.masked:
            blocked = mask[:, None]  # (B, 1, N, M), the same for every head
            bias = torch.zeros(blocked.shape, dtype=q.dtype, device=q.device).masked_fill(blocked, float("-inf"))
            out = attention(q, k, v, bias=bias, module=self, kind="masked_attention", mask=blocked, k_hw=k_hw)
        else:
            out = attention(q, k, v, module=self)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MaskedDecoderLayer(nn.Module):
    """One transformer-decoder layer, in the paper's order (post-norm):

        X = LN(X + MaskedCrossAttention(X + P, pixels + pos, pixels, mask))
        X = LN(X + SelfAttention(X + P, X + P, X))
        X = LN(X + W_2 ReLU(W_1 X))                                          (FFN 256 -> 2048 -> 256)

    Cross-attention comes first because the learnable queries hold no image content yet: a
    self-attention on them would only mix constants. Shapes: (B, N, C) -> (B, N, C).
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int):
        super().__init__()
        self.cross_attn = QueryAttention(dim, heads, masked=True)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = QueryAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.norm3 = nn.LayerNorm(dim)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official layers' init: xavier-uniform on every matrix (the attention in-projection
        as one 3C x C matrix, zero attention biases); the FFN keeps nn.Linear's default biases."""
        self.cross_attn.reset_parameters()
        self.self_attn.reset_parameters()
        nn.init.xavier_uniform_(self.fc1.weight)
        nn.init.xavier_uniform_(self.fc2.weight)

    def forward(self, x: Tensor, query_pos: Tensor, pixels: Tensor, pixel_pos: Tensor, mask: Tensor,
                k_hw: tuple[int, int]) -> Tensor:
        x = self.norm1(x + self.cross_attn(x, query_pos, pixels, pixel_pos, mask=mask, k_hw=k_hw))
        x = self.norm2(x + self.self_attn(x, query_pos))
        return self.norm3(x + self.fc2(F.relu(self.fc1(x))))


class MLP(nn.Module):
    """Linear -> ReLU -> ... -> Linear (``layers`` Linears, no activation after the last)."""

    def __init__(self, dim: int, hidden: int, out: int, layers: int = 3):
        super().__init__()
        dims = [dim] + [hidden] * (layers - 1) + [out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class PredictionHeads(nn.Module):
    """The heads shared by every decoder layer, on LN(X):

        class logits = Linear(C, K + 1)(LN(X))                     (B, N, K + 1)
        mask logits  = MLP_3(LN(X)) · E                            (B, N, H/4, W/4)
        attention mask for the next layer = σ(resize(mask logits, next level)) < 0.5

    Called once before the first layer and once after each; ``segviz.capture`` records every
    call's output (a :class:`~segviz.nn.recording.FeatureRecord` holding the three tensors), so
    the intermediate mask predictions can be watched sharpening layer by layer.
    Returns (class logits, mask logits, attention mask (B, N, h·w), True = blocked).
    """

    def __init__(self, dim: int, mask_dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.class_embed = nn.Linear(dim, num_classes + 1)
        self.mask_embed = MLP(dim, dim, mask_dim, 3)

    def forward(self, x: Tensor, mask_features: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        x = self.norm(x)
        classes = self.class_embed(x)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(x), mask_features)
        resized = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        blocked = (resized.sigmoid().flatten(2) < 0.5).detach()
        return classes, masks, blocked


# ----------------------------------------------------------------------------------------
# 3. The transformer decoder with its prediction heads
# ----------------------------------------------------------------------------------------
class MaskedTransformerDecoder(nn.Module):
    """``MultiScaleMaskedTransformerDecoder``: N learnable queries (features X_0 and positional
    embeddings P), refined by ``layers`` :class:`MaskedDecoderLayer` s; layer i attends to level
    i mod 3 of [m_5, m_4, m_3] (1/32, 1/16, 1/8), with the mask predicted before it.

    The :class:`PredictionHeads` (shared by all layers) predict classes, masks and the next
    layer's attention mask.

    Returns the ``layers + 1`` predictions [(class logits, mask logits)], the first from X_0.
    """

    def __init__(self, num_classes: int, in_dim: int = 256, dim: int = 256, mask_dim: int = 256, heads: int = 8,
                 ffn_dim: int = 2048, layers: int = 9, queries: int = 100):
        super().__init__()
        self.dim, self.num_heads = dim, heads
        self.query_feat = nn.Embedding(queries, dim)
        self.query_embed = nn.Embedding(queries, dim)
        self.level_embed = nn.Embedding(LEVELS, dim)
        self.input_proj = nn.ModuleList(nn.Conv2d(in_dim, dim, 1) if in_dim != dim else nn.Identity()
                                        for _ in range(LEVELS))
        self.layers = nn.ModuleList(MaskedDecoderLayer(dim, heads, ffn_dim) for _ in range(layers))
        self.heads = PredictionHeads(dim, mask_dim, num_classes)
        for layer in self.layers:
            layer.reset_parameters()
        for proj in self.input_proj:
            if isinstance(proj, nn.Conv2d):
                c2_xavier_fill(proj)

    def forward(self, maps: Sequence[Tensor], mask_features: Tensor) -> list[tuple[Tensor, Tensor]]:
        b = mask_features.shape[0]
        sizes = [tuple(m.shape[-2:]) for m in maps]
        pixels, pixel_pos = [], []
        for i, m in enumerate(maps):
            pixels.append(self.input_proj[i](m).flatten(2).transpose(1, 2) + self.level_embed.weight[i])
            pos = sine_position_encoding(*sizes[i], self.dim, device=m.device, dtype=m.dtype)
            pixel_pos.append(pos.flatten(2).transpose(1, 2))
        x = self.query_feat.weight[None].repeat(b, 1, 1)
        query_pos = self.query_embed.weight[None].repeat(b, 1, 1)
        classes, masks, blocked = self.heads(x, mask_features, sizes[0])
        predictions = [(classes, masks)]
        for i, layer in enumerate(self.layers):
            level = i % LEVELS
            # a query whose mask is empty on this level may look everywhere
            blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
            x = layer(x, query_pos, pixels[level], pixel_pos[level], blocked, sizes[level])
            classes, masks, blocked = self.heads(x, mask_features, sizes[(i + 1) % LEVELS])
            predictions.append((classes, masks))
        return predictions


# ----------------------------------------------------------------------------------------
# 4. Training: Hungarian matching and the set criterion on sampled points
# ----------------------------------------------------------------------------------------
def point_sample(x: Tensor, points: Tensor) -> Tensor:
    """Bilinear values of maps x (N, C, H, W) at points (N, P, 2), (x, y) in [0, 1]
    (``align_corners=False``): (N, C, P)."""
    return F.grid_sample(x, 2 * points[:, :, None] - 1, mode="bilinear", align_corners=False)[..., 0]


def uncertain_points(logits: Tensor, num_points: int, oversample: float, importance: float) -> Tensor:
    """PointRend's importance sampling of the points a mask loss is computed on.

    Draw ⌊oversample·P⌋ uniform points per mask, keep the ⌊importance·P⌋ whose logits are
    closest to 0 (the uncertain ones, -|logit| largest), and add P - that many fresh uniform
    points. logits (N, 1, H, W) -> points (N, P, 2) in [0, 1]."""
    n = logits.shape[0]
    candidates = int(num_points * oversample)
    points = torch.rand(n, candidates, 2, device=logits.device)
    uncertainty = -point_sample(logits, points)[:, 0].abs()  # (N, candidates)
    kept = int(importance * num_points)
    index = uncertainty.topk(kept, dim=1).indices
    points = torch.gather(points, 1, index[..., None].expand(-1, -1, 2))
    if num_points - kept > 0:
        points = torch.cat([points, torch.rand(n, num_points - kept, 2, device=logits.device)], dim=1)
    return points


def pairwise_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy of every prediction (Q, P logits) against every target (T, P):
    (Q, T). Uses BCE(x, y) = y·BCE(x, 1) + (1 - y)·BCE(x, 0)."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    p = logits.shape[1]
    return (pos / p) @ targets.T + (neg / p) @ (1 - targets).T


def pairwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss 1 - (2|m ∩ t| + 1) / (|m| + |t| + 1) of every prediction against every target,
    m = σ(logits): (Q, T)."""
    probs = logits.sigmoid()
    inter = 2 * probs @ targets.T
    return 1 - (inter + 1) / (probs.sum(-1)[:, None] + targets.sum(-1)[None, :] + 1)


def dice_loss(logits: Tensor, targets: Tensor, num_masks: Tensor) -> Tensor:
    """Σ over matched pairs of the Dice loss on their points (M, P), / num_masks."""
    probs = logits.sigmoid()
    loss = 1 - (2 * (probs * targets).sum(-1) + 1) / (probs.sum(-1) + targets.sum(-1) + 1)
    return loss.sum() / num_masks


def bce_loss(logits: Tensor, targets: Tensor, num_masks: Tensor) -> Tensor:
    """Σ over matched pairs of the mean point BCE (M, P), / num_masks."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / num_masks


@torch.no_grad()
def matching_cost(class_logits: Tensor, mask_logits: Tensor, classes: Tensor, masks: Tensor, num_points: int,
                  weights: tuple[float, float, float] = (2.0, 5.0, 5.0)) -> dict[str, Tensor]:
    """The matching cost of one image: queries (Q, K+1) class logits and (Q, h, w) mask logits
    against T targets (classes (T,), masks (T, H, W)); the mask terms on ``num_points`` points
    drawn uniformly (the same for all pairs).

    Returns the terms, each (Q, T): ``class`` (-p_q(c_t)), ``mask`` (mean BCE), ``dice``, and
    their weighted sum ``total`` (the weights: class, mask, dice)."""
    probs = class_logits.softmax(-1)
    cost_class = -probs[:, classes]
    points = torch.rand(1, num_points, 2, device=mask_logits.device)
    pred = point_sample(mask_logits[:, None], points.expand(mask_logits.shape[0], -1, -1))[:, 0]
    tgt = point_sample(masks[:, None].to(pred), points.expand(masks.shape[0], -1, -1))[:, 0]
    cost_mask, cost_dice = pairwise_bce(pred, tgt), pairwise_dice(pred, tgt)
    total = weights[0] * cost_class + weights[1] * cost_mask + weights[2] * cost_dice
    return {"class": cost_class, "mask": cost_mask, "dice": cost_dice, "total": total}


def hungarian_match(cost: Tensor) -> tuple[Tensor, Tensor]:
    """The one-to-one assignment of least total cost (``scipy.optimize.linear_sum_assignment``):
    (query indices, target indices), min(Q, T) pairs, sorted by query. Non-finite costs are
    replaced by the largest float, so they are picked only when nothing else is left."""
    big = torch.finfo(cost.dtype).max
    cost = torch.nan_to_num(cost.float(), nan=big, posinf=big, neginf=big)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


def semantic_targets(labels: Tensor, ignore_index: int = 255) -> list[tuple[Tensor, Tensor]]:
    """Set targets of a semantic label map (B, H, W): per image, one segment per class present
    (classes (T,), masks (T, H, W) bool); ``ignore_index`` pixels belong to no segment. This is
    how Mask2Former trains semantic segmentation (``MaskFormerSemanticDatasetMapper``)."""
    out = []
    for label in labels:
        classes = label.unique()
        classes = classes[classes != ignore_index]
        out.append((classes.long(), label[None] == classes[:, None, None]))
    return out


def panoptic_targets(labels: Tensor, ignore_index: int = 255) -> list[tuple[Tensor, Tensor]]:
    """Set targets of class maps stacked over instance-id maps (B, 2, H, W): per image, one
    segment per object (instance id k > 0, its class read from the class map) and, for the
    pixels of no object (id 0), one segment per class present there (the "stuff", here the
    background). This is Mask2Former's panoptic / instance training data
    (``COCOPanopticNewBaselineDatasetMapper``): two objects of one class are two targets.
    ``ignore_index`` pixels belong to no segment."""
    return [object_segments(semantic, instances, ignore_index) for semantic, instances in labels]


def object_segments(semantic: Tensor, instances: Tensor, ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """One sample's segments from its class map and instance-id map (same shape, any number of
    dimensions: (H, W) for an image, (T, H, W) for a clip, whose segments are then tubes): per
    class present on the pixels of no object (id 0) one stuff segment, then one segment per
    object id k > 0 (its class read from the class map, which must be the same on all its
    pixels). Returns (classes (S,) int64, masks (S, *shape) bool); ``ignore_index`` pixels
    belong to no segment."""
    keep = semantic != ignore_index
    classes, masks = [], []
    stuff = (instances == 0) & keep
    for c in semantic[stuff].unique():
        classes.append(c)
        masks.append(stuff & (semantic == c))
    for k in instances[(instances > 0) & keep].unique():
        mask = (instances == k) & keep
        values = semantic[mask].unique()
        if len(values) != 1:
            raise ValueError(f"instance {int(k)} covers pixels of classes {values.tolist()}; "
                             f"every object must have one class")
        classes.append(values[0])
        masks.append(mask)
    if not masks:
        return (torch.zeros(0, dtype=torch.int64, device=semantic.device),
                torch.zeros(0, *semantic.shape, dtype=torch.bool, device=semantic.device))
    return torch.stack(classes).long(), torch.stack(masks)


def average_num_masks(count: float, device=None) -> Tensor:
    """The number of target masks the mask losses are divided by: this process's ``count``, or
    under torch.distributed the mean over processes (the official criterion's all-reduce), so
    that every process normalises by the same number; at least 1."""
    num = torch.as_tensor(float(count), device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(num)
        num = num / torch.distributed.get_world_size()
    return num.clamp(min=1)


class SetCriterion(nn.Module):
    """``SetCriterion``: Hungarian matching, then class cross-entropy (no-object weight 0.1) and
    point-sampled BCE and Dice on the matched masks, for the final prediction and every
    intermediate one; the weighted sum of all of them (class 2, mask 5, dice 5)."""

    def __init__(self, num_classes: int, class_weight: float = 2.0, mask_weight: float = 5.0,
                 dice_weight: float = 5.0, no_object_weight: float = 0.1, num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75):
        super().__init__()
        self.num_classes = num_classes
        self.weights = (class_weight, mask_weight, dice_weight)
        self.num_points, self.oversample, self.importance = num_points, oversample_ratio, importance_sample_ratio
        empty = torch.ones(num_classes + 1)
        empty[-1] = no_object_weight
        self.register_buffer("empty_weight", empty, persistent=False)

    def match(self, class_logits: Tensor, mask_logits: Tensor, targets) -> list[tuple[Tensor, Tensor]]:
        return [hungarian_match(matching_cost(c, m, tc, tm, self.num_points, self.weights)["total"])
                for c, m, (tc, tm) in zip(class_logits, mask_logits, targets)]

    def layer_losses(self, class_logits: Tensor, mask_logits: Tensor, targets, num_masks: Tensor) -> dict[str, Tensor]:
        """The three unweighted losses of one prediction: ``class``, ``mask`` (BCE), ``dice``."""
        indices = self.match(class_logits, mask_logits, targets)
        batch = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)])
        query = torch.cat([q for q, _ in indices])
        # masks: matched predictions against their targets, on importance-sampled points
        pred = mask_logits[batch, query][:, None]
        tgt = torch.cat([tm[t] for (_, tm), (_, t) in zip(targets, indices)]).to(pred)[:, None]
        with torch.no_grad():
            points = uncertain_points(pred, self.num_points, self.oversample, self.importance)
            point_labels = point_sample(tgt, points)[:, 0]
        point_logits = point_sample(pred, points)[:, 0]
        losses = {"mask": bce_loss(point_logits, point_labels, num_masks),
                  "dice": dice_loss(point_logits, point_labels, num_masks)}
        # classes: the matched queries take their target's class, every other query "no object"
        target_classes = torch.full(class_logits.shape[:2], self.num_classes, dtype=torch.int64,
                                    device=class_logits.device)
        target_classes[batch, query] = torch.cat([tc[t] for (tc, _), (_, t) in zip(targets, indices)]).to(
            class_logits.device)
        losses["class"] = F.cross_entropy(class_logits.transpose(1, 2), target_classes, self.empty_weight)
        return losses

    def forward(self, predictions: Sequence[tuple[Tensor, Tensor]], targets) -> tuple[Tensor, list[dict[str, Tensor]]]:
        """predictions: [(class logits, mask logits)] per layer, the final one last; targets:
        per image (classes (T,), masks (T, H, W)). Returns (the weighted total, the per-layer
        unweighted losses in the order the official code computes them: final, then layer 0, 1, ...)."""
        num_masks = average_num_masks(float(sum(len(tc) for tc, _ in targets)), predictions[-1][0].device)
        order = [predictions[-1]] + list(predictions[:-1])
        per_layer = [self.layer_losses(c, m, targets, num_masks) for c, m in order]
        w_class, w_mask, w_dice = self.weights
        total = sum(w_class * l["class"] + w_mask * l["mask"] + w_dice * l["dice"] for l in per_layer)
        return total, per_layer


# ----------------------------------------------------------------------------------------
# 5. The model
# ----------------------------------------------------------------------------------------
class Mask2Former(SegmentationModel):
    """Backbone -> :class:`PixelDecoder` -> :class:`MaskedTransformerDecoder`, plus the criterion.

    * :meth:`forward_heads` (any mode) returns what the paper's head returns, in the official
      layout: ``{"pred_logits": (B, N, K+1), "pred_masks": (B, N, H/4, W/4), "aux_outputs":
      [{"pred_logits", "pred_masks"}] for the prediction from the learnable queries and the
      first L - 1 layers}``;
    * ``forward`` in training mode returns the same (what :meth:`loss` takes); in eval mode it
      returns the semantic scores at 1/4, Σ_q softmax(class_q)[:K] · σ(mask_q)  (B, K, H/4, W/4)
      — the model contract's dense output, as UperNet returns its main logits in eval mode;
    * :meth:`predict` is the paper's semantic inference at the input size (masks upsampled first);
    * :meth:`loss` is the set criterion; its target is a label map (B, H, W) (one segment per
      class present), class and instance-id maps (B, 2, H, W) (one segment per object,
      ``Scenes(..., target="panoptic")``, what ``train_target`` asks the trainer for) or, per
      image, (classes (T,), masks (T, H, W)) (``Scenes.instances``). It leaves every
      prediction's unweighted terms in ``last_loss_terms``, which the trainer logs.
    """

    feature_modules = ("backbone.norms.*", "pixel_decoder", "decoder.heads")
    train_target = "panoptic"  # the trainer feeds Scenes objects, not class maps (see loss)

    def __init__(self, backbone: nn.Module, num_classes: int = 150, hidden_dim: int = 256, mask_dim: int = 256,
                 num_queries: int = 100, heads: int = 8, enc_layers: int = 6, enc_ffn_dim: int = 1024,
                 enc_points: int = 4, dec_layers: int = 9, dec_ffn_dim: int = 2048, groups: int = 32,
                 class_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0,
                 no_object_weight: float = 0.1, train_num_points: int = 12544, oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75, ignore_index: int = 255, in_chans: int = 3):
        super().__init__()
        owner = type(self).__name__
        self.num_classes = check_int(owner, "num_classes", num_classes)
        self.in_chans = check_int(owner, "in_chans", in_chans)
        self.ignore_index = ignore_index
        self.backbone = backbone
        self.pixel_decoder = PixelDecoder(backbone.embed_dims, hidden_dim, mask_dim, heads, enc_ffn_dim, enc_layers,
                                          enc_points, groups)
        self.decoder = MaskedTransformerDecoder(num_classes, hidden_dim, hidden_dim, mask_dim, heads, dec_ffn_dim,
                                                dec_layers, num_queries)
        self.criterion = SetCriterion(num_classes, class_weight, mask_weight, dice_weight, no_object_weight,
                                      train_num_points, oversample_ratio, importance_sample_ratio)

    def predictions(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Every prediction [(class logits (B, N, K+1), mask logits (B, N, H/4, W/4))], the one from
        the learnable queries first, the final layer's last."""
        self.check_input(x)
        features = self.backbone(x)
        mask_features, maps = self.pixel_decoder(features)
        return self.decoder(maps, mask_features)

    def forward_heads(self, x: Tensor) -> dict:
        preds = self.predictions(x)
        return {"pred_logits": preds[-1][0], "pred_masks": preds[-1][1],
                "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in preds[:-1]]}

    def forward(self, x: Tensor):
        if self.training:
            return self.forward_heads(x)
        classes, masks = self.predictions(x)[-1]
        return semantic_inference(classes, masks)

    def predict(self, x: Tensor) -> Tensor:
        """The paper's semantic inference at the input size: (B, K, H, W)."""
        classes, masks = self.predictions(x)[-1]
        masks = F.interpolate(masks, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return semantic_inference(classes, masks)

    @torch.no_grad()
    def panoptic(self, x: Tensor, stuff_classes: Sequence[int] = (), object_threshold: float = 0.8,
                 overlap_threshold: float = 0.8) -> list[tuple[Tensor, Tensor, Tensor]]:
        """The paper's panoptic inference at the input size, per image ``(classes (S,), masks (S, H, W)
        bool, scores (S,))``: non-overlapping segments, in the order of their queries.

        Query q's score is its largest class probability p_q = max_c softmax(class_q)[c]; queries
        whose best class is "no object" or with p_q <= ``object_threshold`` are dropped. Every pixel
        goes to the kept query with the largest p_q · σ(mask_q); a query keeps the pixels it won
        where σ(mask_q) >= 0.5, and only if that is at least ``overlap_threshold`` of its own mask
        (else it was mostly covered by others and is dropped). Segments of one ``stuff_classes``
        class merge into one; every other class is a "thing" whose queries stay separate objects."""
        for name, value in (("object_threshold", object_threshold), ("overlap_threshold", overlap_threshold)):
            if not 0 <= value <= 1:
                raise ValueError(f"Mask2Former.panoptic: {name} must be in [0, 1], got {value!r}")
        stuff = {int(c) for c in stuff_classes}
        if not stuff <= set(range(self.num_classes)):
            raise ValueError(f"Mask2Former.panoptic: stuff_classes must be class indices in [0, {self.num_classes}), "
                             f"got {sorted(stuff)}")
        class_logits, mask_logits = self.predictions(x)[-1]
        mask_logits = F.interpolate(mask_logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        out = []
        for logits, masks in zip(class_logits, mask_logits):
            scores, labels = logits.softmax(-1).max(-1)
            keep = (labels != self.num_classes) & (scores > object_threshold)
            scores, labels, probs = scores[keep], labels[keep], masks[keep].sigmoid()
            owner = (scores[:, None, None] * probs).argmax(0) if len(scores) else None
            classes, segments, kept_scores, stuff_slot = [], [], [], {}
            for k in range(len(scores)):
                own = probs[k] >= 0.5
                mask = (owner == k) & own
                area, won = int(own.sum()), int(mask.sum())
                if won == 0 or int((owner == k).sum()) < overlap_threshold * area:
                    continue
                c = int(labels[k])
                if c in stuff and c in stuff_slot:
                    segments[stuff_slot[c]] |= mask
                    continue
                if c in stuff:
                    stuff_slot[c] = len(segments)
                classes.append(c)
                segments.append(mask)
                kept_scores.append(scores[k])
            h, w = x.shape[-2:]
            out.append((torch.as_tensor(classes, dtype=torch.int64, device=x.device),
                        torch.stack(segments) if segments else torch.zeros(0, h, w, dtype=torch.bool, device=x.device),
                        torch.stack(kept_scores) if kept_scores else torch.zeros(0, device=x.device)))
        return out

    def loss(self, outputs: dict, target) -> Tensor:
        """The set criterion (weighted sum over all predictions). ``outputs`` as :meth:`forward_heads`
        returns them; ``target`` a label map (B, H, W) or per image (classes, masks)."""
        if not isinstance(outputs, dict) or "pred_logits" not in outputs:
            got = f"a tensor of shape {tuple(outputs.shape)}" if isinstance(outputs, Tensor) else type(outputs).__name__
            raise ValueError(f"Mask2Former.loss needs the set predictions of forward_heads(x) (what forward returns "
                             f"in training mode), got {got}; call model.train() or use model.forward_heads(x)")
        if isinstance(target, Tensor) and target.dim() == 4 and target.shape[1] == 2:
            targets = panoptic_targets(target, self.ignore_index)
        elif isinstance(target, Tensor) and target.dim() == 3:
            targets = semantic_targets(target, self.ignore_index)
        elif isinstance(target, Tensor):
            raise ValueError(f"Mask2Former.loss: a target tensor must be a class map (B, H, W) or class and "
                             f"instance-id maps (B, 2, H, W), got shape {tuple(target.shape)}")
        else:
            targets = [(torch.as_tensor(c).long(), torch.as_tensor(m)) for c, m in target]
        preds = [(a["pred_logits"], a["pred_masks"]) for a in outputs["aux_outputs"]]
        preds.append((outputs["pred_logits"], outputs["pred_masks"]))
        total, per_layer = self.criterion(preds, targets)
        # for the training curves: every prediction's unweighted terms, p0 from the learnable queries
        # (before the first layer), p{L} the final one (the criterion lists the final one first)
        last = len(per_layer) - 1
        self.last_loss_terms = {f"p{last if i == 0 else i - 1}/{term}": float(value.detach())
                                for i, layer in enumerate(per_layer) for term, value in layer.items()}
        return total


def semantic_inference(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """Σ_q softmax(class_q)[c] · σ(mask_q) for the K real classes (the no-object column dropped):
    (B, N, K+1), (B, N, h, w) -> (B, K, h, w)."""
    return torch.einsum("bqc,bqhw->bchw", class_logits.softmax(-1)[..., :-1], mask_logits.sigmoid())


def _check_config(owner, hidden_dim, mask_dim, num_queries, heads, enc_layers, enc_ffn_dim, enc_points, dec_layers,
                  dec_ffn_dim, groups, class_weight, mask_weight, dice_weight, no_object_weight, train_num_points,
                  oversample_ratio, importance_sample_ratio):
    for name, value in (("hidden_dim", hidden_dim), ("mask_dim", mask_dim), ("num_queries", num_queries),
                        ("heads", heads), ("enc_layers", enc_layers), ("enc_ffn_dim", enc_ffn_dim),
                        ("enc_points", enc_points), ("dec_layers", dec_layers), ("dec_ffn_dim", dec_ffn_dim),
                        ("groups", groups), ("train_num_points", train_num_points)):
        check_int(owner, name, value)
    if hidden_dim % heads:
        raise ValueError(f"{owner}: hidden_dim {hidden_dim} is not divisible by heads {heads}")
    if hidden_dim % groups:
        raise ValueError(f"{owner}: hidden_dim {hidden_dim} is not divisible by the GroupNorm groups {groups}")
    for name, value in (("class_weight", class_weight), ("mask_weight", mask_weight), ("dice_weight", dice_weight),
                        ("no_object_weight", no_object_weight), ("oversample_ratio", oversample_ratio)):
        check_positive(owner, name, value)
    if oversample_ratio < 1:
        raise ValueError(f"{owner}: oversample_ratio must be >= 1 (candidates per kept point), "
                         f"got {oversample_ratio!r}")
    if isinstance(importance_sample_ratio, bool) or not isinstance(importance_sample_ratio, (int, float)) \
            or not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"{owner}: importance_sample_ratio must be a number in [0, 1], "
                         f"got {importance_sample_ratio!r}")


def mask2former_swin(
    num_classes: int = 150,
    embed_dim: int = 96,
    depths: Sequence[int] = (2, 2, 6, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    window_size: int = 7,
    mlp_ratio: float = 4.0,
    drop_path_rate: float = 0.3,
    hidden_dim: int = 256,
    mask_dim: int = 256,
    num_queries: int = 100,
    heads: int = 8,
    enc_layers: int = 6,
    enc_ffn_dim: int = 1024,
    enc_points: int = 4,
    dec_layers: int = 9,
    dec_ffn_dim: int = 2048,
    groups: int = 32,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
    no_object_weight: float = 0.1,
    train_num_points: int = 12544,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    in_chans: int = 3,
) -> Mask2Former:
    """Mask2Former on the dense Swin backbone (:class:`segviz.models.swin.SwinBackbone`)."""
    owner = "Mask2Former"
    check_int(owner, "num_classes", num_classes)  # before building a large backbone
    _check_config(owner, hidden_dim, mask_dim, num_queries, heads, enc_layers, enc_ffn_dim, enc_points, dec_layers,
                  dec_ffn_dim, groups, class_weight, mask_weight, dice_weight, no_object_weight, train_num_points,
                  oversample_ratio, importance_sample_ratio)
    backbone = swin.SwinBackbone(in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio, True, drop_path_rate)
    return Mask2Former(backbone, num_classes, hidden_dim, mask_dim, num_queries, heads, enc_layers, enc_ffn_dim,
                       enc_points, dec_layers, dec_ffn_dim, groups, class_weight, mask_weight, dice_weight,
                       no_object_weight, train_num_points, oversample_ratio, importance_sample_ratio, in_chans=in_chans)


def mask2former_resnet(
    num_classes: int = 150,
    layers: Sequence[int] = (3, 4, 6, 3),
    hidden_dim: int = 256,
    mask_dim: int = 256,
    num_queries: int = 100,
    heads: int = 8,
    enc_layers: int = 6,
    enc_ffn_dim: int = 1024,
    enc_points: int = 4,
    dec_layers: int = 9,
    dec_ffn_dim: int = 2048,
    groups: int = 32,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
    no_object_weight: float = 0.1,
    train_num_points: int = 12544,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    in_chans: int = 3,
) -> Mask2Former:
    """Mask2Former on a ResNet (:class:`segviz.models.resnet.ResNet`, torchvision's layout, no
    dilation: res2..res5 at strides 4..32). ResNet-50: ``layers=(3, 4, 6, 3)``.

    The official R50 configs keep detectron2's FrozenBN (BatchNorm with fixed statistics and
    affine parameters); here the backbone's BatchNorm is an ordinary one, the same function in
    eval mode. Registered as ``mask2former-r50``."""
    owner = "Mask2Former"
    check_int(owner, "num_classes", num_classes)
    _check_config(owner, hidden_dim, mask_dim, num_queries, heads, enc_layers, enc_ffn_dim, enc_points, dec_layers,
                  dec_ffn_dim, groups, class_weight, mask_weight, dice_weight, no_object_weight, train_num_points,
                  oversample_ratio, importance_sample_ratio)
    backbone = resnet.ResNet(layers, num_classes=None, in_chans=in_chans)
    return Mask2Former(backbone, num_classes, hidden_dim, mask_dim, num_queries, heads, enc_layers, enc_ffn_dim,
                       enc_points, dec_layers, dec_ffn_dim, groups, class_weight, mask_weight, dice_weight,
                       no_object_weight, train_num_points, oversample_ratio, importance_sample_ratio, in_chans=in_chans)


# ----------------------------------------------------------------------------------------
# Reading checkpoints written by other code bases (the timm convention)
# ----------------------------------------------------------------------------------------
# HuggingFace Mask2FormerForUniversalSegmentation (what save_pretrained writes):
#   model.pixel_level_module.encoder.*            the Swin backbone (swin.convert_swin_keys; its unused final
#                                                 LayerNorm swin.layernorm is dropped)
#   model.pixel_level_module.decoder.*            input_projections.{i}, level_embed, encoder.layers.{i}
#                                                 (self_attn, self_attn_layer_norm, fc1, fc2, final_layer_norm),
#                                                 adapter_1 / layer_1 (the FPN step), mask_projection
#   model.transformer_module.*                    queries_features, queries_embedder, level_embed, input_projections,
#                                                 decoder.layers.{i} (cross_attn as nn.MultiheadAttention with a
#                                                 joined in_proj, self_attn with q/k/v/out_proj), decoder.layernorm,
#                                                 decoder.mask_predictor.mask_embedder.{i}.0
#   class_predictor                               the class head
#   criterion.empty_weight                        derived from the config: dropped
_HF = [
    (r"^model\.pixel_level_module\.decoder\.input_projections\.", "pixel_decoder.input_proj."),
    (r"^model\.pixel_level_module\.decoder\.level_embed$", "pixel_decoder.level_embed"),
    (r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.",
     r"pixel_decoder.encoder.\1.norm1."),
    (r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.final_layer_norm\.",
     r"pixel_decoder.encoder.\1.norm2."),
    (r"^model\.pixel_level_module\.decoder\.encoder\.layers\.", "pixel_decoder.encoder."),
    (r"^model\.pixel_level_module\.decoder\.adapter_1\.", "pixel_decoder.lateral."),
    (r"^model\.pixel_level_module\.decoder\.layer_1\.", "pixel_decoder.output."),
    (r"^model\.pixel_level_module\.decoder\.mask_projection\.", "pixel_decoder.mask_features."),
    (r"^model\.transformer_module\.queries_features\.", "decoder.query_feat."),
    (r"^model\.transformer_module\.queries_embedder\.", "decoder.query_embed."),
    (r"^model\.transformer_module\.level_embed\.", "decoder.level_embed."),
    (r"^model\.transformer_module\.input_projections\.", "decoder.input_proj."),
    (r"^model\.transformer_module\.decoder\.layernorm\.", "decoder.heads.norm."),
    (r"^model\.transformer_module\.decoder\.mask_predictor\.mask_embedder\.(\d+)\.0\.",
     r"decoder.heads.mask_embed.layers.\1."),
    (r"^model\.transformer_module\.decoder\.layers\.", "decoder.layers."),
    (r"^class_predictor\.", "decoder.heads.class_embed."),
    (r"\.cross_attn_layer_norm\.", ".norm1."),
    (r"\.self_attn_layer_norm\.", ".norm2."),
    (r"(decoder\.layers\.\d+)\.final_layer_norm\.", r"\1.norm3."),
    (r"(decoder\.layers\.\d+\.(?:self|cross)_attn)\.(q|k|v)_proj\.", r"\1.\2."),
    (r"(decoder\.layers\.\d+\.(?:self|cross)_attn)\.out_proj\.", r"\1.proj."),
]


def _split_in_proj(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """nn.MultiheadAttention's joined in_proj_weight / in_proj_bias ([W_q; W_k; W_v]) -> q, k, v."""
    out = {}
    for key, value in sd.items():
        prefix, _, kind = key.rpartition(".in_proj_")
        if _ and kind in ("weight", "bias"):
            for part, chunk in zip("qkv", value.chunk(3)):
                out[f"{prefix}.{part}.{kind}"] = chunk
        else:
            out[key] = value
    return out


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """A Mask2Former + Swin state dict in HuggingFace's layout (or ours) -> ``model``'s layout.

    Keys that no rule understands keep their names, so the strict loader lists them."""
    backbone_prefix = "model.pixel_level_module.encoder."
    if not any(k.startswith(backbone_prefix) for k in state_dict):
        return dict(state_dict)  # our own layout
    backbone = {k[len(backbone_prefix):]: v for k, v in state_dict.items() if k.startswith(backbone_prefix)}
    rest = {k: v for k, v in state_dict.items() if not k.startswith(backbone_prefix) and k != "criterion.empty_weight"}
    backbone = swin.convert_swin_keys(backbone)
    backbone = {k: v for k, v in backbone.items() if not k.startswith("norm.")}  # HF's unused final LayerNorm
    sd = {"backbone." + k: v for k, v in backbone.items()}
    sd.update(_split_in_proj(rename_keys(rest, _HF)))
    return sd


# ----------------------------------------------------------------------------------------
# Variants, with the published numbers
# ----------------------------------------------------------------------------------------
PUBLISHED = {
    "mask2former-swin-t": dict(
        params_m=47.0, params_hf=47_441_169, gmacs=74.0, gmacs_forward_hf=69.23, gmacs_inference_step=3.93,
        input_size=(512, 512), num_classes=150, miou=47.7,
        counted="backbone + pixel decoder + transformer decoder + heads; the published 74 GFLOPs (fvcore) also "
                "count the semantic-inference step (100 mask logits upsampled to 512x512 and combined with the "
                "150 class scores)",
        source="Cheng et al. 2022 (Mask2Former), Table 4 (ADE20K val, Swin-T, 512x512 crop, 160k iterations); "
               "HuggingFace Mask2FormerForUniversalSegmentation (Swin-T, 150 classes) counted: 47,441,169 params "
               "(including SwinBackbone's unused final LayerNorm, 1,536 params), 69.23 GMACs forward at 512x512 "
               "(FlopCounterMode), +3.93 for the semantic-inference step",
    ),
}
PUBLISHED["mask2former-r50"] = dict(
    params_m=44.0, gmacs=71.0, input_size=(512, 512), num_classes=150, miou=47.2,
    counted="ResNet-50 + pixel decoder + transformer decoder + heads; 71 GFLOPs (fvcore) include the "
            "semantic-inference step, as for Swin-T",
    source="Cheng et al. 2022 (Mask2Former), ADE20K semantic segmentation table (R50, 512x512 crop, 160k "
           "iterations); not in shared/reference/published.md: check against the paper",
)
SWIN_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0,
              drop_path_rate=0.3)
register(
    "mask2former-swin-t", mask2former_swin,
    dict(num_classes=150, **SWIN_T, hidden_dim=256, mask_dim=256, num_queries=100, heads=8, enc_layers=6,
         enc_ffn_dim=1024, enc_points=4, dec_layers=9, dec_ffn_dim=2048, groups=32, class_weight=2.0,
         mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1, train_num_points=12544, oversample_ratio=3.0,
         importance_sample_ratio=0.75),
    checkpoint_filter_fn,
    description="Mask2Former + Swin-T for ADE20K semantic segmentation (Cheng et al. 2022), 150 classes, 100 queries",
    published=PUBLISHED["mask2former-swin-t"],
)
register(
    "mask2former-r50", mask2former_resnet,
    dict(num_classes=150, layers=(3, 4, 6, 3), hidden_dim=256, mask_dim=256, num_queries=100, heads=8, enc_layers=6,
         enc_ffn_dim=1024, enc_points=4, dec_layers=9, dec_ffn_dim=2048, groups=32, class_weight=2.0,
         mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1, train_num_points=12544, oversample_ratio=3.0,
         importance_sample_ratio=0.75),
    checkpoint_filter_fn,
    description="Mask2Former + ResNet-50 (torchvision layout) for ADE20K semantic segmentation, 150 classes, 100 queries",
    published=PUBLISHED["mask2former-r50"],
)
register(
    "mask2former-nano", mask2former_swin,
    dict(num_classes=6, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7, mlp_ratio=4.0,
         drop_path_rate=0.1, hidden_dim=64, mask_dim=64, num_queries=16, heads=4, enc_layers=2, enc_ffn_dim=256,
         enc_points=4, dec_layers=3, dec_ffn_dim=256, groups=32, class_weight=2.0, mask_weight=5.0, dice_weight=5.0,
         no_object_weight=0.1, train_num_points=1024, oversample_ratio=3.0, importance_sample_ratio=0.75),
    checkpoint_filter_fn,
    description="a tiny Mask2Former + Swin for CPU notebooks (6 Scenes classes, 16 queries, 3 decoder layers)",
)
