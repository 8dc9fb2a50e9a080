"""CPU forward time of segviz's Mask2Former + Swin-T next to HuggingFace transformers'
``Mask2FormerForUniversalSegmentation``: same weights, same input, same process.

    python benchmarks/mask2former_vs_hf.py [--size 512] [--runs 5] [--repeats 3] [--threads N]

Both compute every prediction of the decoder (the learnable queries' and the 9 layers'):
HF's forward, and segviz's ``forward_heads``. Timed interleaved run by run (``_timing.py``);
each repeat prints the medians of ``--runs`` runs after ``--warmup``; the last line gives the
median ratio segviz / HF over the repeats and its range, since the machine may be shared.

Nothing is downloaded: the HF model is built from a config with random weights (150 classes,
100 queries) and saved with ``save_pretrained``; segviz's model loads that file through
``create_model("mask2former-swin-t", weights=...)``. The largest difference of the final class
and mask logits is printed.
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


def build():
    torch.manual_seed(0)
    backbone = transformers.SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                                       out_features=["stage1", "stage2", "stage3", "stage4"])
    hf = transformers.Mask2FormerForUniversalSegmentation(
        transformers.Mask2FormerConfig(backbone_config=backbone, num_labels=150)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = segviz.create_model("mask2former-swin-t", weights=os.path.join(tmp, "model.safetensors"))
    return hf, ours.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"input 1x3x{args.size}x{args.size}, CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; medians of {args.runs} interleaved runs, {args.repeats} repeats")
    hf, ours = build()
    x = torch.randn(1, 3, args.size, args.size)
    with torch.inference_mode():
        ref = hf(pixel_values=x)
        out = ours.forward_heads(x)
    err_class = (out["pred_logits"] - ref.class_queries_logits).abs().max().item()
    err_mask = (out["pred_masks"] - ref.masks_queries_logits).abs().max().item()
    print(f"mask2former-swin-t: max |difference| vs HF: class logits {err_class:.1e}, mask logits {err_mask:.1e}")

    def run_hf():
        with torch.inference_mode():
            hf(pixel_values=x)

    def run_ours():
        with torch.inference_mode():
            ours.forward_heads(x)

    ratios = []
    for repeat in range(args.repeats):
        t_hf, t_ours = interleaved_medians([run_hf, run_ours], args.warmup, args.runs)
        ratios.append(t_ours / t_hf)
        print(f"repeat {repeat + 1}: HF {t_hf * 1e3:.0f} ms, segviz {t_ours * 1e3:.0f} ms, ratio {ratios[-1]:.2f}")
    print(f"segviz / HF forward time: median {statistics.median(ratios):.2f} "
          f"(range {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
