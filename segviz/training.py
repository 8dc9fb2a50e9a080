"""A tiny trainer and mIoU, so that attention maps and features mean something.

    result = segviz.train(model, segviz.data.Shapes(512, size=64), steps=300)
    result.val_miou          # mean IoU on a held-out Shapes set
    result.from_cache        # True when the weights came from the on-disk cache

Trained weights are cached (safetensors) under ``$SEGVIZ_CACHE`` (default ``~/.cache/segviz``),
keyed by everything that determines the result, so notebooks re-run in seconds.

Longer runs of registered models on :class:`segviz.data.Scenes` go to a run folder instead
(:func:`train_run`, the command line ``python -m segviz train NAME``): a resumable
``checkpoint.pt``, the weights ``NAME.safetensors`` and a model card ``NAME.json``; the same
command trains on N processes under ``torchrun --nproc_per_node N``. Both share one loop
(``_fit``): AdamW, a warmup + poly / cosine schedule (:func:`lr_factor`), optional autocast.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
import time
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


def panoptic_quality(predictions, targets, num_classes: int) -> dict:
    """Panoptic quality (Kirillov et al., 2019) over a set of images.

    A predicted segment p and a true segment g of the same class match when IoU(p, g) > 0.5 (at
    most one match each, since segments do not overlap). Per class c, over all images,

        PQ_c = Σ_{(p, g) ∈ TP_c} IoU(p, g) / (|TP_c| + ½|FP_c| + ½|FN_c|)  =  SQ_c · RQ_c,
        SQ_c = mean IoU of the matches,   RQ_c = |TP_c| / (|TP_c| + ½|FP_c| + ½|FN_c|),

    FP: unmatched predicted segments, FN: unmatched true ones. PQ, SQ and RQ are the means over
    the classes with any segment (predicted or true), SQ_c counting 0 for a class with no match
    (as the COCO panoptic API does).

    predictions, targets: per image ``(classes (S,), masks (S, H, W) bool)`` (more entries, such
    as scores, are ignored), e.g. ``Mask2Former.panoptic(x)`` and
    :func:`segviz.models.mask2former.panoptic_targets`. Returns ``{"pq", "sq", "rq", "per_class":
    {c: {"pq", "sq", "rq", "tp", "fp", "fn"}}}``.
    """
    predictions, targets = list(predictions), list(targets)
    if len(predictions) != len(targets):
        raise ValueError(f"panoptic_quality: {len(predictions)} predictions for {len(targets)} targets")
    tp, fp, fn = (torch.zeros(num_classes, dtype=torch.int64) for _ in range(3))
    iou_sum = torch.zeros(num_classes, dtype=torch.float64)
    for i, (pred, target) in enumerate(zip(predictions, targets)):
        (p_cls, p_masks), (t_cls, t_masks) = pred[:2], target[:2]
        p_cls, t_cls = torch.as_tensor(p_cls).long().cpu(), torch.as_tensor(t_cls).long().cpu()
        p_masks, t_masks = torch.as_tensor(p_masks).bool().cpu(), torch.as_tensor(t_masks).bool().cpu()
        if p_masks.shape[1:] != t_masks.shape[1:] or len(p_cls) != len(p_masks) or len(t_cls) != len(t_masks):
            raise ValueError(f"panoptic_quality: image {i} has {len(p_cls)} classes for masks {tuple(p_masks.shape)} "
                             f"predicted and {len(t_cls)} for {tuple(t_masks.shape)} true; the masks must be "
                             f"(S, H, W) with one class each, at the same size")
        for name, cls in (("predicted", p_cls), ("true", t_cls)):
            if len(cls) and (cls.min() < 0 or cls.max() >= num_classes):
                raise ValueError(f"panoptic_quality: image {i} has a {name} class {cls.tolist()} outside [0, {num_classes})")
        p_flat, t_flat = p_masks.flatten(1).double(), t_masks.flatten(1).double()
        inter = p_flat @ t_flat.T
        union = p_flat.sum(1)[:, None] + t_flat.sum(1)[None, :] - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
        iou[p_cls[:, None] != t_cls[None, :]] = 0
        matched = iou > 0.5
        p_hit, t_hit = matched.any(1), matched.any(0)
        for c in range(num_classes):
            tp[c] += int(matched[p_cls == c].sum())
            fp[c] += int((~p_hit[p_cls == c]).sum())
            fn[c] += int((~t_hit[t_cls == c]).sum())
        for pi, ti in matched.nonzero().tolist():
            iou_sum[p_cls[pi]] += iou[pi, ti]
    per_class, pqs, sqs, rqs = {}, [], [], []
    for c in range(num_classes):
        if tp[c] + fp[c] + fn[c] == 0:
            continue
        rq = float(tp[c]) / (float(tp[c]) + 0.5 * float(fp[c]) + 0.5 * float(fn[c]))
        sq = float(iou_sum[c] / tp[c]) if tp[c] else 0.0
        per_class[c] = {"pq": sq * rq, "sq": sq, "rq": rq, "tp": int(tp[c]), "fp": int(fp[c]), "fn": int(fn[c])}
        pqs.append(sq * rq)
        rqs.append(rq)
        sqs.append(sq)
    mean = (lambda v: sum(v) / len(v) if v else math.nan)
    return {"pq": mean(pqs), "sq": mean(sqs), "rq": mean(rqs), "per_class": per_class}


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
    if isinstance(out, Tensor) and out.dim() == 5:  # a video model's per-frame logits (B, T, K, h, w)
        out = out.flatten(0, 1)
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
        labels = labels.reshape(-1, *labels.shape[-2:])  # clips (B, T, H, W): every frame an image
        i, u = intersection_union(logits.argmax(1), labels, logits.shape[1])
        inter, union = inter + i, union + u
    return iou_from_counts(inter, union)


@torch.no_grad()
def evaluate_panoptic(model: nn.Module, dataset, stuff_classes=(0,), batch_size: int = 16, device=None,
                      object_threshold: float = 0.8, overlap_threshold: float = 0.8) -> dict:
    """:func:`panoptic_quality` of ``model.panoptic(x, stuff_classes, object_threshold,
    overlap_threshold)`` (the paper's 0.8 and 0.8 by default) on a dataset whose labels
    are class maps over instance-id maps (``Scenes(..., target="panoptic")``), the true segments
    being its objects and, per stuff class, the pixels of no object; leaves the model in eval mode."""
    from segviz.models.mask2former import panoptic_targets

    if not callable(getattr(model, "panoptic", None)):
        raise ValueError(f"{type(model).__name__} has no panoptic(x) inference (Mask2Former has)")
    if getattr(dataset, "target", None) != "panoptic":
        raise ValueError(f"evaluate_panoptic needs labels with instance ids, e.g. Scenes(..., target='panoptic'), "
                         f"got {dataset!r}")
    device = as_device(device) if device is not None else next(model.parameters()).device
    model.eval()
    predictions, targets = [], []
    for start in range(0, len(dataset), batch_size):
        images, labels = _batch(dataset, torch.arange(start, min(start + batch_size, len(dataset))), device)
        found = model.panoptic(images, stuff_classes=stuff_classes, object_threshold=object_threshold,
                               overlap_threshold=overlap_threshold)
        predictions += [tuple(t.cpu() for t in p) for p in found]
        targets += [tuple(t.cpu() for t in p) for p in panoptic_targets(labels)]
    return panoptic_quality(predictions, targets, model.num_classes)


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


def _loss(model: nn.Module, images: Tensor, labels: Tensor, forward=None) -> Tensor:
    """``model.loss(forward(images), labels)`` when the model defines ``loss``, else pixel
    cross-entropy on the logits of ``forward(images)`` upsampled to the label size.

    ``forward`` defaults to ``model``; the trainer passes the DistributedDataParallel wrapper
    there, so that the gradients are averaged over processes, while ``loss`` is looked up on
    the model itself."""
    forward = model if forward is None else forward
    own = getattr(model, "loss", None)
    if not callable(own):
        return F.cross_entropy(_logits(forward, images, tuple(labels.shape[-2:])).float(), labels)
    loss = own(forward(images), labels)
    if not isinstance(loss, Tensor) or loss.numel() != 1 or not loss.requires_grad:
        got = (f"a tensor of shape {tuple(loss.shape)}" + ("" if loss.requires_grad else " without grad")
               if isinstance(loss, Tensor) else type(loss).__name__)
        raise ValueError(f"model.loss(outputs, target) must return a scalar tensor with grad, got {got}")
    return loss.reshape(())


# --------------------------------------------------------------------------- learning-rate schedule
SCHEDULES = ("constant", "poly", "cosine")


def lr_factor(t: int, steps: int, warmup: int = 0, schedule: str = "poly", power: float = 1.0) -> float:
    """The multiplier of the base learning rate for optimizer step ``t`` (0-based: step t + 1 of ``steps``).

    A linear warmup over the first ``warmup`` steps, then a decay over the rest:

        f(t) = (t + 1) / warmup                          for t < warmup
        f(t) = 1                                         constant
        f(t) = (1 - p) ** power                          poly
        f(t) = (1 + cos(π p)) / 2                        cosine
        with p = (t - warmup) / (steps - warmup)  in [0, 1) the fraction of the decay already done.

    So the rate climbs to lr at the last warmup step, starts the decay at lr and reaches
    lr · f(steps - 1) (e.g. lr / (steps - warmup) for poly with power 1) at the last step; it is
    never exactly 0 for a step that is taken. The trainer hands this to
    ``torch.optim.lr_scheduler.LambdaLR``: the rate of step t is ``lr * lr_factor(t, ...)``.
    """
    if t < warmup:
        return (t + 1) / warmup
    if schedule == "constant":
        return 1.0
    p = (t - warmup) / (steps - warmup)
    if schedule == "poly":
        return (1.0 - p) ** power
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def _check_schedule(schedule, warmup, power, steps) -> float:
    """Validate the schedule settings; return power as a Python float."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < steps:
        raise ValueError(f"warmup must be an int with 0 <= warmup < steps={steps}, got {warmup!r}")
    return _real(power, "power", "a finite number > 0 (e.g. 1.0)", lambda v: v > 0)


# --------------------------------------------------------------------------- mixed precision
AMP_MODES = ("none", "bf16", "fp16")


def default_amp(device) -> str:
    """``"bf16"`` on a CUDA GPU that supports bfloat16, else ``"none"`` (CPU, or older GPUs,
    where fp16 with loss scaling must be asked for explicitly)."""
    device = torch.device(device)
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"


def _check_amp(amp: str, device: torch.device) -> None:
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(
            f"amp='fp16' needs a CUDA device, got device {str(device)!r}: float16 autocast on the "
            "CPU is emulated and slow, and float16's narrow range needs loss scaling (GradScaler), "
            "which exists for GPU training; use amp='bf16' (same range as float32, no scaling) or 'none'")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"amp='bf16': this GPU ({torch.cuda.get_device_name(device)}) has no bfloat16 "
                         "support; use amp='fp16' (with loss scaling) or 'none'")
    if amp != "none" and device.type not in ("cuda", "cpu"):
        raise ValueError(f"amp={amp!r} is supported on 'cuda' and 'cpu' devices, got {str(device)!r}")


def _autocast(amp: str, device: torch.device):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


# --------------------------------------------------------------------------- data order and sharding
class _IndexStream:
    """The order in which training items are visited: a fresh permutation of ``range(n)``
    from a generator seeded with ``seed`` for every pass over the data, the passes
    concatenated. ``take(k)`` returns the next k indices, so step s (1-based) of a run with
    global batch B always gets stream entries (s - 1)·B ... s·B - 1: the order is a function of
    (n, seed, B, step) alone, which is what lets a resumed run and every process of a
    distributed run agree on it."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)

    def take(self, k: int) -> Tensor:
        parts, need = [], k
        while need > 0:
            if len(self.order) == 0:
                self.order = torch.randperm(self.n, generator=self.generator)
            part, self.order = self.order[:need], self.order[need:]
            parts.append(part)
            need -= len(part)
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)

    def skip(self, k: int) -> None:
        while k > 0:  # in chunks: a long run skips millions of indices
            k -= len(self.take(min(k, 1 << 20)))


class _ShardBatches:
    """Batch sampler for a DataLoader: for each step ``start + 1 .. steps`` the global batch's
    indices (the same on every rank), of which rank r keeps entries ``r·b .. (r + 1)·b - 1``
    with b = global batch / world size."""

    def __init__(self, n, seed, batch_size, start, steps, rank=0, world_size=1):
        self.n, self.seed, self.batch_size, self.start, self.steps = n, seed, batch_size, start, steps
        self.per_rank = batch_size // world_size
        self.rank = rank

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self):
        stream = _IndexStream(self.n, self.seed)
        stream.skip(self.start * self.batch_size)
        for _ in range(self.start, self.steps):
            indices = stream.take(self.batch_size)
            yield indices[self.rank * self.per_rank:(self.rank + 1) * self.per_rank].tolist()


def _collate(items):
    images, labels = zip(*items)
    return torch.stack(images), torch.stack(labels)


# --------------------------------------------------------------------------- BatchNorm across processes
class _AllReduceSum(torch.autograd.Function):
    """Sum over all processes, differentiably: the gradient of y = Σ_ranks x with respect to
    each rank's x is the sum over ranks of the gradients arriving at y."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        import torch.distributed as dist

        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics cover the whole global batch of a distributed
    run, on any device and process-group backend (``torch.nn.SyncBatchNorm`` refuses CPU
    tensors: "SyncBatchNorm expected input tensor to be on GPU", and its kernels
    ``batch_norm_stats`` etc. exist only for GPUs). The trainer uses it for CPU runs with
    gloo; CUDA runs use ``torch.nn.SyncBatchNorm``.

    For x of shape (B, C, ...) on each rank, with n the number of values per channel summed over
    all ranks, two differentiable all-reduces (sums whose backward sums the gradients over the
    ranks, so gradients flow through the statistics as in one big batch) give

        μ_c = Σ x / n,      σ²_c = Σ (x - μ_c)² / n,      y = (x - μ_c) / sqrt(σ²_c + eps) · γ_c + β_c

    and the running statistics follow ``nn.BatchNorm2d``: running_var takes the unbiased
    σ²_c · n / (n - 1). In eval mode, or without an initialised process group of more than one
    process, it is plain BatchNorm. The parameters and buffers keep BatchNorm's names, so
    state dicts are interchangeable."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (B, C, ...), got {input.dim()}-D")

    def forward(self, input: Tensor) -> Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        x = input.float()
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
        dist.all_reduce(count)
        n = float(count.item())
        mean = _AllReduceSum.apply(x.sum(dims)) / n
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        return y.to(input.dtype)


def sync_batchnorm(model: nn.Module, device) -> nn.Module:
    """Every BatchNorm in ``model`` made to normalise over the global batch of a distributed run:
    ``torch.nn.SyncBatchNorm`` on CUDA, :class:`AllReduceBatchNorm` elsewhere. The parameters and
    buffers are the same tensors (same names in the state dict); returns the model (converted in place
    unless the model itself is a BatchNorm)."""
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if isinstance(model, nn.modules.batchnorm._BatchNorm) and not isinstance(
            model, (AllReduceBatchNorm, nn.SyncBatchNorm)):
        new = AllReduceBatchNorm(model.num_features, model.eps, model.momentum, model.affine,
                                 model.track_running_stats, device="meta")
        new.weight, new.bias = model.weight, model.bias
        new.running_mean, new.running_var = model.running_mean, model.running_var
        new.num_batches_tracked = model.num_batches_tracked
        new.train(model.training)
        return new
    for name, child in model.named_children():
        converted = sync_batchnorm(child, device)
        if converted is not child:
            setattr(model, name, converted)
    return model


# --------------------------------------------------------------------------- the training loop
@dataclasses.dataclass
class _Progress:
    """Where a run stands: steps done, one loss per step, [step, val mIoU] pairs, seconds spent,
    and the loss's own terms when the model reports them (``model.last_loss_terms``, e.g.
    Mask2Former's class / mask / dice loss of every prediction): ``{"steps": [s, ...], name:
    [mean over the steps since the previous entry, ...]}``, about 100 entries per run."""

    step: int = 0
    losses: list[float] = dataclasses.field(default_factory=list)
    val_history: list[list] = dataclasses.field(default_factory=list)
    elapsed: float = 0.0
    terms: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Checkpointer:
    """Writes ``path`` (rank 0 only) every ``every`` steps and at the end; ``extra`` is stored too."""

    path: Path
    every: int
    extra: dict
    last_step: int | None = None  # the step of the last checkpoint on disk (None: none yet)


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _fit(model: nn.Module, dataset, *, steps: int, batch_size: int, lr: float, weight_decay: float,
         seed: int, device: torch.device, schedule: str = "constant", warmup: int = 0, power: float = 1.0,
         amp: str = "none", val=None, val_every: int = 0, progress: bool = True, desc: str | None = None,
         workers: int = 0, rank: int = 0, world_size: int = 1, resume: dict | None = None,
         checkpointer: _Checkpointer | None = None, stopped="nothing was cached") -> _Progress:
    """The one training loop behind :func:`train` and :func:`train_run`.

    Step s (1-based) takes the global batch of stream entries (s - 1)·B .. s·B - 1 (see
    :class:`_IndexStream`); with ``world_size`` processes, rank r works on its b = B / world_size
    of them, the model is wrapped in DistributedDataParallel (gradients averaged over ranks, so
    the update is that of the mean loss over the global batch) and its BatchNorms normalise over
    the global batch (:func:`sync_batchnorm`). The logged loss is the mean over ranks, the same
    on every rank, so a non-finite loss stops every process at the same step.

    Each step: forward and loss under autocast (``amp``), backward (scaled for fp16), AdamW
    step, then the LambdaLR schedule moves on (:func:`lr_factor`). Rank 0 validates every
    ``val_every`` steps (0: only at the end) and at the end, shows the bar, and writes the
    checkpoint. ``resume``: a checkpoint dict to continue from (model weights, optimizer,
    scheduler, GradScaler, progress, RNG states). ``stopped`` (a string, or a function giving one)
    ends the non-finite-loss message: what became of the run.
    Leaves the model in eval mode; returns the progress.
    """
    from tqdm.auto import tqdm

    model.to(device)
    state = _Progress()
    if resume is not None:
        load_state_dict_strict(model, resume["model"], source="the checkpoint")
        state = _Progress(int(resume["step"]), [float(x) for x in resume["losses"]],
                          [list(v) for v in resume["val_history"]], float(resume["elapsed"]),
                          {k: list(v) for k, v in (resume.get("terms") or {}).items()})
    forward = model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = sync_batchnorm(model, device)
        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    torch.manual_seed(seed if rank == 0 else seed + 7919 * rank)  # dropout / drop-path masks differ by rank
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: lr_factor(t, steps, warmup, schedule, power))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        rng = resume.get("rng") or []
        if len(rng) == world_size:
            _set_rng_state(rng[rank], device)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=_ShardBatches(len(dataset), seed, batch_size, state.step, steps, rank, world_size),
        num_workers=workers, collate_fn=_collate, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed))  # its own: starting it must not draw from torch's RNG

    def validate() -> float:
        with _autocast(amp, device):
            value = evaluate(model, val, batch_size, device)
        state.val_history.append([state.step, value])
        return value

    def checkpoint(final: bool = False) -> None:
        rng = [_rng_state(device)]
        if world_size > 1:
            import torch.distributed as dist

            rng = [None] * world_size
            dist.all_gather_object(rng, _rng_state(device))
        if checkpointer is None:
            return
        if rank != 0:  # rank 0 writes; the others take it as written (for their messages)
            checkpointer.last_step = state.step
            return
        blob = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "step": state.step, "losses": state.losses,
                "val_history": state.val_history, "elapsed": state.elapsed, "terms": state.terms, "finished": final,
                "rng": [{k: v.cpu() for k, v in r.items()} for r in rng], **checkpointer.extra}
        try:
            _atomic_write(checkpointer.path, lambda tmp: torch.save(blob, tmp))
            checkpointer.last_step = state.step
        except Exception as err:  # noqa: BLE001 - a failed checkpoint must not end the run
            goes_on = "the final files are written next" if final else "training goes on"
            _say(f"warning: could not write the checkpoint {checkpointer.path} at step {state.step} "
                 f"({type(err).__name__}: {err}); {goes_on}")

    name = desc or f"training {getattr(model, 'segviz_name', type(model).__name__)}"
    bar = tqdm(total=steps, initial=state.step, desc=name, disable=not progress or rank != 0)
    postfix = {}
    if state.losses:
        postfix["loss"] = f"{state.losses[-1]:.3f}"
    if state.val_history:
        postfix["val_mIoU"] = f"{state.val_history[-1][1]:.3f}"
    started = time.perf_counter() - state.elapsed
    term_every, term_sums, term_count = max(1, steps // 100), {}, 0
    model.train()
    try:
        for images, labels in loader:
            step = state.step + 1
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with _autocast(amp, device):
                loss = _loss(model, images, labels, forward)
            shown = loss.detach().float()
            if world_size > 1:
                import torch.distributed as dist

                shown = shown.clone()
                dist.all_reduce(shown)
                shown /= world_size
            value = shown.item()
            if not math.isfinite(value):
                stopped = stopped() if callable(stopped) else stopped
                raise ValueError(
                    f"the training loss became {value} at step {step} of {steps} (lr={lr:g}, weight_decay="
                    f"{weight_decay:g}); training stopped and {stopped}. The usual cause is a "
                    f"learning rate that is too high: try a lower lr, e.g. lr={lr / 10:g}")
            optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # DDP on depthwise convs' channels-last gradients: only slower
                warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
                scaler.scale(loss).backward()
            try:
                scaler.step(optimizer)
            except RuntimeError as err:  # AdamW's step size lr / (1 - β1^t) overflows float32
                if "overflow" not in str(err):
                    raise
                stopped = stopped() if callable(stopped) else stopped
                raise ValueError(
                    f"lr={lr:g} is too large: the optimizer step overflowed at step {step} of {steps} ({err}); "
                    f"training stopped and {stopped}. Try a lower lr, e.g. lr=1e-3") from err
            scaler.update()
            with warnings.catch_warnings():  # a step GradScaler skipped (inf gradients) still moves the schedule
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
                scheduler.step()
            state.step = step
            state.losses.append(value)
            terms = getattr(model, "last_loss_terms", None)  # this rank's terms (rank 0's are logged)
            if isinstance(terms, dict) and terms:
                for k, v in terms.items():
                    term_sums[k] = term_sums.get(k, 0.0) + float(v)
                term_count += 1
                if step % term_every == 0 or step == steps:
                    state.terms.setdefault("steps", []).append(step)
                    for k, v in term_sums.items():
                        state.terms.setdefault(k, []).append(v / term_count)
                    term_sums, term_count = {}, 0
            postfix["loss"] = f"{value:.3f}"
            if val is not None and rank == 0 and val_every and step % val_every == 0 and step < steps:
                postfix["val_mIoU"] = f"{validate():.3f}"
                model.train()
            bar.set_postfix(postfix, refresh=False)
            bar.update()
            state.elapsed = time.perf_counter() - started
            if checkpointer is not None and step % checkpointer.every == 0 and step < steps:
                checkpoint()
        if val is not None and rank == 0:
            postfix["val_mIoU"] = f"{validate():.3f}"
            bar.set_postfix(postfix)
        state.elapsed = time.perf_counter() - started
        if checkpointer is not None:
            checkpoint(final=True)
    finally:
        bar.close()
        model.eval()
    return state


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
    schedule: str = "constant",
    warmup: int = 0,
    power: float = 1.0,
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

    **The learning rate** of step t (0-based) is ``lr * lr_factor(t, steps, warmup, schedule, power)``
    (see :func:`lr_factor`): by default constant; ``schedule="poly"`` or ``"cosine"`` with a linear
    ``warmup`` are what :func:`train_run` (``python -m segviz train``) uses.

    If the loss becomes NaN or infinite, training stops with a ``ValueError`` (which step,
    the value; usually the learning rate is too high) and nothing is cached.

    Batches are drawn from a seeded generator (a fresh permutation every epoch) and
    ``torch.manual_seed(seed)`` is set, so a run is repeatable.

    Args:
        dataset: items ``(image (3, H, W) float, label (H, W) int64)``, e.g. :class:`segviz.data.Shapes`.
        val: validation set; by default a held-out ``Shapes(64, size, dataset.seed + 1000)``
            when ``dataset`` is a Shapes set, a held-out ``Scenes(64, size, seed=0, split="val")``
            when it is a Scenes set, else no validation.
        device: defaults to :func:`segviz.device` (cuda when present).
        cache: reuse / store the trained weights, losses and val mIoU under :func:`cache_dir`,
            keyed by :func:`cache_key`: model name, config, a hash of its starting weights and
            its inference-time settings in force (ISR ratios and pooling), dataset and val
            descriptions, seed, steps, batch size, lr and weight decay (and the schedule, warmup
            and power when they differ from the constant default). A broken or
            mismatching entry is reported with a warning and rebuilt. If the entry cannot be
            written (read-only folder, full disk, any error) a warning says so and the trained
            result is returned all the same. Runs whose dataset or val set has no
            ``description()`` are never cached. Seed before building the model so that
            reruns hit the cache.
        lr, weight_decay: finite numbers, lr > 0 and weight_decay >= 0 (Python, numpy or
            one-element tensor scalars; anything else is a ``ValueError``).
        schedule, warmup, power: ``"constant"``, ``"poly"`` or ``"cosine"``; warmup steps
            (0 <= warmup < steps); the poly exponent (> 0).

    Returns:
        :class:`TrainResult`; the model is left in eval mode on ``device``.
    """
    lr, weight_decay = _check_settings(steps, batch_size, lr, weight_decay, seed)
    power = _check_schedule(schedule, warmup, power, steps)
    if len(dataset) == 0:
        raise ValueError("train needs a non-empty dataset")
    if device is None:
        from segviz.nn.layers import device as default_device

        device = default_device()
    device = as_device(device)
    if val is None:
        from segviz.data import Scenes, Shapes

        if isinstance(dataset, Shapes):
            val = Shapes(64, dataset.size, dataset.seed + 1000)
        elif isinstance(dataset, Scenes):
            val = Scenes(64, dataset.size, seed=0, split="val")
    model.to(device)

    path = None
    if cache and _describe(dataset) is not None and (val is None or _describe(val) is not None):
        settings = dict(seed=seed, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay)
        if (schedule, warmup) != ("constant", 0):  # the old keys stay valid for the old default
            settings.update(schedule=schedule, warmup=warmup, power=power)
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

    state = _fit(model, dataset, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                 seed=seed, device=device, schedule=schedule, warmup=warmup, power=power, val=val,
                 progress=progress)
    val_miou = state.val_history[-1][1] if val is not None else None
    if path is not None:
        try:
            _save(path, model, key, state.losses, val_miou)
        except Exception as err:  # noqa: BLE001 - never lose a finished run to a cache problem
            warnings.warn(
                f"could not write the segviz cache entry {path} ({type(err).__name__}: {err}); "
                "the trained model is returned but not cached",
                stacklevel=2,
            )
            path = None
    return TrainResult(model, state.losses, val_miou, from_cache=False, cache_path=path)


# --------------------------------------------------------------------------- whole runs on disk: python -m segviz train
CHECKPOINT = "checkpoint.pt"
TRAIN_IMAGES = 100_000  # length of the training split; items are generated on the fly, so length is free
VAL_SEED = 0  # every run, whatever its seed, is validated on the same held-out images


@dataclasses.dataclass
class RunResult:
    """What :func:`train_run` hands back: the trained model (eval mode), its model card, and where
    the files are. ``weights`` and ``card_path`` are None when the final files could not be
    written; the finished run is then in ``checkpoint``. Off rank 0 of a distributed run,
    ``card`` is None and nothing is written."""

    model: nn.Module = dataclasses.field(repr=False)
    card: dict | None = dataclasses.field(repr=False)
    weights: Path | None
    card_path: Path | None
    checkpoint: Path


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place in a distributed run, read from the variables ``torchrun`` sets:
    ``RANK`` (0 .. size - 1), ``LOCAL_RANK`` (its GPU on this machine) and ``WORLD_SIZE``."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @classmethod
    def from_env(cls, env=None) -> "World":
        env = os.environ if env is None else env
        values = {}
        for key, field, low in (("RANK", "rank", 0), ("LOCAL_RANK", "local_rank", 0), ("WORLD_SIZE", "size", 1)):
            text = env.get(key)
            if text is None:
                continue
            try:
                values[field] = int(text)
            except ValueError:
                raise ValueError(f"environment variable {key}={text!r} is not an integer") from None
            if values[field] < low:
                raise ValueError(f"environment variable {key}={text!r} must be >= {low}")
        world = cls(**values)
        if world.rank >= world.size:
            raise ValueError(f"RANK={world.rank} must be below WORLD_SIZE={world.size}")
        return world


def segmentation_models() -> list[str]:
    """The registered names that can be trained for segmentation: their models have
    ``predict(x)`` -> (B, K, H, W) logits (image classifiers such as ``swin-t`` do not).
    Each variant is built on the meta device to ask, so this costs no memory."""
    from segviz.registry import create_model, list_models

    names = []
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name)
        if callable(getattr(model, "predict", None)):
            names.append(name)
    return names


def _plain(value):
    """``value`` as JSON would give it back (tuples become lists), for comparing and storing."""
    return json.loads(json.dumps(value, default=str))


def _nonnegative_int(name, value, low=0):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _write_final(out: Path, name: str, model: nn.Module, card: dict) -> tuple[Path, Path]:
    """``OUT/NAME.safetensors`` then ``OUT/NAME.json``, each written atomically; if either fails,
    neither is left behind and the error propagates."""
    from safetensors.torch import save_file

    weights, card_path = out / f"{name}.safetensors", out / f"{name}.json"
    try:
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        _atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"segviz_model": name}))
        _atomic_write(card_path, lambda tmp: Path(tmp).write_text(json.dumps(card, indent=2, default=str) + "\n"))
    except BaseException:
        for path in (weights, card_path):
            try:
                path.unlink(missing_ok=True)
            except Exception:  # noqa: BLE001 - best effort; the original error is what matters
                pass
        raise
    return weights, card_path


def _init_record(init) -> dict:
    """What ``train_run(init=PATH)`` writes on the card: the file, its hash, and the headline of
    the run that made it (from the card ``PATH.json`` / ``NAME.json`` next to it, if any)."""
    path = Path(init)
    if not path.is_file():
        raise ValueError(f"init: {path} is not a file; give the .safetensors of a finished run "
                         f"(e.g. runs/NAME-seed0/NAME.safetensors)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    record = {"path": str(path), "sha256": digest}
    card_file = path.with_suffix(".json")
    if card_file.is_file():
        try:
            card = json.loads(card_file.read_text())
        except (OSError, ValueError):
            card = None
        if isinstance(card, dict):
            record["card"] = {k: card.get(k) for k in ("model", "steps", "batch_size", "image_size", "lr", "seed",
                                                        "device", "wall_time_s", "val_miou", "command", "init")}
    return record


def _model_card(name, model, recipe, segments, state: _Progress, val, command) -> dict:
    """The JSON model card: what was trained, on what, how, how well, and where it ran."""
    import datetime
    import sys

    version = getattr(sys.modules.get("segviz"), "__version__", None)  # the parent package, loaded before us
    last = segments[-1]
    return {
        "model": name,
        "config": _plain(model.segviz_config),
        "params": sum(p.numel() for p in model.parameters()),
        "dataset": {"train": recipe["dataset"], "val": _describe(val) if val is not None else None,
                    "classes": _scene_classes()},
        "steps": recipe["steps"], "batch_size": recipe["batch_size"], "image_size": recipe["size"],
        "lr": recipe["lr"], "weight_decay": recipe["weight_decay"], "optimizer": "AdamW",
        "schedule": recipe["schedule"], "power": recipe["power"], "warmup": recipe["warmup"],
        "seed": recipe["seed"],
        "device": last["device"], "amp": last["amp"], "world_size": last["world_size"],
        "per_rank_batch_size": recipe["batch_size"] // last["world_size"],
        "wall_time_s": round(state.elapsed, 3),
        "val_miou": state.val_history[-1][1] if state.val_history else None,
        "val_history": state.val_history,
        "final_loss": state.losses[-1] if state.losses else None,
        "losses": state.losses,
        **({"loss_terms": state.terms} if state.terms else {}),
        "segments": segments,
        "init": recipe.get("init"),
        "torch": torch.__version__, "segviz": version,
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _scene_classes() -> list[str]:
    from segviz.data import SCENE_CLASSES

    return list(SCENE_CLASSES)


def _say(text: str) -> None:
    import sys

    print(text, file=sys.stderr, flush=True)


def train_run(
    name: str,
    out=None,
    *,
    steps: int = 2000,
    batch_size: int = 16,
    size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    schedule: str = "poly",
    power: float = 1.0,
    warmup: int | None = None,
    seed: int = 0,
    device=None,
    amp: str | None = None,
    val_every: int | None = None,
    val_size: int = 100,
    num_classes: int | None = None,
    overrides: dict | None = None,
    checkpoint_every: int | None = None,
    workers: int | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    command: str | None = None,
    world: World | None = None,
    init: str | os.PathLike | None = None,
) -> RunResult:
    """Train the registered model ``name`` on :class:`segviz.data.Scenes` into the folder ``out``
    (what ``python -m segviz train NAME`` runs).

    **Data.** Training images come from ``Scenes(100_000, size, seed, split="train")`` in a
    seeded order (a fresh permutation per pass), with the targets the model asks for in its
    ``train_target`` attribute (class maps unless it says ``"panoptic"``, as Mask2Former does:
    one segment per object; the card's dataset entry names it); validation mIoU is measured on
    ``Scenes(val_size, size, seed=0, split="val")``, the same held-out images for every seed,
    every ``val_every`` steps and at the end, and shown next to the loss on the progress bar.

    **Optimisation.** AdamW (lr, weight_decay) on the model's own loss (``model.loss`` when it
    has one, else pixel cross-entropy). The rate of step t (0-based) is
    ``lr * lr_factor(t, steps, warmup, schedule, power)``: linear warmup ``(t + 1) / warmup``
    for t < warmup, then ``(1 - p) ** power`` (poly) or ``(1 + cos(π p)) / 2`` (cosine) with
    p = (t - warmup) / (steps - warmup). ``amp``: ``"bf16"`` autocast, ``"fp16"`` autocast
    with a GradScaler (CUDA only), or ``"none"``; by default bf16 on a GPU that has it, else none.

    **Files.** ``out/checkpoint.pt`` every ``checkpoint_every`` steps and at the end (model,
    optimizer, scheduler, GradScaler, step, losses, validation history, RNG states; written to a
    temporary file and moved into place; ``torch.load(path, weights_only=True)`` reads it), then
    ``out/NAME.safetensors`` and the model card ``out/NAME.json``. If the final files cannot be
    written, a message names the checkpoint, which holds the finished run; ``resume=True`` writes
    them later. If the loss becomes NaN or infinite, a ValueError names the step and the last
    good checkpoint is left as it was. A folder holding a run is not overwritten unless
    ``resume`` (continue it exactly where the checkpoint stopped, with the same settings) or
    ``force`` (start over) is given.

    **Distributed.** Under ``torchrun --nproc_per_node N`` (``world`` from the environment,
    see :class:`World`) the process group is set up (NCCL on CUDA, gloo on CPU), each rank
    trains on its ``batch_size / N`` share of the same global batch in DistributedDataParallel,
    BatchNorm statistics are taken over the global batch (:func:`sync_batchnorm`), and only rank
    0 shows the bar, validates and writes files. The result equals a one-process run with the
    same global batch up to float rounding (dropout and drop-path masks aside).

    Args:
        out: the run folder; default ``runs/NAME-seedSEED``.
        warmup: default ``steps // 20``.
        val_every, checkpoint_every: default ``min(1000, max(1, steps // 10))``; val_size 0 turns
            validation off.
        num_classes: default 6, the Scenes classes (fewer is an error).
        overrides: config keys for :func:`segviz.create_model`, e.g. ``{"drop_path_rate": 0.0}``
            or ``{"sr_ratios": (16, 8, 4, 2)}`` to train SegFormer at other reduction ratios.
        workers: DataLoader worker processes; default 0 on the CPU, else up to 8 per GPU.
        command: the command line, for the card (default ``sys.argv``).
        init: start from these weights instead of a random init (a finished run's
            ``NAME.safetensors``, e.g. one trained at a smaller ``size``: a short, cheap run at a
            low resolution followed by one at the full size). The file must fit the model and
            its config; the card records it under ``"init"`` (path, SHA-256, and the steps, image
            size and validation mIoU of the card next to it, when there is one), so the whole
            chain of runs stays on record. Optimizer and schedule start fresh.
    """
    import shlex
    import sys

    from segviz.data import Scenes
    from segviz.registry import create_model

    world = World.from_env() if world is None else world
    lr, weight_decay = _check_settings(steps, batch_size, lr, weight_decay, seed)
    warmup = steps // 20 if warmup is None else warmup
    power = _check_schedule(schedule, warmup, power, steps)
    every = min(1000, max(1, steps // 10))
    val_every = every if val_every is None else _nonnegative_int("val_every", val_every, 1)
    checkpoint_every = every if checkpoint_every is None else _nonnegative_int("checkpoint_every", checkpoint_every, 1)
    val_size = _nonnegative_int("val_size", val_size)
    if batch_size % world.size:
        raise ValueError(f"batch_size {batch_size} (the global batch) must be divisible by the number of "
                         f"processes, {world.size}: each process takes batch_size / {world.size} images a step")
    if resume and force:
        raise ValueError("resume continues the run in the folder and force starts it over: give one, not both")

    if device is None:
        from segviz.nn.layers import device as default_device

        device = default_device()
    device = as_device(device)
    if device.type == "meta":
        raise ValueError("device 'meta' holds no data; train on 'cpu' or 'cuda'")
    if device.type == "cuda" and world.size > 1:
        if device.index is not None and device.index != world.local_rank:
            raise ValueError(f"device {str(device)!r}: under torchrun each process uses cuda:LOCAL_RANK "
                             f"(here cuda:{world.local_rank}); pass --device cuda")
        device = as_device(f"cuda:{world.local_rank}")
    amp = default_amp(device) if amp is None else amp
    _check_amp(amp, device)
    workers = (0 if device.type == "cpu" else min(8, max(0, (os.cpu_count() or 1) // world.size - 1))) \
        if workers is None else _nonnegative_int("workers", workers)

    overrides = dict(overrides or {})
    if "num_classes" in overrides:
        if num_classes is not None:
            raise ValueError("num_classes is given twice (as num_classes and among the overrides); give it once")
        num_classes = overrides.pop("num_classes")
    num_classes = Scenes.num_classes if num_classes is None else num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < Scenes.num_classes:
        raise ValueError(f"num_classes must be an int >= {Scenes.num_classes} (the Scenes classes: "
                         f"{', '.join(_scene_classes())}), got {num_classes!r}")
    with torch.device("meta"):  # checks the name and the overrides without allocating anything
        probe = create_model(name, num_classes=num_classes, **overrides)
    if not callable(getattr(probe, "predict", None)):
        raise ValueError(f"{name} is not a segmentation model (it has no predict(x) giving per-pixel logits; "
                         f"e.g. an ImageNet classifier); models that can be trained: {', '.join(segmentation_models())}")
    init_record = _init_record(init) if init is not None else None
    # a model may ask for other targets than class maps (Mask2Former: one segment per object)
    # a video model asks for clips of train_frames frames (video Mask2Former); validation is per frame
    frames = getattr(probe, "train_frames", None)
    train_set = Scenes(TRAIN_IMAGES, size, seed, split="train", target=getattr(probe, "train_target", "semantic"),
                       frames=frames)
    val = Scenes(val_size, size, VAL_SEED, split="val", frames=frames) if val_size else None
    recipe = _plain({"model": name, "config": probe.segviz_config, "steps": steps, "batch_size": batch_size,
                     "size": size, "lr": lr, "weight_decay": weight_decay, "schedule": schedule,
                     "power": power, "warmup": warmup, "seed": seed, "dataset": train_set.description()})
    if init_record is not None:
        recipe["init"] = init_record
    del probe

    out = Path("runs") / f"{name}-seed{seed}" if out is None else Path(out)
    ckpt_path, weights_path, card_path = out / CHECKPOINT, out / f"{name}.safetensors", out / f"{name}.json"
    found = [p.name for p in (weights_path, card_path, ckpt_path) if p.exists()]
    saved = None
    if found and not (resume or force):
        raise ValueError(f"{out} already holds a run ({', '.join(found)}); pass --resume to continue it "
                         f"or --force to start over")
    if resume:
        if ckpt_path.exists():
            try:
                saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
                old = saved["recipe"]
            except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
                raise ValueError(f"cannot resume: {ckpt_path} is unreadable ({type(err).__name__}: {err})") from err
            differ = [f"{k}: {old.get(k)!r} in the checkpoint, {recipe[k]!r} now"
                      for k in recipe if old.get(k) != recipe[k]]
            if differ:
                raise ValueError(f"cannot resume {ckpt_path}: it was written with other settings ("
                                 + "; ".join(differ) + "); resume with the same settings, or use --force to start over")
        elif found:
            raise ValueError(f"cannot resume: {out} holds a finished run ({', '.join(found)}) but no {CHECKPOINT}; "
                             f"use --force to train it again")
        elif world.rank == 0:
            _say(f"note: no {ckpt_path} to resume; starting a new run")
    command = command if command is not None else shlex.join(sys.argv)
    if saved and not saved.get("finished") and world.rank == 0 and len(saved.get("rng") or []) != world.size:
        _say(f"note: the checkpoint was written by {len(saved.get('rng') or [])} process(es), this run has "
             f"{world.size}: the data order and the weights continue exactly, the random dropout / drop-path "
             f"masks do not")
    segment = {"start": saved["step"] if saved else 0, "device": device.type, "amp": amp,
               "world_size": world.size, "command": command}
    segments = (list(saved["segments"]) if saved else []) + [segment]

    if world.size > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        torch.manual_seed(seed)
        try:
            model = create_model(name, num_classes=num_classes, weights=None if init is None else str(init),
                                 **overrides)
        except ValueError as err:
            if init is None:
                raise
            raise ValueError(f"init: {init} does not fit {name} with this config ({err})") from err
        if world.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            if force:
                for path in (weights_path, card_path, ckpt_path):
                    path.unlink(missing_ok=True)
        checkpointer = _Checkpointer(ckpt_path, checkpoint_every, {"recipe": recipe, "segments": segments},
                                     last_step=saved["step"] if saved else None)

        def stopped() -> str:
            if checkpointer.last_step is None:
                return "no checkpoint had been written yet"
            return f"the last good checkpoint (step {checkpointer.last_step}) is kept in {ckpt_path}"

        if saved is not None and saved.get("finished"):
            load_state_dict_strict(model, saved["model"], source=str(ckpt_path))
            model.eval()
            state = _Progress(saved["step"], list(saved["losses"]), list(saved["val_history"]), saved["elapsed"],
                              dict(saved.get("terms") or {}))
            segments.pop()  # nothing was trained now
            if world.rank == 0:
                _say(f"{ckpt_path} holds a finished run; writing its final files")
        else:
            state = _fit(model, train_set, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         seed=seed, device=device, schedule=schedule, warmup=warmup, power=power, amp=amp,
                         val=val, val_every=val_every, progress=progress, desc=f"training {name}",
                         workers=workers, rank=world.rank, world_size=world.size, resume=saved,
                         checkpointer=checkpointer, stopped=stopped)
    finally:
        if world.size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    if world.rank != 0:
        return RunResult(model, None, None, None, ckpt_path)
    card = _model_card(name, model, recipe, segments, state, val, command)
    try:
        weights, written_card = _write_final(out, name, model, card)
    except Exception as err:  # noqa: BLE001 - never lose a finished run
        where = (f"the finished run is kept in {ckpt_path}; run the same command with --resume to write them"
                 if checkpointer.last_step == steps else "the trained model is only in memory")
        _say(f"warning: could not write {weights_path.name} / {card_path.name} in {out} "
             f"({type(err).__name__}: {err}); {where}")
        return RunResult(model, card, None, None, ckpt_path)
    return RunResult(model, card, weights, written_card, ckpt_path)
