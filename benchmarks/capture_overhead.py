"""What recording costs: a forward pass inside ``segviz.capture(model)`` (every attention's
probabilities, every default feature) next to the same forward pass outside it, same model,
same input, same process, runs alternating, median of N.

    python benchmarks/capture_overhead.py [--model segformer-b0] [--size 512] [--runs 10] [--threads N]

Inside ``capture`` the attention keeps its fused path; each record keeps its call's q, k and
additive term and forms the probabilities when first read. The budget, 1.10x, is for the
forward pass inside ``capture``. A third column times capture *and* reading every record's
``probs`` (what a notebook pays when it looks at every attention map), so the cost that moved
to the first read is shown too.
"""
from __future__ import annotations

import argparse

import torch
from _timing import interleaved_medians

import segviz
from segviz.nn.recording import record_kinds


def _max_difference(a, b) -> float:
    """Largest |a - b| over tensors, or over the tensors in dicts / lists / tuples of them."""
    if isinstance(a, torch.Tensor):
        return (a - b).abs().max().item()
    if isinstance(a, dict):
        return max((_max_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)):
        return max((_max_difference(u, v) for u, v in zip(a, b)), default=0.0)
    return 0.0


def measure(model, x, warmup: int = 2, runs: int = 10) -> dict:
    """Median seconds of ``model(x)`` outside and inside ``segviz.capture(model)``, interleaved,
    under ``torch.inference_mode()`` (wall clock, and process CPU time as ``*_cpu``); also the
    number of records and the largest output difference."""
    counts = {}

    def plain():
        return model(x)

    def recorded():
        with segviz.capture(model) as rec:
            out = model(x)
        counts.clear()
        for kind in record_kinds():
            if rec.records(kind=kind):
                counts[kind] = len(rec.records(kind=kind))
        return out

    def recorded_and_read():
        with segviz.capture(model) as rec:
            out = model(x)
        for record in rec.records():
            if hasattr(record, "is_computed"):
                record.probs  # noqa: B018 (reading forms the probabilities)
        return out

    with torch.inference_mode():
        err = _max_difference(plain(), recorded())
        cpu = []
        t_plain, t_rec, t_read = interleaved_medians([plain, recorded, recorded_and_read], warmup, runs, cpu=cpu)
    return dict(plain=t_plain, capture=t_rec, ratio=t_rec / t_plain, max_difference=err, records=dict(counts),
                plain_cpu=cpu[0], capture_cpu=cpu[1], cpu_ratio=cpu[1] / cpu[0],
                capture_read=t_read, read_ratio=t_read / t_plain)


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
    r = measure(model, x, args.warmup, args.runs)
    print(f"{args.model}, input 1x3x{args.size}x{args.size}, CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"recorded: {', '.join(f'{n} {k}' for k, n in r['records'].items())}; "
          f"max |output difference| {r['max_difference']:.1e}")
    print(f"plain forward      : {r['plain'] * 1e3:8.1f} ms (median of {args.runs})")
    print(f"inside capture(...) : {r['capture'] * 1e3:8.1f} ms (median of {args.runs})")
    print(f"ratio capture / plain: {r['ratio']:.3f} (process CPU time: {r['plain_cpu'] * 1e3:.1f} -> "
          f"{r['capture_cpu'] * 1e3:.1f} ms, {r['cpu_ratio']:.3f})")
    print(f"capture + reading every record's probs: {r['capture_read'] * 1e3:8.1f} ms, "
          f"{r['read_ratio']:.3f}x the plain forward (the softmax moved to the first read)")


if __name__ == "__main__":
    main()
