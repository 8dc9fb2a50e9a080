"""Turning what the models hand us (tensors of many shapes) into plain arrays to draw.

Every drawing function in ``segviz.viz`` calls these first, so each one accepts the same
inputs and fails the same way on bad ones.
"""
from __future__ import annotations

import numpy as np
import torch


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def as_image(image) -> np.ndarray:
    """An RGB picture as a float (H, W, 3) array in [0, 1].

    Accepts a uint8 (H, W, 3) array (``segviz.data.sample_image(...).array``), a float
    (H, W, 3) array in [0, 1], or a tensor (3, H, W) / (1, 3, H, W) in [0, 1].
    A normalised model input (values outside [0, 1]) is refused: pass the uint8 picture.
    """
    arr = _numpy(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"an image must be (H, W, 3) or (3, H, W) / (1, 3, H, W), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if arr.min() < -1e-3 or arr.max() > 1 + 1e-3:
        raise ValueError(
            f"a float image must lie in [0, 1], got values in [{arr.min():.2f}, {arr.max():.2f}]; "
            "pass the uint8 picture (sample.array), not the normalised model input"
        )
    return arr.clip(0, 1)


def as_map(features) -> np.ndarray:
    """A feature map as a float (C, h, w) array; accepts (C, h, w) or (1, C, h, w)."""
    arr = _numpy(features)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"a feature map must be (C, h, w) or (1, C, h, w), got shape {arr.shape}")
    return arr.astype(np.float32)


def as_plane(values) -> np.ndarray:
    """A single-channel map as a float (h, w) array; accepts (h, w), (1, h, w), (1, 1, h, w)."""
    arr = _numpy(values)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"a single-channel map must be (h, w), got shape {arr.shape}")
    return arr.astype(np.float32)


def as_labels(labels) -> np.ndarray:
    """A class-index map as an int (h, w) array; accepts (h, w) / (1, h, w) indices or (K, h, w) / (1, K, h, w) logits."""
    arr = _numpy(labels)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] == 1 and not np.issubdtype(arr.dtype, np.floating):
        arr = arr[0]
    if arr.ndim == 3:
        arr = arr.argmax(0)
    if arr.ndim != 2:
        raise ValueError(f"labels must be (h, w) class indices or (K, h, w) logits, got shape {arr.shape}")
    return arr.astype(np.int64)


def robust_unit(x: np.ndarray, low: float = 1.0, high: float = 99.0, axis=None) -> np.ndarray:
    """Scale to [0, 1] between the ``low`` and ``high`` percentiles (outliers clipped)."""
    lo = np.percentile(x, low, axis=axis, keepdims=axis is not None)
    hi = np.percentile(x, high, axis=axis, keepdims=axis is not None)
    return np.clip((x - lo) / np.maximum(hi - lo, 1e-8), 0.0, 1.0)
