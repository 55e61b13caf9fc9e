"""The web front-end (``sam2volume web``, trame-slicer) driven by real clicks in headless Chromium.

The app runs as a real process on 127.0.0.1 with a local baseline engine server, as a user starts it;
Playwright drives the system Chromium (apt ``chromium``; never a downloaded browser). Pixel positions
are computed from the page's own view geometry (each slice view's XY-to-RAS, published in the page's
state) and the voxel's RAS from ``sam2volume.read_volume`` (not from Slicer). Skipped where Chromium,
trame-slicer or Playwright are missing (``scripts/setup_env.sh`` installs them).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install 'segment-with-sam2[web]')")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (extra 'web')")
if CHROMIUM is None:
    pytest.skip("no system chromium (apt-get install chromium; scripts/setup_env.sh does it)", allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402

from sam2volume import api, read_labelmap, read_volume  # noqa: E402
from server_helpers import stop_process  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LIVER = (84, 56, 18)  # a voxel well inside the liver of example_ct_sm (label 5 of example_seg, eroded by 3)
STEP_S = 60  # longest wait for one page reaction (a CPU shared with other jobs)
SCREENSHOT = ROOT / "docs" / "web.png"  # the README's picture


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, step: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def app_url(totalseg, tmp_path_factory):
    """``sam2volume web CT --engine baseline`` on a free loopback port, stopped afterwards."""
    port = _free_port()
    log = tmp_path_factory.mktemp("web") / "web.log"
    cmd = [sys.executable, "-m", "sam2volume", "web", str(totalseg / "example_ct_sm.nii.gz"), "--engine", "baseline",
           "--device", "cpu", "--window", "abdomen", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "HOME": str(log.parent)}, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"

    def up():
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            return False

    try:
        _wait(up, 180, "sam2volume web to serve its page")
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, app_url):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(STEP_S * 1000)
    page.goto(app_url)
    page.wait_for_selector("#status")
    _wait(lambda: len(state(page, "views") or {}) == 3, STEP_S, "the slice views' geometry")
    yield page
    page.click("#reset")
    _wait(lambda: state(page, "prompt_points") == [], STEP_S, "reset")
    page.close()


def state(page, name: str):
    return page.evaluate(f"window.trame.state.get({name!r})")


def ras_of(vol, ijk) -> np.ndarray:
    """World RAS of voxel ``ijk`` from sam2volume's own reader (LPS geometry)."""
    lps = vol.origin + vol.direction @ (vol.spacing * np.asarray(ijk, float))
    return lps * np.array([-1.0, -1.0, 1.0])


def view_box(page, orientation: str) -> tuple[dict, dict]:
    """A slice view's geometry and its picture's box in the page, once the view has the picture's size."""
    def ready():
        view = state(page, "views")[orientation]
        img = page.locator(f"#{view['id']}").locator("xpath=..").locator("img.image-display-area")
        box = img.bounding_box() if img.count() == 1 else None
        if box is not None and (round(box["width"]), round(box["height"])) == tuple(view["size"]):
            return view, box
        return None

    return _wait(ready, STEP_S, f"the {orientation} view's picture")


def pixel_of(view: dict, box: dict, ras) -> tuple[float, float]:
    """Page position of the pixel centre that shows world point ``ras`` in a slice view. VTK's XY is
    the pixel index from the bottom left; the picture is shown 1:1 (checked)."""
    w, h = view["size"]
    assert (round(box["width"]), round(box["height"])) == (w, h)
    xy = np.linalg.solve(np.array(view["xy_to_ras"]), np.r_[ras, 1.0])
    assert abs(xy[2]) < 1e-3, f"the point is {xy[2]:.3f} off the view's plane"
    px, py = int(round(xy[0])), int(round(xy[1]))
    return box["x"] + px + 0.5, box["y"] + (h - 1 - py) + 0.5


def shown_index(vol, view: dict, axis: int) -> int:
    """The voxel index along ``axis`` of the slice a view shows (its plane through XY (0, 0))."""
    ras = (np.array(view["xy_to_ras"]) @ [0, 0, 0, 1.0])[:3]
    lps = ras * np.array([-1.0, -1.0, 1.0])
    ijk = np.linalg.solve(vol.direction * vol.spacing, lps - vol.origin)
    return int(round(ijk[axis]))


def click_voxel(page, vol, orientation: str, ijk, tool: str = "positive") -> None:
    page.click(f"#tool-{tool}")
    _wait(lambda: state(page, "tool") == tool, STEP_S, f"tool {tool}")
    view, box = view_box(page, orientation)
    n = len(state(page, "prompt_points"))
    page.mouse.click(*pixel_of(view, box, ras_of(vol, ijk)))
    _wait(lambda: len(state(page, "prompt_points")) > n or "not used" in page.inner_text("#status"), STEP_S, "the prompt")


@pytest.fixture(scope="module")
def ct(totalseg):
    return read_volume(totalseg / "example_ct_sm.nii.gz")


@pytest.mark.parametrize("orientation, axis", [("axial", 2), ("coronal", 1), ("sagittal", 0)])
def test_click_in_a_slice_view_prompts_the_clicked_voxel(page, ct, orientation, axis):
    view, _ = view_box(page, orientation)
    target = list(LIVER)
    target[axis] = shown_index(ct, view, axis)  # a voxel of the slice the view shows
    click_voxel(page, ct, orientation, target)
    prompts = state(page, "prompt_points")
    assert page.inner_text("#status").startswith("positive: mask shown"), page.inner_text("#status")
    assert len(prompts) == 1 and prompts[0]["axis"] == orientation and prompts[0]["labels"] == [1]
    ijk = np.array(prompts[0]["ijk"][0])
    assert np.all(np.abs(ijk - target) < 0.5), (ijk, target)  # the clicked voxel, and no other
    assert ijk[axis] == target[axis]


def test_propagated_segment_equals_sam2volume_and_is_drawn(page, ct, totalseg, tmp_path):
    view, box = view_box(page, "axial")
    k = shown_index(ct, view, 2)
    target = (LIVER[0], LIVER[1], k)
    click_voxel(page, ct, "axial", target)
    prompt = state(page, "prompt_points")[0]["ijk"][0]
    page.click("#propagate")
    _wait(lambda: page.inner_text("#status").startswith(("propagated", "not propagated", "propagation failed")), 300,
          "the propagation")
    assert page.inner_text("#status").startswith("propagated"), page.inner_text("#status")
    assert state(page, "progress") == 100

    with page.expect_download() as download:
        page.click("#download")
    path = tmp_path / "segmentation.seg.nrrd"
    download.value.save_as(path)
    web = read_labelmap(path, reference=ct).array > 0

    prompts = {"coordinates": "voxel", "axis": "axial",
               "objects": [{"name": "liver", "label": 1, "points": [{"position": prompt, "positive": True}]}]}
    expected, _ = api.segment(ct, prompts, engine="baseline", window="abdomen", stop_after=3)
    expected = np.asarray(expected.array) == 1
    assert expected.sum() > 1000 and expected[:, :, k].any()
    assert np.array_equal(web, expected), f"{int((web != expected).sum())} voxels differ"

    # the overlay on the axial view covers the segment's pixels of the shown slice, and only those
    time.sleep(1.0)  # the last picture after the write-back
    png = tmp_path / "axial.png"
    page.locator(f"#{view['id']}").locator("xpath=..").locator("img.image-display-area").screenshot(path=png)
    from PIL import Image
    from scipy import ndimage

    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    colourful = rgb.max(axis=2) - rgb.min(axis=2)  # the CT is grey; the segment's fill is coloured
    inside = ndimage.binary_erosion(expected[:, :, k], iterations=2)
    outside = ~ndimage.binary_dilation(expected[:, :, k], iterations=3)
    near_click = np.zeros_like(inside)
    near_click[max(0, target[0] - 4):target[0] + 5, max(0, target[1] - 4):target[1] + 5] = True  # the point's glyph
    values = {}
    for name, where in (("inside", inside & ~near_click), ("outside", outside & ~near_click)):
        ii, jj = np.nonzero(where)
        sample = np.linspace(0, len(ii) - 1, min(len(ii), 400)).astype(int)
        pix = []
        for i, j in zip(ii[sample], jj[sample]):
            x, y = pixel_of(view, box, ras_of(ct, (i, j, k)))
            pix.append(colourful[int(y - box["y"]), int(x - box["x"])])
        values[name] = np.array(pix)
    assert np.mean(values["inside"] > 25) > 0.95, np.percentile(values["inside"], [5, 50])
    assert np.mean(values["outside"] > 25) < 0.02, np.percentile(values["outside"], [50, 98])
    if os.environ.get("SAM2VOLUME_WEB_SCREENSHOT"):  # README's picture: SAM2VOLUME_WEB_SCREENSHOT=1 pytest ...
        page.screenshot(path=tmp_path / "page.png")
        Image.open(tmp_path / "page.png").convert("RGB").save(SCREENSHOT, optimize=True)
