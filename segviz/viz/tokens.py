"""Drawings of token maps: the stage pyramid, PCA colours, the decoder's steps, border leaks.

Pure functions: feature maps (C, h, w) or (1, C, h, w) in, a ``matplotlib.figure.Figure``
out. Maps are drawn over the photo's extent with nearest interpolation, so one square is
one token and coarse stages look coarse.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from segviz.viz import style
from segviz.viz.arrays import as_image, as_map, as_plane, robust_unit
from segviz.viz.overlays import class_colors
from segviz.viz.tables import draw_table, shape_rows


# --------------------------------------------------------------------------- PCA colours
def _pca_basis(tokens: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Mean (C,) and the top-k principal directions (C, k) of (N, C) tokens, sign-fixed."""
    mean = tokens.mean(0)
    _, _, vt = np.linalg.svd(tokens - mean, full_matrices=False)
    basis = vt[:k].T
    # a principal direction's sign is arbitrary: make its largest loading positive
    signs = np.sign(basis[np.abs(basis).argmax(0), np.arange(basis.shape[1])])
    basis = basis * np.where(signs == 0, 1.0, signs)
    if basis.shape[1] < k:
        basis = np.pad(basis, ((0, 0), (0, k - basis.shape[1])))
    return mean, basis


def pca_rgb(features, *, joint: bool = False):
    """Each token's 3 main principal components as R, G, B in [0, 1].

    Args:
        features: one (C, h, w) map, or a sequence of maps.
        joint: for a sequence with one channel count, fit one PCA on all maps' tokens
            together (colours comparable across maps); default one PCA per map.

    Returns:
        (h, w, 3) for one map, else a list of them. Each component is scaled robustly:
        its 1st..99th percentile maps to 0..1.
    """
    single = not isinstance(features, (list, tuple))
    maps = [as_map(f) for f in ([features] if single else features)]
    if not maps:
        raise ValueError("pca_rgb needs at least one feature map")
    if joint:
        if len({m.shape[0] for m in maps}) != 1:
            raise ValueError(f"joint PCA needs one channel count, got {[m.shape[0] for m in maps]}")
        tokens = np.concatenate([m.reshape(m.shape[0], -1).T for m in maps])
        mean, basis = _pca_basis(tokens)
        projected = [(m.reshape(m.shape[0], -1).T - mean) @ basis for m in maps]
        everything = np.concatenate(projected)
        lo, hi = np.percentile(everything, 1, axis=0), np.percentile(everything, 99, axis=0)
        out = [np.clip((p - lo) / np.maximum(hi - lo, 1e-8), 0, 1).reshape(m.shape[1], m.shape[2], 3)
               for p, m in zip(projected, maps)]
    else:
        out = []
        for m in maps:
            tokens = m.reshape(m.shape[0], -1).T
            mean, basis = _pca_basis(tokens)
            out.append(robust_unit((tokens - mean) @ basis, axis=0).reshape(m.shape[1], m.shape[2], 3))
    return out[0] if single else out


def _on_photo(ax, values, hw, **kw):
    """Draw a (h, w) or (h, w, 3) map stretched over an image of size hw, one square per token."""
    h, w = hw
    return ax.imshow(values, interpolation="nearest", extent=(-0.5, w - 0.5, h - 0.5, -0.5), **kw)


def _clean(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def _check_stages(features) -> dict[str, np.ndarray]:
    if not isinstance(features, Mapping) or not features:
        raise ValueError("features must be a non-empty mapping: stage label -> (C, h, w) map")
    return {label: as_map(f) for label, f in features.items()}


# --------------------------------------------------------------------------- pyramid and PCA
@style.styled
def token_pyramid(features: Mapping[str, object], image) -> Figure:
    """The encoder's token pyramid: each stage's map drawn at its own size, plus a shape table.

    Right of the photo, the stage maps stand side by side at a common scale of one unit
    per token, so stage 2 is drawn half as wide as stage 1. Each square is one token,
    coloured by its first principal component within its stage (robustly scaled).

    Args:
        features: stage label -> (C, h, w) map, finest first (e.g. ``rec.features``).
        image: the photo the model saw.
    """
    maps = _check_stages(features)
    img = as_image(image)
    h, w = img.shape[:2]
    gap = max(max(m.shape[2] for m in maps.values()) // 5, 2)
    total_w = sum(m.shape[2] for m in maps.values()) + gap * (len(maps) - 1)
    top = max(m.shape[1] for m in maps.values())
    fig = style.figure(12, 5.8)
    grid = fig.add_gridspec(2, 2, height_ratios=[3.2, 1.3], width_ratios=[1, total_w / top])
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(img)
    ax.set_title(f"input {h}×{w}×3")
    _clean(ax)
    ax = fig.add_subplot(grid[0, 1])
    x0 = 0
    for label, m in maps.items():
        mh, mw = m.shape[1:]
        tokens = m.reshape(m.shape[0], -1).T
        mean, basis = _pca_basis(tokens, k=1)
        ax.imshow(robust_unit((tokens - mean) @ basis).reshape(mh, mw), cmap="viridis", interpolation="nearest",
                  extent=(x0, x0 + mw, 0, mh))
        ax.text(x0 + mw / 2, mh + top * 0.03, f"{label}\n{mh}×{mw}×{m.shape[0]}", ha="center", va="bottom",
                fontsize=9)
        ax.text(x0 + mw / 2, -top * 0.03, f"1/{round(w / mw)}", ha="center", va="top", fontsize=9)
        x0 += mw + gap
    ax.set_xlim(-gap / 2, total_w + gap / 2)
    ax.set_ylim(-top * 0.12, top * 1.2)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax = fig.add_subplot(grid[1, :])
    draw_table(ax, shape_rows(maps, (h, w)))
    fig.suptitle("token pyramid, one square per token (colour: the stage's first principal component)")
    return fig


@style.styled
def stage_pca(features: Mapping[str, object], image) -> Figure:
    """Each stage's tokens as colours: a PCA per stage to 3 components shown as RGB.

    Tokens that the stage represents alike get alike colours; all maps are stretched over
    the photo's extent so regions line up. Up to three stages stand in one row next to the
    photo; more fill two rows beside a larger photo.
    """
    maps = _check_stages(features)
    img = as_image(image)
    n = len(maps)
    if n <= 3:
        fig = style.figure(2.6 * (n + 1), 3.2)
        grid = fig.add_gridspec(1, n + 1)
        axes = [fig.add_subplot(grid[0, 0])] + [fig.add_subplot(grid[0, i + 1]) for i in range(n)]
    else:
        cols = -(-n // 2)
        fig = style.figure(2.6 * (cols + 2), 5.6)
        grid = fig.add_gridspec(2, cols + 1, width_ratios=[2] + [1] * cols)
        axes = [fig.add_subplot(grid[:, 0])] + [fig.add_subplot(grid[i // cols, 1 + i % cols]) for i in range(n)]
    axes[0].imshow(img)
    axes[0].set_title("input")
    _clean(axes[0])
    for ax, (label, m), rgb in zip(axes[1:], maps.items(), pca_rgb(list(maps.values()))):
        _on_photo(ax, rgb, img.shape[:2])
        ax.set_title(f"{label}: {m.shape[1]}×{m.shape[2]} tokens\nC = {m.shape[0]} → 3 (PCA)", fontsize=style.SMALL)
        _clean(ax)
    fig.suptitle("PCA of each stage's embeddings as RGB\n(one PCA per stage; same colour = similar token)")
    return fig


# --------------------------------------------------------------------------- decoder
@style.styled
def decoder_steps(projected: Sequence, upsampled: Sequence, fused, logits,
                  class_names: Sequence[str] | None = None) -> Figure:
    """The All-MLP decoder's four steps as maps.

    Row 1 (step 1): each stage's map after its own Linear to C channels, at its own size.
    Row 2 (step 2): the same maps bilinearly upsampled to 1/4. Rows 1-2 share one PCA
    (the four maps now live in the same C-dim space, so equal colours mean equal features).
    Row 3: step 3, the fused map (concat 4C -> 1x1 conv -> C), as PCA colours; step 4, the
    1x1 classifier's logits as the winning class, and the two largest classes' logits.

    Args:
        projected: per-stage (C, h_i, w_i) maps after step 1.
        upsampled: per-stage (C, H/4, W/4) maps after step 2.
        fused: (C, H/4, W/4) after step 3.
        logits: (K, H/4, W/4) after step 4.
        class_names: names by class index.
    """
    if len(projected) != len(upsampled) or not projected:
        raise ValueError(f"need one projected and one upsampled map per stage, got {len(projected)} and {len(upsampled)}")
    proj = [as_map(p) for p in projected]
    ups = [as_map(u) for u in upsampled]
    fused_map, logit_map = as_map(fused), as_map(logits)
    k = logit_map.shape[0]
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{k} logit channels but {len(names)} class names")
    cols = max(len(proj), 4)
    fig = style.figure(2.7 * cols, 8.6)
    axes = fig.subplots(3, cols, squeeze=False)
    colours = pca_rgb(proj + ups, joint=True)
    hw = ups[0].shape[1:]
    for i, (p, rgb) in enumerate(zip(proj, colours[: len(proj)])):
        _on_photo(axes[0, i], rgb, hw)
        axes[0, i].set_title(f"step 1: stage {i + 1} → C\n{p.shape[1]}×{p.shape[2]}×{p.shape[0]}", fontsize=10)
    for i, (u, rgb) in enumerate(zip(ups, colours[len(proj):])):
        _on_photo(axes[1, i], rgb, hw)
        axes[1, i].set_title(f"step 2: upsampled to 1/4\n{u.shape[1]}×{u.shape[2]}×{u.shape[0]}", fontsize=10)
    _on_photo(axes[2, 0], pca_rgb(fused_map), hw)
    axes[2, 0].set_title(f"step 3: concat {len(proj)}C → fuse → C\n"
                         f"{fused_map.shape[1]}×{fused_map.shape[2]}×{fused_map.shape[0]}", fontsize=10)
    winner = logit_map.argmax(0)
    colors = class_colors(k)
    _on_photo(axes[2, 1], colors[winner], hw)
    axes[2, 1].set_title(f"step 4: 1×1 classifier → {k} logits\nargmax per token", fontsize=10)
    axes[2, 1].legend(handles=[Patch(facecolor=colors[c], label=names[c]) for c in np.unique(winner)],
                      loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2, fontsize=style.SMALL, frameon=False)
    area = np.bincount(winner.ravel(), minlength=k)
    top = [int(c) for c in np.argsort(-area, kind="stable") if names[c].lower() != "background"][: cols - 2]
    for j, c in enumerate(top):
        ax = axes[2, 2 + j]
        im = _on_photo(ax, logit_map[c], hw, cmap="RdBu_r",
                       norm=_centred(logit_map[c]))
        ax.set_title(f"step 4: logit of '{names[c]}'", fontsize=10, color=colors[c])
        fig.colorbar(im, ax=ax, shrink=0.8)
    for ax in axes.ravel():
        _clean(ax)
        if not ax.images:
            ax.set_axis_off()
    fig.suptitle("All-MLP decoder, step by step\n(rows 1-2: one shared PCA → RGB, equal colour = equal feature)")
    return fig


def _centred(values):
    from matplotlib.colors import TwoSlopeNorm

    lo, hi = float(values.min()), float(values.max())
    return TwoSlopeNorm(0.0, min(lo, -1e-6), max(hi, 1e-6))


# --------------------------------------------------------------------------- position leak
def deviation_from_centre(features) -> np.ndarray:
    """‖f(y, x) − f(centre)‖ per token of a (C, h, w) map: zero wherever a token equals the centre one.

    Fed a constant input, a block that could not tell where a token is would give the
    same output everywhere; any non-zero here is position information.
    """
    m = as_map(features)
    centre = m[:, m.shape[1] // 2, m.shape[2] // 2][:, None, None]
    return np.linalg.norm(m - centre, axis=0)


@style.styled
def padding_leak(maps: Mapping[str, object], *, ring: int = 1) -> Figure:
    """Deviation maps (e.g. from :func:`deviation_from_centre`) with the border ring outlined.

    Each panel: one (h, w) map, one square per token, its own colorbar; the dashed box
    encloses the interior beyond ``ring`` tokens from the border; the title compares the
    mean deviation on the ring with the interior's.
    """
    if not isinstance(maps, Mapping) or not maps:
        raise ValueError("maps must be a non-empty mapping: panel title -> (h, w) map")
    planes = {label: as_plane(m) for label, m in maps.items()}
    cols = len(planes) if len(planes) <= 3 else -(-len(planes) // 2)
    rows = -(-len(planes) // cols)
    fig = style.figure(3.4 * cols, 3.4 * rows + 0.5)
    grid = fig.add_gridspec(rows, cols)
    axes = [fig.add_subplot(grid[i // cols, i % cols]) for i in range(len(planes))]
    for ax, (label, plane) in zip(axes, planes.items()):
        h, w = plane.shape
        border = np.ones_like(plane, dtype=bool)
        border[ring : h - ring, ring : w - ring] = False
        inner = plane[~border]
        im = ax.imshow(plane, cmap="viridis", interpolation="nearest", vmin=0.0)
        ax.add_patch(Rectangle((ring - 0.5, ring - 0.5), w - 2 * ring, h - 2 * ring, fill=False,
                               edgecolor="white", ls="--", lw=1.2))
        ax.set_title(f"{label}\nborder ring mean {plane[border].mean():.3g} · "
                     f"interior {inner.mean() if inner.size else float('nan'):.3g}", fontsize=style.SMALL)
        ax.set_xlabel(f"{w} tokens")
        ax.set_ylabel(f"{h} tokens")
        _clean(ax)
        fig.colorbar(im, ax=ax, shrink=0.8, label="‖f(token) − f(centre)‖")
    fig.suptitle("constant input: any colour is position information (dashed box: interior)")
    return fig

