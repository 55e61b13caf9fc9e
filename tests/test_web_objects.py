"""Objects in the web page: rename, colour picker, remove (headless Chromium, baseline engine, shared CT).

The app runs as a real process on loopback (tests/web_helpers.py); what the page shows and downloads is
read back with SimpleITK / sam2volume and compared with ``sam2volume``'s own result for the same prompts.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install 'segment-with-sam2[web]')")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (extra 'web')")
from web_helpers import (CHROMIUM, STEP_S, add_object, click_voxel, pixel_of, ras_of, shown_index, state, view_box,  # noqa: E402
                         wait)

from web_fixtures import app, browser, ct, page  # noqa: E402,F401 - the fixtures

if CHROMIUM is None:
    pytest.skip("no system chromium (apt-get install chromium; scripts/setup_env.sh does it)", allow_module_level=True)

from sam2volume import api, read_labelmap  # noqa: E402

LIVER = (84, 56, 18)


def shown(page, ct) -> int:
    """The axial slice the page shows (prompts are clicked there)."""
    return shown_index(ct, view_box(page, "axial")[0], 2)


def liver(page, ct):
    return (LIVER[0], LIVER[1], shown(page, ct))


def spleen(page, ct, totalseg):
    """The voxel deepest inside the spleen (label 1 of example_seg) on the shown axial slice."""
    from scipy import ndimage

    k = shown(page, ct)
    inside = ndimage.distance_transform_edt(np.asarray(read_labelmap(totalseg / "example_seg.nii.gz").array)[:, :, k] == 1)
    assert inside.max() > 3
    return (*(int(x) for x in np.unravel_index(int(np.argmax(inside)), inside.shape)), k)


def status(page) -> str:
    return page.inner_text("#status")


def choose(page, segment_id: str) -> None:
    page.select_option("#object", segment_id)
    wait(lambda: state(page, "current_object") == segment_id, STEP_S, "the object chosen")


def seg_nrrd(page, folder: Path):
    """The .seg.nrrd download: {name: (label value, colour (r, g, b))} from its header, and the path."""
    import SimpleITK as sitk

    with page.expect_download() as download:
        page.click("#download")
    path = folder / "segmentation.seg.nrrd"
    download.value.save_as(path)
    header = sitk.ReadImage(str(path))
    segments, n = {}, 0
    while header.HasMetaDataKey(f"Segment{n}_Name"):
        colour = tuple(float(x) for x in header.GetMetaData(f"Segment{n}_Color").split())
        segments[header.GetMetaData(f"Segment{n}_Name")] = (int(header.GetMetaData(f"Segment{n}_LabelValue")), colour)
        n += 1
    return segments, path


def propagate(page) -> None:
    page.click("#propagate")
    wait(lambda: status(page).startswith(("propagated", "not propagated", "propagation failed")), 300, "the propagation")
    assert status(page).startswith("propagated"), status(page)


def test_rename_names_the_object_in_the_list_the_prompts_and_the_download(page, ct, tmp_path):
    liver_id = add_object(page, "lvr")
    click_voxel(page, ct, "axial", liver(page, ct))
    page.fill("#object-name", "liver (right lobe)")
    page.click("#rename-object")
    wait(lambda: status(page).startswith("object 'lvr' renamed"), STEP_S, "the rename")
    assert {o["id"]: o["name"] for o in state(page, "objects")}[liver_id] == "liver (right lobe)"
    assert state(page, "current_object") == liver_id
    wait(lambda: state(page, "prompts")[0].startswith("liver (right lobe):"), STEP_S, "the prompt line's new name")
    segments, _ = seg_nrrd(page, tmp_path)
    assert set(segments) == {"SAM2 segment", "liver (right lobe)"}, segments
    # a name another object has, or an empty one, is refused and changes nothing
    page.fill("#object-name", "SAM2 segment")
    page.click("#rename-object")
    wait(lambda: status(page).startswith("not renamed: an object is already named 'SAM2 segment'"), STEP_S, "the refusal")
    page.fill("#object-name", "")
    page.click("#rename-object")
    wait(lambda: status(page).startswith("not renamed: type the new name"), STEP_S, "the empty-name refusal")
    assert {o["id"]: o["name"] for o in state(page, "objects")}[liver_id] == "liver (right lobe)"


def test_colour_picker_colours_the_overlay_and_the_download(page, ct, tmp_path):
    view, box = view_box(page, "axial")
    k = shown_index(ct, view, 2)
    click_voxel(page, ct, "axial", (LIVER[0], LIVER[1], k))
    page.fill("#object-colour", "#2040ff")  # from magenta to blue
    sid = state(page, "current_object")
    wait(lambda: {o["id"]: o["colour"] for o in state(page, "objects")}[sid] == "#2040ff", STEP_S, "the new colour")
    segments, path = seg_nrrd(page, tmp_path)
    np.testing.assert_allclose(segments["SAM2 segment"][1], (0x20 / 255, 0x40 / 255, 1.0), atol=1 / 255)

    # the picture: the mask's pixels (inside it, away from the point's glyph) are now blue, not magenta
    from PIL import Image
    from scipy import ndimage

    mask = np.asarray(read_labelmap(path, reference=ct).array)[:, :, k] > 0
    inside = ndimage.binary_erosion(mask, iterations=2)
    click = np.round(state(page, "prompt_points")[0]["ijk"][0]).astype(int)
    inside[max(0, click[0] - 4):click[0] + 5, max(0, click[1] - 4):click[1] + 5] = False
    assert inside.sum() > 50
    time.sleep(1.0)  # the last picture after the colour change
    png = tmp_path / "axial.png"
    page.locator(f"#{view['id']}").locator("xpath=..").locator("img.image-display-area").screenshot(path=png)
    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    ii, jj = np.nonzero(inside)
    pix = []
    for n in np.linspace(0, len(ii) - 1, min(len(ii), 200)).astype(int):
        x, y = pixel_of(view, box, ras_of(ct, (ii[n], jj[n], k)))
        pix.append(rgb[int(y - box["y"]), int(x - box["x"])])
    pix = np.array(pix)
    assert np.mean(pix[:, 2] - pix[:, 0] > 40) > 0.95, np.percentile(pix[:, 2] - pix[:, 0], [5, 50])  # blue over red


def test_remove_drops_the_object_its_prompts_and_its_segment(page, ct, totalseg, tmp_path):
    liver_id, spleen_id = add_object(page, "liver"), add_object(page, "spleen")
    choose(page, liver_id)
    click_voxel(page, ct, "axial", liver(page, ct))
    choose(page, spleen_id)
    click_voxel(page, ct, "axial", spleen(page, ct, totalseg))
    spleen_prompt = state(page, "prompt_points")[1]["ijk"][0]
    choose(page, liver_id)
    page.once("dialog", lambda d: d.dismiss())  # "Cancel" in the question: nothing happens
    page.click("#remove-object")
    time.sleep(1.0)
    assert liver_id in [o["id"] for o in state(page, "objects")]
    page.once("dialog", lambda d: d.accept())
    page.click("#remove-object")
    wait(lambda: status(page) == "object 'liver' removed with its prompts", STEP_S, "the removal")
    assert [o["name"] for o in state(page, "objects")] == ["SAM2 segment", "spleen"]
    assert [p["segment"] for p in state(page, "prompt_points")] == [spleen_id]
    propagate(page)
    segments, path = seg_nrrd(page, tmp_path)
    assert set(segments) == {"SAM2 segment", "spleen"}
    labels = np.asarray(read_labelmap(path, reference=ct).array)
    prompts = {"coordinates": "voxel", "axis": "axial",
               "objects": [{"name": "spleen", "label": 1, "points": [{"position": spleen_prompt, "positive": True}]}]}
    expected, _ = api.segment(ct, prompts, engine="baseline", window="abdomen", stop_after=3)
    theirs = np.asarray(expected.array) == 1
    mine = labels == segments["spleen"][0]
    assert theirs.sum() > 200 and np.array_equal(mine, theirs), f"{int((mine != theirs).sum())} voxels differ"
    assert not (labels == segments["SAM2 segment"][0]).any()  # the liver's voxels went with it


def test_removing_the_last_object_leaves_a_new_empty_one(page, ct):
    click_voxel(page, ct, "axial", liver(page, ct))
    old = state(page, "current_object")
    page.once("dialog", lambda d: d.accept())
    page.click("#remove-object")
    wait(lambda: status(page).startswith("object 'SAM2 segment' removed"), STEP_S, "the removal")
    objects = state(page, "objects")
    assert len(objects) == 1 and objects[0]["id"] != old and objects[0]["name"] == "SAM2 segment"
    assert state(page, "current_object") == objects[0]["id"] and state(page, "prompt_points") == []
    page.click("#propagate")  # nothing to propagate: says so
    wait(lambda: "place a point or a box" in status(page), STEP_S, "the message")


def test_a_second_browser_shares_the_page(page, browser, app, ct):
    """One app is one workspace (trame keeps one state for every connection): a second browser page sees the
    first one's objects and prompts, and its own changes reach the first (README: one app per user)."""
    from web_helpers import open_page, reset

    other = open_page(browser, app.url)
    try:
        add_object(page, "liver")
        click_voxel(page, ct, "axial", liver(page, ct))
        wait(lambda: [o["name"] for o in state(other, "objects")] == ["SAM2 segment", "liver"], STEP_S, "the object in the other page")
        wait(lambda: len(state(other, "prompt_points")) == 1, STEP_S, "the prompt in the other page")
        other.fill("#object-name", "spleen")
        other.click("#add-object")
        wait(lambda: [o["name"] for o in state(page, "objects")] == ["SAM2 segment", "liver", "spleen"], STEP_S,
             "the other page's object in the first")
    finally:
        reset(other)
        other.close()


def test_seg_nrrd_download_reads_back_in_slicer_core_on_the_volumes_grid(page, ct, totalseg, tmp_path):
    """The .seg.nrrd download, read by Slicer's own segmentation storage node (slicer-core) beside the CT read
    by Slicer's volume storage node: the objects' names, the segmentation's grid equal to the CT's
    IJK-to-RAS, and each segment, sampled on the CT, equal to what sam2volume reads from the same file."""
    import slicer
    import slicer_scene as sc
    import vtk
    from slicer.util import arrayFromVTKMatrix

    add_object(page, "liver")
    click_voxel(page, ct, "axial", liver(page, ct))
    propagate(page)
    segments, path = seg_nrrd(page, tmp_path)
    sc.fresh_scene()
    volume = sc.load_volume(totalseg / "example_ct_sm.nii.gz", "ct")
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(seg), f"Slicer could not read {path}"
    segmentation = seg.GetSegmentation()
    names = {segmentation.GetNthSegment(i).GetName(): segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())}
    assert set(names) == {"SAM2 segment", "liver"}
    geometry = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(
        segmentation.GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()), geometry, False)
    grid = vtk.vtkMatrix4x4()
    geometry.GetImageToWorldMatrix(grid)
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    np.testing.assert_allclose(arrayFromVTKMatrix(grid), arrayFromVTKMatrix(ijk_to_ras), atol=1e-4)
    assert geometry.GetDimensions() == volume.GetImageData().GetDimensions()
    labels = np.asarray(read_labelmap(path, reference=ct).array)  # (i, j, k)
    for name, sid in names.items():
        in_slicer = slicer.util.arrayFromSegmentBinaryLabelmap(seg, sid, volume) > 0  # (k, j, i) on the CT
        assert np.array_equal(in_slicer.transpose(2, 1, 0), labels == segments[name][0]), name
    assert (labels == segments["liver"][0]).sum() > 1000
