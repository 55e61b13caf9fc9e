"""Engine benchmark: upstream SAM2 (JPEG folder, as its README shows) against our in-memory Session.

In one process, on the same volume (real CT slices from ../shared/data, stacked to the asked length),
the same prompt (a box on the middle slice) and the same random weights (hiera tiny by default, bf16
autocast on both sides), it prints per model and image size:

* seconds per slice and slices per second for upstream (whole run, and its propagation alone, without
  writing and loading the JPEG folder) and for us (both sides warmed up, runs interleaved and repeated:
  min and median), the same slices counted on both sides, and the ratio ours/upstream;
* peak memory of a timed run (GPU memory allocated on CUDA; RSS growth on CPU, where the fresh-process
  memory runs below are the figures to quote);
* time to the first 2D mask after a click (model loaded), on a slice not yet encoded and on one already
  encoded, for both sides;
* time to the propagated result after a prompt, with encoding ahead off and on (``encode_ahead``, the
  background having finished while the user would still be prompting; its duration is printed too);
* the share of our time spent outside the model's own forward passes;
* a correction (negative point) plus re-propagation against a fresh run (no re-encoding);
* with ``--compile``: the same, compiled (upstream's ``vos_optimized``, ours ``compile=True``), and the
  warm-up (compiling) cost of each side's first run;
* peak memory growth during each run, for the memory lengths (default 64 and 300 slices at 512 px).

Usage: .venv/bin/python benchmarks/bench_engine.py [--device cpu|cuda] [--models tiny small base+ large]
       [--sizes 512 1024] [--time-slices 16] [--repeats 3] [--compile] [--encode-ahead N]
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
MODELS = {"tiny": "sam2.1-hiera-tiny", "small": "sam2.1-hiera-small", "base+": "sam2.1-hiera-base-plus",
          "large": "sam2.1-hiera-large"}


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


class PeakMemory:
    """Peak memory above the start of the block (MB): GPU memory allocated on CUDA, RSS otherwise."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self._rss = PeakRSS().__enter__()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            self.growth = (torch.cuda.max_memory_allocated() - self.start) / 2**20
        else:
            self._rss.__exit__(*exc)
            self.growth = self._rss.growth


def memory_kind(device: str) -> str:
    """What PeakMemory measures on ``device``."""
    return "GPU memory allocated" if device == "cuda" else "RSS growth"


def sync(device: str) -> None:
    """Wait for the GPU, so a timing covers the work it measures."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


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
    """Real CT slices (example_ct_sm) stacked, mirrored back and forth, to ``n_slices``.
    ``SAM2VOLUME_BENCH_CT`` may name an .npz of that CT (array, spacing, origin, direction: what
    ``benchmarks/gpu_prepare.sh`` writes), for a machine without SimpleITK or the shared data."""
    from sam2volume import Volume, read_volume

    npz = os.environ.get("SAM2VOLUME_BENCH_CT")
    if npz:
        with np.load(npz) as f:
            ct = Volume(f["array"], f["spacing"], f["origin"], f["direction"], {"modality": "CT"})
    else:
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


def build_models(model: str, size: int, device: str = "cpu", compiled: bool = False):
    """Upstream's video predictor and ours, same config and weights (random, seeded), on ``device``."""
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    from sam2volume.engine.config import EngineConfig
    from sam2volume.engine.predictor import build_predictor
    from sam2volume.models.registry import get_model

    spec = get_model(MODELS[model])
    feat = size // 16
    torch.manual_seed(0)
    up = build_sam2_video_predictor(
        spec.config, None, device=device, vos_optimized=compiled,
        hydra_overrides_extra=[f"++model.image_size={size}",
                               f"++model.memory_attention.layer.self_attention.feat_sizes=[{feat},{feat}]",
                               f"++model.memory_attention.layer.cross_attention.feat_sizes=[{feat},{feat}]"],
    )
    cfg = EngineConfig(model=spec.name, image_size=size, random_weights=True, device=device, dtype="bfloat16",
                       compile=compiled)
    ours = build_predictor(cfg)
    ours.load_state_dict(up.state_dict())
    return up, ours, cfg


def _jpeg_folder(vol, window, folder: str) -> None:
    """The volume's axial slices as upstream reads a video: one JPEG per frame."""
    from PIL import Image

    from sam2volume.slicing import SliceAxis

    canon = vol.reoriented(vol.reorientation_to("LPS"))
    axis = SliceAxis("axial", canon.shape)
    for s in range(axis.num_slices):
        img = (window.apply(axis.frame(canon.array, s)) * 255).round().astype(np.uint8)
        Image.fromarray(img).convert("RGB").save(f"{folder}/{s:05d}.jpg", quality=95)


def _upstream_box(box_ijk):
    return [box_ijk[0][0], box_ijk[0][1], box_ijk[1][0], box_ijk[1][1]]


def run_upstream(up, vol, window, box_ijk, mid, device="cpu"):
    """Upstream as its README shows: frames to a JPEG folder, init_state, prompt, propagate both ways.
    Returns (whole run s, propagation alone s, slices visited)."""
    import torch

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d, torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16):
        _jpeg_folder(vol, window, d)
        state = up.init_state(d)
        sync(device)
        t1 = time.perf_counter()
        up.add_new_points_or_box(state, frame_idx=mid, obj_id=1, box=_upstream_box(box_ijk))
        n = 0
        for reverse in (False, True):
            for _ in up.propagate_in_video(state, reverse=reverse):
                n += 1
        sync(device)
        t2 = time.perf_counter()
        del state
    return t2 - t0, t2 - t1, n


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


def first_mask_times(up, ours, cfg, vol, window, box_ijk, mid, device="cpu", clicks: int = 6):
    """Seconds from a click to its 2D mask, model loaded, both sides interleaved, min and median:
    a box on a slice not yet encoded (three slices, one object each), then ``clicks`` further points
    on the encoded middle slice (the order of the sides alternating)."""
    import torch

    from sam2volume.session import Session

    n = vol.shape[2]
    fresh = [k for k in (mid, mid - 3, mid + 3) if 0 <= k < n]
    (x0, y0, _), (x1, y1, _) = box_ijk
    session = Session(vol, "axial", cfg, predictor=ours, window=window)
    cold = {"ours": [], "upstream": []}
    encoded = {"ours": [], "upstream": []}

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t

    with tempfile.TemporaryDirectory() as d, torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16):
        _jpeg_folder(vol, window, d)
        state = up.init_state(d)  # upstream encodes frame 0 here; a prompted slice on first use
        sync(device)
        # the order alternates: on CPU the first call of a pair measured about 2 ms slower, whichever side
        for obj, k in enumerate(fresh, start=1):
            calls = {"ours": lambda: session.add_box(obj, [[x0, y0, k], [x1, y1, k]]),
                     "upstream": lambda: up.add_new_points_or_box(state, frame_idx=k, obj_id=obj, box=[x0, y0, x1, y1])}
            for side in (("ours", "upstream") if obj % 2 else ("upstream", "ours")):
                cold[side].append(timed(calls[side]))
        for i in range(clicks):
            x, y = x0 + 5 + i, y0 + 5
            calls = {"ours": lambda: session.add_points(1, [[x, y, mid]], [1]),
                     "upstream": lambda: up.add_new_points_or_box(state, frame_idx=mid, obj_id=1, points=[[x, y]], labels=[1],
                                                                  clear_old_points=False)}
            for side in (("ours", "upstream") if i % 2 else ("upstream", "ours")):
                encoded[side].append(timed(calls[side]))
    return {"cold": {k: _stats(v) for k, v in cold.items()}, "encoded": {k: _stats(v) for k, v in encoded.items()}}


def encode_ahead_times(ours, cfg, vol, window, box_ijk, ahead: int) -> dict:
    """Seconds from "propagate" to the result after a box, with encoding ahead off and with ``ahead``
    slices encoded in the background first (as while the user goes on prompting)."""
    from dataclasses import replace

    from sam2volume.session import Session

    out = {}
    for n in (0, ahead):
        session = Session(vol, "axial", replace(cfg, encode_ahead=n), predictor=ours, window=window)
        session.add_box(1, box_ijk)
        t = time.perf_counter()
        session.wait_for_background()
        background = time.perf_counter() - t
        calls = ours.encoder_calls
        t = time.perf_counter()
        rep = session.propagate(stop_after=None)
        session.result()
        out[n] = {"propagate_s": time.perf_counter() - t, "background_s": background, "slices": rep.slices_run,
                  "encoded_ahead": session.slices_encoded_ahead, "encoded_while_propagating": ours.encoder_calls - calls}
    return out


def _stats(values):
    import statistics

    return {"min": min(values), "median": statistics.median(values), "runs": len(values)}


def time_sides(up, ours, cfg, vol, window, box, mid, repeats, device, timer=None):
    """Both sides warmed up on a short stack, then ``repeats`` interleaved runs each (order alternating)."""
    short = make_volume(2)
    run_ours(ours, cfg, short, window, [[45, 27, 1], [104, 85, 1]])
    run_upstream(up, short, window, [[45, 27, 1], [104, 85, 1]], 1, device)
    up_times, up_prop, our_times, up_mem, our_mem, r, n_up = [], [], [], [], [], None, 0
    for rep in range(repeats):
        for side in (("up", "ours") if rep % 2 == 0 else ("ours", "up")):
            with PeakMemory(device) as m:
                if side == "up":
                    t_up, t_prop, n_up = run_upstream(up, vol, window, box, mid, device)
                    up_times.append(t_up / n_up)
                    up_prop.append(t_prop / n_up)
                else:
                    r = run_ours(ours, cfg, vol, window, box, timer=timer, correction=True)
                    our_times.append(r["fresh_s"] / r["slices"])
            (up_mem if side == "up" else our_mem).append(m.growth)
    return {"upstream": _stats(up_times), "upstream_propagation": _stats(up_prop), "ours": _stats(our_times),
            "slices_counted": {"upstream": n_up, "ours": r["slices"]},
            "peak_mb": {"upstream": max(up_mem), "ours": max(our_mem)}, "last_ours": r}


def _warm_up_cost(up, ours, cfg, vol, window, box, mid, device) -> dict:
    """The first run of each freshly compiled side (compiling included), then a second run."""
    out = {}
    for side in ("upstream", "ours"):
        runs = []
        for _ in range(2):
            t = time.perf_counter()
            if side == "upstream":
                run_upstream(up, vol, window, box, mid, device)
            else:
                run_ours(ours, cfg, vol, window, box)
            runs.append(time.perf_counter() - t)
        out[side] = {"first_s": runs[0], "second_s": runs[1]}
    return out


def _print_times(label: str, t: dict, kind: str) -> None:
    up, prop, ours = t["upstream"], t["upstream_propagation"], t["ours"]
    n_up, n_ours = t["slices_counted"]["upstream"], t["slices_counted"]["ours"]
    print(f"  {label}upstream (JPEG folder):  {up['min']:.4f} min / {up['median']:.4f} median s/slice"
          f" = {1 / up['median']:.1f} slices/s ({n_up} slices); propagation alone {prop['median']:.4f} s/slice"
          f" = {1 / prop['median']:.1f} slices/s")
    print(f"  {label}ours (in memory):        {ours['min']:.4f} min / {ours['median']:.4f} median s/slice"
          f" = {1 / ours['median']:.1f} slices/s ({n_ours} slices); ratio of medians ours/upstream "
          f"{ours['median'] / up['median']:.3f}")
    if n_up != n_ours:
        print(f"  note: upstream visited {n_up} slices, ours {n_ours}")
    print(f"  {label}peak {kind} in a timed run: upstream +{t['peak_mb']['upstream']:.0f} MB, "
          f"ours +{t['peak_mb']['ours']:.0f} MB")


def bench_size(model, size, args) -> dict:
    from sam2volume.windowing import choose_window

    device = args.device
    vol = make_volume(args.time_slices)
    window = choose_window(vol.array, "CT", "abdomen")
    mid = args.time_slices // 2
    box = [[45, 27, mid], [104, 85, mid]]
    up, ours, cfg = build_models(model, size, device)
    timer = ModelTimer(ours)
    t = time_sides(up, ours, cfg, vol, window, box, mid, args.repeats, device, timer=timer)
    r = t.pop("last_ours")
    clicks = first_mask_times(up, ours, cfg, vol, window, box, mid, device)
    ahead = encode_ahead_times(ours, cfg, vol, window, box, args.encode_ahead or args.time_slices)
    off, on = ahead[0], ahead[max(ahead)]
    row = {
        **t,
        "ratio_ours_upstream_median": t["ours"]["median"] / t["upstream"]["median"],
        "first_mask_s": clicks,
        "encode_ahead": {str(k): v for k, v in ahead.items()},
        "outside_model_share": 1 - r["model_s"] / r["fresh_s"],
        "repropagate_s": r["repropagate_s"],
        "fresh_s": r["fresh_s"],
        "repropagate_speedup": r["fresh_s"] / r["repropagate_s"] * r["repropagate_slices"] / r["slices"],
        "reencoded_slices_in_correction": r["reencoded"],
    }
    print(f"\n== {model}, {size} px, {args.time_slices} slices, box on slice {mid}, {args.repeats} interleaved runs per side")
    _print_times("", t, memory_kind(device))
    c, e = clicks["cold"], clicks["encoded"]
    print(f"  first mask after a click, median (min) of {c['ours']['runs']} / {e['ours']['runs']}: slice not encoded "
          f"upstream {c['upstream']['median']:.4f} ({c['upstream']['min']:.4f}) s, ours {c['ours']['median']:.4f} "
          f"({c['ours']['min']:.4f}) s; encoded upstream {e['upstream']['median']:.4f} ({e['upstream']['min']:.4f}) s, "
          f"ours {e['ours']['median']:.4f} ({e['ours']['min']:.4f}) s")
    print(f"  result after a prompt: {off['propagate_s']:.2f} s without encoding ahead; {on['propagate_s']:.2f} s with "
          f"encode_ahead={max(ahead)} ({on['encoded_ahead']} slices encoded in {on['background_s']:.2f} s in the background, "
          f"{on['encoded_while_propagating']} while propagating)")
    print(f"  ours outside model forward passes: {100 * row['outside_model_share']:.2f} %")
    print(f"  correction + re-propagation: {r['repropagate_s']:.2f} s for {r['repropagate_slices']} slices vs fresh "
          f"{r['fresh_s']:.2f} s for {r['slices']}: {row['repropagate_speedup']:.2f}x faster per slice, "
          f"{r['reencoded']} slices re-encoded")
    del up, ours
    if args.compile:
        up, ours, cfg = build_models(model, size, device, compiled=True)
        warm = _warm_up_cost(up, ours, cfg, vol, window, box, mid, device)
        tc = time_sides(up, ours, cfg, vol, window, box, mid, args.repeats, device)
        tc.pop("last_ours")
        row["compiled"] = {**tc, "warm_up": warm}
        print(f"  compiled: warm-up (first / second run) upstream {warm['upstream']['first_s']:.1f} / "
              f"{warm['upstream']['second_s']:.1f} s, ours {warm['ours']['first_s']:.1f} / {warm['ours']['second_s']:.1f} s")
        _print_times("compiled ", tc, memory_kind(device))
        del up, ours
    return row


def _child_memory(which: str, n: int, size: int, cache_mb: float, device: str, model: str) -> dict:
    import subprocess

    cmd = [sys.executable, "-W", "ignore", __file__, "--child", which, str(n), str(size), str(cache_mb), device, model]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(which: str, n: int, size: int, cache_mb: float, device: str, model: str) -> None:
    """One memory measurement in this (fresh) process; prints a JSON line."""
    from dataclasses import replace

    from sam2volume.windowing import choose_window

    up, ours, cfg = build_models(model, size, device)
    cfg = replace(cfg, feature_cache_mb=cache_mb)
    vol = make_volume(n)
    window = choose_window(vol.array, "CT", "abdomen")
    box = [[45, 27, n // 2], [104, 85, n // 2]]
    t = time.perf_counter()
    with PeakMemory(device) as m:
        if which == "upstream":
            run_upstream(up, vol, window, box, n // 2, device)
        else:
            run_ours(ours, cfg, vol, window, box)
    print(json.dumps({"growth_mb": m.growth, "seconds": time.perf_counter() - t}))


def memory_runs(args, results) -> None:
    size, model = args.memory_size, args.models[0]
    print(f"\n== memory, {model} at {size} px: peak {memory_kind(args.device)} during the run, each in a fresh process "
          f"(our feature cache budget {args.memory_cache_mb:g} MB)")
    for n in args.memory_slices:
        row = {which: _child_memory(which, n, size, args.memory_cache_mb, args.device, model) for which in ("upstream", "ours")}
        results["memory"][n] = row
        print(f"  {n:>4} slices: upstream +{row['upstream']['growth_mb']:7.1f} MB ({row['upstream']['seconds']:6.1f} s)"
              f"   ours +{row['ours']['growth_mb']:7.1f} MB ({row['ours']['seconds']:6.1f} s)")
    ns = sorted(results["memory"])
    if len(ns) >= 2:
        a, b = results["memory"][ns[0]], results["memory"][ns[-1]]
        per = {w: (b[w]["growth_mb"] - a[w]["growth_mb"]) / (ns[-1] - ns[0]) for w in ("upstream", "ours")}
        results["memory_growth_mb_per_slice"] = per
        print(f"  growth per slice from {ns[0]} to {ns[-1]}: upstream {per['upstream']:.3f} MB, ours {per['ours']:.3f} MB")


def describe_machine(device: str) -> str:
    import platform

    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads, torch {torch.__version__}"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], int(argv[2]), int(argv[3]), float(argv[4]), argv[5], argv[6])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--models", nargs="*", choices=list(MODELS), default=["tiny"])
    ap.add_argument("--sizes", type=int, nargs="*", default=[512, 1024])
    ap.add_argument("--time-slices", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed runs per side (min and median printed)")
    ap.add_argument("--compile", action="store_true", help="also time both sides compiled, with their warm-up cost")
    ap.add_argument("--encode-ahead", type=int, default=0,
                    help="slices to encode ahead in the encoding-ahead comparison (0: all the time slices)")
    ap.add_argument("--memory-slices", type=int, nargs="*", default=[64, 300])
    ap.add_argument("--memory-size", type=int, default=512)
    ap.add_argument("--memory-cache-mb", type=float, default=256.0, help="our feature-cache budget in the memory runs")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    machine = describe_machine(args.device)
    results = {"machine": machine, "argv": argv, "models": {}, "memory": {}}
    print(f"{machine}; random weights, bf16 autocast on both sides")

    def save():  # after every row, so a run stopped at a time limit keeps the rows it finished
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))

    for model in args.models:
        for size in args.sizes:
            results["models"].setdefault(model, {})[size] = bench_size(model, size, args)
            save()
    if args.memory_slices:
        memory_runs(args, results)
        save()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "core"))
    raise SystemExit(main())
