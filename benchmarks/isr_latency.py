"""Inference spatial reduction on EDAFormer: GMACs, measured latency, and the input size at
which ISR's speed-up shows through the run-to-run noise.

    python benchmarks/isr_latency.py                      # 512x512, CPU, 5 timed runs, -t and -b
    python benchmarks/isr_latency.py --size 256 --runs 3 --models edaformer-t
    python benchmarks/isr_latency.py --device cuda --json out.json
    python benchmarks/isr_latency.py --sizes 256 384 512 768 1024 --threads 1   # the size sweep

For each model it reports, at the training ratios and at the two ISR settings of the
EDAFormer paper, the GMACs (what the paper calls GFLOPs) with the reduction against
training, and the median latency of ``--runs`` forward passes (after one warm-up) with the
speed-up over the training ratios, both as wall-clock time and as this process's CPU time
(the steadier number on a machine shared with other work; use ``--threads 1`` there).

Runs are interleaved: each round times every setting once, in an order that rotates from
round to round, so load from other processes and the position in a round fall on all
settings alike. Each round also times the training ratios a second time (``training'``),
an A/A control: ``training / training'`` would be exactly 1 on a quiet machine, and how far
it strays is the run-to-run noise.

With ``--sizes`` it sweeps the input size (default models edaformer-nano and edaformer-t) and
prints a table of speed-ups per size. A speed-up is called *visible* when, in the paired
per-round ratios ``t(training) / t(setting)``, even the lower quartile exceeds 1 + noise, where
noise is the upper quartile of ``|t(training) / t(training') - 1|`` over the same rounds. The
last lines name, per model and setting, the smallest swept size where that holds.

The presets, in segviz's order (encoder stages 1-4; decoder stages 2, 3, 4, i.e. in the
order of the encoder stage each decoder stage reads):

    training     encoder (8, 4, 2, 1)   decoder (4, 2, 1)
    isr-a        encoder (16, 8, 2, 1)  decoder (8, 4, 2)   official flags "2211" / "222"
    isr-b        encoder (16, 8, 4, 2)  decoder (8, 4, 2)   official flags "2222" / "222"

(The official test script multiplies the training ratios per stage by its flags; the paper
lists decoder ratios deepest stage first; segviz.viz.isr_explorer.PAPER_PRESETS holds the same
two.) Weights are random: latency and GMACs do not depend on them.
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
CONTROL = "training'"  # the training ratios timed a second time in every round


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


def quartiles(values: list[float]) -> tuple[float, float]:
    """(lower, upper) quartile; the median twice for fewer than two values."""
    if len(values) < 2:
        m = statistics.median(values)
        return m, m
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def measure(name: str, size: int, runs: int, device: str, warmup: int = 1) -> list[dict]:
    """One row per preset (and one for the A/A control), timed in interleaved rounds.

    Each row holds the per-round times (``wall_ms``, ``cpu_ms``), their medians, the speed-up
    over the training ratios (median time against median time, as before) and, per clock, the
    paired per-round ratios ``t(training) / t(row)`` with their quartiles."""
    torch.manual_seed(0)
    model = segviz.create_model(name).eval().to(device)
    x = torch.randn(1, 3, size, size, device=device)
    settings = {**PRESETS, CONTROL: None}
    rows = {}
    for preset, ratios in settings.items():
        with isr(model, **(ratios or {}), input_size=(size, size)) as in_force:
            gmacs = segviz.flops(model, (1, 3, size, size), device="meta").total
        rows[preset] = dict(model=name, size=size, preset=preset, encoder=in_force["encoder"],
                            decoder=in_force["decoder"], params_m=count_params(model) / 1e6, gmacs=gmacs,
                            wall_ms=[], cpu_ms=[])
    order = list(settings)
    with torch.inference_mode():
        for round_ in range(warmup + runs):
            shift = round_ % len(order)
            for preset in order[shift:] + order[:shift]:
                with isr(model, **(settings[preset] or {})):
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
            paired = [b / t for b, t in zip(base[f"{clock}_ms"], row[f"{clock}_ms"])]
            row[f"{clock}_paired"] = paired
            row[f"{clock}_paired_median"] = statistics.median(paired)
            row[f"{clock}_paired_q1"], row[f"{clock}_paired_q3"] = quartiles(paired)
    control = rows[CONTROL]
    for clock in ("wall", "cpu"):
        noise = quartiles([abs(p - 1) for p in control[f"{clock}_paired"]])[1]
        for row in rows.values():
            row[f"{clock}_noise"] = noise
            row[f"{clock}_visible"] = row["preset"] not in ("training", CONTROL) and \
                row[f"{clock}_paired_q1"] > 1 + noise
    return list(rows.values())


def print_single(args) -> list[dict]:
    print(f"device {args.device}, input 1x3x{args.size}x{args.size}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, median of {args.runs} runs "
          f"(wall clock, and this process's CPU time)")
    header = f"{'model':<14} {'params':>7} {'setting':<9} {'encoder':<15} {'decoder':<10} " \
             f"{'GMACs':>7} {'cut':>6} {'wall':>9} {'speed-up':>8} {'CPU time':>9} {'speed-up':>8}"
    print(header)
    print("-" * len(header))
    rows = []
    for name in args.models:
        for r in measure(name, args.size, args.runs, args.device):
            rows.append(r)
            print(f"{r['model']:<14} {r['params_m']:>6.2f}M {r['preset']:<9} {str(r['encoder']):<15} "
                  f"{str(r['decoder']):<10} {r['gmacs']:>7.2f} {r['gmacs_reduction_pct']:>5.1f}% "
                  f"{r['wall_median_ms']:>7.0f}ms {r['wall_speedup']:>7.2f}x "
                  f"{r['cpu_median_ms']:>7.0f}ms {r['cpu_speedup']:>7.2f}x")
    noise = {r["model"]: r["wall_noise"] for r in rows if r["preset"] == CONTROL}
    print("run-to-run noise (A/A, upper quartile of |training/training' - 1|, wall): "
          + ", ".join(f"{m} {100 * n:.1f} %" for m, n in noise.items()))
    return rows


def print_sweep(args) -> list[dict]:
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{args.runs} interleaved rounds per size (after 1 warm-up round)")
    print("speed-up = median over rounds of t(training)/t(setting) in the same round [quartiles]; "
          "noise = upper quartile of |t(training)/t(training') - 1|; visible = lower quartile > 1 + noise")
    header = f"{'model':<14} {'size':>5} {'setting':<8} {'GMACs':>7} {'cut':>6} {'training':>9} {'setting':>9} " \
             f"{'speed-up (wall) [q1, q3]':>25} {'noise':>6} {'visible':>7} {'CPU-time speed-up':>18}"
    print(header)
    print("-" * len(header))
    rows = []
    for name in args.models:
        for size in args.sizes:
            measured = measure(name, size, args.runs, args.device)
            rows.extend(measured)
            base = measured[0]
            for r in measured:
                if r["preset"] in ("training", CONTROL):
                    continue
                print(f"{name:<14} {size:>5} {r['preset']:<8} {r['gmacs']:>7.3f} {r['gmacs_reduction_pct']:>5.1f}% "
                      f"{base['wall_median_ms']:>7.1f}ms {r['wall_median_ms']:>7.1f}ms "
                      f"{r['wall_paired_median']:>9.2f}x [{r['wall_paired_q1']:.2f}, {r['wall_paired_q3']:.2f}] "
                      f"{100 * r['wall_noise']:>5.1f}% {'yes' if r['wall_visible'] else 'no':>7} "
                      f"{r['cpu_paired_median']:>9.2f}x {'(yes)' if r['cpu_visible'] else '(no)':>7}", flush=True)
    print()
    for name in args.models:
        for preset in [p for p in PRESETS if p != "training"]:
            mine = [r for r in rows if r["model"] == name and r["preset"] == preset]
            visible = [r["size"] for r in mine if r["wall_visible"]]
            # the smallest size from which on every larger swept size is visible too
            steady = next((s for s in sorted(r["size"] for r in mine)
                           if all(r["wall_visible"] for r in mine if r["size"] >= s)), None)
            print(f"{name} {preset}: speed-up visible (wall clock) first at "
                  f"{f'{min(visible)} px' if visible else 'none of the swept sizes'}"
                  + (f", at every size from {steady} px on" if steady is not None else ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None,
                        help="registered names (default edaformer-t edaformer-b; "
                             "with --sizes edaformer-nano edaformer-t)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="sweep these input sizes and report where ISR's speed-up becomes visible")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.models is None:
        args.models = ["edaformer-nano", "edaformer-t"] if args.sizes else ["edaformer-t", "edaformer-b"]
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = print_sweep(args) if args.sizes else print_single(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=args.device, size=args.size, sizes=args.sizes, runs=args.runs,
                           threads=torch.get_num_threads(), torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
