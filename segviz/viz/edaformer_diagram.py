"""EDAFormer's all-attention decoder drawn from a model: its {3-2-1} structure, read off the
modules themselves (blocks per stage, heads, channels, reduction ratios, map sizes), so that a
{2-2-2} or {1-4-1} variant draws itself correctly.
"""
from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from torch import nn

from segviz.viz import style

ENCODER_COLOR = "#dbe9f6"
BLOCK_COLOR = "#fde0c5"
FUSE_COLOR = "#d9f0d3"
UNUSED_COLOR = "#eeeeee"


def decoder_structure(model: nn.Module, input_size: Sequence[int] = (512, 512)) -> list[dict]:
    """One dict per decoder stage, deepest first: level (encoder stage read), blocks, heads,
    channels, training ratio, ratio in force and the (h, w) map at ``input_size`` = (H, W)."""
    decoder = getattr(model, "decoder", None)
    if decoder is None or not all(hasattr(decoder, f"stage{s}") for s in (2, 3, 4)):
        raise ValueError(f"{type(model).__name__} has no EDAFormer all-attention decoder (decoder.stage2/3/4)")
    h, w = (int(s) for s in input_size)
    rows = []
    for level in (4, 3, 2):
        stage = getattr(decoder, f"stage{level}")
        attn = stage.blocks[0].attn
        stride = 2 ** (level + 1)
        rows.append(dict(level=level, blocks=len(stage.blocks), heads=attn.heads, channels=attn.proj.in_features,
                         train_ratio=attn.train_ratio, ratio=attn.ratio, hw=(h // stride, w // stride)))
    return rows


def _box(ax, x, y, w, h, text, color, fontsize=style.SMALL, **kw):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", facecolor=color,
                                edgecolor="0.25", lw=1.0, **kw))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, start, end, text=None, head=True):
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle="-|>" if head else "-", color="0.3", lw=1.1, shrinkA=0, shrinkB=0))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, text, ha="center", va="center", fontsize=style.SMALL,
                color="0.2", bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none"))


@style.styled
def decoder_diagram(model: nn.Module, input_size: Sequence[int] = (512, 512)) -> Figure:
    """The all-attention decoder as boxes and arrows, read from ``model``.

    Left: the encoder's four stages (stage 1 is not used by the decoder). Middle: one row
    per decoder stage with one box per EFT block (heads, per-side reduction ratio r; keys per
    query N/R with R = r²).
    Right: bilinear upsampling to the 1/8 map, concatenation [s4, s3, s2], the 1×1
    Conv-BN-ReLU fusion and the 1×1 classifier.
    """
    rows = decoder_structure(model, input_size)
    encoder = model.encoder.stages
    fuse = model.decoder.fuse
    fuse_out = fuse.conv.out_channels if hasattr(fuse, "conv") else next(m.out_channels for m in fuse.modules()
                                                                          if isinstance(m, nn.Conv2d))
    classes = model.decoder.classifier.out_channels
    most = max(r["blocks"] for r in rows)
    enc_w, pitch, block_w = 2.9, 1.55, 1.3
    x0 = enc_w + 0.6                     # first EFT block
    label_x = x0 + pitch * most + 0.8    # "bilinear ×k" on each row's line
    join_x = label_x + 0.85
    concat_x = join_x + 0.9
    fx = concat_x + 1.8 + 0.7            # fusion
    kx = fx + 2.0 + 1.3                  # classifier
    width = kx + 2.1
    # one unit per inch would be too wide: x is squeezed to fit, y keeps its scale
    fig = style.figure(width, 4.8, clamp="width")
    ax = fig.subplots()
    ax.set_xlim(-0.1, width)
    ax.set_ylim(0.0, 5.2)
    ax.set_axis_off()
    h, w = (int(s) for s in input_size)

    # encoder column, stage 4 at the top
    enc_y = {4: 4.0, 3: 2.7, 2: 1.4, 1: 0.1}
    for stage, y in enc_y.items():
        blk = encoder[stage - 1]
        dim = blk.norm.normalized_shape[0]
        stride = 2 ** (stage + 1)
        used = stage > 1
        _box(ax, 0, y, enc_w, 0.9, f"encoder stage {stage}\n{dim} ch, {h // stride}×{w // stride} (1/{stride})"
             + ("" if used else "\n(not used here)"), ENCODER_COLOR if used else UNUSED_COLOR)

    for row in rows:
        y = enc_y[row["level"]]
        _arrow(ax, (enc_w, y + 0.45), (x0, y + 0.45))
        n_keys = max(row["hw"][0] // row["ratio"], 1) * max(row["hw"][1] // row["ratio"], 1)
        for i in range(row["blocks"]):
            bx = x0 + pitch * i
            _box(ax, bx, y + 0.05, block_w, 0.8, f"EFT block\n{row['heads']} heads\nr = {row['ratio']}", BLOCK_COLOR)
            if i:
                _arrow(ax, (bx - (pitch - block_w), y + 0.45), (bx, y + 0.45))
        end = x0 + pitch * (row["blocks"] - 1) + block_w
        up = 2 ** (row["level"] - 2)
        _arrow(ax, (end, y + 0.45), (join_x, y + 0.45), head=False)
        ax.text(label_x, y + 0.45, f"bilinear ×{up}" if up > 1 else "as is (1/8)", ha="center", va="center",
                fontsize=style.SMALL, color="0.2", bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none"))
        _arrow(ax, (join_x, y + 0.45), (concat_x, 2.35 + (row["level"] - 3) * 0.5))
        ax.text(x0 - 0.05, y + 0.95, f"{row['blocks']} block{'s' if row['blocks'] > 1 else ''} on "
                f"{row['hw'][0]}×{row['hw'][1]} tokens; each query sees {n_keys} keys",
                fontsize=style.SMALL, color="0.3", va="bottom")

    c_total = sum(r["channels"] for r in rows)
    _box(ax, concat_x, 1.45, 1.8, 1.8, "concat\n[s4, s3, s2]\n" + f"{c_total} ch\n{h // 8}×{w // 8}", FUSE_COLOR)
    _arrow(ax, (concat_x + 1.8, 2.35), (fx, 2.35))
    _box(ax, fx, 1.85, 2.0, 1.0, f"1×1 conv\nBN, ReLU\n→ {fuse_out} ch", FUSE_COLOR)
    _arrow(ax, (fx + 2.0, 2.35), (kx, 2.35))
    ax.text((fx + 2.0 + kx) / 2, 2.45, "dropout", ha="center", va="bottom", fontsize=style.SMALL, color="0.2")
    _box(ax, kx, 1.85, 2.0, 1.0, f"1×1 conv\n→ {classes} classes\nlogits {h // 8}×{w // 8}", FUSE_COLOR)
    depths = "-".join(str(r["blocks"]) for r in rows)
    ax.set_title(f"EDAFormer's all-attention decoder {{{depths}}}: EFT blocks on encoder stages 4, 3, 2\n"
                 f"(input {h}×{w}; r = key/value reduction per side in force now)", fontsize=style.NORMAL)
    return fig
