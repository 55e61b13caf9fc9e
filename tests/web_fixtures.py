"""pytest fixtures of the browser tests of ``sam2volume web`` (import them into a test module by name).

``app``: ``sam2volume web CT --engine baseline`` on a free loopback port (module scope); ``browser``: the system
Chromium driven by Playwright (module scope); ``page``: the app's page, Reset and closed afterwards; ``ct``: the
shared CT read by sam2volume. Also ``propagate_and_download``: Propagate, then the downloaded segment.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from web_helpers import CHROMIUM, open_page, reset, wait, web_app


@pytest.fixture(scope="module")
def app(totalseg, tmp_path_factory):
    """``sam2volume web CT --engine baseline`` on a free loopback port, stopped afterwards."""
    with web_app(totalseg / "example_ct_sm.nii.gz", tmp_path_factory.mktemp("web") / "web.log") as app:
        yield app


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, app):
    page = open_page(browser, app.url)
    yield page
    reset(page)
    page.close()


@pytest.fixture(scope="module")
def ct(totalseg):
    from sam2volume import read_volume

    return read_volume(totalseg / "example_ct_sm.nii.gz")


def propagate_and_download(page, ct, folder: Path) -> np.ndarray:
    """Press Propagate, wait for its end, download the result; the segment on the CT's grid (bool)."""
    from sam2volume import read_labelmap

    page.click("#propagate")
    wait(lambda: page.inner_text("#status").startswith(("propagated", "not propagated", "propagation failed")), 300,
         "the propagation")
    assert page.inner_text("#status").startswith("propagated"), page.inner_text("#status")
    with page.expect_download() as download:
        page.click("#download")
    path = folder / "segmentation.seg.nrrd"
    download.value.save_as(path)
    return read_labelmap(path, reference=ct).array > 0
