"""Data for looking inside models: real photographs and a synthetic segmentation set.

- :func:`sample_image` — an RGB photo shipped inside scikit-image (astronaut, coffee, chelsea,
  rocket, ...), as a normalised ``(1, 3, H, W)`` tensor and a displayable ``(H, W, 3)`` uint8 array.
- :class:`Shapes` — synthetic semantic segmentation (background, circle, rectangle, triangle,
  ellipse) with exact per-pixel labels, deterministic per seed; small enough to train on a CPU.
- :class:`Scenes` — synthetic scenes (disc, ring, rectangle, triangle, cross over textured
  backgrounds) with exact semantic labels, instance ids and moving clips; what the shipped models
  are trained on.
- :data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`, :func:`normalize`, :func:`denormalize` — the
  normalisation every segviz model expects, and its inverse for display.
"""
from segviz.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SAMPLE_IMAGES,
    SampleImage,
    denormalize,
    normalize,
    sample_image,
)
from segviz.data.scenes import SCENE_CLASSES, Scene, SceneObject, Scenes
from segviz.data.shapes import CLASSES, Layer, Shapes

__all__ = [
    "CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SAMPLE_IMAGES",
    "Layer",
    "SCENE_CLASSES",
    "SampleImage",
    "Scene",
    "SceneObject",
    "Scenes",
    "Shapes",
    "denormalize",
    "normalize",
    "sample_image",
]
