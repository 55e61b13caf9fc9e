"""``sam2volume evaluate``: segment a dataset from simulated prompts and score it, resumably.

A run folder holds::

    run.json                 the settings (a resumed run must use the same ones)
    cases/CASE.json          one per finished case: scores, prompts sent, timings, warnings
    overlays/CASE_key.png    the key slice and the worst slice of each case (main engine)
    overlays/CASE_worst.png
    predictions/CASE.ENGINE.nii.gz   with save_predictions
    scores.csv               one row per case, engine and object
    summary.csv              mean, sd and median per engine and object
    report.json              versions, settings, seed, timings per case, skips and errors, summary
    plots/dice_boxplot.png   Dice per object, one box per engine

Every file is written to a temporary name and renamed; ``cases/CASE.json`` is written last, so a
run killed at any point loses at most the case in progress, and the next run with the same
settings skips finished cases. The classical baseline engine runs on the same prompts in every
run (the baseline row), unless it is the engine under test.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError, Sam2VolumeError, check_count
from ..io.atomic import NULL_NOTE, remove_partials, write_json_atomic
from ..run_folder import LOCK_NAME, check_folder, check_settings, folder_lock, make_writable_folder, take_part
from ..metrics import DEFAULT_TOLERANCE_MM, score
from .case_records import ResumeWarning, read_record, settings_digest
from .datasets import Case, Dataset, read_dataset
from .drift import slice_rows
from .protocols import Protocol, correct_object, key_slices, parse_protocol, prompt_object, rng_for
from .tables import write_tables
from .vocabulary import NSD_TOLERANCES_MM

ENGINES = ("sam2", "baseline")
RUN_SUBFOLDERS = ("cases", "overlays", "predictions", "plots")
RUN_FILES = ("run.json", "scores.csv", "summary.csv", "drift.csv", "drift_summary.csv", "report.json")


def resolve_tolerances(spec: str | float | None, dataset: Dataset) -> tuple[str, dict[str, float], float]:
    """(name, per-object table, default) from ``auto``, a table name or a number of mm."""
    spec = "auto" if spec is None else spec
    if isinstance(spec, (int, float)) or str(spec).replace(".", "", 1).isdigit():
        return f"{float(spec)} mm", {}, float(spec)
    key = str(spec).lower()
    if key == "auto":
        key = dataset.tolerances or "default"
    if key == "default":
        return f"default ({DEFAULT_TOLERANCE_MM} mm)", {}, DEFAULT_TOLERANCE_MM
    if key not in NSD_TOLERANCES_MM:
        raise InputError(f"unknown NSD tolerance table {spec!r}; use auto, default, a number of mm, or one of {', '.join(NSD_TOLERANCES_MM)}")
    return key, dict(NSD_TOLERANCES_MM[key]), DEFAULT_TOLERANCE_MM


class _Engines:
    """Builds one session per case and engine; the SAM2 predictor is built once and shared."""

    def __init__(self, config: Any, axis: str, window: str | None, predictor: Any = None):
        self.config, self.axis, self.window = config, axis, window
        self.predictor = predictor

    def session(self, name: str, volume: Any) -> Any:
        from ..client import RemoteEngine

        if isinstance(self.predictor, RemoteEngine):  # --server: every engine runs on the engine server
            return self.predictor.session(volume, self.axis, self.config if name == "sam2" else None, engine=name, window=self.window)
        if name == "baseline":
            from ..baseline import BaselineSession

            return BaselineSession(volume, self.axis, window=self.window)
        from ..session import Session

        s = Session(volume, self.axis, self.config, predictor=self.predictor, window=self.window)
        self.predictor = s.predictor
        return s


def _case_file(run_dir: Path, case_id: str) -> Path:
    return run_dir / "cases" / f"{case_id}.json"


def evaluate(
    dataset: str | Path | Dataset,
    protocol: str | Protocol,
    run_dir: str | Path,
    *,
    engine: str = "sam2",
    config: Any = None,
    layout: str = "auto",
    labels: str | Path | None = None,
    organs: list[str] | None = None,
    seed: int = 0,
    axis: str = "axial",
    stop_after: int | None = 3,
    window: str | None = None,
    tolerances: str | float | None = "auto",
    baseline: bool = True,
    overlays: bool = True,
    save_predictions: bool = False,
    limit: int | None = None,
    num_parts: int = 1,
    part_id: int = 0,
    ray: str | bool | None = None,
    ray_workers: int | None = None,
    ray_gpus_per_worker: float | None = None,
    progress: bool = False,
    on_case: Callable[[int, int, str], None] | None = None,
    predictor: Any = None,
    server: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Run a protocol over a dataset; returns the run report (also written to ``run_dir``).

    Everything (dataset layout, organs, protocol, engine, tolerances, an existing run's settings)
    is checked before any case is read.
    """
    from ..api import _versions
    from ..engine.config import EngineConfig
    from ..slicing import parse_axis

    check_count(limit, "limit", allow_none=True)
    take_part([], num_parts, part_id)  # checks the shard numbers before any work
    check_count(seed, "seed", minimum=0)
    check_count(stop_after, "stop_after", allow_none=True)
    proto = parse_protocol(protocol)
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    axis = parse_axis(axis)
    ds = dataset if isinstance(dataset, Dataset) else read_dataset(dataset, layout, labels)
    if organs:
        missing = [o for o in organs if o not in ds.objects]
        if missing:
            raise InputError(f"organ(s) {', '.join(missing)} not in dataset {ds.name!r}; it has {', '.join(ds.objects)}")
        objects = {o: ds.objects[o] for o in organs}
    else:
        objects = dict(ds.objects)
    tol_name, tol_table, tol_default = resolve_tolerances(tolerances, ds)
    cfg = config if config is not None else EngineConfig()
    engines = [engine] + (["baseline"] if baseline and engine != "baseline" else [])
    all_cases = ds.cases[:limit] if limit else list(ds.cases)
    cases = take_part(all_cases, num_parts, part_id)  # shards merge in one folder

    run_dir = Path(run_dir)
    settings = {
        "dataset": str(Path(ds.root).resolve()),  # the same dataset by a relative path resumes
        "layout": ds.layout,
        "protocol": proto.as_dict(),
        "engine": engine,
        "engines": engines,
        "config": cfg.to_dict() if engine == "sam2" else None,
        "seed": int(seed),
        "axis": axis,
        "stop_after": stop_after,
        "window": window,
        "objects": {k: list(v) for k, v in objects.items()},
        "tolerances": tol_name,
        "limit": limit,
    }
    settings_file = run_dir / "run.json"
    check_folder(run_dir, "run folder", RUN_SUBFOLDERS, RUN_FILES)
    if settings_file.is_file():
        check_settings(settings_file, settings, "run")
    elif run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir()):
        raise InputError(f"{run_dir} is not empty and holds no run of ours (no run.json); give a new or empty -o folder")
    make_writable_folder(run_dir, "run folder")
    if server is not None:  # sessions on a `sam2volume serve` engine server (``server`` URL, ``token``)
        from ..client import RemoteEngine

        predictor = RemoteEngine(server, token)
    with folder_lock(run_dir, f"run folder {run_dir}", shard=num_parts > 1):
        try:
            ray_opts = None if ray in (None, False) else {"address": None if ray is True else str(ray), "workers": ray_workers,
                                                          "gpus_per_worker": ray_gpus_per_worker}
            return _evaluate_in(run_dir, settings_file, settings, cases, [c.case_id for c in all_cases], ds, objects, proto, engine, engines, cfg, axis, window,
                                predictor, seed, stop_after, tol_table, tol_default, overlays, save_predictions, progress, on_case,
                                ray_opts)
        finally:
            if server is not None:
                predictor.close()


def _trusted_records(run_dir: Path, case_ids: list[str], digest: str, engines: list[str], objects: list[str],
                     redo: bool) -> tuple[dict[str, dict[str, Any]], list[dict[str, str]]]:
    """The records of ``case_ids`` that are this run's (see case_records), and why each other one is not.
    Each distrusted record is warned about once (ResumeWarning): redone by this run (``redo``) or by its shard's."""
    trusted, rejected = {}, []
    for case_id in case_ids:
        if redo and _case_file(run_dir, case_id).is_dir():
            raise InputError(f"{_case_file(run_dir, case_id)} is a folder where case {case_id!r} keeps its record; move it away or give a new -o folder")
        record, why = read_record(_case_file(run_dir, case_id), case_id, digest, engines, objects)
        if record is not None:
            trusted[case_id] = record
        elif why is not None:
            rejected.append({"case": case_id, "reason": why})
            then = "redoing the case" if redo else "not counted; the run of its shard redoes it"
            warnings.warn(f"{_case_file(run_dir, case_id)}: record not trusted, {why}; {then}", ResumeWarning, stacklevel=4)
    return trusted, rejected


def _evaluate_in(run_dir, settings_file, settings, cases, all_ids, ds, objects, proto, engine, engines, cfg, axis, window,
                 predictor, seed, stop_after, tol_table, tol_default, overlays, save_predictions, progress, on_case, ray_opts=None):
    from ..api import _versions, model_record
    from ..client import RemoteEngine

    cleaned = [str(p.relative_to(run_dir)) for p in remove_partials(run_dir, recursive=True)]
    if not settings_file.is_file():
        write_json_atomic(settings_file, {"settings": settings, "versions": _versions(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")})

    digest = settings_digest(settings)
    organs = list(objects)
    kept, redone = _trusted_records(run_dir, [c.case_id for c in cases], digest, engines, organs, redo=True)
    todo = [c for c in cases if c.case_id not in kept
            or (save_predictions and not all((run_dir / "predictions" / f"{c.case_id}.{e}.nii.gz").is_file() for e in engines))]
    if engine == "sam2" and predictor is None and todo and ray_opts is None:
        from ..engine.predictor import build_predictor

        predictor = build_predictor(cfg, progress=progress)  # a missing checkpoint fails here, once
    factory = _Engines(cfg, axis, window, predictor)
    skipped_done = len(cases) - len(todo)
    bar = None
    if progress:
        from ..progress import progress_bar

        bar = progress_bar(len(cases), initial=skipped_done, desc="evaluate", unit="case")
    t_run = time.perf_counter()
    case_kwargs = dict(ds=ds, objects=objects, proto=proto, engines=engines, seed=seed, stop_after=stop_after, tol_table=tol_table,
                       tol_default=tol_default, overlays=overlays, save_predictions=save_predictions)

    def finished(case: Case, record: dict[str, Any], worker: str | None = None) -> None:
        if worker is not None:
            record["worker"] = worker
        write_json_atomic(_case_file(run_dir, case.case_id), {**record, "settings_digest": digest, "null_values": NULL_NOTE})
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(case.case_id)

    executor: dict[str, Any] = {"executor": "local"}
    if ray_opts is not None and todo:
        from .distributed import engine_wants_gpu, run_cases

        if engine == "sam2" and predictor is not None:
            raise InputError("--ray builds the model on each worker; it cannot be combined with a prebuilt predictor or --server")
        executor = run_cases(ray_opts["address"], todo, ((cfg, axis, window, None),), case_kwargs, run_dir, finished,
                             workers=ray_opts["workers"], gpus_per_worker=ray_opts["gpus_per_worker"],
                             wants_gpu=engine_wants_gpu(engine, cfg))
    else:
        for n, case in enumerate(todo):
            if on_case is not None:
                on_case(skipped_done + n, len(cases), case.case_id)
            finished(case, _run_case(case, factory=factory, run_dir=run_dir, **case_kwargs))
    if bar is not None:
        bar.close()
    # the tables cover every case of the run: the last shard to finish writes the merged tables
    records, ignored = _trusted_records(run_dir, all_ids, digest, engines, organs, redo=False)
    return write_tables(run_dir, all_ids, records=list(records.values()), extra={
        "command": "evaluate",
        "versions": _versions(),
        "settings": settings,
        "protocol": proto.as_dict(),
        "dataset": ds.summary(),
        "resumed": {"cases_already_done": skipped_done, "partial_files_removed": cleaned, "cases_redone": redone,
                    "records_not_counted": ignored},
        "seconds_this_invocation": round(time.perf_counter() - t_run, 3),
        "executor": executor,
        "reproduce": model_record(cfg, engine, predictor.url if isinstance(predictor, RemoteEngine) else None),
    })


def _save_prediction(result: Any, path: Path, label_of: dict[str, int], objects: dict[str, tuple[int, ...]], dataset: str) -> None:
    """A prediction in the dataset's own label ids (BTCV's liver is 6), with a names sidecar.

    Where an object is a region of several ids (KiTS' kidney+masses) or two objects share an id, one
    labelmap cannot hold the dataset's ids: the session's labels (1..N) are written and the sidecar says so."""
    from ..io import write_labelmap
    from ..io.writers import write_names_sidecar

    ids = {organ: tuple(objects[organ]) for organ in label_of}
    own = all(len(v) == 1 for v in ids.values()) and len({v[0] for v in ids.values()}) == len(ids)
    value_of = {organ: (ids[organ][0] if own else label_of[organ]) for organ in label_of}
    array = np.zeros(result.shape, dtype=np.uint16 if max(value_of.values(), default=0) > 255 else np.uint8)
    for organ, label in label_of.items():
        array[result.array == label] = value_of[organ]
    segments = [{"label": value_of[o], "name": o, "dataset_ids": list(ids[o])} for o in label_of]
    write_labelmap(result.with_array(array, segments=segments), path)
    write_names_sidecar(path, segments, dataset=dataset, label_ids="dataset" if own else "session (1..N): the dataset's objects are regions of several ids")


def _run_case(
    case: Case,
    *,
    ds: Dataset,
    objects: dict[str, tuple[int, ...]],
    proto: Protocol,
    engines: list[str],
    factory: _Engines,
    seed: int,
    stop_after: int | None,
    tol_table: dict[str, float],
    tol_default: float,
    run_dir: Path,
    overlays: bool,
    save_predictions: bool,
) -> dict[str, Any]:
    from ..io import read_labelmap, read_volume

    record: dict[str, Any] = {"case": case.case_id, "image": str(case.image), "label": str(case.label), "modality": case.modality,
                              "status": "done", "rows": [], "slices": [], "absent": [], "warnings": [], "prompts": {}, "corrections": {}, "seconds": {}}
    t0 = time.perf_counter()
    try:
        vol = read_volume(case.image)
        if case.modality != "unknown":
            vol.meta["modality"] = case.modality
        lab = read_labelmap(case.label, reference=vol)
    except Sam2VolumeError as exc:
        record.update(status="error", error=f"{type(exc).__name__}: {exc}")
        return record
    record["seconds"]["read"] = round(time.perf_counter() - t0, 3)
    known = {v for ids in (ds.objects.values()) for v in ids}
    present = set(np.unique(lab.array).astype(int).tolist()) - {0}
    unmapped = sorted(present - known)
    if unmapped:
        record["warnings"].append(f"label values {unmapped} are not in the dataset's label map; ignored")

    refs: dict[str, np.ndarray] = {}
    for organ, ids in objects.items():
        ref = np.isin(lab.array, ids)
        if ref.any():
            refs[organ] = ref
        else:
            record["absent"].append(organ)  # documented skip: nothing to prompt from, not scored
    if not refs:
        record["warnings"].append("none of the objects is in this case's reference: nothing scored")
        return record
    label_of = {organ: n + 1 for n, organ in enumerate(refs)}

    ref_frames: dict[str, np.ndarray] = {}
    main_result = None
    main_session = None
    for eng in engines:
        t = time.perf_counter()
        try:
            session = factory.session(eng, vol)
            if not ref_frames:
                ref_frames = {organ: session.frames_of(ref) for organ, ref in refs.items()}
            sent = {}
            for organ, label in label_of.items():
                sent[organ] = prompt_object(session, label, organ, ref_frames[organ], proto, rng_for(seed, case.case_id, organ))
            session.propagate("both", stop_after=stop_after)
            corrections: dict[str, list[Any]] = {organ: [] for organ in label_of}
            for _ in range(proto.corrections):
                for organ, label in label_of.items():
                    done = correct_object(session, label, ref_frames[organ], stop_after=stop_after)
                    if done is not None:
                        corrections[organ].append(done)
            result = session.result()
        except Sam2VolumeError as exc:
            record["warnings"].append(f"{eng}: {type(exc).__name__}: {exc}")
            record.setdefault("engine_errors", {})[eng] = str(exc)
            continue
        seconds = time.perf_counter() - t
        record["seconds"][eng] = round(seconds, 3)
        record["prompts"][eng] = sent
        record["corrections"][eng] = corrections
        slice_mm = float(vol.spacing[session.voxel_axis])
        for organ, label in label_of.items():
            pred = result.array == label
            keys = key_slices(ref_frames[organ], proto)
            prompted = keys + [c["slice"] for c in corrections[organ]]
            record["slices"].extend(slice_rows(case.case_id, eng, organ, session.frames_of(pred), ref_frames[organ], prompted, slice_mm))
            tol = tol_table.get(organ, tol_default)
            sc = score(pred, refs[organ], vol.spacing, tolerance_mm=tol)
            record["rows"].append({
                "case": case.case_id, "engine": eng, "object": organ, **sc.as_dict(),
                "ref_voxels": int(refs[organ].sum()), "pred_voxels": int(pred.sum()),
                "key_slices": ";".join(str(s) for s in keys),
                "corrections": len(corrections[organ]),
            })
        if save_predictions:
            _save_prediction(result, run_dir / "predictions" / f"{case.case_id}.{eng}.nii.gz", label_of, objects, ds.name)
        if main_result is None and eng == engines[0]:
            main_result, main_session = result, session
    if overlays and main_result is not None:
        record["overlays"] = _overlays(run_dir, case.case_id, vol, main_result, main_session, refs, label_of, ref_frames, proto, engines[0],
                                       record["prompts"].get(engines[0]))
    return record


def _overlays(run_dir: Path, case_id: str, vol: Any, result: Any, session: Any, refs: dict[str, np.ndarray],
              label_of: dict[str, int], ref_frames: dict[str, np.ndarray], proto: Protocol, engine: str,
              sent: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    from ..overlay import save_overlay_png

    ref_lab = np.zeros(vol.shape, dtype=np.uint16)
    for organ, ref in refs.items():
        ref_lab[ref] = label_of[organ]
    reference = vol.with_array(ref_lab)
    largest = max(refs, key=lambda o: int(refs[o].sum()))
    key = key_slices(ref_frames[largest], proto)[0]
    pred_frames = session.frames_of(result.array)
    ref_stack = session.frames_of(ref_lab)
    wrong = (pred_frames != ref_stack).reshape(len(pred_frames), -1).sum(axis=1)
    worst = int(np.argmax(wrong))
    out = {}
    for kind, s in (("key", key), ("worst", worst)):
        path = run_dir / "overlays" / f"{case_id}_{kind}.png"
        title = f"{case_id} {engine}: {kind} slice {s} ({session.axis.axis})" + (f", {int(wrong[s])} wrong voxels" if kind == "worst" else f", {largest}")
        on_slice = [p for organ_prompts in (sent or {}).values() for p in organ_prompts if p.get("slice") == s]
        save_overlay_png(vol, result, path, window=session.window, axis=session.axis.axis, slice_index=s, title=title, reference=reference,
                         prompts=on_slice)
        out[kind] = {"file": str(path.relative_to(run_dir)), "slice": s}
    return out
