"""Baseline Dice per simulated-prompt protocol on the real CT, through `evaluate` (the whole runner).

Usage: .venv/bin/python benchmarks/bench_protocols.py [--protocols box-middle mask-middle ...]
Builds a one-case plain dataset (symlinks to ../shared/data/totalseg) in a temporary folder, runs
`sam2volume.evaluation.evaluate` with the baseline engine for each protocol, and prints mean Dice
and NSD (2 mm) per organ and the seconds per case.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SAM2VOLUME_SHARED_DATA", ROOT.parent / "shared" / "data")) / "totalseg"
ORGANS = ["liver", "spleen", "kidney_right", "kidney_left"]


def main() -> int:
    from sam2volume.evaluation import PROTOCOLS, evaluate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ds = Path(tmp) / "ds"
        (ds / "images").mkdir(parents=True)
        (ds / "labels").mkdir()
        (ds / "images" / "ct.nii.gz").symlink_to(DATA / "example_ct_sm.nii.gz")
        (ds / "labels" / "ct.nii.gz").symlink_to(DATA / "example_seg.nii.gz")
        (ds / "labels.json").write_text(json.dumps(json.loads((DATA / "labels.json").read_text())["ct_total"]))
        print(f"{'protocol':<18}" + "".join(f"{o:>14}" for o in ORGANS) + f"{'s/case':>9}")
        for proto in args.protocols:
            rep = evaluate(ds, proto, Path(tmp) / proto, engine="baseline", organs=ORGANS, overlays=False)
            s = rep["summary"]["baseline"]
            cells = "".join(f"{s[o]['dice']['mean']:>8.3f}/{s[o]['nsd']['mean']:.2f}" for o in ORGANS)
            print(f"{proto:<18}{cells}{rep['seconds_per_case']['ct']['baseline']:>9.2f}")
    print("cells: Dice / NSD at 2 mm (voxels are 3 mm, so NSD is strict here)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "core"))
    raise SystemExit(main())
