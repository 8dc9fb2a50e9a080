"""Real photographs shipped inside scikit-image, ready for a model and for display.

    img = sample_image("astronaut", size=224)
    img.tensor   # (1, 3, 224, 224) float32, ImageNet-normalised: (x / 255 - mean) / std
    img.array    # (224, 224, 3) uint8, for plt.imshow

The tensor is always computed from the (resized) uint8 array, so the two show exactly the
same picture: ``denormalize(img.tensor)`` gives back ``img.array``.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# RGB photographs that ship with scikit-image itself (no download).
SAMPLE_IMAGES = (
    "astronaut",
    "cat",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "rocket",
)


@dataclasses.dataclass(frozen=True)
class SampleImage:
    """A photograph in two forms: ``tensor`` (1, 3, H, W) float32 normalised for a model,
    and ``array`` (H, W, 3) uint8 for display."""

    tensor: Tensor
    array: np.ndarray
    name: str


def normalize(array: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32, x_c = (array_c / 255 - mean_c) / std_c."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"normalize expects an (H, W, 3) uint8 array, got {array.dtype} {array.shape}")
    x = torch.tensor(array).permute(2, 0, 1).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def denormalize(tensor: Tensor) -> np.ndarray:
    """Undo :func:`normalize`: (3, H, W) or (1, 3, H, W) -> (H, W, 3) uint8;
    (B, 3, H, W) with B > 1 -> (B, H, W, 3) uint8. Values are clipped to [0, 255]."""
    if not isinstance(tensor, Tensor) or tensor.dim() not in (3, 4) or tensor.shape[-3] != 3:
        shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
        raise ValueError(f"denormalize expects a (3, H, W) or (B, 3, H, W) tensor, got {shape}")
    x = tensor.detach().float().cpu()
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = (x * std + mean).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return x.movedim(-3, -1).numpy()


@functools.lru_cache(maxsize=None)
def _load(name: str) -> np.ndarray:
    import skimage.data

    array = getattr(skimage.data, name)()
    array.setflags(write=False)
    return array


def _target_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        pair = (size, size)
    elif (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in size)
    ):
        pair = (size[0], size[1])
    else:
        raise ValueError(f"size must be None, an int or an (h, w) pair of ints, got {size!r}")
    if min(pair) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return pair


def _center_crop_square(array: np.ndarray) -> np.ndarray:
    """The largest centred square of an (H, W, ...) array."""
    h, w = array.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return array[top : top + s, left : left + s]


def sample_image(name: str = "astronaut", size: int | tuple[int, int] | None = None) -> SampleImage:
    """A real RGB photograph from ``skimage.data`` (one of :data:`SAMPLE_IMAGES`).

    Args:
        name: e.g. ``"astronaut"`` (512x512), ``"coffee"`` (400x600), ``"chelsea"`` (300x451),
            ``"rocket"`` (427x640).
        size: ``None`` keeps the original size; an int ``s`` centre-crops to a square and
            resizes to (s, s), so the photo is not squashed; an ``(h, w)`` pair resizes to
            exactly that (the aspect ratio may change). Resizing is anti-aliased.

    Returns:
        :class:`SampleImage` with ``tensor`` (1, 3, H, W) float32 ImageNet-normalised and
        ``array`` (H, W, 3) uint8; the tensor is computed from the array.
    """
    if name not in SAMPLE_IMAGES:
        raise ValueError(f"unknown sample image {name!r}; valid names: {', '.join(SAMPLE_IMAGES)}")
    target = _target_size(size)
    array = _load(name)
    if isinstance(size, int):
        array = _center_crop_square(array)
    if target is not None and target != array.shape[:2]:
        from skimage.transform import resize

        resized = resize(array, target, order=1, anti_aliasing=True, preserve_range=True)
        array = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    else:
        array = array.copy()
    return SampleImage(tensor=normalize(array).unsqueeze(0), array=array, name=name)
