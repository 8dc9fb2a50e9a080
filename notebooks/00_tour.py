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
# # segviz in one minute
#
# **What you will see:** a real photograph, a small SegFormer trained for half a minute on synthetic
# shapes, its prediction on a held-out shapes image and on the photo, and one attention map: where a
# single pixel of the photo looks inside the network. Everything runs on a CPU in about a minute.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ["jpeg"]  # figures as JPEG: keeps the saved notebook small
import torch

import segviz
from segviz import viz
from segviz.data import CLASSES, Shapes, sample_image

torch.manual_seed(0)
photo = sample_image("astronaut", size=256)          # .array (256, 256, 3) uint8, .tensor (1, 3, 256, 256)
model = segviz.create_model("segformer-nano")        # 5 classes: background + 4 shapes
result = segviz.train(model, Shapes(512, size=64, seed=0), steps=400, batch_size=16, lr=0.004, progress=False)
print(f"segformer-nano: {segviz.count_params(model):,} parameters; "
      f"validation mIoU on held-out Shapes: {result.val_miou:.2f}"
      + (" (weights from the cache)" if result.from_cache else ""))

# %% [markdown]
# ## A prediction
#
# The model only knows five classes (background, circle, rectangle, triangle, ellipse). After so short
# a training it finds the shapes but often confuses their kinds (compare truth and prediction); on the
# photograph it can only say which regions *look like* which shape. Background is left uncoloured.

# %%
held_out = Shapes(64, size=64, seed=1000)             # the trainer's validation set
i = next(i for i in range(len(held_out)) if len(held_out[i][1].unique()) >= 4)  # one with 3+ kinds of shape
image, truth = held_out[i]
with torch.no_grad():
    shapes_logits = model(image[None])
    photo_logits = model(photo.tensor)
viz.prediction_panels([(held_out.array(i), truth, f"held-out Shapes image {i}: truth"),
                       (held_out.array(i), shapes_logits, "its prediction"),
                       (photo.array, photo_logits, "a photo the model never saw")], CLASSES, same_scale=False)

# %% [markdown]
# ## One attention map
#
# `segviz.capture` records every attention call of a forward pass. Here is where the query pixel
# (cyan +) on the astronaut's face looks in the first stage. SegFormer shrinks the keys: the white grid
# is the key grid, each key cell summarising 8×8 query tokens. Colours run from the smallest to the
# largest weight; the cyan line on the colorbar marks uniform attention (1/64).

# %%
with torch.no_grad(), segviz.capture(model) as rec:
    model(photo.tensor)
print(rec)
viz.attention_overlay(photo.array, rec.attention["encoder.stages.0.blocks.0.attn"], (80, 118),
                      title="stage 1")

# %% [markdown]
# ## Where to go next
#
# - [01_segformer.ipynb](01_segformer.ipynb): SegFormer block by block: overlapping patches, efficient
#   self-attention, Mix-FFN without positional encoding, the All-MLP decoder, and B0–B5 costs next to the
#   published numbers.
# - [02_edaformer_isr.ipynb](02_edaformer_isr.ipynb): EDAFormer and inference spatial reduction: slide the reduction ratios and
#   watch cost and attention change on the same weights.
# - [03_swin.ipynb](03_swin.ipynb): Swin Transformer: window attention and its cost, the cyclic shift and
#   its −100 mask step by step, the relative position bias, and how far a pixel reaches through shifted windows.
# - `04_mask2former`, `05_deeplab`, `06_deformable_and_video`, `07_compare`: masked attention, atrous
#   convolution, deformable sampling, and all of them side by side (as they land).
