"""``sam2volume batch``: segment many volumes from their prompt files, resumably.

Inputs are image files, folders of image files, or DICOM series folders. Each input's prompts are
``--prompts FILE`` (one file for all, useful with LPS/RAS coordinates), else ``STEM.prompts.json``
or ``STEM.json`` in ``--prompts-dir``, else ``STEM.prompts.json`` beside the image. Outputs are
``OUT_DIR/STEM.nii.gz`` (or ``suffix``) with their run reports ``OUT_DIR/STEM.nii.gz.report.json`` (and,
for NIfTI/NRRD/MHA, ``.labels.json`` and Slicer's colour table ``.labels.csv``); an input whose output and report
exist is skipped, so a killed batch resumes where it stopped. Failures are listed in
``OUT_DIR/batch_report.json`` and the batch goes on.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from .errors import InputError, Sam2VolumeError, check_count
from .io.atomic import check_output, remove_partials, split_suffix, write_json_atomic
from .io.readers import IMAGE_SUFFIXES
from .io.writers import output_kind
from .run_folder import ResumeWarning, check_folder, check_settings, folder_lock, make_writable_folder, take_part


def _stem(path: Path) -> str:
    return split_suffix(path)[0] if path.is_file() else path.name


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files as given; folders holding image files become those files; other folders are DICOM series."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
        if p.is_dir():
            images = sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES) and ".prompts." not in f.name)
            out.extend(images or [p])
        else:
            out.append(p)
    stems: dict[str, Path] = {}
    for p in out:
        if _stem(p) in stems:
            raise InputError(f"{stems[_stem(p)]} and {p} would write the same output name {_stem(p)!r}; rename one or run them separately")
        stems[_stem(p)] = p
    return out


def find_prompts(image: Path, prompts: str | Path | None, prompts_dir: str | Path | None) -> Path | None:
    if prompts is not None:
        return Path(prompts)
    stem = _stem(image)
    if prompts_dir is not None:
        candidates = [Path(prompts_dir) / f"{stem}.prompts.json", Path(prompts_dir) / f"{stem}.json"]
    else:
        candidates = [image.parent / f"{stem}.prompts.json"]
    return next((c for c in candidates if c.is_file()), None)


SETTINGS_FILE = "batch_settings.json"


def _found_report(out: Path) -> Path | None:
    """The run report beside ``out``: ``OUT.report.json``, else where earlier versions wrote it (``STEM.report.json``,
    one name for every format: :func:`_report_problem` trusts it only if it names ``out``); None if neither exists."""
    from .api import legacy_report_path, report_path

    return next((p for p in (report_path(out), legacy_report_path(out)) if p.is_file()), None)


def _report_problem(out: Path, pfile: Path | None, settings: dict[str, Any]) -> str | None:
    """Why the run report beside ``out`` is not the report of this input's segmentation under these settings."""
    try:
        report = json.loads(_found_report(out).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        return f"it cannot be read ({type(exc).__name__}: {str(exc)[:200]})"
    if not isinstance(report, dict) or report.get("command") != "segment":
        return "it is not the report of a segmentation"
    if not isinstance(report.get("output"), str) or Path(report["output"]).name != out.name:
        return f"it is the report of output {report.get('output')!r}"
    if pfile is not None and (not isinstance(report.get("prompts"), str) or Path(report["prompts"]).name != pfile.name):
        return f"it was segmented from prompts {report.get('prompts')!r}, not {pfile.name!r}"
    wanted = json.loads(json.dumps({k: settings[k] for k in ("engine", "config", "direction", "stop_after")}, default=str))
    found = {k: report.get(k) for k in wanted}
    if found != wanted:
        return f"it was made with other settings ({', '.join(f'{k} {found[k]!r}' for k in wanted if found[k] != wanted[k])})"
    return None


def batch(
    inputs: list[str | Path],
    out_dir: str | Path,
    *,
    prompts: str | Path | None = None,
    prompts_dir: str | Path | None = None,
    suffix: str = ".nii.gz",
    engine: str = "sam2",
    config: Any = None,
    axis: str | None = None,
    direction: str = "both",
    stop_after: int | None = 3,
    window: str | None = None,
    png: bool = False,
    progress: bool = False,
    on_item: Callable[[int, int, str], None] | None = None,
    predictor: Any = None,
    allow_uneven_spacing: bool = False,
    server: str | None = None,
    token: str | None = None,
    num_parts: int = 1,
    part_id: int = 0,
    ray: str | bool | None = None,
    ray_workers: int | None = None,
) -> dict[str, Any]:
    """Segment every input; returns the batch report (also ``OUT_DIR/batch_report.json``).

    With ``server`` (a ``sam2volume serve`` URL) every volume is segmented there.
    """
    from .api import _versions, report_path, segment
    from .engine.config import EngineConfig

    out_dir = Path(out_dir)
    check_count(stop_after, "stop_after", allow_none=True)
    take_part([], num_parts, part_id)  # checks the shard numbers before any work
    output_kind(out_dir / f"x{suffix}")  # an unknown format fails before any work
    if engine not in ("sam2", "baseline"):
        raise InputError(f"unknown engine {engine!r}; use 'sam2' or 'baseline'")
    if prompts is not None and not Path(prompts).is_file():
        raise InputError(f"{prompts}: prompts file not found")
    items = expand_inputs(inputs)
    if not items:
        raise InputError("no inputs to segment")
    cfg = config if config is not None else EngineConfig()
    plan = []
    for image in items:
        out = out_dir / f"{_stem(image)}{suffix}"
        plan.append((image, out, find_prompts(image, prompts, prompts_dir)))
    all_inputs = [p for image, _, pfile in plan for p in (image, pfile) if p is not None]
    for _, out, _ in plan:  # `batch DIR -o DIR` would overwrite every input
        check_output(out, all_inputs)
        check_output(report_path(out), all_inputs, "run report")
    check_output(out_dir / "batch_report.json", all_inputs, "batch report")
    settings = {"engine": engine, "config": cfg.to_dict() if engine == "sam2" else None, "axis": axis, "direction": direction,
                "stop_after": stop_after, "window": window, "suffix": suffix, "png": bool(png),
                "prompts": str(Path(prompts).resolve()) if prompts is not None else None,
                "prompts_dir": str(Path(prompts_dir).resolve()) if prompts_dir is not None else None}
    check_folder(out_dir, "batch folder", files=(SETTINGS_FILE, "batch_report.json"))
    check_settings(out_dir / SETTINGS_FILE, settings, "batch")
    plan = take_part(plan, num_parts, part_id)  # a shard, into the same folder
    todo, finished, redone = [], [], []
    for item in plan:  # an output with its report was finished by an earlier run
        image, out, pfile = item
        if out.is_file() and _found_report(out) is not None:
            why = _report_problem(out, pfile, settings)
            if why is None:
                finished.append(item)
                continue
            redone.append({"input": str(image), "reason": why})
            warnings.warn(f"{_found_report(out)}: report not trusted, {why}; segmenting {image} again", ResumeWarning, stacklevel=2)
        todo.append(item)
    make_writable_folder(out_dir, "batch folder")
    with folder_lock(out_dir, f"batch folder {out_dir}", shard=num_parts > 1):
        remove_partials(out_dir)  # left by a killed run
        if not (out_dir / SETTINGS_FILE).is_file():
            write_json_atomic(out_dir / SETTINGS_FILE, {"settings": settings, "versions": _versions()})
        if engine == "sam2" and predictor is None and server is None and ray in (None, False) and any(pr is not None for _, _, pr in todo):
            from .engine.predictor import build_predictor

            predictor = build_predictor(cfg, progress=progress)
        bar = None
        if progress:
            from .progress import progress_bar

            bar = progress_bar(len(plan), initial=len(finished), desc="batch", unit="volume")
        report: dict[str, Any] = {"command": "batch", "versions": _versions(), "engine": engine,
                                  "config": cfg.to_dict() if engine == "sam2" else None, "done": [],
                                  "skipped_finished": [str(out) for _, out, _ in finished], "redone": redone,
                                  "errors": [], "seconds": {}}
        seg_kwargs = dict(axis=axis, direction=direction, stop_after=stop_after, window=window, allow_uneven_spacing=allow_uneven_spacing)
        for image, out, pfile in todo:
            if pfile is None:
                report["errors"].append({"input": str(image), "error": f"InputError: no prompts for {image}: put {_stem(image)}.prompts.json "
                                                                        "beside it or in --prompts-dir, or pass --prompts"})
                if bar is not None:
                    bar.update(1)
        todo = [item for item in todo if item[2] is not None]
        if ray not in (None, False) and todo:
            from .evaluation.distributed import VolumeWorker, engine_wants_gpu, run_cases

            by_image = {str(image): out for image, out, _ in todo}
            t_start = {str(image): time.perf_counter() for image, _, _ in todo}

            def finished(item: Any, status: dict[str, Any], worker: str) -> None:
                image = item[0]
                if status.get("ok"):
                    report["done"].append(str(by_image[image]))
                    report["seconds"][image] = round(time.perf_counter() - t_start[image], 3)
                else:
                    report["errors"].append({"input": image, "error": status["error"]})
                if bar is not None:
                    bar.update(1)

            items = [(str(image), str(pfile), out.name, f"{_stem(image)}.png" if png else None, str(out.parent)) for image, out, pfile in todo]
            report["executor"] = run_cases(None if ray is True else str(ray), items, (cfg, engine), seg_kwargs, out_dir, finished,
                                           worker=VolumeWorker, task_id=lambda item: item[0], workers=ray_workers,
                                           wants_gpu=engine_wants_gpu(engine, cfg),
                                           on_dead=lambda item, message: {"ok": False, "error": message})
        else:
            for n, (image, out, pfile) in enumerate(todo):
                if on_item is not None:
                    on_item(n, len(todo), str(image))
                t = time.perf_counter()
                try:
                    segment(image, pfile, out, config=cfg, png=out_dir / f"{_stem(image)}.png" if png else None, predictor=predictor,
                            engine=engine, server=server, token=token, **seg_kwargs)
                    report["done"].append(str(out))
                    report["seconds"][str(image)] = round(time.perf_counter() - t, 3)
                except Sam2VolumeError as exc:
                    report["errors"].append({"input": str(image), "error": f"{type(exc).__name__}: {exc}"})
                except OSError as exc:  # a full disk, a folder made read-only meanwhile: this input fails, the batch goes on
                    report["errors"].append({"input": str(image),
                                             "error": f"{type(exc).__name__}: {exc.strerror or exc} ({exc.filename or out})"})
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        write_json_atomic(out_dir / "batch_report.json", report)
        return report
