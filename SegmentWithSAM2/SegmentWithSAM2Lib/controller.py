"""The module's engine-facing core: segments <-> session objects, prompts from views, slice updates.

No Slicer import: the Slicer logic hands it arrays and 4x4 matrices and writes back the
:class:`SliceUpdate` slabs it returns. One controller per (volume, segmentation node); inside it each
segment id is one session object, so objects are keyed by (volume, segmentation, segment). The
session comes from a factory (a :class:`sam2volume.client.RemoteSession` on the engine server in
Slicer; any object with the ``Session`` interface in tests) and its axis is set by the view of the
first prompt. Every prompt is kept in a log, so that a moved or deleted point, or a change of
engine settings, replays the prompts instead of dropping them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from sam2volume import InputError, Volume

from .geometry import box_in_frame, check_on_slice, view_slice, volume_from_slicer, world_to_ijk

SessionFactory = Callable[[Volume, str], Any]  # (volume, axis) -> a session with sam2volume's Session interface


@dataclass
class SliceUpdate:
    """Write ``mask_kji`` (bool, Slicer's [k, j, i] order) into volume slices first..last along
    ``voxel_axis`` (0 = i, 1 = j, 2 = k) of segment ``segment_id``; nothing else changes."""

    segment_id: str
    voxel_axis: int
    first: int
    last: int
    mask_kji: np.ndarray


def merge_runs(updates: list[SliceUpdate]) -> list[SliceUpdate]:
    """Adjacent slices of one segment along one axis as one slab (fewer, larger writes into Slicer)."""
    out: list[SliceUpdate] = []
    for u in sorted(updates, key=lambda u: (u.segment_id, u.voxel_axis, u.first)):
        prev = out[-1] if out else None
        if prev is not None and (prev.segment_id, prev.voxel_axis) == (u.segment_id, u.voxel_axis) and u.first == prev.last + 1:
            out[-1] = SliceUpdate(u.segment_id, u.voxel_axis, prev.first, u.last,
                                  np.concatenate([prev.mask_kji, u.mask_kji], axis=2 - u.voxel_axis))
        elif prev is not None and (prev.segment_id, prev.voxel_axis) == (u.segment_id, u.voxel_axis) and u.first <= prev.last:
            out.append(u)  # overlapping (the same slice twice): keep order, write both
        else:
            out.append(u)
    return out


@dataclass
class Prompt:
    segment_id: str
    kind: str  # "points" | "box" | "mask" | "scribble" | "lasso" | "choice" (of a multimask candidate: labels [k], its mask)
    ijk: np.ndarray | None = None  # (N, 3) voxel indices (a box: two corners; a scribble or lasso: its vertices), on one slice
    labels: list[int] | None = None  # points: 1 positive, 0 negative (a scribble: one label for all of it)
    mask: np.ndarray | None = None  # mask prompts: 2D frame
    slice: int = -1  # the session's slice
    key: Any = None  # the markup that made it, e.g. (node id, control point id)


@dataclass
class InlineJob:
    """Propagation of an in-process session (test doubles of the server aside, only the Python console
    and the tests use one): it runs to the end inside the first :meth:`poll`, on the caller's thread.
    Slicer's GUI always talks to an engine server, whose jobs return at once."""

    session: Any
    kwargs: dict
    finished: bool = False
    report: Any = None
    error: BaseException | None = None
    progress: tuple[int, int] = (0, 0)
    _cancel: bool = field(default=False, repr=False)

    def poll(self, wait: float = 0.0, *, timeout: float | None = None) -> list:
        if not self.finished:
            try:
                self.report = self.session.propagate(**self.kwargs, progress=self._progress, cancel=lambda: self._cancel)
            except Exception as exc:  # noqa: BLE001 - reported through .error like a server job
                self.error = exc
            self.finished = True
        return []

    def _progress(self, done: int, total: int) -> None:
        self.progress = (done, total)

    def cancel(self, *, timeout: float | None = None) -> None:
        self._cancel = True


class SegmentationController:
    def __init__(self, array_kji: np.ndarray, ijk_to_ras: np.ndarray, session_factory: SessionFactory, *,
                 name: str = "volume", modality: str = "unknown"):
        # the input volume is never modified: the session windows its own copy of the frames
        self.volume: Volume = volume_from_slicer(np.array(array_kji, copy=True), ijk_to_ras, name=name, modality=modality)
        self.ijk_to_ras = np.asarray(ijk_to_ras, dtype=np.float64).reshape(4, 4)
        self.factory = session_factory
        self.session: Any = None
        self.axis: str | None = None
        self.labels: dict[str, int] = {}  # segment id -> object label
        self.prompts: list[Prompt] = []

    # ---------------------------------------------------------------- session
    def _session_for(self, axis: str) -> Any:
        if self.axis is not None and self.axis != axis:
            raise InputError(
                f"this segmentation's prompts are in {self.axis} views; prompt in a {self.axis} view, "
                "or press Reset to start over in this view"
            )
        if self.session is None:
            self.session = self.factory(self.volume, axis)
            self.axis = axis
        return self.session

    def _label(self, segment_id: str) -> int:
        if segment_id not in self.labels:
            self.labels[segment_id] = max(self.labels.values(), default=0) + 1
        return self.labels[segment_id]

    @property
    def voxel_axis(self) -> int:
        return self.session.voxel_axis

    # ---------------------------------------------------------------- prompts
    def view_points(self, points_ras: Any, slice_to_ras: np.ndarray, world_to_local: np.ndarray | None = None):
        """Voxel indices of points clicked in a slice view, checked to lie on the slice it shows."""
        view = view_slice(slice_to_ras, self.volume, self.ijk_to_ras, world_to_local)
        ijk = world_to_ijk(points_ras, self.ijk_to_ras, world_to_local)
        check_on_slice(ijk, view)
        ijk[:, view.voxel_axis] = view.index
        return view, ijk

    def add_points(self, segment_id: str, points_ras: Any, positive: list[bool], slice_to_ras: np.ndarray,
                   world_to_local: np.ndarray | None = None, key: Any = None) -> SliceUpdate:
        """Points clicked in a slice view (world RAS); returns that slice's new 2D mask as an update."""
        view, ijk = self.view_points(points_ras, slice_to_ras, world_to_local)
        return self._add(Prompt(segment_id, "points", ijk, [int(bool(p)) for p in positive], key=key), view.axis)

    def add_box(self, segment_id: str, corners_ras: Any, slice_to_ras: np.ndarray,
                world_to_local: np.ndarray | None = None, key: Any = None) -> SliceUpdate:
        """A box drawn in a slice view: its corners (world RAS, two opposite ones or all of them; the
        centre must be on the slice). The box sent is the bounding box, in the slice's own voxel
        frame, of all its corners: on a volume rotated in-plane two opposite corners alone span a
        smaller box than the one drawn."""
        view = view_slice(slice_to_ras, self.volume, self.ijk_to_ras, world_to_local)
        ijk = box_in_frame(world_to_ijk(corners_ras, self.ijk_to_ras, world_to_local), view)
        return self._add(Prompt(segment_id, "box", ijk, key=key), view.axis)

    def add_scribble(self, segment_id: str, points_ras: Any, positive: bool, slice_to_ras: np.ndarray,
                     world_to_local: np.ndarray | None = None, key: Any = None) -> SliceUpdate:
        """A scribble drawn in a slice view (its vertices, world RAS, on the slice shown): the session
        samples positive or negative points along it (``sam2volume.strokes``)."""
        view, ijk = self.view_points(points_ras, slice_to_ras, world_to_local)
        return self._add(Prompt(segment_id, "scribble", ijk, [int(bool(positive))], key=key), view.axis)

    def add_lasso(self, segment_id: str, points_ras: Any, slice_to_ras: np.ndarray,
                  world_to_local: np.ndarray | None = None, key: Any = None) -> SliceUpdate:
        """A lasso drawn in a slice view (its polygon's vertices, world RAS, on the slice shown): the
        session fills the polygon on the slice's pixel grid and takes it as a mask prompt."""
        view, ijk = self.view_points(points_ras, slice_to_ras, world_to_local)
        return self._add(Prompt(segment_id, "lasso", ijk, key=key), view.axis)

    def add_mask(self, segment_id: str, slice_kji: np.ndarray, slice_to_ras: np.ndarray,
                 world_to_local: np.ndarray | None = None) -> SliceUpdate:
        """Start from an existing segment: its content on the slice a view shows (``slice_kji``, the
        volume slice in Slicer's [k, j, i] order with one voxel along the view's axis) as a mask prompt."""
        view = view_slice(slice_to_ras, self.volume, self.ijk_to_ras, world_to_local)
        mask = np.asarray(slice_kji, bool).transpose(2, 1, 0)
        if not mask.any():
            raise InputError(f"the segment is empty on {view.axis} slice {view.index}; draw it there first, or click a prompt")
        full = np.zeros(self.volume.shape, bool)
        index: list[Any] = [slice(None)] * 3
        index[view.voxel_axis] = slice(view.index, view.index + 1)
        full[tuple(index)] = mask
        session = self._session_for(view.axis)
        v = [0, 0, 0]
        v[view.voxel_axis] = view.index
        s = session.slice_of(v)
        frame = session.mask_on_slice(full, s)[1]
        return self._add(Prompt(segment_id, "mask", mask=frame, slice=s), view.axis)

    def slice_of_view(self, slice_to_ras: np.ndarray, world_to_local: np.ndarray | None = None) -> int:
        """The session's slice number that a view shows (to propagate from the current slice)."""
        view = view_slice(slice_to_ras, self.volume, self.ijk_to_ras, world_to_local)
        if self.session is None or view.axis != self.axis:
            raise InputError(f"the view shows a {view.axis} slice; the prompts are in {self.axis or 'no'} views")
        v = [0, 0, 0]
        v[view.voxel_axis] = view.index
        return self.session.slice_of(v)

    def _add(self, prompt: Prompt, axis: str) -> SliceUpdate:
        session = self._session_for(axis)
        self._send(session, prompt)
        self.prompts.append(prompt)
        return self.slice_update(prompt.segment_id, prompt.slice)

    def _send(self, session: Any, p: Prompt) -> None:
        label = self._label(p.segment_id)
        if p.kind == "points":
            session.add_points(label, p.ijk, p.labels, name=p.segment_id)
        elif p.kind == "box":
            session.add_box(label, p.ijk, name=p.segment_id)
        elif p.kind == "scribble":
            session.add_scribble(label, p.ijk, bool(p.labels[0]), name=p.segment_id)
        elif p.kind == "lasso":
            session.add_lasso(label, p.ijk, name=p.segment_id)
        elif p.kind == "choice":
            # the same candidate again where the engine makes it again (a replay on the same model), else its mask
            found = session.candidates(label, p.slice)
            if found is not None and p.labels[0] < len(found.masks) and np.array_equal(found.masks[p.labels[0]], p.mask):
                session.choose_mask(label, p.slice, p.labels[0])
            else:
                session.add_mask(label, p.mask, p.slice, name=p.segment_id)
        else:
            session.add_mask(label, p.mask, p.slice, name=p.segment_id)
        if p.kind not in ("mask", "choice"):
            p.slice = session.slice_of(p.ijk[0])

    # ------------------------------------------------------ multimask choice
    def _newest_slice(self, segment_id: str) -> int:
        for p in reversed(self.prompts):
            if p.segment_id == segment_id:
                return p.slice
        raise InputError(f"segment {segment_id} has no prompt yet; click on a slice first")

    def candidates(self, segment_id: str, s: int | None = None) -> Any:
        """SAM2's masks (``MaskCandidates``) for the segment's single click on session slice ``s`` (default:
        the slice of its newest prompt), or None where there are none (more prompts there, the baseline)."""
        s = self._newest_slice(segment_id) if s is None else s
        if self.session is None or self.labels.get(segment_id) not in self.session.objects:
            return None
        return self.session.candidates(self.labels[segment_id], s)

    def choose_mask(self, segment_id: str, index: int, s: int | None = None) -> SliceUpdate:
        """Candidate ``index`` becomes the segment's mask prompt on slice ``s`` (default: its newest
        prompt's slice). The log keeps the choice with its mask, so a replay (new settings, an undo) gives
        that mask again: the same candidate where the engine makes it again, else that mask as a mask prompt."""
        s = self._newest_slice(segment_id) if s is None else s
        label = self.labels[segment_id]
        frame = self.session.choose_mask(label, s, index)
        self.prompts.append(Prompt(segment_id, "choice", labels=[int(index)], mask=np.array(frame, bool), slice=s))
        return self.slice_update(segment_id, s)

    def undo_last_prompt(self, segment_id: str | None = None) -> list[SliceUpdate]:
        """Take back the newest prompt (of ``segment_id``, or of any segment)."""
        for n in range(len(self.prompts) - 1, -1, -1):
            if segment_id is None or self.prompts[n].segment_id == segment_id:
                return self._replace_prompts(self.prompts[n].segment_id, lambda ps, n=n: ps.pop(n))
        raise InputError("there is no prompt to undo")

    def move_prompt(self, key: Any, points_ras: Any, slice_to_ras: np.ndarray, world_to_local: np.ndarray | None = None) -> list[SliceUpdate]:
        """The markup point that made a prompt moved: the prompt follows it (same slice view rules)."""
        n = self._find(key)
        view, ijk = self.view_points(points_ras, slice_to_ras, world_to_local)
        if view.axis != self.axis:
            raise InputError(f"this segmentation's prompts are in {self.axis} views; move the point in a {self.axis} view")

        def move(ps: list[Prompt]) -> None:
            ps[n].ijk = ijk

        return self._replace_prompts(self.prompts[n].segment_id, move)

    def remove_prompt(self, key: Any) -> list[SliceUpdate]:
        """The markup point that made a prompt was deleted: the prompt goes too."""
        n = self._find(key)
        return self._replace_prompts(self.prompts[n].segment_id, lambda ps: ps.pop(n))

    def prompt_points(self, key: Any) -> np.ndarray:
        """The voxel indices a markup's prompt holds (to tell whether the markup moved)."""
        return np.array(self.prompts[self._find(key)].ijk, copy=True)

    def has_prompt(self, key: Any) -> bool:
        return any(p.key == key for p in self.prompts)

    def _find(self, key: Any) -> int:
        for n, p in enumerate(self.prompts):
            if p.key == key:
                return n
        raise InputError(f"no prompt was made by {key}")

    def _replace_prompts(self, segment_id: str, edit: Callable[[list[Prompt]], Any]) -> list[SliceUpdate]:
        """Edit the prompt log, then re-send this segment's prompts; returns the touched slices' masks."""
        old = {p.slice for p in self.prompts if p.segment_id == segment_id}
        edit(self.prompts)
        label = self.labels[segment_id]
        if label in self.session.objects:
            self.session.remove_object(label)
        for p in self.prompts:
            if p.segment_id == segment_id:
                self._send(self.session, p)
        new = {p.slice for p in self.prompts if p.segment_id == segment_id}
        return [self.slice_update(segment_id, s) for s in sorted(old | new)]

    def rebuild(self, session_factory: SessionFactory) -> list[SliceUpdate]:
        """New engine settings: a new session gets every prompt again (none is dropped); the masks
        of the prompted slices come back as updates. Propagated slices wait for the next propagation."""
        self.close()
        self.factory = session_factory
        if self.axis is None or not self.prompts:
            self.axis = None
            return []
        self.session = self.factory(self.volume, self.axis)
        for p in self.prompts:
            self._send(self.session, p)
        return [self.slice_update(p.segment_id, p.slice) for p in self.prompts]

    # ---------------------------------------------------------------- slices
    def slice_update(self, segment_id: str, s: int, frame: np.ndarray | None = None) -> SliceUpdate:
        """Session slice ``s`` of a segment (its mask, or ``frame``) as a volume-slice update."""
        if frame is None:
            frame = self.session.frame_mask(self.labels[segment_id], s)
        idx, values = self.session.input_region(s, np.asarray(frame, bool))
        a = self.session.voxel_axis
        index = int(idx[a])
        mask = np.expand_dims(values, a)
        return SliceUpdate(segment_id, a, index, index, np.ascontiguousarray(mask.transpose(2, 1, 0)))

    def updates_from(self, slice_results: list) -> list[SliceUpdate]:
        """Updates for the slices a propagation job returned (``SliceResult(slice, masks)``)."""
        by_label = {v: k for k, v in self.labels.items()}
        out = []
        for r in slice_results:
            for label, frame in r.masks.items():
                if int(label) in by_label:
                    out.append(self.slice_update(by_label[int(label)], int(r.slice), frame))
        return out

    def result_masks(self, segment_ids: list[str]) -> dict[str, np.ndarray]:
        """Each segment's mask in the whole volume from the session's exact result, bool [i, j, k]."""
        result = np.asarray(self.session.result().array)
        return {sid: result == self.labels[sid] for sid in segment_ids}

    # -------------------------------------------------------------- propagate
    def start_propagation(self, direction: str = "both", *, segment_ids: list[str] | None = None,
                          slice_range: tuple[int, int] | None = None, stop_after: int | None = 3, start: int | None = None):
        """Start propagating (all prompted segments, or ``segment_ids``); returns the job to poll.

        ``slice_range`` is in the session's slice numbering (anatomical order along the axis).
        """
        if self.session is None or not self.labels:
            raise InputError("place a point or a box on a slice first")
        ids = list(self.labels) if segment_ids is None else list(segment_ids)
        unknown = [s for s in ids if s not in self.labels]
        if unknown:
            raise InputError(f"segment(s) {', '.join(unknown)} have no prompts yet; click on a slice first")
        kwargs = dict(direction=direction, objects=[self.labels[s] for s in ids], slice_range=slice_range, stop_after=stop_after,
                      start=start)
        if hasattr(self.session, "start_propagation"):
            return self.session.start_propagation(**kwargs)
        return InlineJob(self.session, kwargs)

    def take_back_last_prompt(self, segment_id: str) -> None:
        """Withdraw the segment's newest prompt from the engine (its mask was not wanted); a segment
        left without prompts is no object of the session any more."""
        self.undo_last_prompt(segment_id)
        if not any(p.segment_id == segment_id for p in self.prompts):
            self.remove_segment(segment_id)

    def remove_segment(self, segment_id: str) -> None:
        label = self.labels.pop(segment_id, None)
        self.prompts = [p for p in self.prompts if p.segment_id != segment_id]
        if label is not None and self.session is not None and label in self.session.objects:
            self.session.remove_object(label)

    def close(self) -> None:
        """Free the session (on the server: one short request); prompts stay in the log."""
        session, self.session = self.session, None
        if session is not None and hasattr(session, "close"):
            session.close()

    def reset(self) -> None:
        self.close()
        self.axis, self.labels, self.prompts = None, {}, []
