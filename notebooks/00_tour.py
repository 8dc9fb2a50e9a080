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
# **What you will see:** a real photograph, a small SegFormer trained on synthetic scenes (its weights
# ship with segviz, so nothing trains here), its prediction on a held-out scene and on the photo, and one
# attention map: where a single pixel of the photo looks inside the network. Everything runs on a CPU in
# well under a minute.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ["jpeg"]  # figures as JPEG: keeps the saved notebook small
import torch

import segviz
from segviz import viz
from segviz.data import SCENE_CLASSES, Scenes, sample_image

torch.manual_seed(0)
photo = sample_image("astronaut", size=256)          # .array (256, 256, 3) uint8, .tensor (1, 3, 256, 256)
model = segviz.create_model("segformer-nano", weights="scenes").eval()   # 6 classes: background + 5 shapes
shipped = segviz.zoo.find("segformer-nano", "scenes")   # its card: shipped.card

# %% [markdown]
# The weights come with a model card (`segviz.list_weights()` lists every shipped model): how they were
# trained, and how well the stored weights segment held-out scenes they never saw:

# %%
# NBVAL_CHECK_OUTPUT
print(shipped.describe())

# %% [markdown]
# ## A prediction
#
# The model knows six classes: background, disc, ring, rectangle, triangle, cross. In these scenes
# colour and texture say nothing about the class (every shape draws them from the same distribution)
# and sizes range from a few pixels to half the image, so only the *shape* tells the classes apart.
# Left, a held-out scene as the model sees it; then its true classes and the model's prediction, both
# coloured over a pale copy of the scene so that the objects' own colours cannot pass for class colours.
# Background is left uncoloured.

# %%
held_out = Scenes(100, 256, seed=0, split="val")     # the held-out scenes of the card's mIoU
i = 37                                               # one with all five kinds of shape
image, truth = held_out[i]
with torch.no_grad():
    scene_logits = model(image[None])                 # (1, 6, 64, 64): 1/4 of the input
scene = held_out.array(i)
pale = (0.3 * scene.mean(-1, keepdims=True) + 0.7 * 255).astype("uint8").repeat(3, -1)
viz.prediction_panels([(scene, torch.zeros_like(truth), f"held-out scene {i}"),
                       (pale, truth, "truth"), (pale, scene_logits, "prediction")], SCENE_CLASSES)

# %% [markdown]
# Round shapes come out best: the disc and the ring are found and named. Straight edges and corners are
# where this small model still fails: triangles, rectangles and crosses are often missed or given the
# wrong class, which is why its mIoU stays low. Measured on this scene (most of its pixels are background,
# so the share of pixels right says little; mIoU averages the overlap over the classes):

# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    predicted = model.predict(image[None])[0].argmax(0)   # logits upsampled to 256x256, then the best class
print(f"scene {i}: mIoU {segviz.miou(predicted, truth, len(SCENE_CLASSES)):.3f}, "
      f"pixels right {(predicted == truth).float().mean():.1%}")

# %% [markdown]
# On a photograph it never saw, the model can only say which regions *look like* which shape (round
# ones, such as the face, tend to come out as discs):

# %%
with torch.no_grad():
    photo_logits = model(photo.tensor)
viz.prediction_overlay(photo.array, photo_logits, SCENE_CLASSES, title="a photo the model never saw")

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
