"""The Slicer module's logic, controller and write-back on Slicer's real libraries (PyPI slicer-core),
with the model in a real engine server process (``sam2volume serve`` on 127.0.0.1).

Volumes are loaded through Slicer's own storage node; segments are read back with Slicer's own
export (``slicer.util.arrayFromSegmentBinaryLabelmap``) and compared with the engine's exact result.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

import slicer_scene as sc  # noqa: E402  (puts the module folder on sys.path)
import slicer  # noqa: E402
import vtk  # noqa: E402

from SegmentWithSAM2Lib.engine_link import Settings  # noqa: E402
from SegmentWithSAM2Lib.logic import SegmentWithSAM2Logic, box_corners, describe_error  # noqa: E402
from SegmentWithSAM2Lib.writeback import read_slab, write_slab  # noqa: E402

from sam2volume import InputError, read_labelmap, read_volume  # noqa: E402

BASELINE = Settings(mode="local", engine="baseline", device="cpu", window="abdomen", stopAfter=3)


@pytest.fixture(scope="module")
def link():
    """One local engine server for the module's tests (started with this Python, as Slicer's would be)."""
    lk = sc.engine_link()
    yield lk
    lk.stop()


@pytest.fixture
def ct(totalseg):
    sc.fresh_scene()
    return sc.load_volume(totalseg / "example_ct_sm.nii.gz", "ct")


@pytest.fixture
def labels(totalseg):
    vol = read_volume(totalseg / "example_ct_sm.nii.gz")
    return sc.result_kji(read_labelmap(totalseg / "example_seg.nii.gz", reference=vol).array)


@pytest.fixture
def logic(link):
    lg = SegmentWithSAM2Logic(link=link)
    yield lg
    lg.reset()


def organ_box(labels_kji, value, k):
    jj, ii = np.nonzero(labels_kji[k] == value)
    return (ii.min(), jj.min()), (ii.max(), jj.max())


def box_roi(volumeNode, labels_kji, value, k):
    """A box ROI placed by two clicks, as the markups place widget does."""
    (i0, j0), (i1, j1) = organ_box(labels_kji, value, k)
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.AddControlPointWorld(*sc.ras_of(volumeNode, [i0, j0, k]))
    assert box_corners(roi) is None  # first click: the box is not there yet (bug 3)
    roi.AddControlPointWorld(*sc.ras_of(volumeNode, [i1, j1, k]))
    return roi


SAM2 = Settings(mode="local", engine="sam2", model="sam2.1-hiera-tiny", device="cpu", window="abdomen", stopAfter=0)


def sam2_prompted(ct, labels, link):
    """A logic with a SAM2 (random weights, tracking to the volume's end) box on the liver's slice 14."""
    logic = SegmentWithSAM2Logic(link=link)
    seg, sid = logic.prepareSegmentation(ct)
    logic.addBox(ct, seg, sid, box_roi(ct, labels, 5, 14), red_at(ct, [0, 0, 14]), SAM2)
    return logic, seg, sid, SAM2


def segment_voxels(segmentationNode, segmentId):
    """A segment's voxels on its own labelmap grid: (image-to-segmentation matrix, sorted (i, j, k) indices)."""
    image = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentId)
    value = segmentationNode.GetSegmentation().GetSegment(segmentId).GetLabelValue()
    e = image.GetExtent()
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    kji = np.argwhere(slicer.util.arrayFromSegmentInternalBinaryLabelmap(segmentationNode, segmentId) == value)
    return slicer.util.arrayFromVTKMatrix(m), kji[:, ::-1] + np.array([e[0], e[2], e[4]])


def red_at(volumeNode, ijk):
    return sc.slice_node("Red", sc.ras_of(volumeNode, ijk))


def session_mask(logic, volumeNode, segNode, segmentId):
    c = logic.controllers[(volumeNode.GetID(), segNode.GetID())]
    return sc.result_kji(c.result_masks([segmentId])[segmentId])


# ----------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("name", ["example_ct_sm.nii.gz", "example_mr_sm.nii.gz"])
def test_volume_from_slicers_storage_node_has_read_volumes_geometry(totalseg, name, link):
    sc.fresh_scene()
    node = sc.load_volume(totalseg / name)
    logic = SegmentWithSAM2Logic(link=link)
    seg, _ = logic.prepareSegmentation(node)
    c = logic.controllerFor(node, seg, BASELINE)
    ref = read_volume(totalseg / name)
    assert c.volume.same_grid(ref) and np.array_equal(c.volume.array, ref.array)
    assert np.allclose(c.volume.ijk_to_ras, ref.ijk_to_ras)


# --------------------------------------------------------------------------------------- write-back
def test_slabs_keep_every_voxel_outside_them_and_other_segments(ct):
    """Bug 1: MODE_REPLACE with an extent replaced the whole segment by the last slab."""
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    a = seg.GetSegmentation().AddEmptySegment("", "a")
    b = seg.GetSegmentation().AddEmptySegment("", "b")
    dims = ct.GetImageData().GetDimensions()
    rng = np.random.default_rng(0)
    ref_a = np.zeros(dims[::-1], bool)
    ref_b = np.zeros(dims[::-1], bool)
    ref_b[12:15, 20:40, 30:60] = True
    write_slab(seg, b, ct, 2, 12, 14, ref_b[12:15])
    for axis, first, last in [(2, 3, 5), (2, 10, 10), (2, 20, 25), (1, 40, 42), (0, 7, 7)]:
        shape = list(dims[::-1])
        shape[2 - axis] = last - first + 1
        m = rng.random(shape) > 0.5
        write_slab(seg, a, ct, axis, first, last, m)
        index = [slice(None)] * 3
        index[2 - axis] = slice(first, last + 1)
        ref_a[tuple(index)] = m
    assert np.array_equal(sc.segment_array(seg, a, ct), ref_a)
    assert np.array_equal(sc.segment_array(seg, b, ct), ref_b)  # b shares voxels with a's later slabs: untouched
    assert np.array_equal(read_slab(seg, a, ct, 2, 0, dims[2] - 1), ref_a)


def test_prompt_propagation_correction_and_second_segment_equal_the_engine_result(ct, labels, logic):
    """Bug 1 end to end: every segment equals sam2volume's result exactly; a segment the module does
    not own is unchanged."""
    seg, liver = logic.prepareSegmentation(ct, None, "liver")
    manual = seg.GetSegmentation().AddEmptySegment("", "manual")
    hand = np.zeros(labels.shape, bool)
    hand[2:28, 60:80, 5:25] = True  # overlaps where the liver will be written
    slicer.util.updateSegmentBinaryLabelmapFromArray(hand.astype(np.uint8), seg, manual, ct)
    k = 14
    assert logic.addBox(ct, seg, liver, box_roi(ct, labels, 5, k), red_at(ct, [0, 0, k]), BASELINE) is not None
    got = sc.segment_array(seg, liver, ct)
    assert got[k].sum() > 0 and not got[:k].any() and not got[k + 1:].any()
    # a propagation limited to a range, then the rest: the written slices come in several runs
    logic.startPropagation(ct, seg, BASELINE, sliceRange=(k - 4, k + 4))
    logic.wait(60)
    assert logic.task.error is None and logic.task.written > 0
    assert np.array_equal(sc.segment_array(seg, liver, ct), session_mask(logic, ct, seg, liver))
    logic.startPropagation(ct, seg, BASELINE)
    logic.wait(60)
    assert np.array_equal(sc.segment_array(seg, liver, ct), session_mask(logic, ct, seg, liver))
    # a correction far from the prompt
    far = 20
    bad = np.argwhere(sc.segment_array(seg, liver, ct)[far] & (labels[far] != 5))
    j, i = bad[len(bad) // 2] if len(bad) else (50, 60)
    logic.addPoints(ct, seg, liver, [sc.ras_of(ct, [i, j, far])], [False], red_at(ct, [0, 0, far]), BASELINE)
    logic.startPropagation(ct, seg, BASELINE)
    logic.wait(60)
    assert np.array_equal(sc.segment_array(seg, liver, ct), session_mask(logic, ct, seg, liver))
    # a second segment in the same segmentation
    _, spleen = logic.prepareSegmentation(ct, seg, "spleen")
    ks = int(np.median(np.flatnonzero((labels == 1).any(axis=(1, 2)))))
    logic.addBox(ct, seg, spleen, box_roi(ct, labels, 1, ks), red_at(ct, [0, 0, ks]), BASELINE)
    logic.startPropagation(ct, seg, BASELINE, segmentIds=[spleen])
    logic.wait(60)
    assert np.array_equal(sc.segment_array(seg, spleen, ct), session_mask(logic, ct, seg, spleen))
    assert np.array_equal(sc.segment_array(seg, liver, ct), session_mask(logic, ct, seg, liver))
    assert np.array_equal(sc.segment_array(seg, manual, ct), hand)


@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_a_segmentation_on_another_grid_keeps_its_other_segments(ct, labels, logic, scale):
    """Also-list: a segmentation oversampled (0.5) or on the volume's spacing but another extent (1.0)."""
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.CreateDefaultDisplayNodes()
    other = seg.GetSegmentation().AddEmptySegment("", "other")
    # the user's segment on a grid shifted by whole voxels, oversampled or not
    fine = slicer.vtkOrientedImageData()
    fine.SetExtent(0, 99, 0, 79, 0, 39)
    fine.AllocateScalars(3, 1)  # VTK_UNSIGNED_CHAR
    m = sc.ijk_to_ras(ct).copy()
    m[:3, :3] *= scale
    m[:3, 3] += m[:3, :3] @ np.array([20.0, 30.0, 10.0])
    fine.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(m))
    from vtk.util import numpy_support

    values = np.zeros((40, 80, 100), np.uint8)
    values[5:30, 10:60, 20:90] = 1
    numpy_support.vtk_to_numpy(fine.GetPointData().GetScalars())[:] = values.ravel()
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(fine, seg, other, 0)
    before = segment_voxels(seg, other)
    # "allow overlap" in the Segment Editor's setting: the liver takes no voxels from the other segment
    # (with "overwrite all", Slicer's default, it would: test_slicer_overwrite_mode.py)
    slicer.modules.segmentations.logic().SetDefaultOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    seg2, liver = logic.prepareSegmentation(ct, seg, "liver")
    assert seg2 is seg
    k = 14
    logic.addBox(ct, seg, liver, box_roi(ct, labels, 5, k), red_at(ct, [0, 0, k]), BASELINE)
    logic.startPropagation(ct, seg, BASELINE)
    logic.wait(60)
    after = segment_voxels(seg, other)  # the other segment's voxels, on its own grid, are exactly as before
    assert np.allclose(after[0], before[0]) and np.array_equal(after[1], before[1]) and len(before[1]) > 0
    # the module's segment, read back on the volume's grid, is the engine's result
    assert np.array_equal(read_slab(seg, liver, ct, 2, 0, ct.GetImageData().GetDimensions()[2] - 1),
                          session_mask(logic, ct, seg, liver))


# ------------------------------------------------------------------------------------------ prompts
def test_box_is_used_when_complete_and_stays_visible(ct, labels, logic):
    """Bug 3: PointPositionDefinedEvent fires after the first of the box's two clicks."""
    seg, sid = logic.prepareSegmentation(ct)
    k = 14
    (i0, j0), (i1, j1) = organ_box(labels, 5, k)
    roi = logic.prompts.get("box")
    roi.AddControlPointWorld(*sc.ras_of(ct, [i0, j0, k]))
    assert logic.addBox(ct, seg, sid, roi, red_at(ct, [0, 0, k]), BASELINE) is None  # half a box: nothing sent
    roi.AddControlPointWorld(*sc.ras_of(ct, [i1, j1, k]))
    u = logic.addBox(ct, seg, sid, roi, red_at(ct, [0, 0, k]), BASELINE)
    assert u is not None and u.mask_kji.sum() > 0.5 * (labels[k] == 5).sum()
    assert slicer.mrmlScene.GetNodeByID(roi.GetID()) is roi and roi.GetLocked()  # kept, shown, until Reset
    assert logic.prompts.get("box") is not roi  # the next box is a new node
    logic.reset()
    assert slicer.mrmlScene.GetNodeByID(roi.GetID()) is None


def test_controllers_are_keyed_by_volume_segmentation_and_segment(ct, labels, logic):
    """Bug 4: segment ids repeat across segmentation nodes."""
    seg_a = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg_b = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    for s in (seg_a, seg_b):
        s.SetReferenceImageGeometryParameterFromVolumeNode(ct)
        s.GetSegmentation().AddEmptySegment("Segment_1", "organ")
    k = 14
    logic.addBox(ct, seg_a, "Segment_1", box_roi(ct, labels, 5, k), red_at(ct, [0, 0, k]), BASELINE)
    ks = int(np.median(np.flatnonzero((labels == 1).any(axis=(1, 2)))))
    logic.addBox(ct, seg_b, "Segment_1", box_roi(ct, labels, 1, ks), red_at(ct, [0, 0, ks]), BASELINE)
    for s in (seg_a, seg_b):
        logic.startPropagation(ct, s, BASELINE)
        logic.wait(60)
    a, b = sc.segment_array(seg_a, "Segment_1", ct), sc.segment_array(seg_b, "Segment_1", ct)
    assert np.array_equal(a, session_mask(logic, ct, seg_a, "Segment_1"))
    assert np.array_equal(b, session_mask(logic, ct, seg_b, "Segment_1"))
    assert (a & (labels == 5)).sum() > 0.5 * a.sum() and (b & (labels == 1)).sum() > 0.5 * b.sum()


def test_settings_are_a_snapshot_read_on_the_caller_thread():
    """Bug 5: the worker thread read params.direction; the logic only ever sees a frozen Settings."""

    class Params:  # stands for the parameter node's attributes
        mode, engine, direction, stopAfter = "local", "baseline", "forward", 2

    p = Params()
    s = Settings.read(p)
    p.direction = "backward"
    assert s.direction == "forward" and s.stopAfter == 2
    with pytest.raises(AttributeError):
        s.direction = "both"


def test_encode_ahead_is_read_from_the_parameter_node_and_reaches_the_engine_config(totalseg, link):
    """encodeAhead (parameter node) -> Settings -> the EngineConfig of the SAM2 session on the server;
    a test's config_overrides still win; the baseline engine has no such setting."""
    from SegmentWithSAM2Lib.engine_link import EngineLink

    from server_helpers import slab

    class Params:  # stands for the parameter node's attributes
        mode, engine, encodeAhead = "local", "sam2", 5

    assert Settings.read(Params()).encodeAhead == 5
    assert Settings().encodeAhead == 16  # on by default
    assert Settings(encodeAhead=5).session_key() != Settings(encodeAhead=16).session_key()  # fixed per session
    assert BASELINE.session_key() == Settings(**{**BASELINE.__dict__, "encodeAhead": 5}).session_key()
    server = link.local_server(SAM2)
    remote = {"mode": "remote", "serverUrl": server.url, "serverToken": server.token}  # no second server
    vol = slab(read_volume(totalseg / "example_ct_sm.nii.gz"), 10, 4)
    for lk, ahead, expected in ((link, 7, 7), (sc.engine_link(), 0, 0),
                                (EngineLink(config_overrides={**sc.engine_link().config_overrides, "encode_ahead": 2}), 7, 2)):
        settings = Settings(**{**SAM2.__dict__, **remote, "encodeAhead": ahead})
        with lk.factory(settings)(vol, "axial") as session:
            assert session.config.encode_ahead == expected
            assert session.server_config["encode_ahead"] == expected  # what the server's session runs with
    with link.factory(Settings(**{**BASELINE.__dict__, **remote, "encodeAhead": 7}))(vol, "axial") as session:
        assert session.config is None


def test_encoding_ahead_gives_the_segment_of_a_run_without_it(ct, labels, logic, link):
    """A SAM2 propagation through the logic with encodeAhead 16 (the default) writes the segment a run
    with 0 writes; after the background work it encodes only the slices not encoded ahead; changing
    encodeAhead replays the prompts into a new session."""
    from server_helpers import stats, wait_for

    plain = Settings(**{**SAM2.__dict__, "encodeAhead": 0})
    k, n = 14, ct.GetImageData().GetDimensions()[2]
    segmented = {}
    for settings in (plain, SAM2):
        seg, sid = logic.prepareSegmentation(ct)
        logic.addBox(ct, seg, sid, box_roi(ct, labels, 5, k), red_at(ct, [0, 0, k]), settings)
        c = logic.controllers[(ct.GetID(), seg.GetID())]
        assert c.session.server_config["encode_ahead"] == settings.encodeAhead
        assert wait_for(lambda: stats(link.server)["encoding_ahead"] == 0, 120)  # the user looks at the mask a moment
        task = logic.startPropagation(ct, seg, settings)
        logic.wait(120)
        assert task.error is None
        assert task.job.slices_encoded == n - 1 - settings.encodeAhead  # the prompt encoded its own slice
        segmented[settings.encodeAhead] = (seg, sid, c)
    seg0, sid0, _ = segmented[0]
    seg16, sid16, c16 = segmented[16]
    expected = sc.segment_array(seg0, sid0, ct)
    assert expected[k].any() and expected.any(axis=(1, 2)).sum() > 1
    assert np.array_equal(sc.segment_array(seg16, sid16, ct), expected)
    old = c16.session
    logic.startPropagation(ct, seg16, plain)  # encodeAhead 16 -> 0: a new session, the prompt sent again
    logic.wait(120)
    assert c16.session is not old and c16.session.server_config["encode_ahead"] == 0 and "1 prompt" in logic.lastMessage
    assert np.array_equal(sc.segment_array(seg16, sid16, ct), expected)


def test_an_existing_segmentation_is_never_moved_or_regridded(ct, labels, logic):
    """Bug 6."""
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    t = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = np.eye(4)
    m[:3, 3] = [5, -3, 2]
    t.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(m))
    seg.SetAndObserveTransformNodeID(t.GetID())
    geometry_param = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    seg.GetSegmentation().SetConversionParameter(geometry_param, "")
    mine = seg.GetSegmentation().AddEmptySegment("", "mine")
    hand = np.zeros(labels.shape, bool)
    hand[10:12, 40:50, 40:50] = True
    slicer.util.updateSegmentBinaryLabelmapFromArray(hand.astype(np.uint8), seg, mine, ct)
    geometry = seg.GetSegmentation().GetConversionParameter(geometry_param)
    before = segment_voxels(seg, mine)
    seg2, sid = logic.prepareSegmentation(ct, seg, "organ")
    k = 14
    logic.addBox(ct, seg, sid, box_roi(ct, labels, 5, k), red_at(ct, [0, 0, k]), BASELINE)
    assert seg2 is seg and seg.GetTransformNodeID() == t.GetID()
    assert seg.GetSegmentation().GetConversionParameter(geometry_param) == geometry
    after = segment_voxels(seg, mine)
    assert np.allclose(after[0], before[0]) and np.array_equal(after[1], before[1]) and len(before[1]) > 0
    # the slice lands on the volume's voxels through the segmentation's transform
    assert np.array_equal(sc.segment_array(seg, sid, ct)[k], session_mask(logic, ct, seg, sid)[k])


def test_clicks_off_the_slice_plane_and_oblique_views_are_refused(ct, labels, logic):
    """Bug 7 and the also-list's 2 degree rule, with real slice nodes."""
    seg, sid = logic.prepareSegmentation(ct)
    k = 14
    (i0, j0), (i1, j1) = organ_box(labels, 5, k)
    centre = [(i0 + i1) / 2, (j0 + j1) / 2]
    red = red_at(ct, [0, 0, k])
    with pytest.raises(InputError, match="slice spacings"):  # a 3D-view click, two slices off the plane
        logic.addPoints(ct, seg, sid, [sc.ras_of(ct, [*centre, k + 2])], [True], red, BASELINE)
    assert not sc.segment_array(seg, sid, ct).any()
    logic.addPoints(ct, seg, sid, [sc.ras_of(ct, [*centre, k + 0.4])], [True], red, BASELINE)
    assert sc.segment_array(seg, sid, ct)[k].any()
    centre_ras = sc.ras_of(ct, [*centre, k])
    with pytest.raises(InputError, match="oblique"):
        logic.addPoints(ct, seg, sid, [centre_ras], [True], sc.slice_node("Red", centre_ras, 3.0, 0), BASELINE)
    logic.addPoints(ct, seg, sid, [centre_ras], [True], sc.slice_node("Red", centre_ras, 1.0, 0), BASELINE)


def test_prompt_nodes_are_reused_hidden_and_not_saved(ct):
    """Bug 8."""
    from SegmentWithSAM2Lib.logic import PromptNodes

    first = {k: PromptNodes().get(k) for k in ("positive", "negative", "box")}
    again = {k: PromptNodes().get(k) for k in ("positive", "negative", "box")}  # a reload of the module
    assert all(first[k] is again[k] for k in first)
    assert all(n.GetHideFromEditors() and not n.GetSaveWithScene() for n in first.values())
    first["positive"].AddControlPointWorld(1.0, 2.0, 3.0)
    slicer.mrmlScene.SetSaveToXMLString(1)
    slicer.mrmlScene.Commit()
    xml = slicer.mrmlScene.GetSceneXMLString()
    assert "SAM2" not in xml and "name=\"ct\"" in xml


def test_an_error_in_a_callback_ends_the_task_and_reports_it(ct, labels, logic):
    """Bug 11: the status and Cancel must not stay stuck."""
    seg, sid = logic.prepareSegmentation(ct)
    k = 14
    logic.addBox(ct, seg, sid, box_roi(ct, labels, 5, k), red_at(ct, [0, 0, k]), BASELINE)
    errors, done = [], []

    def broken(done_, total):
        raise RuntimeError("progress display broke")

    logic.startPropagation(ct, seg, BASELINE, onProgress=broken, onDone=done.append, onError=errors.append)
    logic.wait(60)
    assert not logic.busy and errors == ["progress display broke"] and done == []
    logic.startPropagation(ct, seg, BASELINE, onDone=done.append, onError=errors.append)  # usable again
    logic.wait(60)
    assert len(done) == 1 and len(errors) == 1


def test_after_undo_or_manual_edit_the_next_propagation_rewrites_the_slices(ct, labels, logic):
    """Bug 12: the module compares with the segment's content, not with a record of its own writes."""
    seg, sid = logic.prepareSegmentation(ct)
    k = 14
    logic.addBox(ct, seg, sid, box_roi(ct, labels, 5, k), red_at(ct, [0, 0, k]), BASELINE)
    logic.startPropagation(ct, seg, BASELINE)
    logic.wait(60)
    expected = session_mask(logic, ct, seg, sid)
    edited = expected.copy()
    edited[5:12] = False  # the user erased (or undid) a run of slices
    edited[18, 10:20, 10:20] = True
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited.astype(np.uint8), seg, sid, ct)
    logic.startPropagation(ct, seg, BASELINE)
    logic.wait(60)
    assert np.array_equal(sc.segment_array(seg, sid, ct), expected)


def test_out_of_memory_advice_names_options_the_module_shows():
    """Bug 14: the old message named a 'CPU offload option' the module never showed."""
    import xml.etree.ElementTree as ET

    ui = ET.parse(sc.MODULE / "Resources/UI/SegmentWithSAM2.ui")
    texts = {p.find("string").text for p in ui.iter("property") if p.get("name") == "text" and p.find("string") is not None}
    message = describe_error(MemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert "offload" not in message.lower()
    for option in ("Model", "Only within slices", "Mode"):
        assert f"({option}" in message and any(t and t.rstrip(":") == option for t in texts), option


def test_moved_deleted_and_undone_points_update_the_prompts(ct, labels, logic):
    """Also-list: a point moved or deleted in the view changes the prompts and the slice; undo of the
    last prompt removes its point too."""
    seg, sid = logic.prepareSegmentation(ct)
    k = 14
    jj, ii = np.nonzero(labels[k] == 5)
    n = len(ii) // 2
    red = red_at(ct, [0, 0, k])
    points = logic.prompts.get("positive")

    def click(ijk):
        points.AddControlPointWorld(*sc.ras_of(ct, ijk))
        i = points.GetNumberOfControlPoints() - 1
        logic.addPoints(ct, seg, sid, [sc.ras_of(ct, ijk)], [True], red, BASELINE,
                        key=(points.GetID(), points.GetNthControlPointID(i)))

    click([ii[n], jj[n], k])
    on_liver = sc.segment_array(seg, sid, ct)[k]
    assert (on_liver & (labels[k] == 5)).sum() > 0.5 * on_liver.sum()
    assert logic.syncMovedPoints(ct, seg, points, [red]) == []  # nothing moved
    jb, ib = np.argwhere(labels[k] == 1)[len(np.argwhere(labels[k] == 1)) // 2]
    points.SetNthControlPointPositionWorld(0, *sc.ras_of(ct, [ib, jb, k]))  # dragged onto the spleen
    assert logic.syncMovedPoints(ct, seg, points, [red])
    moved = sc.segment_array(seg, sid, ct)[k]
    assert not np.array_equal(moved, on_liver) and (moved & (labels[k] == 1)).sum() > 0.5 * moved.sum()
    assert np.array_equal(moved, session_mask(logic, ct, seg, sid)[k])
    points.RemoveNthControlPoint(0)  # deleted from the view
    logic.removeMissingPoints(ct, seg, points)
    assert not sc.segment_array(seg, sid, ct)[k].any()
    click([ii[n], jj[n], k])
    assert points.GetNumberOfControlPoints() == 1 and sc.segment_array(seg, sid, ct)[k].any()
    logic.undoLastPrompt(ct, seg, sid)
    assert points.GetNumberOfControlPoints() == 0 and not sc.segment_array(seg, sid, ct)[k].any()


def test_a_settings_change_replays_the_prompts(ct, labels, logic):
    """Also-list: prompts are never dropped silently when a setting changes."""
    seg, sid = logic.prepareSegmentation(ct)
    k = 14
    logic.addBox(ct, seg, sid, box_roi(ct, labels, 5, k), red_at(ct, [0, 0, k]), BASELINE)
    c = logic.controllers[(ct.GetID(), seg.GetID())]
    old_session = c.session
    liver_window = Settings(**{**BASELINE.__dict__, "window": "liver"})
    logic.startPropagation(ct, seg, liver_window)
    logic.wait(60)
    assert c.session is not old_session and len(c.prompts) == 1 and "1 prompt" in logic.lastMessage
    assert np.array_equal(sc.segment_array(seg, sid, ct), session_mask(logic, ct, seg, sid))


def test_reset_while_a_job_runs_returns_at_once(ct, labels, link):
    """Bug 13: Reset waited for the worker's lock while a propagation ran."""
    logic, seg, sid, sam2 = sam2_prompted(ct, labels, link)
    logic.startPropagation(ct, seg, sam2)
    logic.poll()
    t = time.monotonic()
    logic.reset()
    assert time.monotonic() - t < 1.0 and not logic.busy and not logic.controllers
    closing = [c for _, c in logic._closing if c is not None]
    deadline = time.monotonic() + 60
    while logic._closing and time.monotonic() < deadline:  # the timer closes the session once the job stopped
        logic.poll()
        time.sleep(0.05)
    assert not logic._closing and closing and all(c.session is None for c in closing)


def test_self_test_runs_offline_on_slicer_core(link):
    """Bug 10: the self-test needed a download, a sample volume, an abdomen window on a lung task."""
    from SegmentWithSAM2Lib import selftest

    sc.fresh_scene()
    logic = SegmentWithSAM2Logic(link=link)
    seen = []
    dice = selftest.run(logic, Settings(mode="local", engine="baseline", device="cpu", window="abdomen"), show=seen.append)
    logic.reset()
    assert dice > 0.85, dice
    assert any("Dice" in s for s in seen)


REMOTE_CHILD = """
import sys, json
HEAVY = ("torch", "sam2", "hydra", "scipy", "SimpleITK", "nibabel", "pydicom", "fastapi", "uvicorn", "monai")
for name in HEAVY:
    sys.modules[name] = None  # importing any of them now fails, as in a Slicer without them
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import numpy as np
import slicer_scene as sc
from SegmentWithSAM2Lib.engine_link import Settings
from SegmentWithSAM2Lib.logic import SegmentWithSAM2Logic
args = json.loads(sys.argv[3])
sc.fresh_scene()
ct = sc.load_volume(args["ct"], "ct")
settings = Settings(mode="remote", serverUrl=args["url"], serverToken=args["token"], engine="baseline", window="abdomen")
logic = SegmentWithSAM2Logic()
seg, sid = logic.prepareSegmentation(ct)
logic.addPoints(ct, seg, sid, [sc.ras_of(ct, args["point"])], [True], sc.slice_node("Red", sc.ras_of(ct, args["point"])), settings)
logic.startPropagation(ct, seg, settings)
logic.wait(60)
assert logic.task.error is None, logic.task.error
got = sc.segment_array(seg, sid, ct)
assert got.sum() > 0
assert logic.link.server is None  # nothing was started locally
print(json.dumps({"voxels": int(got.sum()), "slices": int(got.any(axis=(1, 2)).sum()),
                  "loaded": sorted(m for m in HEAVY if sys.modules.get(m) is not None)}))
logic.reset()
"""


def test_remote_mode_needs_no_torch_or_engine_packages_in_slicer(totalseg, labels, link):
    """What users of SlicerNNInteractive have: a remote GPU server, and no torch in Slicer's Python."""
    import json
    import subprocess

    server = link.local_server(BASELINE)  # stands for the GPU machine's server (its own process)
    k = 14
    jj, ii = np.nonzero(labels[k] == 5)
    point = [int(ii[len(ii) // 2]), int(jj[len(jj) // 2]), k]
    args = json.dumps({"ct": str(totalseg / "example_ct_sm.nii.gz"), "url": server.url, "token": server.token, "point": point})
    out = subprocess.run([sys.executable, "-c", REMOTE_CHILD, str(sc.MODULE), str(sc.ROOT / "tests"), args],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["voxels"] > 0 and report["slices"] > 1 and report["loaded"] == []


def test_start_from_an_existing_segment_and_propagate_up_from_the_current_slice(ct, labels, logic):
    """What SlicerSegmentWithSAM users have: a segment's slice as the mask prompt; propagate one way
    from the slice the view shows."""
    seg, sid = logic.prepareSegmentation(ct, None, "liver")
    k = 14
    drawn = np.zeros(labels.shape, bool)
    drawn[k] = labels[k] == 5  # the user drew the liver on one slice
    slicer.util.updateSegmentBinaryLabelmapFromArray(drawn.astype(np.uint8), seg, sid, ct)
    red = red_at(ct, [0, 0, k])
    with pytest.raises(InputError, match="empty"):
        logic.addMaskFromSegment(ct, seg, sid, red_at(ct, [0, 0, 0]), BASELINE)
    logic.addMaskFromSegment(ct, seg, sid, red, BASELINE)
    start = logic.currentSlice(ct, seg, red)
    up = Settings(**{**BASELINE.__dict__, "direction": "forward"})
    logic.startPropagation(ct, seg, up, start=start)
    logic.wait(60)
    got = sc.segment_array(seg, sid, ct)
    assert np.array_equal(got, session_mask(logic, ct, seg, sid))
    assert np.array_equal(got[k], drawn[k])  # the mask prompt is kept as drawn
    c = logic.controllers[(ct.GetID(), seg.GetID())]
    below = [s for s in range(c.session.num_slices) if s < start]
    assert below and not any(c.session.frame_mask(c.labels[sid], s).any() for s in below)  # nothing below the start
    assert got.any(axis=(1, 2)).sum() > 3


def test_prompts_survive_a_touched_volume_and_go_only_when_its_voxels_change(ct, labels, logic):
    """Prompts are never dropped silently: an MTime bump keeps them; changed voxels clear them and say so."""
    seg, sid = logic.prepareSegmentation(ct)
    k = 14
    logic.addBox(ct, seg, sid, box_roi(ct, labels, 5, k), red_at(ct, [0, 0, k]), BASELINE)
    c = logic.controllers[(ct.GetID(), seg.GetID())]
    ct.GetImageData().Modified()  # touched, not changed
    assert logic.controllerFor(ct, seg, BASELINE) is c and len(c.prompts) == 1
    arr = slicer.util.arrayFromVolume(ct)
    arr[0, 0, 0] += 1
    slicer.util.arrayFromVolumeModified(ct)
    assert logic.controllerFor(ct, seg, BASELINE) is not c and "cleared" in logic.lastMessage


def test_slices_are_written_while_the_propagation_runs(ct, labels, link):
    """Each poll writes the slices the server finished since the last one, before the job ends."""
    logic, seg, sid, sam2 = sam2_prompted(ct, labels, link)
    task = logic.startPropagation(ct, seg, sam2)
    seen_while_running = 0
    deadline = time.monotonic() + 120
    while logic.busy and time.monotonic() < deadline:
        time.sleep(0.05)
        logic.poll()
        if not task.finished:
            seen_while_running = max(seen_while_running, len(task.visited[sid]))
    assert task.finished and task.error is None
    assert seen_while_running >= 2  # batches arrived and were written before the end
    assert np.array_equal(sc.segment_array(seg, sid, ct), session_mask(logic, ct, seg, sid))
    logic.reset()


def test_a_crashed_local_server_is_restarted_and_gets_the_prompts_again(ct, labels, logic, link):
    """A crash or out-of-memory kill of the engine process costs a message, not Slicer or the prompts."""
    seg, sid = logic.prepareSegmentation(ct)
    k = 14
    logic.addBox(ct, seg, sid, box_roi(ct, labels, 5, k), red_at(ct, [0, 0, k]), BASELINE)
    old = link.server
    old.process.kill()  # as the kernel's OOM killer would
    old.process.wait(10)
    jj, ii = np.nonzero(labels[k] == 5)
    logic.addPoints(ct, seg, sid, [sc.ras_of(ct, [ii[0], jj[0], k])], [False], red_at(ct, [0, 0, k]), BASELINE)
    assert link.server is not old and link.server.alive()
    assert "restarted" in logic.lastMessage and "1 prompt" in logic.lastMessage
    c = logic.controllers[(ct.GetID(), seg.GetID())]
    assert len(c.prompts) == 2
    logic.startPropagation(ct, seg, BASELINE)
    logic.wait(60)
    assert logic.task.error is None
    assert np.array_equal(sc.segment_array(seg, sid, ct), session_mask(logic, ct, seg, sid))


def test_a_server_dying_during_a_propagation_ends_it_with_a_message(ct, labels, link):
    logic, seg, sid, sam2 = sam2_prompted(ct, labels, link)
    errors = []
    logic.startPropagation(ct, seg, sam2, onError=errors.append)
    logic.poll()
    link.server.process.kill()
    link.server.process.wait(10)
    deadline = time.monotonic() + 60
    while logic.busy and time.monotonic() < deadline:
        logic.poll()
        time.sleep(0.05)
    assert not logic.busy and len(errors) == 1 and "engine server stopped" in errors[0]
    logic.reset()


def test_prompts_are_shown_per_segment(ct, labels, logic):
    seg, liver = logic.prepareSegmentation(ct, None, "liver")
    _, spleen = logic.prepareSegmentation(ct, seg, "spleen")
    k = 14
    points = logic.prompts.get("positive")
    for sid, value in ((liver, 5), (spleen, 1)):
        jj, ii = np.nonzero(labels[k] == value)
        points.AddControlPointWorld(*sc.ras_of(ct, [ii[len(ii) // 2], jj[len(jj) // 2], k]))
        points.SetNthControlPointDescription(points.GetNumberOfControlPoints() - 1, sid)
    roi = logic.prompts.get("box")
    (i0, j0), (i1, j1) = organ_box(labels, 5, k)
    roi.AddControlPointWorld(*sc.ras_of(ct, [i0, j0, k]))
    roi.AddControlPointWorld(*sc.ras_of(ct, [i1, j1, k]))
    logic.addBox(ct, seg, liver, roi, red_at(ct, [0, 0, k]), BASELINE)
    logic.prompts.show_segment(spleen)
    assert [points.GetNthControlPointVisibility(i) for i in range(2)] == [False, True]
    assert not roi.GetDisplayNode().GetVisibility()
    logic.prompts.show_segment(liver)
    assert [points.GetNthControlPointVisibility(i) for i in range(2)] == [True, False] and roi.GetDisplayNode().GetVisibility()


def test_a_custom_checkpoint_is_served_by_the_local_server_as_model_custom(tmp_path, totalseg):
    """Local mode: the checkpoint file goes to the server's own flags, never into a request."""
    from SegmentWithSAM2Lib.engine_link import EngineLink

    from sam2volume import Sam2VolumeError

    link = EngineLink(python=sys.executable, log_file=str(tmp_path / "server.log"))
    missing = tmp_path / "my_medsam2.pt"
    settings = Settings(mode="local", engine="sam2", model="medsam2-latest", device="cpu", checkpoint=str(missing))
    try:
        make = link.factory(settings)
        cmd = link.server.command
        assert cmd[cmd.index("--checkpoint") + 1] == str(missing) and cmd[cmd.index("--custom-image-size") + 1] == "512"
        vol = read_volume(totalseg / "example_ct_sm.nii.gz")
        with pytest.raises(Sam2VolumeError, match="my_medsam2.pt"):  # the server names the file it cannot load
            session = make(vol, "axial")
            session.add_points(1, [[60, 40, 14]])
    finally:
        link.stop()
