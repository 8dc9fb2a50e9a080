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
# # Comparing the architectures: effective receptive fields, attention distance, cost against quality
#
# The earlier notebooks took one architecture at a time. This one puts the six trained nano models of
# the kit side by side — **SegFormer**, **EDAFormer**, **Swin + UperNet**, **DAT + UperNet** (Swin-style
# windows, then deformable attention in stages 3–4), **Mask2Former** (Swin backbone) and **DeepLabv3+** —
# and asks the same questions of each.
#
# **What you will see:**
# 1. the SegFormer paper's Figure 3 — effective receptive fields (ERF) per encoder stage and for the head,
#    DeepLabv3+ against SegFormer — reproduced on the trained nano models, then the same for the others,
#    and the same again at initialisation, to see what training changed;
# 2. the mean attention distance of every head of every transformer layer (the ViT paper's plot);
# 3. cost against quality: an interactive scatter of GMACs against held-out mIoU, and the published
#    configurations' parameters and GMACs;
# 4. one query pixel and where each model looks from it: reduced attention, a shifted window, a deformed
#    key grid, deformable sampling points, a receptive field.
#
# The models are the `-nano` variants with the weights shipped in `segviz/zoo`, trained briefly on the
# synthetic Scenes set (256 px, six classes); every number below comes from these small models, not from
# the papers' large ones. Interactive charts are plotly, drawn by JupyterLab's plotly extension without
# any network access; each also carries a static picture for readers of the saved file.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ["jpeg"]  # figures as JPEG: keeps the saved notebook small
import pathlib
import time

import torch

import segviz
from segviz.data import SCENE_CLASSES, Scenes
from segviz.models import mask2former as m2f
from segviz.viz import compare as cviz

start_time = time.perf_counter()
torch.manual_seed(0)
NAMES = ["segformer-nano", "edaformer-nano", "upernet-swin-nano", "dat-nano", "mask2former-nano",
         "deeplabv3plus-nano"]
models = {name: segviz.create_model(name, weights="scenes").eval() for name in NAMES}

# %%
# NBVAL_CHECK_OUTPUT
for name in NAMES:
    print(segviz.zoo.find(name, "scenes").describe())

# %% [markdown]
# ## 1. Effective receptive fields, stage by stage
#
# The **effective receptive field** (Luo et al. 2016) of a unit is the gradient of that unit with respect
# to the input pixels: how much each pixel actually moves it. `segviz.erf(model, images, layer)` takes the
# centre unit of `layer`'s output map, averages |gradient| over the images and divides by the maximum. The
# SegFormer paper (Xie et al. 2021, Fig. 3) shows it for the four encoder stages and the decoder head of
# DeepLabv3+ and SegFormer on Cityscapes, and reads it so: *DeepLabv3+'s ERF stays small even at stage 4;
# SegFormer's early stages are local, like convolutions, its stage 4 is non-local, and its head adds
# strong local attention on top of the non-local context.*
#
# Here: 20 held-out Scenes images at **128×128** (to keep the notebook fast: 25 gradients per model; the
# models were trained at 256), stages 1–4 and the head (the model's semantic logits at the input size) of
# every model. Under each panel, the *high-contribution area ratio*: the share of the image's pixels whose
# contribution is at least 20% of the maximum.

# %%
# the module whose output is each stage's map; stages are measured on the sub-network that computes them
# (the same gradients as through the whole model, without running the decoder), the head on the whole model
STAGES = {
    "segformer-nano": ("encoder", [f"stages.{i}" for i in range(4)]),
    "edaformer-nano": ("encoder", [f"stages.{i}" for i in range(4)]),
    "upernet-swin-nano": ("backbone", [f"norms.{i}" for i in range(4)]),
    "dat-nano": ("backbone", [f"norms.{i}" for i in range(4)]),
    "mask2former-nano": ("backbone", [f"norms.{i}" for i in range(4)]),
    "deeplabv3plus-nano": ("backbone", [f"layer{i}" for i in range(1, 5)]),
}
COLUMNS = ["stage 1", "stage 2", "stage 3", "stage 4", "head"]
ERF_SIZE = 128
erf_set = Scenes(20, ERF_SIZE, seed=0, split="val")
erf_images = torch.stack([erf_set[i][0] for i in range(len(erf_set))])


def erf_row(model, name):
    part, layers = STAGES[name]
    row = {col: segviz.erf(getattr(model, part), erf_images, layer) for col, layer in zip(COLUMNS, layers)}
    row["head"] = segviz.erf(model, erf_images)  # the semantic logits (model.predict) at the centre pixel
    return row


ORDER = ["deeplabv3plus-nano", "segformer-nano", "edaformer-nano", "upernet-swin-nano", "dat-nano", "mask2former-nano"]
t0 = time.perf_counter()
trained_erfs = {name: erf_row(models[name], name) for name in ORDER}
erf_seconds = time.perf_counter() - t0
fig = cviz.erf_grid_figure(trained_erfs, title=f"ERF of the trained nano models ({len(erf_set)} held-out "
                                               f"{ERF_SIZE}-px scenes)")
figures = pathlib.Path("figures")
figures.mkdir(exist_ok=True)
fig.savefig(figures / "07_erf_grid.png", dpi=fig.dpi, bbox_inches="tight")
fig

# %%
def area_table(erfs, threshold=0.2):
    print(f"share of the image at >= {threshold:g} x max (%)")
    print(f"{'':<20}" + "".join(f"{c:>9}" for c in COLUMNS))
    for name, row in erfs.items():
        print(f"{name:<20}" + "".join(f"{100 * row[c].area[threshold]:>9.2f}" for c in COLUMNS))


area_table(trained_erfs)

# %% [markdown]
# The paper's pair **at initialisation** (`create_model` without weights, seeded), on the same images.
# (Add names to the list for the others; each costs about as much as its row above.)

# %%
init_erfs = {}
for name in ["deeplabv3plus-nano", "segformer-nano"]:
    torch.manual_seed(0)
    init_erfs[name] = erf_row(segviz.create_model(name).eval(), name)
cviz.erf_grid_figure(init_erfs, title="ERF at initialisation (seeded random weights, same images)")

# %%
area_table(init_erfs)

# %% [markdown]
# **What the figure shows, against the paper's reading.** Read the tables with the pictures; these are
# nano models on 128-px Scenes, not the paper's B-sized models on 1024-px Cityscapes.
#
# * *Local early stages:* yes, for every model. Stage 1 covers about 1% of the image or less in all six,
#   the transformers no more than DeepLabv3+: overlapping patch embedding (SegFormer, EDAFormer) and
#   windows (Swin) keep stage 1 local, as the paper says of SegFormer.
# * *A non-local stage 4 for SegFormer, a small one for DeepLabv3+:* yes. SegFormer's stage-4 field spreads
#   over about half the image (EDAFormer's too), several times DeepLabv3+'s stage 4, which stays a square
#   blob around the centre inside its theoretical field (75 px per unit at stride 16, section 4).
# * *SegFormer's head: strong local attention besides the non-local context:* yes in shape — its head field
#   is much more concentrated than its stage 4 (the 1/4-resolution stage-1 path dominates a pixel's
#   logits), a bright core with a faint tail over the whole image. DeepLabv3+'s head is *not* small here:
#   ASPP's rates and image pooling reach across a 128-px image, and by the 20% ratio the two heads are
#   about the same size. The paper's contrast, measured on 1024-px images where DeepLab's field covers a
#   far smaller share, does not carry over to images this small.
# * *Swin* (UperNet, Mask2Former) is not in the paper's figure. At 128 px its stage-3 and stage-4 maps (8×8,
#   4×4) are smaller than one 7×7 window plus padding, so the window geometry differs from the 256-px
#   training; its trained fields are patchy (a 4×4 patch grid shows through) with a few strong pixels. In
#   Swin + UperNet that keeps the 20% ratio low at every stage although the contributions reach far (see
#   the pictures); Mask2Former's Swin backbone has a broad square stage-4 field (11.6%), but its head's
#   field is the smallest of all (0.6%).
# * *DAT* is not in the paper's figure either. Its stages 1–2 are Swin's shifted windows, and so are its
#   fields there (window-shaped squares, 0.39% and 1.36% against Swin's 0.39% and 1.21–1.31%). Stage 3 is
#   still a blocky square core; stage 4 spreads over much of the image (10.5%: about DeepLabv3+'s 12.5% and
#   Mask2Former's 11.6%, far above Swin + UperNet's 1.2%, far below SegFormer's 58%). A wide stage 4 is
#   thus not DAT's alone — Mask2Former's backbone, windows only, reaches as far — and the figure cannot
#   credit it to the deformable blocks. The clearer difference is the head: with the same UperNet head as
#   Swin + UperNet, DAT's has a core and a faint tail over the whole image (4.6% against 1.3%). Caveats: as
#   for Swin, 128 px changes the geometry (stage 3's deformed block reads only a 4×4 key grid here), and
#   DAT-nano is the weakest model here by mIoU (section 3): this is the field of a briefly trained model.
# * *What training changes:* at initialisation SegFormer's stage 4 is already broad (attention starts
#   near uniform) and training widens it further; its head goes from a small square to a broader core with
#   a tail. DeepLabv3+ changes least: its fields are set by its convolutions' geometry.

# %% [markdown]
# ## 2. Attention distance, layer by layer and head by head
#
# Dosovitskiy et al. (ViT) plot, for every head of every layer, the **mean attention distance**: the
# distance in input pixels between a query and the keys it attends to, weighted by the attention,
# averaged over queries and images — the transformer's analogue of a receptive-field size.
# `segviz.attention_distance(records, image_size)` computes it for every record kind: global or reduced
# attention (SegFormer, EDAFormer: keys on the shrunken grid, each at the centre of the patch it pools),
# window attention (Swin, and DAT's first blocks, with the shift undone and the padding's queries left
# out), DAT's deformed key grid (each query's distance to the deformed points it reads) and deformable
# sampling (Mask2Former's pixel decoder: each sampling point's distance from its query's reference point).
# Object queries have no position and are left out.
#
# Four held-out scenes at 256 px (the training size); the dashed line is what a perfectly uniform attention
# over the image would give.

# %%
AD_SIZE = 256
ad_set = Scenes(4, AD_SIZE, seed=0, split="val")
ad_images = torch.stack([ad_set[i][0] for i in range(len(ad_set))])
records, distances = {}, {}
KINDS = ["attention", "window_attention", "deformed_grid", "sampling"]
for name in [n for n in NAMES if n != "deeplabv3plus-nano"]:  # every transformer
    with torch.no_grad(), segviz.capture(models[name], kinds=KINDS) as rec:
        models[name](ad_images)
    records[name] = rec
    distances[name] = segviz.attention_distance(rec, AD_SIZE)


def short(layer):
    parts = layer.replace("encoder.stages.", "s").replace("backbone.stages.", "s").replace(".blocks.", ".")
    parts = parts.replace("decoder.stage", "dec").replace("pixel_decoder.encoder.", "msda").replace(".attn", "")
    return parts.replace(".self_attn", "")


cviz.attention_distance_figure(distances, AD_SIZE,
                               layer_names={n: [short(k) for k in d] for n, d in distances.items()})

# %%
for name, layers in distances.items():
    print(name)
    for layer, d in layers.items():
        print(f"  {layer:<36} {d.kind:<17} " + " ".join(f"{v:6.1f}" for v in d.per_head))

# %% [markdown]
# A mean distance near the dashed line does not by itself mean uniform attention: a head can look at a
# few far-away keys. The normalised entropy of each query's attention (1 = uniform over the keys) tells
# them apart:

# %%
for name, kind in [("segformer-nano", "attention"), ("edaformer-nano", "attention"), ("dat-nano", "deformed_grid")]:
    layers = [(layer, r) for layer, r in records[name].attention.items() if distances[name][layer].kind == kind]
    for layer, record in layers[:5]:
        p = record.probs.double()
        entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).mean() / torch.log(torch.tensor(float(p.shape[-1])))
        print(f"{name:<15} {layer:<32} {p.shape[-1]:3d} keys  entropy / log N = {entropy:.3f}")

# %% [markdown]
# **Reading it.** The window models behave as designed: each Swin stage doubles the distance (its window
# covers twice the pixels), and the heads of a stage agree. (Stage 4's 8×8 map is padded to 14×14 for
# its 7×7 windows, and Swin attends to the padding too: part of those keys sit outside the image.)
# SegFormer's and EDAFormer's reduced attention
# sits on the dashed line in *every* stage: in the ViT paper's terms every head is "global" from the first
# layer on. In SegFormer's first two stages the attention is also nearly uniform (entropy ≈ 1): those heads
# mostly add an average of the image; by stage 4 it is far from uniform yet not local — it picks keys
# anywhere. The locality these models have comes from elsewhere: the overlapping patch embedding and the
# 3×3 depth-wise convolution in every Mix-FFN (which is why section 1 still finds local early stages).
# DAT's window blocks repeat Swin's staircase (about 14, 30 and 55 px in stages 1–3); its two deformed-grid
# blocks (s2.1, s3.1) jump to the dashed line: every query reads the same key grid spread over the whole
# map, so by distance they are as global as SegFormer's. Their entropy (above) is lower than SegFormer's
# and EDAFormer's early stages — the queries weigh the deformed keys unevenly — but by the distance alone
# they are not local.
# Mask2Former's deformable layers look far at the coarse level and near at the fine one; the per-level
# numbers come with the result (`per_level`, `level_weight`):

# %%
for layer, d in distances["mask2former-nano"].items():
    if d.kind == "sampling":
        print(layer)
        for h in range(d.heads):
            levels = ", ".join(f"{d.per_level[h, l]:5.1f} px (weight {d.level_weight[h, l]:.2f})"
                               for l in range(d.per_level.shape[1]))
            print(f"  head {h}: {levels}")

# %% [markdown]
# ## 3. Cost against quality
#
# `segviz.comparison_table(names)` counts the parameters, counts GMACs at 512×512 with `segviz.flops` (the
# papers' "GFLOPs": one multiply-add is one MAC), times one forward pass on this machine's CPU (models run
# interleaved in one process, so the load of other processes falls on all of them alike) and reads the
# held-out mIoU from each model's card (100 held-out Scenes at 256 px, measured on the shipped weights).
# Latency here is the median of three interleaved rounds without a warm-up round (the median drops the
# cold first call), to keep the notebook fast. It moves with the machine's load — on a busy two-core
# machine the ratios moved by up to 2× between runs of this notebook — so read it as a rough order, and
# use `runs=5, warmup=1` or more for numbers to rely on.

# %%
nano_table = segviz.comparison_table(NAMES, input_size=512, runs=3, warmup=0)

# %%
# NBVAL_CHECK_OUTPUT
print(nano_table.text(latency=False))

# %%
for row in nano_table:
    print(f"{row.model:<20} {1e3 * row.latency_s:8.0f} ms   ({row.latency_s / nano_table.row('segformer-nano').latency_s:.1f}x segformer-nano)")

# %% [markdown]
# GMACs do not predict CPU time well at this size: SegFormer-nano needs a sixth of DeepLabv3+-nano's
# multiply-adds but is not six times faster (its attention, layer norms and upsampling are memory-bound).
#
# Hover a point for the model's card (training recipe and time); drag to zoom, double-click to reset. The
# SegFormer-style models sit top left (best mIoU for the fewest GMACs); the Swin-based ones cost more and
# score lower here. DAT-nano is as cheap as the SegFormer-style pair in parameters (0.75 M) and not far in
# GMACs (1.45), but has the lowest held-out mIoU of the six (0.216) — with the shortest training at 256 px
# of all (400 steps, after 2000 at 128 px; see its card), so this says little about the design. Read the card before the architecture: each model got a short CPU training with its own
# recipe (steps, resolution schedule), so the ranking reflects the training budget as much as the design.

# %%
cviz.WithFallback(cviz.cost_quality_figure(nano_table), cviz.cost_quality_static(nano_table))

# %% [markdown]
# The published configurations, on the meta device (nothing computed): our count at 512×512 next to the
# published figure and the input size it was published for. Swin + UperNet's 945 GFLOPs are at 512×2048
# (about 4× the pixels); Mask2Former's 74 include the semantic-inference step (upsampling 100 mask logits to
# the image), which the model's forward pass does not run; DeepLabv3+'s 101 are at 513×513 with output stride 16.
# DAT-T/S/B are the paper's **ImageNet classifiers** (the kit registers DAT's Table 2 configurations, not its
# UperNet segmentation models), published at 224×224: at 512×512 they count far more (512² is 5.2× the
# pixels, and the deformable blocks' key grids grow with the map too), so the second table counts them at
# 224, where our figures and the published 4.6 / 9.0 / 15.8 agree to within 1%.

# %%
# NBVAL_CHECK_OUTPUT
published = segviz.comparison_table(["segformer-b0", "edaformer-t", "upernet-swin-t", "mask2former-swin-t",
                                     "deeplabv3plus-r101", "dat-t", "dat-s", "dat-b"], input_size=512, latency=False)
print(published.text(latency=False))
print()
print(segviz.comparison_table(["dat-t", "dat-s", "dat-b"], input_size=224, latency=False).text(latency=False))

# %% [markdown]
# Plotly where hovering helps: **the Hungarian cost matrix** of Mask2Former on one held-out scene (queries
# × ground-truth segments; hover for each cost, the white frames are the matched pairs), as in notebook 04,
# and **an attention map with its values**: SegFormer's stage-1 attention of the centre query over the
# 8×8 reduced keys.

# %%
scene = 1
label = ad_set[scene][1]
m2f_model = models["mask2former-nano"]
with torch.no_grad():
    class_logits, mask_logits = m2f_model.predictions(ad_images[scene][None])[-1]
(target_classes, target_masks), = m2f.semantic_targets(label[None])
torch.manual_seed(0)
costs = m2f.matching_cost(class_logits[0], mask_logits[0], target_classes, target_masks,
                          m2f_model.criterion.num_points, m2f_model.criterion.weights)
rows, cols = m2f.hungarian_match(costs["total"])
heat = dict(x_labels=[SCENE_CLASSES[c] for c in target_classes], y_labels=[f"query {q}" for q in range(costs["total"].shape[0])],
            title="Mask2Former matching cost (held-out scene)", x_title="ground-truth segment", y_title="query",
            marked=list(zip(rows.tolist(), cols.tolist())), value_name="cost")
cviz.WithFallback(cviz.heatmap_figure(costs["total"], **heat, width=600), cviz.heatmap_static(costs["total"], **heat, width=6))

# %%
seg_stage1 = records["segformer-nano"].attention["encoder.stages.0.blocks.0.attn"]
token = seg_stage1.query_token((AD_SIZE // 2, AD_SIZE // 2), (AD_SIZE, AD_SIZE))
att = seg_stage1.map_for(token, head=0)
heat = dict(title=f"SegFormer stage 1: query {token} (centre pixel), head 0, over the {att.shape[0]}×{att.shape[1]} keys",
            x_title="key column", y_title="key row", value_name="probability")
cviz.WithFallback(cviz.heatmap_figure(att, **heat, colorscale="Inferno", width=560, height=520),
                  cviz.heatmap_static(att, **heat, cmap="inferno", width=5.5))

# %% [markdown]
# ## 4. One query pixel, every model
#
# The centre pixel of a held-out scene at 256 px, and where each model looks from it: SegFormer's and
# EDAFormer's stage-1 attention over the reduced keys (each key a 8×8-pixel patch), the Swin backbone's
# second stage-1 block (a shifted 7×7 window of 4-px tokens), DAT's first deformable block (stage 3,
# `s2.1`: queries on a 16×16 map, all reading one 8×8 grid of keys moved off their reference cell centres;
# heat = the centre query's attention spread where the keys were read, dots = the keys of each offset
# group, area ∝ that group's heads' mean weight), Mask2Former's deformable sampling points
# (its first pixel-decoder layer, the query being the centre pixel of the finest level: dot area ∝ weight,
# colour = level), and DeepLabv3+'s effective receptive field of the centre logit on this image with
# layer 4's theoretical receptive field (dashed).

# %%
centre = (AD_SIZE // 2, AD_SIZE // 2)
one = ad_images[:1]
with torch.no_grad():
    row_records = {}
    for name, module in [("segformer-nano", "encoder.stages.0.blocks.0.attn"),
                         ("edaformer-nano", "encoder.stages.0.blocks.0.attn"),
                         ("upernet-swin-nano", "backbone.stages.0.blocks.1.attn"),
                         ("dat-nano", "backbone.stages.2.blocks.1.attn"),
                         ("mask2former-nano", "pixel_decoder.encoder.0.self_attn")]:
        with segviz.capture(models[name], include=module) as rec:
            models[name](one)
        row_records[f"{name}\n{short(module)}"] = rec.records(module)[-1]
deeplab = models["deeplabv3plus-nano"]
row_records["deeplabv3plus-nano\nhead"] = segviz.erf(deeplab, one)
layer4 = segviz.receptive_field(deeplab, "backbone.layer4", input_size=AD_SIZE)
unit = (AD_SIZE // 16 // 2, AD_SIZE // 16 // 2)
cviz.query_row_figure(ad_set.array(0), row_records, centre, windows={"deeplabv3plus-nano\nhead": layer4.window(unit)},
                      columns=3)

# %% [markdown]
# The same pixel, five ways of looking: SegFormer's and EDAFormer's first stage weigh every 8×8-px patch of
# the image (the strongest key only a few times the weakest: "max/min" under the panel), the Swin block only
# the 7×7 tokens (28×28 px) of its window, DAT's deformable block one grid of keys over the whole image —
# each key moved off its cell centre, the centre query weighing them unevenly (numbers below) and picking
# its strongest keys anywhere in the image — Mask2Former's pixel decoder a dozen points per head scattered
# across all three levels, and DeepLabv3+ mostly a neighbourhood about the size of layer 4's theoretical
# field (dashed), with a faint spread beyond it from ASPP's wide rates and image pooling:

# %%
# NBVAL_CHECK_OUTPUT
print(f"DeepLabv3+ layer 4: {layer4}")

# %%
dat_grid = row_records["dat-nano\ns2.1"]
dat_token = dat_grid.query_token(centre, (AD_SIZE, AD_SIZE))
w = torch.stack([dat_grid.points_for(dat_token, h)[1] for h in range(dat_grid.heads)]).mean(0).sort(descending=True).values
shift = (dat_grid.points[0] - dat_grid.reference).abs() * AD_SIZE  # px along x and y, on the 256-px image
cell = AD_SIZE / dat_grid.key_hw[0]
print(f"DAT s2.1: {w.numel()} keys; centre query (heads averaged): strongest/weakest {w[0] / w[-1]:.1f}, "
      f"top 5 keys carry {w[:5].sum():.0%} (uniform: {5 / w.numel():.0%})")
print(f"          key offsets from their cell centres: mean {shift.mean():.1f} px, max {shift.max():.1f} px "
      f"per axis (a key cell is {cell:.0f} px; the bound, s = 2, is one cell)")

# %%
print(f"ERF of {len(ORDER)} trained models: {erf_seconds:.0f} s; notebook run time: {time.perf_counter() - start_time:.0f} s")
