"""Every published config that has a reference in this environment, timed against it, and
``capture``'s overhead for each model; writes ``benchmarks/RESULTS.md``.

    python benchmarks/run_all.py [--threads 1] [--runs 10] [--heavy-runs 10] [--models ...] [--no-deeplab]
        [--out benchmarks/RESULTS.md]

Rows (CPU, batch 1):

* segformer-b0 / -b2 at 512, readable and ``segviz.fuse_for_inference``, vs HuggingFace
  ``SegformerForSemanticSegmentation`` (built by ``segformer_vs_hf.build``);
* swin-t at 224 vs ``SwinForImageClassification``;
* upernet-swin-t at 512 vs ``UperNetForSemanticSegmentation`` (both give the main logits at the
  input size: our ``predict``, HF's forward with its auxiliary head detached, since HF otherwise
  computes the auxiliary FCN head on every forward although inference does not use it);
* mask2former-swin-t at 512 vs ``Mask2FormerForUniversalSegmentation`` (``mask2former_vs_hf.build``;
  both compute every decoder layer's prediction: our ``forward_heads``, HF's forward);
* edaformer-t at 512 and dat-t at 224, absolute (no official-layout reference here);
* deeplabv3plus-r50 at 513 vs torchvision's parts, run by the reference environment
  (``.venv-parity/bin/python benchmarks/deeplab_vs_torchvision.py``) in a subprocess.

Method: the reference is built from a config with random weights, saved with ``save_pretrained``
and loaded into ours with ``segviz.create_model(name, weights=path)``, so both compute the same
function (the largest output difference is written down). The forwards of one row run in one
process, interleaved run by run (``_timing.interleaved_medians``), under ``torch.inference_mode()``;
the table gives the medians. GMAC/s is the model's GMACs (``segviz.flops`` on the meta device, the
fused model's own count for the fused row, segviz's count for the reference, which computes the
same function) over the median time. Peak memory is the rise of the process's resident set during
one forward: Python's garbage collector and glibc's ``malloc_trim`` run first, the kernel's peak-RSS
mark is reset (``5`` written to ``/proc/self/clear_refs``), and ``VmHWM`` after the forward minus
``VmRSS`` before it is reported (``tracemalloc`` does not see torch's allocations). It counts
activations and workspace, not the weights, which are already resident.

Capture overhead: ``capture_overhead.measure`` (a forward inside ``segviz.capture(model)``, all
attention and default features recorded, against the same forward outside it), target <= 1.10x;
also capture plus reading every record's probabilities (formed on first read).

Use ``--threads 1`` (the default) on a shared machine: with more threads than free cores every
parallel op waits for its slowest thread and the ratios become noise.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from _timing import interleaved_medians  # noqa: E402

import capture_overhead  # noqa: E402
import mask2former_vs_hf  # noqa: E402
import segformer_vs_hf  # noqa: E402
import segviz  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SWIN_T = dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7)
ALL = ["segformer-b0", "segformer-b2", "swin-t", "upernet-swin-t", "mask2former-swin-t", "edaformer-t", "dat-t"]
HEAVY = {"segformer-b2", "upernet-swin-t", "mask2former-swin-t"}


# ----------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_rss_mib(fn) -> float | None:
    """Rise of the resident set (MiB) during one call of ``fn``; None where /proc cannot say."""
    try:
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
        out = fn()
        peak = _status_kib("VmHWM")
        del out
        return (peak - before) / 1024
    except (OSError, KeyError):
        return None


# ----------------------------------------------------------------------------------------
# References (random weights, saved and loaded into ours)
# ----------------------------------------------------------------------------------------
def _load_ours(hf, name: str, **kwargs):
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        return segviz.create_model(name, weights=os.path.join(tmp, "model.safetensors"), **kwargs).eval()


def _randomise_swin_tables(hf) -> None:
    """HF zero-initialises the relative-position tables; fill them so the bias is exercised."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(0, 0.02)


def build_swin():
    torch.manual_seed(0)
    hf = transformers.SwinForImageClassification(transformers.SwinConfig(num_labels=1000, **SWIN_T)).eval()
    _randomise_swin_tables(hf)
    return hf, _load_ours(hf, "swin-t")


def build_upernet():
    torch.manual_seed(0)
    backbone = transformers.SwinConfig(out_features=["stage1", "stage2", "stage3", "stage4"], **SWIN_T)
    hf = transformers.UperNetForSemanticSegmentation(
        transformers.UperNetConfig(backbone_config=backbone, num_labels=150)).eval()
    _randomise_swin_tables(hf)
    with torch.no_grad():
        for m in hf.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    ours = _load_ours(hf, "upernet-swin-t")
    hf.auxiliary_head = None  # inference: the main logits only (HF would compute the auxiliary head too)
    return hf, ours


def gmacs(model, size: int) -> float:
    return segviz.flops(model, (1, 3, size, size), device="meta").total


# ----------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------
def entries(name: str):
    """(size, reference or None, {label: (callable, GMACs)}, model for capture, output difference note)."""
    if name.startswith("segformer-"):
        size = 512
        hf, ours, fused = segformer_vs_hf.build(name.split("-")[1])
        x = torch.randn(1, 3, size, size)
        with torch.inference_mode():
            ref = hf(pixel_values=x).logits
            diff = (f"readable {(ours(x) - ref).abs().max().item():.1e}, "
                    f"fused {(fused(x) - ref).abs().max().item():.1e}")
        g = gmacs(ours, size)
        return size, x, (lambda: hf(pixel_values=x).logits, g), {
            f"{name}": (lambda: ours(x), g, None),
            f"{name} + fuse_for_inference": (lambda: fused(x), gmacs(fused, size),
                                             0.5 if name == "segformer-b0" else None),
        }, ours, diff
    if name == "swin-t":
        size = 224
        hf, ours = build_swin()
        x = torch.randn(1, 3, size, size)
        with torch.inference_mode():
            diff = f"{(ours(x) - hf(pixel_values=x).logits).abs().max().item():.1e}"
        g = gmacs(ours, size)
        return size, x, (lambda: hf(pixel_values=x).logits, g), {name: (lambda: ours(x), g, 0.9)}, ours, diff
    if name == "upernet-swin-t":
        size = 512
        hf, ours = build_upernet()
        x = torch.randn(1, 3, size, size)
        with torch.inference_mode():
            diff = f"{(ours.predict(x) - hf(pixel_values=x).logits).abs().max().item():.1e}"
        g = gmacs(ours, size)
        return size, x, (lambda: hf(pixel_values=x).logits, g), {name: (lambda: ours.predict(x), g, None)}, ours, diff
    if name == "mask2former-swin-t":
        size = 512
        hf, ours = mask2former_vs_hf.build()
        x = torch.randn(1, 3, size, size)
        with torch.inference_mode():
            ref, out = hf(pixel_values=x), ours.forward_heads(x)
            diff = (f"class logits {(out['pred_logits'] - ref.class_queries_logits).abs().max().item():.1e}, "
                    f"mask logits {(out['pred_masks'] - ref.masks_queries_logits).abs().max().item():.1e}")
        g = gmacs(ours, size)
        return size, x, (lambda: hf(pixel_values=x), g), {name: (lambda: ours.forward_heads(x), g, 0.9)}, ours, diff
    if name in ("edaformer-t", "dat-t"):
        size = 512 if name == "edaformer-t" else 224
        torch.manual_seed(0)
        ours = segviz.create_model(name).eval()
        x = torch.randn(1, 3, size, size)
        return size, x, None, {name: (lambda: ours(x), gmacs(ours, size), None)}, ours, "no reference"
    raise ValueError(f"run_all: unknown model {name!r}; known: {', '.join(ALL)}")


def deeplab(threads: int, runs: int) -> str:
    python = os.path.join(ROOT, ".venv-parity", "bin", "python")
    if not os.path.exists(python):
        return "not run: the reference environment (.venv-parity, `make .venv-parity/.installed`) is absent"
    cmd = [python, os.path.join(HERE, "deeplab_vs_torchvision.py"), "--threads", str(threads), "--runs", str(runs),
           "--repeats", "1"]
    done = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True)
    if done.returncode:
        return f"failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}"
    return done.stdout.strip()


def fmt_target(ratio: float, target: float | None) -> str:
    if target is None:
        return "–"
    return f"≤ {target:.2f}× {'met' if ratio <= target else '**missed**'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=ALL, choices=ALL)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10, help="timed runs per forward (median)")
    parser.add_argument("--heavy-runs", type=int, default=10, help="the same for the 512 px heavy models")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-deeplab", action="store_true")
    parser.add_argument("--no-capture", action="store_true")
    parser.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)

    rows, capture_rows, notes = [], [], []
    for name in args.models:
        runs = args.heavy_runs if name in HEAVY else args.runs
        warmup = 1 if name in HEAVY else args.warmup
        size, x, ref, ours, capture_model, diff = entries(name)
        labels = list(ours)
        fns = [ours[k][0] for k in labels] + ([ref[0]] if ref else [])
        with torch.inference_mode():
            times = interleaved_medians(fns, warmup, runs)
            mems = [peak_rss_mib(fn) for fn in fns]
        t_ref = times[-1] if ref else None
        for i, label in enumerate(labels):
            _, g, target = ours[label]
            ratio = times[i] / t_ref if ref else None
            rows.append(dict(model=label, size=size, ms=times[i] * 1e3, ref_ms=t_ref * 1e3 if ref else None,
                             ratio=ratio, gmacs=g, gmac_s=g / times[i], mem=mems[i], target=target, runs=runs))
        if ref:
            rows.append(dict(model=f"  (reference for {name})", size=size, ms=t_ref * 1e3, ref_ms=None, ratio=None,
                             gmacs=ref[1], gmac_s=ref[1] / t_ref, mem=mems[-1], target=None, runs=runs))
        notes.append(f"{name}: max |output difference| vs the reference: {diff}")
        print(f"{name}: " + ", ".join(f"{k} {t * 1e3:.0f} ms" for k, t in zip(labels + ["ref"], times)), flush=True)
        if not args.no_capture:
            c = capture_overhead.measure(capture_model, x, warmup, runs)
            capture_rows.append(dict(model=name, size=size, runs=runs, **c))
            print(f"  capture {c['ratio']:.3f}x", flush=True)
        del x, ref, ours, capture_model, fns
        gc.collect()

    deeplab_out = None if args.no_deeplab else deeplab(args.threads, args.runs)
    load_end = os.getloadavg()
    write(args, rows, capture_rows, notes, deeplab_out, started, load_start, load_end)
    print(f"wrote {args.out}")


def write(args, rows, capture_rows, notes, deeplab_out, started, load_start, load_end) -> None:
    ended = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        "# Benchmarks: segviz against the reference implementations",
        "",
        f"Measured {started:%Y-%m-%d %H:%M}–{ended:%H:%M} UTC by `python benchmarks/run_all.py "
        f"--threads {args.threads} --runs {args.runs} --heavy-runs {args.heavy_runs}`; CPU "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible), "
        f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, transformers {transformers.__version__}, "
        f"batch 1, `torch.inference_mode()`.",
        f"Machine load (1/5/15-min load average) at the start {', '.join(f'{v:.2f}' for v in load_start)}, "
        f"at the end {', '.join(f'{v:.2f}' for v in load_end)} (the machine is shared with other jobs; "
        "runs are interleaved, so load falls on both sides of a ratio alike, but absolute times are inflated).",
        "",
        "Same random weights on both sides (reference built from a config, `save_pretrained`, "
        "`segviz.create_model(name, weights=path)`), same process, interleaved runs, medians. "
        "GMACs from `segviz.flops` (meta device); GMAC/s = GMACs / median time (for a reference, segviz's GMACs "
        "of the same function). Peak memory: rise of the process's resident set during one forward "
        "(`VmHWM` after the forward, reset through `/proc/self/clear_refs` just before, minus `VmRSS` before; "
        "after `gc.collect()` and glibc `malloc_trim(0)`), i.e. activations and workspace, not the weights; "
        "memory the allocator kept from earlier forwards can hide part of it, so read it as a lower bound.",
        "",
        "| model | input | runs | segviz ms | reference ms | ratio | target | GMACs | GMAC/s | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = f"{r['ref_ms']:.0f}" if r["ref_ms"] else ""
        ratio = f"{r['ratio']:.2f}×" if r["ratio"] is not None else ""
        target = fmt_target(r["ratio"], r["target"]) if r["ratio"] is not None else ""
        mem = f"{r['mem']:.0f}" if r["mem"] is not None else "n/a"
        lines.append(f"| {r['model']} | {r['size']} | {r['runs']} | {r['ms']:.0f} | {ref} | {ratio} | {target} | "
                     f"{r['gmacs']:.1f} | {r['gmac_s']:.1f} | {mem} |")
    lines += ["", "Output agreement: " + "; ".join(notes) + ".", ""]
    if capture_rows:
        lines += [
            "## `capture` overhead (target ≤ 1.10×)",
            "",
            "`capture_overhead.measure`: the readable model's forward inside `segviz.capture(model)` (every "
            "attention and the default features recorded) against the same forward outside it, "
            "interleaved, medians. Records form their attention probabilities when first read; the last "
            "two columns time capture plus reading every record's `probs`, the cost that moved there.",
            "",
            "| model | input | runs | plain ms | in capture ms | ratio | target | records per kind "
            "| capture + read ms | ratio |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in capture_rows:
            lines.append(f"| {c['model']} | {c['size']} | {c['runs']} | {c['plain'] * 1e3:.0f} | "
                         f"{c['capture'] * 1e3:.0f} | {c['ratio']:.3f}× | {fmt_target(c['ratio'], 1.10)} | "
                         f"{', '.join(f'{n} {k}' for k, n in c['records'].items())} | "
                         f"{c['capture_read'] * 1e3:.0f} | {c['read_ratio']:.2f}× |")
        lines.append("")
    if deeplab_out is not None:
        ratio = re.findall(r"ratio[^\n]*", deeplab_out)
        lines += [
            "## DeepLabv3+ (ResNet-50) vs torchvision (reference environment)",
            "",
            "Run by `.venv-parity/bin/python benchmarks/deeplab_vs_torchvision.py "
            f"--threads {args.threads} --runs {args.runs} --repeats 1` as a subprocess (torchvision lives only in "
            "that environment); no target was set, the two run the same kernels. Its output:",
            "",
            "```",
            deeplab_out,
            "```",
            "",
        ]
        if not ratio:
            lines.append("(no ratio line found in its output)")
    lines += ["## Targets", ""]
    for r in rows:
        if r["target"] is not None and r["ratio"] is not None:
            lines.append(f"- {r['model']}: {r['ratio']:.2f}× the reference, target {fmt_target(r['ratio'], r['target'])}")
    for c in capture_rows:
        lines.append(f"- capture, {c['model']}: {c['ratio']:.3f}×, target {fmt_target(c['ratio'], 1.10)}")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
