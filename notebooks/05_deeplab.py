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
# # DeepLabv3+: atrous convolution, receptive fields, ASPP, SPP and the decoder
#
# DeepLab (Chen et al.; v3 2017, v3+ ECCV 2018) keeps a ResNet's view of the image while making its
# feature map finer: the last stages swap their stride for **atrous** (dilated) convolution, an
# **ASPP** head probes the map at several rates at once plus the whole image, and the v3+ **decoder**
# brings back detail from the stride-4 features. This notebook takes the pieces apart.
#
# **What you will see:**
# 1. a 3×3 kernel at rates 1, 2, 4, 6, and the holes that equal rates leave when stacked (gridding);
# 2. output stride 16 against 8: feature-map sizes, GMACs and activation memory on a real photo;
# 3. how the receptive field grows layer by layer through a ResNet-50, with and without dilation, and
#    the *effective* receptive field the trained model actually uses;
# 4. ASPP: each branch's receptive field as a square over the photo, image pooling, the branch outputs;
# 5. SPP: pyramid bins that give one vector length for any input size;
# 6. the decoder: what the 48-channel skip (16 in the nano model) recovers at object boundaries;
# 7. an explorer: rate, output stride, branches on/off and a query pixel.
#
# The model is `deeplabv3plus-nano` (a ResNet with one bottleneck per stage, widths 16–128, ASPP of 64
# channels) with the weights shipped in `segviz/zoo`, trained on the synthetic Scenes set (256 px, six
# classes). It is a small model trained briefly, and a weak segmenter (its card below gives the held-out
# mIoU): most of this notebook is geometry, which does not depend on training; where it measures the
# trained weights (effective fields, switching branches and the skip off), read the numbers with that in
# mind. The published-size models (`deeplabv3plus-r50`, `-r101`) appear where only their geometry or
# cost matters: on the meta device, without weights.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ["jpeg"]  # figures as JPEG: keeps the saved notebook small
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import segviz
from segviz import viz
from segviz.data import SCENE_CLASSES, Scenes, sample_image
from segviz.viz import deeplab as dviz

start_time = time.perf_counter()
torch.manual_seed(0)
photo = sample_image("astronaut", size=256)          # .array (256, 256, 3) uint8, .tensor (1, 3, 256, 256)
model = segviz.create_model("deeplabv3plus-nano", weights="scenes").eval()
shipped = segviz.zoo.find("deeplabv3plus-nano", "scenes")

# %%
# NBVAL_CHECK_OUTPUT
print(shipped.describe())
print(f"ASPP rates {model.aspp.rates} at output stride {model.output_stride}")

# %% [markdown]
# A held-out scene, its true classes and the model's prediction (coloured over a pale copy of the scene):

# %%
held_out = Scenes(32, 256, seed=0, split="val")
images = torch.stack([held_out[i][0] for i in range(len(held_out))])
truths = torch.stack([held_out[i][1] for i in range(len(held_out))])
scene = 5
with torch.no_grad():
    logits = model.predict(images[scene:scene + 1])
viz.prediction_panels([(held_out.array(scene), truths[scene], "held-out scene: truth"),
                       (held_out.array(scene), logits, "deeplabv3plus-nano")], SCENE_CLASSES)

# %% [markdown]
# ## 1. Atrous convolution
#
# A k×k convolution at rate r reads its k² taps r pixels apart:
#
# $$y[i] = \sum_{k} x[i + r\,k]\, w[k], \qquad k' = r(k-1) + 1 .$$
#
# The kernel covers k' pixels per side with the same k² weights, and padding r(k−1)/2 (= r for a 3×3)
# keeps the map's size. Rate 1 is an ordinary convolution.

# %%
# NBVAL_CHECK_OUTPUT
x = torch.zeros(1, 1, 33, 33)
for rate in (1, 2, 4, 6):
    atrous = nn.Conv2d(1, 1, 3, padding=rate, dilation=rate)
    print(f"rate {rate}: k' = {rate * 2 + 1:2d}, padding {rate}: {tuple(x.shape[-2:])} -> {tuple(atrous(x).shape[-2:])}")

# %%
dviz.atrous_taps_figure((1, 2, 4, 6))

# %% [markdown]
# **Gridding.** Stack atrous convolutions with the same rate and one output unit reads only every r-th
# pixel: with rates (2, 2, 2) all taps sit on even offsets and 120 of the 169 pixels in the field are
# never read. Rates without a common factor (1, 2, 3; "hybrid dilated convolution", Wang et al. 2018)
# fill the square. DeepLabv3's "multi-grid" (1, 2, 4) inside a stage is another answer; torchvision's
# ResNet, used here, runs the first block of a dilated stage at the previous rate and the rest at the new
# one, which also mixes rates.

# %%
# NBVAL_CHECK_OUTPUT
for rates in [(2, 2, 2), (1, 2, 3), (1, 2, 4)]:
    counts = dviz.gridding_counts(rates)
    print(f"rates {rates}: field {counts.shape[0]}x{counts.shape[1]}, pixels never read: {(counts == 0).sum()}")

# %%
dviz.gridding_figure({"rates 2, 2, 2": (2, 2, 2), "rates 1, 2, 3 (HDC)": (1, 2, 3)})

# %% [markdown]
# ## 2. Output stride 16 or 8
#
# A ResNet classifier ends at output stride 32: its layer4 map of a 513×513 image is 17×17. DeepLab
# replaces the stride of layer4 (output stride 16) or of layer3 and layer4 (output stride 8) with
# dilation; the weights keep their shapes, so one set of weights runs at either stride. DeepLabv3 trains
# at 16 and evaluates at 8 for a little more accuracy, at a cost. The ASPP rates double at 8, (12, 24, 36)
# instead of (6, 12, 18), so that they keep covering the same image distances.
#
# Below, the trained nano model on the astronaut at 512×512, at both strides (same weights), and the
# paper-size DeepLabv3+ ResNet-101 at 513×513 (meta device: shapes and costs only). "Activations" is the
# memory of every module's output in float32 (what a training step keeps for the backward pass, roughly).

# %%
def activation_report(net, x):
    """Map sizes of layer1..layer4, GMACs, and the float32 MiB of every leaf module's output
    (each tensor once: an in-place ReLU returns the tensor it was given)."""
    sizes, outputs = {}, {}

    def hook(name):
        def record(_m, _i, out):
            if name.startswith("backbone.layer") and name.count(".") == 1:
                sizes[name.split(".")[1]] = tuple(out.shape[-2:])
            else:
                outputs[id(out)] = out
        return record

    stages = [f"backbone.layer{i}" for i in range(1, 5)]
    handles = [m.register_forward_hook(hook(n)) for n, m in net.named_modules()
               if n in stages or (n and not list(m.children()))]
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    gmacs = segviz.flops(net, tuple(x.shape), device="meta").total
    return sizes, gmacs, sum(t.numel() * 4 for t in outputs.values()) / 2**20


big_photo = sample_image("astronaut", size=512)
model8 = segviz.create_model("deeplabv3plus-nano", weights="scenes", output_stride=8).eval()
rows = []
for label, net, x in [("nano, OS 16, 512 px photo", model, big_photo.tensor),
                      ("nano, OS 8, 512 px photo", model8, big_photo.tensor)]:
    rows.append((label, *activation_report(net, x)))
for os_ in (16, 8):
    with torch.device("meta"):
        r101 = segviz.create_model("deeplabv3plus-r101", output_stride=os_).eval()
        rows.append((f"R101, OS {os_}, 513 px", *activation_report(r101, torch.zeros(1, 3, 513, 513))))

# %%
# NBVAL_CHECK_OUTPUT
print(f"{'model':<27} {'layer1':>8} {'layer2':>8} {'layer3':>8} {'layer4':>8} {'GMACs':>8} {'activations':>12}")
for label, sizes, gmacs, mib in rows:
    maps = " ".join(f"{'x'.join(map(str, sizes[k])):>8}" for k in ("layer1", "layer2", "layer3", "layer4"))
    print(f"{label:<27} {maps} {gmacs:8.1f} {mib:9.0f} MiB")

# %% [markdown]
# Output stride 8 quadruples the layer3/layer4 maps and with them most of the compute: about 2.9× the
# GMACs for R101 (2.3× for the nano model, whose ASPP and decoder weigh more) and over twice the
# activation memory. The held-out scores of the same weights at both strides:

# %%
# NBVAL_CHECK_OUTPUT
def held_out_miou(net, extra=None):
    with torch.no_grad():
        pred = net.predict(images).argmax(1)
    return segviz.miou(pred, truths, num_classes=len(SCENE_CLASSES))


print(f"held-out mIoU on {len(held_out)} scenes: OS 16 {held_out_miou(model):.3f}, OS 8 {held_out_miou(model8):.3f}")

# %% [markdown]
# DeepLabv3 reports 77.2 → 78.5 mIoU on PASCAL VOC val from evaluating its OS-16-trained ResNet-101 at
# output stride 8 (Table 5 of the paper). This small model gains nothing measurable: its errors are
# shapes taken for other shapes, which a finer map does not fix.

# %% [markdown]
# ## 3. Receptive fields
#
# **Theoretical.** With kernel k, stride s and dilation d at layer l (k' = d(k−1)+1), the field of one
# unit grows going back towards the input as
#
# $$r_{l-1} = s_l\, r_l + (k'_l - s_l), \qquad r_L = 1,$$
#
# and paths that join (a residual add, a concatenation) take the union: the larger one.
# `segviz.receptive_field(model, layer)` follows the model's real data flow to get it, with the stride
# (pixels between neighbouring units) and where unit 0 is centred.
#
# torchvision's ResNet-50 ends at 427 px; the 483 px quoted for ResNet-50 is TF-slim's `resnet_v1_50`,
# which puts each stage's stride on its *last* block, so more 3×3 convs run at the finer stride. Dilation
# (output stride 16) gives exactly the same curve as the classifier, at a finer stride; simply removing
# the stride without dilating shrinks the field.

# %%
from segviz.models.resnet import resnet50


def growth(dilate=(False, False, False), undilated_layer4=False):
    with torch.device("meta"):
        net = resnet50(replace_stride_with_dilation=dilate)
    if undilated_layer4:              # output stride 16 the naive way: layer4's stride removed, rate 1
        net.layer4[0].conv2.stride = (1, 1)
        net.layer4[0].downsample[0].stride = (1, 1)
    rf = segviz.receptive_field(net, "layer4", input_size=64)
    rows = [(r.name, r.size, r.stride) for r in rf.rows(types=[nn.Conv2d, nn.MaxPool2d]) if "downsample" not in r.name]
    return rf, rows


variants = {"OS 32 (classifier)": growth(), "OS 16, dilated layer4": growth((False, False, True)),
            "OS 8, dilated layer3 + 4": growth((False, True, True)),
            "OS 16, stride removed, no dilation": growth(undilated_layer4=True)}

# %%
# NBVAL_CHECK_OUTPUT
rf = variants["OS 32 (classifier)"][0]               # one call on layer4 holds every layer before it
print("torchvision ResNet-50, theoretical receptive field and stride:")
for layer in ("conv1", "maxpool", "layer1", "layer2", "layer3", "layer4"):
    print(f"  {layer:<8} {rf.at(layer).size[0]:4d} px  stride {rf.at(layer).stride[0]:2d}")
for label, (rf, _) in variants.items():
    print(f"{label:<36} layer4: {rf.size[0]} px at stride {rf.stride[0]}")

# %%
dviz.rf_growth_figure({label: rows for label, (_, rows) in variants.items()}, input_size=513,
                      title="ResNet-50: receptive field and stride at every conv / max pool (meta device)")

# %% [markdown]
# Where does the field stop being a window? At the first operation that mixes all positions: DeepLab's
# image pooling. `receptive_field` says so instead of giving a number:

# %%
# NBVAL_CHECK_OUTPUT
nano_rf = segviz.receptive_field(model, None, input_size=256)   # the output, and every module on the way
print(nano_rf)
for layer in ("backbone.layer1", "backbone.layer4", "aspp.convs.1", "aspp.convs.3", "aspp.pooling", "decoder"):
    row = nano_rf.at(layer)
    print(f"  {layer:<16} " + ("whole input" if row.whole_input else f"{row.size[0]} px at stride {row.stride[0]}"))

# %% [markdown]
# **Effective.** Luo et al. (2016) measured how much each input pixel actually moves a unit: the
# gradient of the centre unit with respect to the input, |·| summed over the colour channels and averaged
# over images. It is roughly Gaussian and much smaller than the theoretical window, which only bounds it.
# `segviz.erf` computes it (here averaged over 8 held-out scenes; shown over one of them).

# %%
layers = {"layer1": "backbone.layer1", "layer2": "backbone.layer2", "layer4": "backbone.layer4",
          "ASPP rate 18": "aspp.convs.3", "output (logits)": None}
erfs, windows = {}, {}
for label, layer in layers.items():
    erfs[label] = segviz.erf(model, images[:8], layer)
    rf = segviz.receptive_field(model, layer, input_size=256)
    unit = (erfs[label].units[0][0], erfs[label].units[1][0])
    windows[label] = None if rf.whole_input else rf.window(unit)

# %%
dviz.erf_figure(held_out.array(0), {k: e.map for k, e in erfs.items()}, windows,
                title="deeplabv3plus-nano: effective receptive field of the centre unit, 8 held-out scenes")

# %%
for label, e in erfs.items():
    size = "whole image" if windows[label] is None else f"{windows[label][2] - windows[label][0] + 1} px"
    print(f"{label:<16} theoretical {size:>12}; share of the image at >= 20% / 50% of the ERF's peak: "
          f"{100 * e.area[0.2]:5.2f}% / {100 * e.area[0.5]:5.2f}%")

# %% [markdown]
# The effective fields are a small fraction of the theoretical ones: layer4's 75 px window is 8.6% of the
# 256 px image, but only about 1% of the image reaches a fifth of the ERF's peak; the rate-18 branch and
# the logits, whose theoretical fields cover the whole image, stay at about 2%. The ASPP branches show as
# faint copies of the central blob, one rate apart (the gridding of section 1, in a trained model).

# %% [markdown]
# ## 4. ASPP
#
# Atrous spatial pyramid pooling looks at the layer4 map through five parallel branches and concatenates
# them:
#
# $$b_0 = \mathrm{CBR}_{1\times1}(x),\quad b_i = \mathrm{CBR}_{3\times3,\ \text{rate } r_i}(x)\ (i = 1..3),
# \quad b_4 = \mathrm{Up}\big(\mathrm{CBR}_{1\times1}(\mathrm{GAP}(x))\big),$$
# $$\mathrm{ASPP}(x) = \mathrm{Dropout}\big(\mathrm{CBR}_{1\times1}([b_0, \dots, b_4])\big),$$
#
# (CBR: conv, BatchNorm, ReLU). The square of each branch for the unit at the image centre: at output
# stride 16, rate 18 spreads the 3×3 taps 288 px apart, further than this 256 px photo, so only its centre
# tap sees the image and the conv degenerates to a 1×1 — the reason DeepLabv3 added **image pooling**,
# which sees the whole image by construction.

# %%
aspp_labels = ["1x1"] + [f"rate {r}" for r in model.aspp.rates] + ["image pooling"]
layer4_rf = {os_: segviz.receptive_field(net, "backbone.layer4", input_size=256) for os_, net in ((16, model), (8, model8))}


def branch_windows(output_stride, rates, query):
    """(top, left, bottom, right) of each branch's field for the layer4 unit nearest ``query`` (y, x):
    layer4's field, widened by the 3x3's reach of ``rate`` units on each side; None for image pooling."""
    rf = layer4_rf[output_stride]
    unit = tuple(int(round((q - s) / rf.stride[0])) for q, s in zip(query, rf.start))
    top, left, bottom, right = rf.window(unit)
    out = {"1x1": (top, left, bottom, right)}
    for rate in rates:
        reach = rate * output_stride
        out[f"rate {rate}"] = (top - reach, left - reach, bottom + reach, right + reach)
    out["image pooling"] = None
    return out


# %%
# NBVAL_CHECK_OUTPUT
centre = branch_windows(16, model.aspp.rates, (128, 128))
for i, label in enumerate(aspp_labels[:-1]):          # the formula against receptive_field on the model
    measured = segviz.receptive_field(model, f"aspp.convs.{i}", input_size=256).window((8, 8))
    print(f"{label:<8} {centre[label]}  receptive_field: {measured}")

# %%
dviz.aspp_windows_figure(photo.array, centre, (128, 128),
                         title="deeplabv3plus-nano, output stride 16: what the ASPP unit at the centre sees")

# %% [markdown]
# The branch outputs on a held-out scene, each shown as colours (a PCA of its 64 channels to RGB). Image
# pooling is left out of the picture: it is one vector copied to every position (a PCA of it would only
# show rounding noise). The 1×1 branch sees 75 px, the atrous ones more and more of the scene; at rate 18
# the map is mostly the centre tap's 1×1 again, since the other taps fall outside this 16×16 map.

# %%
with torch.no_grad():
    features = model.backbone.forward_features(images[scene:scene + 1])
    branches = model.aspp.branches(features[3])
print("image pooling: the same vector at every position:",
      torch.allclose(branches[4], branches[4][..., :1, :1].expand_as(branches[4]), atol=1e-5))
viz.stage_pca({label: b for label, b in zip(aspp_labels[:4], branches[:4])}, held_out.array(scene))

# %% [markdown]
# What each branch adds, measured by switching it off (its output set to zero) on the held-out scenes:

# %%
# NBVAL_CHECK_OUTPUT
def without(net, branch_indices):
    """A context: the ASPP branches at ``branch_indices`` (0-4, 4 = image pooling) output zeros."""
    modules = [net.aspp.convs[i] if i < 4 else net.aspp.pooling for i in branch_indices]
    handles = [m.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out)) for m in modules]

    class Off:
        def __enter__(self):
            return net

        def __exit__(self, *exc):
            for h in handles:
                h.remove()

    return Off()


full = held_out_miou(model)
print(f"all branches: held-out mIoU {full:.3f}")
for i, label in enumerate(aspp_labels):
    with without(model, [i]):
        print(f"  without {label:<14} {held_out_miou(model):.3f}")

# %% [markdown]
# No single branch matters much to this model: each one off moves the score by a few thousandths at
# most. The branches overlap (every one of them sees layer4's 75 px), and on 256 px scenes the rates
# 12 and 18 reach mostly into the padding. The decoder's skip, next, matters more.

# %% [markdown]
# ## 5. SPP and its relatives
#
# Spatial pyramid pooling (He et al., 2014) max-pools the last conv map into a 4×4, a 2×2 and a 1×1 grid
# of bins. The bins scale with the map, so any input size gives 16 + 4 + 1 = 21 numbers per channel: a
# fixed-length vector for fully connected layers. PSPNet's pyramid pooling (UperNet's PPM in the Swin
# chapter) average-pools into 1, 2, 3, 6 bins and upsamples each back to a map; ASPP keeps the map and
# samples at several rates instead of pooling into bins, its image pooling being the 1×1 bin.

# %%
# NBVAL_CHECK_OUTPUT
from segviz.models.deeplabv3plus import SpatialPyramidPooling

spp = SpatialPyramidPooling((4, 2, 1))
maps, channel = [], None
for size in (256, 200):
    x = sample_image("astronaut", size=size).tensor
    with torch.no_grad():
        layer4 = model.backbone.forward_features(x)[3]
    if channel is None:                                # the channel that varies most over the photo
        channel = int(layer4[0].flatten(1).std(1).argmax())
    maps.append(layer4[0, channel])
    print(f"{size}x{size} photo: layer4 {tuple(layer4.shape)} -> SPP {tuple(spp(layer4).shape)} "
          f"= {spp.bins_per_channel} x {layer4.shape[1]} channels")

# %% [markdown]
# One channel of layer4 (the one that varies most) with its bins. On the 13×13 map the bins of 4×4 and
# 2×2 cannot split 13 evenly: neighbouring bins share a row or column (adaptive pooling's
# [⌊i·h/n⌋, ⌈(i+1)·h/n⌉)), and the vector still has 21 numbers.

# %%
dviz.spp_figure(maps)

# %% [markdown]
# ## 6. The decoder
#
# ASPP's output is at 1/16 of the image: 16×16 cells for 256 px, too coarse for object outlines. The v3+
# decoder upsamples it ×4 and concatenates a 1×1 projection of layer1 (stride 4) — 48 channels in the
# paper (16 in the nano model), few enough not to drown ASPP's 256 (64) — then two 3×3 convs and the
# classifier. The low-level map is sharp but knows little; the upsampled ASPP map knows the classes but is
# blurred:

# %%
with torch.no_grad(), segviz.capture(model, features=["backbone.layer1", "aspp", "decoder.project", "decoder"]) as rec:
    model(images[scene:scene + 1])
aspp_up = F.interpolate(rec.features["aspp"], size=rec.features["decoder.project"].shape[-2:], mode="bilinear")
viz.stage_pca({"layer1 (stride 4)": rec.features["backbone.layer1"], "skip: 1x1 of layer1": rec.features["decoder.project"],
               "ASPP, upsampled x4": aspp_up, "decoder output": rec.features["decoder"]}, held_out.array(scene))

# %% [markdown]
# What the skip recovers: the same model with the skip's detail taken away (its output replaced by its
# average over the map, so the decoder still gets values of the usual size), scored over all pixels and
# within 3 px of a true object boundary.

# %%
def boundary_band(labels, width=3):
    edge = torch.zeros_like(labels, dtype=torch.bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :, 1:] |= labels[:, :, 1:] != labels[:, :, :-1]
    return F.max_pool2d(edge[:, None].float(), 2 * width + 1, 1, width)[:, 0].bool()


def flat_skip(_module, _inputs, out):
    return out.mean((2, 3), keepdim=True).expand_as(out)


with torch.no_grad():
    with_skip = model.predict(images).argmax(1)
    handle = model.decoder.project.register_forward_hook(flat_skip)
    without_skip = model.predict(images).argmax(1)
    handle.remove()
band = boundary_band(truths)

# %%
# NBVAL_CHECK_OUTPUT
for label, pred in (("with the skip", with_skip), ("skip flattened", without_skip)):
    print(f"{label:<15} mIoU {segviz.miou(pred, truths, num_classes=len(SCENE_CLASSES)):.3f}, "
          f"pixel accuracy {(pred == truths).float().mean():.3f}, "
          f"within 3 px of a boundary {(pred == truths)[band].float().mean():.3f}")

# %% [markdown]
# Without the skip's detail the score drops, and most of all near the boundaries: the low-level features
# are what places the outlines at stride 4 instead of 16. One scene can disagree with the average: on the
# one below, the flattened skip happens to fill more of the big disc.

# %%
viz.prediction_panels([(held_out.array(scene), truths[scene], "truth"),
                       (held_out.array(scene), with_skip[scene], "with the skip"),
                       (held_out.array(scene), without_skip[scene], "skip flattened")], SCENE_CLASSES)

# %% [markdown]
# ## 7. Explore
#
# Choose the output stride (the same weights at 16 or 8), the rate of ASPP's last atrous branch (changed
# at inference: the weights were trained at 18 on a stride-16 map), switch branches off, and move the
# query pixel. Left: the 3×3 taps of that branch around the query in image pixels, and the fields of the
# branches that are on; right: the prediction. Each (stride, rate, branches) setting runs the model once.

# %%
nets = {16: model, 8: model8}


def explorer_predict(output_stride, rate, on):
    net = nets[output_stride]
    conv = net.aspp.convs[3].conv
    saved = conv.dilation, conv.padding
    conv.dilation, conv.padding = (rate, rate), (rate, rate)
    try:
        with without(net, [i for i, label in enumerate(explorer_labels) if label not in on]), torch.no_grad():
            return net.predict(images[scene:scene + 1])
    finally:
        conv.dilation, conv.padding = saved


def explorer_windows(output_stride, rate, query):
    rates = list(nets[output_stride].aspp.rates[:2]) + [rate]
    out = branch_windows(output_stride, rates, query)
    return dict(zip(explorer_labels, out.values()))


explorer_labels = ["1x1", "atrous 1", "atrous 2", "atrous 3 (rate)", "image pooling"]
explorer = dviz.DeepLabExplorer(held_out.array(scene), explorer_predict, explorer_windows, explorer_labels,
                                rate=18, rates=(1, 36), class_names=SCENE_CLASSES, query=(100, 140))
explorer.rate.value = 4                               # one update, as a slider move would trigger
explorer

# %% [markdown]
# ## 8. For inference, BatchNorm folds into the convolution
#
# Every convolution in DeepLab is followed by a BatchNorm. After training, BatchNorm uses fixed running
# statistics μ, σ², so it is a fixed affine map per channel, and a convolution followed by an affine map
# is again a convolution:
#
# $$\mathrm{BN}(W * x + b) = \gamma\,\frac{W * x + b - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta
#   = \underbrace{(s \odot W)}_{W'} * x + \underbrace{\beta + s \odot (b - \mu)}_{b'},
#   \qquad s = \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}.$$
#
# `segviz.fuse_for_inference` returns a copy in which every such pair is one convolution (the BatchNorm's
# place holds an identity that refuses to train). No multiply-add is saved; what goes is one pass of the
# BatchNorm over every map, about 5 % of DeepLabv3+ R50's CPU time at 513×513. The function is the same up
# to float rounding. This holds only at inference: in training, BatchNorm normalises with each batch's own
# statistics, which no fixed weight can do.

# %%
# NBVAL_CHECK_OUTPUT
folded = segviz.fuse_for_inference(model)
with torch.no_grad():
    readable_logits, folded_logits = model.predict(images), folded.predict(images)
print(f"BatchNorm2d layers: readable {sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())}, "
      f"folded {sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())}")
print(f"logits on the {len(images)} held-out scenes agree within 1e-4: "
      f"{bool((readable_logits - folded_logits).abs().max() < 1e-4)}")

# %% [markdown]
# And the time it saves here (one 512×512 input, median of five interleaved runs; timings vary from run to
# run, so this output is not checked):

# %%
x512 = torch.randn(1, 3, 512, 512)
times = {"readable": [], "folded": []}
with torch.no_grad():
    for _ in range(6):
        for label, net in (("readable", model), ("folded", folded)):
            t0 = time.perf_counter()
            net(x512)
            times[label].append(time.perf_counter() - t0)
readable_s, folded_s = (float(np.median(times[k][1:])) for k in ("readable", "folded"))
print(f"readable {readable_s * 1e3:.0f} ms, folded {folded_s * 1e3:.0f} ms: {folded_s / readable_s:.2f}x the time")

# %% [markdown]
# ## What to take away
#
# - Atrous convolution spreads a kernel's taps r pixels apart: k' = r(k−1)+1 with the same weights. It
#   lets the last stages keep a finer map (output stride 16 or 8) and exactly the classifier's receptive
#   field; stacking equal rates leaves holes.
# - Output stride 8 quadruples the late maps and costs about three times the compute of 16, for the
#   same weights.
# - The theoretical field bounds what a unit can see; the effective field (gradients) is much smaller and
#   concentrated in the middle. Global operations (image pooling) make it the whole image.
# - ASPP samples the same map at several rates plus the whole image; SPP pools into bins for a fixed-size
#   vector; the PPM pools into bins and upsamples back to maps.
# - The decoder's thin skip from stride 4 restores object boundaries that the stride-16 head blurs.
# - At inference a BatchNorm is an affine map and folds into the convolution before it: same function,
#   one pass over every map less.
#
# Next: [00_tour.ipynb](00_tour.ipynb) lists the other chapters.

# %%
print(f"notebook run time: {time.perf_counter() - start_time:.0f} s")
