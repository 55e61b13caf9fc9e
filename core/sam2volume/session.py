"""The segmentation session: the one object the CLI, the scoring scripts and Slicer talk to.

Open it on a :class:`Volume` and an anatomical axis, add prompts per object on any slice (each
call returns that slice's mask at once), propagate in both directions, correct and re-propagate,
then take the labelmap, which has the input's geometry. SAM2's ``inference_state`` stays inside.
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .errors import CancelledError, InputError, Sam2VolumeError
from .slicing import SliceAxis, parse_axis
from .volume import CANONICAL, Volume
from .windowing import Window, choose_window

ProgressFn = Callable[[int, int], None]
DIRECTIONS = ("both", "forward", "backward")


@dataclass
class SessionObject:
    label: int
    name: str
    color: list[float] | None = None


@dataclass
class _SlicePrompt:
    points: list[tuple[float, float]] = field(default_factory=list)  # (x=col, y=row) frame pixels
    point_labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None


@dataclass
class PropagationReport:
    """What a propagation did: slices visited and where each object was found to end."""

    slices_run: int = 0
    stopped: dict[int, dict[str, int]] = field(default_factory=dict)  # label -> {direction: slice}
    cancelled: bool = False


class Session:
    """Interactive SAM2 segmentation of one volume along one anatomical axis.

    ``predictor`` may be shared between sessions (build it once with
    :func:`sam2volume.engine.predictor.build_predictor`); otherwise it is built from ``config``.
    Slice numbers run along the axis in anatomical order (see :mod:`sam2volume.slicing`);
    :meth:`slice_of` converts a voxel of the input volume to its slice number.
    """

    def __init__(
        self,
        volume: Volume,
        axis: str = "axial",
        config: Any = None,
        *,
        predictor: Any = None,
        window: Window | str | None = None,
        window_width: float | None = None,
        window_level: float | None = None,
        progress: bool = False,
    ):
        from .engine.config import EngineConfig

        if not isinstance(volume, Volume):
            raise InputError(f"Session needs a sam2volume.Volume, got {type(volume).__name__}; read it with read_volume()")
        self.config = config if config is not None else EngineConfig()
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

        import torch

        from .engine.frames import SliceFrames
        from .engine.predictor import FeatureCache, resolve_device, resolve_dtype

        self._torch = torch
        self._predictor = predictor  # built on first use, so prompts are checked before heavy work
        if predictor is not None:
            self.device = next(predictor.parameters()).device
            image_size = int(predictor.image_size)
        else:
            self.device = resolve_device(self.config.device)
            image_size = self.config.resolved_image_size
        self.dtype = resolve_dtype(self.config.dtype, self.device)
        self.frames = SliceFrames(self._canon.array, self.axis, self.window, image_size)
        self.feature_cache = FeatureCache(self.config.feature_cache_mb * 2**20)
        self._state = self._new_state()
        self.objects: dict[int, SessionObject] = {}
        self._prompts: dict[tuple[int, int], _SlicePrompt] = {}
        self._logits: dict[int, dict[int, Any]] = defaultdict(dict)  # label -> slice -> low-res logits (CPU)
        self._scores: dict[int, dict[int, float]] = defaultdict(dict)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ state
    def _new_state(self) -> dict[str, Any]:
        """SAM2's inference state over in-memory frames (upstream ``init_state`` minus the file loading)."""
        from collections import OrderedDict

        storage = self._torch.device("cpu") if self.config.offload_state_to_cpu else self.device
        return {
            "images": self.frames,
            "num_frames": len(self.frames),
            "offload_video_to_cpu": True,
            "offload_state_to_cpu": self.config.offload_state_to_cpu,
            "video_height": self.frames.video_height,
            "video_width": self.frames.video_width,
            "device": self.device,
            "storage_device": storage,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
            "feature_cache": self.feature_cache,
        }

    @property
    def predictor(self) -> Any:
        """SAM2's video predictor (built from ``config`` on first use)."""
        if self._predictor is None:
            from .engine.predictor import build_predictor

            self._predictor = build_predictor(self.config, progress=self.progress)
            if int(self._predictor.image_size) != self.frames.image_size:
                raise Sam2VolumeError("model image size differs from the session's frames")
        return self._predictor

    @property
    def _memory_window(self) -> int:
        return max(int(self.predictor.num_maskmem), int(self.predictor.max_obj_ptrs_in_encoder)) + 1

    @property
    def num_slices(self) -> int:
        return self.axis.num_slices

    @property
    def encoder_calls(self) -> int:
        return int(self.predictor.encoder_calls)

    @contextlib.contextmanager
    def _model_call(self, what: str) -> Iterator[None]:
        from .engine.predictor import autocast

        with self._lock, self._torch.inference_mode(), autocast(self.device, self.dtype):
            try:
                yield
            except self._torch.OutOfMemoryError:
                self._free_memory()
                raise Sam2VolumeError(
                    f"out of memory while {what}; the session is still usable: lower image_size, "
                    "set offload_state_to_cpu=True, lower feature_cache_mb, or use a smaller model"
                ) from None

    def _free_memory(self) -> None:
        self.feature_cache.clear()
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()

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

    def remove_object(self, label: int) -> None:
        self._require_object(label)
        with self._model_call("removing an object"):
            if label in self._state["obj_id_to_idx"]:
                self.predictor.remove_object(self._state, label, strict=False, need_output=False)
        del self.objects[label]
        self._logits.pop(label, None)
        self._scores.pop(label, None)
        for key in [k for k in self._prompts if k[0] == label]:
            del self._prompts[key]

    def reset(self) -> None:
        """Forget every object, prompt and result (cached slice features are kept)."""
        with self._lock:
            self.predictor.reset_state(self._state)
            self._state = self._new_state()
            self.objects.clear()
            self._prompts.clear()
            self._logits.clear()
            self._scores.clear()

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
            raise InputError(f"coords {coords!r} must be 'voxel', 'lps' or 'ras'")
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

    def _check_slice(self, s: Any) -> int:
        if not isinstance(s, (int, np.integer)) or not 0 <= int(s) < self.num_slices:
            raise InputError(f"slice {s!r} does not exist: the {self.axis.axis} axis has slices 0..{self.num_slices - 1}")
        return int(s)

    def slice_of(self, ijk: Sequence[float], coords: str = "voxel") -> int:
        """The slice number (along this session's axis) holding a point of the input volume."""
        return int(round(float(self.axis.to_frame(self._to_canonical_index(ijk, coords))[0, 0])))

    def input_region(self, s: int, frame: np.ndarray | None = None) -> tuple[tuple[Any, ...], np.ndarray | None]:
        """Where slice ``s`` lies in the input volume's array, and ``frame`` laid out to fit it.

        Returns ``(index, values)`` so that ``volume.array[index] = values`` writes a 2D frame
        (e.g. a preview mask) into the input's own layout: the way to update only changed slices.
        """
        s = self._check_slice(s)
        w = self.axis.normal
        a = self._reo.perm[w]
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

    # ----------------------------------------------------------------- prompts
    def add_points(
        self,
        label: int,
        points: Any,
        point_labels: Sequence[int] | None = None,
        *,
        coords: str = "voxel",
        slice_index: int | None = None,
        name: str | None = None,
    ) -> np.ndarray:
        """Add positive (1) / negative (0) points for object ``label``; returns the slice's 2D mask.

        ``points`` are (N, 3) coordinates of the input volume: voxel indices (i, j, k), or LPS/RAS mm.
        Points on the same slice add to the ones given before.
        """
        s, xy = self._to_frame(points, coords, slice_index)
        pl = [1] * len(xy) if point_labels is None else [int(v) for v in point_labels]
        if len(pl) != len(xy) or any(v not in (0, 1) for v in pl):
            raise InputError(f"point_labels must be one 0 (negative) or 1 (positive) per point, got {list(point_labels or [])}")
        self.add_object(label, name)
        prompt = self._prompts.setdefault((label, s), _SlicePrompt())
        new_points = prompt.points + [tuple(map(float, p)) for p in xy]
        new_labels = prompt.point_labels + pl
        mask = self._send_prompt(label, s, new_points, new_labels, prompt.box)
        prompt.points, prompt.point_labels = new_points, new_labels
        return mask

    def add_box(
        self,
        label: int,
        box: Any,
        *,
        slice_index: int | None = None,
        coords: str = "voxel",
        name: str | None = None,
    ) -> np.ndarray:
        """Add a box for object ``label``; returns the slice's 2D mask. Replaces an earlier box there.

        ``box`` is either two opposite 3D corners ``[[i0, j0, k0], [i1, j1, k1]]`` (in ``coords``)
        on one slice, or, with ``slice_index``, ``[x0, y0, x1, y1]`` in frame pixels
        (x = column, y = row, x0 < x1, y0 < y1).
        """
        s, x0, y0, x1, y1 = self.box_on_slice(box, slice_index=slice_index, coords=coords)
        self.add_object(label, name)
        prompt = self._prompts.setdefault((label, s), _SlicePrompt())
        new_box = (float(x0), float(y0), float(x1), float(y1))
        mask = self._send_prompt(label, s, prompt.points, prompt.point_labels, new_box)
        prompt.box = new_box
        return mask

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

    def add_mask(self, label: int, mask: Any, slice_index: int, *, name: str | None = None) -> np.ndarray:
        """Give object ``label``'s mask on one slice (2D in frame layout, or 3D like the input volume)."""
        s = self._check_slice(slice_index)
        m = np.asarray(mask)
        if m.shape == self.volume.shape:
            m = self.axis.frame(self._reo.apply_array(m), s)
        if m.shape != self.axis.frame_shape:
            raise InputError(
                f"mask of shape {m.shape} fits neither the {self.axis.axis} slice {self.axis.frame_shape} nor the volume {self.volume.shape}"
            )
        self.add_object(label, name)
        self._prompts.pop((label, s), None)
        with self._model_call("adding a mask"):
            _, obj_ids, masks = self.predictor.add_new_mask(
                self._state, frame_idx=s, obj_id=label, mask=self._torch.as_tensor(np.ascontiguousarray(m) > 0)
            )
            self._record_interaction(label, s)
        return (masks[obj_ids.index(label), 0] > 0).cpu().numpy()

    def _send_prompt(self, label: int, s: int, points: list, point_labels: list, box: tuple | None) -> np.ndarray:
        torch = self._torch
        pts = torch.tensor(points, dtype=torch.float32).reshape(-1, 2)
        lab = torch.tensor(point_labels, dtype=torch.int32).reshape(-1)
        with self._model_call("adding a prompt"), self._previous_mask_available(label, s):
            _, obj_ids, masks = self.predictor.add_new_points_or_box(
                self._state,
                frame_idx=s,
                obj_id=label,
                points=pts if len(points) else None,
                labels=lab if len(points) else None,
                box=box,
                clear_old_points=True,
                normalize_coords=True,
            )
            self._record_interaction(label, s)
        return (masks[obj_ids.index(label), 0] > 0).cpu().numpy()

    @contextlib.contextmanager
    def _previous_mask_available(self, label: int, s: int) -> Iterator[None]:
        """Let SAM2 refine the mask already shown on a slice even where its memory was trimmed."""
        stub = None
        idx = self._state["obj_id_to_idx"].get(label)
        if idx is not None and s in self._logits.get(label, {}):
            out = self._state["output_dict_per_obj"][idx]
            temp = self._state["temp_output_dict_per_obj"][idx]
            if all(s not in d for d in (out["cond_frame_outputs"], out["non_cond_frame_outputs"], temp["cond_frame_outputs"], temp["non_cond_frame_outputs"])):
                stub = {"pred_masks": self._logits[label][s]}
                out["non_cond_frame_outputs"][s] = stub
        try:
            yield
        finally:
            if stub is not None:
                idx = self._state["obj_id_to_idx"][label]
                store = self._state["output_dict_per_obj"][idx]["non_cond_frame_outputs"]
                if store.get(s) is stub:
                    del store[s]

    def _record_interaction(self, label: int, s: int) -> None:
        idx = self._state["obj_id_to_idx"][label]
        temp = self._state["temp_output_dict_per_obj"][idx]
        out = temp["cond_frame_outputs"].get(s) or temp["non_cond_frame_outputs"].get(s)
        self._store(label, s, out)

    def _store(self, label: int, s: int, out: dict[str, Any]) -> None:
        self._logits[label][s] = out["pred_masks"].detach().to("cpu", self._torch.float32)
        self._scores[label][s] = float(out["object_score_logits"].float().max()) if out.get("object_score_logits") is not None else float("nan")

    # -------------------------------------------------------------- propagate
    def propagate(
        self,
        direction: str = "both",
        *,
        objects: Iterable[int] | None = None,
        start: int | None = None,
        slice_range: tuple[int, int] | None = None,
        stop_after: int | None = 3,
        progress: ProgressFn | None = None,
        cancel: Callable[[], bool] | threading.Event | None = None,
    ) -> PropagationReport:
        """Track objects from their prompted slices through the volume.

        * ``direction``: ``both``, ``forward`` (increasing slice numbers) or ``backward``.
        * ``start``: first slice (default: the lowest prompted slice, as upstream SAM2 does).
        * ``slice_range``: (first, last) slices to stay within (inclusive).
        * ``stop_after``: stop an object in a direction once SAM2's object score says it is absent on
          this many consecutive slices (masks then do not leak past the organ); ``None`` tracks to the end.
        * ``progress(done, total)`` is called after each slice; ``cancel()`` (or a set Event) stops
          cleanly between slices, keeping what was done, and raises :class:`CancelledError`.
        """
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

        with self._model_call("preparing propagation"):
            try:
                self.predictor.propagate_in_video_preflight(self._state)
            except RuntimeError as exc:
                raise InputError(f"cannot propagate: {exc}") from None
        state = self._state
        idx_of = {label: state["obj_id_to_idx"][label] for label in labels}
        cond = {label: sorted(state["output_dict_per_obj"][idx_of[label]]["cond_frame_outputs"]) for label in labels}
        for label in labels:
            if not cond[label]:
                raise InputError(f"object {label} has no prompt yet; add a point, box or mask first")
        if start is None:
            start = min(c[0] for c in cond.values())
        start = min(max(self._check_slice(start), lo), hi)

        passes = []
        if direction in ("both", "forward"):
            passes.append((False, list(range(start, hi + 1))))
        if direction in ("both", "backward") and (start > 0 or direction == "backward"):
            passes.append((True, list(range(start, lo - 1, -1))))
        total = sum(len(order) for _, order in passes)
        report = PropagationReport()
        bar = None
        if self.progress and progress is None:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="propagate", unit="slice")
        done = 0
        try:
            for reverse, order in passes:
                name = "backward" if reverse else "forward"
                absent = {label: 0 for label in labels}
                active = set(labels)
                for frame_idx in order:
                    if should_stop is not None and should_stop():
                        report.cancelled = True
                        raise CancelledError(f"propagation cancelled at slice {frame_idx}; results so far are kept")
                    if not active:
                        break
                    with self._model_call(f"propagating (slice {frame_idx})"):
                        for label in sorted(active):
                            present = self._track_one(label, idx_of[label], frame_idx, reverse)
                            is_cond = frame_idx in cond[label]
                            absent[label] = 0 if (present or is_cond) else absent[label] + 1
                            if stop_after is not None and absent[label] >= stop_after:
                                active.discard(label)
                                report.stopped.setdefault(label, {})[name] = frame_idx
                                self._clear_until_next_prompt(label, frame_idx, reverse, lo, hi, cond[label])
                    report.slices_run += 1
                    done += 1
                    if progress is not None:
                        progress(done, total)
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return report

    def _track_one(self, label: int, obj_idx: int, frame_idx: int, reverse: bool) -> bool:
        """One object on one slice, as upstream ``propagate_in_video`` does it; True if present."""
        state = self._state
        out_dict = state["output_dict_per_obj"][obj_idx]
        if frame_idx in out_dict["cond_frame_outputs"]:
            current = out_dict["cond_frame_outputs"][frame_idx]
        else:
            current, _ = self.predictor._run_single_frame_inference(
                inference_state=state,
                output_dict=out_dict,
                frame_idx=frame_idx,
                batch_size=1,
                is_init_cond_frame=False,
                point_inputs=None,
                mask_inputs=None,
                reverse=reverse,
                run_mem_encoder=True,
            )
            out_dict["non_cond_frame_outputs"][frame_idx] = current
        state["frames_tracked_per_obj"][obj_idx][frame_idx] = {"reverse": reverse}
        self._store(label, frame_idx, current)
        self._trim_memory(out_dict, frame_idx, reverse)
        score = self._scores[label][frame_idx]
        return bool(score > 0) if np.isfinite(score) else bool((current["pred_masks"] > 0).any())

    def _trim_memory(self, out_dict: dict[str, Any], frame_idx: int, reverse: bool) -> None:
        """Drop memory SAM2 can no longer use in this pass, so memory stays flat in the slice count.

        SAM2 reads non-conditioning memory from the last ``num_maskmem`` slices and object pointers
        from the last ``max_obj_ptrs_in_encoder`` slices; entries within that window of the current
        slice or of any prompted slice are kept, so results equal upstream's.
        """
        w = self._memory_window
        old = frame_idx + w if reverse else frame_idx - w
        non_cond = out_dict["non_cond_frame_outputs"]
        if old in non_cond and all(abs(old - c) > w for c in out_dict["cond_frame_outputs"]):
            del non_cond[old]

    def _clear_until_next_prompt(self, label: int, frame_idx: int, reverse: bool, lo: int, hi: int, cond: list[int]) -> None:
        """After an object ends, earlier results beyond that point (up to its next prompt) go."""
        step = -1 if reverse else 1
        f = frame_idx + step
        while lo <= f <= hi and f not in cond:
            self._logits[label].pop(f, None)
            self._scores[label].pop(f, None)
            f += step

    # ----------------------------------------------------------------- results
    def _video_res(self, logits: Any) -> Any:
        torch = self._torch
        h, w = self.axis.frame_shape
        if logits.shape[-2:] == (h, w):
            return logits
        return torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)

    def frame_logits(self, label: int, s: int) -> np.ndarray | None:
        """Object ``label``'s mask logits on slice ``s`` (frame layout), or None if not computed."""
        t = self._logits.get(label, {}).get(s)
        return None if t is None else self._video_res(t)[0, 0].numpy()

    def frame_mask(self, label: int, s: int) -> np.ndarray:
        lg = self.frame_logits(label, s)
        return np.zeros(self.axis.frame_shape, bool) if lg is None else lg > 0

    def slice_scores(self) -> dict[int, np.ndarray]:
        """Per object, SAM2's object score on each slice (NaN where not computed)."""
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
