"""CPU forward time of segviz's SegFormer, readable and fused for inference, next to
HuggingFace transformers' SegFormer: same weights, same input, same process.

    python benchmarks/segformer_vs_hf.py [--variants b0 b2] [--size 512] [--runs 10] [--repeats 3] [--threads N]

For each variant three forwards are timed, interleaved run by run (``_timing.py``): HF,
``segviz.create_model(...)`` (the readable model) and ``segviz.fuse_for_inference`` of it
(the all-MLP decoder's fuse merged into each stage's Linear before upsampling). Each
repeat prints the medians of ``--runs`` runs after ``--warmup``; the last lines give the
median ratio over the repeats and its range, since the machine may be shared. On a
machine shared with other jobs, ``--threads 1`` gives steadier figures: with more threads
than free cores every parallel op waits for its slowest thread, which blurs the ratios.

Nothing is downloaded: the HF model is built from a config with random weights and its
weights are copied into segviz's model through a checkpoint file, so all three compute the
same function (the largest logit difference is printed). The BatchNorm running statistics
are randomised first, so the fused model's folding is exercised on non-trivial numbers.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from _timing import interleaved_medians  # noqa: E402

import segviz  # noqa: E402

# HF config fields of each variant (hidden sizes, depths, decoder width)
VARIANTS = {
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b1": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
}


def build(variant: str):
    """(HF model, segviz readable, segviz fused), all in eval mode with the same weights."""
    torch.manual_seed(0)
    hf = transformers.SegformerForSemanticSegmentation(
        transformers.SegformerConfig(num_labels=150, **VARIANTS[variant])
    ).eval()
    bn = hf.decode_head.batch_norm
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = segviz.create_model(f"segformer-{variant}", num_classes=150,
                                   weights=os.path.join(tmp, "model.safetensors"))
    ours.eval()
    return hf, ours, segviz.fuse_for_inference(ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["b0"], choices=sorted(VARIANTS))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"input 1x3x{args.size}x{args.size}, CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; medians of {args.runs} interleaved runs, {args.repeats} repeats")
    for variant in args.variants:
        hf, ours, fused = build(variant)
        x = torch.randn(1, 3, args.size, args.size)
        with torch.inference_mode():
            ref = hf(pixel_values=x).logits
            err_ours = (ours(x) - ref).abs().max().item()
            err_fused = (fused(x) - ref).abs().max().item()
        print(f"segformer-{variant}: max |logit difference| vs HF: readable {err_ours:.1e}, fused {err_fused:.1e} "
              f"(logits up to {ref.abs().max().item():.2f})")
        ratios = {"readable": [], "fused": []}
        for repeat in range(args.repeats):
            with torch.inference_mode():
                t_hf, t_ours, t_fused = interleaved_medians(
                    [lambda: hf(pixel_values=x).logits, lambda: ours(x), lambda: fused(x)], args.warmup, args.runs
                )
            ratios["readable"].append(t_ours / t_hf)
            ratios["fused"].append(t_fused / t_hf)
            print(f"  repeat {repeat + 1}: transformers {t_hf * 1e3:7.1f} ms | segviz {t_ours * 1e3:7.1f} ms "
                  f"({t_ours / t_hf:.2f}x) | segviz fused {t_fused * 1e3:7.1f} ms ({t_fused / t_hf:.2f}x)")
        for what, rs in ratios.items():
            print(f"  segformer-{variant} {what:8s} / transformers: median {statistics.median(rs):.2f}x "
                  f"(range {min(rs):.2f}-{max(rs):.2f} over {len(rs)} repeats)")


if __name__ == "__main__":
    main()
