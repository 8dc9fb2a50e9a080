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
# # Deformable attention four ways, and video Mask2Former
#
# Attention as the Transformer defines it lets every query read every key. The vision models in this kit
# differ mostly in *which* keys a query may read, and whether the model itself chooses them:
#
# | way | keys a query reads | who chooses them |
# |---|---|---|
# | global attention (ViT; SegFormer's last stage) | all N pixels | fixed |
# | spatial-reduction attention (SegFormer, EDAFormer) | N / r² pooled keys | fixed |
# | window attention (Swin) | the M × M window around it | fixed |
# | deformable convolution (DCNv2) | the 9 taps of a 3 × 3 kernel, each moved | each output pixel, per tap |
# | multi-scale deformable attention (Deformable-DETR, Mask2Former's pixel decoder) | K points per head per level | each query, per point |
# | DAT's deformable attention (Xia et al., CVPR 2022) | one grid of keys, moved as a whole | the map, shared by all queries |
#
# **What you will see:** (1) one query pixel of one scene and where each of the six looks, as initialised
# and as trained on Scenes, with an explorer to move the query; (2) the deformed key grids of DAT, stage by
# stage, over the image. The video sections follow at the end.
#
# The models are the shipped `-nano` weights in `segviz/zoo`: `segformer-nano` (global and reduced
# attention), `upernet-swin-nano` (windows), `mask2former-nano` (Deformable-DETR's sampling in its pixel
# decoder) and `dat-nano` (DAT + UperNet). No model in the kit uses deformable convolution, so section 1
# fits one DCNv2 layer as a probe on frozen SegFormer features, and says so.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ["jpeg"]  # figures as JPEG: keeps the saved notebook small
import time

import torch
import torch.nn.functional as F

import segviz
from segviz.data import Scenes
from segviz.models.dat import DeformableAttention
from segviz.nn.deformable_conv import ModulatedDeformConv2d
from segviz.viz import deformable_ways as ways

start_time = time.perf_counter()
shipped = segviz.zoo.find("dat-nano", "scenes")
size = shipped.card["image_size"]
held_out = Scenes(8, size, seed=0, split="val")
scene = 2
image, label = held_out[scene]
photo = held_out.array(scene)
x = image[None]
QUERY = (150, 100)  # (y, x) pixel of the photo: on the edge of the small shape at the lower left

# %%
# NBVAL_CHECK_OUTPUT
print(shipped.describe())
print(f"scene {scene}: {tuple(x.shape)}, query pixel (y, x) = {QUERY}")

# %% [markdown]
# ## 1. Where does a query look?
#
# Each way in one line, for a query q at position p₀ reading a map x:
#
# - **global**: softmax(q Kᵀ / √d) V over all N keys of the map;
# - **reduced** (SegFormer): the same over the N / r² keys of the map pooled r × r (r = 4 in SegFormer-nano's
#   stage 2, so 64 keys);
# - **window** (Swin): over the M² keys of the M × M window holding p₀ (M = 7);
# - **DCNv2**: y(p₀) = Σₖ wₖ · x(p₀ + pₖ + Δpₖ) · Δmₖ — nine taps pₖ of a 3 × 3 grid, each moved by its own
#   offset Δpₖ and scaled by a modulation Δmₖ = σ(·) ∈ (0, 1), both predicted by a conv on x that starts at
#   zero (so at initialisation the taps sit on the plain 3 × 3 grid and every Δmₖ = ½);
# - **Deformable-DETR**: Σₗ Σₖ Aₗₖ · W x_l(p̂₀ + Δpₗₖ) — K points on each level l around the query's own
#   position p̂₀; offsets and weights A are linear functions of the query (no keys, no dot products);
# - **DAT**: keys and values are sampled at p + Δp, where p is a uniform grid over the map (one key per
#   r × r cell) and Δp = s · tanh(offset network(q)) is predicted from the *whole* query map; every query
#   then attends to all of these keys, with a relative position bias read from a table at the continuous
#   displacements.
#
# The two new blocks first, with their shapes: a DCNv2 layer on a 1/16 feature map of 64 channels, and a
# DAT attention on a 16 × 16 map with keys on an 8 × 8 grid (r = 2), 4 heads in 2 offset groups.

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
dcn_block = ModulatedDeformConv2d(64, 6)
feature = torch.randn(1, 64, 16, 16)
offset, mask = dcn_block.offsets_and_mask(feature)
print(f"DCNv2: {tuple(feature.shape)} -> {tuple(dcn_block(feature).shape)}; offsets {tuple(offset.shape)} "
      f"(Δy, Δx for 9 taps), modulation {tuple(mask.shape)}; at init |Δp| max {offset.abs().max():.1f}, "
      f"Δm = {mask.mean():.2f}")
dat_block = DeformableAttention(64, num_heads=4, groups=2, fmap_hw=(16, 16), stride=2, kernel_size=5)
with torch.no_grad(), segviz.capture(dat_block) as rec:
    out = dat_block(torch.randn(1, 16, 16, 64))
record = rec.records(kind="deformed_grid")[0]
print(f"DAT attention: (1, 16, 16, 64) -> {tuple(out.shape)}; attention {tuple(record.probs.shape)} "
      f"(batch, heads, queries, keys); reference grid {tuple(record.reference.shape)}, "
      f"deformed points {tuple(record.points.shape)} (batch, groups, Hk, Wk, (x, y))")

# %% [markdown]
# Every model below is recorded once on the scene (`segviz.capture`), freshly initialised and with the
# shipped weights. The DCN probe: a `ModulatedDeformConv2d(64 → 6 classes)` on the frozen stage-3 features
# (1/16) of the trained SegFormer-nano, fitted for 100 steps on 16 training scenes with the pixel
# cross-entropy (about ten seconds). Its offsets are learned from Scenes labels, but it is a one-layer
# probe, not a trained network: read its panel as "where a 3 × 3 kernel would rather look on these
# features".

# %%
def recorded(model, kinds):
    with torch.no_grad(), segviz.capture(model.eval(), kinds=kinds) as rec:
        model(x)
    return rec


def init_and_trained(name, kinds):
    torch.manual_seed(0)
    return {"init": recorded(segviz.create_model(name), kinds),
            "trained": recorded(segviz.create_model(name, weights="scenes"), kinds)}


segformer = init_and_trained("segformer-nano", ["attention"])
swin = init_and_trained("upernet-swin-nano", ["window_attention"])
mask2former = init_and_trained("mask2former-nano", ["sampling"])
dat = init_and_trained("dat-nano", ["deformed_grid"])

# the DCN probe on frozen SegFormer-nano stage-3 features
encoder = segviz.create_model("segformer-nano", weights="scenes").eval().encoder
train = Scenes(16, size, seed=0, split="train")
images = torch.stack([train[i][0] for i in range(len(train))])
labels = torch.stack([train[i][1] for i in range(len(train))])
with torch.no_grad():
    features, query_features = encoder(images)[2], encoder(x)[2]
torch.manual_seed(0)
probe = ModulatedDeformConv2d(features.shape[1], 6)
with torch.no_grad():
    dcn_init = probe.offsets_and_mask(query_features)
optimizer = torch.optim.Adam(probe.parameters(), lr=5e-3)
for step in range(100):
    batch = torch.randint(0, len(train), (4,))
    logits = F.interpolate(probe(features[batch]), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(logits, labels[batch], ignore_index=255)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
with torch.no_grad():
    dcn_trained = probe.offsets_and_mask(query_features)
feature_hw = tuple(query_features.shape[-2:])
print(f"DCN probe: last batch loss {loss.item():.2f}; mean |Δp| over the scene "
      f"{dcn_init[0].abs().mean():.2f} -> {dcn_trained[0].abs().mean():.2f} input pixels (1 px = 16 photo px), "
      f"mean Δm {dcn_init[1].mean():.2f} -> {dcn_trained[1].mean():.2f}")


# %%
# NBVAL_CHECK_OUTPUT
def comparison(query):
    """title -> {"init": ..., "trained": ...} for the query pixel (DCN's taps depend on the query)."""
    def taps(pair):
        return ways.dcn_taps(*pair, query, photo.shape[:2], feature_hw)
    return {
        "global (SegFormer stage 4)": {s: segformer[s].attention["encoder.stages.3.blocks.0.attn"] for s in ways.STATES},
        "reduced (SegFormer stage 2)": {s: segformer[s].attention["encoder.stages.1.blocks.0.attn"] for s in ways.STATES},
        "window (Swin stage 2)": {s: swin[s].attention["backbone.stages.1.blocks.0.attn"] for s in ways.STATES},
        "DCNv2 probe (1/16)": {"init": taps(dcn_init), "trained": taps(dcn_trained)},
        "Deformable-DETR (pixel dec.)": {s: mask2former[s].sampling["pixel_decoder.encoder.1.self_attn"]
                                         for s in ways.STATES},
        "DAT (dat-nano stage 3)": {s: dat[s].attention["backbone.stages.2.blocks.1.attn"] for s in ways.STATES},
    }


looks = comparison(QUERY)
for title, pair in looks.items():
    print(f"{title:<30} {ways.describe(pair['trained'])}")

# %% [markdown]
# The figure: for each way, the freshly initialised model above and the trained one below; + is the query
# pixel. Heat is the query's attention weight (for sampling-based ways, each point's weight spread over
# the four cells around it); dots are sampled points, their area the weight (DCN: the modulation). Thin
# white lines join each DCN tap and each DAT key to where it would sit without offsets.
#
# What to look for: the three fixed ways keep their geometry and only change the weights (the trained
# global and reduced maps concentrate on a few keys, the trained window map on a few pixels of the window);
# the learned ways also move their points. Deformable-DETR starts with its points on rays (one direction per
# head, 1 … K steps along it on every level) and training scatters them over the levels; DAT's grid moves
# as a whole, the same for every query, and each query then chooses among its keys by attention.

# %%
ways.where_a_query_looks(photo, looks, QUERY)

# %% [markdown]
# Move the query, pick the head (each panel clamps it to its own number of heads) and the weights (trained,
# init or both). The figure is redrawn for every change; the DCN taps are those of the output pixel under
# the query.

# %%
class MovingQueryExplorer(ways.QueryLooksExplorer):
    """DCN's taps depend on the query pixel: rebuild the ways on every move."""

    def redraw(self):
        self.ways = comparison((self.y.value, self.x.value))
        super().redraw()


MovingQueryExplorer(photo, looks, query=QUERY)

# %% [markdown]
# ## 2. DAT's deformed grid over the image, stage by stage
#
# DAT computes its offsets once per map: the offset network reads the queries of one offset group
# (depthwise 5 × 5 or 3 × 3 conv, stride r, LayerNorm, GELU, 1 × 1 conv to (Δy, Δx)), and the result moves
# the uniform grid of that group's keys, bounded by s · tanh to one key cell (s = 2). In dat-nano stage 3
# has a 16 × 16 query map at 256 px and reads an 8 × 8 grid (r = 2) in 2 groups; stage 4 an 8 × 8 map and
# grid (r = 1) in 4 groups. White: the uniform reference grid; coloured: the grid the keys are sampled on.
# At initialisation (top row) the offset network is already non-zero (its last conv keeps PyTorch's default
# init, as in the official code), so the grid starts jittered; training gives each group its own
# systematic shift.

# %%
ways.deformed_grid_figure(photo, {
    "stage 3 · init": dat["init"].attention["backbone.stages.2.blocks.1.attn"],
    "stage 3 · trained": dat["trained"].attention["backbone.stages.2.blocks.1.attn"],
    "stage 4 · trained": dat["trained"].attention["backbone.stages.3.blocks.1.attn"],
})

# %%
# NBVAL_CHECK_OUTPUT
for state in ways.STATES:
    for name, r in dat[state].attention.items():
        cell = torch.tensor([1 / r.key_hw[1], 1 / r.key_hw[0]])
        moved = ((r.points - r.reference) / cell).abs()  # in key cells, (x, y)
        print(f"{state:<8} {name.split('.attn')[0]:<26} keys {r.key_hw[0]}×{r.key_hw[1]}, groups {r.groups}: "
              f"mean |Δp| {moved.mean():.2f} key cells, at the bound (> 0.95) {(moved > 0.95).float().mean():.0%}")

# %%
# NBVAL_CHECK_OUTPUT
segmentation = segviz.create_model("dat-nano", weights="scenes").eval()
with torch.no_grad():
    predicted = segmentation.predict(torch.stack([held_out[i][0] for i in range(len(held_out))])).argmax(1)
truth = torch.stack([held_out[i][1] for i in range(len(held_out))])
print(f"dat-nano on {len(held_out)} held-out scenes: pixel accuracy {(predicted == truth).float().mean():.3f}; "
      f"shipped card: mIoU {shipped.card['shipped']['val_miou']:.3f} on {shipped.card['shipped']['eval']['n']} "
      f"held-out scenes")

# %% [markdown]
# ## What to take away
#
# - Global, reduced and window attention fix the keys and learn only the weights; DCN, Deformable-DETR
#   and DAT also learn where to read, by bilinear sampling at predicted offsets.
# - DCN moves each of 9 taps for each output pixel; Deformable-DETR moves K points per head and level for
#   each query and weighs them without dot products; DAT moves one key grid per offset group for the whole
#   map and keeps dot-product attention over it.
# - DAT's offsets are bounded (one key cell for s = 2), so its grid deforms but does not collapse.

# %%
print(f"sections 1-2 ran in {time.perf_counter() - start_time:.0f} s")

# %% [markdown]
# ## Video Mask2Former
