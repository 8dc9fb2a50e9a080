"""Inference spatial reduction on EDAFormer-T and -B: GMACs and measured latency.

    python benchmarks/isr_latency.py                      # 512x512, CPU, 5 timed runs
    python benchmarks/isr_latency.py --size 256 --runs 3 --models edaformer-t
    python benchmarks/isr_latency.py --device cuda --json out.json

For each model it reports, at the training ratios and at the two ISR settings of the
EDAFormer paper, the GMACs (what the paper calls GFLOPs) with the reduction against
training, and the median latency of ``--runs`` forward passes (after one warm-up) with the
speed-up over the training ratios, both as wall-clock time and as this process's CPU time
(the steadier number on a machine shared with other work; use ``--threads 1`` there).

The presets, in segviz's order (encoder stages 1-4; decoder stages 2, 3, 4, i.e. in the
order of the encoder stage each decoder stage reads):

    training     encoder (8, 4, 2, 1)   decoder (4, 2, 1)
    isr-a        encoder (16, 8, 2, 1)  decoder (8, 4, 2)   official flags "2211" / "222"
    isr-b        encoder (16, 8, 4, 2)  decoder (8, 4, 2)   official flags "2222" / "222"

(The official test script multiplies the training ratios per stage by its flags; the paper
lists decoder ratios deepest stage first.) Weights are random: latency and GMACs do not
depend on them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import segviz
from segviz.inspect import count_params
from segviz.inspect.isr import isr

PRESETS = {
    "training": None,
    "isr-a": dict(encoder=(16, 8, 2, 1), decoder=(8, 4, 2)),
    "isr-b": dict(encoder=(16, 8, 4, 2), decoder=(8, 4, 2)),
}


def forward_ms(model, x) -> tuple[float, float]:
    """(wall time, process CPU time) of one forward pass, in milliseconds.

    On a shared machine the wall time includes waiting for other processes; the CPU time
    (all threads of this process) does not, so it is the steadier measure there.
    """
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    model(x)
    sync()
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


def measure(name: str, size: int, runs: int, device: str, warmup: int = 1) -> list[dict]:
    """One row per preset. The presets are timed in turn within each round (interleaved), so
    a change of machine load during the benchmark hits all of them alike."""
    torch.manual_seed(0)
    model = segviz.create_model(name).eval().to(device)
    x = torch.randn(1, 3, size, size, device=device)
    rows = {}
    for preset, ratios in PRESETS.items():
        with isr(model, **(ratios or {}), input_size=(size, size)) as in_force:
            gmacs = segviz.flops(model, (1, 3, size, size), device="meta").total
        rows[preset] = dict(model=name, preset=preset, encoder=in_force["encoder"], decoder=in_force["decoder"],
                            params_m=count_params(model) / 1e6, gmacs=gmacs, wall_ms=[], cpu_ms=[])
    with torch.inference_mode():
        for round_ in range(warmup + runs):
            for preset, ratios in PRESETS.items():
                with isr(model, **(ratios or {})):
                    wall, cpu = forward_ms(model, x)
                if round_ >= warmup:
                    rows[preset]["wall_ms"].append(wall)
                    rows[preset]["cpu_ms"].append(cpu)
    base = rows["training"]
    for row in rows.values():
        row["gmacs_reduction_pct"] = 100 * (1 - row["gmacs"] / base["gmacs"])
        for clock in ("wall", "cpu"):
            row[f"{clock}_median_ms"] = statistics.median(row[f"{clock}_ms"])
            row[f"{clock}_speedup"] = statistics.median(base[f"{clock}_ms"]) / row[f"{clock}_median_ms"]
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["edaformer-t", "edaformer-b"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, input 1x3x{args.size}x{args.size}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, median of {args.runs} runs "
          f"(wall clock, and this process's CPU time)")
    header = f"{'model':<12} {'params':>7} {'setting':<9} {'encoder':<15} {'decoder':<10} " \
             f"{'GMACs':>7} {'cut':>6} {'wall':>9} {'speed-up':>8} {'CPU time':>9} {'speed-up':>8}"
    print(header)
    print("-" * len(header))
    rows = []
    for name in args.models:
        for r in measure(name, args.size, args.runs, args.device):
            rows.append(r)
            print(f"{r['model']:<12} {r['params_m']:>6.2f}M {r['preset']:<9} {str(r['encoder']):<15} "
                  f"{str(r['decoder']):<10} {r['gmacs']:>7.2f} {r['gmacs_reduction_pct']:>5.1f}% "
                  f"{r['wall_median_ms']:>7.0f}ms {r['wall_speedup']:>7.2f}x "
                  f"{r['cpu_median_ms']:>7.0f}ms {r['cpu_speedup']:>7.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=args.device, size=args.size, runs=args.runs, threads=torch.get_num_threads(),
                           torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
