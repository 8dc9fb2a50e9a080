"""What recording costs: a forward pass inside ``segviz.capture(model)`` (every attention's
probabilities, every default feature) next to the same forward pass outside it, same model,
same input, same process, runs alternating, median of N.

    python benchmarks/capture_overhead.py [--model segformer-b0] [--size 512] [--runs 10] [--threads N]

Inside ``capture`` every attention takes the explicit path (it must form the probabilities
to hand them over) instead of ``scaled_dot_product_attention``; the budget is 1.10x.
"""
from __future__ import annotations

import argparse

import torch
from _timing import interleaved_medians

import segviz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="segformer-b0")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = segviz.create_model(args.model).eval()
    x = torch.randn(1, 3, args.size, args.size)
    counts = {}

    def plain():
        return model(x)

    def recorded():
        with segviz.capture(model) as rec:
            out = model(x)
        counts["attention"], counts["feature"] = len(rec.records(kind="attention")), len(rec.records(kind="feature"))
        return out

    with torch.inference_mode():
        err = (plain() - recorded()).abs().max().item()
        t_plain, t_rec = interleaved_medians([plain, recorded], args.warmup, args.runs)
    print(f"{args.model}, input 1x3x{args.size}x{args.size}, CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"recorded: {counts['attention']} attention maps, {counts['feature']} feature maps; "
          f"max |output difference| {err:.1e}")
    print(f"plain forward      : {t_plain * 1e3:8.1f} ms (median of {args.runs})")
    print(f"inside capture(...) : {t_rec * 1e3:8.1f} ms (median of {args.runs})")
    print(f"ratio capture / plain: {t_rec / t_plain:.3f}")


if __name__ == "__main__":
    main()
