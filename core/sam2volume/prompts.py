"""The prompts file: objects with names and label values, and their points, boxes and masks.

Format (JSON)::

    {
      "axis": "axial",                 # optional: axial | coronal | sagittal
      "coordinates": "voxel",          # voxel (i, j, k of the input file) | lps | ras (mm)
      "objects": [
        {"name": "liver", "label": 1, "color": [0.9, 0.5, 0.4],
         "points": [{"position": [60, 50, 14], "positive": true}, ...],
         "boxes":  [[[45, 27, 14], [104, 85, 14]]],          # two opposite corners on one slice
         "masks":  [{"file": "liver.nii.gz", "value": 5, "slice": 14}],   # a labelmap on the image grid
         "scribbles": [{"points": [[50, 40, 14], [70, 55, 14]], "positive": true}],   # a polyline on one slice
         "lassos": [{"points": [[45, 30, 14], [100, 30, 14], [90, 80, 14]]}]}         # a polygon on one slice
      ]
    }

Points of one object on the same slice form one prompt. A scribble becomes points sampled along it
and a lasso its filled region as a mask prompt (see :mod:`sam2volume.strokes`); each has 1 (a lasso:
3) to 1000 points, all on one slice. Every value is checked before any model
work starts, and errors name the object and the entry.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import InputError
from .slicing import parse_axis

COORDINATES = ("voxel", "lps", "ras")


@dataclass
class ObjectPrompts:
    name: str
    label: int
    color: list[float] | None = None
    points: list[tuple[list[float], bool]] = field(default_factory=list)
    boxes: list[list[list[float]]] = field(default_factory=list)
    masks: list[dict[str, Any]] = field(default_factory=list)
    scribbles: list[tuple[list[list[float]], bool]] = field(default_factory=list)  # (vertices, positive)
    lassos: list[list[list[float]]] = field(default_factory=list)  # polygon vertices


@dataclass
class PromptSet:
    objects: list[ObjectPrompts]
    coordinates: str = "voxel"
    axis: str | None = None
    source: str = "prompts"


TOP_KEYS = ("description", "axis", "coordinates", "objects")
OBJECT_KEYS = ("name", "label", "color", "description", "points", "boxes", "masks", "scribbles", "lassos")
POINT_KEYS = ("position", "positive")
SCRIBBLE_KEYS = ("points", "positive")
LASSO_KEYS = ("points",)
MASK_KEYS = ("file", "slice", "value")
MAX_NAME = 128


def _fail(where: str, msg: str) -> InputError:
    return InputError(f"{where}: {msg}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer too large for a float
        return False


def _check_keys(value: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise _fail(where, f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")


def _list(value: Any, where: str, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, f'"{what}" must be a list, got {type(value).__name__} {value!r}')
    return value


def _vec3(value: Any, where: str) -> list[float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_number(v) for v in value)):
        raise _fail(where, f"expected a 3D coordinate [x, y, z] of finite numbers, got {value!r}")
    return [float(v) for v in value]


def check_name(name: Any, where: str) -> str:
    """A segment name: one line of printable text (it goes into file headers and Slicer)."""
    if not isinstance(name, str) or not name.strip():
        raise _fail(where, f"name must be a non-empty string, got {name!r}")
    if len(name) > MAX_NAME or any(not ch.isprintable() for ch in name):
        shown = repr(name) if len(name) <= MAX_NAME else f"{name[:40]!r}... ({len(name)} characters)"
        raise _fail(where, f"name {shown} must be one line of printable characters, at most {MAX_NAME} long")
    return name


def check_color(color: Any, where: str) -> list[float] | None:
    """A colour: exactly three numbers in [0, 1] (red, green, blue), or None."""
    if color is None:
        return None
    if not (isinstance(color, (list, tuple)) and len(color) == 3 and all(_is_number(c) and 0 <= c <= 1 for c in color)):
        raise _fail(where, f"color must be three numbers in [0, 1] (red, green, blue), got {color!r}")
    return [float(c) for c in color]


def _point(p: Any, where: str) -> tuple[list[float], bool]:
    if not isinstance(p, dict):
        return _vec3(p, where), True
    _check_keys(p, POINT_KEYS, where)
    positive = p.get("positive", True)
    if not isinstance(positive, bool):
        raise _fail(where, f'"positive" must be true or false (a JSON boolean), got {positive!r}')
    return _vec3(p.get("position"), where), positive


def _stroke(st: Any, where: str, kind: str, keys: tuple[str, ...], minimum: int) -> tuple[list[list[float]], bool]:
    """A scribble or lasso entry: {"points": [[x, y, z], ...]} (a scribble also "positive"), counts checked."""
    from .strokes import MAX_STROKE_POINTS

    example = '{"points": [[x, y, z], ...], "positive": true}' if kind == "scribble" else '{"points": [[x, y, z], ...]}'
    if not isinstance(st, dict) or "points" not in st:
        raise _fail(where, f"expected {example}, got {str(st)[:200]}")
    _check_keys(st, keys, where)
    points = _list(st["points"], where, "points")
    if not minimum <= len(points) <= MAX_STROKE_POINTS:
        raise _fail(where, f"a {kind} needs {minimum} to {MAX_STROKE_POINTS} points, got {len(points)}")
    positive = st.get("positive", True)
    if not isinstance(positive, bool):
        raise _fail(where, f'"positive" must be true or false (a JSON boolean), got {positive!r}')
    return [_vec3(p, f"{where}, point {n + 1}") for n, p in enumerate(points)], positive


def _mask(mk: Any, where: str, base_dir: Path | None) -> dict[str, Any]:
    if not isinstance(mk, dict) or "file" not in mk or "slice" not in mk:
        raise _fail(where, 'expected {"file": "labels.nii.gz", "slice": N, "value": V}')
    _check_keys(mk, MASK_KEYS, where)
    if not isinstance(mk["file"], str) or not mk["file"]:
        raise _fail(where, f'"file" must be a path string, got {mk["file"]!r}')
    if not _is_int(mk["slice"]) or mk["slice"] < 0:
        raise _fail(where, f'"slice" must be a slice number (an integer >= 0), got {mk["slice"]!r}')
    value = mk.get("value")
    if value is not None and (not _is_int(value) or value <= 0):
        raise _fail(where, f'"value" must be a positive integer label value (or left out: all non-zero voxels), got {value!r}')
    path = Path(mk["file"])
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise _fail(where, f"mask file {str(path)!r} is not a file" + (" (it is a directory)" if path.is_dir() else ""))
    return {"file": path, "slice": int(mk["slice"]), "value": value}


def parse_prompts(data: dict[str, Any], source: str = "prompts", base_dir: Path | None = None) -> PromptSet:
    """Check a prompts document strictly (types, lengths, ranges, unknown keys) and return it parsed."""
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list) or not data["objects"]:
        raise _fail(source, 'needs a non-empty "objects" list (see README: prompts file format)')
    _check_keys(data, TOP_KEYS, source)
    coords = data.get("coordinates", "voxel")
    if not isinstance(coords, str) or coords.lower() not in COORDINATES:
        raise _fail(source, f'"coordinates" must be one of {", ".join(COORDINATES)}, got {coords!r}')
    coords = coords.lower()
    axis = data.get("axis")
    if axis is not None:
        if not isinstance(axis, str):
            raise _fail(source, f'"axis" must be axial, coronal or sagittal, got {axis!r}')
        axis = parse_axis(axis)
    objects: list[ObjectPrompts] = []
    labels: set[int] = set()
    for n, obj in enumerate(data["objects"]):
        where = f"{source}: object {n + 1}"
        if not isinstance(obj, dict):
            raise _fail(where, "must be an object with name, label and prompts")
        _check_keys(obj, OBJECT_KEYS, where)
        name = check_name(obj["name"], where) if "name" in obj else f"object_{n + 1}"
        where = f"{source}: object {name!r}"
        label = obj.get("label", n + 1)
        if not _is_int(label) or not 0 < label < 65536:
            raise _fail(where, f"label must be an integer 1..65535, got {label!r}")
        if label in labels:
            raise _fail(where, f"label {label} is used by two objects")
        labels.add(label)
        op = ObjectPrompts(name, label, check_color(obj.get("color"), where))
        for m, p in enumerate(_list(obj.get("points", []), where, "points")):
            op.points.append(_point(p, f"{where}, point {m + 1}"))
        for m, b in enumerate(_list(obj.get("boxes", []), where, "boxes")):
            bw = f"{where}, box {m + 1}"
            if isinstance(b, dict):
                _check_keys(b, ("corners",), bw)
            corners = b.get("corners") if isinstance(b, dict) else b
            if not (isinstance(corners, list) and len(corners) == 2):
                raise _fail(bw, f"expected two corners [[x,y,z],[x,y,z]], got {b!r}")
            op.boxes.append([_vec3(c, bw) for c in corners])
        for m, mk in enumerate(_list(obj.get("masks", []), where, "masks")):
            op.masks.append(_mask(mk, f"{where}, mask {m + 1}", base_dir))
        for m, st in enumerate(_list(obj.get("scribbles", []), where, "scribbles")):
            op.scribbles.append(_stroke(st, f"{where}, scribble {m + 1}", "scribble", SCRIBBLE_KEYS, 1))
        for m, st in enumerate(_list(obj.get("lassos", []), where, "lassos")):
            op.lassos.append(_stroke(st, f"{where}, lasso {m + 1}", "lasso", LASSO_KEYS, 3)[0])
        if not (op.points or op.boxes or op.masks or op.scribbles or op.lassos):
            raise _fail(where, "has no points, boxes, masks, scribbles or lassos")
        objects.append(op)
    return PromptSet(objects, coords, axis, source)


MAX_PROMPTS_BYTES = 16 * 2**20


class _Object(dict):
    """A JSON object as read from a prompts file, with the keys it held more than once."""

    duplicates: tuple[str, ...] = ()


def _keep_duplicates(pairs: list[tuple[str, Any]]) -> _Object:
    out = _Object()
    repeated = []
    for key, value in pairs:
        if key in out:
            repeated.append(key)
        out[key] = value
    out.duplicates = tuple(dict.fromkeys(repeated))
    return out


def _first_duplicate(value: Any, where: str) -> tuple[str, str] | None:
    """(where, key) of the first object in document order that repeats a key."""
    if isinstance(value, _Object):
        if value.duplicates:
            return where, value.duplicates[0]
        children: Any = ((f"{where}.{k}" if where else k, v) for k, v in value.items())
    elif isinstance(value, list):
        children = ((f"{where}[{n}]", v) for n, v in enumerate(value))
    else:
        return None
    for child_where, child in children:
        found = _first_duplicate(child, child_where)
        if found is not None:
            return found
    return None


def load_prompts(path: str | Path) -> PromptSet:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: prompts file not found" + (" (it is a directory)" if p.is_dir() else ""))
    if p.stat().st_size > MAX_PROMPTS_BYTES:
        raise InputError(f"{p}: {p.stat().st_size} bytes is too large for a prompts file (at most {MAX_PROMPTS_BYTES})")
    try:
        data = json.loads(p.read_bytes().decode("utf-8"), object_pairs_hook=_keep_duplicates)
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not UTF-8 text ({exc}); save the prompts file as UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not valid JSON ({exc})") from None
    except RecursionError:
        raise InputError(f"{p}: JSON nested too deeply to be a prompts file") from None
    duplicate = _first_duplicate(data, "")
    if duplicate is not None:  # JSON readers keep only the last value of a repeated key: refuse the ambiguity
        where, key = duplicate
        raise InputError(f"{p}: key {key!r} appears twice in {where or 'the top-level object'}; keep one of them")
    return parse_prompts(data, str(p), p.parent)


MAX_MASK_LABELS = 1000


def _mask_prompt(session: Any, prompts: PromptSet, obj: ObjectPrompts, mk: dict[str, Any],
                 labelmaps: dict[Any, tuple[Any, np.ndarray]]) -> tuple[np.ndarray, int]:
    """Read one mask prompt's labelmap (once per file: ``labelmaps`` caches them with their values) and
    check that it is one and that the slice holds the object."""
    from .io import read_labelmap

    where = f"{prompts.source}: object {obj.name!r}, mask {mk['file']}"
    s = mk["slice"]
    if not 0 <= s < session.num_slices:
        raise InputError(f"{where}: slice {s} does not exist: the {session.axis.axis} axis has slices 0..{session.num_slices - 1}")
    if mk["file"] not in labelmaps:
        lab = read_labelmap(mk["file"], reference=session.volume)
        labelmaps[mk["file"]] = (lab, np.unique(lab.array))
    lab, values = labelmaps[mk["file"]]
    if values.size > MAX_MASK_LABELS or (values.size and values.min() < 0):
        raise InputError(
            f"{where}: not a labelmap ({values.size} distinct values, from {values.min()} to {values.max()}); "
            "give a segmentation whose voxels are label values, not an image"
        )
    value = mk["value"]
    if value is not None and value not in set(values.tolist()):
        present = ", ".join(str(v) for v in values.tolist() if v != 0) or "none"
        raise InputError(f"{where}: value {value} does not occur in the file (label values present: {present})")
    mask = lab.array == value if value is not None else lab.array > 0
    idx, _ = session.input_region(s)
    if not mask[idx].any():
        raise InputError(
            f"{where}: the mask is empty on {session.axis.axis} slice {s}; pick a slice where the object is labelled"
        )
    return mask, s


def plan_prompts(session: Any, prompts: PromptSet) -> list[tuple[str, Any]]:
    """Check every prompt against the session's volume (cheap: no model work) and read mask files.

    Returns the plan that :func:`apply_prompts` sends to the session.
    """
    planned: list[tuple[str, Any]] = []
    labelmaps: dict[Any, tuple[Any, np.ndarray]] = {}  # each mask file read once
    for obj in prompts.objects:
        by_slice: dict[int, list[tuple[list[float], bool]]] = {}
        for pos, positive in obj.points:
            s = session.slice_of(pos, prompts.coordinates)
            by_slice.setdefault(s, []).append((pos, positive))
        for box in obj.boxes:
            session.box_on_slice(box, coords=prompts.coordinates)
            planned.append(("box", (obj, box)))
        for s, pts in sorted(by_slice.items()):
            if not any(positive for _, positive in pts) and not (obj.boxes or obj.masks or obj.lassos or any(p for _, p in obj.scribbles)):
                raise InputError(f"{prompts.source}: object {obj.name!r} has only negative points on slice {s}; add a positive point or a box")
            planned.append(("points", (obj, s, pts)))
        for m, (pts, positive) in enumerate(obj.scribbles):
            with _naming(f"{prompts.source}: object {obj.name!r}, scribble {m + 1}"):
                session.scribble_on_slice(pts, positive, prompts.coordinates)
            planned.append(("scribble", (obj, pts, positive)))
        for mk in obj.masks:
            mask, s = _mask_prompt(session, prompts, obj, mk, labelmaps)
            planned.append(("mask", (obj, mask, s)))
        for m, pts in enumerate(obj.lassos):
            with _naming(f"{prompts.source}: object {obj.name!r}, lasso {m + 1}"):
                session.lasso_on_slice(pts, prompts.coordinates)
            planned.append(("lasso", (obj, pts)))
    return planned


@contextlib.contextmanager
def _naming(where: str) -> Iterator[None]:
    """An InputError raised inside names the prompts file's entry it is about."""
    try:
        yield
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def apply_prompts(session: Any, prompts: PromptSet, planned: list[tuple[str, Any]]) -> None:
    """Send a plan from :func:`plan_prompts` to the session, then set names and colours."""
    for kind, item in planned:
        if kind == "box":
            obj, box = item
            session.add_box(obj.label, box, coords=prompts.coordinates, name=obj.name)
        elif kind == "points":
            obj, s, pts = item
            session.add_points(obj.label, [p for p, _ in pts], [int(v) for _, v in pts], coords=prompts.coordinates, slice_index=s, name=obj.name)
        elif kind == "scribble":
            obj, pts, positive = item
            session.add_scribble(obj.label, pts, positive, coords=prompts.coordinates, name=obj.name)
        elif kind == "lasso":
            obj, pts = item
            session.add_lasso(obj.label, pts, coords=prompts.coordinates, name=obj.name)
        else:
            obj, mask, s = item
            session.add_mask(obj.label, mask, s, name=obj.name)
    for obj in prompts.objects:
        session.add_object(obj.label, obj.name, obj.color)
