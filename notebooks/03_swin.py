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
# # Swin Transformer: shifted windows, explained
#
# Swin (Liu et al., ICCV 2021) makes self-attention affordable on dense images by attending only inside
# small M×M windows, and lets information cross the window borders by **shifting** the windows in every
# other block. The shift is done with a cyclic `torch.roll` and an attention mask full of −100s, which is
# what readers of the official code keep asking about. This notebook takes it apart.
#
# **What you will see:**
# 1. the four-stage hierarchy (token grids at 1/4 … 1/32 over a photo) and which 4 tokens patch merging
#    turns into one;
# 2. window attention's cost against global attention, as a table, a plot, and checked by `segviz.flops`;
# 3. the cyclic shift step by step on an 8×8 token map with 4×4 windows (small enough to print): the 9
#    regions, how rolling packs them into 4 windows, each window's mask with its −100 entries, and a
#    trained block where those entries give attention ≈ 1e-44;
# 4. the relative position bias: the (2M−1)² table, the M²×M² index, one head's bias;
# 5. one query pixel through consecutive W-MSA / SW-MSA blocks: how far it reaches as depth grows, with
#    and without the shift;
# 6. an explorer widget: window size, shift on/off, block, head and query pixel.
#
# The maps come from `upernet-swin-nano`: a small Swin (C = 32, two blocks per stage) with the paper's
# window M = 7 and shift s = 3, under a small UperNet head, trained on the synthetic Scenes set (256×256
# images of discs, rings, rectangles, triangles and crosses). Its weights ship with segviz, so nothing
# trains here. It is the weakest model in the kit: trained from scratch at 256 px it kept predicting
# background for as long as this CPU could run it, so it was trained first at 128 px (cheap steps) and
# then at 256 px starting from those weights; the card below lists the stages.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ["jpeg"]  # figures as JPEG: keeps the saved notebook small
import time

import torch

import segviz
from segviz import viz
from segviz.data import SCENE_CLASSES, Scenes, sample_image
from segviz.viz import swin as sviz
from segviz.viz.swin_explorer import SwinExplorer, swin_records

torch.manual_seed(0)
photo = sample_image("astronaut", size=224)           # .array (224, 224, 3) uint8, .tensor (1, 3, 224, 224)
model = segviz.create_model("upernet-swin-nano", weights="scenes").eval()
# Swin: C = 32, depths (2, 2, 2, 2), heads (1, 2, 4, 8), window M = 7, shift 3; UperNet: 64 channels, 6 classes
shipped = segviz.zoo.find("upernet-swin-nano", "scenes")   # its card: shipped.card

# %% [markdown]
# What the shipped weights' model card says (how they were trained, and their mIoU on held-out scenes),
# and the model on one held-out scene (truth and prediction coloured over a pale copy of the scene, so
# that the objects' own colours cannot pass for class colours):

# %%
# NBVAL_CHECK_OUTPUT
print(shipped.describe())

# %%
held_out = Scenes(100, 256, seed=0, split="val")      # the held-out scenes of the card's mIoU
scene, truth = held_out[37]
with torch.no_grad():
    scene_logits = model(scene[None])
pale = (0.3 * held_out.array(37).mean(-1, keepdims=True) + 0.7 * 255).astype("uint8").repeat(3, -1)
viz.prediction_panels([(held_out.array(37), torch.zeros_like(truth), "held-out scene 37"),
                       (pale, truth, "truth"), (pale, scene_logits, "prediction")], SCENE_CLASSES)

# %% [markdown]
# One recorded forward pass on a 224×224 photo (Swin's own input size, at which every stage holds a whole
# number of windows; the model has no absolute positions, so it runs at any size): every one of the 8
# blocks' window attention, and each stage's output. Stage 1 is a 56×56 token map, cut into 8×8 windows of
# 7×7 tokens. Here is the punchline first: in a **shifted** block (SW-MSA), the window of a query near the
# top-left corner (cyan +) is made of four pieces at the four corners of the picture (cyan outlines): the
# shift wraps around the edges. Sections 3 and 5 explain why, and why the model does not actually mix
# those pieces.

# %%
with torch.no_grad(), segviz.capture(model) as rec:
    logits = model(photo.tensor)
print(rec)
viz.attention_overlay(photo.array, rec.attention["backbone.stages.0.blocks.1.attn"], (4, 4),
                      title="stage 1, block 2 (SW-MSA)")

# %% [markdown]
# ## 1. The hierarchy and patch merging
#
# Like a CNN, Swin builds a pyramid. The image is cut into 4×4 patches, each embedded linearly into C
# channels (stage 1, 1/4 resolution); each later stage starts with **patch merging**, which concatenates
# every 2×2 group of neighbouring tokens (4C channels) and projects them to 2C:
#
# $$z = \mathrm{Linear}_{4C \to 2C}\big(\mathrm{LN}([x_0, x_1, x_2, x_3])\big),\quad
# x_0 = x[0{::}2, 0{::}2],\ x_1 = x[1{::}2, 0{::}2],\ x_2 = x[0{::}2, 1{::}2],\ x_3 = x[1{::}2, 1{::}2].$$
#
# So the stages run at strides 4, 8, 16, 32 with C, 2C, 4C, 8C channels, the shapes a segmentation
# decoder (here UperNet) expects. The order of $x_0 \dots x_3$ (top-left, **bottom-left**, top-right,
# bottom-right) looks arbitrary; it is the official one, and it matters when loading weights.

# %%
# NBVAL_CHECK_OUTPUT
from segviz.models.swin import PatchEmbed, PatchMerging

embed, merge = PatchEmbed(3, 96), PatchMerging(96)
tokens = embed(torch.zeros(1, 3, 224, 224))
print("PatchEmbed, 224x224 image:", tuple(tokens.shape), "(B, h, w, C), channels last")
print("PatchMerging:", tuple(merge(tokens.permute(0, 3, 1, 2)).shape))
with torch.device("meta"):                              # shapes only, no memory, no compute
    swin_t = segviz.create_model("upernet-swin-t").backbone
    maps = swin_t(torch.zeros(1, 3, 224, 224))
print("Swin-T pyramid at 224x224:", " -> ".join(f"{m.shape[2]}²×{m.shape[1]}" for m in maps))
print("merged token (0, 0) of a 4x4 map is the concatenation of input tokens",
      sviz.merging_order(merge)[0, 0].tolist(), "(flat index y*4 + x)")

# %% [markdown]
# The token grids of `upernet-swin-nano` on the photo (white: one cell per token; cyan: the 7×7-token
# windows attention stays inside). At 224×224 the maps are 56², 28², 14² and 7² tokens: 8×8, 4×4, 2×2
# windows and a single one in stage 4, every map a whole number of windows (224 = 32·7, which is why Swin's
# image size is 224). At other sizes each map is zero-padded right and bottom to a multiple of M: on the
# 256×256 scenes the model was trained on, stage 1 is 64×64, padded to 70×70 (10×10 windows), and stage 4
# is 8×8, padded to 14×14 (2×2 windows, mostly padding).

# %%
stages = {f"stage {i + 1}": rec.features[f"backbone.norms.{i}"] for i in range(4)}
sviz.hierarchy_figure(photo.array, stages, window=7)

# %% [markdown]
# Which four tokens become one: a zoom on the astronaut's eye. Every stage-1 token has a role by its
# row and column parity; the 2×2 group in the white box becomes one stage-2 token whose 4C channels are
# x0, x1, x2, x3 in that order. The middle panel is not drawn from the formula above: tokens carrying
# their own index were passed through the trained model's `PatchMerging` and the concatenation was read
# off its LayerNorm's input.

# %%
sviz.patch_merging_figure(photo.array, model.backbone.stages[1].downsample, at=(10, 24))

# %% [markdown]
# ## 2. Window attention and its cost
#
# Global self-attention (MSA) over an h×w map compares every token with every other. Swin's W-MSA cuts the
# map into non-overlapping M×M windows and attends inside each one. For C channels (the projections cost
# 4hwC² either way):
#
# $$\Omega(\mathrm{MSA}) = 4hwC^2 + 2(hw)^2C, \qquad \Omega(\text{W-MSA}) = 4hwC^2 + 2M^2hwC .$$
#
# Quadratic in the number of tokens hw versus linear (M is fixed, 7 in Swin-T).

# %%
# NBVAL_CHECK_OUTPUT
from segviz.models.swin import window_partition, window_reverse

x = torch.randn(1, 56, 56, 96)                          # Swin-T stage 1 at 224: 56x56 tokens, C = 96
windows = window_partition(x, 7)
print("window_partition:", tuple(x.shape), "->", tuple(windows.shape), "= (B·64 windows, 7·7 tokens, C)")
print("window_reverse gives the map back:", torch.equal(window_reverse(windows, 7, 56, 56), x))

# %% [markdown]
# The two formulas for stage 1 of Swin-T (C = 96, M = 7) at three image sizes, in GMACs (multiply-adds,
# what the papers call FLOPs):

# %%
# NBVAL_CHECK_OUTPUT
cost = sviz.window_cost_rows((224, 512, 1024), dim=96, window=7)
print(viz.format_table(cost, float_format="{:.3f}"))

# %% [markdown]
# Checked against the counter: `segviz.flops` on Swin-T at 224 counts its first block's attention
# (qkv, QKᵀ, attention·V, output projection) and gives Ω(W-MSA) exactly. Global attention is W-MSA with
# one window covering the whole 56×56 map, so the same backbone built with M = 56 gives Ω(MSA):

# %%
# NBVAL_CHECK_OUTPUT
from segviz.models.swin import SwinBackbone

with torch.device("meta"):
    counted_w = segviz.flops(segviz.create_model("swin-t"), (1, 3, 224, 224), device="meta")
    counted_g = segviz.flops(SwinBackbone(window_size=56), (1, 3, 224, 224), device="meta")
print(f"W-MSA, segviz.flops: {counted_w.per_module['stages.0.blocks.0.attn']:.6f} GMACs, "
      f"formula: {cost[0]['Ω(W-MSA) GMACs']:.6f}")
print(f"MSA,   segviz.flops: {counted_g.per_module['stages.0.blocks.0.attn']:.6f} GMACs, "
      f"formula: {cost[0]['Ω(MSA) GMACs']:.6f}")

# %%
sviz.window_cost_figure(dim=96, window=7)

# %% [markdown]
# ## 3. The cyclic shift, step by step
#
# Windows that never move never exchange information. So consecutive blocks alternate: block l uses the
# regular partition (W-MSA), block l+1 the partition moved by s = ⌊M/2⌋ tokens (SW-MSA):
#
# $$\hat z^l = \text{W-MSA}(\mathrm{LN}(z^{l-1})) + z^{l-1},\qquad
# \hat z^{l+1} = \text{SW-MSA}(\mathrm{LN}(z^l)) + z^l$$
#
# (each followed by an MLP). Moved windows would be cut at the edges into more, smaller windows. Instead,
# the official code **rolls** the map by −s on both axes, so that the pieces at the edges fill whole
# windows again, attends in the regular windows of the rolled map, and rolls back by +s. A rolled window
# may then contain pieces that were far apart in the image; a **mask** adds −100 to the attention score
# between tokens of different pieces ("regions"), so after the softmax they ignore each other:
#
# $$\mathrm{Attention} = \mathrm{SoftMax}\big(QK^\top/\sqrt d + B + \mathrm{mask}\big)V,\qquad
# \mathrm{mask}_{ij} = \begin{cases} 0 & \text{same region} \\ -100 & \text{otherwise.} \end{cases}$$
#
# The smallest case, with a window smaller than the model's so that every matrix fits on the screen: an
# 8×8 token map, M = 4, s = 2 (the model's M = 7, s = 3 on a 14×14 map works the same way, with 49×49
# masks). The mask comes from the model's own `shifted_window_mask`; the regions below are read back from
# it (tokens the mask lets attend to each other), numbered as the official code numbers them.

# %%
# NBVAL_CHECK_OUTPUT
from segviz.models.swin import shifted_window_mask

mask = shifted_window_mask(8, 8, window=4, shift=2)
print("mask:", tuple(mask.shape), "= (4 windows, 16 query tokens, 16 key tokens), values", mask.unique().tolist())
print("regions of the rolled 8x8 map:")
print(sviz.region_labels(8, 8, window=4, shift=2))
print("mask of window 1 (regions 1 and 2), rows = queries:")
print(mask[1].int().numpy())

# %% [markdown]
# The same on the photo, cut into 8×8 tokens: (a) block l's four windows; (b) block l+1's windows moved by
# two tokens: along the edges they are cut into 9 pieces (region number; in brackets the window each piece
# belongs to: the four corners together form window w3); (c) after `torch.roll(x, (−2, −2))`: the top two
# token rows moved to the bottom, the left two columns to the right, and the pieces fill 4 whole windows.
# Window w3 now holds four regions that were the photo's four corners: that is what the mask must separate.

# %%
sviz.cyclic_shift_figure(sample_image("astronaut", size=256).array, grid=8, window=4, shift=2)

# %% [markdown]
# Each window's mask as a 16×16 matrix (rows: query token, columns: key token, both in row-major order
# inside the 4×4 window; the tick labels are the tokens' regions). Red is −100. Window 0 is one region:
# no mask at all. Window 1 holds regions 1 (left two columns) and 2 (right two columns), so in row-major
# order they alternate every two tokens: that checkerboard is what a printed `attn_mask` looks like.

# %%
sviz.window_masks_figure(grid=8, window=4, shift=2)

# %% [markdown]
# Does −100 really block? e^−100 ≈ 4·10⁻⁴⁴. The trained model, with its own M = 7 and s = 3, on the
# photo shrunk to 56×56 has a 14×14 stage-1 map: the same 2×2 windows and 9 regions as above, with 7×7
# tokens per window. Here is its SW-MSA block's attention in window 3, the one holding four regions. On a
# linear scale the blocked pairs are 0; on a log scale they sit 40 orders of magnitude below the rest.

# %%
crop = sample_image("astronaut", size=56)
with torch.no_grad(), segviz.capture(model, kinds=["window_attention"]) as small:
    model(crop.tensor)
sw = small.attention["backbone.stages.0.blocks.1.attn"]
print("record:", sw.feature_hw, "map, window", sw.window, "shift", sw.shift, "probs", tuple(sw.probs.shape))
blocked = shifted_window_mask(14, 14, 7, 3) < 0
print(f"largest weight between different regions: {sw.probs[0][blocked[:, None].expand_as(sw.probs[0])].max():.1e}")
sviz.masked_attention_figure(sw, window_index=3)

# %% [markdown]
# ## 4. Relative position bias
#
# Swin has no absolute position embedding. Instead each head adds a bias B to the attention scores that
# depends only on the **offset** between query and key inside the window. Offsets range over
# [−(M−1), M−1] on each axis, so a head learns a table B̂ of (2M−1)² values, and B is read from it:
#
# $$\mathrm{Attention}(Q,K,V) = \mathrm{SoftMax}\big(QK^\top/\sqrt d + B\big)V,\qquad
# B_{ij} = \hat B\big[(\Delta y_{ij} + M - 1)(2M-1) + \Delta x_{ij} + M - 1\big].$$

# %%
# NBVAL_CHECK_OUTPUT
from segviz.models.swin import relative_position_index

attn = model.backbone.stages[0].blocks[0].attn
index = relative_position_index(7)
print("table:", tuple(attn.relative_position_bias_table.shape), "= ((2M-1)², heads);  index:", tuple(index.shape),
      ";  B:", tuple(attn.relative_position_bias().shape), "= (heads, M², M²)")
for q in (0, 24):                                       # query tokens (0, 0) and (3, 3), the window's centre
    print(f"index row of query token {divmod(q, 7)}, laid out over the 7x7 key tokens:")
    print(index[q].reshape(7, 7).numpy())

# %% [markdown]
# The trained stage-1 table (head 0), the index that spreads it over every (query, key) pair of a
# window, and the resulting bias. The index matrix repeats in blocks of M: moving the query and the key
# by the same step keeps the offset, so B has the same value along every such diagonal.

# %%
sviz.relative_bias_figure(attn, head=0)

# %% [markdown]
# ## 5. Crossing window borders as depth grows
#
# One block mixes tokens only inside a window. How far does a query pixel's output depend on the image
# after several blocks? Compose the blocks' attention (attention rollout, Abnar & Zuidema 2020): each block
# mixes by A = ½P + ½I (P: its head-averaged attention, I: the skip connection), and after blocks 1…l the
# query depends on the input through row q of A_l ⋯ A_1 (across patch merging, a stage-2 token's weight
# goes to its 2×2 stage-1 tokens).
#
# Top: each block's own attention of a query at the corner of a stage-1 window (cyan: its window, moved
# by the shift in SW-MSA blocks). Bottom: the composed reach, on a log scale, with the stage-1 windows in
# white. After one W-MSA block it fills one window; the SW-MSA block carries it into the three
# neighbouring windows; stage 2's larger windows carry it further.

# %%
QUERY = (54, 54)                    # (y, x) pixel: the last token of a stage-1 and of a stage-2 window
blocks = {f"stage {s + 1} · block {b + 1}": rec.attention[f"backbone.stages.{s}.blocks.{b}.attn"]
          for s in (0, 1) for b in (0, 1)}
sviz.reach_figure(photo.array, blocks, QUERY)

# %% [markdown]
# Without the shift (the same weights, every block run as W-MSA) the reach never leaves the query's
# window in stage 1, and only grows through patch merging. That is the paper's reason for the shift.

# %%
unshifted = swin_records(model, photo.tensor, shift=False)
sviz.reach_figure(photo.array, {k: unshifted[k] for k in blocks}, QUERY)

# %% [markdown]
# Counted: the stage-1 tokens whose weight in the query's reach is at least 1% of the peak, after blocks
# 1 to 4 (one 7×7 window is 49 tokens; the whole 56×56 map is 3136).

# %%
# NBVAL_CHECK_OUTPUT
for label, reach in (("with the shift", sviz.attention_reach(list(blocks.values()), QUERY, (224, 224))),
                     ("without", sviz.attention_reach([unshifted[k] for k in blocks], QUERY, (224, 224)))):
    print(f"{label:15s} stage-1 tokens >= 1% of the peak after blocks 1..4:",
          [int((r >= 0.01 * r.max()).sum()) for r in reach])

# %% [markdown]
# ## 6. Explore
#
# Pick a window size (the trained M = 7, or a smaller one: a window m < M reads the central (2m−1)²
# offsets of the bias table, as the official classifier does when a map is smaller than its window), turn
# the shift off, choose a block, a head and a query pixel. Left: that block's attention of the query;
# right: the query's reach through all blocks up to it. Each (window, shift) setting runs the model once,
# the first time it is chosen; everything else only redraws.

# %%
explorer = SwinExplorer(model, photo.array, photo.tensor, query=QUERY)
start = time.perf_counter()
explorer.y.value = 60                                     # one update, as a slider move would trigger
print(f"one redraw: {1000 * (time.perf_counter() - start):.0f} ms")
explorer.y.value = QUERY[0]
explorer.block.value = "stage 1 · block 2"              # start on a shifted block
explorer

# %% [markdown]
# ## What to take away
#
# - Attention inside M×M windows costs 2M²hwC instead of 2(hw)²C: linear in the image area.
# - Shifting the windows by ⌊M/2⌋ in every other block lets information cross the borders; the roll keeps
#   the number of windows fixed, and the −100 mask keeps pieces that were not neighbours apart
#   (e^−100 ≈ 4·10⁻⁴⁴).
# - Position enters through a learned bias per relative offset, (2M−1)² values per head.
#
# Next: [00_tour.ipynb](00_tour.ipynb) lists the other chapters.
