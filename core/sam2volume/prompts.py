"""The prompts file: objects with names and label values, and their points, boxes and masks.

Format (JSON)::

    {
      "axis": "axial",                 # optional: axial | coronal | sagittal
      "coordinates": "voxel",          # voxel (i, j, k of the input file) | lps | ras (mm)
      "objects": [
        {"name": "liver", "label": 1, "color": [0.9, 0.5, 0.4],
         "points": [{"position": [60, 50, 14], "positive": true}, ...],
         "boxes":  [[[45, 27, 14], [104, 85, 14]]],          # two opposite corners on one slice
         "masks":  [{"file": "liver.nii.gz", "value": 5, "slice": 14}]}   # a labelmap on the image grid
      ]
    }

Points of one object on the same slice form one prompt. Every value is checked before any model
work starts, and errors name the object and the entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError

COORDINATES = ("voxel", "lps", "ras")


@dataclass
class ObjectPrompts:
    name: str
    label: int
    color: list[float] | None = None
    points: list[tuple[list[float], bool]] = field(default_factory=list)
    boxes: list[list[list[float]]] = field(default_factory=list)
    masks: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PromptSet:
    objects: list[ObjectPrompts]
    coordinates: str = "voxel"
    axis: str | None = None
    source: str = "prompts"


def _fail(where: str, msg: str) -> InputError:
    return InputError(f"{where}: {msg}")


def _vec3(value: Any, where: str) -> list[float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise _fail(where, f"expected a 3D coordinate [x, y, z], got {value!r}")
    return [float(v) for v in value]


def parse_prompts(data: dict[str, Any], source: str = "prompts", base_dir: Path | None = None) -> PromptSet:
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list) or not data["objects"]:
        raise _fail(source, 'needs a non-empty "objects" list (see README: prompts file format)')
    coords = str(data.get("coordinates", "voxel")).lower()
    if coords not in COORDINATES:
        raise _fail(source, f'"coordinates" must be one of {", ".join(COORDINATES)}, got {coords!r}')
    objects: list[ObjectPrompts] = []
    labels: set[int] = set()
    for n, obj in enumerate(data["objects"]):
        where = f"{source}: object {n + 1}"
        if not isinstance(obj, dict):
            raise _fail(where, "must be an object with name, label and prompts")
        name = str(obj.get("name") or f"object_{n + 1}")
        where = f"{source}: object {name!r}"
        label = obj.get("label", n + 1)
        if not isinstance(label, int) or isinstance(label, bool) or not 0 < label < 65536:
            raise _fail(where, f"label must be an integer 1..65535, got {label!r}")
        if label in labels:
            raise _fail(where, f"label {label} is used by two objects")
        labels.add(label)
        op = ObjectPrompts(name, label, obj.get("color"))
        for m, p in enumerate(obj.get("points", [])):
            if isinstance(p, dict):
                op.points.append((_vec3(p.get("position"), f"{where}, point {m + 1}"), bool(p.get("positive", True))))
            else:
                op.points.append((_vec3(p, f"{where}, point {m + 1}"), True))
        for m, b in enumerate(obj.get("boxes", [])):
            corners = b.get("corners") if isinstance(b, dict) else b
            if not (isinstance(corners, list) and len(corners) == 2):
                raise _fail(f"{where}, box {m + 1}", f"expected two corners [[x,y,z],[x,y,z]], got {b!r}")
            op.boxes.append([_vec3(c, f"{where}, box {m + 1}") for c in corners])
        for m, mk in enumerate(obj.get("masks", [])):
            if not isinstance(mk, dict) or "file" not in mk or "slice" not in mk:
                raise _fail(f"{where}, mask {m + 1}", 'expected {"file": ..., "slice": N, "value": V}')
            path = Path(mk["file"])
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            op.masks.append({"file": path, "slice": int(mk["slice"]), "value": mk.get("value")})
        if not (op.points or op.boxes or op.masks):
            raise _fail(where, "has no points, boxes or masks")
        objects.append(op)
    return PromptSet(objects, coords, data.get("axis"), source)


def load_prompts(path: str | Path) -> PromptSet:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: prompts file not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not valid JSON ({exc})") from None
    return parse_prompts(data, str(p), p.parent)


def plan_prompts(session: Any, prompts: PromptSet) -> list[tuple[str, Any]]:
    """Check every prompt against the session's volume (cheap: no model work) and read mask files.

    Returns the plan that :func:`apply_prompts` sends to the session.
    """
    from .io import read_labelmap

    planned: list[tuple[str, Any]] = []
    for obj in prompts.objects:
        by_slice: dict[int, list[tuple[list[float], bool]]] = {}
        for pos, positive in obj.points:
            s = session.slice_of(pos, prompts.coordinates)
            by_slice.setdefault(s, []).append((pos, positive))
        for box in obj.boxes:
            session.box_on_slice(box, coords=prompts.coordinates)
            planned.append(("box", (obj, box)))
        for s, pts in sorted(by_slice.items()):
            if not any(positive for _, positive in pts) and not obj.boxes and not obj.masks:
                raise InputError(f"{prompts.source}: object {obj.name!r} has only negative points on slice {s}; add a positive point or a box")
            planned.append(("points", (obj, s, pts)))
        for mk in obj.masks:
            lab = read_labelmap(mk["file"], reference=session.volume)
            value = mk["value"]
            mask = lab.array == value if value is not None else lab.array > 0
            session._check_slice(mk["slice"])
            planned.append(("mask", (obj, mask, mk["slice"])))
    return planned


def apply_prompts(session: Any, prompts: PromptSet, planned: list[tuple[str, Any]]) -> None:
    """Send a plan from :func:`plan_prompts` to the session, then set names and colours."""
    for kind, item in planned:
        if kind == "box":
            obj, box = item
            session.add_box(obj.label, box, coords=prompts.coordinates, name=obj.name)
        elif kind == "points":
            obj, s, pts = item
            session.add_points(obj.label, [p for p, _ in pts], [int(v) for _, v in pts], coords=prompts.coordinates, slice_index=s, name=obj.name)
        else:
            obj, mask, s = item
            session.add_mask(obj.label, mask, s, name=obj.name)
    for obj in prompts.objects:
        session.add_object(obj.label, obj.name, obj.color)
