"""Command line: ``python -m segviz list``, ``python -m segviz summary NAME --size 512`` and
``python -m segviz train NAME --steps 2000 --out runs/NAME`` (also under ``torchrun``)."""
from __future__ import annotations

import argparse
import ast
import math
import os
import shlex
import sys

from segviz.inspect.costs import summary
from segviz.registry import create_model, list_models


def _number(cast, low: float, strict: bool, wording: str):
    """An argparse type: ``cast(text)``, finite, and > ``low`` (``strict``) or >= ``low``. A bad
    value raises ``ArgumentTypeError``, which argparse prints as "error: ..." with exit code 2."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or (value <= low if strict else value < low):
            raise argparse.ArgumentTypeError(f"must be {wording}, got {text!r}")
        return value

    parse.__name__ = f"{cast.__name__}_{'above' if strict else 'from'}_{low:g}"
    return parse


positive_int = _number(int, 1, False, "a positive integer")
nonnegative_int = _number(int, 0, False, "an integer >= 0")
positive_float = _number(float, 0, True, "a finite number > 0")
nonnegative_float = _number(float, 0, False, "a finite number >= 0")


def config_override(text: str) -> tuple[str, object]:
    """argparse type for ``--set key=value``: the value is a Python literal read by
    ``ast.literal_eval`` (numbers, tuples, lists, True/False/None, quoted strings)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"must look like key=value (e.g. drop_path_rate=0.0), got {text!r}")
    try:
        return key, ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(
            f"the value of {key} must be a Python literal such as 0.1, (16, 8, 4, 2), True or 'max' "
            f"(quote strings), got {value!r}") from None


def _train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train", help="train a segmentation model on the synthetic Scenes set",
        description="Train a registered segmentation model on segviz.data.Scenes with AdamW, a linear warmup "
                    "and a poly or cosine decay; write OUT/checkpoint.pt (resumable), OUT/NAME.safetensors and "
                    "the model card OUT/NAME.json. Works the same under torchrun --nproc_per_node N "
                    "(--batch-size is the global batch).")
    p.add_argument("name", help="a registered segmentation model (see `list`)")
    p.add_argument("--steps", type=positive_int, default=2000, help="optimizer steps (default 2000)")
    p.add_argument("--batch-size", type=positive_int, default=16,
                   help="global batch: images per step over all processes (default 16)")
    p.add_argument("--size", type=positive_int, default=256, help="square image side in pixels (default 256)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.01, help="AdamW weight decay (default 0.01)")
    p.add_argument("--warmup", type=nonnegative_int, default=None,
                   help="linear warmup steps (default steps // 20); lr·(t+1)/warmup for step t < warmup")
    p.add_argument("--schedule", choices=("poly", "cosine"), default="poly",
                   help="decay after warmup: poly lr·(1-p)^power or cosine lr·(1+cos(πp))/2, "
                        "p = (t-warmup)/(steps-warmup) (default poly)")
    p.add_argument("--power", type=positive_float, default=1.0, help="exponent of the poly decay (default 1.0)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="model init, data order and training set (default 0)")
    p.add_argument("--out", default=None, help="run folder (default runs/NAME-seedSEED)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--force", action="store_true", help="start over, replacing the run in --out")
    p.add_argument("--init", default=None, metavar="WEIGHTS",
                   help="start from these weights (a finished run's NAME.safetensors, e.g. trained at a smaller "
                        "--size) instead of a random init; the card records the file and its run")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None,
                   help="mixed precision (default bf16 on GPUs that support it, else none; fp16 needs CUDA)")
    p.add_argument("--val-every", type=positive_int, default=None,
                   help="validate every N steps (default min(1000, steps // 10)) and at the end")
    p.add_argument("--val-size", type=nonnegative_int, default=100,
                   help="held-out validation images (default 100; 0: no validation)")
    p.add_argument("--checkpoint-every", type=positive_int, default=None,
                   help="write OUT/checkpoint.pt every N steps (default min(1000, steps // 10)) and at the end")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="classifier size (default 6, the Scenes classes)")
    p.add_argument("--set", dest="overrides", type=config_override, action="append", default=[],
                   metavar="KEY=VALUE",
                   help="config override for create_model, repeatable; the value is a Python literal, e.g. "
                        "--set drop_path_rate=0.0 --set \"sr_ratios=(16,8,4,2)\"")
    p.add_argument("--workers", type=nonnegative_int, default=None,
                   help="data loader processes per training process (default 0 on CPU, up to 8 per GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _train(args, parser, argv) -> int:
    from segviz.training import World, train_run

    world = World.from_env()
    overrides = {}
    for key, value in args.overrides:
        if key in overrides:
            parser.error(f"argument --set: {key} is given twice")
        overrides[key] = value
    if args.amp == "fp16":
        from segviz.inspect._args import as_device
        from segviz.nn.layers import device as default_device

        try:
            device = as_device(args.device) if args.device is not None else default_device()
        except ValueError as err:
            parser.error(f"argument --device: {err}")
        if device.type != "cuda":
            parser.error(f"argument --amp: fp16 needs a CUDA device, got {device.type}: float16 autocast on the "
                         "CPU is emulated and slow, and float16 training needs loss scaling (GradScaler), "
                         "which is for GPUs; use --amp bf16 or --amp none")
    if args.batch_size % world.size:
        parser.error(f"argument --batch-size: {args.batch_size} is not divisible by the {world.size} "
                     f"processes (WORLD_SIZE); each process takes batch-size / {world.size} images a step")
    command = "python -m segviz " + shlex.join(argv)
    result = train_run(
        args.name, args.out, steps=args.steps, batch_size=args.batch_size, size=args.size, lr=args.lr,
        weight_decay=args.weight_decay, schedule=args.schedule, power=args.power, warmup=args.warmup,
        seed=args.seed, device=args.device, amp=args.amp, val_every=args.val_every, val_size=args.val_size,
        num_classes=args.num_classes, overrides=overrides, checkpoint_every=args.checkpoint_every,
        workers=args.workers, resume=args.resume, force=args.force, progress=not args.no_progress,
        command=command, world=world, init=args.init)
    if world.rank != 0:
        return 0
    if result.weights is None:
        return 1  # train_run said why and where the finished run is
    miou = result.card["val_miou"]
    shown = "n/a" if miou is None else f"{miou:.3f}"
    print(f"{args.name}: {result.card['steps']} steps in {result.card['wall_time_s']:.1f} s, val mIoU {shown}")
    print(f"wrote {result.weights} and {result.card_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a bad model name or setting, 1 when a
    finished training run could not write its final files).

    Malformed arguments (``--size 0``, ``--size abc``, ``--lr nan``, ``--set oops``) are refused by
    argparse, which prints ``error: ...`` and exits with status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m segviz", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the registered model names")
    p = sub.add_parser("summary", help="block-by-block table: module, output shape, params, GMACs")
    p.add_argument("name", help="a registered model name (see `list`)")
    p.add_argument("--size", type=positive_int, default=512, help="square input size in pixels (default 512)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the variant's)")
    p.add_argument("--depth", type=positive_int, default=2, help="levels of submodules to show (default 2)")
    train_parser = _train_parser(sub)
    args = parser.parse_args(argv)

    if args.command == "list":
        print("\n".join(list_models()))
        return 0
    try:
        if args.command == "train":
            return _train(args, train_parser, argv)
        model = create_model(args.name, num_classes=args.num_classes)
        table = summary(model, (1, 3, args.size, args.size), depth=args.depth, device="meta")
    except ValueError as err:
        rank = os.environ.get("RANK")
        prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
        print(f"{prefix}error: {err}", file=sys.stderr)
        return 2
    print(f"{args.name} at {args.size}x{args.size} (GMACs = the papers' GFLOPs)")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
