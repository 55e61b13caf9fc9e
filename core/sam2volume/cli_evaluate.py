"""``sam2volume evaluate``, ``sam2volume compare`` and ``sam2volume batch``."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from typing import Any, Iterator

from .cli_segment import NONNEGATIVE_INT, POSITIVE_INT, add_engine_options, add_server_options, engine_config, server_options


def _add_part_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--num-parts", type=POSITIVE_INT, default=1,
                   help=f"split the {what} into N shards (every N-th, as nnU-Net does) run into the same -o folder one after another")
    p.add_argument("--part-id", type=NONNEGATIVE_INT, default=0, help="which shard this is (0..N-1)")


def register(sub: argparse._SubParsersAction) -> None:
    from .evaluation.protocols import PROTOCOLS

    p = sub.add_parser("evaluate", help="segment a dataset from simulated prompts and score it (resumable)")
    p.add_argument("dataset", help="dataset folder (BTCV, AMOS, KiTS, MSD, nnU-Net v2 raw, or images/ + labels/)")
    p.add_argument("--protocol", required=True, help=f"one of {', '.join(PROTOCOLS)}; options as NAME:jitter=0.1,corrections=2")
    p.add_argument("-o", "--output", required=True, help="run folder (a second run with the same settings resumes it)")
    add_engine_options(p)
    p.add_argument("--layout", default="auto", help="auto, btcv, amos, kits, nnunet, msd or plain")
    p.add_argument("--labels", help="label-name file for a plain dataset (JSON or 'ID NAME' lines; FILE.json:KEY)")
    p.add_argument("--organs", nargs="+", help="canonical organ names to score (default: every object of the dataset)")
    p.add_argument("--seed", type=NONNEGATIVE_INT, default=0)
    p.add_argument("--axis", default="axial", choices=["axial", "coronal", "sagittal"])
    p.add_argument("--stop-after", type=NONNEGATIVE_INT, default=3, help="stop once the object is absent on N slices in a row (0: never)")
    p.add_argument("--window", help="CT preset or percentile (default: abdomen for CT, percentile otherwise)")
    p.add_argument("--tolerances", default="auto", help="NSD tolerance: auto (the dataset's table), flare22, kits21, default or mm")
    p.add_argument("--no-baseline", action="store_true", help="skip the classical baseline row")
    p.add_argument("--no-overlays", action="store_true", help="no overlay PNGs")
    p.add_argument("--save-predictions", action="store_true", help="also write each case's labelmap per engine")
    p.add_argument("--limit", type=POSITIVE_INT, help="only the first N cases (N >= 1)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the cases on Ray: alone, a local Ray instance; with an address (or 'auto'), that cluster")
    p.add_argument("--ray-workers", type=POSITIVE_INT, help="Ray actors (default: one per GPU, else one per CPU)")
    _add_part_options(p, "cases")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="compare two evaluate runs, object by object, on their shared cases")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--metric", default="dice", choices=["dice", "iou", "nsd", "hd95", "assd"])
    p.add_argument("--engine-a", help="engine rows of run A (default: the run's engine; 'baseline' for its baseline row)")
    p.add_argument("--engine-b", help="engine rows of run B")
    p.add_argument("-o", "--output", help="also write the table as CSV")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("batch", help="segment many volumes from prompt files (resumable)")
    p.add_argument("inputs", nargs="+", help="image files, folders of images, or DICOM series folders")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--prompts", help="one prompts file for every input")
    p.add_argument("--prompts-dir", help="folder with STEM.prompts.json (or STEM.json) per input (default: beside each image)")
    p.add_argument("--format", default=".nii.gz", help="output suffix: .nii.gz, .nrrd, .mha or .seg.nrrd")
    add_engine_options(p)
    p.add_argument("--axis", choices=["axial", "coronal", "sagittal"])
    p.add_argument("--direction", default="both", choices=["both", "forward", "backward"])
    p.add_argument("--stop-after", type=NONNEGATIVE_INT, default=3, help="stop once the object is absent on N slices in a row (0: never)")
    p.add_argument("--window")
    p.add_argument("--png", action="store_true", help="a PNG overlay per volume")
    _add_part_options(p, "inputs")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="segment on Ray: alone, a local Ray instance; with an address (or 'auto'), that cluster")
    p.add_argument("--ray-workers", type=POSITIVE_INT, help="Ray actors (default: one per GPU, else one per CPU)")
    p.add_argument("--allow-uneven-spacing", action="store_true",
                   help="read DICOM series with uneven slice gaps using the mean gap (warns; slices are misplaced)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_batch)


@contextlib.contextmanager
def warnings_as_lines(command: str) -> Iterator[None]:
    """Show the library's warnings while ``command`` runs as one line each on stderr (no source line)."""
    from .run_folder import ResumeWarning

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        print(f"sam2volume {command}: warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always", ResumeWarning)
        warnings.showwarning = show
        yield


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.runner import evaluate

    with warnings_as_lines("evaluate"):
        report = evaluate(
            args.dataset, args.protocol, args.output, engine=args.engine, config=engine_config(args), layout=args.layout,
            labels=args.labels, organs=args.organs, seed=args.seed, axis=args.axis, stop_after=args.stop_after or None,
            window=args.window, tolerances=args.tolerances, baseline=not args.no_baseline, overlays=not args.no_overlays,
            save_predictions=args.save_predictions, limit=args.limit, num_parts=args.num_parts, part_id=args.part_id, progress=not args.quiet,
            ray=args.ray, ray_workers=args.ray_workers, **server_options(args),
        )
    # -q hides the progress bars only: the summary and the errors are always printed
    c = report["cases"]
    redone = report["resumed"]["cases_redone"]
    print(f"{c['finished']}/{c['total']} cases ({report['resumed']['cases_already_done']} from before"
          f"{f', {len(redone)} redone: their records were not trusted' if redone else ''}), "
          f"{len(c['errors'])} failed, {len(c['skipped_by_reader'])} skipped by the reader")
    for engine, objs in report["summary"].items():
        for obj, e in objs.items():
            print(f"  {engine:<10} {obj:<28} n={e['cases']:<4} Dice {_mean_sd(e['dice'])}   NSD {_mean_sd(e['nsd'])}")
    for err in c["errors"]:
        print(f"  failed: {err['case']}: {err['error']}", file=sys.stderr)
    print(f"wrote {args.output}/scores.csv, summary.csv, report.json, plots/")
    if c["errors"]:
        print(f"sam2volume evaluate: {len(c['errors'])} of {c['total']} cases failed (see above and report.json)", file=sys.stderr)
        return 1
    return 0


def _mean_sd(stats: dict) -> str:
    """'0.891 ± 0.020'; one case has no spread, so no '± nan'; no value at all is 'n/a'."""
    mean, sd = stats.get("mean"), stats.get("sd")
    if mean is None or mean != mean:
        return "n/a"
    return f"{mean:.3f}" if sd is None or sd != sd else f"{mean:.3f} ± {sd:.3f}"


def cmd_compare(args: argparse.Namespace) -> int:
    from .evaluation.tables import compare_runs, format_comparison, run_differences, write_comparison

    notes = run_differences(args.run_a, args.run_b, args.metric)
    rows = compare_runs(args.run_a, args.run_b, metric=args.metric, engine_a=args.engine_a, engine_b=args.engine_b)
    for note in notes:
        print(f"note: {note}")
    print(format_comparison(rows, args.metric, args.run_a, args.run_b))
    if args.output:
        write_comparison(rows, args.output)
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from .batch import batch

    with warnings_as_lines("batch"):
        report = batch(
            args.inputs, args.output, prompts=args.prompts, prompts_dir=args.prompts_dir, suffix=args.format, engine=args.engine,
            config=engine_config(args), axis=args.axis, direction=args.direction, stop_after=args.stop_after or None,
            window=args.window, png=args.png, progress=not args.quiet, allow_uneven_spacing=args.allow_uneven_spacing,
            num_parts=args.num_parts, part_id=args.part_id, ray=args.ray, ray_workers=args.ray_workers, **server_options(args),
        )
    if not args.quiet:
        print(f"{len(report['done'])} segmented, {len(report['skipped_finished'])} already done, {len(report['errors'])} failed")
        for e in report["errors"]:
            print(f"  {e['input']}: {e['error']}")
    return 0 if not report["errors"] else 1
