"""CPU forward time of segviz's segformer-b0 next to HuggingFace transformers' SegFormer-B0,
same weights, same input, same process (warmup, then the median of N timed runs).

    python benchmarks/segformer_vs_hf.py [--size 512] [--runs 10] [--threads N]

Nothing is downloaded: the HF model is built from a config and its weights are copied
into segviz's model through a checkpoint file, so both compute the same function.
"""
from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from _timing import interleaved_medians  # noqa: E402

import segviz  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = transformers.SegformerConfig(
        num_labels=150, hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256
    )
    hf = transformers.SegformerForSemanticSegmentation(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = segviz.create_model("segformer-b0", num_classes=150, weights=os.path.join(tmp, "model.safetensors"))
    ours.eval()
    x = torch.randn(1, 3, args.size, args.size)
    with torch.inference_mode():
        ref = hf(pixel_values=x).logits
        err = (ours(x) - ref).abs().max().item()
    with torch.inference_mode():
        t_ours, t_hf = interleaved_medians([lambda: ours(x), lambda: hf(pixel_values=x).logits], args.warmup, args.runs)
    print(f"segformer-b0, input 1x3x{args.size}x{args.size}, CPU, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"max |logit difference|: {err:.2e} (logits up to {ref.abs().max().item():.2f})")
    print(f"segviz       : {t_ours * 1e3:8.1f} ms (median of {args.runs})")
    print(f"transformers : {t_hf * 1e3:8.1f} ms (median of {args.runs})")
    print(f"ratio segviz / transformers: {t_ours / t_hf:.2f}")


if __name__ == "__main__":
    main()
