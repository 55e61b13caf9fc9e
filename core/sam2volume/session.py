"""The SAM2 segmentation session: the one object the CLI, the scoring scripts and Slicer talk to.

Open it on a :class:`Volume` and an anatomical axis, add prompts per object on any slice (each
call returns that slice's mask at once), propagate in both directions, correct and re-propagate,
then take the labelmap, which has the input's geometry. SAM2's ``inference_state`` stays inside.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .errors import CancelledError, InputError, Sam2VolumeError
from .session_base import DIRECTIONS, MaskCandidates, ProgressFn, PropagationReport, SessionBase, SessionObject, SliceFn
from .volume import Volume
from .windowing import Window

__all__ = ["Session", "SessionObject", "PropagationReport", "DIRECTIONS"]

log = logging.getLogger("sam2volume")


@dataclass
class _SlicePrompt:
    points: list[tuple[float, float]] = field(default_factory=list)  # (x=col, y=row) frame pixels
    point_labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None


def nearest_slices(around: int, count: int, num_slices: int) -> list[int]:
    """The ``count`` slices nearest ``around`` (itself excluded), alternating after then before."""
    out: list[int] = []
    d = 1
    while len(out) < count and (around + d < num_slices or around - d >= 0):
        for idx in (around + d, around - d):
            if 0 <= idx < num_slices and len(out) < count:
                out.append(idx)
        d += 1
    return out


def _acquire_if_idle(lock: Any) -> bool:
    """Take ``lock`` without waiting, and only if nobody waits for it where the lock can tell
    (the server's fair lock queues its waiters)."""
    if_idle = getattr(lock, "acquire_if_idle", None)
    return bool(if_idle()) if if_idle is not None else bool(lock.acquire(blocking=False))


class _EncodeAhead:
    """Encodes slices around a prompted one on a thread, one slice per model call, while the user
    goes on prompting. It yields to foreground calls, never evicts a cached slice, and stops when
    told to (a propagation, a reset, another prompt) or when the cache is full."""

    def __init__(self, session: "Session", around: int, count: int):
        self.session = session
        self.todo = nearest_slices(around, count, session.num_slices)
        self.stop = threading.Event()
        self.done = threading.Event()
        self.encoded = 0
        self.thread = threading.Thread(target=self._run, name="sam2volume-encode-ahead", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        cache = self.session.feature_cache
        try:
            for idx in self.todo:
                if self.stop.is_set() or not cache.has_room():
                    break
                while not self._encode(idx):
                    self.stop.wait(0.005)  # a foreground call goes first
        except Exception as exc:  # the foreground encodes on demand instead; nothing is lost
            log.warning("encoding slices ahead stopped: %s: %s", type(exc).__name__, exc)
        finally:
            self.done.set()

    def _encode(self, idx: int) -> bool:
        """One try at encoding slice ``idx``: False when a foreground call has the model (try again)."""
        session = self.session
        if idx in session.feature_cache or self.stop.is_set():
            return True
        with session._background_call() as got:
            if not got:
                return False
            if idx not in session.feature_cache and not self.stop.is_set():
                session.predictor.encode_slices(session._state, [idx])
                self.encoded += 1
            return True


class Session(SessionBase):
    """Interactive SAM2 segmentation of one volume along one anatomical axis.

    ``predictor`` may be shared between sessions (build it once with
    :func:`sam2volume.engine.predictor.build_predictor`); otherwise it is built from ``config``.
    Slice numbers run along the axis in anatomical order (see :mod:`sam2volume.slicing`);
    :meth:`slice_of` converts a voxel of the input volume to its slice number.
    ``model_lock``, if given, is taken around background encoding (``encode_ahead``), so a server
    that shares one predictor between sessions keeps its model calls one at a time; background work
    takes it only when nobody holds it or waits for it, so it never delays another user's call by
    more than the one slice it is encoding.
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
        model_lock: Any = None,
    ):
        from .engine.config import EngineConfig

        super().__init__(volume, axis, window=window, window_width=window_width, window_level=window_level, progress=progress)
        self.config = config if config is not None else EngineConfig()
        import torch

        from .engine.frames import SliceFrames
        from .engine.predictor import FeatureCache, resolve_device, resolve_dtype, resolve_encode_batch

        self._torch = torch
        self._predictor = predictor  # built on first use, so prompts are checked before heavy work
        if predictor is not None:
            self.device = next(predictor.parameters()).device
            image_size = int(predictor.image_size)
        else:
            self.device = resolve_device(self.config.device)
            image_size = self.config.resolved_image_size
        self.dtype = resolve_dtype(self.config.dtype, self.device)
        compiled = int(getattr(predictor, "compiled_batch", 0) or 0)
        self.encode_batch = compiled or resolve_encode_batch(self.config.encode_batch, self.device)
        self.model_lock = model_lock  # shared with other sessions on this device (the server's)
        self._ahead: _EncodeAhead | None = None
        self._waiting = 0  # foreground model calls waiting for the lock (background encoding yields)
        self._waiting_guard = threading.Lock()
        self.frames = SliceFrames(self._canon.array, self.axis, self.window, image_size)
        self.feature_cache = FeatureCache(self.config.feature_cache_mb * 2**20)
        self._state = self._new_state()
        self._prompts: dict[tuple[int, int], _SlicePrompt] = {}
        # (label, slice) -> SAM2's candidate masks of a single click there: low-res logits [K, h, w], scores, chosen
        self._candidates: dict[tuple[int, int], tuple[Any, np.ndarray, list[int]]] = {}

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
    def encoder_calls(self) -> int:
        return int(self.predictor.encoder_calls)

    @contextlib.contextmanager
    def _model_call(self, what: str) -> Iterator[None]:
        from .engine.predictor import autocast

        with self._waiting_guard:
            self._waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._waiting_guard:
                self._waiting -= 1
        try:
            with self._torch.inference_mode(), autocast(self.device, self.dtype):
                yield
        except self._torch.OutOfMemoryError:
            self._free_memory()
            raise Sam2VolumeError(
                f"out of memory while {what}; the session is still usable: lower image_size, "
                "set offload_state_to_cpu=True, lower feature_cache_mb, or use a smaller model"
            ) from None
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def _background_call(self) -> Iterator[bool]:
        """The locks for one background model call, taken only when no foreground call holds or waits
        for them: this session's, and the shared ``model_lock`` (other sessions' calls on the device).
        Yields False, holding nothing, when the model is busy."""
        from .engine.predictor import autocast

        if self._waiting or not self._lock.acquire(blocking=False):
            yield False
            return
        shared = self.model_lock
        if shared is not None and not _acquire_if_idle(shared):
            self._lock.release()
            yield False
            return
        try:
            with self._torch.inference_mode(), autocast(self.device, self.dtype):
                yield True
        finally:
            if shared is not None:
                shared.release()
            self._lock.release()

    def _free_memory(self) -> None:
        self.feature_cache.clear()
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()

    # ------------------------------------------------------- encoding ahead
    def _encode_ahead_of(self, s: int) -> None:
        """After a prompt on slice ``s``: encode the slices around it in the background (if asked)."""
        count = int(self.config.encode_ahead)
        if count <= 0:
            return
        self.stop_background()
        self._ahead = _EncodeAhead(self, s, count)

    def stop_background(self) -> None:
        """Stop encoding slices ahead (the slice being encoded is finished and kept)."""
        if self._ahead is not None:
            self._ahead.stop.set()

    def wait_for_background(self, timeout: float | None = None) -> bool:
        """Wait until background encoding has finished; True if it has (or none runs)."""
        return self._ahead is None or self._ahead.done.wait(timeout)

    @property
    def slices_encoded_ahead(self) -> int:
        """Slices the latest background encoding has encoded so far."""
        return 0 if self._ahead is None else self._ahead.encoded

    def _encode_batch_from(self, order: list[int], pos: int, needs: Callable[[int], bool]) -> None:
        """Before tracking ``order[pos]``: if it is not encoded yet, encode it and the next slices of
        the pass that need the encoder in one batched forward pass (``encode_batch``, within the
        feature-cache budget)."""
        cache = self.feature_cache
        batch = min(self.encode_batch, cache.slices_that_fit())
        if batch <= 1 or order[pos] in cache or not needs(order[pos]):
            return
        todo = []
        for idx in order[pos:]:
            if len(todo) == batch:
                break
            if idx not in cache and needs(idx):
                todo.append(idx)
        self.predictor.encode_slices(self._state, todo)

    # --------------------------------------------------------------- objects
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
        for key in [k for k in self._candidates if k[0] == label]:
            del self._candidates[key]

    def reset(self) -> None:
        """Forget every object, prompt and result (cached slice features are kept)."""
        self.stop_background()
        with self._lock:
            self.predictor.reset_state(self._state)
            self._state = self._new_state()
            self.objects.clear()
            self._prompts.clear()
            self._candidates.clear()
            self._logits.clear()
            self._scores.clear()

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
        s, xy, pl = self.points_on_slice(points, point_labels, coords, slice_index)
        self.add_object(label, name)
        prompt = self._prompts.setdefault((label, s), _SlicePrompt())
        new_points = prompt.points + [tuple(map(float, p)) for p in xy]
        new_labels = prompt.point_labels + pl
        mask = self._send_prompt(label, s, new_points, new_labels, prompt.box)
        prompt.points, prompt.point_labels = new_points, new_labels
        self._encode_ahead_of(s)
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
        new_box = (x0, y0, x1, y1)
        mask = self._send_prompt(label, s, prompt.points, prompt.point_labels, new_box)
        prompt.box = new_box
        self._encode_ahead_of(s)
        return mask

    def add_mask(self, label: int, mask: Any, slice_index: int, *, name: str | None = None) -> np.ndarray:
        """Give object ``label``'s mask on one slice (2D in frame layout, or 3D like the input volume)."""
        s, m = self.mask_on_slice(mask, slice_index)
        self.add_object(label, name)
        self._prompts.pop((label, s), None)
        self._candidates.pop((label, s), None)
        with self._model_call("adding a mask"):
            _, obj_ids, masks = self.predictor.add_new_mask(
                self._state, frame_idx=s, obj_id=label, mask=self._torch.as_tensor(m)
            )
            self._record_interaction(label, s)
        self._encode_ahead_of(s)
        return (masks[obj_ids.index(label), 0] > 0).cpu().numpy()

    def _send_prompt(self, label: int, s: int, points: list, point_labels: list, box: tuple | None) -> np.ndarray:
        torch = self._torch
        pts = torch.tensor(points, dtype=torch.float32).reshape(-1, 2)
        lab = torch.tensor(point_labels, dtype=torch.int32).reshape(-1)
        recording = getattr(self.predictor, "recording_sam_heads", None)
        with self._model_call("adding a prompt"), self._previous_mask_available(label, s), \
                (recording() if recording is not None else contextlib.nullcontext([])) as heads:
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
            self._keep_candidates(label, s, heads)
        return (masks[obj_ids.index(label), 0] > 0).cpu().numpy()

    # ---------------------------------------------------- multimask candidates
    def _keep_candidates(self, label: int, s: int, heads: list) -> None:
        """After a prompt: SAM2's masks for it when its head made several (a single click), else none."""
        self._candidates.pop((label, s), None)
        if heads and heads[-1][0].shape[1] > 1:
            logits, ious = heads[-1]
            scores = ious[0].float().cpu().numpy().astype(np.float64)
            masks = logits[0].detach()
            area = int(getattr(self.predictor, "fill_hole_area", 0) or 0)
            if area > 0:  # as upstream treats the mask it keeps (CUDA with SAM2's extension): the same holes filled
                from sam2.utils.misc import fill_holes_in_mask_scores

                masks = fill_holes_in_mask_scores(masks[:, None], area)[:, 0]
            self._candidates[(label, s)] = (masks.to("cpu", self._torch.float32), scores, [int(np.argmax(scores))])

    def candidates(self, label: int, slice_index: int) -> MaskCandidates | None:
        """SAM2's three masks for the single click that is object ``label``'s prompt on a slice, with their
        predicted IoU (upstream's multimask output: its video predictor keeps the best one), or None where
        the slice's prompt is not one click (two points or more, a box or a mask make one mask)."""
        self._require_object(label)
        s = self._check_slice(slice_index)
        found = self._candidates.get((label, s))
        if found is None:
            return None
        logits, scores, chosen = found
        masks = np.stack([self._logits_to_frame(logits[k][None, None]) > 0 for k in range(len(logits))])
        return MaskCandidates(masks, scores.copy(), chosen[0])

    def choose_mask(self, label: int, slice_index: int, index: int) -> np.ndarray:
        """Make candidate ``index`` object ``label``'s mask prompt on that slice (as :meth:`add_mask`, so
        propagation follows it); the slice then holds exactly that candidate. The candidates stay, so
        another can be chosen instead; any other prompt on the slice replaces them."""
        self._require_object(label)
        s = self._check_slice(slice_index)
        found = self._candidates.get((label, s))
        if found is None:
            raise InputError(f"object {label} has no mask candidates on slice {s}: SAM2 makes them for a single click; "
                             "click once on the slice (its first point) to get them")
        logits, scores, chosen = found
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or not 0 <= int(index) < len(logits):
            raise InputError(f"candidate {index!r} does not exist: object {label} has candidates 0..{len(logits) - 1} on slice {s}")
        k = int(index)
        mask = self._logits_to_frame(logits[k][None, None]) > 0
        self._prompts.pop((label, s), None)
        with self._model_call("choosing a mask"):
            self.predictor.add_new_mask(self._state, frame_idx=s, obj_id=label, mask=self._torch.as_tensor(mask))
            # the slice holds the candidate's own logits (the mask prompt's output is that mask, resampled
            # twice): what the user chose is what is shown and what SAM2's memory encodes for propagation
            idx = self._state["obj_id_to_idx"][label]
            temp = self._state["temp_output_dict_per_obj"][idx]
            out = temp["cond_frame_outputs"].get(s) or temp["non_cond_frame_outputs"].get(s)
            out["pred_masks"] = logits[k][None, None].to(out["pred_masks"].device, out["pred_masks"].dtype)
            self._record_interaction(label, s)
        chosen[0] = k
        self._encode_ahead_of(s)
        return self.frame_mask(label, s)

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
        on_slice: SliceFn | None = None,
    ) -> PropagationReport:
        """Track objects from their prompted slices through the volume.

        * ``direction``: ``both``, ``forward`` (increasing slice numbers) or ``backward``.
        * ``start``: first slice (default: the lowest prompted slice, as upstream SAM2 does).
        * ``slice_range``: (first, last) slices to stay within (inclusive).
        * ``stop_after``: stop an object in a direction once SAM2's object score says it is absent on
          this many consecutive slices (masks then do not leak past the organ); ``None`` tracks to the end.
        * ``progress(done, total)`` is called after each slice; ``cancel()`` (or a set Event) stops
          cleanly between slices, keeping what was done, and raises :class:`CancelledError`.
        * ``on_slice(slice, labels)`` is called after each slice with the objects computed there
          (the engine server streams those masks; :meth:`frame_mask` reads them).
        """
        labels, lo, hi, should_stop = self._plan(direction, objects, slice_range, stop_after, cancel)
        self._check_prompts_in_range({label: self._prompted_slices(label) for label in labels}, lo, hi, slice_range)
        self.stop_background()

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
        progress, close_progress = self._progress_or_bar(progress)
        done = 0
        try:
            for reverse, order in passes:
                name = "backward" if reverse else "forward"
                absent = {label: 0 for label in labels}
                active = set(labels)

                def needs_encoder(idx: int) -> bool:
                    return any(idx not in cond[label] for label in active)

                for pos, frame_idx in enumerate(order):
                    if should_stop is not None and should_stop():
                        report.cancelled = True
                        raise CancelledError(f"propagation cancelled at slice {frame_idx}; results so far are kept")
                    if not active:
                        break
                    ran = sorted(active)
                    with self._model_call(f"propagating (slice {frame_idx})"):
                        self._encode_batch_from(order, pos, needs_encoder)
                        for label in sorted(active):
                            present = self._track_one(label, idx_of[label], frame_idx, reverse)
                            is_cond = frame_idx in cond[label]
                            # an object only ends after the pass has reached one of its own prompts
                            # (objects prompted on other slices are not stopped before their prompt)
                            reached = frame_idx <= cond[label][-1] if reverse else frame_idx >= cond[label][0]
                            absent[label] = 0 if (present or is_cond or not reached) else absent[label] + 1
                            if stop_after is not None and absent[label] >= stop_after:
                                active.discard(label)
                                report.stopped.setdefault(label, {})[name] = frame_idx
                                self._clear_until_next_prompt(label, frame_idx, reverse, lo, hi, cond[label])
                    report.slices_run += 1
                    done += 1
                    if on_slice is not None:
                        on_slice(frame_idx, ran)
                    if progress is not None:
                        progress(done, total)
        finally:
            close_progress()
        return report

    def _prompted_slices(self, label: int) -> list[int]:
        """The slices holding object ``label``'s prompts, whether or not a propagation has consolidated them yet."""
        idx = self._state["obj_id_to_idx"].get(label)
        if idx is None:
            return []
        stores = (self._state["output_dict_per_obj"][idx], self._state["temp_output_dict_per_obj"][idx])
        return sorted({s for store in stores for s in store["cond_frame_outputs"]})

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

    # ----------------------------------------------------------------- results
    def _logits_to_frame(self, stored: Any) -> np.ndarray:
        """Low-res SAM2 logits -> frame resolution, as upstream's ``_get_orig_video_res_output``."""
        h, w = self.axis.frame_shape
        if stored.shape[-2:] != (h, w):
            stored = self._torch.nn.functional.interpolate(stored, size=(h, w), mode="bilinear", align_corners=False)
        return stored[0, 0].numpy()
