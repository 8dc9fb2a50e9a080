"""How long one update of the ISR explorer takes (notebook 02's setting: edaformer-nano, 128x128).

    python benchmarks/isr_explorer_update.py            # trained weights from the trainer's cache
    python benchmarks/isr_explorer_update.py --threads 2 --eval-images 64

Three kinds of update, each the median of several:

* new ratio setting: GMACs counted, the image predicted with its attention recorded, mIoU on the
  held-out set, latency measured, figure redrawn (what a slider does the first time);
* seen setting: the per-setting results come from the explorer's cache; latency is measured
  again and the figure redrawn;
* query pixel: the figure alone is redrawn.
"""
from __future__ import annotations

import argparse
import statistics
import time

import segviz
from segviz.data import CLASSES, Shapes
from segviz.training import train
from segviz.viz.isr_explorer import ISRExplorer


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of the explorer (default 1)")
    parser.add_argument("--eval-images", type=int, default=16,
                        help="held-out Shapes images for mIoU (default 16, as in notebook 02)")
    parser.add_argument("--runs", type=int, default=8, help="query-pixel updates timed (default 8)")
    args = parser.parse_args()

    model = segviz.create_model("edaformer-nano")
    train(model, Shapes(256, size=128, seed=0), steps=120, batch_size=8, lr=4e-3, progress=False)
    held_out = Shapes(args.eval_images, size=128, seed=1000)
    image, _ = held_out[4]
    start = time.perf_counter()
    explorer = ISRExplorer(model, held_out.array(4), image[None], eval_set=held_out, class_names=CLASSES,
                           threads=args.threads)
    build_ms = (time.perf_counter() - start) * 1e3

    # Move encoder stage 1, then decoder stage 2, through each of their other options (one
    # slider assignment, so one redraw, each), putting each back afterwards; then walk again,
    # when every setting is in the explorer's cache.
    def walk() -> list[float]:
        times = []
        for slider in (explorer.sliders["enc 1"], explorer.sliders["dec 2"]):
            start_value = slider.value
            for value in slider.options:
                if value != start_value:
                    times.append(timed(lambda s=slider, v=value: setattr(s, "value", v)))
            slider.value = start_value
        return times

    new = walk()
    seen = walk()
    query = [timed(lambda v=v: setattr(explorer.y, "value", v)) for v in range(10, 10 + 8 * args.runs, 8)]

    print(f"edaformer-nano, 128x128 input, {args.threads} threads, mIoU on {args.eval_images} images")
    print(f"explorer built (reference setting evaluated) in {build_ms:.0f} ms")
    for label, times in (("new ratio setting", new), ("seen ratio setting", seen), ("query pixel", query)):
        print(f"{label:20s} median {statistics.median(times):6.0f} ms   (min {min(times):.0f}, max {max(times):.0f}, "
              f"n={len(times)})")


if __name__ == "__main__":
    main()
