"""PNG pictures of a result: a slice of the image with the labelmap drawn over it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .io.atomic import atomic_output
from .io.writers import normalize_segments
from .slicing import SliceAxis
from .volume import CANONICAL, Volume
from .windowing import Window


def best_slice(canon_labels: np.ndarray, axis: SliceAxis) -> int:
    """The slice (session numbering) of an LPS-ordered labelmap array with the most labelled voxels."""
    counts = [np.count_nonzero(axis.frame(canon_labels, s)) for s in range(axis.num_slices)]
    return int(np.argmax(counts))


def save_overlay_png(
    image: Volume,
    labelmap: Volume,
    path: str | Path,
    *,
    window: Window,
    axis: str = "axial",
    slice_index: int | None = None,
    title: str = "",
    segments: Sequence[dict[str, Any]] | None = None,
    reference: Volume | None = None,
    prompts: Sequence[dict[str, Any]] | None = None,
) -> Path:
    """Write a PNG of one slice: image in grey, labels filled and outlined (reference dashed), and the
    prompts given on it (``[{"box": [x0, y0, x1, y1]}, {"points": [[x, y]], "labels": [1]}]``, frame pixels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    canon_img = image.reoriented(image.reorientation_to(CANONICAL))
    canon_lab = labelmap.reoriented(labelmap.reorientation_to(CANONICAL))
    ax = SliceAxis(axis, canon_img.shape)
    s = best_slice(canon_lab.array, ax) if slice_index is None else int(slice_index)
    img = window.apply(ax.frame(canon_img.array, s))
    lab = ax.frame(canon_lab.array, s)
    segs = normalize_segments(np.unique(canon_lab.array).tolist(), segments or labelmap.meta.get("segments"))
    # physical aspect: rows and columns may have different spacing
    spacing = canon_img.spacing
    row_sp, col_sp = {"axial": (spacing[1], spacing[0]), "coronal": (spacing[2], spacing[0]), "sagittal": (spacing[2], spacing[1])}[ax.axis]
    fig, axes = plt.subplots(figsize=(6, 6 * img.shape[0] * row_sp / max(1e-6, img.shape[1] * col_sp) + 0.4), dpi=120)
    axes.imshow(img, cmap="gray", vmin=0, vmax=1, aspect=row_sp / col_sp, interpolation="nearest")
    handles = []
    for seg in segs:
        m = lab == seg["label"]
        if not m.any():
            continue
        color = seg["color"]
        axes.imshow(np.ma.masked_where(~m, m), cmap=ListedColormap([color]), alpha=0.35, aspect=row_sp / col_sp, interpolation="nearest")
        axes.contour(m, levels=[0.5], colors=[color], linewidths=1.2)
        handles.append(plt.Line2D([], [], color=color, lw=3, label=seg["name"]))
    if reference is not None:
        canon_ref = reference.reoriented(reference.reorientation_to(CANONICAL))
        ref = ax.frame(canon_ref.array, s)
        if (ref > 0).any():
            axes.contour(ref > 0, levels=[0.5], colors=["white"], linewidths=0.8, linestyles="dashed")
            handles.append(plt.Line2D([], [], color="white", ls="--", label="reference"))
    for p in prompts or []:
        if p.get("box") is not None:
            x0, y0, x1, y1 = p["box"]
            axes.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="yellow", linewidth=1.2))
        for (x, y), positive in zip(p.get("points") or [], p.get("labels") or []):
            axes.plot([x], [y], marker="+" if positive else "x", color="lime" if positive else "red", ms=9, mew=2)
    if prompts:
        handles.append(plt.Line2D([], [], color="yellow", lw=1.2, label="prompt box"))
        if any(p.get("points") for p in prompts):
            handles.append(plt.Line2D([], [], color="lime", marker="+", ls="", label="positive click"))
            handles.append(plt.Line2D([], [], color="red", marker="x", ls="", label="negative click"))
    if handles:
        axes.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.6)
    axes.set_title(title or f"{ax.axis} slice {s}", fontsize=9)
    axes.axis("off")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
