"""Shapes: a tiny synthetic semantic-segmentation dataset built on ``skimage.draw.random_shapes``.

Each image is a plain, slightly tinted background with 1 to 4 coloured shapes; the label map
says, per pixel, which kind of shape is visible there:

    0 background, 1 circle, 2 rectangle, 3 triangle, 4 ellipse      (see CLASSES)

``random_shapes`` only reports bounding boxes, so the per-pixel labels are built honestly:
each shape is drawn alone by ``random_shapes(max_shapes=1, shape=kind)`` on a white canvas,
the pixels it painted form its mask, and the shapes are composited in order (later shapes
occlude earlier ones) into both the image and the label map. A shape cut by the image border
is drawn again, so every shape is whole before occlusion. Ellipses are redrawn until
they are visibly elongated (axis ratio >= 1.5), so that "ellipse" and "circle" differ in
shape, not only in name. Colour carries no class information.

Item ``i`` depends only on ``(seed, i)``; items are generated on first use and kept in memory.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from segviz.data.images import normalize

CLASSES = ("background", "circle", "rectangle", "triangle", "ellipse")
MIN_ELLIPSE_RATIO = 1.5


@dataclasses.dataclass(frozen=True)
class Layer:
    """One drawn shape: its class index, its RGB colour and the (size, size) mask it painted
    (before later shapes covered parts of it)."""

    label: int
    color: tuple[int, int, int]
    mask: np.ndarray


def _axis_ratio(mask: np.ndarray) -> float:
    """sqrt of the ratio of the principal second moments of a mask: 1 for a disc, a/b for an ellipse."""
    rows, cols = np.nonzero(mask)
    if rows.size < 3:
        return 1.0
    small, large = np.linalg.eigvalsh(np.cov(np.stack([rows, cols]).astype(float)))
    return float(np.sqrt(large / max(small, 1e-9)))


def _draw_one(kind: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Mask and colour of a single shape of ``kind`` drawn by ``random_shapes``."""
    from skimage.draw import random_shapes

    min_size = max(4, size // 4)
    while True:
        with warnings.catch_warnings():  # "could not fit" is handled by drawing again
            warnings.simplefilter("ignore")
            canvas, boxes = random_shapes(
                (size, size), max_shapes=1, min_shapes=1, shape=kind, min_size=min_size,
                max_size=size // 2, intensity_range=((0, 170),), rng=rng,
            )
        # Shape colours lie in [0, 170], so every painted pixel differs from the white canvas.
        mask = (canvas != 255).any(axis=-1)
        # Keep only whole shapes: one cut by the image border may no longer look like its kind.
        touches_border = mask[[0, -1]].any() or mask[:, [0, -1]].any()
        if not boxes or touches_border or mask.sum() < min_size**2 // 4:
            continue
        if kind == "ellipse" and _axis_ratio(mask) < MIN_ELLIPSE_RATIO:
            continue
        color = tuple(int(c) for c in canvas[mask][0])
        mask.setflags(write=False)
        return mask, color


class Shapes(Dataset):
    """Synthetic semantic segmentation: ``n`` images of ``size`` x ``size`` pixels.

    ``dataset[i]`` -> ``(image, label)``: image (3, size, size) float32, ImageNet-normalised
    like :func:`segviz.data.sample_image`; label (size, size) int64 with values in
    ``range(len(CLASSES))``. ``dataset.array(i)`` is the (size, size, 3) uint8 image for display,
    ``dataset.layers(i)`` the shapes it was composited from.

    Args:
        n: number of images (>= 1).
        size: image side in pixels (>= 16).
        seed: non-negative int; item ``i`` depends only on ``(seed, i)``.
    """

    classes = CLASSES
    num_classes = len(CLASSES)

    def __init__(self, n: int, size: int = 64, seed: int = 0):
        for arg, value, low in (("n", n, 1), ("size", size, 16), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Shapes: {arg} must be an int >= {low}, got {value!r}")
        self.n, self.size, self.seed = n, size, seed
        self._items: dict[int, tuple[np.ndarray, np.ndarray, tuple, list[Layer]]] = {}

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"Shapes(n={self.n}, size={self.size}, seed={self.seed})"

    def description(self) -> dict:
        """What identifies this dataset's content (used as part of the trainer's cache key)."""
        return {"class": type(self).__name__, "n": self.n, "size": self.size, "seed": self.seed}

    def _index(self, i: int) -> int:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"Shapes index must be an int, got {type(i).__name__}")
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self!r}")
        return int(i) % self.n

    def _item(self, i: int):
        i = self._index(i)
        if i not in self._items:
            self._items[i] = self._generate(i)
        return self._items[i]

    def _generate(self, i: int):
        rng = np.random.default_rng([self.seed, i])
        background = tuple(int(c) for c in rng.integers(200, 256, size=3))
        image = np.empty((self.size, self.size, 3), dtype=np.uint8)
        image[:] = background
        label = np.zeros((self.size, self.size), dtype=np.uint8)
        layers = []
        for _ in range(int(rng.integers(1, 5))):
            cls = int(rng.integers(1, len(CLASSES)))
            mask, color = _draw_one(CLASSES[cls], self.size, rng)
            image[mask] = color
            label[mask] = cls
            layers.append(Layer(cls, color, mask))
        for a in (image, label):
            a.setflags(write=False)
        return image, label, background, layers

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image, label, _, _ = self._item(i)
        return normalize(image), torch.from_numpy(label.astype(np.int64))

    def array(self, i: int) -> np.ndarray:
        """Image ``i`` as a (size, size, 3) uint8 array for display."""
        return self._item(i)[0].copy()

    def label_array(self, i: int) -> np.ndarray:
        """Label map ``i`` as a (size, size) uint8 array of class indices."""
        return self._item(i)[1].copy()

    def background(self, i: int) -> tuple[int, int, int]:
        """The RGB background colour of image ``i``."""
        return self._item(i)[2]

    def layers(self, i: int) -> list[Layer]:
        """The shapes of image ``i`` in drawing order (later ones lie on top)."""
        return list(self._item(i)[3])
