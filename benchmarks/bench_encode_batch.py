"""Image-encoder seconds per slice by batch size and dtype (picks ENCODE_BATCH_DEFAULT per device).

Usage: .venv/bin/python benchmarks/bench_encode_batch.py [--device cpu|cuda] [--sizes 512 1024]
       [--batches 1 2 4 8] [--repeats 3] [--json out.json]
Hiera tiny, random weights, one warm-up pass per batch size, then interleaved repeats; prints min/median.
This is a benchmark, not a test: figures vary with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", type=int, nargs="*", default=[512, 1024])
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 2, 4, 8])
    ap.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "core"))
    import torch

    from sam2volume.engine.config import EngineConfig
    from sam2volume.engine.predictor import autocast, build_predictor, resolve_device, resolve_dtype

    dev = resolve_device(args.device)
    results: dict[str, dict] = {}
    for size in args.sizes:
        model = build_predictor(EngineConfig(image_size=size, random_weights=True, device=str(dev)))
        for name in args.dtypes:
            dtype = resolve_dtype(name, dev)
            times: dict[int, list[float]] = {}
            with torch.inference_mode(), autocast(dev, dtype):
                for b in args.batches:
                    model.forward_image(torch.randn(b, 3, size, size, device=dev))
                for _ in range(args.repeats):
                    for b in args.batches:
                        x = torch.randn(b, 3, size, size, device=dev)
                        if dev.type == "cuda":
                            torch.cuda.synchronize()
                        t = time.perf_counter()
                        model.forward_image(x)
                        if dev.type == "cuda":
                            torch.cuda.synchronize()
                        times.setdefault(b, []).append((time.perf_counter() - t) / b)
            row = "  ".join(f"batch {b}: {min(v):.4f}/{statistics.median(v):.4f}" for b, v in times.items())
            print(f"{dev.type} {size} px {name}: s/slice min/median  {row}", flush=True)
            results[f"{size}/{name}"] = {str(b): {"min": min(v), "median": statistics.median(v)} for b, v in times.items()}
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(dev), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
