"""The one volume type: a voxel array with its exact physical geometry.

Conventions (written once, used everywhere):

* ``array`` is indexed ``[i, j, k]`` (x fastest on disk), as nibabel and 3D Slicer's
  IJK index it. SimpleITK's numpy arrays are ``[k, j, i]``; the readers transpose.
* Geometry is ITK's: ``spacing`` (mm, per i/j/k), ``origin`` (the physical point of
  voxel (0, 0, 0), in **LPS** millimetres) and ``direction`` (3x3, column ``a`` is the
  LPS unit vector of array axis ``a``).
* Physical point of voxel ``ijk``: ``origin + direction @ (spacing * ijk)`` in LPS.
  RAS (3D Slicer, nibabel) is LPS with x and y negated; both are offered by name.
* Orientation codes use the "points to" convention of nibabel's ``aff2axcodes``:
  ``"LPS"`` means i increases towards the patient's Left, j towards Posterior,
  k towards Superior (ITK's identity direction). ``"RAS"`` is nibabel's identity affine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import GeometryMismatchError, InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

#: canonical orientation used inside the engine (ITK's identity direction)
CANONICAL = "LPS"

_AXIS_LETTERS = {0: ("R", "L"), 1: ("A", "P"), 2: ("I", "S")}  # LPS world axis -> (neg, pos)


@dataclass(frozen=True)
class Reorientation:
    """How a volume's array maps onto a permuted and flipped array (no resampling).

    ``perm[w]`` is the original array axis that becomes new axis ``w``; ``flip[w]`` says
    whether that axis is reversed. Exact both ways: see :meth:`Volume.reoriented` and
    :meth:`Volume.undo_reorientation`.
    """

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flip)

    def apply_array(self, array: np.ndarray) -> np.ndarray:
        out = np.transpose(array, self.perm)
        slices = tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)
        return out[slices]

    def invert_array(self, array: np.ndarray) -> np.ndarray:
        slices = tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)
        return np.transpose(array[slices], np.argsort(self.perm))

    def apply_index(self, ijk: np.ndarray, original_shape: tuple[int, ...]) -> np.ndarray:
        """Original voxel index (..., 3) -> index in the reoriented array."""
        ijk = np.asarray(ijk, dtype=float)
        out = ijk[..., list(self.perm)].copy()
        for w in range(3):
            if self.flip[w]:
                out[..., w] = (original_shape[self.perm[w]] - 1) - out[..., w]
        return out

    def invert_index(self, ijk: np.ndarray, original_shape: tuple[int, ...]) -> np.ndarray:
        """Index in the reoriented array (..., 3) -> original voxel index."""
        ijk = np.asarray(ijk, dtype=float).copy()
        for w in range(3):
            if self.flip[w]:
                ijk[..., w] = (original_shape[self.perm[w]] - 1) - ijk[..., w]
        out = np.empty_like(ijk)
        for w in range(3):
            out[..., self.perm[w]] = ijk[..., w]
        return out


@dataclass
class Volume:
    """A 3D scalar volume (image or labelmap) with exact geometry.

    ``meta`` carries optional facts from the reader: ``modality``, ``source`` (the path
    read), ``series_uid``, ``dicom_files`` (sorted, for DICOM-SEG references).
    """

    array: np.ndarray
    spacing: np.ndarray = field(default_factory=lambda: np.ones(3))
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        self.spacing = np.asarray(self.spacing, dtype=np.float64).reshape(3)
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(3)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        name = self.meta.get("source", "volume")
        if self.array.ndim != 3:
            raise InputError(
                f"{name}: expected a 3D volume, got an array of shape {self.array.shape}; "
                "pass one 3D scalar image (split 4D or multi-channel data first)"
            )
        if min(self.array.shape) == 0:
            raise InputError(f"{name}: volume has a zero-size axis (shape {self.array.shape})")
        if not np.all(np.isfinite(self.spacing)) or np.any(self.spacing <= 0):
            raise InputError(f"{name}: voxel spacing must be positive, got {self.spacing.tolist()}")
        if abs(abs(np.linalg.det(self.direction)) - 1.0) > 1e-3:
            raise InputError(
                f"{name}: direction matrix is not orthonormal (det {np.linalg.det(self.direction):.4f})"
            )

    # ------------------------------------------------------------------ basics
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def name(self) -> str:
        return str(self.meta.get("source", "volume"))

    def with_array(self, array: np.ndarray, **meta: Any) -> "Volume":
        """A volume on the same voxel grid holding ``array`` (e.g. a labelmap)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise GeometryMismatchError(
                f"array shape {array.shape} does not match the volume's {self.array.shape}"
            )
        new_meta = {k: v for k, v in self.meta.items() if k in ("source", "series_uid", "dicom_files")}
        new_meta.update(meta)
        return Volume(array, self.spacing.copy(), self.origin.copy(), self.direction.copy(), new_meta)

    # ------------------------------------------------------------- transforms
    @property
    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous voxel index to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction * self.spacing[None, :]
        m[:3, 3] = self.origin
        return m

    @property
    def ijk_to_ras(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous voxel index to RAS millimetres (nibabel affine)."""
        m = self.ijk_to_lps.copy()
        m[:3, :] = LPS_TO_RAS @ m[:3, :]
        return m

    def index_to_lps(self, ijk: Any) -> np.ndarray:
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ (self.direction * self.spacing[None, :]).T + self.origin

    def index_to_ras(self, ijk: Any) -> np.ndarray:
        return self.index_to_lps(ijk) * np.array([-1.0, -1.0, 1.0])

    def lps_to_index(self, lps: Any) -> np.ndarray:
        lps = np.asarray(lps, dtype=np.float64)
        inv = np.linalg.inv(self.direction * self.spacing[None, :])
        return (lps - self.origin) @ inv.T

    def ras_to_index(self, ras: Any) -> np.ndarray:
        return self.lps_to_index(np.asarray(ras, dtype=np.float64) * np.array([-1.0, -1.0, 1.0]))

    # ------------------------------------------------------------- orientation
    @property
    def orientation(self) -> str:
        """Three-letter code, "points to" convention (e.g. ``"LPS"``, ``"RAS"``)."""
        letters = []
        for a in range(3):
            col = self.direction[:, a]
            w = int(np.argmax(np.abs(col)))
            letters.append(_AXIS_LETTERS[w][1 if col[w] > 0 else 0])
        return "".join(letters)

    def reorientation_to(self, code: str = CANONICAL) -> Reorientation:
        """Permutation and flips that bring this volume's array to orientation ``code``."""
        code = code.upper()
        targets = {}
        for w, letter in enumerate(code):
            for world, (neg, pos) in _AXIS_LETTERS.items():
                if letter in (neg, pos):
                    targets[w] = (world, 1.0 if letter == pos else -1.0)
        if len(code) != 3 or len({t[0] for t in targets.values()}) != 3:
            raise InputError(f"orientation code {code!r} is not valid; use e.g. 'LPS' or 'RAS'")
        used: set[int] = set()
        perm, flip = [0, 0, 0], [False, False, False]
        # assign axes greedily by strength of alignment, so oblique volumes are stable
        pairs = sorted(
            ((abs(self.direction[targets[w][0], a]), w, a) for w in range(3) for a in range(3)),
            reverse=True,
        )
        done_w: set[int] = set()
        for _, w, a in pairs:
            if w in done_w or a in used:
                continue
            world, sign = targets[w]
            perm[w] = a
            flip[w] = bool(self.direction[world, a] * sign < 0)
            done_w.add(w)
            used.add(a)
        return Reorientation(tuple(perm), tuple(flip))  # type: ignore[arg-type]

    def reoriented(self, reo: Reorientation) -> "Volume":
        """This volume with its array permuted/flipped; physical placement unchanged."""
        shape = self.shape
        direction = np.empty((3, 3))
        spacing = np.empty(3)
        origin = self.origin.copy()
        for w in range(3):
            a = reo.perm[w]
            sign = -1.0 if reo.flip[w] else 1.0
            direction[:, w] = self.direction[:, a] * sign
            spacing[w] = self.spacing[a]
            if reo.flip[w]:
                origin = origin + self.direction[:, a] * self.spacing[a] * (shape[a] - 1)
        return Volume(reo.apply_array(self.array), spacing, origin, direction, dict(self.meta))

    def undo_reorientation(self, reo: Reorientation, array: np.ndarray) -> np.ndarray:
        """Map an array laid out like ``self.reoriented(reo)`` back to this volume's layout."""
        return np.ascontiguousarray(reo.invert_array(array))

    # --------------------------------------------------------------- checks
    def same_grid(self, other: "Volume", tol: float = 1e-4) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, rtol=0, atol=tol * max(1.0, float(self.spacing.max())))
            and np.allclose(self.origin, other.origin, rtol=0, atol=tol * 10 * max(1.0, float(self.spacing.max())))
            and np.allclose(self.direction, other.direction, rtol=0, atol=tol * 10)
        )

    def on_grid_of(self, reference: "Volume", what: str = "labelmap") -> "Volume":
        """This volume laid out on ``reference``'s voxel grid when both are the same physical lattice,
        whatever the axis order and directions on disk (exact permutation and flips, no resampling).

        Raises :class:`GeometryMismatchError` with both grids' numbers when the lattices differ.
        """
        if reference.same_grid(self):
            return self
        cos = reference.direction.T @ self.direction  # [w, a]: reference axis w against this volume's axis a
        perm = tuple(int(np.argmax(np.abs(cos[w]))) for w in range(3))
        if sorted(perm) == [0, 1, 2]:
            flip = tuple(bool(cos[w, perm[w]] < 0) for w in range(3))
            candidate = self.reoriented(Reorientation(perm, flip))  # type: ignore[arg-type]
            if reference.same_grid(candidate):
                candidate.meta["reoriented_from"] = self.orientation
                return candidate
        reference.check_same_grid(self, what)
        return self

    def check_same_grid(self, other: "Volume", what: str = "labelmap") -> None:
        """Raise :class:`GeometryMismatchError` naming both grids unless they match."""
        if self.same_grid(other):
            return
        raise GeometryMismatchError(
            f"{what} {other.name} does not share the voxel grid of {self.name}: "
            f"shape {other.shape} vs {self.shape}, spacing {np.round(other.spacing, 4).tolist()} vs "
            f"{np.round(self.spacing, 4).tolist()}, origin {np.round(other.origin, 3).tolist()} vs "
            f"{np.round(self.origin, 3).tolist()}, orientation {other.orientation} vs {self.orientation}; "
            "(the same lattice in another axis order is accepted; this one differs): resample the labelmap onto the image first (e.g. in 3D Slicer: Resample Scalar/Vector/DWI Volume)"
        )

    def summary(self) -> dict[str, Any]:
        arr = self.array
        finite = arr if arr.dtype.kind in "iub" else arr[np.isfinite(arr)]
        return {
            "path": self.name,
            "shape": list(self.shape),
            "spacing_mm": [round(float(s), 6) for s in self.spacing],
            "origin_lps_mm": [round(float(s), 6) for s in self.origin],
            "orientation": self.orientation,
            "dtype": str(arr.dtype),
            "intensity_min": float(finite.min()) if finite.size else None,
            "intensity_max": float(finite.max()) if finite.size else None,
            "modality": self.meta.get("modality", "unknown"),
        }
