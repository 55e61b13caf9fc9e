"""The module's keys in the web page (one table, ``SegmentWithSAM2Lib.logic.SHORTCUTS``, for both GUIs):
pressed in headless Chromium, they choose the tool, flip a sign, propagate and undo; typed into a text
field they stay text. Baseline engine, shared CT."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install 'segment-with-sam2[web]')")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (extra 'web')")
from web_helpers import CHROMIUM, STEP_S, pixel_of, ras_of, shown_index, state, view_box, wait  # noqa: E402

from web_fixtures import app, browser, ct, page  # noqa: E402,F401 - the fixtures

if CHROMIUM is None:
    pytest.skip("no system chromium (apt-get install chromium; scripts/setup_env.sh does it)", allow_module_level=True)

from SegmentWithSAM2Lib.logic import SHORTCUTS  # noqa: E402

LIVER = (84, 56, 18)


def press(page, key: str) -> None:
    page.locator("#status").click()  # focus off any text field (the status line is plain text)
    page.keyboard.press(key)


def test_keys_choose_the_tools_and_flip_the_sign(page):
    assert SHORTCUTS == {"1": "positive", "2": "negative", "3": "box", "4": "scribble", "5": "lasso", "T": "toggle",
                         "P": "propagate", "U": "undo"}
    for key, tool in (("1", "positive"), ("2", "negative"), ("t", "positive"), ("T", "negative"), ("3", "box"),
                      ("4", "scribble"), ("5", "lasso")):
        press(page, key)
        wait(lambda: state(page, "tool") == tool, STEP_S, f"key {key}: tool {tool}")
    press(page, "4")
    wait(lambda: state(page, "tool") == "scribble", STEP_S, "scribble")
    assert state(page, "scribble_sign") == "+"
    press(page, "T")  # with the scribble: its sign
    wait(lambda: state(page, "scribble_sign") == "-", STEP_S, "the scribble's sign flipped")
    assert state(page, "tool") == "scribble"
    press(page, "T")
    wait(lambda: state(page, "scribble_sign") == "+", STEP_S, "the scribble's sign back")
    # each button's tooltip names its key
    for key, action in SHORTCUTS.items():
        if action != "toggle":
            button = f"#tool-{action}" if action not in ("propagate", "undo") else f"#{action}"
            assert page.get_attribute(button, "title") == f"key {key}", (button, key)


def test_keys_typed_into_a_text_field_stay_text(page):
    press(page, "1")
    wait(lambda: state(page, "tool") == "positive", STEP_S, "tool +")
    page.click("#object-name")
    page.keyboard.type("P2 U3")
    wait(lambda: state(page, "new_object_name") == "P2 U3", STEP_S, "the typed name")
    assert state(page, "tool") == "positive" and not page.inner_text("#status").startswith(("propagat", "not propagated"))
    page.fill("#object-name", "")


def test_key_u_undoes_and_key_p_propagates(page, ct):
    view, box = view_box(page, "axial")
    k = shown_index(ct, view, 2)
    press(page, "1")
    wait(lambda: state(page, "tool") == "positive", STEP_S, "tool +")
    for n in (1, 2):
        page.mouse.click(*pixel_of(view, box, ras_of(ct, (LIVER[0], LIVER[1] + 3 * n, k))))
        wait(lambda: len(state(page, "prompt_points")) == n, STEP_S, f"prompt {n}")
    press(page, "U")
    wait(lambda: len(state(page, "prompt_points")) == 1, STEP_S, "the last prompt undone")
    assert np.allclose(state(page, "prompt_points")[0]["ijk"][0], (LIVER[0], LIVER[1] + 3, k), atol=0.5)
    press(page, "P")
    wait(lambda: page.inner_text("#status").startswith(("propagated", "not propagated", "propagation failed")), 300,
         "the propagation")
    assert page.inner_text("#status").startswith("propagated"), page.inner_text("#status")
