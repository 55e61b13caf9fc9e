"""Click-to-picture latency of ``sam2volume web`` in headless Chromium (baseline engine, the shared CT).

Usage: .venv/bin/python benchmarks/bench_web.py [--clicks 20] [--multisamples 0]
Each round: Reset, then a + point click on the liver in the axial view; the latency is from the click
(the browser's pointerdown) to the first picture of the view whose pixel 5 voxels below the click
shows the segment's colour (magenta; the point's glyph is green) (the picture is read back in the page, so this is what a user sees).
Prints p50/p95/max in ms, then the app's and its engine server's CPU use and memory over 10 s idle with
the page open. --multisamples 8 is trame-slicer's own render-window setting.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--multisamples", type=int, default=0)
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
    log = Path(tempfile.mkdtemp(prefix="bench-web-")) / "web.log"  # kept: the app's output, e.g. after a failure
    with web_app(image, log, "--multisamples", str(args.multisamples)) as app, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = open_page(browser, app.url)
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
        browser.close()
    a = np.array(latencies)
    print(f"click-to-picture over {len(a)} clicks (multisamples {args.multisamples}): p50 {np.percentile(a, 50):.0f} ms, "
          f"p95 {np.percentile(a, 95):.0f} ms, max {a.max():.0f} ms")
    for (pid, cpu, rss), name in zip(idle, ("app", "engine server")):
        print(f"idle {IDLE_S:.0f} s with the page open: {name} CPU {cpu:.1f} %, memory (RSS) {rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
