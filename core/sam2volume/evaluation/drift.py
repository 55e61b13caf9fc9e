"""How propagation degrades away from the prompt: Dice per slice against the distance (in slices and mm)
from the nearest prompted slice, and the slice-to-slice consistency of predictions against the reference's.

A volume Dice hides drift; these tables show it. Empty-slice rule: a slice is listed when the reference or
the prediction holds the object there; Dice is 0 where only one of them does.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

DRIFT_COLUMNS = ("case", "engine", "object", "slice", "distance_slices", "distance_mm", "dice", "ref_pixels", "pred_pixels",
                 "consistency_pred", "consistency_ref")
SUMMARY_COLUMNS = ("engine", "object", "distance_slices", "distance_mm", "slices", "dice_mean", "dice_sd",
                   "consistency_pred_mean", "consistency_ref_mean")


def _dice2d(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def slice_rows(case: str, engine: str, organ: str, pred: np.ndarray, ref: np.ndarray, prompted: list[int],
               slice_mm: float) -> list[dict[str, Any]]:
    """One row per slice where the reference or the prediction holds the object (frames (slice, row, col))."""
    if not prompted:
        return []
    prompted_arr = np.asarray(sorted(set(prompted)))
    pred_area = pred.reshape(len(pred), -1).sum(axis=1)
    ref_area = ref.reshape(len(ref), -1).sum(axis=1)
    rows = []
    for s in np.flatnonzero((pred_area > 0) | (ref_area > 0)).tolist():
        d = int(np.min(np.abs(prompted_arr - s)))
        nxt = s + 1 < len(pred)
        rows.append({
            "case": case, "engine": engine, "object": organ, "slice": s, "distance_slices": d,
            "distance_mm": round(d * slice_mm, 4), "dice": _dice2d(pred[s], ref[s]),
            "ref_pixels": int(ref_area[s]), "pred_pixels": int(pred_area[s]),
            # Dice between this slice and the next: how smoothly the prediction (and the reference) changes
            "consistency_pred": _dice2d(pred[s], pred[s + 1]) if nxt else float("nan"),
            "consistency_ref": _dice2d(ref[s], ref[s + 1]) if nxt else float("nan"),
        })
    return rows


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else float("nan")


def summarise_drift(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per engine, object and distance (slices) over all cases: mean Dice and consistency."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["engine"], r["object"], int(r["distance_slices"]))].append(r)
    out = []
    for (engine, organ, d), items in sorted(groups.items()):
        dice = [r["dice"] for r in items if r["dice"] is not None and not math.isnan(r["dice"])]
        out.append({"engine": engine, "object": organ, "distance_slices": d,
                    "distance_mm": round(_mean([r["distance_mm"] for r in items]), 4), "slices": len(items),
                    "dice_mean": float(np.mean(dice)) if dice else float("nan"),
                    "dice_sd": float(np.std(dice, ddof=1)) if len(dice) > 1 else float("nan"),
                    "consistency_pred_mean": _mean([r["consistency_pred"] for r in items]),
                    "consistency_ref_mean": _mean([r["consistency_ref"] for r in items])})
    return out


def drift_plot(summary: list[dict[str, Any]], path: Path) -> Path | None:
    """Mean slice Dice against the distance from the nearest prompted slice, one colour per organ,
    one line style per engine; legend outside the axes."""
    if not summary:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io.atomic import atomic_output

    organs = list(dict.fromkeys(r["object"] for r in summary))
    engines = list(dict.fromkeys(r["engine"] for r in summary))
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for o, organ in enumerate(organs):
        color = plt.cm.tab20(o % 20)
        for e, engine in enumerate(engines):
            pts = [(r["distance_slices"], r["dice_mean"], r["slices"]) for r in summary if r["object"] == organ and r["engine"] == engine]
            if pts:
                xs, ys, _ = zip(*pts)
                ax.plot(xs, ys, styles[e % len(styles)], color=color, marker="o", ms=3, label=f"{organ} ({engine})")
    ax.set_xlabel("distance from the nearest prompted slice (slices)")
    ax.set_ylabel("mean Dice on the slice")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title("Drift: slice Dice away from the prompt (all cases)", fontsize=9)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return path
