"""Simulated prompts: protocols a run names, made from the reference only on the prompted slices.

A protocol says which prompt (box, points or mask), on which key slice(s) (the middle slice of the
object's extent along the axis, or its largest slice; ``key_slices`` > 1 spreads them evenly over
the extent), with optional box jitter, extra positive and negative points, and interactive
correction rounds. Named protocols (``PROTOCOLS``) can be adjusted with options:
``box-middle:jitter=0.1,corrections=2``.

Reproducible: every random choice comes from a generator seeded by (run seed, case, object), so a
case gives the same prompts whatever the order of cases or a resumed run.

What reaches the engine: the prompt on each key slice is built from the reference's 2D mask on
that slice only. A correction round looks at the current result and the reference over the volume
(the simulated user inspects the result, as in the SAM2, MedSAM2 and nnInteractive evaluations),
picks the slice with the most wrong voxels, and clicks at the centre of its largest error region:
positive where the object was missed, negative where the result spilled over.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..baseline import deepest_pixel
from ..errors import InputError

PROMPT_KINDS = ("box", "points", "mask")
KEYS = ("middle", "largest")


@dataclass(frozen=True)
class Protocol:
    name: str
    prompt: str = "box"  # box | points | mask
    key: str = "middle"  # middle | largest
    key_slices: int = 1
    jitter: float = 0.0  # box sides move by up to this fraction of the box's width/height
    positives: int = 1  # points protocols: positive clicks per key slice
    negatives: int = 0  # points protocols: negative clicks per key slice
    corrections: int = 0  # interactive correction rounds after the first propagation

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("box-middle", "box", "middle"),
        Protocol("box-largest", "box", "largest"),
        Protocol("box-jitter", "box", "largest", jitter=0.1),
        Protocol("point-center", "points", "largest"),
        Protocol("points-3-neg-1", "points", "largest", positives=3, negatives=1),
        Protocol("mask-middle", "mask", "middle"),
        Protocol("mask-largest", "mask", "largest"),
        Protocol("box-3-slices", "box", "middle", key_slices=3),
        Protocol("box-correct-3", "box", "middle", corrections=3),
        Protocol("point-correct-5", "points", "largest", corrections=5),
    )
}


def parse_protocol(spec: str | Protocol) -> Protocol:
    """``NAME`` or ``NAME:option=value,...`` (options: the fields of :class:`Protocol`)."""
    if isinstance(spec, Protocol):
        return spec
    name, _, opts = str(spec).partition(":")
    if name not in PROTOCOLS:
        raise InputError(f"unknown protocol {name!r}; use one of {', '.join(PROTOCOLS)} (options as NAME:jitter=0.1,corrections=2)")
    proto = PROTOCOLS[name]
    changes: dict[str, Any] = {}
    for item in filter(None, (o.strip() for o in opts.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in Protocol.__dataclass_fields__ or key == "name":
            fields = ", ".join(f for f in Protocol.__dataclass_fields__ if f != "name")
            raise InputError(f"protocol option {item!r} in {spec!r}: use key=value with key one of {fields}")
        current = getattr(proto, key)
        try:
            changes[key] = type(current)(value)
        except ValueError:
            raise InputError(f"protocol option {key}={value!r} in {spec!r}: expected a {type(current).__name__}") from None
    proto = replace(proto, **changes, name=str(spec)) if changes else proto
    if proto.prompt not in PROMPT_KINDS or proto.key not in KEYS:
        raise InputError(f"protocol {spec!r}: prompt must be one of {PROMPT_KINDS} and key one of {KEYS}")
    if proto.key_slices < 1 or proto.positives < 1 or proto.negatives < 0 or proto.corrections < 0 or not 0 <= proto.jitter < 1:
        raise InputError(f"protocol {spec!r}: key_slices and positives must be >= 1, negatives and corrections >= 0, 0 <= jitter < 1")
    return proto


def rng_for(seed: int, case_id: str, obj: str) -> np.random.Generator:
    """The generator for one (run seed, case, object): independent of case order and resumes."""
    return np.random.default_rng([int(seed), zlib.crc32(case_id.encode()), zlib.crc32(obj.encode())])


# ------------------------------------------------------------- key slices
def key_slices(ref_frames: np.ndarray, proto: Protocol) -> list[int]:
    """Slices (frame stack index) to prompt on; ``ref_frames`` is (slice, row, col) bool."""
    areas = ref_frames.reshape(len(ref_frames), -1).sum(axis=1)
    occupied = np.flatnonzero(areas)
    if occupied.size == 0:
        return []
    if proto.key_slices == 1:
        if proto.key == "largest":
            return [int(np.argmax(areas))]
        return [int(occupied[len(occupied) // 2])]
    picks = [int(occupied[min(len(occupied) - 1, int(round(q * (len(occupied) - 1))))]) for q in np.linspace(0, 1, proto.key_slices + 2)[1:-1]]
    return sorted(set(picks))


# ----------------------------------------------------------------- prompts
def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())


def box_prompt(mask: np.ndarray, jitter: float, rng: np.random.Generator) -> list[float]:
    """[x0, y0, x1, y1] around the mask, each side moved by up to ``jitter`` of the box size."""
    x0, y0, x1, y1 = (float(v) for v in _bbox(mask))
    if jitter > 0:
        w, h = x1 - x0 + 1, y1 - y0 + 1
        dx0, dx1 = rng.uniform(-jitter, jitter, 2) * w
        dy0, dy1 = rng.uniform(-jitter, jitter, 2) * h
        x0, x1, y0, y1 = x0 + dx0, x1 + dx1, y0 + dy0, y1 + dy1
    H, W = mask.shape
    x0, x1 = float(np.clip(min(x0, x1), 0, W - 1)), float(np.clip(max(x0, x1), 0, W - 1))
    y0, y1 = float(np.clip(min(y0, y1), 0, H - 1)), float(np.clip(max(y0, y1), 0, H - 1))
    if x1 - x0 < 1:  # SAM2 and our sessions need a box at least a pixel wide
        x0, x1 = max(0.0, x0 - 1), min(W - 1.0, x1 + 1)
    if y1 - y0 < 1:
        y0, y1 = max(0.0, y0 - 1), min(H - 1.0, y1 + 1)
    return [round(x0, 2), round(y0, 2), round(x1, 2), round(y1, 2)]


def point_prompts(mask: np.ndarray, positives: int, negatives: int, rng: np.random.Generator) -> tuple[list[list[int]], list[int]]:
    """Clicks (x, y) and labels (1/0): the first positive at the mask's centre, the others random
    inside it (away from the edge when possible); negatives random in the background near it."""
    pts = [list(deepest_pixel(mask))]
    inner = ndi.binary_erosion(mask, iterations=2)
    pool = np.argwhere(inner if inner.sum() >= positives else mask)
    for r, c in pool[rng.choice(len(pool), size=min(len(pool), positives - 1), replace=False)] if positives > 1 else []:
        pts.append([int(c), int(r)])
    labels = [1] * len(pts)
    if negatives:
        x0, y0, x1, y1 = _bbox(mask)
        mx, my = max(3, (x1 - x0) // 5), max(3, (y1 - y0) // 5)
        near = np.zeros_like(mask)
        near[max(0, y0 - my) : y1 + my + 1, max(0, x0 - mx) : x1 + mx + 1] = True
        bg = np.argwhere(near & ~ndi.binary_dilation(mask, iterations=2))
        for r, c in bg[rng.choice(len(bg), size=min(len(bg), negatives), replace=False)] if len(bg) else []:
            pts.append([int(c), int(r)])
            labels.append(0)
    return pts, labels


def correction_click(pred_frames: np.ndarray, ref_frames: np.ndarray) -> tuple[int, list[int], int] | None:
    """(slice, [x, y], 1 positive / 0 negative) at the largest error on the worst slice, or None."""
    err = pred_frames ^ ref_frames
    counts = err.reshape(len(err), -1).sum(axis=1)
    if not counts.any():
        return None
    s = int(np.argmax(counts))
    lab, n = ndi.label(err[s])
    sizes = ndi.sum(np.ones_like(lab), lab, index=range(1, n + 1))
    region = lab == (int(np.argmax(sizes)) + 1)
    x, y = deepest_pixel(region)
    return s, [x, y], int(bool(ref_frames[s, y, x]))


# -------------------------------------------------------------- sessions
def prompt_object(session: Any, label: int, name: str, ref_frames: np.ndarray, proto: Protocol, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Send one object's simulated prompts to a session; returns what was sent (for the record)."""
    sent: list[dict[str, Any]] = []
    for s in key_slices(ref_frames, proto):
        mask = ref_frames[s]
        if proto.prompt == "box":
            box = box_prompt(mask, proto.jitter, rng)
            session.add_box(label, box, slice_index=s, name=name)
            corners = session.frame_to_voxel(s, [box[:2], box[2:]])
            sent.append({"slice": s, "box": box, "voxel_corners": np.round(corners, 2).tolist()})
        elif proto.prompt == "points":
            pts, labels = point_prompts(mask, proto.positives, proto.negatives, rng)
            session.add_points(label, pts, labels, coords="frame", slice_index=s, name=name)
            sent.append({"slice": s, "points": pts, "labels": labels, "voxels": np.round(session.frame_to_voxel(s, pts), 2).tolist()})
        else:
            session.add_mask(label, mask, s, name=name)
            sent.append({"slice": s, "mask_pixels": int(mask.sum())})
    return sent


def correct_object(session: Any, label: int, ref_frames: np.ndarray, *, stop_after: int | None) -> dict[str, Any] | None:
    """One correction round for one object: click at the largest error, re-propagate from there."""
    pred = np.stack([session.frame_mask(label, s) for s in range(session.num_slices)])
    click = correction_click(pred, ref_frames)
    if click is None:
        return None
    s, xy, positive = click
    session.add_points(label, [xy], [positive], coords="frame", slice_index=s)
    session.propagate("both", objects=[label], start=s, stop_after=stop_after)
    return {"slice": s, "point": xy, "positive": bool(positive), "wrong_voxels_on_slice": int((pred[s] ^ ref_frames[s]).sum())}
