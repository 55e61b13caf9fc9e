"""Intensity windowing for model input. Never changes the loaded volume: returns new arrays.

CT presets are (width, level) in HU. MRI and other modalities use the 0.5-99.5 percentile
range of non-zero voxels. An explicit width/level overrides both.
"""

from __future__ import annotations

import math
import warnings

from dataclasses import dataclass

import numpy as np

from .errors import InputError

CT_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
    "mediastinum": (350.0, 50.0),
    "liver": (150.0, 30.0),
}


@dataclass(frozen=True)
class Window:
    """A linear intensity window: ``low`` maps to 0 and ``high`` to 1, clipped."""

    low: float
    high: float

    @classmethod
    def from_width_level(cls, width: float, level: float) -> "Window":
        if not width > 0:
            raise InputError(f"window width must be positive, got {width}")
        return cls(level - width / 2.0, level + width / 2.0)

    @classmethod
    def checked(cls, low: float, high: float) -> "Window":
        """A window from its bounds, refused unless both are finite and ``low < high``."""
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise InputError(f"window low {low} and high {high} must be finite numbers with low < high")
        return cls(float(low), float(high))

    def apply(self, array: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Window ``array`` into float32 [0, 1] (a new array, or ``out``)."""
        scale = 1.0 / max(self.high - self.low, 1e-12)
        res = np.subtract(array, self.low, dtype=np.float32, out=out)
        res *= np.float32(scale)
        np.clip(res, 0.0, 1.0, out=res)
        return res


def percentile_window(array: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> Window:
    """The MRI/other rule: 0.5 to 99.5 percentile of the non-zero voxels."""
    values = array[array != 0]
    if values.size > 2_000_000:  # a strided sample is exact enough and keeps this fast
        values = values[:: values.size // 2_000_000 + 1]
    if values.size == 0:
        return Window(0.0, 1.0)
    lo, hi = np.percentile(values.astype(np.float64), [lower, upper])
    if hi <= lo:
        hi = lo + 1.0
    return Window(float(lo), float(hi))


def choose_window(
    array: np.ndarray,
    modality: str = "unknown",
    preset: str | None = None,
    width: float | None = None,
    level: float | None = None,
) -> Window:
    """Pick the window: explicit width/level, else a CT preset, else the percentile rule.

    ``preset`` may be a CT preset name, ``"auto"``/None (abdomen for CT, percentile otherwise)
    or ``"percentile"``.
    """
    if (width is None) != (level is None):
        raise InputError("give both window width and level, or neither")
    if width is not None and level is not None:
        return Window.from_width_level(width, level)
    key = (preset or "auto").lower()
    if key == "auto":
        key = "abdomen" if modality.upper() == "CT" else "percentile"
    if key == "percentile":
        return percentile_window(array)
    if key not in CT_PRESETS:
        raise InputError(f"unknown window preset {preset!r}; choose one of {', '.join([*CT_PRESETS, 'percentile', 'auto'])}")
    window = Window.from_width_level(*CT_PRESETS[key])
    looks_ct = array.size and float(array.min()) <= -500  # air in HU
    if modality.upper() != "CT" and array.size and not (modality.lower() == "unknown" and looks_ct):
        inside = float(np.mean((array >= window.low) & (array <= window.high)))
        warnings.warn(
            f"window preset {key!r} is for CT (Hounsfield units) but this image is {'not CT' if modality.lower() == 'unknown' else modality} "
            f"(values {float(array.min()):g}..{float(array.max()):g}; {100 * inside:.0f} % of voxels fall inside "
            f"{window.low:g}..{window.high:g} HU); used it as asked. For MR use 'percentile' (or 'auto')",
            UserWarning,
            stacklevel=2,
        )
    return window
