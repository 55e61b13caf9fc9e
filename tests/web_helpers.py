"""Helpers for driving ``sam2volume web`` in headless Chromium (tests and benchmarks/bench_web.py).

Pixel positions come from the page's own view geometry (each slice view's XY-to-RAS and size, in the
page's state ``views``) and a voxel's RAS from ``sam2volume.read_volume`` (not from Slicer).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np

from server_helpers import stop_process

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STEP_S = 60  # longest wait for one page reaction (a CPU shared with other jobs)


@contextlib.contextmanager
def web_app(image: Path, log: Path, *args: str, token: str | None = None, tmpdir: Path | None = None) -> Iterator[Any]:
    """``sam2volume web IMAGE --engine baseline ARGS`` on a free loopback port; yields url (the tokened one it
    prints; with ``token``: the one ARGS give by --page-token-file, "" for --no-token), process, port and token; stopped
    afterwards. ``tmpdir``: the app's own temporary folder (TMPDIR), e.g. to see what it leaves there."""
    port = free_port()
    cmd = [sys.executable, "-m", "sam2volume", "web", str(image), "--engine", "baseline", "--device", "cpu",
           "--window", "abdomen", "--host", "127.0.0.1", "--port", str(port), *args]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "HOME": str(log.parent), **({"TMPDIR": str(tmpdir)} if tmpdir else {})},
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}/"
    url = None if token is None else (f"{base}?token={token}" if token else base)  # else the tokened URL the app prints once

    def up() -> bool:
        nonlocal url
        if proc.poll() is not None:  # its log without VTK's repeated warnings
            lines = [x for x in log.read_text(errors="replace").splitlines()
                     if x.strip() and not any(w in x for w in ("WindowResizeEvent", "ConfigureEvent", "vtkObject.cxx"))]
            raise AssertionError(f"sam2volume web exited with {proc.returncode}:\n" + "\n".join(lines[-30:]))
        if url is None:
            found = re.search("open the page at (" + re.escape(base) + r"\?token=\S+)", log.read_text(errors="replace"))
            if found is None:
                return False
            url = found.group(1)
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            return False

    try:
        wait(up, 180, "sam2volume web to serve its page")
        yield SimpleNamespace(url=url, process=proc, port=port, token=url.split("?token=", 1)[1] if "?token=" in url else "")
    finally:
        stop_process(proc)


def engine_pids(app: Any) -> list[int]:
    """The engine servers the app started (``sam2volume serve ... --parent-pid APP``), from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in cmd and b"--parent-pid" in cmd and cmd[cmd.index(b"--parent-pid") + 1] == str(app.process.pid).encode():
                pids.append(int(entry.name))
    return pids


def open_page(browser: Any, url: str) -> Any:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(STEP_S * 1000)
    page.goto(url)
    page.wait_for_selector("#status")
    wait(lambda: len(state(page, "views") or {}) == 3, STEP_S, "the slice views' geometry")
    return page


def reset(page: Any) -> None:
    page.click("#reset")
    wait(lambda: state(page, "prompt_points") == [] and page.inner_text("#status").startswith("reset"), STEP_S, "reset")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate: Any, timeout: float, what: str, step: float = 0.1) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def state(page: Any, name: str) -> Any:
    return page.evaluate(f"window.trame.state.get({name!r})")


def ras_of(vol: Any, ijk: Any) -> np.ndarray:
    """World RAS of voxel ``ijk`` from sam2volume's own reader (LPS geometry)."""
    lps = vol.origin + vol.direction @ (vol.spacing * np.asarray(ijk, float))
    return lps * np.array([-1.0, -1.0, 1.0])


def view_box(page: Any, orientation: str) -> tuple[dict, dict]:
    """A slice view's geometry and its picture's box in the page, once the view has the picture's size."""
    def look():
        view = state(page, "views")[orientation]
        img = page.locator(f"#{view['id']}").locator("xpath=..").locator("img.image-display-area")
        return view, (img.bounding_box() if img.count() == 1 else None)

    def ready():
        view, box = look()
        if box is None or (round(box["width"]), round(box["height"])) != tuple(view["size"]):
            return None
        time.sleep(0.2)
        return (view, box) if look() == (view, box) else None  # not in the middle of a re-layout

    return wait(ready, STEP_S, f"the {orientation} view's picture")


def pixel_of(view: dict, box: dict, ras: Any) -> tuple[float, float]:
    """Page position of the pixel centre that shows world point ``ras`` in a slice view. VTK's XY is
    the pixel index from the bottom left; the picture is shown 1:1 (checked)."""
    w, h = view["size"]
    assert (round(box["width"]), round(box["height"])) == (w, h)
    xy = np.linalg.solve(np.array(view["xy_to_ras"]), np.r_[ras, 1.0])
    assert abs(xy[2]) < 1e-3, f"the point is {xy[2]:.3f} off the view's plane"
    px, py = int(round(xy[0])), int(round(xy[1]))
    return box["x"] + px + 0.5, box["y"] + (h - 1 - py) + 0.5


def shown_index(vol: Any, view: dict, axis: int) -> int:
    """The voxel index along ``axis`` of the slice a view shows (its plane through XY (0, 0))."""
    ras = (np.array(view["xy_to_ras"]) @ [0, 0, 0, 1.0])[:3]
    lps = ras * np.array([-1.0, -1.0, 1.0])
    ijk = np.linalg.solve(vol.direction * vol.spacing, lps - vol.origin)
    return int(round(ijk[axis]))


def click_voxel(page: Any, vol: Any, orientation: str, ijk: Any, tool: str = "positive") -> None:
    page.click(f"#tool-{tool}")
    wait(lambda: state(page, "tool") == tool, STEP_S, f"tool {tool}")
    view, box = view_box(page, orientation)
    n = len(state(page, "prompt_points"))
    page.mouse.click(*pixel_of(view, box, ras_of(vol, ijk)))
    wait(lambda: len(state(page, "prompt_points")) > n or "not used" in page.inner_text("#status"), STEP_S, "the prompt")


def add_object(page: Any, name: str) -> str:
    """Add an object in the page by name; its segment id (the page makes it the current one)."""
    n = len(state(page, "objects"))
    page.fill("#object-name", name)
    page.click("#add-object")
    wait(lambda: len(state(page, "objects")) == n + 1, STEP_S, f"object {name}")
    added = state(page, "objects")[-1]
    assert added["name"] == name and state(page, "current_object") == added["id"]
    return added["id"]
