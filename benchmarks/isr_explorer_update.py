"""How long one update of the ISR explorer takes, at notebook 02's setting: edaformer-nano,
a 256x256 held-out Scenes image, held-out mIoU over a few Scenes val images.

    python benchmarks/isr_explorer_update.py                  # shipped weights when present
    python benchmarks/isr_explorer_update.py --eval-images 16 --threads 2

The weights are the zoo's ``edaformer-nano.scenes`` when shipped (``segviz.list_weights()``),
else random (said so in the output; the times do not depend on the weights). Three kinds of
update, each the median of several:

* new ratio setting: the image predicted with its attention recorded, mIoU on the held-out
  set, GMACs read from the explorer's cost table, numbers and figure redrawn (what a slider
  does the first time);
* seen setting: the per-setting results come from the explorer's cache; numbers and figure
  redrawn;
* query pixel: the attention panel and the figure alone are redrawn.

Then where a new-setting update spends its time, and what one press of the "time latency"
button costs (it is not part of an update: see ISRExplorer's docstring).

Each time is given as wall clock, as this process's CPU time (all threads) and as the main
thread's CPU time. A new setting's mIoU pass runs on a worker thread while the main thread
draws, so on two free cores the update takes about the main thread's CPU time. The machine's
load average is printed before and after: on a machine shared with other work the wall times
are those of a busy machine (and the overlap gains nothing when no core is free).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import segviz
from segviz.data import SCENE_CLASSES, Scenes
from segviz.inspect.isr import isr
from segviz.training import evaluate
from segviz.viz.isr_explorer import ISRExplorer, evaluate_setting

BUDGET_MS = 300


class Timed(float):
    """Wall-clock milliseconds, with the process's CPU milliseconds (``.cpu``, all threads) and
    this thread's (``.main``) alongside."""

    cpu: float
    main: float


def timed(action) -> Timed:
    """Wall, process CPU and main-thread CPU time of ``action()``, in ms.

    On a machine busy with other work the wall time includes waiting for a core. The process
    CPU time is the work done, on all threads. The main thread's CPU time leaves out the mIoU
    pass that a new setting runs on a worker thread beside the drawing: on two free cores an
    update takes about that long (the worker's pass is the shorter of the two)."""
    cpu, main, start = time.process_time(), time.thread_time(), time.perf_counter()
    action()
    t = Timed((time.perf_counter() - start) * 1e3)
    t.cpu = (time.process_time() - cpu) * 1e3
    t.main = (time.thread_time() - main) * 1e3
    return t


def load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg()) + f" on {os.cpu_count()} CPUs"


def summary(label: str, times: list[Timed]) -> str:
    m, cpu = statistics.median(times), statistics.median(t.cpu for t in times)
    main = statistics.median(t.main for t in times)
    verdict = ", ".join(f"{name} {'within' if v <= BUDGET_MS else 'OVER'}"
                        for name, v in (("wall", m), ("main thread", main)))
    return (f"{label:19s} {m:5.0f} ms wall (min {min(times):.0f}, max {max(times):.0f}, n={len(times)}), "
            f"{cpu:4.0f} ms CPU, {main:4.0f} ms main-thread CPU: {verdict} {BUDGET_MS} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="edaformer-nano")
    parser.add_argument("--weights", default="scenes", help="zoo tag to load when shipped (default scenes)")
    parser.add_argument("--size", type=int, default=256, help="input side (default 256)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of the explorer (default 1)")
    parser.add_argument("--eval-images", type=int, default=8,
                        help="held-out Scenes val images for mIoU (default 8)")
    parser.add_argument("--image", type=int, default=0, help="which of them the explorer shows (default 0)")
    parser.add_argument("--runs", type=int, default=8, help="query-pixel updates timed (default 8)")
    parser.add_argument("--latency-presses", type=int, default=2,
                        help="presses of the time-latency button timed (default 2; 0 skips)")
    args = parser.parse_args()

    print(load())
    try:
        model = segviz.create_model(args.model, weights=args.weights)  # the zoo's, as segviz.list_weights() lists
        weights = f"weights {args.model}.{args.weights}"
    except (ValueError, OSError) as e:
        torch.manual_seed(0)
        model = segviz.create_model(args.model)
        weights = "random weights"
        print(f"note: no shipped {args.model}.{args.weights} weights ({e}); random init "
              f"(the times do not depend on the weights)")
    model.eval()
    held_out = Scenes(args.eval_images, size=args.size, seed=0, split="val")
    image, _ = held_out[args.image]
    built = []
    build = timed(lambda: built.append(ISRExplorer(model, held_out.array(args.image), image[None], eval_set=held_out,
                                                   class_names=SCENE_CLASSES, threads=args.threads)))
    explorer = built[0]

    # Move encoder stage 1, then decoder stage 2 (encoder stage 2 for a model without a
    # decoder), through each of their other options (one slider assignment, so one redraw,
    # each), putting each back afterwards; then walk again, when every setting is in the
    # explorer's cache.
    walked = [explorer.sliders["enc 1"], explorer.sliders.get("dec 2", explorer.sliders["enc 2"])]

    def walk() -> list[float]:
        times = []
        for slider in walked:
            start_value = slider.value
            for value in slider.options:
                if value != start_value:
                    times.append(timed(lambda s=slider, v=value: setattr(s, "value", v)))
            slider.value = start_value
        return times

    new = walk()
    seen = walk()
    h = image.shape[-2]
    rows = [10 + i * (h - 20) // args.runs for i in range(args.runs)]
    query = [timed(lambda v=v: setattr(explorer.y, "value", v)) for v in rows if v != explorer.y.value]

    # Where one new-setting update goes: the same steps, one by one, for a setting the
    # explorer has not seen (the paper's second preset).
    setting = {"encoder": (16, 8, 4, 2), "decoder": (8, 4, 2)}
    setting = {g: setting[g] for g in explorer.offered}
    parts: dict[str, list[Timed]] = {"predict + record attention": [], f"mIoU ({args.eval_images} images)": [],
                                     "figure update": [], "render + PNG": [], "whole update": []}
    with explorer._threads():
        for _ in range(3):
            parts["predict + record attention"].append(
                timed(lambda: evaluate_setting(model, explorer.input, setting, costs=explorer.costs)))
            with isr(model, **setting):
                parts[f"mIoU ({args.eval_images} images)"].append(timed(lambda: evaluate(model, explorer.eval_set)))
            result = evaluate_setting(model, explorer.input, setting, costs=explorer.costs)
            parts["figure update"].append(timed(lambda: explorer._picture.update(
                result, explorer.stage.value, (explorer.y.value, explorer.x.value), explorer.head.value)))
            parts["render + PNG"].append(timed(explorer._picture.png))
    for _ in range(3):
        explorer._cache.clear()
        parts["whole update"].append(timed(explorer.redraw))  # the mIoU pass on the worker, as always

    presses = []
    for _ in range(args.latency_presses):
        explorer.latencies.clear()
        presses.append(timed(explorer.measure_latency))

    lh, lw = explorer.latency_size
    print(f"{args.model} ({weights}), {args.size}x{args.size} input, {args.threads} thread(s), "
          f"mIoU on {args.eval_images} Scenes val images, torch {torch.__version__}")
    print(f"explorer built (cost table counted, reference setting evaluated, figure drawn) in {build:.0f} ms "
          f"wall, {build.cpu:.0f} ms CPU")
    for label, times in (("new ratio setting", new), ("seen ratio setting", seen), ("query pixel", query)):
        print(summary(label, times))
    print("a new-setting update, step by step on one thread, then whole as the explorer runs it "
          "(median of 3; wall, CPU):")
    for label, times in parts.items():
        print(f"    {label:28s} {statistics.median(times):6.0f} ms {statistics.median(t.cpu for t in times):6.0f} ms")
    if presses:
        print(f"time-latency button ({lh}x{lw}, {explorer.latency_repeats} interleaved runs each of the setting and "
              f"the training ratios, after a warm-up round): median {statistics.median(presses):.0f} ms wall, "
              f"{statistics.median(t.cpu for t in presses):.0f} ms CPU "
              f"(n={len(presses)}); readout: {explorer.readout.value.split('<br>')[0]}")
    print(load())


if __name__ == "__main__":
    main()
