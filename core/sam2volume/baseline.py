"""A weights-free classical engine behind the same session interface as SAM2's.

Per object: intensity statistics from the prompt (box centre, disks around positive points, or the
given mask) define an intensity band on the windowed, lightly smoothed slice; the object on the
prompted slice is the connected region of in-band pixels holding the prompt; propagation moves slice
by slice, keeping in-band pixels within a few pixels of the previous slice's mask (the previous slice
is the prior), and stops once the object vanishes (area under a fraction of the previous one) on
``stop_after`` consecutive slices. It needs no download, runs in milliseconds per slice, and is the
baseline row in every report.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

from .errors import CancelledError, InputError
from .session_base import PropagationReport, SessionBase, SliceFn
from .volume import Volume
from .windowing import Window


@dataclass
class BaselineParams:
    smooth_sigma: float = 1.0  #: Gaussian smoothing of the windowed slice (pixels)
    band_k: float = 2.0  #: intensity band: mode +- band_k * sd of the prompt's pixels near the mode
    min_band: float = 0.04  #: narrowest half-band, in windowed units (0..1)
    grow_mm: float = 4.0  #: how far the mask may move from one slice to the next (mm, at least 1 pixel)
    vanish_ratio: float = 0.15  #: a slice whose area is under this share of the previous counts as absent
    min_area_px: int = 12  #: smaller regions count as absent
    opening_px: int = 1  #: morphological opening radius that cuts thin bridges to neighbours
    # defaults chosen by a small grid search (band_k, grow, opening) on the shared
    # example CT: figures measured on that same CT are therefore optimistic


def deepest_pixel(mask: np.ndarray) -> tuple[int, int]:
    """The pixel of a 2D mask farthest from its edge (the image border counts as edge), as (x, y)."""
    dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(c), int(r)


def _disk(r: int) -> np.ndarray:
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


class BaselineSession(SessionBase):
    """Classical region growing with the SAM2 session's interface (prompts, propagate, result)."""

    engine_name = "baseline"

    def __init__(
        self,
        volume: Volume,
        axis: str = "axial",
        config: Any = None,
        *,
        window: Window | str | None = None,
        window_width: float | None = None,
        window_level: float | None = None,
        progress: bool = False,
        params: BaselineParams | None = None,
        **_: Any,
    ):
        super().__init__(volume, axis, window=window, window_width=window_width, window_level=window_level, progress=progress)
        self.params = params or BaselineParams()
        self._bands: dict[int, tuple[float, float]] = {}
        self._cond: dict[int, set[int]] = {}
        self._frame_cache: dict[int, np.ndarray] = {}

    @property
    def encoder_calls(self) -> int:
        return 0

    # ----------------------------------------------------------------- frames
    def _frame(self, s: int) -> np.ndarray:
        img = self._frame_cache.get(s)
        if img is None:
            raw = self.axis.frame(self._canon.array, s).astype(np.float32)
            img = ndi.gaussian_filter(self.window.apply(raw), self.params.smooth_sigma)
            if len(self._frame_cache) > 64:
                self._frame_cache.clear()
            self._frame_cache[s] = img
        return img

    def _band_from(self, values: np.ndarray) -> tuple[float, float]:
        """Band around the dominant intensity of the prompt's pixels (its histogram mode), so that
        other tissue inside a loose box does not widen it."""
        values = np.asarray(values, dtype=np.float64).ravel()
        hist, edges = np.histogram(values, bins=40, range=(0.0, 1.0))
        hist = np.convolve(hist, [1, 2, 1], mode="same")
        mode = float((edges[:-1] + edges[1:])[int(np.argmax(hist))] / 2)
        near = values[np.abs(values - mode) <= 0.1]
        sd = float(near.std()) if near.size > 3 else 0.0
        half = max(self.params.band_k * sd, self.params.min_band)
        return mode - half, mode + half

    def _region(self, img: np.ndarray, band: tuple[float, float], allowed: np.ndarray | None, seeds: np.ndarray) -> np.ndarray:
        cand = (img >= band[0]) & (img <= band[1])
        if allowed is not None:
            cand &= allowed
        if self.params.opening_px:
            opened = ndi.binary_opening(cand, _disk(self.params.opening_px))
            cand = opened if (opened & seeds).any() else cand
        lab, n = ndi.label(cand)
        if n == 0:
            return np.zeros_like(cand)
        keep = np.unique(lab[seeds & cand])
        keep = keep[keep > 0]
        if keep.size == 0:
            return np.zeros_like(cand)
        return ndi.binary_fill_holes(np.isin(lab, keep))

    @staticmethod
    def _disks(shape: tuple[int, ...], xy: Sequence[tuple[float, float]], r: int = 4) -> np.ndarray:
        out = np.zeros(shape, bool)
        yy, xx = np.ogrid[: shape[0], : shape[1]]
        for x, y in xy:
            out |= (xx - x) ** 2 + (yy - y) ** 2 <= r * r
        return out

    def _set(self, label: int, s: int, mask: np.ndarray) -> np.ndarray:
        self._logits[label][s] = np.where(mask, 1.0, -1.0).astype(np.float32)
        self._scores[label][s] = float(mask.sum())
        return mask

    def _frame_spacing(self) -> tuple[float, float]:
        sp = self._canon.spacing
        return {"axial": (sp[1], sp[0]), "coronal": (sp[2], sp[0]), "sagittal": (sp[2], sp[1])}[self.axis.axis]

    # ----------------------------------------------------------------- prompts
    def add_box(self, label: int, box: Any, *, slice_index: int | None = None, coords: str = "voxel", name: str | None = None) -> np.ndarray:
        s, x0, y0, x1, y1 = self.box_on_slice(box, slice_index=slice_index, coords=coords)
        self.add_object(label, name)
        img = self._frame(s)
        r0, r1, c0, c1 = int(round(y0)), int(round(y1)) + 1, int(round(x0)), int(round(x1)) + 1
        h, w = r1 - r0, c1 - c0
        centre = img[r0 + h // 4 : r1 - h // 4 or None, c0 + w // 4 : c1 - w // 4 or None]
        self._bands[label] = self._band_from(centre if centre.size else img[r0:r1, c0:c1])
        inside = np.zeros(img.shape, bool)
        inside[r0:r1, c0:c1] = True
        seeds = np.zeros(img.shape, bool)
        seeds[r0 + h // 4 : r1 - h // 4 or None, c0 + w // 4 : c1 - w // 4 or None] = True
        region = self._region(img, self._bands[label], inside, seeds)
        self._cond.setdefault(label, set()).add(s)
        return self._set(label, s, region)

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
        s, xy, pl = self.points_on_slice(points, point_labels, coords, slice_index)
        self.add_object(label, name)
        img = self._frame(s)
        pos_xy = [(x, y) for (x, y), v in zip(xy, pl) if v]
        neg_xy = [(x, y) for (x, y), v in zip(xy, pl) if not v]
        pos = self._disks(img.shape, pos_xy)
        previous = self.frame_mask(label, s) if s in self._logits.get(label, {}) else np.zeros(img.shape, bool)
        if pos.any():
            if label not in self._bands:
                self._bands[label] = self._band_from(img[pos])
            region = self._region(img, self._bands[label], None, pos) | previous
        else:
            region = previous
        if neg_xy and region.any():
            # a negative click claims the pixels nearer to it than to any positive click (or, with
            # none on this slice, than to the centre of the mask already there): the region is cut
            # along the bisector instead of losing every part the click touches
            keep_xy = pos_xy or [deepest_pixel(region)]
            yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
            d_neg = np.min([(xx - x) ** 2 + (yy - y) ** 2 for x, y in neg_xy], axis=0)
            d_pos = np.min([(xx - x) ** 2 + (yy - y) ** 2 for x, y in keep_xy], axis=0)
            cut = region & (d_pos < d_neg)
            lab, _ = ndi.label(cut)
            seeds = self._disks(img.shape, keep_xy) & cut
            hit = np.unique(lab[seeds])
            region = np.isin(lab, hit[hit > 0])
        self._cond.setdefault(label, set()).add(s)
        return self._set(label, s, region)

    def add_mask(self, label: int, mask: Any, slice_index: int, *, name: str | None = None) -> np.ndarray:
        s, m = self.mask_on_slice(mask, slice_index)
        self.add_object(label, name)
        if m.any():
            self._bands[label] = self._band_from(self._frame(s)[m])
        self._cond.setdefault(label, set()).add(s)
        return self._set(label, s, m)

    def remove_object(self, label: int) -> None:
        self._require_object(label)
        for store in (self.objects, self._logits, self._scores, self._bands, self._cond):
            store.pop(label, None)

    def reset(self) -> None:
        for store in (self.objects, self._logits, self._scores, self._bands, self._cond):
            store.clear()

    # -------------------------------------------------------------- propagate
    def propagate(
        self,
        direction: str = "both",
        *,
        objects: Iterable[int] | None = None,
        start: int | None = None,
        slice_range: tuple[int, int] | None = None,
        stop_after: int | None = 3,
        progress: Callable[[int, int], None] | None = None,
        cancel: Callable[[], bool] | threading.Event | None = None,
        on_slice: SliceFn | None = None,
    ) -> PropagationReport:
        """Same contract as :meth:`sam2volume.session.Session.propagate`."""
        labels, lo, hi, should_stop = self._plan(direction, objects, slice_range, stop_after, cancel)
        for label in labels:
            if not self._cond.get(label):
                raise InputError(f"object {label} has no prompt yet; add a point, box or mask first")
        self._check_prompts_in_range({label: sorted(self._cond[label]) for label in labels}, lo, hi, slice_range)
        report = PropagationReport()
        h_sp, w_sp = self._frame_spacing()
        grow = _disk(max(1, int(round(self.params.grow_mm / min(h_sp, w_sp)))))
        total = 0
        plans = []
        for label in labels:
            first = min(self._cond[label]) if start is None else self._check_slice(start)
            first = min(max(first, lo), hi)
            for reverse in ((False, True) if direction == "both" else ((direction == "backward"),)):
                order = list(range(first, lo - 1, -1)) if reverse else list(range(first, hi + 1))
                plans.append((label, reverse, order))
                total += len(order)
        done = 0
        for label, reverse, order in plans:
            name = "backward" if reverse else "forward"
            prev = None
            absent = 0
            for s in order:
                if should_stop is not None and should_stop():
                    report.cancelled = True
                    raise CancelledError(f"propagation cancelled at slice {s}; results so far are kept")
                done += 1
                report.slices_run += 1
                if s in self._cond[label]:
                    prev = self.frame_mask(label, s)
                    absent = 0
                elif prev is not None and prev.any() and label in self._bands:
                    region = self._region(self._frame(s), self._bands[label], ndi.binary_dilation(prev, grow), ndi.binary_erosion(prev, _disk(1)) | prev)
                    area, prev_area = int(region.sum()), int(prev.sum())
                    if area < self.params.min_area_px or area < self.params.vanish_ratio * prev_area:
                        region = np.zeros_like(region)
                    self._set(label, s, region)
                    absent = absent + 1 if not region.any() else 0
                    prev = region if region.any() else prev
                else:
                    self._set(label, s, np.zeros(self.axis.frame_shape, bool))
                    conds = self._cond[label]
                    reached = s <= max(conds) if reverse else s >= min(conds)
                    absent = absent + 1 if reached else 0  # not stopped before its own prompt
                if on_slice is not None:
                    on_slice(s, [label])
                if progress is not None:
                    progress(done, total)
                if stop_after is not None and absent >= stop_after:
                    report.stopped.setdefault(label, {})[name] = s
                    self._clear_until_next_prompt(label, s, reverse, lo, hi, sorted(self._cond[label]))
                    break
        return report
