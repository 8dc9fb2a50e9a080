"""A tiny trainer and mIoU, so that attention maps and features mean something.

    result = segviz.train(model, segviz.data.Shapes(512, size=64), steps=300)
    result.val_miou          # mean IoU on a held-out Shapes set
    result.from_cache        # True when the weights came from the on-disk cache

Trained weights are cached (safetensors) under ``$SEGVIZ_CACHE`` (default ``~/.cache/segviz``),
keyed by everything that determines the result, so notebooks re-run in seconds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segviz.inspect._args import as_device
from segviz.nn.settings import inference_state
from segviz.weights import load_state_dict_strict, read_state_dict


# --------------------------------------------------------------------------- mIoU
def intersection_union(pred, target, num_classes: int, ignore_index: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-class pixel counts ``(|P_c ∩ T_c|, |P_c ∪ T_c|)``, each (num_classes,) int64.

    pred, target: integer class maps of the same shape (any number of dimensions).
    Pixels whose target equals ``ignore_index`` are left out of both counts.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError("pred and target must be integer class maps (take argmax of logits first)")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    for name, t in (("pred", pred), ("target", target)):
        if t.numel() and (t.min() < 0 or t.max() >= num_classes):
            allowed = f"[0, {num_classes})" + (f" or ignore_index={ignore_index}" if name == "target" and ignore_index is not None else "")
            raise ValueError(f"{name} holds class {int(t.min() if t.min() < 0 else t.max())}; allowed {allowed}")
    # Joint histogram: entry (t, p) counts pixels of true class t predicted as p.
    confusion = torch.bincount(target * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)
    intersection = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    return intersection.cpu(), union.cpu()


def iou_from_counts(intersection: Tensor, union: Tensor) -> float:
    """mean over classes with union > 0 of intersection / union (NaN if there are none)."""
    present = union > 0
    if not present.any():
        return math.nan
    return float((intersection[present].double() / union[present].double()).mean())


def miou(pred, target, num_classes: int, ignore_index: int | None = None) -> float:
    """Mean intersection over union.

        IoU_c = |P_c ∩ T_c| / |P_c ∪ T_c|,     mIoU = mean of IoU_c over classes c with P_c ∪ T_c ≠ ∅

    where P_c, T_c are the pixels predicted / labelled as class c. Classes absent from both
    pred and target are left out of the mean (mmseg's nan-mean). Pixels whose target is
    ``ignore_index`` count for nothing. Returns NaN when no pixel is left.

    pred, target: integer class maps (tensors or arrays) of the same shape, e.g. (B, H, W).
    """
    return iou_from_counts(*intersection_union(pred, target, num_classes, ignore_index))


# --------------------------------------------------------------------------- trainer
@dataclasses.dataclass
class TrainResult:
    """What :func:`train` hands back. ``losses`` has one training loss per step;
    ``val_miou`` is None when there was no validation set."""

    model: nn.Module = dataclasses.field(repr=False)
    losses: list[float] = dataclasses.field(repr=False)
    val_miou: float | None
    from_cache: bool
    cache_path: Path | None = None


def cache_dir() -> Path:
    """Folder of cached weights: ``$SEGVIZ_CACHE`` if set, else ``~/.cache/segviz``."""
    return Path(os.environ.get("SEGVIZ_CACHE") or Path.home() / ".cache" / "segviz")


def _describe(dataset) -> dict | None:
    describe = getattr(dataset, "description", None)
    return describe() if callable(describe) else None


def _fingerprint(model: nn.Module) -> str:
    """A hash of the model's starting weights: two runs share a cache entry only if they start alike."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_key(model: nn.Module, dataset, val, **settings) -> dict:
    """Everything that determines a training result, as a JSON-able dict: the model's name,
    config, starting weights, its inference-time settings in force (``inference``: see
    :func:`segviz.nn.settings.inference_state`; e.g. ``segviz.set_isr`` before training trains
    at other key/value ratios), the data, and the settings."""
    return {
        "model": getattr(model, "segviz_name", type(model).__name__),
        "config": getattr(model, "segviz_config", None),
        "init": _fingerprint(model),
        "inference": inference_state(model),
        "dataset": _describe(dataset),
        "val": _describe(val),
        **settings,
    }


def _key_path(key: dict) -> Path:
    text = json.dumps(key, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(key["model"]))
    return cache_dir() / f"{safe_name}-{digest}.safetensors"


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp"))  # unique per writer; normal umask
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _save(path: Path, model: nn.Module, key: dict, losses: list[float], val_miou: float | None) -> None:
    """Write the weights and the metadata; on any failure remove whatever half of the entry
    was written (so the next run does not read it as broken) and re-raise."""
    from safetensors.torch import save_file

    try:
        # clone: safetensors refuses tensors that share storage (tied weights)
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        _atomic_write(path, lambda tmp: save_file(tensors, tmp))
        meta = {"key": key, "losses": losses, "val_miou": val_miou}
        _atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta, default=str)))
    except BaseException:
        for written in (path, path.with_suffix(".json")):
            try:
                written.unlink(missing_ok=True)
            except Exception:  # noqa: BLE001 - best effort; the original error is what matters
                pass
        raise


def _load(path: Path, model: nn.Module, key: dict) -> tuple[list[float], float | None] | None:
    """Load cached weights into ``model``; None when there is no cache entry.
    Raises ValueError when an entry exists but is broken or does not match."""
    meta_path = path.with_suffix(".json")
    if not path.exists() and not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        losses = [float(x) for x in meta["losses"]]
        val_miou = None if meta["val_miou"] is None else float(meta["val_miou"])
        same_key = json.dumps(meta["key"], sort_keys=True) == json.dumps(key, sort_keys=True, default=str)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"unreadable metadata {meta_path}: {type(err).__name__}: {err}") from err
    if not same_key:
        raise ValueError(f"{meta_path} was written for a different training setup")
    load_state_dict_strict(model, read_state_dict(path), source=str(path))
    return losses, val_miou


def _batch(dataset, indices: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    images, labels = zip(*(dataset[int(i)] for i in indices))
    return torch.stack(images).to(device), torch.stack(labels).to(device)


def _logits(model: nn.Module, images: Tensor, label_hw: tuple[int, int], predict: bool = False) -> Tensor:
    """model(images) -> (B, K, h, w) logits, bilinearly upsampled to the label size.

    With ``predict=True`` the model's ``predict(x)`` is used when it has one (the model
    contract: semantic logits at the input size, also for models whose forward returns
    something else, such as set predictions)."""
    use_predict = predict and callable(getattr(model, "predict", None))
    out = model.predict(images) if use_predict else model(images)
    if not isinstance(out, Tensor) or out.dim() != 4:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        call = "model.predict(x)" if use_predict else "model(x)"
        hint = "" if use_predict else " (or define model.loss(outputs, target) and model.predict(x))"
        raise ValueError(f"train expects {call} to return (B, num_classes, h, w) logits, got {got}{hint}")
    if out.shape[-2:] != label_hw:
        out = F.interpolate(out, size=label_hw, mode="bilinear", align_corners=False)
    return out


@torch.no_grad()
def evaluate(model: nn.Module, dataset, batch_size: int = 16, device=None) -> float:
    """Dataset-level mIoU (intersections and unions summed over all images) of ``model``
    on ``dataset``, from ``model.predict(x)`` when the model has one, else ``model(x)``
    upsampled to the label size; leaves the model in eval mode."""
    device = as_device(device) if device is not None else next(model.parameters()).device
    model.eval()
    inter = union = 0
    for start in range(0, len(dataset), batch_size):
        images, labels = _batch(dataset, torch.arange(start, min(start + batch_size, len(dataset))), device)
        logits = _logits(model, images, tuple(labels.shape[-2:]), predict=True)
        i, u = intersection_union(logits.argmax(1), labels, logits.shape[1])
        inter, union = inter + i, union + u
    return iou_from_counts(inter, union)


def _real(value, name: str, allowed: str, ok) -> float:
    """``value`` as a Python float when it is a finite real number (int, float, numpy scalar or
    one-element real tensor) and ``ok(value)``; else ValueError naming ``name`` and ``allowed``."""
    number = None
    if isinstance(value, Tensor):
        if value.numel() == 1 and not (value.dtype == torch.bool or value.is_complex()):
            number = float(value.item())
    elif isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        number = float(value)
    if number is None:
        raise ValueError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__})")
    if not math.isfinite(number) or not ok(number):
        raise ValueError(f"{name} must be {allowed}, got {number!r}")
    return number


def _check_settings(steps, batch_size, lr, weight_decay, seed) -> tuple[float, float]:
    """Validate; return (lr, weight_decay) as Python floats."""
    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    lr = _real(lr, "lr", "a finite number > 0 (e.g. 1e-3)", lambda v: v > 0)
    weight_decay = _real(weight_decay, "weight_decay", "a finite number >= 0 (e.g. 0.01)", lambda v: v >= 0)
    return lr, weight_decay


def _loss(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    """``model.loss(model(images), labels)`` when the model defines ``loss``, else pixel
    cross-entropy on the logits upsampled to the label size."""
    own = getattr(model, "loss", None)
    if not callable(own):
        return F.cross_entropy(_logits(model, images, tuple(labels.shape[-2:])), labels)
    loss = own(model(images), labels)
    if not isinstance(loss, Tensor) or loss.numel() != 1 or not loss.requires_grad:
        got = (f"a tensor of shape {tuple(loss.shape)}" + ("" if loss.requires_grad else " without grad")
               if isinstance(loss, Tensor) else type(loss).__name__)
        raise ValueError(f"model.loss(outputs, target) must return a scalar tensor with grad, got {got}")
    return loss.reshape(())


def train(
    model: nn.Module,
    dataset,
    steps: int = 200,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    val=None,
    seed: int = 0,
    device=None,
    cache: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Train a segmentation model with AdamW, then report validation mIoU.

    **The loss.** When the model defines ``loss(outputs, target)`` (a model with its own
    objective, e.g. set prediction with matching), each step minimises
    ``model.loss(model(x), labels)``, which must return a scalar tensor. Otherwise
    ``model(x)`` must return (B, num_classes, h, w) logits; when (h, w) is smaller than the
    label map (models usually predict at 1/4 or 1/8 resolution) the logits are bilinearly
    upsampled to the label size before the pixel-wise cross-entropy
        L = -1/N Σ_pixels log softmax(logits)[label].
    Validation uses ``model.predict(x)`` when the model has one, else the upsampled ``model(x)``.

    If the loss becomes NaN or infinite, training stops with a ``ValueError`` (which step,
    the value; usually the learning rate is too high) and nothing is cached.

    Batches are drawn from a seeded generator (a fresh permutation every epoch) and
    ``torch.manual_seed(seed)`` is set, so a run is repeatable.

    Args:
        dataset: items ``(image (3, H, W) float, label (H, W) int64)``, e.g. :class:`segviz.data.Shapes`.
        val: validation set; by default a held-out ``Shapes(64, size, dataset.seed + 1000)``
            when ``dataset`` is a Shapes set, else no validation.
        device: defaults to :func:`segviz.device` (cuda when present).
        cache: reuse / store the trained weights, losses and val mIoU under :func:`cache_dir`,
            keyed by :func:`cache_key`: model name, config, a hash of its starting weights and
            its inference-time settings in force (ISR ratios and pooling), dataset and val
            descriptions, seed, steps, batch size, lr and weight decay. A broken or
            mismatching entry is reported with a warning and rebuilt. If the entry cannot be
            written (read-only folder, full disk, any error) a warning says so and the trained
            result is returned all the same. Runs whose dataset or val set has no
            ``description()`` are never cached. Seed before building the model so that
            reruns hit the cache.
        lr, weight_decay: finite numbers, lr > 0 and weight_decay >= 0 (Python, numpy or
            one-element tensor scalars; anything else is a ``ValueError``).

    Returns:
        :class:`TrainResult`; the model is left in eval mode on ``device``.
    """
    lr, weight_decay = _check_settings(steps, batch_size, lr, weight_decay, seed)
    if len(dataset) == 0:
        raise ValueError("train needs a non-empty dataset")
    if device is None:
        from segviz.nn.layers import device as default_device

        device = default_device()
    device = as_device(device)
    if val is None:
        from segviz.data import Shapes

        if isinstance(dataset, Shapes):
            val = Shapes(64, dataset.size, dataset.seed + 1000)
    model.to(device)

    path = None
    if cache and _describe(dataset) is not None and (val is None or _describe(val) is not None):
        settings = dict(seed=seed, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay)
        key = json.loads(json.dumps(cache_key(model, dataset, val, **settings), sort_keys=True, default=str))
        path = _key_path(key)
        try:
            cached = _load(path, model, key)
        except ValueError as err:
            warnings.warn(f"segviz cache entry {path.name} is broken; it is rebuilt ({err})", stacklevel=2)
            cached = None
        if cached is not None:
            model.eval()
            return TrainResult(model, cached[0], cached[1], from_cache=True, cache_path=path)

    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    order = torch.empty(0, dtype=torch.long)
    losses: list[float] = []
    model.train()
    bar = tqdm(total=steps, desc=f"training {getattr(model, 'segviz_name', type(model).__name__)}", disable=not progress)
    for step in range(1, steps + 1):
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(len(dataset), generator=generator)])
        indices, order = order[:batch_size], order[batch_size:]
        images, labels = _batch(dataset, indices, device)
        loss = _loss(model, images, labels)
        value = loss.item()
        if not math.isfinite(value):
            bar.close()
            model.eval()
            raise ValueError(
                f"the training loss became {value} at step {step} of {steps} (lr={lr:g}, weight_decay="
                f"{weight_decay:g}); training stopped and nothing was cached. The usual cause is a "
                f"learning rate that is too high: try a lower lr, e.g. lr={lr / 10:g}"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        try:
            optimizer.step()
        except RuntimeError as err:  # AdamW's step size lr / (1 - β1^t) overflows float32
            if "overflow" not in str(err):
                raise
            bar.close()
            model.eval()
            raise ValueError(
                f"lr={lr:g} is too large: the optimizer step overflowed at step {step} of {steps} ({err}); "
                f"training stopped and nothing was cached. Try a lower lr, e.g. lr=1e-3"
            ) from err
        losses.append(value)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        bar.update()
    val_miou = evaluate(model, val, batch_size, device) if val is not None else None
    if val_miou is not None:
        bar.set_postfix(loss=f"{losses[-1]:.3f}", val_mIoU=f"{val_miou:.3f}")
    bar.close()
    model.eval()
    if path is not None:
        try:
            _save(path, model, key, losses, val_miou)
        except Exception as err:  # noqa: BLE001 - never lose a finished run to a cache problem
            warnings.warn(
                f"could not write the segviz cache entry {path} ({type(err).__name__}: {err}); "
                "the trained model is returned but not cached",
                stacklevel=2,
            )
            path = None
    return TrainResult(model, losses, val_miou, from_cache=False, cache_path=path)
