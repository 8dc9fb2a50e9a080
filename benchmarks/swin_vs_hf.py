"""CPU forward time of segviz's swin-t classifier next to HuggingFace transformers'
SwinForImageClassification (Swin-T, window 7), same weights, same input, same process,
interleaved runs (warmup, then the median of N timed runs of each).

    python benchmarks/swin_vs_hf.py [--size 224] [--runs 20] [--rounds 1] [--threads N] [--batch 1] [--no-grad]

``--rounds K`` repeats the whole interleaved measurement K times and prints every round's ratio and
their spread (the machine may be shared: one round's ratio alone can mislead). Both models run under
``torch.inference_mode()``, or under ``torch.no_grad()`` with ``--no-grad``.

Nothing is downloaded: the HF model is built from a config with random weights (its zero-initialised
relative-position tables are filled too), written with save_pretrained and read back by
``create_model("swin-t", weights=...)``, so both compute the same function.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-grad", action="store_true", help="torch.no_grad() instead of torch.inference_mode()")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = transformers.SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                                     num_labels=1000)
    hf = transformers.SwinForImageClassification(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(0, 0.02)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = segviz.create_model("swin-t", weights=os.path.join(tmp, "model.safetensors"))
    ours.eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    mode = torch.no_grad() if args.no_grad else torch.inference_mode()
    print(f"swin-t, input {args.batch}x3x{args.size}x{args.size}, CPU, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, transformers {transformers.__version__} "
          f"(attention: {hf.config._attn_implementation}), {'no_grad' if args.no_grad else 'inference_mode'}")
    ratios = []
    with mode:
        ref = hf(pixel_values=x).logits
        err = (ours(x) - ref).abs().max().item()
        print(f"max |logit difference|: {err:.2e} (logits up to {ref.abs().max().item():.2f})")
        for i in range(args.rounds):
            t_ours, t_hf = interleaved_medians([lambda: ours(x), lambda: hf(pixel_values=x).logits], args.warmup,
                                               args.runs)
            ratios.append(t_ours / t_hf)
            prefix = f"round {i + 1}/{args.rounds}: " if args.rounds > 1 else ""
            print(f"{prefix}segviz {t_ours * 1e3:8.1f} ms, transformers {t_hf * 1e3:8.1f} ms (medians of {args.runs})")
    if args.rounds > 1:
        print("ratios: " + ", ".join(f"{r:.3f}" for r in ratios) + f" (spread {min(ratios):.3f}-{max(ratios):.3f})")
        print(f"ratio segviz / transformers: {statistics.median(ratios):.2f} (median of {args.rounds} rounds)")
    else:
        print(f"ratio segviz / transformers: {ratios[0]:.2f}")


if __name__ == "__main__":
    main()
