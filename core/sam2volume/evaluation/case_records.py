"""A finished case's record (``cases/CASE.json``) and the checks a resumed run makes before trusting one.

A record is kept only when it reads back as the record of *this* case under *these* settings: its case
id is the case's, it carries the digest of the run's settings, and its rows have the types the tables
need (one row per engine and scored object, numbers where numbers belong). Anything else (a record
copied from another case or another run, a hand-edited or damaged one) is redone, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from ..run_folder import ResumeWarning

__all__ = ["ResumeWarning", "read_record", "record_problem", "settings_digest"]

SCORE_NUMBERS = ("dice", "iou", "nsd", "hd95", "assd")  # null in JSON where undefined (NaN)
SLICE_NUMBERS = ("dice", "consistency_pred", "consistency_ref")


def settings_digest(settings: dict[str, Any]) -> str:
    """sha256 of the settings as they read back from run.json (key order does not matter)."""
    text = json.dumps(json.loads(json.dumps(settings, default=str)), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any, nullable: bool = False) -> bool:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return nullable
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _row_problem(row: Any, case_id: str, engines: list[str], objects: list[str], numbers: tuple[str, ...], ints: tuple[str, ...],
                 what: str) -> str | None:
    if not isinstance(row, dict):
        return f"a {what} row is {type(row).__name__}, not an object"
    if row.get("case") != case_id:
        return f"a {what} row is for case {row.get('case')!r}"
    if row.get("engine") not in engines or row.get("object") not in objects:
        return f"a {what} row is for engine {row.get('engine')!r}, object {row.get('object')!r}, which this run does not score"
    for key in numbers:
        if key not in row or not _is_number(row[key], nullable=True):
            return f"{what} row {row['engine']}/{row['object']} has {key} {row.get(key)!r}, not a number or null"
    for key in ints:
        if not _is_int(row.get(key)) or row[key] < 0:
            return f"{what} row {row['engine']}/{row['object']} has {key} {row.get(key)!r}, not a count"
    return None


def record_problem(record: Any, case_id: str, digest: str, engines: list[str], objects: list[str]) -> str | None:
    """Why ``record`` is not a usable record of case ``case_id`` under the settings ``digest``; None if it is."""
    if not isinstance(record, dict):
        return f"it holds a JSON {type(record).__name__}, not a case record"
    if record.get("case") != case_id:
        return f"it is the record of case {record.get('case')!r}"
    if record.get("settings_digest") != digest:
        return "it was written under other settings (or by an older version: no settings digest)"
    if record.get("status") not in ("done", "error"):
        return f"its status is {record.get('status')!r}, not 'done' or 'error'"
    if record["status"] == "error" and not isinstance(record.get("error"), str):
        return "it is an error record without an error message"
    lists = {key: record.get(key, []) for key in ("rows", "slices", "absent", "warnings")}
    for key, value in lists.items():
        if not isinstance(value, list):
            return f'its "{key}" is {type(value).__name__}, not a list'
    if not all(isinstance(a, str) and a in objects for a in lists["absent"]):
        return f'its "absent" list {lists["absent"]!r} names objects this run does not score'
    if not all(isinstance(w, str) for w in lists["warnings"]):
        return 'its "warnings" are not all text'
    for key in ("seconds", "engine_errors"):
        if not isinstance(record.get(key, {}), dict):
            return f'its "{key}" is {type(record.get(key)).__name__}, not an object'
    if not all(_is_number(v) for v in record.get("seconds", {}).values()):
        return 'its "seconds" are not all numbers'
    for row in lists["rows"]:
        problem = _row_problem(row, case_id, engines, objects, SCORE_NUMBERS + ("tolerance_mm",), ("ref_voxels", "pred_voxels", "corrections"), "score")
        if problem is None and not all(isinstance(row.get(k), bool) for k in ("pred_empty", "ref_empty")):
            problem = f"score row {row['engine']}/{row['object']} has pred_empty/ref_empty that are not true/false"
        if problem is not None:
            return problem
    for row in lists["slices"]:
        problem = _row_problem(row, case_id, engines, objects, SLICE_NUMBERS + ("distance_mm",), ("slice", "distance_slices", "ref_pixels", "pred_pixels"), "slice")
        if problem is not None:
            return problem
    if record["status"] == "done":  # every engine that ran scored every object present, once
        scored = [(r["engine"], r["object"]) for r in lists["rows"]]
        if len(set(scored)) != len(scored):
            return "it scores an engine and object twice"
        failed = record.get("engine_errors", {})
        expected = {(e, o) for e in engines if e not in failed for o in objects if o not in lists["absent"]}
        if set(scored) != expected:
            missing = sorted(expected - set(scored))
            return f"its rows do not cover the run's engines and objects (missing {missing})" if missing else \
                "its rows score engines or objects the case should not have"
    return None


def read_record(path: Path, case_id: str, digest: str, engines: list[str], objects: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) for a usable record; (None, why) for one that must be redone; (None, None) when there is none."""
    if not path.is_file():
        return None, ("it is not a file" if path.exists() else None)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"it cannot be read ({type(exc).__name__}: {str(exc)[:200]})"
    problem = record_problem(record, case_id, digest, engines, objects)
    return (None, problem) if problem else (record, None)
