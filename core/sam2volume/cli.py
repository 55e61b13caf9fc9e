"""The ``sam2volume`` command. Each subcommand mirrors a Python API function."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import __version__
from .errors import Sam2VolumeError
from .io.atomic import json_text


def _add_read_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--series-uid", help="SeriesInstanceUID to read when a DICOM folder holds several series")
    p.add_argument(
        "--allow-uneven-spacing",
        action="store_true",
        help="read a DICOM series with uneven slice gaps using the mean gap (warns; slices are misplaced)",
    )
    p.add_argument("--max-voxels", type=int, default=None,
                   help="largest volume a file header may declare, in voxels (default: $SAM2VOLUME_MAX_VOXELS, else 2**31)")


def cmd_info(args: argparse.Namespace) -> int:
    from .io import read_volume

    vol = read_volume(args.path, series_uid=args.series_uid, allow_uneven_spacing=args.allow_uneven_spacing,
                      max_voxels=args.max_voxels)
    info = vol.summary()
    if args.json:
        print(json_text(info))
    else:
        for key, value in info.items():
            print(f"{key:>15}: {value}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .io import read_labelmap, read_volume, write_labelmap, write_volume

    reference = None
    if args.reference:
        reference = read_volume(args.reference, series_uid=args.series_uid, allow_uneven_spacing=args.allow_uneven_spacing,
                                max_voxels=args.max_voxels)
    out = str(args.output).lower()
    is_seg_output = out.endswith((".seg.nrrd", ".dcm"))
    if args.labelmap or is_seg_output:
        lab = read_labelmap(args.input, reference=reference, series_uid=args.series_uid, max_voxels=args.max_voxels)
        write_labelmap(lab, args.output, reference=reference)
        import numpy as np

        from .io.writers import normalize_segments, write_names_sidecar  # NIfTI/NRRD/MHA: names and Slicer colour table

        write_names_sidecar(args.output, normalize_segments(np.unique(lab.array).tolist(), lab.meta.get("segments")))
    else:
        vol = read_volume(args.input, series_uid=args.series_uid, allow_uneven_spacing=args.allow_uneven_spacing,
                          max_voxels=args.max_voxels)
        write_volume(vol, args.output)
    if not args.quiet:
        print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam2volume",
        description="Segment 3D CT/MRI volumes with SAM2 (slices as video frames).",
    )
    parser.add_argument("--version", action="version", version=f"sam2volume {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="print size, spacing, orientation, intensity range and modality")
    p.add_argument("path", help="image file (.nii/.nii.gz/.nrrd/.mha/...) or DICOM series folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_read_options(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert an image or labelmap between formats, keeping its geometry")
    p.add_argument("input")
    p.add_argument("output", help="output file: .nii, .nii.gz, .nrrd, .mha, .seg.nrrd or .dcm (DICOM-SEG)")
    p.add_argument("--labelmap", action="store_true", help="treat the input as a labelmap (implied for .seg.nrrd/.dcm output)")
    p.add_argument("--reference", help="image the labelmap belongs to (checked; required for DICOM-SEG output)")
    p.add_argument("-q", "--quiet", action="store_true")
    _add_read_options(p)
    p.set_defaults(func=cmd_convert)

    from . import cli_evaluate, cli_segment, cli_serve, cli_web  # import nothing heavy

    cli_segment.register(sub)
    cli_evaluate.register(sub)
    cli_serve.register(sub)
    cli_web.register(sub)
    return parser


# optional packages -> how to install them (pip install . installs only the core)
EXTRAS = {
    "torch": "PyTorch: pip install torch (see README: it must match your GPU), then pip install 'segment-with-sam2[engine]'",
    "hydra": "pip install 'segment-with-sam2[engine]'",
    "iopath": "pip install 'segment-with-sam2[engine]'",
    "omegaconf": "pip install 'segment-with-sam2[engine]'",
    "sam2": "SAM2: pip install --no-deps rf-sam-2==1.0.3 (without its torchvision requirement; see README)",
    "monai": "pip install 'segment-with-sam2[metrics]'",
    "matplotlib": "pip install 'segment-with-sam2[plots]'",
    "fastapi": "pip install 'segment-with-sam2[server]'",
    "uvicorn": "pip install 'segment-with-sam2[server]'",
}


def missing_extra_message(exc: ModuleNotFoundError) -> str | None:
    """One line naming what to install when an optional package is missing, or None if it is not one."""
    top = (exc.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    return f"this command needs the optional package {top!r}, which is not installed: {EXTRAS[top]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Sam2VolumeError as exc:
        print(f"sam2volume {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        message = missing_extra_message(exc)
        if message is None:
            raise
        print(f"sam2volume {args.command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `sam2volume models | head`
        return 0
    except KeyboardInterrupt:
        print(f"sam2volume {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
