"""A run folder's tables, plots and report, and the comparison of two runs."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io.atomic import NULL_NOTE, atomic_output, write_json_atomic, write_text_atomic
from ..metrics import MetricAccumulator, Scores
from .drift import DRIFT_COLUMNS, SUMMARY_COLUMNS, drift_plot, summarise_drift

SCORE_COLUMNS = ("case", "engine", "object", "dice", "iou", "nsd", "hd95", "assd", "tolerance_mm", "pred_empty", "ref_empty",
                 "distances_defined", "ref_voxels", "pred_voxels", "key_slices", "corrections")


def _csv_text(rows: list[dict[str, Any]], columns: list[str] | tuple[str, ...]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) and not math.isnan(v) else ("nan" if isinstance(v, float) else v)) for k, v in r.items()})
    return buf.getvalue()


def load_records(run_dir: Path, case_ids: list[str] | None = None) -> list[dict[str, Any]]:
    folder = run_dir / "cases"
    files = [folder / f"{c}.json" for c in case_ids] if case_ids is not None else sorted(folder.glob("*.json"))
    return nan_for_null([json.loads(f.read_text(encoding="utf-8")) for f in files if f.is_file()])


def nan_for_null(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for rec in records:  # JSON holds undefined metrics as null: back to NaN for the statistics
        for row in rec.get("rows", []) + rec.get("slices", []):
            for key in ("dice", "iou", "nsd", "hd95", "assd", "consistency_pred", "consistency_ref"):
                if key in row and row[key] is None:
                    row[key] = float("nan")
    return records


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per engine, per object: cases and mean/sd/median of each metric (MetricAccumulator)."""
    out: dict[str, dict[str, Any]] = {}
    for engine in dict.fromkeys(r["engine"] for r in rows):
        acc = MetricAccumulator()
        for r in rows:
            if r["engine"] == engine:
                sc = Scores(*(r[k] for k in ("dice", "iou", "nsd", "hd95", "assd", "pred_empty", "ref_empty", "tolerance_mm")))
                acc.add(r["case"], r["object"], sc)
        out[engine] = acc.summary()
    return out


def _summary_rows(summary: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    cols = ["engine", "object", "cases"]
    rows = []
    for engine, objs in summary.items():
        for obj, entry in objs.items():
            row: dict[str, Any] = {"engine": engine, "object": obj, "cases": entry["cases"]}
            for m in MetricAccumulator.METRICS:
                for stat in ("mean", "sd", "median"):
                    row[f"{m}_{stat}"] = entry[m][stat]
                row[f"{m}_nan_cases"] = entry[m]["nan_cases"]
            rows.append(row)
    for m in MetricAccumulator.METRICS:
        cols += [f"{m}_mean", f"{m}_sd", f"{m}_median", f"{m}_nan_cases"]
    return rows, cols


def boxplot(rows: list[dict[str, Any]], path: Path, metric: str = "dice", title: str = "") -> Path | None:
    """Box plot of ``metric`` per object, one box per engine side by side, for a paper: every case drawn
    as a point, n under each object, one colour per object (engines by hatching), legend outside."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objects = list(dict.fromkeys(r["object"] for r in rows))
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    width = 0.8 / len(engines)
    hatches = ["", "//", "..", "xx"]
    rng = np.random.default_rng(0)  # point jitter only: reproducible figures
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(objects) * len(engines) + 3), 4.8), dpi=110)
    counts = {}
    for e, engine in enumerate(engines):
        for i, o in enumerate(objects):
            data = [r[metric] for r in rows if r["engine"] == engine and r["object"] == o and not math.isnan(r[metric])]
            counts[(engine, o)] = len(data)
            if not data:
                continue
            pos = i + (e - (len(engines) - 1) / 2) * width
            color = plt.cm.tab20(i % 20)
            bp = ax.boxplot([data], positions=[pos], widths=width * 0.85, patch_artist=True, manage_ticks=False, showfliers=False)
            for box in bp["boxes"]:
                box.set_facecolor(color)
                box.set_alpha(0.45)
                box.set_hatch(hatches[e % len(hatches)])
            ax.scatter(pos + rng.uniform(-width * 0.25, width * 0.25, len(data)), data, s=9, color=color, edgecolors="black",
                       linewidths=0.3, zorder=3)
    for e, engine in enumerate(engines):
        ax.bar([0], [0], width=0, color="white", edgecolor="black", hatch=hatches[e % len(hatches)], label=engine)
    ax.set_xticks(range(len(objects)))
    labels = [f"{o}\nn=" + "/".join(str(counts.get((e, o), 0)) for e in engines) for o in objects]
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(metric)
    if metric in ("dice", "iou", "nsd"):
        ax.set_ylim(-0.02, 1.02)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(title or f"{metric} per object", fontsize=9)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def write_tables(run_dir: Path, case_ids: list[str], extra: dict[str, Any], records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """scores.csv, summary.csv, plots and report.json from the finished cases' records (``records``: those
    already read and checked, else every record of ``case_ids`` in the folder)."""
    records = load_records(run_dir, case_ids) if records is None else nan_for_null(records)
    rows = [r for rec in records for r in rec.get("rows", [])]
    write_text_atomic(run_dir / "scores.csv", _csv_text(rows, SCORE_COLUMNS))
    summary = summarise(rows)
    srows, scols = _summary_rows(summary)
    write_text_atomic(run_dir / "summary.csv", _csv_text(srows, scols))
    plot = boxplot(rows, run_dir / "plots" / "dice_boxplot.png", "dice", title=f"Dice per object ({extra.get('settings', {}).get('protocol', {}).get('name', '')})")
    slice_rows = [r for rec in records for r in rec.get("slices", [])]
    write_text_atomic(run_dir / "drift.csv", _csv_text(slice_rows, DRIFT_COLUMNS))
    drift = summarise_drift(slice_rows)
    write_text_atomic(run_dir / "drift_summary.csv", _csv_text(drift, SUMMARY_COLUMNS))
    drift_png = drift_plot(drift, run_dir / "plots" / "drift.png")
    done = {r["case"] for r in records}
    report = {
        **extra,
        "cases": {
            "total": len(case_ids),
            "finished": len(done),
            "not_finished": [c for c in case_ids if c not in done],
            "errors": [{"case": r["case"], "error": r["error"]} for r in records if r.get("status") == "error"],
            "engine_errors": [{"case": r["case"], **r["engine_errors"]} for r in records if r.get("engine_errors")],
            "objects_absent": [{"case": r["case"], "objects": r["absent"]} for r in records if r.get("absent")],
            "warnings": [{"case": r["case"], "warnings": r["warnings"]} for r in records if r.get("warnings")],
            "skipped_by_reader": extra.get("dataset", {}).get("skipped", []),
        },
        "seconds_per_case": {r["case"]: r.get("seconds", {}) for r in records},
        "summary": summary,
        "files": {"scores": "scores.csv", "summary": "summary.csv", "boxplot": str(plot.relative_to(run_dir)) if plot else None,
                  "drift": "drift.csv", "drift_summary": "drift_summary.csv",
                  "drift_plot": str(drift_png.relative_to(run_dir)) if drift_png else None,
                  "overlays": sorted(str(p.relative_to(run_dir)) for p in (run_dir / "overlays").glob("*.png"))},
    }
    write_json_atomic(run_dir / "report.json", {**report, "null_values": NULL_NOTE})
    return report


def read_scores(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "scores.csv"
    if not path.is_file():
        raise InputError(f"{run_dir}: no scores.csv; is it a run folder written by `sam2volume evaluate`?")
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for m in MetricAccumulator.METRICS:
            r[m] = float(r[m])
    return rows


def run_settings(run_dir: Path) -> dict[str, Any]:
    """The settings in a run folder's run.json ({} without one); a file that is not a run's settings stops with its name."""
    f = run_dir / "run.json"
    if not f.is_file():
        return {}
    try:
        settings = json.loads(f.read_text(encoding="utf-8")).get("settings", {})
        if not isinstance(settings, dict):
            raise ValueError("no settings object")
    except (OSError, ValueError, AttributeError, RecursionError):
        raise InputError(f"{f} is corrupt; cannot tell what the run measured (restore it or rerun the evaluation)") from None
    return settings


def _main_engine(run_dir: Path) -> str:
    return str(run_settings(run_dir).get("engine", "sam2"))


def compare_runs(run_a: str | Path, run_b: str | Path, *, metric: str = "dice", engine_a: str | None = None, engine_b: str | None = None) -> list[dict[str, Any]]:
    """Per object, on the cases both runs scored: mean of A and B, mean difference B - A, wins,
    and the two-sided Wilcoxon signed-rank p-value (scipy) of the paired differences."""
    from scipy.stats import wilcoxon

    if metric not in MetricAccumulator.METRICS:
        raise InputError(f"unknown metric {metric!r}; use one of {', '.join(MetricAccumulator.METRICS)}")
    a_dir, b_dir = Path(run_a), Path(run_b)
    ea, eb = engine_a or _main_engine(a_dir), engine_b or _main_engine(b_dir)
    a = {(r["case"], r["object"]): r[metric] for r in read_scores(a_dir) if r["engine"] == ea}
    b = {(r["case"], r["object"]): r[metric] for r in read_scores(b_dir) if r["engine"] == eb}
    if not a or not b:
        raise InputError(f"no rows for engine {ea!r} in {a_dir} or {eb!r} in {b_dir}; name them with --engine-a/--engine-b")
    higher_better = metric in ("dice", "iou", "nsd")
    out = []
    for obj in dict.fromkeys(k[1] for k in a):
        keys = [k for k in a if k[1] == obj and k in b and not (math.isnan(a[k]) or math.isnan(b[k]))]
        if not keys:
            continue
        va, vb = np.array([a[k] for k in keys]), np.array([b[k] for k in keys])
        d = vb - va
        better = d > 0 if higher_better else d < 0
        worse = d < 0 if higher_better else d > 0
        p = float(wilcoxon(va, vb).pvalue) if len(keys) >= 2 and np.any(d != 0) else math.nan
        out.append({"object": obj, "cases": len(keys), f"{metric}_a": float(va.mean()), f"{metric}_b": float(vb.mean()),
                    "difference": float(d.mean()), "b_better": int(better.sum()), "b_worse": int(worse.sum()),
                    "ties": int((d == 0).sum()), "wilcoxon_p": p})
    if not out:
        raise InputError(f"{a_dir} and {b_dir} share no (case, object) pair with a finite {metric}")
    return out


COMPARED_SETTINGS = ("dataset", "protocol", "tolerances", "objects", "axis", "stop_after", "seed", "window", "config")


def run_differences(run_a: str | Path, run_b: str | Path, metric: str = "dice") -> list[str]:
    """What differs between two runs' settings and cases, one line each, so a comparison says what it
    compares. NSD under different tolerance tables measures different things: that is an error."""
    a_dir, b_dir = Path(run_a), Path(run_b)
    sa, sb = run_settings(a_dir), run_settings(b_dir)
    notes = [f"{k} differs: A {sa.get(k)!r}, B {sb.get(k)!r}" for k in COMPARED_SETTINGS if sa.get(k) != sb.get(k)]
    if metric == "nsd" and sa.get("tolerances") != sb.get("tolerances"):
        raise InputError(f"NSD of {a_dir} and {b_dir} uses different tolerance tables ({sa.get('tolerances')!r} vs "
                         f"{sb.get('tolerances')!r}); compare Dice, or rerun one with --tolerances {sa.get('tolerances')}")
    ca = {r["case"] for r in read_scores(a_dir)}
    cb = {r["case"] for r in read_scores(b_dir)}
    if ca != cb:
        notes.append(f"cases differ: {len(ca & cb)} shared, {len(ca - cb)} only in A, {len(cb - ca)} only in B (only shared cases are paired)")
    return notes


def format_comparison(rows: list[dict[str, Any]], metric: str, a: str, b: str) -> str:
    lines = [f"A = {a}", f"B = {b}", f"{'object':<26}{'cases':>6}{'A':>9}{'B':>9}{'B-A':>9}{'B better':>10}{'B worse':>9}{'p':>9}"]
    for r in rows:
        lines.append(f"{r['object']:<26}{r['cases']:>6}{r[f'{metric}_a']:>9.3f}{r[f'{metric}_b']:>9.3f}{r['difference']:>+9.3f}"
                     f"{r['b_better']:>10}{r['b_worse']:>9}{r['wilcoxon_p']:>9.3g}")
    return "\n".join(lines)


def write_comparison(rows: list[dict[str, Any]], path: str | Path) -> None:
    write_text_atomic(path, _csv_text(rows, list(rows[0])))
