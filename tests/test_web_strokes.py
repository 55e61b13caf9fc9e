"""Scribble and lasso strokes in the web page ended as 3D Slicer ends markups placement: by a double-click or a
right-click (besides the Finish stroke button), in headless Chromium on the shared CT with the baseline engine.

trame-rca forwards a browser double-click as two press/release pairs (no double-click event, repeat count 0);
the app takes the second press for the double-click and hands Slicer's markups widget the
LeftButtonDoubleClickEvent, so the double-click's first click is the stroke's last vertex and its second adds
none. A right-click ends placing in Slicer's widget itself (no vertex where it is). Each stroke is one prompt
through the controller, compared with the Finish-stroke prompt and with sam2volume's BaselineSession.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install 'segment-with-sam2[web]')")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (extra 'web')")
from web_helpers import CHROMIUM, STEP_S, click_voxel, pixel_of, ras_of, reset, shown_index, state, view_box, wait  # noqa: E402

if CHROMIUM is None:
    pytest.skip("no system chromium (apt-get install chromium; scripts/setup_env.sh does it)", allow_module_level=True)

from web_fixtures import app, browser, ct, page, propagate_and_download  # noqa: E402,F401 - fixtures used by name

from sam2volume.baseline import BaselineSession  # noqa: E402

LIVER_XY = (84, 56)  # inside the liver of example_ct_sm on the slices the axial view shows
LASSO_XY = [(72, 44), (96, 46), (100, 62), (88, 72), (72, 66)]  # around part of the liver


def draw_stroke(page, ct, tool: str, vertices: list, end: str, right_click_at: tuple | None = None) -> dict:
    """Click a stroke's vertices (voxels of the axial slice shown) with ``tool`` and end it: ``end`` "finish"
    (the button), "double" (the last vertex is double-clicked instead of clicked) or "right" (a right-click at
    ``right_click_at``, not a vertex); the one prompt it made."""
    page.click(f"#tool-{tool}")
    wait(lambda: state(page, "tool") == tool, STEP_S, f"tool {tool}")
    view, box = view_box(page, "axial")
    n = len(state(page, "prompt_points"))
    for index, ijk in enumerate(vertices):
        at = pixel_of(view, box, ras_of(ct, ijk))
        if end == "double" and index == len(vertices) - 1:
            page.mouse.dblclick(*at)
        else:
            page.mouse.click(*at)
            time.sleep(0.6)  # one click per vertex (each elsewhere: never taken for a double-click)
    if end == "finish":
        page.click("#finish-stroke")
    elif end == "right":
        page.mouse.click(*pixel_of(view, box, ras_of(ct, right_click_at)), button="right")
    wait(lambda: len(state(page, "prompt_points")) > n or "not used" in page.inner_text("#status"), STEP_S, f"the {tool} prompt")
    assert page.inner_text("#status").startswith(f"{tool}: mask shown"), page.inner_text("#status")
    time.sleep(1.0)  # nothing else arrives: one stroke, one prompt
    prompts = state(page, "prompt_points")
    assert len(prompts) == n + 1, prompts
    prompt = prompts[-1]
    assert prompt["kind"] == tool and prompt["axis"] == "axial"
    assert np.array(prompt["ijk"]).shape == (len(vertices), 3), prompt["ijk"]  # no stray vertex
    assert np.all(np.abs(np.array(prompt["ijk"]) - vertices) < 0.5), (prompt["ijk"], vertices)  # the clicked voxels
    return prompt


def test_negative_scribble_ended_by_double_click_then_propagated_equals_sam2volume(page, ct, tmp_path):
    """A + point in the liver, then a - scribble (sign menu "-") across the right part of its mask, ended by
    double-clicking its last vertex; propagated, the segment equals sam2volume's BaselineSession given the
    same point and the scribble's vertices as the controller sent them (negative), and the scribble counted."""
    k = shown_index(ct, view_box(page, "axial")[0], 2)
    click_voxel(page, ct, "axial", (*LIVER_XY, k))
    point = state(page, "prompt_points")[0]
    assert point["labels"] == [1] and np.all(np.abs(np.array(point["ijk"][0]) - (*LIVER_XY, k)) < 0.5)
    page.select_option("#scribble-sign", "-")
    try:
        wait(lambda: state(page, "scribble_sign") == "-", STEP_S, "the scribble's sign")
        scribble = draw_stroke(page, ct, "scribble", [(100, 50, k), (102, 57, k), (104, 64, k)], "double")
    finally:
        page.select_option("#scribble-sign", "+")
    assert scribble["labels"] == [0]  # a negative scribble
    web = propagate_and_download(page, ct, tmp_path)

    def baseline(with_scribble: bool) -> np.ndarray:
        session = BaselineSession(ct, "axial", window="abdomen")
        session.add_points(1, point["ijk"], point["labels"])
        if with_scribble:
            session.add_scribble(1, scribble["ijk"], False)
        session.propagate(stop_after=3)
        return np.asarray(session.result().array) == 1

    expected = baseline(True)
    assert expected.sum() > 1000
    assert np.array_equal(web, expected), f"{int((web != expected).sum())} voxels differ ({int(web.sum())} vs {int(expected.sum())})"
    assert (baseline(False) & ~expected).sum() > 1000  # the negative scribble took voxels out of the point's segment


def test_lasso_ended_by_double_click_or_right_click_equals_finish_stroke(page, ct, tmp_path):
    """The same lasso ended three ways: Finish stroke after clicking its five vertices; double-clicking the
    fifth vertex; a right-click inside it after clicking the five. Each is one lasso prompt with exactly the
    five vertices, and each propagated segment equals the Finish-stroke one (and sam2volume's BaselineSession
    add_lasso with those vertices)."""
    k = shown_index(ct, view_box(page, "axial")[0], 2)
    vertices = [(i, j, k) for i, j in LASSO_XY]
    results = {}
    for end in ("finish", "double", "right"):
        prompt = draw_stroke(page, ct, "lasso", vertices, end, right_click_at=(*LIVER_XY, k))
        results[end] = prompt["ijk"], propagate_and_download(page, ct, tmp_path)
        reset(page)
    ijk, web = results["finish"]
    for end in ("double", "right"):
        np.testing.assert_allclose(results[end][0], ijk, atol=1e-6, err_msg=f"the {end}-ended lasso's vertices")
        assert np.array_equal(results[end][1], web), f"{end}: {int((results[end][1] != web).sum())} voxels differ"

    session = BaselineSession(ct, "axial", window="abdomen")
    session.add_lasso(1, ijk)
    session.propagate(stop_after=3)
    expected = np.asarray(session.result().array) == 1
    assert expected.sum() > 1000 and np.array_equal(web, expected), f"{int((web != expected).sum())} voxels differ"


def test_right_click_without_a_vertex_says_so_and_the_tool_still_places(page, ct):
    """A right-click before any vertex ends Slicer's placing with nothing to send: a message, no prompt, and the
    next clicks still draw a stroke (the tool places again), ended by a double-click."""
    k = shown_index(ct, view_box(page, "axial")[0], 2)
    page.click("#tool-scribble")
    wait(lambda: state(page, "tool") == "scribble", STEP_S, "tool scribble")
    view, box = view_box(page, "axial")
    page.mouse.click(*pixel_of(view, box, ras_of(ct, (*LIVER_XY, k))), button="right")
    wait(lambda: page.inner_text("#status").startswith("no scribble to finish"), STEP_S, "the message")
    assert state(page, "prompt_points") == []
    prompt = draw_stroke(page, ct, "scribble", [(76, 50, k), (90, 58, k), (84, 68, k)], "double")
    assert prompt["labels"] == [1]


def test_box_dragged_from_corner_to_corner_equals_the_two_click_box(page, ct, tmp_path):
    """Box by a drag (press at one corner, release at the other) gives the prompt two clicks at those corners give,
    and the same propagated segment; a press and release in place is one click (the box's first corner)."""
    from sam2volume import api

    view, box = view_box(page, "axial")
    k = shown_index(ct, view, 2)
    corners = [(70, 40, k), (100, 75, k)]
    a, b = (pixel_of(view, box, ras_of(ct, c)) for c in corners)
    page.click("#tool-box")
    wait(lambda: state(page, "tool") == "box", STEP_S, "the box tool")
    page.mouse.move(*a)
    page.mouse.down()
    for t in np.linspace(0.1, 1.0, 8):
        page.mouse.move(a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))
        time.sleep(0.05)
    page.mouse.up()
    wait(lambda: len(state(page, "prompt_points")) == 1, STEP_S, "the dragged box")
    dragged = state(page, "prompt_points")[0]
    assert dragged["kind"] == "box" and np.all(np.abs(np.array(dragged["ijk"]) - corners) < 0.5), dragged["ijk"]
    web = propagate_and_download(page, ct, tmp_path)
    prompts = {"coordinates": "voxel", "axis": "axial", "objects": [{"name": "liver", "label": 1, "boxes": [dragged["ijk"]]}]}
    expected, _ = api.segment(ct, prompts, engine="baseline", window="abdomen", stop_after=3)
    assert np.array_equal(web, np.asarray(expected.array) == 1)

    reset(page)
    page.click("#tool-box")
    wait(lambda: state(page, "tool") == "box", STEP_S, "the box tool")
    for at in (a, b):  # two clicks: the same box
        page.mouse.click(*at)
    wait(lambda: len(state(page, "prompt_points")) == 1, STEP_S, "the two-click box")
    assert np.allclose(state(page, "prompt_points")[0]["ijk"], dragged["ijk"])


def drag(page, ct, vertices: list) -> None:
    """Press at the first voxel, move through the others (small steps), release at the last: a drawn path."""
    view, box = view_box(page, "axial")
    xy = [pixel_of(view, box, ras_of(ct, v)) for v in vertices]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for a, b in zip(xy[:-1], xy[1:]):
        for t in np.linspace(0.125, 1.0, 8):
            page.mouse.move(a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))
            time.sleep(0.02)
    page.mouse.up()


def distance_to_path(points: np.ndarray, path: np.ndarray) -> np.ndarray:
    """Each point's in-plane distance (voxels) to the polyline ``path``."""
    out = []
    for p in points[:, :2]:
        best = np.inf
        for a, b in zip(path[:-1, :2], path[1:, :2]):
            t = np.clip(np.dot(p - a, b - a) / max(np.dot(b - a, b - a), 1e-9), 0, 1)
            best = min(best, float(np.linalg.norm(p - (a + t * (b - a)))))
        out.append(best)
    return np.array(out)


@pytest.mark.parametrize("tool", ["scribble", "lasso"])
def test_stroke_drawn_by_dragging_is_one_prompt_along_the_path(page, ct, tmp_path, tool):
    """A scribble or lasso drawn by dragging (press, moves, release) is sent on the release as one prompt: its
    vertices lie on the dragged path (within a voxel), from its start to its end, and the propagated segment
    equals sam2volume's BaselineSession given those vertices; a click with the tool still places one vertex."""
    k = shown_index(ct, view_box(page, "axial")[0], 2)
    path = [(72, 44, k), (96, 46, k), (100, 62, k), (88, 72, k), (72, 66, k)]
    if tool == "lasso":
        path.append(path[0])
    page.click(f"#tool-{tool}")
    wait(lambda: state(page, "tool") == tool, STEP_S, f"tool {tool}")
    drag(page, ct, path)
    wait(lambda: len(state(page, "prompt_points")) == 1, STEP_S, f"the dragged {tool}")
    prompt = state(page, "prompt_points")[0]
    ijk = np.array(prompt["ijk"])
    assert prompt["kind"] == tool and prompt["axis"] == "axial" and len(ijk) >= 8, prompt
    assert np.all(ijk[:, 2] == k)
    assert distance_to_path(ijk, np.array(path, float)).max() < 1.0
    assert np.abs(ijk[0, :2] - path[0][:2]).max() < 1.0 and np.abs(ijk[-1, :2] - path[-1][:2]).max() < 1.0
    web = propagate_and_download(page, ct, tmp_path)
    session = BaselineSession(ct, "axial", window="abdomen")
    if tool == "lasso":
        session.add_lasso(1, ijk)
    else:
        session.add_scribble(1, ijk, True)
    session.propagate(stop_after=3)
    expected = np.asarray(session.result().array) == 1
    assert expected.sum() > 500 and np.array_equal(web, expected), f"{int((web != expected).sum())} voxels differ"

    reset(page)  # clicks still place vertices one by one
    prompt = draw_stroke(page, ct, tool, [(76, 50, k), (90, 58, k), (84, 68, k)], "finish")
    assert len(prompt["ijk"]) == 3
