"""Click-to-picture latency and propagation rate of ``sam2volume web`` in headless Chromium (the shared CT).

Usage: .venv/bin/python benchmarks/bench_web.py [--clicks 20] [--multisamples 0] [--propagations 5] [--sam2-size 0]
Each click round: Reset, then a + point click on the liver in the axial view; the latency is from the click
(the browser's pointerdown) to the first picture of the view whose pixel 5 voxels below the click
shows the segment's colour (magenta; the point's glyph is green) (the picture is read back in the page, so this is what a user sees).
Prints p50/p95/max in ms, then the app's and its engine server's CPU use and memory over 10 s idle with
the page open. --multisamples 8 is trame-slicer's own render-window setting.

Each propagation round (baseline engine; with --sam2-size N also SAM2 hiera tiny with random weights at N px in
a second app, the two interleaved, which first alternating): Reset, the + point, then Propagate to the volume's
ends (--stop-after 0); measured in the page, from the Propagate button's pointerdown to the last picture drawn
(the last picture of any slice view arriving by 2 s after the status says "propagated"): slices written per
second (the status' count) and pictures drawn per second of each slice view. Prints min and median over rounds
and the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
DATA = Path(os.environ.get("SAM2VOLUME_SHARED_DATA", ROOT.parent / "shared" / "data")) / "totalseg"

PROBE_JS = """(a) => {
  const img = document.getElementById(a.id).parentElement.querySelector('img.image-display-area');
  const canvas = document.createElement('canvas');
  window.__lat = {t0: null, t1: null};
  window.addEventListener('pointerdown', () => { window.__lat.t0 = performance.now(); }, {capture: true, once: true});
  const onload = () => {
    if (window.__lat.t0 === null || window.__lat.t1 !== null) return;
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const d = ctx.getImageData(a.x, a.y, 1, 1).data;
    if (Math.min(d[0], d[2]) - d[1] > 40) {  // the segment's fill (magenta), not the point's green glyph
      window.__lat.t1 = performance.now();
      img.removeEventListener('load', onload);
    }
  };
  img.addEventListener('load', onload);
}"""

PROPAGATION_JS = """(ids) => {  // one propagation round: the press, the status' end, each slice view's pictures
  const m = {t0: null, t1: null, status: '', loads: {}};
  window.__prop = m;
  for (const id of ids) {
    m.loads[id] = [];
    const img = document.getElementById(id).parentElement.querySelector('img.image-display-area');
    img.addEventListener('load', () => { if (window.__prop === m && m.t0 !== null) m.loads[id].push(performance.now()); });
  }
  document.getElementById('propagate').addEventListener('pointerdown', () => { m.t0 = performance.now(); },
                                                        {capture: true, once: true});
  const status = document.getElementById('status');
  new MutationObserver((records, observer) => {
    const text = status.textContent.trim();
    if (m.t0 !== null && m.t1 === null && /^(propagated|not propagated|propagation failed|cancelled)/.test(text)) {
      m.t1 = performance.now(); m.status = text; observer.disconnect();
    }
  }).observe(status, {childList: true, characterData: true, subtree: true});
}"""
DRAWN_AFTER_S = 2.0  # how long after the status' "propagated" a picture still counts as the propagation's last


IDLE_S = 10.0


def idle_use(pids: list[int], seconds: float) -> list[tuple[int, float, float]]:
    """(pid, CPU % of one core, RSS MiB) of each process over ``seconds`` of idling, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")

    def cpu(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime + stime

    before = {pid: cpu(pid) for pid in pids}
    time.sleep(seconds)
    out = []
    for pid in pids:
        rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
        out.append((pid, 100.0 * (cpu(pid) - before[pid]) / seconds, rss / 1024))
    return out


def propagation_round(page: Any, vol: Any, views: dict) -> dict:
    """Reset, the + point on the liver, Propagate: wall time (s), slices written, pictures per slice view."""
    import re

    from web_helpers import click_voxel, reset, shown_index, wait

    reset(page)
    click_voxel(page, vol, "axial", (84, 56, shown_index(vol, views["axial"], 2)))
    time.sleep(1.0)  # the click's pictures are drawn before the round starts
    page.evaluate(PROPAGATION_JS, [views[o]["id"] for o in ORIENTATIONS])
    page.click("#propagate")
    wait(lambda: page.evaluate("window.__prop.t1 !== null"), 900, "the propagation")
    time.sleep(DRAWN_AFTER_S + 0.5)
    m = page.evaluate("window.__prop")
    written = re.match(r"propagated: (\d+) slices written", m["status"])
    if written is None:
        raise RuntimeError(f"the propagation did not finish: {m['status']!r}")
    loads = {o: [t for t in m["loads"][views[o]["id"]] if t <= m["t1"] + 1000 * DRAWN_AFTER_S] for o in ORIENTATIONS}
    end = max([m["t1"], *(t for times in loads.values() for t in times)])
    wall = (end - m["t0"]) / 1000
    return {"wall": wall, "slices": int(written.group(1)), "pictures": {o: len(loads[o]) for o in ORIENTATIONS}}


ORIENTATIONS = ("axial", "coronal", "sagittal")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=20, help="click-to-picture rounds (0: none)")
    parser.add_argument("--multisamples", type=int, default=0)
    parser.add_argument("--propagations", type=int, default=5, help="propagation rounds per engine (0: none)")
    parser.add_argument("--sam2-size", type=int, default=0,
                        help="also SAM2 hiera tiny with random weights at this image size, e.g. 128 (0: baseline only)")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright
    from web_helpers import CHROMIUM, engine_pids, open_page, pixel_of, ras_of, reset, shown_index, state, view_box, wait, web_app

    from sam2volume import read_volume

    if CHROMIUM is None:
        print("no system chromium (apt-get install chromium)", file=sys.stderr)
        return 2
    image = DATA / "example_ct_sm.nii.gz"
    vol = read_volume(image)
    latencies = []
    folder = Path(tempfile.mkdtemp(prefix="bench-web-"))  # kept: the apps' output, e.g. after a failure
    load_before = os.getloadavg()
    engines = {"baseline": ("--stop-after", "0")}
    if args.sam2_size:
        engines[f"sam2 (hiera tiny, random weights, {args.sam2_size} px)"] = (
            "--stop-after", "0", "--engine", "sam2", "--model", "sam2.1-hiera-tiny", "--random-weights-size", str(args.sam2_size))
    rounds: dict[str, list[dict]] = {name: [] for name in engines}
    with contextlib.ExitStack() as stack, sync_playwright() as p:
        apps = {name: stack.enter_context(web_app(image, _mkdir(folder / f"app{n}") / "web.log", "--multisamples", str(args.multisamples), *extra))
                for n, (name, extra) in enumerate(engines.items())}
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pages = {name: open_page(browser, app.url) for name, app in apps.items()}
        page, app = pages["baseline"], apps["baseline"]
        if args.clicks:
            page.click("#tool-positive")
            wait(lambda: state(page, "tool") == "positive", 60, "the tool")
            view, box = view_box(page, "axial")
            k = shown_index(vol, view, 2)
            click = pixel_of(view, box, ras_of(vol, (84, 56, k)))
            probe = pixel_of(view, box, ras_of(vol, (86, 51, k)))  # 5 voxels below: clear of the point's glyph and label
            for n in range(args.clicks + 1):  # the first round warms up (engine session, first picture)
                reset(page)
                page.click("#tool-positive")
                wait(lambda: state(page, "tool") == "positive", 60, "the tool")
                time.sleep(0.5)
                page.evaluate(PROBE_JS, {"id": view["id"], "x": int(probe[0] - box["x"]), "y": int(probe[1] - box["y"])})
                page.mouse.click(*click)
                lat = wait(lambda: page.evaluate("window.__lat.t1 !== null && window.__lat.t1 - window.__lat.t0"), 30,
                           "the picture with the mask")
                if n:
                    latencies.append(float(lat))
            idle = idle_use([app.process.pid, *engine_pids(app)], IDLE_S)  # the page open, nobody clicking
        views = {name: {o: view_box(pg, o)[0] for o in ORIENTATIONS} for name, pg in pages.items()}
        names = list(engines)
        for n in range(args.propagations):  # interleaved: the engines take turns, which first alternating
            for name in (names if n % 2 == 0 else names[::-1]):
                rounds[name].append(propagation_round(pages[name], vol, views[name]))
        browser.close()
    load_after = os.getloadavg()
    if latencies:
        a = np.array(latencies)
        print(f"click-to-picture over {len(a)} clicks (multisamples {args.multisamples}): p50 {np.percentile(a, 50):.0f} ms, "
              f"p95 {np.percentile(a, 95):.0f} ms, max {a.max():.0f} ms")
        for (pid, cpu, rss), name in zip(idle, ("app", "engine server")):
            print(f"idle {IDLE_S:.0f} s with the page open: {name} CPU {cpu:.1f} %, memory (RSS) {rss:.0f} MiB")
    for name, results in rounds.items():
        if not results:
            continue
        slices = np.array([r["slices"] / r["wall"] for r in results])
        wall = np.array([r["wall"] for r in results])
        print(f"propagation, {name}, Propagate to last picture over {len(results)} rounds: "
              f"{results[0]['slices']} slices written, slices per second min {slices.min():.1f} median {np.median(slices):.1f} "
              f"(wall s min {wall.min():.2f} median {np.median(wall):.2f}; rounds: "
              + ", ".join(f"{r['slices'] / r['wall']:.1f}" for r in results) + ")")
        for o in ORIENTATIONS:
            drawn = np.array([r["pictures"][o] / r["wall"] for r in results])
            print(f"  {o} view pictures drawn per second: min {drawn.min():.1f} median {np.median(drawn):.1f} "
                  f"(pictures per round: {', '.join(str(r['pictures'][o]) for r in results)})")
    print("load average (1, 5, 15 min) before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f}; {} CPUs".format(
        *load_before, *load_after, os.cpu_count()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
