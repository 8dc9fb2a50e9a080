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
# # EDAFormer and inference spatial reduction (ISR)
#
# **What you will see:** EDAFormer's *embedding-free attention* next to SegFormer's attention (what is
# removed, what it saves), where a query pixel looks inside a small trained EDAFormer, its
# all-attention decoder drawn from the model, and then the heart of it: **sliders for the key/value
# reduction ratio of every attention stage**. Moving one changes, on the same weights, the cost, the
# measured speed, the attention map, the prediction and the accuracy. At the end, a toy version of the
# paper's Table 5a asks whether a model should rather be *trained* at the reduced ratios, and the same
# sliders are tried on SegFormer, which was never trained for it.
#
# Everything runs on a CPU in about two minutes; training is cached, so a second run takes seconds.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ["jpeg"]  # figures as JPEG: keeps the saved notebook small
import torch

import segviz
from segviz import viz
from segviz.data import CLASSES, Shapes, sample_image
from segviz.training import evaluate, train
from segviz.viz.edaformer_diagram import decoder_diagram
from segviz.viz.isr_explorer import PAPER_PRESETS, ISRExplorer, evaluate_setting, isr_figure, measure_latency

torch.manual_seed(0)
TRAIN = dict(steps=120, batch_size=8, lr=4e-3, progress=False)
shapes = Shapes(256, size=128, seed=0)                # synthetic training set: 5 classes
held_out = Shapes(64, size=128, seed=1000)            # the trainer's validation set
photo = sample_image("astronaut", size=256)           # .array (256, 256, 3) uint8, .tensor (1, 3, 256, 256)

model = segviz.create_model("edaformer-nano")         # trained with ratios enc (8, 4, 2, 1), dec (4, 2, 1)
result = train(model, shapes, **TRAIN)
print(f"edaformer-nano: {segviz.count_params(model):,} parameters; "
      f"validation mIoU on held-out Shapes: {result.val_miou:.2f}"
      + (" (weights from the cache)" if result.from_cache else ""))

# %%
with torch.no_grad(), segviz.capture(model) as rec:
    photo_logits = model(photo.tensor)
viz.attention_overlay(photo.array, rec.attention["encoder.stages.0.blocks.0.attn"], (80, 118),
                      title="EDAFormer-nano, encoder stage 1")

# %% [markdown]
# Above: where one pixel on the astronaut's face (cyan +) looks in the first encoder stage. The keys
# are a coarse grid (white lines): each key cell is an 8×8 block of query tokens averaged together.
# That ratio, 8, is what ISR turns up at inference.
#
# ## 1. Embedding-free attention (EFA) versus standard attention
#
# SegFormer's efficient self-attention projects three times, with the keys and values taken from a
# map shrunk by a learned strided convolution:
#
# $$Q = xW_q,\quad \hat x = \mathrm{LN}(\mathrm{Conv}_{r\times r,\ \mathrm{stride}\ r}(x)),\quad K = \hat x W_k,\quad V = \hat x W_v,\quad
# \mathrm{out} = \mathrm{softmax}\!\left(QK^\top/\sqrt d\right)V\,W_o .$$
#
# EDAFormer's EFA drops the three projections: the queries are the (normalised) input itself, and the
# keys and values are one and the same tensor, the input **average-pooled** by r and passed through
# one 1×1 convolution:
#
# $$Q = x,\qquad K = V = \mathrm{Conv}_{1\times 1}(\mathrm{AvgPool}_r(x)),\qquad
# \mathrm{out} = \mathrm{softmax}\!\left(QK^\top/\sqrt d\right)V\,W_o .$$
#
# What "embedding-free" removes is the token-wise Linear maps $W_q, W_k, W_v$ ($3C^2$ weights applied to
# every token). What it keeps: the output Linear $W_o$, and the 1×1 conv on the *pooled* map, which
# costs $N/R \cdot C^2$ instead of $N \cdot C^2$ (R = r²). The softmax is still there: the attention stays
# non-linear. And because the key/value side starts with plain pooling rather than a learned strided
# conv, any pooling ratio can be used at inference: that is what makes ISR work on the same weights.
#
# Below: both attentions at three stages of EDAFormer-T at 512×512 (same width, heads, map and ratio),
# counted by `segviz.flops` (GMACs, what the papers call GFLOPs). SegFormer's params include its
# r×r strided conv, which for r = 8 alone is $64C^2$ weights. Throughout, r is the reduction per side
# (the code's `sr_ratio` / `ratio`) and R = r² the reduction of the number of keys.

# %%
# NBVAL_CHECK_OUTPUT
from segviz.models.edaformer import EmbeddingFreeAttention
from segviz.models.segformer import EfficientSelfAttention


class OnMap(torch.nn.Module):
    """Run a token attention (B, N, C) on a (B, C, h, w) map, so that segviz.flops can count it."""

    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, m):
        return self.attn(m.flatten(2).transpose(1, 2), tuple(m.shape[-2:]))


rows = []
for stage, (dim, heads, ratio, side) in {1: (32, 1, 8, 128), 3: (128, 4, 2, 32), 4: (256, 8, 1, 16)}.items():
    for name, attn in (("SegFormer attention", EfficientSelfAttention(dim, heads, ratio)),
                       ("EDAFormer EFA", EmbeddingFreeAttention(dim, heads, ratio))):
        rows.append({"stage": f"{stage}: C={dim}, {side}×{side} tokens, r={ratio}", "attention": name,
                     "params": segviz.count_params(attn),
                     "GMACs": round(segviz.flops(OnMap(attn), (1, dim, side, side)).total, 4)})
print(viz.format_table(rows, float_format="{:.4f}"))

# %% [markdown]
# EFA has fewer parameters at every stage (no $W_q, W_k, W_v$), and fewer MACs where the full-resolution
# query projection dominated. The $QK^\top$ and weighted-sum matmuls are the same for both: EFA saves on
# projections, not on the attention itself. Reducing *that* is ISR's job (section 3).
#
# Now the trained `edaformer-nano` on the photo: the same query pixel in the first block of every
# encoder stage, its first four heads. (The model was trained on synthetic shapes only, so on a photo it groups
# pixels by colour and edges rather than by meaning.)

# %%
stages = {f"stage {s}": rec.attention[f"encoder.stages.{s - 1}.blocks.0.attn"] for s in (1, 2, 3, 4)}
viz.attention_grid(photo.array, stages, (80, 118), heads=[0, 1, 2, 3])

# %% [markdown]
# ## 2. The all-attention decoder
#
# SegFormer's decoder is all MLPs. EDAFormer's runs EFT blocks (EFA + feed-forward) on encoder stages
# 4, 3 and 2, more of them on the coarser, more semantic maps: the paper's **{3-2-1}** design. The
# diagram below is drawn from the model object itself (blocks, heads, channels, ratios and sizes are read
# off the modules), so `create_model("edaformer-nano", decoder_depths=(1, 4, 1))` draws itself too.

# %%
decoder_diagram(model, input_size=(256, 256))

# %% [markdown]
# What each decoder stage hands on, on the photo: each stage's output map turned into colours by a
# PCA (tokens with similar features get similar colours). The deeper stages are coarse but already
# separate regions; stage 2 adds detail at 1/8.

# %%
decoder_maps = {f"decoder stage {s}": rec.features[f"decoder.stage{s}"] for s in (4, 3, 2)}
viz.stage_pca(decoder_maps, photo.array)

# %% [markdown]
# ## 3. The ISR explorer
#
# Each slider is one attention stage's **total** key/value reduction per side, r (a stage with N query
# tokens attends to N/R keys, R = r², so its attention costs O(N²/R)). The preset menu holds the training
# ratios and the paper's two ISR settings. **Order of the decoder ratios:** segviz lists decoder stages in
# the order of the encoder stage they read, 2, 3, 4; the paper lists them the other way round, so its
# decoder "[2, 4, 8]" is dec 2 = 8, dec 3 = 4, dec 4 = 2 here.
#
# On every change the explorer redraws: GMACs (whole model, and the attention of each stage) against
# the training ratios, the latency measured on this machine, where the chosen query looks in the chosen
# stage, the prediction on a held-out Shapes image and which of its pixels changed class, and the mIoU on
# the first 16 held-out images (few, to keep an update well under a second; section 4 uses all 64). The
# image is 128×128, the size the model was trained at. The explorer computes on one CPU thread (inputs
# this small gain nothing from more), so its latencies are single-thread ones.

# %%
i = 4                                                   # a held-out image with three kinds of shape
image, truth = held_out[i]
quick_set = Shapes(16, size=128, seed=1000)             # the first 16 images of held_out
explorer = ISRExplorer(model, held_out.array(i), image[None], eval_set=quick_set, class_names=CLASSES)
explorer

# %% [markdown]
# (In a repository browser the widget above does not run.) The same pure functions the widget calls,
# for the paper's first setting, with the query in the middle of the image, in encoder stage 1:

# %%
paper_a = PAPER_PRESETS["paper: enc [16,8,2,1], dec [2,4,8]"]
setting = evaluate_setting(model, image[None], paper_a, eval_set=quick_set)
print(f"GMACs {setting.gmacs:.4f} vs {explorer.reference.gmacs:.4f} at the training ratios; "
      f"held-out mIoU {setting.miou:.3f} vs {explorer.reference.miou:.3f}")
isr_figure(held_out.array(i), setting, explorer.reference, "enc 1", (64, 64), class_names=CLASSES)

# %% [markdown]
# At 128×128 the nano model's attention is a small part of its cost (its feed-forward layers and patch
# embeddings dominate), so the *total* GMACs move by only a few percent, while the attention of the
# reduced stages falls by much more. ISR pays off where attention dominates: large inputs and wide
# models. The same settings on EDAFormer-T and -B at 512×512 (counted on the `meta` device, so no
# weights and no compute are needed):

# %%
# NBVAL_CHECK_OUTPUT
settings = {"training": {}, **PAPER_PRESETS}
rows = []
for name in ("edaformer-t", "edaformer-b"):
    with torch.device("meta"):
        net = segviz.create_model(name)
    base = None
    for label, ratios in settings.items():
        with segviz.isr(net, **ratios):
            gmacs = segviz.flops(net, (1, 3, 512, 512), device="meta").total
        base = base or gmacs
        rows.append({"model": name, "params (M)": round(segviz.count_params(net) / 1e6, 2), "setting": label,
                     "GMACs": round(gmacs, 2), "change": f"{100 * (gmacs - base) / base:+.1f} %"})
print(viz.format_table(rows, float_format="{:.2f}"))

# %% [markdown]
# EDAFormer-T's cost falls by about a sixth with the first setting and about a quarter with the second;
# EDAFormer-B's by less, because a smaller share of its cost is attention (its feed-forward layers and its
# 768-channel fusion weigh more). And the speed this buys on this machine's CPU for EDAFormer-T at 512×512 (random weights: speed does not
# depend on them; the median of three runs on a machine that may be busy with other work, so expect some
# noise):

# %%
net = segviz.create_model("edaformer-t").eval()
x512 = torch.randn(1, 3, 512, 512)
times = measure_latency(net, x512, settings, repeats=3)   # the settings' runs interleaved
for label, ms in times.items():
    print(f"{label:38s} {ms:7.0f} ms   speed-up ×{times['training'] / ms:.2f}")

# %% [markdown]
# ## 4. The paper's claim at toy scale: ISR, or train at the small ratios?
#
# The paper's Table 5a compares, at *equal inference cost*, (a) a model trained at the usual ratios and
# run with ISR, against (b) the same model trained directly at the larger ratios. Its claim: (a) is
# better: training with more keys and then reducing loses less than never having had them.
#
# Here: the `edaformer-nano` above is (a). For (b) we build the same model with training ratios
# enc (16, 8, 2, 1), dec (8, 4, 2) (the paper's first ISR setting) and train it on the same data with the
# same settings. (That is the same computation as calling `segviz.set_isr(model_b, ...)` before training,
# but the ratios become part of the model's config, so the trainer's cache tells the two models apart.)

# %%
torch.manual_seed(0)                                    # the same initial weights as model (a)
model_b = segviz.create_model("edaformer-nano", pool_ratios=paper_a["encoder"], decoder_pool_ratios=paper_a["decoder"])
result_b = train(model_b, shapes, **TRAIN)

rows = []
for label, net, ratios, pool in (("(a) trained 8-4-2-1 / 4-2-1, no ISR", model, {}, "avg"),
                                 ("(a) + ISR 16-8-2-1 / 8-4-2 (avg pool)", model, paper_a, "avg"),
                                 ("(a) + ISR 16-8-2-1 / 8-4-2 (max pool)", model, paper_a, "max"),
                                 ("(b) trained 16-8-2-1 / 8-4-2", model_b, {}, "avg")):
    with segviz.isr(net, pool=pool, **ratios):
        rows.append({"model": label, "GMACs": round(segviz.flops(net, (1, 3, 128, 128)).total, 4),
                     "held-out mIoU": round(evaluate(net, held_out), 3)})
print(viz.format_table(rows, float_format="{:.4f}"))
with_isr, trained_small = rows[1]["held-out mIoU"], rows[3]["held-out mIoU"]
print(f"\nat equal cost: (a) with ISR {with_isr:.3f}, (b) trained at the small ratios {trained_small:.3f}: "
      + ("(a) wins, as in the paper" if with_isr > trained_small else "(b) wins here, unlike the paper"))

# %% [markdown]
# Rows 2 and 4 cost exactly the same. Whichever way the comparison falls here, read it with care: one
# seed, 120 training steps on synthetic shapes at 128×128 and 64 validation images is a toy, and mIoU
# differences of a few hundredths are within what another seed would change. The paper's result is on
# ADE20K at full training length. The pooling row compares the paper's choice (average) with max
# pooling at inference, which this model never saw in training.
#
# ## 5. ISR on SegFormer
#
# The same mechanism works on SegFormer: after its learned stride-r conv, the keys and values are
# average-pooled by the extra factor. Only multiples of the trained ratio are possible (the conv runs
# first), and there is no decoder attention. SegFormer was **not trained for this**; the paper argues
# that it should lose more accuracy under ISR than EDAFormer does. `segformer-nano` is trained here on the same data with the same settings
# as the `edaformer-nano` above, so the two are compared like for like.

# %%
torch.manual_seed(0)                                    # seeded like the EDAFormer above
segformer = segviz.create_model("segformer-nano")
result_s = train(segformer, shapes, **TRAIN)
seg_explorer = ISRExplorer(segformer, held_out.array(i), image[None], eval_set=quick_set, class_names=CLASSES)
seg_explorer

# %%
rows = []
for name, net in (("edaformer-nano", model), ("segformer-nano", segformer)):
    base = None
    for label, ratios in settings.items():
        enc_only = {"encoder": ratios["encoder"]} if ratios else {}
        with segviz.isr(net, **enc_only):
            score = evaluate(net, held_out)
        base = score if base is None else base
        rows.append({"model": name, "encoder ratios": label.split(", dec")[0], "held-out mIoU": round(score, 3),
                     "change": round(score - base, 3) + 0.0})
print(viz.format_table([{**r, "change": f"{r['change']:+.3f}"} for r in rows], float_format="{:.3f}"))
for name in ("edaformer-nano", "segformer-nano"):
    worst = min(r["change"] for r in rows if r["model"] == name)
    print(f"{name}: worst mIoU change under ISR {worst:+.3f}")

# %% [markdown]
# Only the encoder ratios change here, for both models, so the comparison is like for like. Read the
# changes against the noise of a 64-image validation set: at this toy scale (small maps, where even the
# training ratios leave few keys per stage) neither model may lose much, and the difference between them
# can be small. The paper's argument, that EFA (pool first, then one shared projection) tolerates a
# changed ratio better than attention whose keys come out of a learned strided conv, is about full-size
# models on real data. Try the sliders above: SegFormer's stage-1 slider offers only 8 and its multiples.
