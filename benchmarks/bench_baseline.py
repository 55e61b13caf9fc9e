"""Dice of the classical baseline engine on the real CT: a box on each organ's middle axial slice.

Usage: .venv/bin/python benchmarks/bench_baseline.py [--organs liver spleen kidney_right kidney_left]
The box is the reference mask's bounding box on the middle slice of its extent (only that slice of the
reference reaches the engine). Prints Dice (and HD95 in mm) per organ.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SAM2VOLUME_SHARED_DATA", ROOT.parent / "shared" / "data")) / "totalseg"


def box_on_middle_slice(ref: np.ndarray) -> list[list[int]]:
    ks = np.unique(np.nonzero(ref)[2])
    k = int(ks[len(ks) // 2])
    ij = np.argwhere(ref[:, :, k])
    (i0, j0), (i1, j1) = ij.min(axis=0), ij.max(axis=0)
    return [[int(i0), int(j0), k], [int(i1), int(j1), k]]


def run(organs: list[str], stop_after: int = 3) -> dict[str, dict[str, float]]:
    from sam2volume import read_labelmap, read_volume
    from sam2volume.baseline import BaselineSession
    from sam2volume.metrics import score

    ct = read_volume(DATA / "example_ct_sm.nii.gz")
    lab = read_labelmap(DATA / "example_seg.nii.gz", reference=ct)
    names = {v: int(k) for k, v in json.loads((DATA / "labels.json").read_text())["ct_total"].items()}
    out = {}
    for organ in organs:
        ref = lab.array == names[organ]
        session = BaselineSession(ct, "axial", window="abdomen")
        t = time.perf_counter()
        session.add_box(1, box_on_middle_slice(ref), name=organ)
        session.propagate(stop_after=stop_after)
        seconds = time.perf_counter() - t
        pred = session.result().array == 1
        sc = score(pred, ref, ct.spacing)
        out[organ] = {"dice": sc.dice, "hd95_mm": sc.hd95, "seconds": seconds}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--organs", nargs="+", default=["liver", "spleen", "kidney_right", "kidney_left"])
    args = ap.parse_args()
    for organ, r in run(args.organs).items():
        print(f"{organ:<14} Dice {r['dice']:.3f}   HD95 {r['hd95_mm']:6.1f} mm   {r['seconds']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "core"))
    raise SystemExit(main())
