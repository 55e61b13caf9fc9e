"""Engine server overhead: in-process Session vs RemoteSession over loopback, and load at 1/4/8 clients.

    .venv/bin/python benchmarks/bench_server.py [--slices 20] [--prompts 30] [--no-sam2] [--sam2-slices 8]

* Per prompt at 512 x 512 frames (the real CT upsampled in-plane to 512 x 512): the same clicks through
  BaselineSession and a RemoteSession on a real `sam2volume serve` process (loopback); the difference of the
  medians is the server's overhead (HTTP, JSON, bit-packed mask). With SAM2 (hiera tiny, random weights,
  512 px) the same for prompts and for a propagation, where the overhead is a share of the model's time.
* Load: N client threads, each with its own session on the same volume (uploaded once), 20 prompts each,
  baseline engine: prompts per second over all clients, p50 / p95 latency per prompt.
Prints a JSON summary; CPU figures vary with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "core"))

from sam2volume import Volume, read_volume  # noqa: E402
from sam2volume.baseline import BaselineSession  # noqa: E402
from sam2volume.client import RemoteSession, start_local_server  # noqa: E402


def ct_512(slices: int) -> Volume:
    ct = read_volume(ROOT.parent / "shared" / "data" / "totalseg" / "example_ct_sm.nii.gz")
    arr = ct.array[:, :, :slices]
    ri = 512 / arr.shape[0]
    rj = 512 / arr.shape[1]
    ii = np.minimum((np.arange(512) / ri).astype(int), arr.shape[0] - 1)
    jj = np.minimum((np.arange(512) / rj).astype(int), arr.shape[1] - 1)
    big = np.ascontiguousarray(arr[ii][:, jj])
    return Volume(big, ct.spacing / np.array([ri, rj, 1.0]), ct.origin, ct.direction, {"modality": "CT"})


def clicks(vol: Volume, n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lo = np.array([150, 150, 1])
    hi = np.array(vol.shape) - np.array([150, 150, 1])
    return [rng.integers(lo, hi).tolist() for _ in range(n)]


def time_prompts(session, pts) -> list[float]:
    out = []
    for n, p in enumerate(pts):
        t = time.perf_counter()
        session.add_points(1 + n % 2, [p])
        out.append(time.perf_counter() - t)
    return out


def ms(v: float) -> float:
    return round(v * 1000, 2)


def prompt_overhead(server, vol, n) -> dict:
    pts = clicks(vol, n)
    local = BaselineSession(vol)
    with RemoteSession(server.url, vol, engine="baseline", token=server.token) as remote:
        for s in (local, remote):  # warm up: the connection and both sessions' per-slice frame caches
            time_prompts(s, pts)
            s.reset()
        t_remote = time_prompts(remote, pts)
        t_local = time_prompts(local, pts)
        rtt = []
        for _ in range(30):
            t0 = time.perf_counter()
            remote.slice_scores()  # one small request and answer
            rtt.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rep_l = local.propagate("both", stop_after=None)
        t_prop_local = time.perf_counter() - t0
        t0 = time.perf_counter()
        rep_r = remote.propagate("both", stop_after=None)
        t_prop_remote = time.perf_counter() - t0
        assert rep_l == rep_r
    return {"engine": "baseline", "frame": list(vol.shape[:2]), "prompts": n,
            "local_ms_median": ms(statistics.median(t_local)), "remote_ms_median": ms(statistics.median(t_remote)),
            "overhead_ms_per_prompt": ms(statistics.median(t_remote) - statistics.median(t_local)),
            "small_request_ms_median": ms(statistics.median(rtt)),
            "propagation_slices": rep_l.slices_run,
            "local_ms_per_slice": ms(t_prop_local / rep_l.slices_run), "remote_ms_per_slice": ms(t_prop_remote / rep_r.slices_run),
            "overhead_ms_per_slice": ms((t_prop_remote - t_prop_local) / rep_l.slices_run)}


def sam2_overhead(server, vol, n, rounds=3) -> dict:
    """SAM2 through both paths, interleaved, ``rounds`` times: min per slice and median per prompt (shared CPUs)."""
    from sam2volume.engine.config import EngineConfig
    from sam2volume.session import Session

    cfg = EngineConfig(model="sam2.1-hiera-tiny", image_size=512, random_weights=True, device="cpu", dtype="bfloat16")
    pts = clicks(vol, n, 1)
    local = Session(vol, "axial", cfg)
    with RemoteSession(server.url, vol, "axial", cfg, token=server.token) as remote:
        for s in (local, remote):  # warm up: model build and every slice's features in both caches
            s.add_points(1, [pts[0]])
            s.propagate("both", stop_after=None)
        t_local, t_remote, per_l, per_r = [], [], [], []
        for _ in range(rounds):
            for s, times, per in ((local, t_local, per_l), (remote, t_remote, per_r)):
                s.reset()
                times.extend(time_prompts(s, pts))
                t0 = time.perf_counter()
                rep = s.propagate("both", stop_after=None)
                per.append((time.perf_counter() - t0) / rep.slices_run)
        assert np.array_equal(local.result().array, remote.result().array)
    best_l, best_r = min(per_l), min(per_r)
    return {"engine": "sam2.1-hiera-tiny, random weights, 512 px, bf16 autocast (CPU)", "frames": list(vol.shape),
            "prompts": len(t_local), "local_ms_median": ms(statistics.median(t_local)), "remote_ms_median": ms(statistics.median(t_remote)),
            "overhead_ms_per_prompt": ms(statistics.median(t_remote) - statistics.median(t_local)),
            "propagation_slices": rep.slices_run, "local_ms_per_slice_min": ms(best_l), "remote_ms_per_slice_min": ms(best_r),
            "overhead_pct_of_propagation": round(100 * (best_r - best_l) / best_l, 2)}


def load(server, vol, clients: int, prompts: int = 20) -> dict:
    sessions = [RemoteSession(server.url, vol, engine="baseline", token=server.token) for _ in range(clients)]
    lat: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def run(n: int) -> None:
        barrier.wait()
        t = time_prompts(sessions[n], clicks(vol, prompts, 10 + n))
        with lock:
            lat.extend(t)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    for s in sessions:
        s.close()
    q = np.quantile(lat, [0.5, 0.95])
    return {"clients": clients, "prompts": len(lat), "prompts_per_s": round(len(lat) / wall, 1),
            "p50_ms": ms(q[0]), "p95_ms": ms(q[1])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=30)
    ap.add_argument("--no-sam2", action="store_true")
    ap.add_argument("--sam2-slices", type=int, default=8)
    args = ap.parse_args()
    vol = ct_512(args.slices)
    server = start_local_server(device="cpu", allow_random_weights=True)
    try:
        out = {"volume": list(vol.shape), "baseline": prompt_overhead(server, vol, args.prompts)}
        t0 = time.perf_counter()
        with RemoteSession(server.url, ct_512(args.slices + 1), engine="baseline", token=server.token) as s:
            out["upload_s_first_session"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        with RemoteSession(server.url, vol, engine="baseline", token=server.token) as s:
            out["open_s_volume_already_there"] = round(time.perf_counter() - t0, 3)
            assert not s.uploaded
        out["load"] = [load(server, vol, c) for c in (1, 4, 8)]
        if not args.no_sam2:
            small = Volume(vol.array[:, :, : args.sam2_slices].copy(), vol.spacing, vol.origin, vol.direction, vol.meta)
            out["sam2"] = sam2_overhead(server, small, 6)
    finally:
        server.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
