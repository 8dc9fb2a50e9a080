"""Command line: ``python -m segviz summary NAME --size 512`` and ``python -m segviz list``."""
from __future__ import annotations

import argparse
import sys

from segviz.inspect.costs import summary
from segviz.registry import create_model, list_models


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the ValueError into "error: ..." and exit code 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a bad model name or setting).

    Malformed arguments (``--size 0``, ``--size abc``) are refused by argparse, which prints
    ``error: ...`` and exits with status 2."""
    parser = argparse.ArgumentParser(prog="python -m segviz", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the registered model names")
    p = sub.add_parser("summary", help="block-by-block table: module, output shape, params, GMACs")
    p.add_argument("name", help="a registered model name (see `list`)")
    p.add_argument("--size", type=positive_int, default=512, help="square input size in pixels (default 512)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the variant's)")
    p.add_argument("--depth", type=positive_int, default=2, help="levels of submodules to show (default 2)")
    args = parser.parse_args(argv)

    if args.command == "list":
        print("\n".join(list_models()))
        return 0
    try:
        model = create_model(args.name, num_classes=args.num_classes)
        table = summary(model, (1, 3, args.size, args.size), depth=args.depth, device="meta")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.name} at {args.size}x{args.size} (GMACs = the papers' GFLOPs)")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
