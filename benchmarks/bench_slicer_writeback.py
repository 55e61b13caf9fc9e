"""GUI-thread cost of the Slicer module's write-back, on Slicer's libraries (slicer-core), at CT size.

Usage: .venv/bin/python benchmarks/bench_slicer_writeback.py [--size 512] [--slices 200]
A synthetic volume (size x size x slices) and a segmentation on its grid holding a second segment;
times (a) one prompt slice written, (b) the slices of a propagation written one poll at a time, each a
single slice, (c) the exact final result re-checked against the segment (nothing left to write), and
(d) the same final result written into an empty segment in runs. Prints milliseconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "SegmentWithSAM2")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--slices", type=int, default=200)
    args = ap.parse_args()
    import slicer
    import slicer_scene as sc

    from SegmentWithSAM2Lib.controller import SliceUpdate
    from SegmentWithSAM2Lib.logic import SegmentWithSAM2Logic

    sc.fresh_scene()
    n, d = args.size, args.slices
    vol = slicer.util.addVolumeFromArray(np.zeros((d, n, n), np.int16), name="v")
    logic = SegmentWithSAM2Logic()
    seg, a = logic.prepareSegmentation(vol, None, "a")
    _, b = logic.prepareSegmentation(vol, seg, "b")
    other = np.zeros((d, n, n), np.uint8)
    other[:, n // 4: n // 2, n // 4: n // 2] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(other, seg, b, vol)
    yy, xx = np.mgrid[:n, :n]
    organ = ((yy - n / 2) ** 2 + (xx - n / 2) ** 2 < (n / 5) ** 2)[None].repeat(d, 0)
    organ[: d // 4] = False
    organ[3 * d // 4:] = False
    ks = range(d // 4, 3 * d // 4)

    t = time.perf_counter()
    logic.applyUpdates([SliceUpdate(a, 2, d // 2, d // 2, organ[d // 2: d // 2 + 1])], seg, vol)
    one = time.perf_counter() - t
    t = time.perf_counter()
    for k in ks:
        logic.applyUpdates([SliceUpdate(a, 2, k, k, organ[k: k + 1])], seg, vol)
    per_poll = (time.perf_counter() - t) / len(ks)
    t = time.perf_counter()
    written = logic._writeDiffering(seg, a, vol, 2, 0, organ)
    check = time.perf_counter() - t
    assert written == 0
    _, c = logic.prepareSegmentation(vol, seg, "c")
    t = time.perf_counter()
    written = logic._writeDiffering(seg, c, vol, 2, 0, organ)
    runs = time.perf_counter() - t
    assert np.array_equal(sc.segment_array(seg, a, vol), organ) and np.array_equal(sc.segment_array(seg, b, vol), other > 0)
    print(f"volume {n}x{n}x{d}: prompt slice {one * 1e3:.0f} ms; propagation slice per poll {per_poll * 1e3:.0f} ms; "
          f"final check of {d} slices {check * 1e3:.0f} ms; final write of {written} slices in one run {runs * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
