"""Slicer geometry <-> sam2volume, in plain numpy (no Slicer import, so it is tested outside Slicer).

Slicer gives a volume as ``arrayFromVolume`` (indexed [k, j, i]) plus its IJK-to-RAS matrix in the
volume's own (parent-transform-local) RAS; points and slice views come in world RAS. A parent
transform is passed as the 4x4 world-to-local matrix (``GetMatrixTransformBetweenNodes(None,
parent)``); only linear transforms are supported (a warped volume cannot be sliced exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sam2volume import InputError, Volume
from sam2volume.volume import CANONICAL

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
AXIS_OF_CANONICAL_NORMAL = {2: "axial", 1: "coronal", 0: "sagittal"}
MAX_OBLIQUE_DEGREES = 2.0  # a view further than this from every voxel plane is refused
PARALLEL_TOLERANCE = float(np.cos(np.radians(MAX_OBLIQUE_DEGREES)))  # |cos| between the view normal and a voxel axis


def volume_from_slicer(array_kji: np.ndarray, ijk_to_ras: np.ndarray, *, name: str = "volume", modality: str = "unknown") -> Volume:
    """A sam2volume Volume (array [i, j, k], LPS geometry) from Slicer's array and IJK-to-RAS matrix."""
    m = LPS_FROM_RAS @ np.asarray(ijk_to_ras, dtype=np.float64).reshape(4, 4)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    direction = m[:3, :3] / spacing
    return Volume(np.ascontiguousarray(np.asarray(array_kji).transpose(2, 1, 0)), spacing, m[:3, 3], direction,
                  {"source": name, "modality": modality})


def world_to_ijk(points_ras: np.ndarray, ijk_to_ras: np.ndarray, world_to_local: np.ndarray | None = None) -> np.ndarray:
    """World RAS points (N, 3) -> continuous voxel indices (i, j, k), through the parent transform."""
    pts = np.atleast_2d(np.asarray(points_ras, dtype=np.float64))
    h = np.c_[pts, np.ones(len(pts))]
    if world_to_local is not None:
        h = h @ np.asarray(world_to_local, dtype=np.float64).reshape(4, 4).T
    return (h @ np.linalg.inv(np.asarray(ijk_to_ras, dtype=np.float64).reshape(4, 4)).T)[:, :3]


@dataclass(frozen=True)
class ViewSlice:
    axis: str  # the session's axis: axial / coronal / sagittal
    voxel_axis: int  # 0, 1 or 2: i, j or k of the volume
    index: int  # slice index along voxel_axis (array [i, j, k] numbering)


def view_slice(slice_to_ras: np.ndarray, volume: Volume, ijk_to_ras: np.ndarray, world_to_local: np.ndarray | None = None) -> ViewSlice:
    """Which session axis and which voxel slice a slice view (its SliceToRAS matrix) shows.

    The view must be parallel to a voxel plane of the volume (within ``MAX_OBLIQUE_DEGREES``); a
    reformatted oblique view gets an error saying how to fix it.
    """
    s2r = np.asarray(slice_to_ras, dtype=np.float64).reshape(4, 4)
    normal_world = s2r[:3, 2] / np.linalg.norm(s2r[:3, 2])
    centre = world_to_ijk(s2r[:3, 3], ijk_to_ras, world_to_local)[0]
    local = np.eye(4) if world_to_local is None else np.asarray(world_to_local, dtype=np.float64).reshape(4, 4)
    # a plane normal maps with the inverse transpose; the voxel axes of the volume in world space:
    ijk_to_world = np.linalg.inv(local) @ np.asarray(ijk_to_ras, dtype=np.float64).reshape(4, 4)
    axes_world = ijk_to_world[:3, :3] / np.linalg.norm(ijk_to_world[:3, :3], axis=0)
    cos = np.abs(axes_world.T @ normal_world)
    a = int(np.argmax(cos))
    if cos[a] < PARALLEL_TOLERANCE:
        raise InputError(
            f"this view is {np.degrees(np.arccos(min(1.0, cos[a]))):.1f} degrees oblique to the volume's slices "
            f"(at most {MAX_OBLIQUE_DEGREES:g} allowed); "
            "reset the view to axial, coronal or sagittal (slice view menu: 'Reset field of view' / orientation), or resample the volume"
        )
    perm = volume.reorientation_to(CANONICAL).perm
    w = perm.index(a)
    index = int(round(float(centre[a])))
    if not 0 <= index < volume.shape[a]:
        raise InputError(f"the view shows slice {index}, outside the volume (0..{volume.shape[a] - 1} along that axis)")
    return ViewSlice(AXIS_OF_CANONICAL_NORMAL[w], a, index)


def check_on_slice(ijk: np.ndarray, view: ViewSlice) -> None:
    """Refuse points more than half a slice spacing from the shown slice (a 3D-view click, or a point
    dragged off its plane): they would otherwise be snapped onto some slice."""
    off = np.abs(np.asarray(ijk, dtype=np.float64)[:, view.voxel_axis] - view.index)
    if np.any(off > 0.5 + 1e-6):
        raise InputError(
            f"a prompt lies {float(off.max()):.1f} slice spacings from the {view.axis} slice {view.index} shown in the view; "
            "place prompts in a slice view (red, yellow or green), on the slice it shows"
        )


def box_in_frame(corners_ijk: np.ndarray, view: ViewSlice) -> np.ndarray:
    """A box's corners (continuous voxel indices, (N, 3), N >= 2) -> its two opposite corners on the
    shown slice: the bounding box of every corner in the slice's voxel plane (the session's frame is
    that plane with its axes permuted or flipped, so the box is the same there)."""
    ijk = np.asarray(corners_ijk, dtype=np.float64).reshape(-1, 3)
    if len(ijk) < 2:
        raise InputError(f"a box needs at least two corners, got {len(ijk)}")
    check_on_slice(ijk.mean(axis=0, keepdims=True), view)
    box = np.stack([ijk.min(axis=0), ijk.max(axis=0)])
    box[:, view.voxel_axis] = view.index
    return box


def changed_runs(old: np.ndarray | None, new: np.ndarray, voxel_axis: int) -> list[tuple[int, int]]:
    """Runs (first, last) of slices along ``voxel_axis`` (array [i, j, k]) where ``new`` differs from ``old``."""
    if old is None:
        old = np.zeros_like(new)
    other = tuple(a for a in range(3) if a != voxel_axis)
    return runs_of(np.any(old != new, axis=other))


def runs_of(flags) -> list[tuple[int, int]]:
    """Runs (first, last) of consecutive True entries of a 1D sequence."""
    runs: list[tuple[int, int]] = []
    start = None
    for s, d in enumerate([bool(f) for f in flags] + [False]):
        if d and start is None:
            start = s
        elif not d and start is not None:
            runs.append((start, s - 1))
            start = None
    return runs
