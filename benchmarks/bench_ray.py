"""Ray on this machine: cases per minute with 1 and 2 workers (baseline engine) against the local loop,
and the time from the start of a --ray run to its first finished case.

    .venv/bin/python benchmarks/bench_ray.py [--cases 8]

Each configuration runs into a fresh folder; the order is interleaved (local, ray 1, ray 2, repeated) and
min/median are printed. The dataset is the shared CT copied under several case names (its image and
labels are links, so the workers read the same files)."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from eval_helpers import plain_ct_dataset  # noqa: E402

from sam2volume.evaluation import evaluate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    totalseg = ROOT.parent / "shared" / "data" / "totalseg"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = plain_ct_dataset(totalseg, tmp / "ds", [f"c{n:02d}" for n in range(args.cases)], ["liver", "spleen"])
        results: dict[str, list[float]] = {"local": [], "ray-1": [], "ray-2": []}
        first: list[float] = []
        for r in range(args.repeats):
            for name in results:
                run = tmp / f"{name}-{r}"
                t = time.perf_counter()
                kw = {} if name == "local" else {"ray": True, "ray_workers": int(name[-1])}
                report = evaluate(root, "box-middle", run, engine="baseline", overlays=False, **kw)
                minutes = (time.perf_counter() - t) / 60
                results[name].append(args.cases / minutes)
                if name != "local":
                    first.append(report["executor"]["seconds_to_first_case"])
        print(f"{args.cases} cases (baseline engine, liver + spleen, MONAI metrics), {args.repeats} interleaved repeats")
        for name, vals in results.items():
            print(f"  {name:<6} cases/min: min {min(vals):6.1f}  median {statistics.median(vals):6.1f}")
        print(f"  ray: start (incl. starting a local Ray instance) to first finished case: min {min(first):.1f} s, "
              f"median {statistics.median(first):.1f} s")


if __name__ == "__main__":
    main()
