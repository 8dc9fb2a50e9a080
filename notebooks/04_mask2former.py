# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Mask2Former: segmentation as a set of masks
#
# Mask2Former (Cheng et al., CVPR 2022) does not classify pixels. It keeps N **object queries**, learned
# vectors that each end up predicting one (class, mask) pair; a semantic map is their sum,
# Σ_q p_q(c) · σ(m_q). Three ideas make it work, and this notebook looks at each on a trained model:
#
# 1. **Set prediction.** N queries, but an image has fewer segments: during training each ground-truth
#    segment is paired with one query by the Hungarian algorithm, the rest must say "no object".
# 2. **Multi-scale deformable attention** in the pixel decoder (from Deformable DETR): each pixel reads
#    only K points per head on each of three feature maps, at offsets it predicts itself.
# 3. **Masked attention** in the transformer decoder: a query may only look inside the mask it predicted
#    one layer earlier.
#
# Plus a training detail that saves memory: the mask losses are computed on a few points, chosen where
# the mask is uncertain, not on every pixel.
#
# **What you will see:** (1) the 16 queries' masks before and after training; (2) one image's matching
# cost and the assignment; (3) the sampling points of one pixel, as initialised and as trained, and an
# explorer for them; (4) one query's masked attention through the three decoder layers; (5) the points
# the loss is computed on; (6) the training curves of every prediction's losses; (7) panoptic inference:
# one segment per object, and how good those segments are (PQ).
#
# The model is `mask2former-nano` (Swin backbone with C = 32, hidden size 64, 16 queries, 2 deformable
# encoder layers, 3 decoder layers) with the weights shipped in `segviz/zoo`, trained on the objects of
# the synthetic Scenes set (six classes; every object its own target, the background one more).

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ["jpeg"]  # figures as JPEG: keeps the saved notebook small
import time

import torch

import segviz
from segviz.data import SCENE_CLASSES, Scenes
from segviz.training import panoptic_quality
from segviz.models import mask2former as m2f
from segviz.viz import mask2former as mviz
from segviz.viz.mask2former_explorer import SamplingExplorer

start_time = time.perf_counter()
torch.manual_seed(0)
model = segviz.create_model("mask2former-nano", weights="scenes").eval()
shipped = segviz.zoo.find("mask2former-nano", "scenes")
card = shipped.card
size = card["image_size"]

# %%
# NBVAL_CHECK_OUTPUT
print(shipped.describe())
print(f"queries N = {model.decoder.query_feat.num_embeddings}, decoder layers {len(model.decoder.layers)}, "
      f"deformable encoder layers {len(model.pixel_decoder.encoder)}, classes K = {model.num_classes}")

# %% [markdown]
# One held-out scene, recorded: every attention of the forward pass (window attention in the backbone,
# deformable sampling in the pixel decoder, masked cross-attention and self-attention in the decoder).
# `predictions` returns what the heads say before the first decoder layer and after each of them. The
# shapes, for a (1, 3, H, W) input: class logits (1, N, K + 1), the extra column being "no object", and
# mask logits (1, N, H/4, W/4).

# %%
# NBVAL_CHECK_OUTPUT
held_out = Scenes(8, size, seed=0, split="val")
scenes_by_object = Scenes(8, size, seed=0, split="val", target="panoptic")  # the same scenes, object by object
scene = 2
image, label = held_out[scene]
photo = held_out.array(scene)
x = image[None]
with torch.no_grad(), segviz.capture(model) as rec:
    preds = model.predictions(x)
class_logits, mask_logits = preds[-1]
print(rec)
print(f"{len(preds)} predictions; class logits {tuple(class_logits.shape)}, mask logits {tuple(mask_logits.shape)}")
semantic = m2f.semantic_inference(class_logits, mask_logits)
print(f"semantic map Σ_q p_q(c)·σ(m_q): {tuple(semantic.shape)}")

# %% [markdown]
# ## 1. Object queries, before and after training
#
# Each query's mask is a dot product of its embedding with the per-pixel embeddings E of the pixel
# decoder, m_q = MLP(q) · E. Freshly initialised (top), the queries are nearly alike and their class
# guesses are noise. Trained (bottom), a few queries have each taken one kind of object; the others answer
# "no object" (grey) and are ignored by the sum.

# %%
torch.manual_seed(0)
untrained = segviz.create_model("mask2former-nano").eval()
with torch.no_grad():
    init_classes, init_masks = untrained.predictions(x)[-1]
mviz.query_predictions_figure(photo, init_classes[0], init_masks[0], SCENE_CLASSES, title="at initialisation")

# %%
mviz.query_predictions_figure(photo, class_logits[0], mask_logits[0], SCENE_CLASSES, title="trained")

# %%
# NBVAL_CHECK_OUTPUT
best = class_logits[0].softmax(-1).argmax(-1)
present = [SCENE_CLASSES[c] for c in label.unique()]
print(f"classes in this scene: {present}")
print("trained queries' classes:", {q: SCENE_CLASSES[c] for q, c in enumerate(best.tolist()) if c < len(SCENE_CLASSES)})

# %% [markdown]
# ## 2. Matching: which query answers for which segment
#
# The ground-truth segments are the objects, one binary mask each (two crosses are two segments), plus
# the background as one more ("stuff"); this is how Mask2Former trains for panoptic and instance
# segmentation (for semantic segmentation alone it would use one segment per class present). The cost of
# giving segment t to query q is
#
# $$C_{qt} = 2\cdot(-p_q(c_t)) + 5\cdot \mathrm{BCE}(m_q, m_t) + 5\cdot \mathrm{Dice}(m_q, m_t),$$
#
# the mask terms on points drawn uniformly (1,024 for the nano model; 12,544 in the paper). The Hungarian
# algorithm (`scipy.optimize.linear_sum_assignment`) picks one query per segment with the least total cost.
# Only those queries are taught a class and a mask; every other query is taught "no object" (weighted 0.1).

# %%
# NBVAL_CHECK_OUTPUT
(target_classes, target_masks), = m2f.panoptic_targets(scenes_by_object[scene][1][None])
torch.manual_seed(0)
costs = m2f.matching_cost(class_logits[0], mask_logits[0], target_classes, target_masks,
                          model.criterion.num_points, model.criterion.weights)
rows, cols = m2f.hungarian_match(costs["total"])
print(f"cost matrix {tuple(costs['total'].shape)} (queries × segments)")
for q, t in zip(rows.tolist(), cols.tolist()):
    print(f"segment {SCENE_CLASSES[target_classes[t]]:<10} -> query {q:2d}  cost {costs['total'][q, t]:6.2f}")

# %%
mviz.matching_figure(costs, (rows, cols), [SCENE_CLASSES[c] for c in target_classes],
                     weights=model.criterion.weights, title=f"held-out scene {scene}")

# %% [markdown]
# ## 3. Deformable attention: where a pixel looks
#
# The pixel decoder refines the backbone's maps at 1/32, 1/16 and 1/8 together. Every pixel of every map
# is a query z_q with a reference point p_q (its centre, in [0, 1]² image coordinates). It predicts, per
# head m, K offsets Δp and K weights A on each level l, and reads the maps only there:
#
# $$\mathrm{MSDeformAttn}(z_q, p_q) = \sum_m W_m \sum_{l} \sum_{k} A_{mlqk}\, W'_m\, x^l\big(p_q + \Delta p_{mlqk}\big),$$
#
# with bilinear reads and one softmax over the L·K points of a head. Cost: N_q · M · L · K reads instead
# of N_q · N_k dot products. At initialisation head m's points lie on a ray in direction 2πm/M, at 1 … K
# pixels of each level, all with weight 1/(L·K) (for the nano model, 4 heads: right, down, left, up).
# The record holds every query's points:

# %%
# NBVAL_CHECK_OUTPUT
layer = "pixel_decoder.encoder.1.self_attn"
sampling = rec.sampling[layer]
print(f"levels {sampling.level_shapes}, queries {sampling.locations.shape[1]} (= Σ h·w)")
print(f"locations {tuple(sampling.locations.shape)} = (batch, queries, heads, levels, points, xy)")
print(f"weights {tuple(sampling.weights.shape)}, sum over levels × points = "
      f"{sampling.weights.sum((-1, -2)).mean():.3f}")

# %% [markdown]
# One pixel on the 1/8 map, head 1, as initialised (top: the straight ray, equal dots) and trained
# (bottom). The star is the reference point, dots are the sampling points (area = weight) with a line to
# the star; the faint grid is that level's pixels, so an offset of one pixel on the 1/32 map is four on
# the 1/8 map.

# %%
QUERY = (150, 100)
init_records = mviz.init_sampling_records(model, x)
mviz.sampling_figure(photo, {"init": init_records[layer], "trained": sampling}, QUERY, head=1,
                     title="encoder layer 2")

# %% [markdown]
# Over all pixels of the 1/8 map: how far the points reach (in pixels of their own level) and how the
# weight is shared between the levels, trained against initialised.

# %%
# NBVAL_CHECK_OUTPUT
def reach_and_share(record):
    fine = record.level_shapes[-1]
    first = sum(h * w for h, w in record.level_shapes[:-1])
    locs = record.locations[0, first:]                               # the 1/8 map's pixels as queries
    ref = record.reference_points[0, first:][:, None, None, :]
    scale = torch.tensor([[w, h] for h, w in record.level_shapes], dtype=locs.dtype)[None, None, :, None, :]
    reach = ((locs - ref[:, :, None]) * scale).norm(dim=-1).mean((0, 1, 3))  # per level, in its pixels
    share = record.weights[0, first:].sum(-1).mean((0, 1))
    return reach, share, fine


for name, record in (("init", init_records[layer]), ("trained", sampling)):
    reach, share, fine = reach_and_share(record)
    print(f"{name:8s} mean distance to the reference (own-level pixels) "
          + ", ".join(f"{mviz.level_name(s, photo.shape[:2])}: {r:.2f}" for s, r in zip(record.level_shapes, reach))
          + " | weight per level " + ", ".join(f"{v:.2f}" for v in share))

# %% [markdown]
# The explorer: choose the encoder layer, the head, which map the query pixel is on, and the pixel; show
# the trained points, the initial ones, or both. Both sets of records are taken once; moving a control
# only redraws.

# %%
explorer = SamplingExplorer(model, photo, x, query=QUERY)
start = time.perf_counter()
explorer.head.value = 2                                   # one update, as a slider move would trigger
print(f"one redraw: {1000 * (time.perf_counter() - start):.0f} ms")
explorer.head.value = 1
explorer

# %% [markdown]
# ## 4. Masked attention through the decoder
#
# A decoder layer is cross-attention → self-attention → FFN, and its cross-attention is masked:
#
# $$X_l = \mathrm{softmax}(\mathcal{M}_{l-1} + Q_l K_l^\top) V_l + X_{l-1},\qquad
#   \mathcal{M}_{l-1}(x, y) = \begin{cases} 0 & \sigma(m_{l-1}(x, y)) \ge 0.5 \\ -\infty & \text{otherwise.}\end{cases}$$
#
# The mask m_{l-1} is what the shared heads predicted before layer l, resized to the map the layer reads
# (layer 0 reads 1/32, layer 1 reads 1/16, layer 2 reads 1/8, round robin). A query attends only to its own
# object; a query whose mask is empty may look everywhere. Below, the query matched to the largest
# non-background segment: its mask before each layer (top; white line at 0.5) and each layer's attention,
# mean of the heads, grey where blocked (bottom).

# %%
# NBVAL_CHECK_OUTPUT
areas = target_masks.flatten(1).sum(1)
objects = [t for t in cols.tolist() if SCENE_CLASSES[target_classes[t]] != "background"]
segment = max(objects, key=lambda t: int(areas[t]))
query = int(rows[cols.tolist().index(segment)])
cross = [rec.attention[f"decoder.layers.{i}.cross_attn"] for i in range(len(model.decoder.layers))]
print(f"query {query} ({SCENE_CLASSES[target_classes[segment]]})")
for i, r in enumerate(cross):
    blocked = r.mask_for(query)
    inside = r.map_for(query)[~blocked].sum()
    print(f"layer {i}: reads {r.k_hw}, {int((~blocked).sum())} of {blocked.numel()} pixels open, "
          f"attention inside the mask {inside:.3f}")

# %%
mviz.masked_attention_layers_figure(photo, cross, [p[1][0, query] for p in preds], query,
                                    title=SCENE_CLASSES[target_classes[segment]])

# %% [markdown]
# ## 5. The loss on a few points
#
# A mask loss on every pixel of N masks per image costs memory. Mask2Former follows PointRend: per matched
# mask, draw 3P random points, keep the 0.75·P whose logit is closest to 0 (the mask is least sure there,
# usually along its edge) and add 0.25·P fresh random points; BCE and Dice are computed on these P points
# only, the prediction and the target both read bilinearly there. P = 12,544 in the paper (112²), 1,024
# for the nano model.

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
logits = mask_logits[0, query]
points = m2f.uncertain_points(logits[None, None], model.criterion.num_points, model.criterion.oversample,
                              model.criterion.importance)[0]
uncertain = int(model.criterion.importance * model.criterion.num_points)
target = target_masks[segment].float()
pred_at = m2f.point_sample(logits[None, None], points[None])[0, 0]
target_at = m2f.point_sample(target[None, None], points[None])[0, 0]
full = torch.nn.functional.interpolate(logits[None, None], size=target.shape, mode="bilinear", align_corners=False)[0, 0]
bce = torch.nn.functional.binary_cross_entropy_with_logits
print(f"{len(points)} points ({uncertain} uncertain) instead of {target.numel()} pixels")
print(f"|logit| at the uncertain points {pred_at[:uncertain].abs().mean():.2f}, "
      f"at the random ones {pred_at[uncertain:].abs().mean():.2f}")
print(f"BCE on the points {bce(pred_at, target_at):.3f}, on the random points only "
      f"{bce(pred_at[uncertain:], target_at[uncertain:]):.3f}, on every pixel {bce(full, target):.3f}")

# %%
mviz.uncertain_points_figure(photo, logits, points, uncertain, target=target,
                             title=f"query {query}")

# %% [markdown]
# The point loss is not an estimate of the full-image loss: it over-weights the uncertain band on
# purpose, which is where the mask still has to improve.
#
# ## 6. Training
#
# Every prediction (from the learnable queries before the first layer, and after each layer) is matched
# and supervised on its own: deep supervision. The trainer logs each prediction's class, mask and Dice loss
# (the model's `last_loss_terms`), and the card keeps them, averaged over 100 stretches of the run. Left:
# the total loss and held-out mIoU; middle: the final prediction's matched losses; right: every
# prediction's weighted loss, the auxiliary losses. The shipped weights were trained in three stages,
# 1000 steps at 128 px, then 300 and 600 at 256 px, each from the previous weights; this card holds the
# last stage, so the curves start at a model that already works (the earlier stages are summarised in its
# `init` entry).

# %%
# NBVAL_CHECK_OUTPUT
terms = card["loss_terms"]
weights = dict(zip(("class", "mask", "dice"), model.criterion.weights))
last = len(model.decoder.layers)
print(f"{len(terms['steps'])} entries, steps {terms['steps'][0]}..{terms['steps'][-1]}; the last entry:")
for i in range(last + 1):
    name = "learnable queries" if i == 0 else f"after layer {i - 1}"
    values = {k: terms[f"p{i}/{k}"][-1] for k in weights}
    print(f"{name:17s} class {values['class']:.3f}  mask {values['mask']:.3f}  dice {values['dice']:.3f}  "
          f"weighted {sum(weights[k] * v for k, v in values.items()):.2f}")

# %%
mviz.loss_terms_figure(card["losses"], card["val_history"], terms, weights=model.criterion.weights,
                       title=f"the last stage: {card['steps']} steps of {card['batch_size']} images at {size} px, "
                             f"lr {card['lr']:g}")

# %% [markdown]
# ## 7. Panoptic inference: one segment per object
#
# Summing the queries into a class map (the semantic inference above) forgets which query made which
# pixel. Panoptic inference keeps them apart: drop the queries whose best class is "no object" or whose
# probability is at most 0.8, give each pixel to the kept query with the largest p_q · σ(m_q), and keep a
# query's segment only if it still holds 80% of its own mask (σ ≥ 0.5). Background segments merge into
# one; every other query is one object. Panoptic quality (Kirillov et al. 2019) scores it: a predicted and
# a true segment of the same class match when their IoU is above 0.5, and
#
# $$\mathrm{PQ} = \underbrace{\frac{\sum_{\text{matches}} \mathrm{IoU}}{|TP|}}_{\text{SQ}} \cdot
#   \underbrace{\frac{|TP|}{|TP| + \tfrac12 |FP| + \tfrac12 |FN|}}_{\text{RQ}},$$
#
# per class, then averaged over the classes.

# %%
# NBVAL_CHECK_OUTPUT
truths = [m2f.panoptic_targets(scenes_by_object[i][1][None])[0] for i in range(len(scenes_by_object))]
batch = torch.stack([held_out[i][0] for i in range(len(held_out))])
for threshold in (0.8, 0.3):  # the paper's object threshold, and a lower one
    pq = panoptic_quality(model.panoptic(batch, stuff_classes=[0], object_threshold=threshold), truths,
                          num_classes=len(SCENE_CLASSES))
    print(f"object threshold {threshold}: PQ {pq['pq']:.3f}  SQ {pq['sq']:.3f}  RQ {pq['rq']:.3f} on "
          f"{len(held_out)} held-out scenes")
    for c, r in pq["per_class"].items():
        print(f"  {SCENE_CLASSES[c]:<10} PQ {r['pq']:.3f}  matched {r['tp']:2d}, false {r['fp']:2d}, missed {r['fn']:2d}")
with torch.no_grad():
    probs = model.predictions(batch)[-1][0].softmax(-1)
best, label_of = probs.max(-1)
objects_said = label_of[(label_of != model.num_classes) & (label_of != 0)]
print(f"queries whose best class is an object: {objects_said.numel()}, with probability "
      f"median {best[(label_of != model.num_classes) & (label_of != 0)].median():.2f}")

# %%
mviz.panoptic_figure(photo, (target_classes, target_masks),
                     model.panoptic(x, stuff_classes=[0], object_threshold=0.3)[0], SCENE_CLASSES,
                     stuff_classes=[0], title=f"held-out scene {scene}, object threshold 0.3")

# %% [markdown]
# What this shows about the nano model. The last layer's prediction is the best of the four, but by
# little: the decoder layers refine what the learnable queries already predict from the pixel decoder's
# features. The class loss hardly falls during this stage, and that is where the model is weak: at the
# paper's object threshold of 0.8 **only the background survives** — the queries that say "an object" are
# never that sure (the median probability above) — so PQ is the background's alone, divided among the six
# classes. At 0.3 some discs, triangles and crosses are found as separate objects, and the masks of those
# that match are decent (SQ); most objects are still missed or misclassified (RQ). The 0.8 default suits
# a Mask2Former trained for days on COCO; this one had about an hour of CPU. Its semantic map fares better
# than its panoptic output because the sum Σ_q p_q(c) σ(m_q) adds up several unsure queries that cover
# the same object.
#
# # What to take away
#
# - Mask2Former predicts a set: N (class, mask) pairs; training pairs queries and segments one-to-one with
#   the Hungarian algorithm on a class + BCE + Dice cost, and the unmatched queries learn "no object".
# - Deformable attention reads K points per head on each level around the pixel's own position; training
#   moves the points off the initial rays and shifts the weight between the levels.
# - Masked attention restricts each query to the mask it predicted one layer earlier.
# - The mask losses use a few points, mostly where the mask is uncertain.
# - Panoptic inference keeps each query's segment apart: one segment per object, scored by PQ.
#
# Next: [00_tour.ipynb](00_tour.ipynb) lists the other chapters.

# %%
print(f"notebook ran in {time.perf_counter() - start_time:.0f} s")
