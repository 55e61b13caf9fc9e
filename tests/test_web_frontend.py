"""The web front-end (``sam2volume web``, trame-slicer) driven by real clicks in headless Chromium.

The app runs as a real process on 127.0.0.1 with a local baseline engine server, as a user starts it;
Playwright drives the system Chromium (apt ``chromium``; never a downloaded browser). Pixel positions
are computed from the page's own view geometry (each slice view's XY-to-RAS, published in the page's
state) and the voxel's RAS from ``sam2volume.read_volume`` (not from Slicer). Skipped where Chromium,
trame-slicer or Playwright are missing (``scripts/setup_env.sh`` installs them).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install 'segment-with-sam2[web]')")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (extra 'web')")
from web_helpers import CHROMIUM, STEP_S, add_object, click_voxel, engine_pids, open_page, pixel_of, ras_of, reset, shown_index, state, view_box, wait, web_app  # noqa: E402

if CHROMIUM is None:
    pytest.skip("no system chromium (apt-get install chromium; scripts/setup_env.sh does it)", allow_module_level=True)

from web_fixtures import app, browser, ct, page, propagate_and_download  # noqa: E402,F401 - the fixtures

from sam2volume import api, read_labelmap, read_volume  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LIVER = (84, 56, 18)  # a voxel well inside the liver of example_ct_sm (label 5 of example_seg, eroded by 3)
SCREENSHOT = ROOT / "docs" / "web.png"  # the README's picture


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
    web = propagate_and_download(page, ct, tmp_path)
    assert state(page, "progress") == 100
    with page.expect_download() as download:  # the same segment as NIfTI, on the CT's grid
        page.click("#download-nifti")
    download.value.save_as(tmp_path / "segmentation.nii.gz")
    nifti = read_labelmap(tmp_path / "segmentation.nii.gz")
    assert nifti.shape == ct.shape
    for field in ("origin", "spacing", "direction"):
        np.testing.assert_allclose(getattr(nifti, field), getattr(ct, field), atol=1e-4)
    assert np.array_equal(np.asarray(nifti.array) == 1, web)

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


def test_box_negative_point_undo_then_propagate_equals_sam2volume(page, ct, tmp_path):
    view, box = view_box(page, "axial")
    k = shown_index(ct, view, 2)
    corners = [(70, 40, k), (100, 75, k)]  # around the liver's part of the slice
    page.click("#tool-box")
    wait(lambda: state(page, "tool") == "box", 60, "the box tool")
    page.mouse.click(*pixel_of(view, box, ras_of(ct, corners[0])))  # two clicks, as Slicer places a box ROI
    page.mouse.click(*pixel_of(view, box, ras_of(ct, corners[1])))
    wait(lambda: len(state(page, "prompt_points")) == 1, 60, "the box prompt")
    prompt = state(page, "prompt_points")[0]
    assert prompt["kind"] == "box" and prompt["axis"] == "axial"
    assert np.all(np.abs(np.array(prompt["ijk"]) - corners) < 0.5), (prompt["ijk"], corners)

    click_voxel(page, ct, "axial", (84, 56, k), tool="negative")
    prompts = state(page, "prompt_points")
    assert len(prompts) == 2 and prompts[1]["labels"] == [0]
    assert np.all(np.abs(np.array(prompts[1]["ijk"][0]) - (84, 56, k)) < 0.5)
    page.click("#undo")
    wait(lambda: len(state(page, "prompt_points")) == 1, 60, "undo")
    assert state(page, "prompt_points")[0] == prompt  # the negative point is gone, the box stays

    web = propagate_and_download(page, ct, tmp_path)
    prompts = {"coordinates": "voxel", "axis": "axial", "objects": [{"name": "liver", "label": 1, "boxes": [prompt["ijk"]]}]}
    expected, _ = api.segment(ct, prompts, engine="baseline", window="abdomen", stop_after=3)
    expected = np.asarray(expected.array) == 1
    assert expected.sum() > 1000
    assert np.array_equal(web, expected), f"{int((web != expected).sum())} voxels differ"


def test_correction_after_propagating_repropagates_to_sam2volume_result(page, ct, tmp_path):
    """+ point, Propagate, then on another slice (the view moved by its own slider state) a + and a - point
    (a correction) and Propagate again: the segment equals sam2volume's session given the same calls."""
    view, _ = view_box(page, "axial")
    k = shown_index(ct, view, 2)
    click_voxel(page, ct, "axial", (LIVER[0], LIVER[1], k))
    propagate_and_download(page, ct, tmp_path)
    slider = state(page, "Red__SliderState__value")
    step = state(page, "Red__SliderState__step")
    page.evaluate(f"window.trame.state.set('Red__SliderState__value', {slider + 3 * step})")  # the axial view 3 slices on
    wait(lambda: shown_index(ct, state(page, "views")["axial"], 2) != k, 60, "the axial view on another slice")
    k2 = shown_index(ct, state(page, "views")["axial"], 2)
    click_voxel(page, ct, "axial", (LIVER[0], LIVER[1] + 14, k2))  # more liver on that slice
    click_voxel(page, ct, "axial", (LIVER[0] - 10, LIVER[1], k2), tool="negative")  # not the tissue beside it
    assert page.inner_text("#status").startswith("negative: mask shown"), page.inner_text("#status")
    points = state(page, "prompt_points")
    assert [p["labels"] for p in points] == [[1], [1], [0]] and round(points[2]["ijk"][0][2]) == k2
    (tmp_path / "second").mkdir()
    web = propagate_and_download(page, ct, tmp_path / "second")
    # the same session calls in process: one add_points per click, as the page sends them (a prompts file
    # would put the two clicks on one slice into one call, which the baseline cuts differently)
    from sam2volume.baseline import BaselineSession

    session = BaselineSession(ct, "axial", window="abdomen")
    session.add_points(1, points[0]["ijk"], points[0]["labels"])
    session.propagate(stop_after=3)
    for p in points[1:]:
        session.add_points(1, p["ijk"], p["labels"])
    session.propagate(stop_after=3)
    expected = np.asarray(session.result().array) == 1
    assert np.array_equal(web, expected), (f"{int((web != expected).sum())} voxels differ ({int(web.sum())} vs {int(expected.sum())}) "
                                           f"on slices {np.flatnonzero((web != expected).any(axis=(0, 1))).tolist()}; {points}")


def test_engine_server_killed_during_propagation_gives_a_message_and_the_next_prompt_restarts_it(page, app, ct):
    """The engine server stops answering (SIGSTOP) once Propagate is pressed, then dies (SIGKILL): the page
    says why within a bounded time and stays usable; the next prompt starts a new server, as in Slicer."""
    import signal

    view, _ = view_box(page, "axial")
    k = shown_index(ct, view, 2)
    click_voxel(page, ct, "axial", (LIVER[0], LIVER[1], k))
    [pid] = engine_pids(app)
    os.kill(pid, signal.SIGSTOP)
    try:
        page.click("#propagate")
        time.sleep(1.0)
        assert not page.inner_text("#status").startswith("propagated")
    finally:
        os.kill(pid, signal.SIGKILL)
    wait(lambda: page.inner_text("#status").startswith(("not propagated", "propagation failed")), 60, "the failure message")
    message = page.inner_text("#status")
    print("the page says:", message)
    assert "127.0.0.1" in message or "server" in message, message  # it says what failed
    assert not page.locator("#propagate").is_disabled()  # the page is usable again

    reset(page)
    click_voxel(page, ct, "axial", (LIVER[0], LIVER[1], k))
    assert page.inner_text("#status").startswith("positive: mask shown"), page.inner_text("#status")
    assert engine_pids(app) and pid not in engine_pids(app)  # a new engine server
    page.click("#propagate")
    wait(lambda: page.inner_text("#status").startswith(("propagated", "not propagated", "propagation failed")), 300,
         "the propagation")
    assert page.inner_text("#status").startswith("propagated"), page.inner_text("#status")


def test_page_reloaded_during_propagation_shows_the_finished_job(page, ct):
    """The job lives in the app, not the page: a reload right after Propagate finds it running or done,
    with the prompts and the result; nothing is started twice."""
    view, _ = view_box(page, "axial")
    click_voxel(page, ct, "axial", (LIVER[0], LIVER[1], shown_index(ct, view, 2)))
    prompts = state(page, "prompt_points")
    page.click("#propagate")
    page.reload()
    page.wait_for_selector("#status")
    wait(lambda: page.inner_text("#status").startswith(("propagated", "not propagated", "propagation failed")), 300,
         "the propagation, seen from the reloaded page")
    assert page.inner_text("#status").startswith("propagated"), page.inner_text("#status")
    assert state(page, "prompt_points") == prompts and state(page, "progress") == 100 and not state(page, "busy")
    assert len(page.locator("#prompts .prompt").all()) == 1


def test_display_window_presets_set_the_views_window(page):
    assert state(page, "display_window") == "abdomen"  # the engine's --window, where it is a CT preset
    assert state(page, "display_window_level") == [400.0, 40.0]
    page.select_option("#display-window", "lung")
    wait(lambda: state(page, "display_window_level") == [1500.0, -600.0], 60, "the lung window")
    page.select_option("#display-window", "auto")  # Slicer's automatic window for this CT
    wait(lambda: state(page, "display_window_level") not in ([1500.0, -600.0], [400.0, 40.0]), 60, "the automatic window")
    page.select_option("#display-window", "abdomen")
    wait(lambda: state(page, "display_window_level") == [400.0, 40.0], 60, "the abdomen window")


def _permuted_ct(totalseg, folder: Path) -> Path:
    """The CT with its voxel axes permuted (k, i, j): the same anatomy on another voxel grid (SimpleITK)."""
    import SimpleITK as sitk

    path = folder / "ct_permuted.nii.gz"
    sitk.WriteImage(sitk.PermuteAxes(sitk.ReadImage(str(totalseg / "example_ct_sm.nii.gz")), [2, 0, 1]), str(path))
    return path


@pytest.mark.parametrize("which", ["mr_lps", "ct_permuted"])
def test_click_prompts_the_clicked_voxel_on_lps_and_permuted_volumes(browser, totalseg, tmp_path, which):
    image = totalseg / "example_mr_sm.nii.gz" if which == "mr_lps" else _permuted_ct(totalseg, tmp_path)
    vol = read_volume(image)
    with web_app(image, tmp_path / "web.log") as app:
        page = open_page(browser, app.url)
        for orientation in ("axial", "coronal", "sagittal"):
            view, _ = view_box(page, orientation)
            normal = int(np.argmax(np.abs(np.linalg.solve(vol.direction * vol.spacing, np.array(view["xy_to_ras"])[:3, 2]
                                                          * [-1, -1, 1]))))  # the voxel axis across the view
            target = [int(n * f) for n, f in zip(vol.shape, (0.55, 0.45, 0.6))]
            target[normal] = shown_index(vol, view, normal)
            click_voxel(page, vol, orientation, target)
            prompts = state(page, "prompt_points")
            assert page.inner_text("#status").startswith("positive: mask shown"), page.inner_text("#status")
            assert len(prompts) == 1 and prompts[0]["axis"] == orientation
            ijk = np.array(prompts[0]["ijk"][0])
            assert np.all(np.abs(ijk - target) < 0.5), (orientation, ijk, target)
            reset(page)
        page.close()


@pytest.mark.sam2
def test_sam2_random_weights_click_and_propagate_equal_sam2volume(browser, totalseg, ct, tmp_path):
    """SAM2 (hiera tiny, random weights, 128 px) in the engine server behind the page: the first prompt
    encodes on the worker thread, the propagated segment (to the volume's ends: --stop-after 0) equals
    sam2volume's for the same point, also after a first propagation cancelled part-way."""
    from sam2_helpers import IMAGE_SIZE, engine_config

    with web_app(totalseg / "example_ct_sm.nii.gz", tmp_path / "web.log", "--engine", "sam2", "--model", "sam2.1-hiera-tiny",
                 "--random-weights-size", str(IMAGE_SIZE), "--stop-after", "0") as app:
        page = open_page(browser, app.url)
        view, _ = view_box(page, "axial")
        k = shown_index(ct, view, 2)
        click_voxel(page, ct, "axial", (LIVER[0], LIVER[1], k))
        assert page.inner_text("#status").startswith("positive: mask shown"), page.inner_text("#status")
        prompt = state(page, "prompt_points")[0]["ijk"][0]
        page.click("#propagate")  # Cancel as soon as it runs (the first one encodes its slices): it stops after
        wait(lambda: state(page, "busy"), 120, "the propagation to start")  # the current slice
        page.click("#cancel")
        wait(lambda: not state(page, "busy"), 120, "the cancelled propagation to end")
        assert page.inner_text("#status").startswith("cancelled"), page.inner_text("#status")
        assert state(page, "progress") < 100
        web = propagate_and_download(page, ct, tmp_path)  # then all of it
        page.close()
    prompts = {"coordinates": "voxel", "axis": "axial",
               "objects": [{"name": "liver", "label": 1, "points": [{"position": prompt, "positive": True}]}]}
    expected, _ = api.segment(ct, prompts, config=engine_config(encode_ahead=16), engine="sam2", window="abdomen", stop_after=None)
    expected = np.asarray(expected.array) == 1
    assert expected[:, :, k].any()
    assert np.array_equal(web, expected), f"{int((web != expected).sum())} voxels differ"


def test_two_named_objects_propagated_equal_sam2volume(page, ct, totalseg, tmp_path):
    """Two objects added by name get their own colours; the object chosen in the page gets the click;
    Propagate propagates both; the downloaded .seg.nrrd holds both, named, equal to sam2volume's result."""
    import SimpleITK as sitk
    from scipy import ndimage

    view, _ = view_box(page, "axial")
    k = shown_index(ct, view, 2)
    spleen = ndimage.distance_transform_edt(np.asarray(read_labelmap(totalseg / "example_seg.nii.gz").array)[:, :, k] == 1)
    spleen_voxel = (*np.unravel_index(int(np.argmax(spleen)), spleen.shape), k)  # deepest inside the spleen (label 1)
    assert spleen.max() > 3
    liver_id, spleen_id = add_object(page, "liver"), add_object(page, "spleen")
    colours = {o["id"]: o["colour"] for o in state(page, "objects")}
    assert len(set(colours.values())) == 3  # the first (empty) object's, liver's, spleen's
    page.select_option("#object", liver_id)  # prompts go to the chosen object
    wait(lambda: state(page, "current_object") == liver_id, STEP_S, "liver chosen")
    click_voxel(page, ct, "axial", (LIVER[0], LIVER[1], k))
    page.select_option("#object", spleen_id)
    wait(lambda: state(page, "current_object") == spleen_id, STEP_S, "spleen chosen")
    click_voxel(page, ct, "axial", spleen_voxel)
    points = state(page, "prompt_points")
    assert [p["segment"] for p in points] == [liver_id, spleen_id], points
    assert [line.split(":")[0] for line in state(page, "prompts")] == ["liver", "spleen"]

    web = propagate_and_download(page, ct, tmp_path)  # any segment (bool)
    path = tmp_path / "segmentation.seg.nrrd"
    labels = np.asarray(read_labelmap(path, reference=ct).array)
    header = sitk.ReadImage(str(path))
    names = {}
    for n in range(3):
        names[header.GetMetaData(f"Segment{n}_Name")] = int(header.GetMetaData(f"Segment{n}_LabelValue"))
    assert set(names) == {"SAM2 segment", "liver", "spleen"}, names
    assert web.any() and not (labels == names["SAM2 segment"]).any()  # the object without prompts stays empty

    prompts = {"coordinates": "voxel", "axis": "axial", "objects": [
        {"name": "liver", "label": 1, "points": [{"position": points[0]["ijk"][0], "positive": True}]},
        {"name": "spleen", "label": 2, "points": [{"position": points[1]["ijk"][0], "positive": True}]}]}
    expected, _ = api.segment(ct, prompts, engine="baseline", window="abdomen", stop_after=3)
    expected = np.asarray(expected.array)
    for name, label in (("liver", 1), ("spleen", 2)):
        mine, theirs = labels == names[name], expected == label
        assert theirs.sum() > 200 and theirs[:, :, k].any(), name
        assert np.array_equal(mine, theirs), f"{name}: {int((mine != theirs).sum())} voxels differ"


def test_dicom_seg_needs_a_dicom_volume(page):
    """The CT here is NIfTI: the DICOM-SEG button says why there is none (no download starts)."""
    page.click("#download-dicom")
    wait(lambda: page.inner_text("#status").startswith("no DICOM-SEG"), STEP_S, "the DICOM-SEG message")
    assert "not read from a DICOM series" in page.inner_text("#status")


def test_dicom_folder_click_propagate_downloads_a_dicom_seg(browser, totalseg, tmp_path):
    """sam2volume web on the shared CT DICOM series: a click in its liver, Propagate; the DICOM-SEG download
    reads back with pydicom/highdicom: one segment, one frame per slice, referencing every slice of the
    series, and (sam2volume's reader) the same segment as the .seg.nrrd download."""
    import highdicom as hd
    import pydicom
    from scipy import ndimage

    folder = totalseg / "example_ct_dicom"
    vol = read_volume(folder)
    assert vol.meta.get("dicom_files") and vol.shape == (512, 512, 20)
    with web_app(folder, tmp_path / "web.log") as app:
        page = open_page(browser, app.url)
        try:
            view, _ = view_box(page, "axial")
            k = shown_index(vol, view, 2)
            liver = np.asarray(read_labelmap(totalseg / "example_seg_dicom.nii.gz", reference=vol).array)[:, :, k] == 5
            depth = ndimage.distance_transform_edt(liver)
            assert depth.max() > 10
            click_voxel(page, vol, "axial", (*np.unravel_index(int(np.argmax(depth)), depth.shape), k))
            assert len(state(page, "prompt_points")) == 1, page.inner_text("#status")
            web = propagate_and_download(page, vol, tmp_path)
            assert web.sum() > 1000
            with page.expect_download() as download:
                page.click("#download-dicom")
            download.value.save_as(tmp_path / "segmentation.dcm")
        finally:
            page.close()
    ds = pydicom.dcmread(tmp_path / "segmentation.dcm")
    assert ds.Modality == "SEG" and len(ds.SegmentSequence) == 1 and int(ds.NumberOfFrames) == vol.shape[2]
    assert ds.SegmentSequence[0].SegmentLabel == "SAM2 segment"
    seg = hd.seg.segread(tmp_path / "segmentation.dcm")
    assert len(seg.get_source_image_uids()) == vol.shape[2]  # every slice of the series referenced
    assert np.asarray(ds.pixel_array).shape == (vol.shape[2], vol.shape[1], vol.shape[0])  # no empty frame left out
    back = np.asarray(read_labelmap(tmp_path / "segmentation.dcm", reference=vol).array)  # frames put back on the grid
    assert np.array_equal(back > 0, web), "the DICOM-SEG differs from the .seg.nrrd"


def _draw_stroke(page, ct, tool: str, vertices: list) -> dict:
    """Click a stroke's vertices (voxels of the axial slice shown) with ``tool``, press Finish stroke; its prompt."""
    page.click(f"#tool-{tool}")
    wait(lambda: state(page, "tool") == tool, STEP_S, f"tool {tool}")
    view, box = view_box(page, "axial")
    n = len(state(page, "prompt_points"))
    for ijk in vertices:
        page.mouse.click(*pixel_of(view, box, ras_of(ct, ijk)))
        time.sleep(0.6)  # one click per vertex, not a double-click (which ends placing in Slicer's markups)
    page.click("#finish-stroke")
    wait(lambda: len(state(page, "prompt_points")) > n or "not used" in page.inner_text("#status"), STEP_S, f"the {tool} prompt")
    assert page.inner_text("#status").startswith(f"{tool}: mask shown"), page.inner_text("#status")
    prompt = state(page, "prompt_points")[-1]
    assert prompt["kind"] == tool and prompt["axis"] == "axial"
    assert np.all(np.abs(np.array(prompt["ijk"]) - vertices) < 0.5), (prompt["ijk"], vertices)  # the clicked voxels
    return prompt


@pytest.mark.parametrize("tool", ["lasso", "scribble"])
def test_lasso_or_scribble_drawn_in_the_page_then_propagated_equals_sam2volume(page, ct, tmp_path, tool):
    """A lasso around part of the liver (or a + scribble across it) clicked vertex by vertex in the axial view,
    ended by Finish stroke, is one prompt; propagated, the segment equals sam2volume's BaselineSession given
    add_lasso / add_scribble with the same polygon (voxel coordinates), voxel for voxel."""
    from sam2volume.baseline import BaselineSession

    k = shown_index(ct, view_box(page, "axial")[0], 2)
    if tool == "lasso":
        vertices = [(72, 44, k), (96, 46, k), (100, 62, k), (88, 72, k), (72, 66, k)]
    else:
        vertices = [(76, 50, k), (90, 58, k), (84, 68, k)]
    prompt = _draw_stroke(page, ct, tool, vertices)
    web = propagate_and_download(page, ct, tmp_path)

    session = BaselineSession(ct, "axial", window="abdomen")
    if tool == "lasso":
        session.add_lasso(1, prompt["ijk"])
    else:
        assert prompt["labels"] == [1]
        session.add_scribble(1, prompt["ijk"], True)
    session.propagate(stop_after=3)
    expected = np.asarray(session.result().array) == 1
    assert expected.sum() > 1000
    assert np.array_equal(web, expected), f"{int((web != expected).sum())} voxels differ ({int(web.sum())} vs {int(expected.sum())})"


def test_finish_stroke_without_a_stroke_tool_or_vertices_says_what_to_do(page):
    page.click("#tool-view")  # the tool is the app's: an earlier page may have left a stroke tool
    wait(lambda: state(page, "tool") == "view", STEP_S, "tool view")
    page.click("#finish-stroke")
    wait(lambda: page.inner_text("#status").startswith("no stroke to finish"), STEP_S, "the message")
    page.click("#tool-lasso")
    wait(lambda: state(page, "tool") == "lasso", STEP_S, "tool lasso")
    page.click("#finish-stroke")
    wait(lambda: page.inner_text("#status").startswith("no lasso to finish"), STEP_S, "the message")
    assert state(page, "prompt_points") == []


def _uploads_left() -> list:
    import tempfile

    return sorted(Path(tempfile.gettempdir()).glob("sam2volume-web-upload-*"))


def test_uploaded_ct_becomes_the_volume_and_an_over_cap_upload_is_refused(browser, totalseg, ct, tmp_path):
    """An app started on the MR: the shared CT uploaded in the page (read by sam2volume's read_volume from a
    private temporary file, removed afterwards) is then the volume clicked and propagated, equal to sam2volume's
    result; with --max-upload-mb below the CT's size the upload is refused with a message and the MR stays."""
    source = totalseg / "example_ct_sm.nii.gz"
    before = _uploads_left()
    with web_app(totalseg / "example_mr_sm.nii.gz", tmp_path / "web.log") as app:
        page = open_page(browser, app.url)
        assert state(page, "volume_name") == "example_mr_sm.nii.gz"
        page.set_input_files("#upload-file", str(source))
        wait(lambda: page.inner_text("#status").startswith(("uploaded", "no volume")), 120, "the upload")
        assert page.inner_text("#status").startswith("uploaded example_ct_sm.nii.gz"), page.inner_text("#status")
        assert state(page, "volume_name") == "example_ct_sm.nii.gz"
        k = shown_index(ct, view_box(page, "axial")[0], 2)
        click_voxel(page, ct, "axial", (LIVER[0], LIVER[1], k))
        prompt = state(page, "prompt_points")[0]
        assert np.all(np.abs(np.array(prompt["ijk"][0]) - (LIVER[0], LIVER[1], k)) < 0.5), prompt
        web = propagate_and_download(page, ct, tmp_path)
        from sam2volume.baseline import BaselineSession

        session = BaselineSession(ct, "axial", window="abdomen")
        session.add_points(1, prompt["ijk"], prompt["labels"])
        session.propagate(stop_after=3)
        expected = np.asarray(session.result().array) == 1
        assert expected.sum() > 1000 and np.array_equal(web, expected), f"{int((web != expected).sum())} voxels differ"
        page.close()
    assert _uploads_left() == before  # the temporary file is gone

    cap_mb = 0.25  # the CT file is 0.46 MB
    assert source.stat().st_size > cap_mb * 2**20
    with web_app(totalseg / "example_mr_sm.nii.gz", tmp_path / "web2.log", "--max-upload-mb", str(cap_mb)) as app:
        page = open_page(browser, app.url)
        page.set_input_files("#upload-file", str(source))
        wait(lambda: page.inner_text("#status").startswith(("uploaded", "no volume")), 120, "the refusal")
        status = page.inner_text("#status")
        assert status.startswith("no volume uploaded: example_ct_sm.nii.gz is larger than the 0.25 MB limit") and \
            "--max-upload-mb" in status, status
        assert state(page, "volume_name") == "example_mr_sm.nii.gz"
        page.close()
    assert _uploads_left() == before
