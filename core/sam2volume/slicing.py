"""Slices along an anatomical axis as 2D frames, and the exact maps between frames and voxels.

Works on a volume already reoriented to LPS (i -> Left, j -> Posterior, k -> Superior). Frames
are shown as radiologists view them: axial with anterior up and patient right on the image's
left; coronal and sagittal with superior up. Slice numbers run along +k (axial, inferior to
superior), +j (coronal, anterior to posterior) and +i (sagittal, right to left).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

AXES = ("axial", "coronal", "sagittal")
_ALIASES = {"ax": "axial", "z": "axial", "transverse": "axial", "cor": "coronal", "y": "coronal", "sag": "sagittal", "x": "sagittal"}


def parse_axis(axis: str) -> str:
    key = str(axis).lower()
    key = _ALIASES.get(key, key)
    if key not in AXES:
        raise InputError(f"unknown slice axis {axis!r}; use axial, coronal or sagittal")
    return key


@dataclass(frozen=True)
class SliceAxis:
    """Frame geometry for one axis of an LPS-ordered array of ``shape`` (I, J, K)."""

    axis: str
    shape: tuple[int, int, int]

    @property
    def normal(self) -> int:
        return {"axial": 2, "coronal": 1, "sagittal": 0}[self.axis]

    @property
    def num_slices(self) -> int:
        return self.shape[self.normal]

    @property
    def frame_shape(self) -> tuple[int, int]:
        i, j, k = self.shape
        return {"axial": (j, i), "coronal": (k, i), "sagittal": (k, j)}[self.axis]

    def frame(self, array: np.ndarray, s: int) -> np.ndarray:
        """2D view (rows, cols) of slice ``s`` of an LPS-ordered array."""
        if self.axis == "axial":
            return array[:, :, s].T
        if self.axis == "coronal":
            return array[:, s, ::-1].T
        return array[s, :, ::-1].T

    def set_frame(self, array: np.ndarray, s: int, values: np.ndarray) -> None:
        """Write a 2D frame back into slice ``s`` of an LPS-ordered array."""
        self.frame(array, s)[...] = values

    def to_frame(self, ijk: np.ndarray) -> np.ndarray:
        """LPS-array voxel coordinates (..., 3) -> (slice, row, col)."""
        ijk = np.asarray(ijk, dtype=float)
        i, j, k = ijk[..., 0], ijk[..., 1], ijk[..., 2]
        kk = (self.shape[2] - 1) - k
        if self.axis == "axial":
            return np.stack([k, j, i], axis=-1)
        if self.axis == "coronal":
            return np.stack([j, kk, i], axis=-1)
        return np.stack([i, kk, j], axis=-1)

    def from_frame(self, src: np.ndarray) -> np.ndarray:
        """(slice, row, col) (..., 3) -> LPS-array voxel coordinates."""
        src = np.asarray(src, dtype=float)
        s, r, c = src[..., 0], src[..., 1], src[..., 2]
        k_from_row = (self.shape[2] - 1) - r
        if self.axis == "axial":
            return np.stack([c, r, s], axis=-1)
        if self.axis == "coronal":
            return np.stack([c, s, k_from_row], axis=-1)
        return np.stack([s, c, k_from_row], axis=-1)
