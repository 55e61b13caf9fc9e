"""Segmentation metrics per object: MONAI behind one small module, plus an accumulator.

Metrics: Dice, IoU, normalized surface distance (NSD, a.k.a. surface Dice) at a tolerance in mm,
95th-percentile Hausdorff distance (HD95) and average symmetric surface distance (ASSD), all on
whole 3D volumes (never cropped to the reference's extent), with the voxel spacing given in the
array's own axis order (for :class:`Volume` arrays ``[i, j, k]`` that is ``volume.spacing``).

Empty masks (written down here, tested in tests/test_metrics.py):

* both prediction and reference empty: Dice = IoU = NSD = 1; HD95 and ASSD are NaN and
  ``distances_defined`` is False;
* exactly one empty: Dice = IoU = NSD = 0; HD95 and ASSD are NaN and ``distances_defined`` is False;
* otherwise every metric comes from MONAI.

Accumulators skip NaN distances when averaging and count how many cases had them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import InputError

DEFAULT_TOLERANCE_MM = 2.0


@dataclass
class Scores:
    dice: float
    iou: float
    nsd: float
    hd95: float
    assd: float
    pred_empty: bool
    ref_empty: bool
    tolerance_mm: float

    @property
    def distances_defined(self) -> bool:
        return not (self.pred_empty or self.ref_empty)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["distances_defined"] = self.distances_defined
        return out


def _tensor(mask: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def score(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    *,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    use_subvoxels: bool = False,
) -> Scores:
    """All metrics for one object: ``pred`` and ``ref`` are boolean arrays of the same shape."""
    pred = np.asarray(pred).astype(bool)
    ref = np.asarray(ref).astype(bool)
    if pred.shape != ref.shape:
        raise InputError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    spacing = [float(s) for s in spacing]
    if len(spacing) != pred.ndim or any(not s > 0 for s in spacing):
        raise InputError(f"spacing {spacing} must give one positive value per axis of the {pred.ndim}D masks")
    if not tolerance_mm >= 0:
        raise InputError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    pe, re_ = not pred.any(), not ref.any()
    if pe or re_:
        same = float(pe and re_)
        return Scores(same, same, same, math.nan, math.nan, pe, re_, tolerance_mm)
    p, r = _tensor(pred), _tensor(ref)
    with warnings.catch_warnings():
        # MONAI 1.5 warns about its own internal get_mask_edges argument on every call
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        return _monai_scores(p, r, spacing, tolerance_mm, use_subvoxels)


def _monai_scores(p: Any, r: Any, spacing: list[float], tolerance_mm: float, use_subvoxels: bool) -> Scores:
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
        compute_surface_dice,
    )

    dice = float(compute_dice(p, r, include_background=True, ignore_empty=False)[0, 0])
    iou = float(compute_iou(p, r, include_background=True, ignore_empty=False)[0, 0])
    nsd = float(
        compute_surface_dice(p, r, [tolerance_mm], include_background=True, spacing=spacing, use_subvoxels=use_subvoxels)[0, 0]
    )
    hd95 = float(compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=spacing)[0, 0])
    assd = float(compute_average_surface_distance(p, r, include_background=True, symmetric=True, spacing=spacing)[0, 0])
    return Scores(dice, iou, nsd, hd95, assd, False, False, tolerance_mm)


def score_labelmaps(
    pred: Any,
    ref: Any,
    objects: dict[str, tuple[int | Sequence[int], int | Sequence[int]]],
    *,
    tolerances_mm: dict[str, float] | None = None,
    use_subvoxels: bool = False,
) -> dict[str, Scores]:
    """Score several objects between two labelmap Volumes on the same grid.

    ``objects`` maps a name to (prediction label(s), reference label(s)); a tuple of labels is
    their union (e.g. KiTS "kidney and masses").
    """
    ref.check_same_grid(pred, "prediction")
    out = {}
    for name, (p_labels, r_labels) in objects.items():
        pm = np.isin(pred.array, np.atleast_1d(p_labels))
        rm = np.isin(ref.array, np.atleast_1d(r_labels))
        tol = (tolerances_mm or {}).get(name, DEFAULT_TOLERANCE_MM)
        out[name] = score(pm, rm, ref.spacing, tolerance_mm=tol, use_subvoxels=use_subvoxels)
    return out


@dataclass
class MetricAccumulator:
    """Collects per-case, per-object scores; summarises mean, sd and median per object."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    METRICS = ("dice", "iou", "nsd", "hd95", "assd")

    def add(self, case: str, obj: str, scores: Scores, **extra: Any) -> None:
        row = {"case": case, "object": obj, **scores.as_dict(), **extra}
        self.rows.append(row)

    def summary(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for obj in dict.fromkeys(r["object"] for r in self.rows):
            rows = [r for r in self.rows if r["object"] == obj]
            entry: dict[str, Any] = {"cases": len(rows)}
            for m in self.METRICS:
                vals = np.array([r[m] for r in rows], dtype=float)
                finite = vals[~np.isnan(vals)]
                entry[m] = {
                    "mean": float(finite.mean()) if finite.size else math.nan,
                    "sd": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
                    "median": float(np.median(finite)) if finite.size else math.nan,
                    "nan_cases": int(vals.size - finite.size),
                }
            out[obj] = entry
        return out
