"""Python API that mirrors the ``sam2volume segment`` command."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__
from .errors import InputError, check_count
from .io import read_volume, write_labelmap
from .io.atomic import check_output, split_suffix, write_json_atomic
from .io.color_table import color_table_path
from .io.writers import check_segment_names, label_sidecar_paths, names_sidecar_path, output_kind, write_names_sidecar
from .prompts import PromptSet, apply_prompts, load_prompts, parse_prompts, plan_prompts
from .volume import Volume


def report_path(output: str | Path) -> Path:
    """``out/ct.nii.gz`` -> ``out/ct.nii.gz.report.json``: named after the whole output name, so that outputs of
    several formats in one folder (``ct.nii.gz``, ``ct.nrrd``, ``ct.seg.nrrd``) keep a report each."""
    out = Path(output)
    return out.with_name(out.name + ".report.json")


def legacy_report_path(output: str | Path) -> Path:
    """Where earlier versions wrote the run report (``out/ct.report.json``: one name for every format); a batch
    resume still reads it there, and trusts it only if it names this very output."""
    out = Path(output)
    stem, _ = split_suffix(out)
    return out.with_name(stem + ".report.json")


def _versions() -> dict[str, str]:
    out = {"sam2volume": __version__, "python": platform.python_version()}
    from importlib import metadata

    for dist in ("torch", "rf-sam-2", "sam2", "SimpleITK", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _file_digest(paths: list[str | Path]) -> str:
    """SHA-256 of one file, or of several files' digests in order (a DICOM series)."""
    from .models.weights import sha256_of

    digests = [sha256_of(Path(p)) for p in paths]
    if len(digests) == 1:
        return digests[0]
    import hashlib

    return hashlib.sha256("".join(digests).encode()).hexdigest()


def reproduction(vol: Volume, image: Any, prompts: Any, pset: PromptSet, cfg: Any, engine: str, server: str | None) -> dict[str, Any]:
    """What reproduces a run: the inputs' SHA-256, the model config actually used, the checkpoint and its digest."""
    files = vol.meta.get("dicom_files") or ([image] if isinstance(image, (str, Path)) and Path(image).is_file() else [])
    out: dict[str, Any] = {
        "image_sha256": _file_digest(files) if files else None,
        "image_files": len(files),
        "prompts_sha256": _file_digest([prompts]) if isinstance(prompts, (str, Path)) else None,
        "mask_files_sha256": {str(m["file"]): _file_digest([m["file"]]) for o in pset.objects for m in o.masks},
    }
    out.update(model_record(cfg, engine, server))
    return out


def model_record(cfg: Any, engine: str, server: str | None = None) -> dict[str, Any]:
    """The model a run used: name, config actually used, image size, and the checkpoint's path and SHA-256."""
    out: dict[str, Any] = {}
    if engine != "sam2":
        return out
    spec = cfg.spec()
    out["model"] = {"name": spec.name if not spec.is_custom else None, "config": cfg.config_file or spec.config,
                    "image_size": cfg.resolved_image_size, "random_weights": bool(cfg.random_weights)}
    if server is not None:
        out["checkpoint"] = {"where": f"on the server {server}"}
    elif not cfg.random_weights:
        from .models.weights import WeightsManager

        wm = WeightsManager()
        path = Path(cfg.checkpoint) if cfg.checkpoint else wm.path_for(spec)
        record = None if cfg.checkpoint else wm.record(spec)
        sha = record["sha256"] if record else (_file_digest([path]) if path.is_file() else None)
        out["checkpoint"] = {"path": str(path), "sha256": sha, "verified_against": record.get("verified_against") if record else None}
    return out


def _check_outputs(output: str | Path, png: str | Path | None, image: Any, prompts: Any, pset: PromptSet) -> None:
    """Before any work: no output may be an input, folders must be writable, names must fit the format."""
    inputs: list[Any] = [m["file"] for o in pset.objects for m in o.masks]
    inputs += [p for p in (image, prompts) if isinstance(p, (str, Path))]
    sidecars = [(p, "label names" if p == names_sidecar_path(output) else "colour table") for p in label_sidecar_paths(output)]
    for path, what in ((output, "output"), (report_path(output), "run report"), (png, "PNG"), *sidecars):
        if path is not None:
            check_output(path, inputs, what)
    check_segment_names(output, [o.name for o in pset.objects])


def segment(
    image: str | Path | Volume,
    prompts: str | Path | dict[str, Any] | PromptSet,
    output: str | Path | None = None,
    *,
    config: Any = None,
    axis: str | None = None,
    direction: str = "both",
    stop_after: int | None = 3,
    window: str | None = None,
    png: str | Path | None = None,
    predictor: Any = None,
    progress: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    series_uid: str | None = None,
    engine: str = "sam2",
    allow_uneven_spacing: bool = False,
    server: str | None = None,
    token: str | None = None,
) -> tuple[Volume, dict[str, Any]]:
    """Segment ``image`` from ``prompts``; returns (labelmap, run report) and writes ``output``.

    Everything is checked (files, prompts, output format) before the model is built.
    ``engine`` is ``sam2`` or ``baseline`` (the weights-free classical engine). With ``server``
    (a ``sam2volume serve`` URL, ``token`` or ``$SAM2VOLUME_TOKEN``) the engine runs there.
    """
    from .engine.config import EngineConfig
    from .session import Session

    t0 = time.perf_counter()
    check_count(stop_after, "stop_after", allow_none=True)
    if output is not None:
        output_kind(Path(output))  # unknown format: fail now, not after the work
    vol = image if isinstance(image, Volume) else read_volume(image, series_uid=series_uid, allow_uneven_spacing=allow_uneven_spacing)
    if isinstance(prompts, PromptSet):
        pset = prompts
    elif isinstance(prompts, dict):
        pset = parse_prompts(prompts)
    else:
        pset = load_prompts(prompts)
    if output is not None and Path(output).name.lower().endswith(".dcm") and not vol.meta.get("dicom_files"):
        raise InputError(f"{output}: DICOM-SEG output needs a DICOM series as input; write .seg.nrrd or .nii.gz instead")
    if output is not None:
        _check_outputs(output, png, image, prompts, pset)
    cfg = config if config is not None else EngineConfig()
    if server is not None:
        from .client import RemoteSession

        session: Any = RemoteSession(server, vol, axis or pset.axis or "axial", cfg if engine == "sam2" else None, engine=engine,
                                     token=token, window=window, progress=progress)
    elif engine == "baseline":
        from .baseline import BaselineSession

        session: Any = BaselineSession(vol, axis or pset.axis or "axial", window=window, progress=progress)
    elif engine == "sam2":
        session = Session(vol, axis or pset.axis or "axial", cfg, predictor=predictor, window=window, progress=progress)
    else:
        raise InputError(f"unknown engine {engine!r}; use 'sam2' or 'baseline'")
    plan = plan_prompts(session, pset)
    t_read = time.perf_counter()
    if engine == "sam2" and server is None:
        _ = session.predictor  # build (and download) the model
    t_model = time.perf_counter()
    try:
        apply_prompts(session, pset, plan)
        t_prompt = time.perf_counter()
        prop = session.propagate(direction, stop_after=stop_after, progress=on_progress)
        t_prop = time.perf_counter()
        result = session.result()
    finally:
        if server is not None:
            session.close()
    counts = {int(v): int(c) for v, c in zip(*np.unique(result.array, return_counts=True)) if v}
    report = {
        "command": "segment",
        "versions": _versions(),
        "input": vol.summary(),
        "prompts": pset.source,
        "axis": session.axis.axis,
        "direction": direction,
        "stop_after": stop_after,
        "window": {"low": session.window.low, "high": session.window.high},
        "engine": engine,
        "config": cfg.to_dict() if engine == "sam2" else None,
        "random_weights": bool(cfg.random_weights) if engine == "sam2" else False,
        "device": str(getattr(session, "device", "cpu")),
        "server": server,
        "objects": [
            {"label": o.label, "name": o.name, "voxels": counts.get(o.label, 0), "stopped_at": prop.stopped.get(o.label, {})}
            for o in session.objects.values()
        ],
        "slices_run": prop.slices_run,
        "reproduce": reproduction(vol, image, prompts, pset, cfg, engine, server),
        "encoder_calls": session.encoder_calls,
        "seconds": {
            "read_and_check": round(t_read - t0, 3),
            "model": round(t_model - t_read, 3),
            "prompts": round(t_prompt - t_model, 3),
            "propagate": round(t_prop - t_prompt, 3),
            "per_slice": round((t_prop - t_prompt) / max(1, prop.slices_run), 4),
        },
    }
    if output is not None:
        write_labelmap(result, output, reference=vol)
        report["output"] = str(output)
        side = write_names_sidecar(output, result.meta.get("segments", []))
        if side is not None:
            report["label_names"] = str(side)
            report["color_table"] = str(color_table_path(output))
        if png is not None:
            from .overlay import save_overlay_png

            model = cfg.model if engine == "sam2" else "classical baseline (no SAM2)"
            title = f"{Path(str(vol.name)).name}: {model}" + (" - RANDOM WEIGHTS, pipeline check only" if engine == "sam2" and cfg.random_weights else "")
            save_overlay_png(vol, result, png, window=session.window, axis=session.axis.axis, title=title)
            report["png"] = str(png)
        write_json_atomic(report_path(output), report)
    return result, report
