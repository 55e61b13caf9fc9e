"""What every segmentation session shares, whatever its engine (SAM2 or the classical baseline).

The volume is reoriented to LPS (exactly, no resampling) and cut into frames along one anatomical
axis; prompts in voxel, LPS or RAS coordinates are checked and mapped to frames; results are per
object, per slice logits (positive inside) that become one labelmap with the input's geometry.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .errors import InputError
from .slicing import SliceAxis, parse_axis
from .strokes import check_count, polygon_area, rasterise_polygon, sample_scribble
from .volume import CANONICAL, Volume
from .windowing import Window, choose_window

ProgressFn = Callable[[int, int], None]
SliceFn = Callable[[int, list[int]], None]  #: on_slice(slice, labels computed there)
DIRECTIONS = ("both", "forward", "backward")


@dataclass
class SessionObject:
    label: int
    name: str
    color: list[float] | None = None


@dataclass
class MaskCandidates:
    """SAM2's masks for one ambiguous click (a single point on a slice): its mask decoder makes three
    and keeps the one it predicts best (the highest score); :meth:`SessionBase.choose_mask` takes another."""

    masks: np.ndarray  #: (K, rows, cols) bool, frame layout
    scores: np.ndarray  #: (K,) SAM2's predicted IoU of each mask
    chosen: int  #: the candidate the slice holds now (SAM2's pick until choose_mask)


@dataclass
class PropagationReport:
    """What a propagation did: slices visited and where each object was found to end."""

    slices_run: int = 0
    stopped: dict[int, dict[str, int]] = field(default_factory=dict)  # label -> {direction: slice}
    cancelled: bool = False


class SessionBase:
    """Geometry, objects, prompt checks and results shared by the engines' sessions."""

    def __init__(
        self,
        volume: Volume,
        axis: str = "axial",
        *,
        window: Window | str | None = None,
        window_width: float | None = None,
        window_level: float | None = None,
        progress: bool = False,
    ):
        if not isinstance(volume, Volume):
            raise InputError(f"a session needs a sam2volume.Volume, got {type(volume).__name__}; read it with read_volume()")
        self.volume = volume
        self._reo = volume.reorientation_to(CANONICAL)
        self._canon = volume.reoriented(self._reo)
        self.axis = SliceAxis(parse_axis(axis), self._canon.shape)
        if isinstance(window, Window):
            self.window = window
        else:
            self.window = choose_window(
                volume.array, volume.meta.get("modality", "unknown"), preset=window, width=window_width, level=window_level
            )
        self.progress = progress
        self.objects: dict[int, SessionObject] = {}
        self._logits: dict[int, dict[int, Any]] = defaultdict(dict)  # label -> slice -> logits
        self._scores: dict[int, dict[int, float]] = defaultdict(dict)
        self._lock = threading.RLock()

    def _progress_or_bar(self, progress: Callable[[int, int], None] | None) -> tuple[Callable[[int, int], None] | None, Callable[[], None]]:
        """``progress`` as given, else (a session made with ``progress=True``) a callback that draws a
        bar (tqdm on a terminal, plain lines elsewhere), made once the total is known; and a closer."""
        if progress is not None or not self.progress:
            return progress, lambda: None
        from .progress import progress_bar

        bars: list[Any] = []

        def show(done: int, total: int) -> None:
            if not bars:
                bars.append(progress_bar(total, desc="propagate", unit="slice"))
            bars[0].update(done - bars[0].n)

        return show, lambda: bars[0].close() if bars else None

    @property
    def num_slices(self) -> int:
        return self.axis.num_slices

    # --------------------------------------------------------------- objects
    def add_object(self, label: int, name: str | None = None, color: Sequence[float] | None = None) -> SessionObject:
        """Declare an object (label value in the output labelmap); prompts add it implicitly."""
        if not isinstance(label, (int, np.integer)) or isinstance(label, bool) or not 0 < int(label) < 65536:
            raise InputError(f"object label {label!r} must be an integer from 1 to 65535 (0 is background)")
        label = int(label)
        obj = self.objects.get(label)
        if obj is None:
            obj = SessionObject(label, name or f"object_{label}", list(color) if color else None)
            self.objects[label] = obj
        else:
            if name:
                obj.name = name
            if color:
                obj.color = list(color)
        return obj

    def _require_object(self, label: int) -> SessionObject:
        if label not in self.objects:
            known = ", ".join(str(k) for k in self.objects) or "none yet"
            raise InputError(f"unknown object {label}; objects in this session: {known}")
        return self.objects[label]

    # ------------------------------------------------------------ coordinates
    def _to_canonical_index(self, points: Any, coords: str) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim == 1:
            pts = pts[None]
        if pts.ndim != 2 or pts.shape[1] != 3 or not np.all(np.isfinite(pts)):
            raise InputError(f"points must be finite 3D coordinates of shape (N, 3), got {np.asarray(points).tolist()}")
        if coords == "voxel":
            ijk = pts
        elif coords == "lps":
            ijk = self.volume.lps_to_index(pts)
        elif coords == "ras":
            ijk = self.volume.ras_to_index(pts)
        else:
            raise InputError(f"coords {coords!r} must be 'voxel', 'lps', 'ras' or 'frame' (x, y pixels with slice_index)")
        shape = np.array(self.volume.shape)
        outside = np.any((ijk < -0.5) | (ijk > shape - 0.5), axis=1)
        if outside.any():
            bad = pts[int(np.argmax(outside))].tolist()
            raise InputError(
                f"point {bad} ({coords}) lies outside the volume (voxel index range 0..{(shape - 1).tolist()}); "
                "check the coordinate system (voxel, lps or ras)"
            )
        return self._reo.apply_index(ijk, self.volume.shape)

    def _to_frame(self, points: Any, coords: str, slice_index: int | None) -> tuple[int, np.ndarray]:
        if coords == "frame":
            return self._frame_points(points, slice_index)
        frame = self.axis.to_frame(self._to_canonical_index(points, coords))
        slices = np.unique(np.round(frame[:, 0]).astype(int))
        if slice_index is None:
            if len(slices) != 1:
                raise InputError(
                    f"prompt points lie on different {self.axis.axis} slices {slices.tolist()}; put one prompt's points on one slice"
                )
            slice_index = int(slices[0])
        elif slices.tolist() != [slice_index]:
            raise InputError(f"points lie on {self.axis.axis} slice(s) {slices.tolist()}, not on slice {slice_index}")
        return self._check_slice(slice_index), frame[:, [2, 1]]  # (x=col, y=row)

    def _frame_points(self, points: Any, slice_index: int | None) -> tuple[int, np.ndarray]:
        """Points given as frame pixels (x = column, y = row) on ``slice_index``."""
        if slice_index is None:
            raise InputError("points in frame coordinates (x, y) need slice_index")
        s = self._check_slice(slice_index)
        xy = np.asarray(points, dtype=np.float64).reshape(-1, 2) if np.size(points) % 2 == 0 else None
        h, w = self.axis.frame_shape
        if xy is None or not np.all(np.isfinite(xy)) or np.any((xy < -0.5) | (xy > np.array([w, h]) - 0.5)):
            raise InputError(f"frame points {np.asarray(points).tolist()} must be (x, y) pairs inside the {w}x{h} slice")
        return s, xy

    def frame_to_voxel(self, s: int, xy: Any) -> np.ndarray:
        """Frame pixels (x = column, y = row) on slice ``s`` -> voxel indices (i, j, k) of the input."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        src = np.stack([np.full(len(xy), float(s)), xy[:, 1], xy[:, 0]], axis=-1)
        return self._reo.invert_index(self.axis.from_frame(src), self.volume.shape)

    def frames_of(self, array: np.ndarray) -> np.ndarray:
        """A 3D array laid out like the input volume as a stack of frames ``(slice, row, col)``."""
        arr = np.asarray(array)
        if arr.shape != self.volume.shape:
            raise InputError(f"array of shape {arr.shape} does not match the volume {self.volume.shape}")
        canon = self._reo.apply_array(arr)
        return np.stack([self.axis.frame(canon, s) for s in range(self.num_slices)])

    def _check_slice(self, s: Any) -> int:
        if not isinstance(s, (int, np.integer)) or not 0 <= int(s) < self.num_slices:
            raise InputError(f"slice {s!r} does not exist: the {self.axis.axis} axis has slices 0..{self.num_slices - 1}")
        return int(s)

    def slice_of(self, ijk: Sequence[float], coords: str = "voxel") -> int:
        """The slice number (along this session's axis) holding a point of the input volume."""
        return int(round(float(self.axis.to_frame(self._to_canonical_index(ijk, coords))[0, 0])))

    @property
    def voxel_axis(self) -> int:
        """The axis of the input volume's array (0, 1, 2 = i, j, k) that this session's slices cut."""
        return self._reo.perm[self.axis.normal]

    def input_region(self, s: int, frame: np.ndarray | None = None) -> tuple[tuple[Any, ...], np.ndarray | None]:
        """Where slice ``s`` lies in the input volume's array, and ``frame`` laid out to fit it.

        Returns ``(index, values)`` so that ``volume.array[index] = values`` writes a 2D frame
        (e.g. a preview mask) into the input's own layout: the way to update only changed slices.
        """
        s = self._check_slice(s)
        w, a = self.axis.normal, self.voxel_axis
        index: list[Any] = [slice(None)] * 3
        index[a] = (self.volume.shape[a] - 1 - s) if self._reo.flip[w] else s
        if frame is None:
            return tuple(index), None
        shape = list(self._canon.shape)
        shape[w] = 1
        canon = np.zeros(shape, dtype=np.asarray(frame).dtype)
        self.axis.set_frame(canon, 0, frame)
        values = self._reo.invert_array(canon)
        return tuple(index), np.squeeze(values, axis=a)

    def points_on_slice(
        self, points: Any, point_labels: Sequence[int] | None, coords: str, slice_index: int | None
    ) -> tuple[int, np.ndarray, list[int]]:
        """Check point prompts; returns (slice, (N, 2) frame x/y, labels 0/1)."""
        s, xy = self._to_frame(points, coords, slice_index)
        pl = [1] * len(xy) if point_labels is None else [int(v) for v in point_labels]
        if len(pl) != len(xy) or any(v not in (0, 1) for v in pl):
            raise InputError(f"point_labels must be one 0 (negative) or 1 (positive) per point, got {list(point_labels or [])}")
        return s, xy, pl

    def mask_on_slice(self, mask: Any, slice_index: int) -> tuple[int, np.ndarray]:
        """Check a mask prompt (2D frame layout, or 3D like the input); returns (slice, 2D bool frame)."""
        s = self._check_slice(slice_index)
        m = np.asarray(mask)
        if m.shape == self.volume.shape:
            m = self.axis.frame(self._reo.apply_array(m), s)
        if m.shape != self.axis.frame_shape:
            raise InputError(
                f"mask of shape {m.shape} fits neither the {self.axis.axis} slice {self.axis.frame_shape} nor the volume {self.volume.shape}"
            )
        return s, np.ascontiguousarray(m) > 0

    def box_on_slice(self, box: Any, *, slice_index: int | None = None, coords: str = "voxel") -> tuple[int, float, float, float, float]:
        """Check a box (see :meth:`add_box`) and return ``(slice, x0, y0, x1, y1)`` in frame pixels."""
        arr = np.asarray(box, dtype=np.float64)
        if arr.shape == (4,) and slice_index is not None:
            s = self._check_slice(slice_index)
            x0, y0, x1, y1 = arr.tolist()
            if x1 < x0 or y1 < y0:
                raise InputError(f"box {arr.tolist()} is inverted; give [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1")
            h, w = self.axis.frame_shape
            if x0 < -0.5 or y0 < -0.5 or x1 > w - 0.5 or y1 > h - 0.5:
                raise InputError(f"box {arr.tolist()} lies outside the {w}x{h} slice")
        elif arr.shape == (2, 3):
            s, xy = self._to_frame(arr, coords, slice_index)
            (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
        else:
            raise InputError(
                f"box must be two 3D corners [[i,j,k],[i,j,k]] or [x0, y0, x1, y1] with slice_index, got {np.asarray(box).tolist()}"
            )
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise InputError(f"box [{x0}, {y0}, {x1}, {y1}] on slice {s} is empty (under one pixel wide or high)")
        return s, float(x0), float(y0), float(x1), float(y1)

    def _stroke_on_slice(self, points: Any, coords: str, slice_index: int | None, kind: str, minimum: int) -> tuple[int, np.ndarray]:
        """A scribble's or lasso's vertices: counted (before any other work), then mapped onto one slice."""
        try:
            arr = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{kind} points must be a list of coordinates, got {str(points)[:200]}") from None
        width = 2 if coords == "frame" else 3
        if arr.ndim != 2 or arr.shape[1] != width:
            what = "(x, y) frame pixels" if coords == "frame" else f"3D {coords} coordinates"
            raise InputError(f"{kind} points must be {what} of shape (N, {width}), got shape {arr.shape}")
        check_count(len(arr), kind, minimum)
        return self._to_frame(arr, coords, slice_index)

    def _checked_scribble(self, points: Any, positive: Any, coords: str, slice_index: int | None) -> tuple[int, np.ndarray]:
        """A scribble checked (see :meth:`add_scribble`): (slice, its vertices as (N, 2) frame x/y)."""
        if not isinstance(positive, (bool, np.bool_)):
            raise InputError(f"positive must be True (a positive scribble) or False (a negative one), got {positive!r}")
        return self._stroke_on_slice(points, coords, slice_index, "scribble", 1)

    def _checked_lasso(self, polygon: Any, coords: str, slice_index: int | None) -> tuple[int, np.ndarray]:
        """A lasso checked (see :meth:`add_lasso`): (slice, its vertices as (N, 2) frame x/y)."""
        s, xy = self._stroke_on_slice(polygon, coords, slice_index, "lasso", 3)
        if polygon_area(xy) < 1.0:
            raise InputError(f"the lasso on slice {s} encloses {polygon_area(xy):.2f} pixels; draw an outline around the object")
        return s, xy

    def scribble_on_slice(self, points: Any, positive: Any = True, coords: str = "voxel",
                          slice_index: int | None = None) -> tuple[int, np.ndarray, list[int]]:
        """Check a scribble (see :meth:`add_scribble`); returns (slice, sampled (M, 2) frame x/y, labels 0/1)."""
        s, xy = self._checked_scribble(points, positive, coords, slice_index)
        sampled = sample_scribble(xy)
        return s, sampled, [int(bool(positive))] * len(sampled)

    def lasso_on_slice(self, polygon: Any, coords: str = "voxel", slice_index: int | None = None) -> tuple[int, np.ndarray]:
        """Check a lasso (see :meth:`add_lasso`); returns (slice, its filled region as a 2D bool frame)."""
        s, xy = self._checked_lasso(polygon, coords, slice_index)
        return s, rasterise_polygon(xy, self.axis.frame_shape)

    def add_scribble(self, label: int, points: Any, positive: bool = True, *, coords: str = "voxel",
                     slice_index: int | None = None, name: str | None = None) -> np.ndarray:
        """A scribble (a polyline, (N, 3) in ``coords``, or (N, 2) frame x/y with ``coords="frame"`` and
        ``slice_index``) on one slice: positive or negative points sampled along it (see
        :mod:`sam2volume.strokes`), added as :meth:`add_points` adds them; returns the slice's 2D mask."""
        s, xy, labels = self.scribble_on_slice(points, positive, coords, slice_index)
        return self.add_points(label, xy, labels, coords="frame", slice_index=s, name=name)

    def add_lasso(self, label: int, polygon: Any, *, coords: str = "voxel", slice_index: int | None = None,
                  name: str | None = None) -> np.ndarray:
        """A lasso (a closed polygon, its vertices as for :meth:`add_scribble`) on one slice: its filled
        region is the object's mask prompt there, as :meth:`add_mask` takes it; returns the slice's 2D mask."""
        s, mask = self.lasso_on_slice(polygon, coords, slice_index)
        return self.add_mask(label, mask, s, name=name)

    # ---------------------------------------------------- multimask candidates
    def candidates(self, label: int, slice_index: int) -> MaskCandidates | None:
        """The masks SAM2 made for the single click that is object ``label``'s prompt on a slice, or None
        where there are none: other prompts there (two points or more, a box, a mask) or an engine that
        makes one mask per prompt (the baseline: always None)."""
        self._require_object(label)
        self._check_slice(slice_index)
        return None

    def choose_mask(self, label: int, slice_index: int, index: int) -> np.ndarray:
        """Make candidate ``index`` of :meth:`candidates` object ``label``'s mask prompt on that slice
        (propagation follows it); returns the slice's 2D mask, which equals that candidate."""
        self._require_object(label)
        s = self._check_slice(slice_index)
        raise InputError(f"object {label} has no mask candidates on slice {s}: they come from SAM2 (engine 'sam2') "
                         "for a single click on a slice; click once there, or use that mask as it is")

    # -------------------------------------------------------------- propagate
    def _plan(
        self,
        direction: str,
        objects: Iterable[int] | None,
        slice_range: tuple[int, int] | None,
        stop_after: int | None,
        cancel: Callable[[], bool] | threading.Event | None,
    ) -> tuple[list[int], int, int, Callable[[], bool] | None]:
        """Check propagation arguments; returns (labels, first slice, last slice, should_stop)."""
        if direction not in DIRECTIONS:
            raise InputError(f"direction {direction!r} must be one of {', '.join(DIRECTIONS)}")
        labels = list(self.objects) if objects is None else [int(v) for v in objects]
        for label in labels:
            self._require_object(label)
        if not labels:
            raise InputError("no objects to propagate; add a point, box or mask prompt first")
        lo, hi = (0, self.num_slices - 1) if slice_range is None else (self._check_slice(slice_range[0]), self._check_slice(slice_range[1]))
        if lo > hi:
            raise InputError(f"slice_range {slice_range} is inverted; give (first, last) with first <= last")
        if stop_after is not None and stop_after < 1:
            raise InputError(f"stop_after must be None or >= 1, got {stop_after}")
        should_stop = cancel.is_set if isinstance(cancel, threading.Event) else cancel
        return labels, lo, hi, should_stop

    def _check_prompts_in_range(self, prompted: dict[int, list[int]], lo: int, hi: int, slice_range: tuple[int, int] | None) -> None:
        """Before any model work: with a ``slice_range``, each object to propagate needs a prompt inside it
        (tracking starts from the prompts within the range; an object prompted only outside it would not propagate)."""
        if slice_range is None:
            return
        for label, slices in prompted.items():
            if slices and not any(lo <= s <= hi for s in slices):
                shown = ", ".join(str(s) for s in sorted(slices)[:10]) + (", ..." if len(slices) > 10 else "")
                raise InputError(
                    f"object {label} ({self.objects[label].name}) is prompted only on slice(s) {shown}, outside slice_range ({lo}, {hi}), "
                    "so it would not propagate; add a prompt inside the range, widen slice_range, or leave it out with objects=[...]"
                )

    def _clear_until_next_prompt(self, label: int, frame_idx: int, reverse: bool, lo: int, hi: int, cond: list[int]) -> None:
        """After an object ends, earlier results beyond that point (up to its next prompt) go."""
        step = -1 if reverse else 1
        f = frame_idx + step
        while lo <= f <= hi and f not in cond:
            self._logits[label].pop(f, None)
            self._scores[label].pop(f, None)
            f += step

    # ----------------------------------------------------------------- results
    def _logits_to_frame(self, stored: Any) -> np.ndarray:
        """Stored per-slice logits -> float logits in frame layout (engines override)."""
        return np.asarray(stored, dtype=np.float32)

    def frame_logits(self, label: int, s: int) -> np.ndarray | None:
        """Object ``label``'s mask logits on slice ``s`` (frame layout), or None if not computed."""
        t = self._logits.get(label, {}).get(s)
        return None if t is None else self._logits_to_frame(t)

    def computed_slices(self, label: int) -> list[int]:
        """The slices where object ``label`` has a result (prompted, tracked and not cleared)."""
        return sorted(self._logits.get(label, {}))

    def frame_mask(self, label: int, s: int) -> np.ndarray:
        lg = self.frame_logits(label, s)
        return np.zeros(self.axis.frame_shape, bool) if lg is None else lg > 0

    def slice_scores(self) -> dict[int, np.ndarray]:
        """Per object, the engine's object score on each slice (NaN where not computed)."""
        out = {}
        for label in self.objects:
            arr = np.full(self.num_slices, np.nan)
            for s, v in self._scores.get(label, {}).items():
                arr[s] = v
            out[label] = arr
        return out

    def result(self) -> Volume:
        """The labelmap with the input's geometry; overlaps go to the object with the larger logit."""
        canon = np.zeros(self._canon.shape, dtype=np.uint16 if max(self.objects, default=0) > 255 else np.uint8)
        slices = sorted({s for d in self._logits.values() for s in d})
        labels = sorted(self.objects)
        for s in slices:
            best = None
            lab2d = None
            for label in labels:
                lg = self.frame_logits(label, s)
                if lg is None:
                    continue
                if best is None:
                    best = np.full(lg.shape, 0.0, dtype=np.float32)
                    lab2d = np.zeros(lg.shape, dtype=canon.dtype)
                win = lg > best
                best[win] = lg[win]
                lab2d[win] = label
            if lab2d is not None:
                self.axis.set_frame(canon, s, lab2d)
        array = self.volume.undo_reorientation(self._reo, canon)
        segments = [{"label": o.label, "name": o.name, "color": o.color} for o in self.objects.values()]
        scores = {label: v.tolist() for label, v in self.slice_scores().items()}
        return self.volume.with_array(array, segments=segments, slice_scores=scores, axis=self.axis.axis)
