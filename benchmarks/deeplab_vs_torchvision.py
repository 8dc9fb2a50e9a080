"""CPU forward time of segviz's DeepLabv3+ (ResNet-50, output stride 16) next to the same network
assembled from torchvision's parts (its atrous ResNet-50 and ASPP, the DeepLabv3+ decoder in plain
``nn`` layers: tests_parity/reference.py), same weights, same input, same process, interleaved runs
(warmup, then the median of N timed runs of each), repeated to show the spread on a shared machine.

Runs in the reference environment (torchvision):

    make .venv-parity/.installed
    .venv-parity/bin/python benchmarks/deeplab_vs_torchvision.py [--size 513] [--runs 10] [--repeats 3]
        [--threads N] [--profile]

``--profile`` prints torch.profiler's top operators of one forward of each model.

Measured 2026-11-23 (2 shared CPU cores, 1 thread, torch 2.13.0+cu130 on CPU): outputs identical
(max |difference| 0); ratio segviz / torchvision 1.007 (repeats 1.071, 1.003, 1.007; about 1.15 s
a forward) on a quiet machine, 0.910 .. 1.037 (median 1.018, 5 repeats, about 7 s a forward) under
heavy load. Both run the same kernels (the profile: mkldnn convolutions about 63 %, 1x1 convs on
the slow_conv2d path about 22 %, batch norm 5-6 %), so the ratio is 1 within the noise.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torchvision  # noqa: E402
from _timing import interleaved_medians  # noqa: E402

import segviz  # noqa: E402
from tests_parity.reference import TorchvisionDeepLabV3Plus, randomise  # noqa: E402


def profile(name, fn):
    from torch.profiler import ProfilerActivity, profile as torch_profile
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    print(f"--- {name}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output-stride", type=int, default=16)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tv = randomise(TorchvisionDeepLabV3Plus(50, args.output_stride))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tv.pth")
        torch.save(tv.torchvision_layout(), path)
        ours = segviz.create_model("deeplabv3plus-r50", weights=path, output_stride=args.output_stride)
    ours.eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    with torch.inference_mode():
        ref = tv(x)
        err = (ours.predict(x) - ref).abs().max().item()
        print(f"deeplabv3plus-r50 (output stride {args.output_stride}), "
              f"input {args.batch}x3x{args.size}x{args.size}, CPU, {torch.get_num_threads()} threads, "
              f"torch {torch.__version__}, torchvision {torchvision.__version__}")
        print(f"max |logit difference|: {err:.2e} (logits up to {ref.abs().max().item():.2f})")
        folded = segviz.fuse_for_inference(ours)  # every conv-BatchNorm pair folded into one conv
        print(f"max |logit difference| with BatchNorm folded: {(folded.predict(x) - ref).abs().max().item():.2e}")
        ratios, folded_ratios = [], []
        for i in range(args.repeats):
            t_ours, t_folded, t_tv = interleaved_medians(
                [lambda: ours.predict(x), lambda: folded.predict(x), lambda: tv(x)], args.warmup, args.runs)
            ratios.append(t_ours / t_tv)
            folded_ratios.append(t_folded / t_tv)
            print(f"repeat {i + 1}: segviz {t_ours * 1e3:8.1f} ms, segviz + fuse_for_inference {t_folded * 1e3:8.1f} ms, "
                  f"torchvision parts {t_tv * 1e3:8.1f} ms (medians of {args.runs}), ratios {t_ours / t_tv:.3f}, "
                  f"{t_folded / t_tv:.3f}")
        print(f"ratio segviz / torchvision: median {statistics.median(ratios):.3f}, "
              f"range {min(ratios):.3f} .. {max(ratios):.3f} over {args.repeats} repeats")
        print(f"ratio segviz + fuse_for_inference / torchvision: median {statistics.median(folded_ratios):.3f}, "
              f"range {min(folded_ratios):.3f} .. {max(folded_ratios):.3f} over {args.repeats} repeats")
        if args.profile:
            profile("segviz", lambda: ours.predict(x))
            profile("torchvision parts", lambda: tv(x))


if __name__ == "__main__":
    main()
