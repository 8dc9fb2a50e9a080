"""Video Mask2Former (Cheng et al., "Mask2Former for Video Instance Segmentation", 2021), built on
the image model's blocks (:mod:`segviz.models.mask2former`).

The image model changes in three places only; everything else is the image model's code:

    clip (B, T, 3, H, W)
    backbone + pixel decoder   -> per frame, the T frames as a batch of B·T images:
                                  E (B, T, C_E, H/4, W/4) and maps m_l (B, T, C, h_l, w_l)
    1. memory                  -> the T frames of a level are *one* memory of T·h_l·w_l tokens,
                                  with the 3-D sine encoding PE(τ, y, x) = PE_xy(y, x) + PE_τ(τ)
                                  (:func:`segviz.nn.position.sine_position_encoding_3d`)
    transformer decoder        -> the same layers: each query attends to all frames at once
                                  (masked cross-attention over T·h·w keys -> self-attn -> FFN)
    2. heads                   -> one mask per frame from the *same* query embedding,
                                  M_q(τ) = MLP(q) · E(τ)         pred_masks (B, N, T, H/4, W/4)
                                  so a query is an object *tube* across the clip; its class is
                                  one for the whole tube. The attention mask of the next layer
                                  is σ(M_q) < 0.5 over all T·h·w pixels (a query blocked in every
                                  frame looks everywhere)
    3. training                -> Hungarian matching of queries to ground-truth tubes; the mask
                                  costs on P points drawn once and used in every frame, so BCE and
                                  Dice are over the T·P tube points; then the image losses on
                                  every (matched tube, frame) pair, normalised by the number of
                                  tubes (``VideoSetCriterion`` of the official code).

The ground-truth tubes of a clip are one per object (instance id k > 0, the same id in every
frame, an all-zero mask in frames where it is hidden) and one per "stuff" class of the pixels of no
object (here the background), as the panoptic image model trains; a tube absent from every frame
is no target.

Semantic inference per frame (:meth:`VideoMask2Former.predict`): Σ_q softmax(class_q)[:K] · σ(M_q(τ)),
the image model's rule in every frame: (B, T, K, H, W).

Recording: the masked cross-attention over T·h·w keys is an ordinary
:class:`~segviz.nn.recording.MaskedAttentionRecord` whose key grid ``k_hw`` is (T·h, w), the
frames stacked from top to bottom (the memory is frame-major), so ``map_for(q)`` is a tall map;
:func:`frames_of` cuts it back into T maps of (h, w).

Reference: facebookresearch/Mask2Former, ``mask2former_video`` (``PositionEmbeddingSine3D``,
``VideoMultiScaleMaskedTransformerDecoder``, ``VideoHungarianMatcher``, ``VideoSetCriterion``).
The official code trains on YouTube-VIS with 2-frame clips and runs inference on whole videos;
there is no published checkpoint here, so no checkpoint converter beyond our own layout.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segviz.models import swin
from segviz.models.mask2former import (
    LEVELS, MaskedTransformerDecoder, PixelDecoder, PredictionHeads, SetCriterion, _check_config, bce_loss,
    dice_loss, hungarian_match, object_segments, pairwise_bce, pairwise_dice, point_sample, uncertain_points,
)
from segviz.nn.checks import check_int
from segviz.nn.contract import SegmentationModel
from segviz.nn.position import sine_position_encoding_3d
from segviz.registry import register


# ----------------------------------------------------------------------------------------
# Input check
# ----------------------------------------------------------------------------------------
def check_clip_batch(x, channels: int, owner: str) -> None:
    """``x`` must be a floating (B, T, channels, H, W) tensor with B, T, H, W >= 1 (type, shape and
    dtype only: no sync, fine on the meta device). The message says what was given, what is
    expected, and how to fix the usual mistakes."""
    expected = f"{owner} expects a float tensor (B, T, {channels}, H, W), a batch of clips of T frames"
    if not isinstance(x, Tensor):
        shape = getattr(x, "shape", None)
        what = f"a {type(x).__module__}.{type(x).__name__}" if type(x).__module__ != "builtins" \
            else f"a {type(x).__name__}"
        what += f" of shape {tuple(shape)}" if shape is not None else ""
        raise ValueError(f"{expected}; got {what}; convert it with torch.as_tensor(x, dtype=torch.float32)")
    got = f"got a tensor of shape {tuple(x.shape)}"
    if x.dim() == 4:
        raise ValueError(f"{expected}; {got} (4 dimensions instead of 5): a batch of images? a clip of one "
                         f"frame is x[:, None]; an unbatched clip (T, C, H, W) is x[None]")
    if x.dim() != 5:
        raise ValueError(f"{expected}; {got} ({x.dim()} dimensions instead of 5)")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{expected}; {got} and dtype {x.dtype}: convert with x.float() "
                         "(and scale as the model expects, e.g. / 255 for 8-bit images)")
    if x.shape[2] != channels:
        hint = ": channels last? use x.permute(0, 1, 4, 2, 3)" if x.shape[-1] == channels else ""
        raise ValueError(f"{expected}; {got} with {x.shape[2]} channels{hint}")
    if x.shape[0] < 1:
        raise ValueError(f"{expected}; {got}: the batch is empty (B = 0)")
    if x.shape[1] < 1:
        raise ValueError(f"{expected}; {got}: the clips are empty (T = 0)")
    if x.shape[3] < 1 or x.shape[4] < 1:
        raise ValueError(f"{expected}; {got}: the frames are empty")


def frames_of(grid_map: Tensor, frames: int) -> Tensor:
    """A map on a recorded video key grid (T·h, w) (frames stacked top to bottom) -> (T, h, w)."""
    if grid_map.shape[-2] % frames:
        raise ValueError(f"a map of {grid_map.shape[-2]} rows does not hold {frames} frames of equal height")
    return grid_map.reshape(*grid_map.shape[:-2], frames, grid_map.shape[-2] // frames, grid_map.shape[-1])


# ----------------------------------------------------------------------------------------
# 1-2. The video transformer decoder: one memory over all frames, masks per frame
# ----------------------------------------------------------------------------------------
class VideoPredictionHeads(PredictionHeads):
    """The image heads (same parameters) on a clip: one class per query for the whole clip and one
    mask per frame from the same mask embedding,

        class logits = Linear(LN(X))                                        (B, N, K + 1)
        mask logits  = MLP_3(LN(X)) · E(τ)  for τ = 1 .. T                  (B, N, T, H/4, W/4)
        attention mask = σ(resize per frame(mask logits)) < 0.5, flattened frame-major  (B, N, T·h·w)
    """

    def forward(self, x: Tensor, mask_features: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        x = self.norm(x)
        classes = self.class_embed(x)
        masks = torch.einsum("bqc,btchw->bqthw", self.mask_embed(x), mask_features)
        b, q, t = masks.shape[:3]
        resized = F.interpolate(masks.flatten(0, 1), size=size, mode="bilinear", align_corners=False)
        blocked = (resized.sigmoid().reshape(b, q, -1) < 0.5).detach()
        return classes, masks, blocked


class VideoMaskedTransformerDecoder(MaskedTransformerDecoder):
    """``VideoMultiScaleMaskedTransformerDecoder``: the image decoder's parameters and layers
    (:class:`~segviz.models.mask2former.MaskedTransformerDecoder`), with the memory of level l
    made of all T frames (T·h_l·w_l tokens, frame-major, each token + the level embedding; keys
    get the 3-D sine position) and :class:`VideoPredictionHeads`.

    maps: [m_5, m_4, m_3], each (B·T, C, h_l, w_l) (frames of a clip consecutive);
    mask_features (B·T, C_E, H/4, W/4). Returns the ``layers + 1`` predictions
    [(class logits (B, N, K+1), mask logits (B, N, T, H/4, W/4))].
    """

    def __init__(self, num_classes: int, in_dim: int = 256, dim: int = 256, mask_dim: int = 256, heads: int = 8,
                 ffn_dim: int = 2048, layers: int = 9, queries: int = 100):
        super().__init__(num_classes, in_dim, dim, mask_dim, heads, ffn_dim, layers, queries)
        self.heads = VideoPredictionHeads(dim, mask_dim, num_classes)

    def positions(self, t: int, h: int, w: int, device, dtype) -> Tensor:
        """The keys' positional encoding of a (t, h, w) memory, frame-major: (1, t·h·w, C)."""
        pos = sine_position_encoding_3d(t, h, w, self.dim, device=device, dtype=dtype)  # (1, t, C, h, w)
        return pos.permute(0, 1, 3, 4, 2).reshape(1, t * h * w, self.dim)

    def forward(self, maps: Sequence[Tensor], mask_features: Tensor, frames: int) -> list[tuple[Tensor, Tensor]]:
        bt = mask_features.shape[0]
        b, t = bt // frames, frames
        mask_features = mask_features.reshape(b, t, *mask_features.shape[1:])
        sizes = [tuple(m.shape[-2:]) for m in maps]
        pixels, pixel_pos = [], []
        for i, m in enumerate(maps):
            tokens = self.input_proj[i](m).flatten(2).transpose(1, 2)                  # (B·T, h·w, C)
            pixels.append(tokens.reshape(b, t * tokens.shape[1], self.dim) + self.level_embed.weight[i])
            pixel_pos.append(self.positions(t, *sizes[i], m.device, m.dtype))
        x = self.query_feat.weight[None].repeat(b, 1, 1)
        query_pos = self.query_embed.weight[None].repeat(b, 1, 1)
        classes, masks, blocked = self.heads(x, mask_features, sizes[0])
        predictions = [(classes, masks)]
        for i, layer in enumerate(self.layers):
            level = i % LEVELS
            # a query whose tube is empty on this level in every frame may look everywhere
            blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
            h, w = sizes[level]
            x = layer(x, query_pos, pixels[level], pixel_pos[level], blocked, (t * h, w))  # key grid: frames stacked
            classes, masks, blocked = self.heads(x, mask_features, sizes[(i + 1) % LEVELS])
            predictions.append((classes, masks))
        return predictions


# ----------------------------------------------------------------------------------------
# 3. Training: tube targets, tube matching, the criterion over tubes
# ----------------------------------------------------------------------------------------
def video_targets(labels: Tensor, ignore_index: int = 255) -> list[tuple[Tensor, Tensor]]:
    """Tube targets of clips. ``labels`` (B, T, 2, H, W): class maps stacked over instance-id maps
    (``Scenes(..., target="panoptic", frames=T)``), or (B, T, H, W) class maps. Per clip:
    (classes (N,), masks (N, T, H, W) bool): one tube per object id k > 0 present in some frame
    (all-zero in the frames where it is hidden), and one per class present on the pixels of no
    object (the stuff; with class maps only, one per class present). ``ignore_index`` pixels
    belong to no tube."""
    if not isinstance(labels, Tensor) or labels.dim() not in (4, 5) or (labels.dim() == 5 and labels.shape[2] != 2):
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"video targets are class maps (B, T, H, W) or class and instance-id maps "
                         f"(B, T, 2, H, W), got {got}")
    out = []
    for clip in labels:
        semantic, instances = (clip[:, 0], clip[:, 1]) if clip.dim() == 4 else (clip, torch.zeros_like(clip))
        out.append(object_segments(semantic, instances, ignore_index))  # (T, H, W) maps: the segments are tubes
    return out


@torch.no_grad()
def tube_matching_cost(class_logits: Tensor, mask_logits: Tensor, classes: Tensor, masks: Tensor,
                       num_points: int, weights: tuple[float, float, float] = (2.0, 5.0, 5.0),
                       points: Tensor | None = None) -> dict[str, Tensor]:
    """The matching cost of one clip: queries (Q, K+1) class logits and (Q, T, h, w) tube mask
    logits against N target tubes (classes (N,), masks (N, T, H, W)). P = ``num_points`` points
    (x, y) in [0, 1] are drawn once (or given as ``points`` (P, 2)) and read in every frame, so a
    tube is compared on its T·P values: BCE is their mean, Dice is over all of them together.

    Returns the terms, each (Q, N): ``class`` (-p_q(c_n)), ``mask``, ``dice`` and ``total``."""
    probs = class_logits.softmax(-1)
    cost_class = -probs[:, classes]
    if points is None:
        points = torch.rand(num_points, 2, device=mask_logits.device)
    points = points.to(mask_logits)[None]
    pred = point_sample(mask_logits, points.expand(mask_logits.shape[0], -1, -1)).flatten(1)      # (Q, T·P)
    tgt = point_sample(masks.to(pred), points.expand(masks.shape[0], -1, -1)).flatten(1)          # (N, T·P)
    cost_mask, cost_dice = pairwise_bce(pred, tgt), pairwise_dice(pred, tgt)
    total = weights[0] * cost_class + weights[1] * cost_mask + weights[2] * cost_dice
    return {"class": cost_class, "mask": cost_mask, "dice": cost_dice, "total": total}


class VideoSetCriterion(SetCriterion):
    """``VideoSetCriterion``: the image criterion with tubes for masks. Matching on
    :func:`tube_matching_cost`; the mask losses (importance-sampled BCE and Dice, the points
    chosen per frame) on every frame of every matched tube, summed and divided by the number of
    target tubes; class cross-entropy per query as in the image model."""

    def match(self, class_logits: Tensor, mask_logits: Tensor, targets) -> list[tuple[Tensor, Tensor]]:
        return [hungarian_match(tube_matching_cost(c, m, tc, tm, self.num_points, self.weights)["total"])
                for c, m, (tc, tm) in zip(class_logits, mask_logits, targets)]

    def layer_losses(self, class_logits: Tensor, mask_logits: Tensor, targets, num_masks: Tensor) -> dict[str, Tensor]:
        indices = self.match(class_logits, mask_logits, targets)
        batch = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)])
        query = torch.cat([q for q, _ in indices])
        pred = mask_logits[batch, query].flatten(0, 1)[:, None]                            # (M·T, 1, h, w)
        tgt = torch.cat([tm[t] for (_, tm), (_, t) in zip(targets, indices)]).to(pred).flatten(0, 1)[:, None]
        with torch.no_grad():
            points = uncertain_points(pred, self.num_points, self.oversample, self.importance)
            point_labels = point_sample(tgt, points)[:, 0]
        point_logits = point_sample(pred, points)[:, 0]
        losses = {"mask": bce_loss(point_logits, point_labels, num_masks),
                  "dice": dice_loss(point_logits, point_labels, num_masks)}
        target_classes = torch.full(class_logits.shape[:2], self.num_classes, dtype=torch.int64,
                                    device=class_logits.device)
        target_classes[batch, query] = torch.cat([tc[t] for (tc, _), (_, t) in zip(targets, indices)]).to(
            class_logits.device)
        losses["class"] = F.cross_entropy(class_logits.transpose(1, 2), target_classes, self.empty_weight)
        return losses


@torch.no_grad()
def frame_assignments(class_logits: Tensor, mask_logits: Tensor, classes: Tensor, masks: Tensor,
                      num_points: int = 4096, weights: tuple[float, float, float] = (2.0, 5.0, 5.0)) -> Tensor:
    """For a tube-identity check: match queries to objects *frame by frame* (the image model's
    cost on frame τ alone) and say which query took each target in each frame.

    class_logits (Q, K+1), mask_logits (Q, T, h, w), targets classes (N,), masks (N, T, H, W).
    Returns (N, T) int64: the query matched to target n in frame τ, or -1 where the target has no
    pixels in that frame. A tube that keeps its identity has one query along its row."""
    n, t = masks.shape[:2]
    out = torch.full((n, t), -1, dtype=torch.int64)
    for frame in range(t):
        present = masks[:, frame].flatten(1).any(1).nonzero()[:, 0]
        if len(present) == 0:
            continue
        cost = tube_matching_cost(class_logits, mask_logits[:, frame:frame + 1], classes[present],
                                  masks[present, frame:frame + 1], num_points, weights)["total"]
        rows, cols = hungarian_match(cost)
        out[present[cols], frame] = rows
    return out


def identity_summary(assignments: Sequence) -> dict:
    """Tube identity from per-frame matches (:func:`frame_assignments`,
    one (N, T) array per clip, -1 where an object is absent): over every object and every pair of
    consecutive frames in which it is visible, the fraction matched to the same query
    (``same_query``), and the fraction of objects whose query never changes over the clip
    (``whole_clip``, objects visible in >= 2 frames)."""
    same = pairs = kept = objects = 0
    for a in assignments:
        a = np.asarray(a)
        for row in a:
            seen = row[row >= 0]
            if len(seen) < 2:
                continue
            objects += 1
            kept += int((seen == seen[0]).all())
            same += int((seen[1:] == seen[:-1]).sum())
            pairs += len(seen) - 1
    return {"same_query": same / pairs if pairs else float("nan"), "pairs": pairs,
            "whole_clip": kept / objects if objects else float("nan"), "objects": objects}


@torch.no_grad()
def _image_model_assignments(model: nn.Module, frames: Tensor, classes: Tensor, masks: Tensor,
                             num_points: int = 4096) -> Tensor:
    """:func:`frame_assignments` for an *image* Mask2Former run on each frame alone (frames (T, 3, H, W))."""
    cls, mask_logits = model.predictions(frames)[-1]                    # the frames as a batch
    out = torch.full((len(classes), frames.shape[0]), -1, dtype=torch.int64)
    for f in range(frames.shape[0]):
        out[:, f] = frame_assignments(cls[f], mask_logits[f][:, None], classes, masks[:, f:f + 1], num_points)[:, 0]
    return out


@torch.no_grad()
def tube_identity(model: nn.Module, clips, image_model: nn.Module | None = None) -> dict:
    """Do tubes keep identity? Over ``clips`` (items (x (T, 3, H, W), labels (T, 2, H, W)), e.g.
    ``Scenes(n, size, split="val", target="panoptic", frames=T)``): the objects' tubes (the stuff
    tubes left out) are matched to the video model's queries frame by frame (:func:`frame_assignments`)
    and summarised by :func:`identity_summary`. With ``image_model`` (an image Mask2Former) the same
    for it, run on the frames one at a time, as a reference. Clip i draws its points after
    ``torch.manual_seed(i)``, so the result is repeatable. Returns {"video": ..., ["image_model_per_frame": ...]}."""
    video_rows, image_rows = [], []
    for i in range(len(clips)):
        x, labels = clips[i]
        if labels.dim() != 4 or labels.shape[1] != 2:
            raise ValueError(f"tube_identity needs class and instance-id maps (T, 2, H, W) per clip, "
                             f"got {tuple(labels.shape)}; use Scenes(..., target='panoptic', frames=T)")
        (classes, masks), = video_targets(labels[None])
        things = torch.tensor([bool(((labels[:, 1] > 0) & m).any()) for m in masks], dtype=torch.bool)
        classes, masks = classes[things], masks[things]
        torch.manual_seed(i)
        cls, tubes = model.predictions(x[None])[-1]
        video_rows.append(frame_assignments(cls[0], tubes[0], classes, masks).numpy())
        if image_model is not None:
            torch.manual_seed(i)
            image_rows.append(_image_model_assignments(image_model, x, classes, masks).numpy())
    out = {"video": identity_summary(video_rows)}
    if image_model is not None:
        out["image_model_per_frame"] = identity_summary(image_rows)
    return out


# ----------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------
class VideoMask2Former(SegmentationModel):
    """Backbone and :class:`~segviz.models.mask2former.PixelDecoder` per frame ->
    :class:`VideoMaskedTransformerDecoder` over the clip, plus :class:`VideoSetCriterion`.

    Input: clips (B, T, 3, H, W), any T >= 1 (``num_frames`` is the clip length the trainer
    cuts, ``train_frames``). Outputs, as the image model's but with a frame axis after the query:

    * :meth:`forward_heads` / ``forward`` in training mode: ``{"pred_logits": (B, N, K+1),
      "pred_masks": (B, N, T, H/4, W/4), "aux_outputs": [...]}``;
    * ``forward`` in eval mode: per-frame semantic scores at 1/4, (B, T, K, H/4, W/4);
    * :meth:`predict`: per-frame semantic inference at the input size, (B, T, K, H, W);
    * :meth:`loss`: the tube criterion; target (B, T, 2, H, W) class + instance-id maps, (B, T, H, W)
      class maps, or per clip (classes (N,), masks (N, T, H, W)).
    """

    input_kind = "video"          # the model contract's input is (B, T, C, H, W)
    train_target = "panoptic"     # the trainer feeds class + instance-id maps (objects, not classes)
    feature_modules = ("backbone.norms.*", "pixel_decoder", "decoder.heads")

    def __init__(self, backbone: nn.Module, num_classes: int = 40, hidden_dim: int = 256, mask_dim: int = 256,
                 num_queries: int = 100, heads: int = 8, enc_layers: int = 6, enc_ffn_dim: int = 1024,
                 enc_points: int = 4, dec_layers: int = 9, dec_ffn_dim: int = 2048, groups: int = 32,
                 class_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0,
                 no_object_weight: float = 0.1, train_num_points: int = 12544, oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75, num_frames: int = 2, ignore_index: int = 255,
                 in_chans: int = 3):
        super().__init__()
        owner = type(self).__name__
        self.num_classes = check_int(owner, "num_classes", num_classes)
        self.in_chans = check_int(owner, "in_chans", in_chans)
        self.train_frames = check_int(owner, "num_frames", num_frames)
        self.ignore_index = ignore_index
        self.backbone = backbone
        self.pixel_decoder = PixelDecoder(backbone.embed_dims, hidden_dim, mask_dim, heads, enc_ffn_dim, enc_layers,
                                          enc_points, groups)
        self.decoder = VideoMaskedTransformerDecoder(num_classes, hidden_dim, hidden_dim, mask_dim, heads,
                                                     dec_ffn_dim, dec_layers, num_queries)
        self.criterion = VideoSetCriterion(num_classes, class_weight, mask_weight, dice_weight, no_object_weight,
                                           train_num_points, oversample_ratio, importance_sample_ratio)

    def check_input(self, x: Tensor) -> None:
        check_clip_batch(x, self.in_chans, type(self).__name__)

    def predictions(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Every prediction [(class logits (B, N, K+1), tube mask logits (B, N, T, H/4, W/4))], the
        one from the learnable queries first, the final layer's last."""
        self.check_input(x)
        b, t = x.shape[:2]
        features = self.backbone(x.flatten(0, 1))          # the frames as a batch of B·T images
        mask_features, maps = self.pixel_decoder(features)
        return self.decoder(maps, mask_features, t)

    def forward_heads(self, x: Tensor) -> dict:
        preds = self.predictions(x)
        return {"pred_logits": preds[-1][0], "pred_masks": preds[-1][1],
                "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in preds[:-1]]}

    def forward(self, x: Tensor):
        if self.training:
            return self.forward_heads(x)
        classes, masks = self.predictions(x)[-1]
        return video_semantic_inference(classes, masks)

    def predict(self, x: Tensor) -> Tensor:
        """Per-frame semantic inference at the input size: (B, T, K, H, W)."""
        classes, masks = self.predictions(x)[-1]
        b, q, t = masks.shape[:3]
        masks = F.interpolate(masks.flatten(0, 1), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return video_semantic_inference(classes, masks.reshape(b, q, t, *x.shape[-2:]))

    def loss(self, outputs: dict, target) -> Tensor:
        """The tube criterion (weighted sum over all predictions); ``target`` as :func:`video_targets`
        takes it, or per clip (classes (N,), masks (N, T, H, W))."""
        if not isinstance(outputs, dict) or "pred_logits" not in outputs:
            got = f"a tensor of shape {tuple(outputs.shape)}" if isinstance(outputs, Tensor) else type(outputs).__name__
            raise ValueError(f"VideoMask2Former.loss needs the set predictions of forward_heads(x) (what forward "
                             f"returns in training mode), got {got}; call model.train() or use model.forward_heads(x)")
        t = outputs["pred_masks"].shape[2]
        if isinstance(target, Tensor):
            if target.shape[:2] != (outputs["pred_masks"].shape[0], t):
                raise ValueError(f"VideoMask2Former.loss: the target's (B, T) {tuple(target.shape[:2])} does not "
                                 f"match the predictions' {(outputs['pred_masks'].shape[0], t)}")
            targets = video_targets(target, self.ignore_index)
        else:
            targets = [(torch.as_tensor(c).long(), torch.as_tensor(m)) for c, m in target]
            for _, m in targets:
                if m.dim() != 4 or m.shape[1] != t:
                    raise ValueError(f"VideoMask2Former.loss: tube masks must be (N, T={t}, H, W), got {tuple(m.shape)}")
        preds = [(a["pred_logits"], a["pred_masks"]) for a in outputs["aux_outputs"]]
        preds.append((outputs["pred_logits"], outputs["pred_masks"]))
        total, per_layer = self.criterion(preds, targets)
        last = len(per_layer) - 1
        self.last_loss_terms = {f"p{last if i == 0 else i - 1}/{term}": float(value.detach())
                                for i, layer in enumerate(per_layer) for term, value in layer.items()}
        return total


def video_semantic_inference(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """Σ_q softmax(class_q)[c] · σ(mask_q(τ)) per frame: (B, N, K+1), (B, N, T, h, w) -> (B, T, K, h, w)."""
    return torch.einsum("bqc,bqthw->btchw", class_logits.softmax(-1)[..., :-1], mask_logits.sigmoid())


def mask2former_video_swin(
    num_classes: int = 40,
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
    num_frames: int = 2,
    in_chans: int = 3,
) -> VideoMask2Former:
    """Video Mask2Former on the dense Swin backbone (defaults: the official YouTube-VIS 2019
    Swin-T config, 40 classes, 2-frame training clips)."""
    owner = "VideoMask2Former"
    check_int(owner, "num_classes", num_classes)
    check_int(owner, "num_frames", num_frames)
    _check_config(owner, hidden_dim, mask_dim, num_queries, heads, enc_layers, enc_ffn_dim, enc_points, dec_layers,
                  dec_ffn_dim, groups, class_weight, mask_weight, dice_weight, no_object_weight, train_num_points,
                  oversample_ratio, importance_sample_ratio)
    backbone = swin.SwinBackbone(in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio, True, drop_path_rate)
    return VideoMask2Former(backbone, num_classes, hidden_dim, mask_dim, num_queries, heads, enc_layers, enc_ffn_dim,
                            enc_points, dec_layers, dec_ffn_dim, groups, class_weight, mask_weight, dice_weight,
                            no_object_weight, train_num_points, oversample_ratio, importance_sample_ratio,
                            num_frames=num_frames, in_chans=in_chans)


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Our own layout only (no public video checkpoint is converted here): unchanged."""
    return dict(state_dict)


register(
    "mask2former-video-nano", mask2former_video_swin,
    dict(num_classes=6, embed_dim=24, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=7, mlp_ratio=4.0,
         drop_path_rate=0.1, hidden_dim=64, mask_dim=64, num_queries=16, heads=4, enc_layers=1, enc_ffn_dim=128,
         enc_points=4, dec_layers=3, dec_ffn_dim=128, groups=32, class_weight=2.0, mask_weight=5.0, dice_weight=5.0,
         no_object_weight=0.1, train_num_points=1024, oversample_ratio=3.0, importance_sample_ratio=0.75,
         num_frames=4),
    checkpoint_filter_fn,
    description="a tiny video Mask2Former + Swin for CPU notebooks (6 Scenes classes, 16 queries = object tubes, "
                "3 decoder layers, 4-frame training clips)",
)
