"""The module's GUI-free core: segments <-> session objects, prompts from views, changed-slice updates.

No Slicer import: the Slicer logic hands it arrays and 4x4 matrices and writes back the
:class:`SliceUpdate` slabs it returns, so all of this is tested outside Slicer on real volumes.
One controller per (volume, segmentation); one sam2volume session (SAM2 or the classical baseline)
whose axis is set by the view of the first prompt.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from sam2volume import InputError, Volume
from sam2volume.windowing import Window, choose_window

from .geometry import changed_runs, view_slice, volume_from_slicer, world_to_ijk


@dataclass
class SliceUpdate:
    """Write ``mask`` (bool, array order [k, j, i] as Slicer's arrays) into slices first..last along
    ``voxel_axis`` (0 = i, 1 = j, 2 = k) of segment ``segment_id``; nothing else changes."""

    segment_id: str
    voxel_axis: int
    first: int
    last: int
    mask_kji: np.ndarray


class SegmentationController:
    def __init__(
        self,
        array_kji: np.ndarray,
        ijk_to_ras: np.ndarray,
        *,
        engine: str = "sam2",
        config: Any = None,
        window: str | None = None,
        modality: str = "unknown",
        predictor: Any = None,
        name: str = "volume",
    ):
        # the input volume is never modified: the session windows its own copy of the frames
        self.volume: Volume = volume_from_slicer(np.array(array_kji, copy=True), ijk_to_ras, name=name, modality=modality)
        self.ijk_to_ras = np.asarray(ijk_to_ras, dtype=np.float64).reshape(4, 4)
        if engine not in ("sam2", "baseline"):
            raise InputError(f"unknown engine {engine!r}; use 'sam2' or 'baseline'")
        self.engine, self.config, self.predictor = engine, config, predictor
        self.window: Window = choose_window(self.volume.array, modality, preset=window)
        self.session: Any = None
        self.labels: dict[str, int] = {}  # segment id -> object label
        self._written: dict[str, np.ndarray] = {}  # what each segment holds from us, [i, j, k]
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- session
    def _session_for(self, axis: str) -> Any:
        if self.session is not None and self.session.axis.axis != axis:
            raise InputError(
                f"this volume's prompts are in {self.session.axis.axis} views; prompt in a {self.session.axis.axis} view, "
                "or press Reset to start over in this view"
            )
        if self.session is None:
            if self.engine == "baseline":
                from sam2volume.baseline import BaselineSession

                self.session = BaselineSession(self.volume, axis, window=self.window)
            else:
                from sam2volume.session import Session

                self.session = Session(self.volume, axis, self.config, predictor=self.predictor, window=self.window)
        return self.session

    def _label(self, segment_id: str) -> int:
        if segment_id not in self.labels:
            self.labels[segment_id] = max(self.labels.values(), default=0) + 1
        return self.labels[segment_id]

    # ---------------------------------------------------------------- prompts
    def add_points(self, segment_id: str, points_ras: Any, positive: list[bool], slice_to_ras: np.ndarray,
                   world_to_local: np.ndarray | None = None) -> SliceUpdate:
        """Points clicked in a slice view (world RAS); returns that slice's new 2D mask as an update."""
        with self._lock:
            view = view_slice(slice_to_ras, self.volume, self.ijk_to_ras, world_to_local)
            ijk = world_to_ijk(points_ras, self.ijk_to_ras, world_to_local)
            ijk[:, view.voxel_axis] = view.index  # clicks lie on the shown slice
            session = self._session_for(view.axis)
            label = self._label(segment_id)
            session.add_points(label, ijk, [int(bool(p)) for p in positive], name=segment_id)
            return self._slice_update(segment_id, view.voxel_axis, view.index)

    def add_box(self, segment_id: str, corner_a_ras: Any, corner_b_ras: Any, slice_to_ras: np.ndarray,
                world_to_local: np.ndarray | None = None) -> SliceUpdate:
        """A box drawn in a slice view (two opposite corners, world RAS)."""
        with self._lock:
            view = view_slice(slice_to_ras, self.volume, self.ijk_to_ras, world_to_local)
            ijk = world_to_ijk([corner_a_ras, corner_b_ras], self.ijk_to_ras, world_to_local)
            ijk[:, view.voxel_axis] = view.index
            session = self._session_for(view.axis)
            label = self._label(segment_id)
            session.add_box(label, ijk, name=segment_id)
            return self._slice_update(segment_id, view.voxel_axis, view.index)

    def _slice_update(self, segment_id: str, voxel_axis: int, index: int) -> SliceUpdate:
        label = self.labels[segment_id]
        s = self.session.slice_of(self._any_voxel_on(voxel_axis, index))
        idx, values = self.session.input_region(s, self.session.frame_mask(label, s))
        written = self._written.setdefault(segment_id, np.zeros(self.volume.shape, bool))
        written[idx] = values
        mask = np.expand_dims(values, voxel_axis)
        return SliceUpdate(segment_id, voxel_axis, index, index, np.ascontiguousarray(mask.transpose(2, 1, 0)))

    def _any_voxel_on(self, voxel_axis: int, index: int) -> list[int]:
        v = [0, 0, 0]
        v[voxel_axis] = index
        return v

    # -------------------------------------------------------------- propagate
    def propagate(self, direction: str = "both", *, segment_ids: list[str] | None = None, slice_range: tuple[int, int] | None = None,
                  stop_after: int | None = 3, progress: Callable[[int, int], None] | None = None,
                  cancel: threading.Event | None = None) -> list[SliceUpdate]:
        """Propagate (all segments, or ``segment_ids``); returns updates for the changed slices only.

        ``slice_range`` is in the session's slice numbering (anatomical order along the axis).
        """
        with self._lock:
            if self.session is None or not self.labels:
                raise InputError("place a point or a box on a slice first")
            ids = list(self.labels) if segment_ids is None else segment_ids
            unknown = [s for s in ids if s not in self.labels]
            if unknown:
                raise InputError(f"segment(s) {', '.join(unknown)} have no prompts yet; click on a slice first")
            self.session.propagate(direction, objects=[self.labels[s] for s in ids], slice_range=slice_range,
                                   stop_after=stop_after, progress=progress, cancel=cancel)
            return self.updates(ids)

    def updates(self, segment_ids: list[str]) -> list[SliceUpdate]:
        """Slabs of the slices whose mask differs from what the segment got from us before."""
        result = self.session.result().array
        voxel_axis = self.session.voxel_axis
        out = []
        for sid in segment_ids:
            new = result == self.labels[sid]
            old = self._written.get(sid)
            for first, last in changed_runs(old, new, voxel_axis):
                index: list[Any] = [slice(None)] * 3
                index[voxel_axis] = slice(first, last + 1)
                slab = new[tuple(index)]
                out.append(SliceUpdate(sid, voxel_axis, first, last, np.ascontiguousarray(slab.transpose(2, 1, 0))))
            self._written[sid] = new
        return out

    def remove_segment(self, segment_id: str) -> None:
        with self._lock:
            label = self.labels.pop(segment_id, None)
            self._written.pop(segment_id, None)
            if label is not None and self.session is not None and label in self.session.objects:
                self.session.remove_object(label)

    def reset(self) -> None:
        with self._lock:
            self.session, self.labels, self._written = None, {}, {}
