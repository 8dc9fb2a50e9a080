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
# attention map, the prediction and the accuracy. Then the paper's claims, measured on trained models
# with three training seeds each: how accuracy falls as ISR removes keys (EDAFormer against SegFormer),
# and the paper's Table 5a: should a model rather be *trained* at the reduced ratios?
#
# The models are the kit's shipped `-nano` weights, trained on the synthetic `Scenes` set at 256×256
# (discs, rings, rectangles, triangles and crosses over textured backgrounds; shape, not colour, gives
# the class). At 256 px the first stage is a 64×64 token map: at the training ratio 8 it attends to an
# 8×8 grid of keys, so ISR has room to act. Nothing is trained here; the notebook runs in about two
# minutes on a CPU.

# %%
# NBVAL_CHECK_OUTPUT
# %matplotlib inline
# %config InlineBackend.figure_formats = ["jpeg"]  # figures as JPEG: keeps the saved notebook small
import torch
from tqdm import tqdm                                   # a text bar: it also shows in a saved notebook

import segviz
from segviz import viz
from segviz.data import SCENE_CLASSES, Scenes
from segviz.training import evaluate
from segviz.viz.edaformer_diagram import decoder_diagram
from segviz.viz.isr_explorer import PAPER_PRESETS, ISRExplorer, evaluate_setting, isr_figure, measure_latency
from segviz.viz.isr_study import ISR_LADDER, isr_curve, model_ladder, plot_isr_curves, spread, table_5a

torch.manual_seed(0)
model = segviz.create_model("edaformer-nano", weights="scenes")   # trained with ratios enc (8, 4, 2, 1), dec (4, 2, 1)
shipped = segviz.zoo.find("edaformer-nano", "scenes")
held_out = Scenes(**{k: v for k, v in shipped.card["shipped"]["eval"].items() if k != "class"})  # the card's held-out set
print(shipped.describe())

# %% [markdown]
# A held-out scene, what the model predicts, and where one pixel (cyan +, on an object) looks in the
# first encoder stage. The keys are a coarse grid (white lines): each key cell is an 8×8 block of query
# tokens averaged together. That ratio, 8, is what ISR turns up at inference.

# %%
# NBVAL_CHECK_OUTPUT
i = 1                                                  # a held-out scene with all five kinds of object
image, truth = held_out[i]
query = (128, 72)                                      # (row, column) in pixels: on the large disc
with torch.no_grad(), segviz.capture(model) as rec:
    logits = model(image[None])
print("classes in this scene:", ", ".join(SCENE_CLASSES[c] for c in truth.unique().tolist()))
print("class at the query pixel:", SCENE_CLASSES[int(truth[query])])
viz.prediction_panels([(held_out.array(i), truth, f"held-out scene {i}: truth"),
                       (held_out.array(i), logits, "edaformer-nano's prediction")], SCENE_CLASSES)

# %%
viz.attention_overlay(held_out.array(i), rec.attention["encoder.stages.0.blocks.0.attn"], query,
                      title="EDAFormer-nano, encoder stage 1")

# %% [markdown]
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

# %% [markdown]
# EFA has fewer parameters at every stage (no $W_q, W_k, W_v$), and fewer MACs where the full-resolution
# query projection dominated. The $QK^\top$ and weighted-sum matmuls are the same for both: EFA saves on
# projections, not on the attention itself. Reducing *that* is ISR's job (section 3).
#
# Now the trained `edaformer-nano` on the held-out scene: the same query pixel in the first block of every
# encoder stage, each of its heads (up to four).

# %%
stages = {f"stage {s}": rec.attention[f"encoder.stages.{s - 1}.blocks.0.attn"] for s in (1, 2, 3, 4)}
viz.attention_grid(held_out.array(i), stages, query, heads=[0, 1, 2, 3])

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
# What each decoder stage hands on, for the held-out scene: each stage's output map turned into colours
# by a PCA (tokens with similar features get similar colours). The deeper stages are coarse but already
# separate the objects; stage 2 adds detail at 1/8.

# %%
decoder_maps = {f"decoder stage {s}": rec.features[f"decoder.stage{s}"] for s in (4, 3, 2)}
viz.stage_pca(decoder_maps, held_out.array(i))

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
# the training ratios, where the chosen query looks in the chosen stage, the prediction on the held-out
# scene and which of its pixels changed class, and the mIoU on the first 8 held-out scenes (few, to keep
# an update fast; section 4 uses all 100 and three seeds). Latency is timed only when you press its
# button, and at 512×512: at the nano model's 256×256 the speed-up of ISR is smaller than the
# run-to-run noise of this CPU (the end of this section says where it becomes visible).

# %%
quick_set = Scenes(8, size=held_out.size, seed=0, split="val")    # the first 8 scenes of held_out
explorer = ISRExplorer(model, held_out.array(i), image[None], eval_set=quick_set, class_names=SCENE_CLASSES)
explorer.y.value, explorer.x.value = query             # start on the same pixel of the disc
explorer

# %% [markdown]
# (In a repository browser the widget above does not run.) The same pure functions the widget calls,
# for the paper's first setting, with the query on the same pixel, in encoder stage 1:

# %%
# NBVAL_CHECK_OUTPUT
paper_a = PAPER_PRESETS["paper: enc [16,8,2,1], dec [2,4,8]"]
setting = evaluate_setting(model, image[None], paper_a, eval_set=quick_set)
print(f"GMACs {setting.gmacs:.4f} vs {explorer.reference.gmacs:.4f} at the training ratios; "
      f"mIoU on 8 held-out scenes {setting.miou:.3f} vs {explorer.reference.miou:.3f}")
isr_figure(held_out.array(i), setting, explorer.reference, "enc 1", query, class_names=SCENE_CLASSES)

# %% [markdown]
# At 256×256 the nano model's attention is a modest part of its cost (its feed-forward layers and patch
# embeddings weigh more), so the *total* GMACs move by less than the attention of the reduced stages.
# ISR pays off where attention dominates: large inputs and wide models. The same settings on
# EDAFormer-T and -B at 512×512 (counted on the `meta` device, so no weights and no compute are needed):

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
# 768-channel fusion weigh more). And the speed this buys on this machine's CPU for EDAFormer-T at
# 512×512 (random weights: speed does not depend on them; the median of three interleaved runs on a
# machine that may be busy with other work, so expect some noise). `benchmarks/isr_latency.py` times
# the same at several sizes, with a control (the training ratios timed against themselves) for the
# noise. On this 2-core CPU with nothing else running (24 Nov 2026, one thread, noise 1–4 %) the paper
# presets' speed-up grows with the input, as the reduced attention becomes a larger share of the work:
# edaformer-nano 1.08–1.09× at 256×256, 1.22–1.29× at 512, 1.66–1.94× at 1024; EDAFormer-T
# 1.03–1.07×, 1.15–1.23× and 1.34–1.68×. Each is below what the GMACs cut alone would give (the rest
# of the time is memory traffic and the feed-forward layers). On a busy machine the noise reached
# 13 %, more than the whole 256×256 speed-up, which is why the explorer times latency at 512×512.

# %%
net = segviz.create_model("edaformer-t").eval()
x512 = torch.randn(1, 3, 512, 512)
times = measure_latency(net, x512, {"training": {}, **PAPER_PRESETS}, repeats=3)   # the settings' runs interleaved
for label, ms in times.items():
    print(f"{label:38s} {ms:7.0f} ms   speed-up ×{times['training'] / ms:.2f}")

# %% [markdown]
# ## 4. Accuracy against cost, over three training seeds
#
# The ladder below starts at the training ratios and reduces the keys of one more stage at each step,
# through the paper's two ISR settings to one step beyond them:

# %%
# NBVAL_CHECK_OUTPUT
for label, setting in ISR_LADDER.items():
    print(f"{label:36s} encoder {setting['encoder']}  decoder {setting['decoder']}")

# %% [markdown]
# Each shipped seed of `edaformer-nano` and of `segformer-nano` (same data, same recipe, same number of
# steps; seeds 0, 1, 2) runs every setting it can take on all 100 held-out scenes. SegFormer has no
# decoder attention, so its ladder has one step fewer. Its ISR is possible only because segviz, like the
# EDAFormer paper, average-pools the keys after SegFormer's learned strided convolution, by the factor
# beyond the trained ratio. This takes about a minute.

# %%
seeds = {"edaformer-nano": ["scenes", "scenes-seed1", "scenes-seed2"],
         "segformer-nano": ["scenes", "scenes-seed1", "scenes-seed2"]}
gmacs_cache = {}
curves = {name: [] for name in seeds}
with tqdm(total=sum(map(len, seeds.values())), desc="models evaluated") as bar:
    for name, tags in seeds.items():
        for tag in tags:
            net = segviz.create_model(name, weights=tag).eval()
            curves[name].append(isr_curve(net, held_out, held_out.size, gmacs_cache=gmacs_cache))
            bar.update()

# %%
# NBVAL_CHECK_OUTPUT
rows = []
for name, per_seed in curves.items():
    for r in spread(per_seed):
        rows.append({"model": name, "setting": r["setting"], "GMACs": round(r["gmacs"], 4),
                     "mIoU mean": round(r["mean"], 3), "± std": round(r["std"], 3),
                     "seeds": " ".join(f"{v:.3f}" for v in r["values"])})
print(viz.format_table(rows, float_format="{:.3f}"))
plot_isr_curves(curves)

# %% [markdown]
# **What the curves show.** On these trained nano models at 256×256, ISR costs no accuracy at all. From
# the training ratios to the paper's second setting, EDAFormer's mean mIoU moves from 0.383 to 0.386 and
# SegFormer's from 0.330 to 0.331, while the GMACs fall by 16 % and 8 %; even one step beyond the paper
# (enc 32-16-4-2) loses nothing measurable. Every change is a few thousandths, far inside the spread
# between seeds (0.01–0.015), and each seed's own line is just as flat. So the paper's first claim, that
# the keys can be reduced at inference on the same weights, holds here. Its second, that EDAFormer
# tolerates ISR *better* than SegFormer, cannot be seen: neither loses anything. (EDAFormer is ahead at
# every setting by about 0.05, but it also has more parameters, 756k against 456k, and attention in its
# decoder: that gap is not about ISR.) A likely reason: at this scale even a 4×4 key grid in stage 1 is
# finer than most objects' extent in tokens, and these briefly trained models attend broadly (see the
# maps above), which a coarser average summarises about as well. The paper's models see 512×512 ADE20K
# images with 150 classes and more to lose.
#
# ## 5. The paper's Table 5a: ISR, or train at the small ratios?
#
# The paper's Table 5a compares, at *equal inference cost*, (a) a model trained at the usual ratios and
# run with ISR, against (b) the same model trained directly at the larger ratios. Its claim: (a) is
# better: training with more keys and then reducing loses less than never having had them.
#
# Here (a) is the three `edaformer-nano` seeds above under the paper's first setting; (b) is three
# more shipped models, trained with the same recipe and seeds but with training ratios enc (16, 8, 2, 1),
# dec (8, 4, 2) (`python -m segviz train edaformer-nano --set "pool_ratios=(16,8,2,1)" --set
# "decoder_pool_ratios=(8,4,2)"`). (a) and (b) cost exactly the same at inference.

# %%
# NBVAL_CHECK_OUTPUT
first = "paper 1: enc 16-8-2-1, dec [2,4,8]"
by_setting = {r["setting"]: r for r in spread(curves["edaformer-nano"])}
trained_small = []
for tag in ("scenes-r16-seed0", "scenes-r16-seed1", "scenes-r16-seed2"):
    net = segviz.create_model("edaformer-nano", weights=tag).eval()
    trained_small.append(evaluate(net, held_out, batch_size=20))
rows = table_5a(by_setting[first]["values"], trained_small, by_setting["training ratios"]["values"])
print(viz.format_table([{"model": r["model"], "mIoU mean": round(r["mean"], 3), "± std": round(r["std"], 3),
                         "seeds": " ".join(f"{v:.3f}" for v in r["values"])} for r in rows], float_format="{:.3f}"))
gap = rows[1]["mean"] - rows[2]["mean"]
print(f"\n(a) - (b) = {gap:+.3f} mIoU at equal cost; seed spread (std) {rows[1]['std']:.3f} and {rows[2]['std']:.3f}")

# %% [markdown]
# **What Table 5a shows here.** The model trained directly at the large ratios, (b), scores 0.401 ± 0.028,
# against 0.386 ± 0.015 for (a), the usual model with ISR: the opposite order from the paper's Table 5a,
# which found (a) better. But the difference, 0.015, is smaller than the spread of (b) over its three
# seeds (0.372 to 0.428), so this toy does not separate the two; with three seeds and 1200 training
# steps it is weak evidence either way. What it does show is that training with fewer keys did not hurt
# these small models at all, which fits section 4: at this scale the keys ISR removes carried little the
# models needed.
