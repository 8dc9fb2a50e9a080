"""Scenes: synthetic scenes with semantic labels, instance ids and moving clips, generated on the fly.

Each image is a textured background (a two-colour gradient at a random angle, with low-frequency
waves) with 2 to 8 objects of five shape classes painted over it in depth order:

    0 background, 1 disc, 2 ring, 3 rectangle, 4 triangle, 5 cross          (see SCENE_CLASSES)

What the classes are made so that only *shape* tells them apart:

- **colour and texture carry no class information**: every object draws its fill (flat, linear
  gradient, stripes or checkerboard) and its colours from the same distribution, whatever its class;
- **scale varies widely**: an object's extent is log-uniform between 6% and 50% of the image side,
  so the same class appears a few pixels and half an image wide;
- **objects occlude each other**: later objects are painted over earlier ones and may run off the
  image edge, so a model must often classify a part of a shape.

The labels are exact, not drawn separately: every object is one boolean mask on the pixel
centres (no anti-aliasing); the image, the semantic map and the instance map are all painted
from those same masks, so they agree pixel for pixel. Instance ids are the objects' depth
order, 1..K (0 where only background shows); an object hidden completely has no pixels.

**Clips** (:meth:`Scenes.clip`): the same scene over ``frames`` time steps, each object moving
with its own velocity (bouncing off the image border) and rotation speed, keeping its instance
id and depth order, over a background that stays still. This is what video segmentation
(video Mask2Former) needs: the same ids in every frame.

Item ``i`` of a split depends only on ``(seed, split, i)`` and costs a few milliseconds to
generate, so a training set can be as long as the training run without using memory.

Why 256 px by default: a SegFormer / EDAFormer stage-1 map is then 64 x 64, so at the training
reduction ratio 8 its keys and values still form an 8 x 8 grid (and ISR to ratio 16 leaves
4 x 4); a Swin stage-1 map (64 x 64, padded to 70) holds 10 x 10 windows of 7 x 7.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from segviz.data.images import normalize

SCENE_CLASSES = ("background", "disc", "ring", "rectangle", "triangle", "cross")
SPLITS = ("train", "val")
TARGETS = ("semantic", "panoptic")
FILLS = ("flat", "gradient", "stripes", "checker")
MIN_EXTENT, MAX_EXTENT = 0.06, 0.5          # object size as a fraction of the image side


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One object of a scene: its class, its geometry (centre in pixels, extent = the diameter
    of its bounding circle in pixels, rotation in radians, the class's shape parameters), its
    fill, and its motion for clips (pixels and radians per frame)."""

    label: int
    center: tuple[float, float]        # (x, y) in pixels, pixel centres at i + 0.5
    extent: float
    angle: float
    shape: tuple[float, ...]           # class-specific: ring hole ratio, rectangle aspect, cross arm width
    fill: str
    colors: tuple[tuple[int, int, int], tuple[int, int, int]]
    fill_angle: float
    fill_period: float
    velocity: tuple[float, float]
    spin: float

    def moved(self, t: int, size: int) -> "SceneObject":
        """This object ``t`` frames later: centre moved by ``t·velocity`` and reflected at the
        image border (a bounce), angle turned by ``t·spin``."""
        center = tuple(float(_bounce(c + t * v, size)) for c, v in zip(self.center, self.velocity))
        return dataclasses.replace(self, center=center, angle=self.angle + t * self.spin)


@dataclasses.dataclass(frozen=True)
class Scene:
    """One generated image and its exact labels.

    image (H, W, 3) uint8; semantic (H, W) int64 class per pixel; instances (H, W) int64, the
    1-based depth index of the object visible at each pixel (0: background); objects: the
    :class:`SceneObject` list in depth order (``objects[k - 1]`` has instance id k)."""

    image: np.ndarray
    semantic: np.ndarray
    instances: np.ndarray
    objects: tuple[SceneObject, ...]

    def instance_masks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The visible objects as a set, as set-prediction models (Mask2Former) are trained:
        ``(ids (N,) int64, classes (N,) int64, masks (N, H, W) bool)``, in depth order, leaving
        out objects hidden completely. Pixels outside every mask are background."""
        ids = np.array([k for k in range(1, len(self.objects) + 1) if (self.instances == k).any()], dtype=np.int64)
        classes = np.array([self.objects[k - 1].label for k in ids], dtype=np.int64)
        masks = self.instances[None] == ids[:, None, None]
        return ids, classes, masks


def _bounce(x: float, size: int) -> float:
    """Position after reflections at 0 and ``size`` (a triangle wave of period 2·size)."""
    period = 2 * size
    x = x % period
    return x if x <= size else period - x


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"Scenes: {name} must be an int >= {low}, got {value!r}")
    return int(value)


class Scenes(Dataset):
    """``n`` synthetic scenes of ``size`` x ``size`` pixels (see the module docstring).

    ``dataset[i]`` -> ``(image, label)``: image (3, size, size) float32, ImageNet-normalised like
    :func:`segviz.data.sample_image`; label (size, size) int64 in ``range(6)``, or with
    ``target="panoptic"`` (2, size, size) int64: the class map stacked over the instance-id map
    (0 = background, k = ``objects[k - 1]``), which a set-prediction model such as Mask2Former
    turns into one segment per object (:func:`segviz.models.mask2former.panoptic_targets`). Also
    ``dataset.scene(i)`` (image, semantic and instance maps, the objects), ``dataset.array(i)`` and
    ``dataset.label_array(i)`` for display, ``dataset.instances(i)`` for set prediction and
    ``dataset.clip(i, frames)`` for video. With ``frames=T`` every item is clip ``i`` instead
    (what a video model trains on): image (T, 3, size, size) and label (T, size, size) or, panoptic,
    (T, 2, size, size); the instance ids are the same in every frame.

    Args:
        n: number of images (>= 1). Items are generated when asked for, so a long training set
            costs no memory; the last few hundred are kept.
        size: image side in pixels (>= 32; 256 by default, see the module docstring).
        seed: non-negative int.
        split: ``"train"`` or ``"val"``; the two splits draw from different random streams, so
            ``Scenes(n, size, seed, "val")`` is held out from every training set of any seed.
        target: ``"semantic"`` (default) or ``"panoptic"`` (see above); the images are the same.
        frames: None (default: images) or an int >= 1, the clip length of every item.
    """

    classes = SCENE_CLASSES
    num_classes = len(SCENE_CLASSES)

    def __init__(self, n: int, size: int = 256, seed: int = 0, split: str = "train", target: str = "semantic",
                 frames: int | None = None):
        self.n = _check_int("n", n, 1)
        self.size = _check_int("size", size, 32)
        self.seed = _check_int("seed", seed, 0)
        if split not in SPLITS:
            raise ValueError(f"Scenes: split must be one of {SPLITS}, got {split!r}")
        self.split = split
        if target not in TARGETS:
            raise ValueError(f"Scenes: target must be one of {TARGETS} ('semantic': the (H, W) class map; "
                             f"'panoptic': (2, H, W), the class map over the instance-id map), got {target!r}")
        self.target = target
        self.frames = None if frames is None else _check_int("frames", frames, 1)
        self._cache: dict[int, Scene] = {}

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        extra = f", target={self.target!r}" if self.target != "semantic" else ""
        extra += f", frames={self.frames}" if self.frames is not None else ""
        return f"Scenes(n={self.n}, size={self.size}, seed={self.seed}, split={self.split!r}{extra})"

    def description(self) -> dict:
        """What identifies this dataset's content (part of the trainer's cache key and model cards)."""
        out = {"class": type(self).__name__, "n": self.n, "size": self.size, "seed": self.seed, "split": self.split}
        if self.target != "semantic":  # the semantic sets keep the description (and cache keys) they always had
            out["target"] = self.target
        if self.frames is not None:
            out["frames"] = self.frames
        return out

    # ------------------------------------------------------------------ items
    def _index(self, i) -> int:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"Scenes index must be an int, got {type(i).__name__}")
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self!r}")
        return int(i) % self.n

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS.index(self.split), i])

    def objects(self, i: int) -> tuple[SceneObject, ...]:
        """The objects of scene ``i`` in depth order (the first is painted first, lowest)."""
        return _draw_objects(self._rng(self._index(i)), self.size)

    def scene(self, i: int) -> Scene:
        """Scene ``i``: image, semantic map, instance map and objects (kept for reuse; read-only)."""
        i = self._index(i)
        if i not in self._cache:
            rng = self._rng(i)
            objects = _draw_objects(rng, self.size)
            background = _background(rng, self.size)
            if len(self._cache) >= 512:
                self._cache.pop(next(iter(self._cache)))
            self._cache[i] = _render(background, objects, self.size)
        return self._cache[i]

    def __getitem__(self, i) -> tuple[Tensor, Tensor]:
        if self.frames is not None:  # a clip: the frames' images and labels stacked
            items = [self._item(scene) for scene in self.clip(i, self.frames)]
            return torch.stack([image for image, _ in items]), torch.stack([label for _, label in items])
        return self._item(self.scene(i))

    def _item(self, scene: Scene) -> tuple[Tensor, Tensor]:
        if self.target == "panoptic":  # what a set-prediction model trains on: every object its own segment
            return normalize(scene.image), torch.from_numpy(np.stack([scene.semantic, scene.instances]))
        return normalize(scene.image), torch.from_numpy(scene.semantic.copy())

    def array(self, i: int) -> np.ndarray:
        """Image ``i`` as a (size, size, 3) uint8 array for display."""
        return self.scene(i).image.copy()

    def label_array(self, i: int) -> np.ndarray:
        """Semantic label map ``i``: (size, size) int64 class indices."""
        return self.scene(i).semantic.copy()

    def instances(self, i: int) -> tuple[Tensor, Tensor]:
        """Scene ``i`` as a set of visible objects: ``(classes (N,) int64, masks (N, size, size) bool)``."""
        _, classes, masks = self.scene(i).instance_masks()
        return torch.from_numpy(classes), torch.from_numpy(masks)

    def clip(self, i: int, frames: int = 8) -> list[Scene]:
        """Scene ``i`` over ``frames`` time steps: frame 0 is ``scene(i)``; in each later frame every
        object has moved by its velocity (1-4% of the image side per frame, bouncing off the border)
        and turned by its spin, keeping its instance id and depth; the background stays."""
        frames = _check_int("frames", frames, 1)
        i = self._index(i)
        rng = self._rng(i)
        objects = _draw_objects(rng, self.size)
        background = _background(rng, self.size)
        return [_render(background, tuple(o.moved(t, self.size) for o in objects), self.size) for t in range(frames)]


# --------------------------------------------------------------------------- drawing
def _grid(size: int, rows: slice = slice(None), cols: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates x (1, w) of the columns and y (h, 1) of the rows (all by default):
    pixel (r, c) has centre (c + 0.5, r + 0.5)."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    return coords[cols][None, :], coords[rows][:, None]


def _random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _draw_objects(rng: np.random.Generator, size: int) -> tuple[SceneObject, ...]:
    """2-8 objects; class, scale, pose, fill and motion drawn independently of each other."""
    objects = []
    for _ in range(int(rng.integers(2, 9))):
        label = int(rng.integers(1, len(SCENE_CLASSES)))
        extent = float(size * np.exp(rng.uniform(np.log(MIN_EXTENT), np.log(MAX_EXTENT))))
        center = tuple(float(c) for c in rng.uniform(0.05 * size, 0.95 * size, size=2))
        shape = {
            1: (),
            2: (float(rng.uniform(0.45, 0.7)),),          # hole radius / outer radius
            3: (float(rng.uniform(1.0, 2.5)),),           # long side / short side
            4: (),
            5: (float(rng.uniform(0.25, 0.4)),),          # arm width / extent
        }[label]
        speed = rng.uniform(0.01, 0.04) * size
        heading = rng.uniform(0, 2 * np.pi)
        objects.append(SceneObject(
            label=label, center=center, extent=extent, angle=float(rng.uniform(0, 2 * np.pi)), shape=shape,
            fill=FILLS[int(rng.integers(len(FILLS)))], colors=(_random_color(rng), _random_color(rng)),
            fill_angle=float(rng.uniform(0, np.pi)), fill_period=float(rng.uniform(4, 16)),
            velocity=(float(speed * np.cos(heading)), float(speed * np.sin(heading))),
            spin=float(rng.uniform(-0.08, 0.08)),
        ))
    return tuple(objects)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32: a two-colour linear gradient at a random angle, plus two
    low-frequency waves of ±25 grey levels (a texture with no edges that could pass for a shape)."""
    x, y = _grid(size)
    a, b = (np.array(_random_color(rng), np.float32) for _ in range(2))
    theta = rng.uniform(0, 2 * np.pi)
    t = ((x - size / 2) * np.cos(theta) + (y - size / 2) * np.sin(theta)) / size + 0.5
    image = a + np.clip(t, 0, 1)[..., None] * (b - a)
    for _ in range(2):
        k = rng.uniform(1, 4, size=2) * 2 * np.pi / size
        wave = np.sin(k[0] * x + k[1] * y + rng.uniform(0, 2 * np.pi)) * 25
        image = image + wave[..., None] * rng.uniform(-1, 1, size=3).astype(np.float32)
    return image.astype(np.float32)


def shape_mask(obj: SceneObject, size: int) -> np.ndarray:
    """(size, size) bool: the pixels whose centres lie inside ``obj``.

    Coordinates are taken in the object's frame (centred, rotated by -angle, scaled so that the
    object's bounding circle has radius 1):
    disc |p| <= 1; ring r_in <= |p| <= 1; rectangle |u| <= a, |v| <= b with a / b = aspect and
    a² + b² = 1; triangle equilateral, inscribed in the unit circle; cross two bars of half-width w/2
    and half-length (1 - (w/2)²)^½ (so the bar ends touch the circle)."""
    rows, cols = _window(obj, size)
    mask = np.zeros((size, size), bool)
    mask[rows, cols] = _local_mask(obj, *_grid(size, rows, cols))
    return mask


def _window(obj: SceneObject, size: int) -> tuple[slice, slice]:
    """Rows and columns of the pixels whose centres may lie inside ``obj`` (its bounding circle's box)."""
    radius = obj.extent / 2
    (x0, x1), (y0, y1) = ((max(0, int(np.floor(c - radius - 1))), min(size, int(np.ceil(c + radius + 1)))) for c in obj.center)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _local_mask(obj: SceneObject, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside test of ``obj`` at pixel centres x (1, w) and y (h, 1); see :func:`shape_mask`."""
    radius = obj.extent / 2
    dx, dy = (x - obj.center[0]) / radius, (y - obj.center[1]) / radius
    c, s = np.cos(obj.angle), np.sin(obj.angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    if obj.label == 1:                                  # disc
        return u * u + v * v <= 1
    if obj.label == 2:                                  # ring
        r2 = u * u + v * v
        return (r2 <= 1) & (r2 >= obj.shape[0] ** 2)
    if obj.label == 3:                                  # rectangle
        b = 1 / np.hypot(obj.shape[0], 1)
        return (np.abs(u) <= obj.shape[0] * b) & (np.abs(v) <= b)
    if obj.label == 4:                                  # equilateral triangle, vertices on the unit circle
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):                              # edge normals at angles 60° + 120° k, distance 1/2
            phi = np.pi / 3 + 2 * np.pi * k / 3
            inside &= u * np.cos(phi) + v * np.sin(phi) <= 0.5
        return inside
    if obj.label == 5:                                  # cross: two perpendicular bars
        half_w = obj.shape[0] / 2
        half_l = np.sqrt(1 - half_w**2)
        return ((np.abs(u) <= half_l) & (np.abs(v) <= half_w)) | ((np.abs(v) <= half_l) & (np.abs(u) <= half_w))
    raise ValueError(f"unknown scene class {obj.label}; allowed 1..{len(SCENE_CLASSES) - 1}")


def _fill(obj: SceneObject, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(h, w, 3) float32 texture of ``obj`` at pixel centres x (1, w), y (h, 1): flat colour, a
    gradient across the object, stripes or a checkerboard of its two colours (period
    ``fill_period`` px, at ``fill_angle``)."""
    a, b = (np.array(col, np.float32) for col in obj.colors)
    if obj.fill == "flat":
        return np.broadcast_to(a, (y.shape[0], x.shape[1], 3))
    c, s = np.cos(obj.fill_angle), np.sin(obj.fill_angle)
    u, v = (x - obj.center[0]) * c + (y - obj.center[1]) * s, -(x - obj.center[0]) * s + (y - obj.center[1]) * c
    if obj.fill == "gradient":
        t = np.clip(u / obj.extent + 0.5, 0, 1)
    elif obj.fill == "stripes":
        t = (np.floor(u / obj.fill_period) % 2).astype(np.float32)
    else:  # checker
        t = ((np.floor(u / obj.fill_period) + np.floor(v / obj.fill_period)) % 2).astype(np.float32)
    return a + t[..., None] * (b - a)


def _render(background: np.ndarray, objects: tuple[SceneObject, ...], size: int) -> Scene:
    """Paint the objects in depth order over the background; semantic and instance maps are
    painted from the same masks as the image."""
    image = background.copy()
    semantic = np.zeros((size, size), np.int64)
    instances = np.zeros((size, size), np.int64)
    for k, obj in enumerate(objects, start=1):
        rows, cols = _window(obj, size)
        x, y = _grid(size, rows, cols)
        mask = _local_mask(obj, x, y)
        image[rows, cols][mask] = _fill(obj, x, y)[mask]
        semantic[rows, cols][mask] = obj.label
        instances[rows, cols][mask] = k
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    for array in (image, semantic, instances):
        array.setflags(write=False)
    return Scene(image, semantic, instances, objects)
