"""``sam2volume segment`` and ``sam2volume models``."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _number(kind: type, minimum: float, what: str):
    """An argparse type: a finite number of ``kind`` that is at least ``minimum`` (checked before any work)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value != value or value in (float("inf"), float("-inf")) or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


NONNEGATIVE_INT = _number(int, 0, "an integer >= 0")
POSITIVE_INT = _number(int, 1, "an integer >= 1")
NONNEGATIVE_FLOAT = _number(float, 0, "a finite number >= 0")


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """Engine and model options shared by segment, evaluate and batch."""
    p.add_argument("--engine", default="sam2", choices=["sam2", "baseline"],
                   help="sam2, or baseline: the weights-free classical engine (no checkpoint needed)")
    p.add_argument("--model", default=None, help="registry name (see `sam2volume models`); default medsam2-latest")
    p.add_argument("--checkpoint", help="checkpoint file (a custom model with --config, or a local copy of --model)")
    p.add_argument("--config", dest="config_file", help="SAM2 config (.yaml path or packaged config name) for --checkpoint")
    p.add_argument("--image-size", type=POSITIVE_INT, help="model input size, a multiple of 32 (default: the model's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--offload-state", action="store_true", help="keep SAM2's memory on the CPU")
    p.add_argument("--feature-cache-mb", type=NONNEGATIVE_FLOAT, default=2048.0,
                   help="memory budget for cached slice features, MB (corrections re-propagate without re-encoding)")
    p.add_argument("--encode-batch", type=NONNEGATIVE_INT, default=0,
                   help="slices per image-encoder pass while propagating (default 0: the device's measured best)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model as upstream's vos_optimized does (first slices take minutes; README 'Speed')")
    p.add_argument("--random-weights", action="store_true", help="no checkpoint: random weights (pipeline checks only)")
    add_server_options(p)


def add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", help="run the engine on a `sam2volume serve` server at this URL (e.g. http://gpu-box:8765)")
    p.add_argument("--token-file", help="the server's token (default: the SAM2VOLUME_TOKEN variable, then for a loopback "
                   "--server the token that server wrote for itself)")


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """``server`` and ``token`` for segment, evaluate and batch from --server / --token-file."""
    if not args.server:
        return {"server": None, "token": None}
    from .client import read_token

    return {"server": args.server, "token": read_token(token_file=args.token_file)}


def engine_config(args: argparse.Namespace) -> Any:
    from .engine.config import EngineConfig
    from .errors import InputError
    from .models.registry import DEFAULT_MODEL

    if args.compile and getattr(args, "server", None):
        raise InputError("--compile is set where the model runs: start the server with `sam2volume serve --compile`")
    return EngineConfig(
        model=args.model or DEFAULT_MODEL,
        checkpoint=args.checkpoint,
        config_file=args.config_file,
        image_size=args.image_size,
        device=args.device,
        dtype=args.dtype,
        offload_state_to_cpu=args.offload_state,
        feature_cache_mb=args.feature_cache_mb,
        random_weights=args.random_weights,
        encode_batch=args.encode_batch,
        compile=args.compile,
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment a volume from a prompts file with SAM2")
    p.add_argument("image", help="image file or DICOM series folder")
    p.add_argument("--prompts", required=True, help="prompts JSON file (format in README)")
    p.add_argument("-o", "--output", required=True, help="labelmap to write: .nii.gz, .nrrd, .mha, .seg.nrrd or .dcm (beside it "
                   "OUTPUT.report.json; for .nii.gz/.nrrd/.mha also OUTPUT.labels.json and Slicer's colour table OUTPUT.labels.csv)")
    add_engine_options(p)
    p.add_argument("--axis", choices=["axial", "coronal", "sagittal"], help="slice axis (default: prompts file, else axial)")
    p.add_argument("--direction", default="both", choices=["both", "forward", "backward"])
    p.add_argument("--stop-after", type=NONNEGATIVE_INT, default=3, help="stop once the object is absent on N slices in a row (0: never)")
    p.add_argument("--window", help="CT preset (abdomen, lung, bone, brain, mediastinum, liver), percentile or auto")
    p.add_argument("--png", help="also write a PNG of the slice with the most labelled voxels")
    p.add_argument("--series-uid", help="SeriesInstanceUID for DICOM folders with several series")
    p.add_argument("--allow-uneven-spacing", action="store_true",
                   help="read a DICOM series with uneven slice gaps using the mean gap (warns; slices are misplaced)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("models", help="list models and their download state, or download one")
    p.add_argument("action", nargs="?", choices=["list", "download"], default="list")
    p.add_argument("name", nargs="?", help="model to download")
    p.set_defaults(func=cmd_models)


def cmd_segment(args: argparse.Namespace) -> int:
    from .api import report_path, segment

    cfg = engine_config(args)
    _, report = segment(
        args.image,
        args.prompts,
        args.output,
        config=cfg,
        axis=args.axis,
        direction=args.direction,
        stop_after=args.stop_after or None,
        window=args.window,
        png=args.png,
        progress=not args.quiet,
        series_uid=args.series_uid,
        engine=args.engine,
        allow_uneven_spacing=args.allow_uneven_spacing,
        **server_options(args),
    )
    if not args.quiet:
        for obj in report["objects"]:
            print(f"  {obj['name']:<20} label {obj['label']:>3}: {obj['voxels']} voxels")
        sidecars = [report["label_names"], report["color_table"]] if "color_table" in report else []
        print(f"wrote {', '.join([str(args.output), *sidecars])} and {report_path(args.output)}" + (f" and {args.png}" if args.png else ""))
        print(f"{report['slices_run']} slices in {report['seconds']['propagate']} s ({report['seconds']['per_slice']} s/slice)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .models import WeightsManager, get_model, list_models

    wm = WeightsManager()
    if args.action == "download":
        if not args.name:
            raise InputError("name the model to download, e.g. `sam2volume models download sam2.1-hiera-tiny`")
        path = wm.ensure(get_model(args.name), progress=sys.stderr.isatty())
        print(f"{args.name}: {path}")
        return 0
    print(f"cache folder: {wm.root} (set SAM2VOLUME_CACHE to change)")
    for spec in list_models():
        print(f"  {spec.name:<26} {spec.image_size:>5} px  {wm.status(spec):<10}  {spec.description}")
    return 0
