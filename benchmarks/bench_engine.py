"""Engine benchmark: upstream SAM2 (JPEG folder, as its README shows) against our in-memory Session.

In one process, on the same volume (real CT slices from ../shared/data, stacked to the asked length),
the same prompt (a box on the middle slice) and the same random weights (hiera tiny, bf16 autocast on
CPU, which upstream needs there), it prints per image size:

* seconds per slice for upstream and for us (both sides warmed up, runs interleaved and repeated:
  min and median), the same slices counted on both sides, and the ratio ours/upstream;
* time to the first 2D mask after a click (model loaded), on a slice not yet encoded and on one already
  encoded, for both sides;
* the share of our time spent outside the model's own forward passes;
* a correction (negative point) plus re-propagation against a fresh run (no re-encoding);
* peak RSS growth during each run, for the memory lengths (default 64 and 300 slices at 512 px).

Usage: .venv/bin/python benchmarks/bench_engine.py [--sizes 512 1024] [--time-slices 16] [--repeats 3]
       [--memory-slices 64 300] [--memory-size 512] [--memory-cache-mb 256] [--json out.json]
Memory runs each start a fresh process, so allocator reuse between runs does not hide growth.
This is a benchmark, not a test: the machines are shared, so figures vary from run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SAM2VOLUME_SHARED_DATA", ROOT.parent / "shared" / "data"))
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Samples this process's RSS in a thread; ``growth`` is the peak above the starting RSS (MB)."""

    def __enter__(self):
        self.start = rss_mb()
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb())
        self.growth = self.peak - self.start


class ModelTimer:
    """Adds up wall time inside the model's forward passes (encoder, tracking step, memory encoder)."""

    NAMES = ("forward_image", "track_step", "_encode_new_memory")

    def __init__(self, model):
        self.total = 0.0
        self.depth = 0
        for name in self.NAMES:
            orig = getattr(model, name)
            setattr(model, name, self._wrap(orig))

    def _wrap(self, fn):
        def inner(*a, **k):
            if self.depth:
                return fn(*a, **k)
            self.depth += 1
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.total += time.perf_counter() - t
                self.depth -= 1

        return inner


def make_volume(n_slices: int):
    """Real CT slices (example_ct_sm) stacked, mirrored back and forth, to ``n_slices``."""
    from sam2volume import Volume, read_volume

    ct = read_volume(DATA / "totalseg" / "example_ct_sm.nii.gz")
    a = ct.array
    idx = []
    k, step = 0, 1
    while len(idx) < n_slices:
        idx.append(k)
        if not 0 <= k + step < a.shape[2]:
            step = -step
        k += step
    return Volume(np.ascontiguousarray(a[:, :, idx]), ct.spacing, ct.origin, ct.direction, {"modality": "CT", "source": "bench"})


def build_models(size: int):
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    from sam2volume.engine.config import EngineConfig
    from sam2volume.engine.predictor import build_predictor

    feat = size // 16
    torch.manual_seed(0)
    up = build_sam2_video_predictor(
        CONFIG, None, device="cpu",
        hydra_overrides_extra=[f"++model.image_size={size}",
                               f"++model.memory_attention.layer.self_attention.feat_sizes=[{feat},{feat}]",
                               f"++model.memory_attention.layer.cross_attention.feat_sizes=[{feat},{feat}]"],
    )
    cfg = EngineConfig(model="sam2.1-hiera-tiny", image_size=size, random_weights=True, device="cpu", dtype="bfloat16")
    ours = build_predictor(cfg)
    ours.load_state_dict(up.state_dict())
    return up, ours, cfg


def run_upstream(up, vol, window, box_ijk, mid):
    """Upstream as its README shows: frames to a JPEG folder, init_state, prompt, propagate both ways."""
    import torch
    from PIL import Image

    from sam2volume.slicing import SliceAxis

    canon = vol.reoriented(vol.reorientation_to("LPS"))
    axis = SliceAxis("axial", canon.shape)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d, torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for s in range(axis.num_slices):
            img = (window.apply(axis.frame(canon.array, s)) * 255).round().astype(np.uint8)
            Image.fromarray(img).convert("RGB").save(f"{d}/{s:05d}.jpg", quality=95)
        state = up.init_state(d)
        box = [box_ijk[0][0], box_ijk[0][1], box_ijk[1][0], box_ijk[1][1]]
        up.add_new_points_or_box(state, frame_idx=mid, obj_id=1, box=box)
        n = 0
        for reverse in (False, True):
            for _ in up.propagate_in_video(state, reverse=reverse):
                n += 1
        del state
    return time.perf_counter() - t0, n


def run_ours(ours, cfg, vol, window, box_ijk, timer=None, correction=False):
    from sam2volume.session import Session

    t0 = time.perf_counter()
    m0 = timer.total if timer else 0.0
    session = Session(vol, "axial", cfg, predictor=ours, window=window)
    session.add_box(1, box_ijk)
    rep = session.propagate(stop_after=None)
    fresh = time.perf_counter() - t0
    model_time = (timer.total - m0) if timer else float("nan")
    out = {"fresh_s": fresh, "slices": rep.slices_run, "model_s": model_time}
    if correction:
        n = vol.shape[2]
        c = box_ijk[0][2] + 3 if box_ijk[0][2] + 3 < n else max(0, box_ijk[0][2] - 1)  # short stacks too
        calls = ours.encoder_calls
        t1 = time.perf_counter()
        session.add_points(1, [[box_ijk[0][0] + 2, box_ijk[0][1] + 2, c]], [0])
        rep2 = session.propagate(objects=[1], start=c, stop_after=None)
        out["repropagate_s"] = time.perf_counter() - t1
        out["repropagate_slices"] = rep2.slices_run
        out["reencoded"] = ours.encoder_calls - calls
    session.result()
    return out


def first_mask_times(up, ours, cfg, vol, window, box_ijk, mid):
    """Seconds from a click to its 2D mask, model loaded: the slice not yet encoded, then encoded."""
    import torch
    from PIL import Image

    from sam2volume.session import Session
    from sam2volume.slicing import SliceAxis

    out = {}
    session = Session(vol, "axial", cfg, predictor=ours, window=window)
    t = time.perf_counter()
    session.add_box(1, box_ijk)
    out["ours_cold"] = time.perf_counter() - t
    t = time.perf_counter()
    session.add_points(1, [[box_ijk[0][0] + 5, box_ijk[0][1] + 5, mid]], [1])
    out["ours_encoded"] = time.perf_counter() - t
    canon = vol.reoriented(vol.reorientation_to("LPS"))
    axis = SliceAxis("axial", canon.shape)
    with tempfile.TemporaryDirectory() as d, torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for s in range(axis.num_slices):
            img = (window.apply(axis.frame(canon.array, s)) * 255).round().astype(np.uint8)
            Image.fromarray(img).convert("RGB").save(f"{d}/{s:05d}.jpg", quality=95)
        state = up.init_state(d)  # upstream encodes frame 0 here; the prompted slice on first use
        box = [box_ijk[0][0], box_ijk[0][1], box_ijk[1][0], box_ijk[1][1]]
        t = time.perf_counter()
        up.add_new_points_or_box(state, frame_idx=mid, obj_id=1, box=box)
        out["upstream_cold"] = time.perf_counter() - t
        t = time.perf_counter()
        up.add_new_points_or_box(state, frame_idx=mid, obj_id=1, points=[[box_ijk[0][0] + 5, box_ijk[0][1] + 5]], labels=[1],
                                 clear_old_points=False)
        out["upstream_encoded"] = time.perf_counter() - t
    return out


def _stats(values):
    import statistics

    return {"min": min(values), "median": statistics.median(values), "runs": len(values)}


def _child_memory(which: str, n: int, size: int, cache_mb: float) -> dict:
    import subprocess

    cmd = [sys.executable, "-W", "ignore", __file__, "--child", which, str(n), str(size), str(cache_mb)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(which: str, n: int, size: int, cache_mb: float) -> None:
    """One memory measurement in this (fresh) process; prints a JSON line."""
    from dataclasses import replace

    from sam2volume.windowing import choose_window

    up, ours, cfg = build_models(size)
    cfg = replace(cfg, feature_cache_mb=cache_mb)
    vol = make_volume(n)
    window = choose_window(vol.array, "CT", "abdomen")
    box = [[45, 27, n // 2], [104, 85, n // 2]]
    t = time.perf_counter()
    with PeakRSS() as m:
        if which == "upstream":
            run_upstream(up, vol, window, box, n // 2)
        else:
            run_ours(ours, cfg, vol, window, box)
    print(json.dumps({"growth_mb": m.growth, "seconds": time.perf_counter() - t}))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], int(argv[2]), int(argv[3]), float(argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[512, 1024])
    ap.add_argument("--time-slices", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed runs per side (min and median printed)")
    ap.add_argument("--memory-slices", type=int, nargs="*", default=[64, 300])
    ap.add_argument("--memory-size", type=int, default=512)
    ap.add_argument("--memory-cache-mb", type=float, default=256.0, help="our feature-cache budget in the memory runs")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    import torch

    from sam2volume.windowing import choose_window

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    results = {"torch_threads": torch.get_num_threads(), "sizes": {}, "memory": {}}
    print(f"CPU, hiera tiny, random weights, bf16 autocast, {torch.get_num_threads()} threads")
    for size in args.sizes:
        vol = make_volume(args.time_slices)
        window = choose_window(vol.array, "CT", "abdomen")
        mid = args.time_slices // 2
        box = [[45, 27, mid], [104, 85, mid]]
        up, ours, cfg = build_models(size)
        timer = ModelTimer(ours)
        short = make_volume(2)
        run_ours(ours, cfg, short, window, [[45, 27, 1], [104, 85, 1]])  # warm-up, both sides
        run_upstream(up, short, window, [[45, 27, 1], [104, 85, 1]], 1)
        up_times, our_times, r = [], [], None
        for rep in range(args.repeats):  # interleaved, the order alternating
            for side in (("up", "ours") if rep % 2 == 0 else ("ours", "up")):
                if side == "up":
                    t_up, n_up = run_upstream(up, vol, window, box, mid)
                    up_times.append(t_up / n_up)
                else:
                    r = run_ours(ours, cfg, vol, window, box, timer=timer, correction=True)
                    our_times.append(r["fresh_s"] / r["slices"])
        if n_up != r["slices"]:
            print(f"  note: upstream visited {n_up} slices, ours {r['slices']}")
        clicks = first_mask_times(up, ours, cfg, vol, window, box, mid)
        up_s, our_s = _stats(up_times), _stats(our_times)
        row = {
            "slices_counted": {"upstream": n_up, "ours": r["slices"]},
            "upstream_s_per_slice": up_s,
            "ours_s_per_slice": our_s,
            "ratio_ours_upstream_median": our_s["median"] / up_s["median"],
            "first_mask_s": clicks,
            "outside_model_share": 1 - r["model_s"] / r["fresh_s"],
            "repropagate_s": r["repropagate_s"],
            "fresh_s": r["fresh_s"],
            "repropagate_speedup": r["fresh_s"] / r["repropagate_s"] * r["repropagate_slices"] / r["slices"],
            "reencoded_slices_in_correction": r["reencoded"],
        }
        results["sizes"][size] = row
        print(f"\n== {size} px, {args.time_slices} slices, box on slice {mid}, {args.repeats} interleaved runs per side")
        print(f"  upstream (JPEG folder): {up_s['min']:.3f} min / {up_s['median']:.3f} median s/slice ({n_up} slices)")
        print(f"  ours (in memory):       {our_s['min']:.3f} min / {our_s['median']:.3f} median s/slice ({r['slices']} slices)"
              f"   ratio of medians ours/upstream {row['ratio_ours_upstream_median']:.3f}")
        print(f"  first mask after a click: upstream {clicks['upstream_cold']:.3f} s (slice not encoded) / "
              f"{clicks['upstream_encoded']:.3f} s (encoded); ours {clicks['ours_cold']:.3f} / {clicks['ours_encoded']:.3f} s")
        print(f"  ours outside model forward passes: {100 * row['outside_model_share']:.2f} %")
        print(f"  correction + re-propagation: {r['repropagate_s']:.2f} s for {r['repropagate_slices']} slices vs fresh "
              f"{r['fresh_s']:.2f} s for {r['slices']}: {row['repropagate_speedup']:.2f}x faster per slice, "
              f"{r['reencoded']} slices re-encoded")
        del up, ours
    if args.memory_slices:
        size = args.memory_size
        print(f"\n== memory at {size} px: peak RSS growth during the run, each in a fresh process "
              f"(our feature cache budget {args.memory_cache_mb:g} MB)")
        for n in args.memory_slices:
            row = {which: _child_memory(which, n, size, args.memory_cache_mb) for which in ("upstream", "ours")}
            results["memory"][n] = row
            print(f"  {n:>4} slices: upstream +{row['upstream']['growth_mb']:7.1f} MB ({row['upstream']['seconds']:6.1f} s)"
                  f"   ours +{row['ours']['growth_mb']:7.1f} MB ({row['ours']['seconds']:6.1f} s)")
        ns = sorted(results["memory"])
        if len(ns) >= 2:
            a, b = results["memory"][ns[0]], results["memory"][ns[-1]]
            per = {w: (b[w]["growth_mb"] - a[w]["growth_mb"]) / (ns[-1] - ns[0]) for w in ("upstream", "ours")}
            results["memory_growth_mb_per_slice"] = per
            print(f"  growth per slice from {ns[0]} to {ns[-1]}: upstream {per['upstream']:.3f} MB, ours {per['ours']:.3f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "core"))
    raise SystemExit(main())
