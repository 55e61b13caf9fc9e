"""Issue 20, the Segment Editor inside the module: the .ui embeds ``qMRMLSegmentEditorWidget`` on the module's
own Segment Editor node, and SAM2 works on hand-edited segments, on Slicer's real libraries (slicer-core)
with a real engine server (baseline engine).

A hand edit is made as an editor effect makes it: ``vtkSlicerSegmentationsModuleLogic::SetBinaryLabelmapToSegment``
with a modifier labelmap (Paint adds with MODE_MERGE_MAX, Erase takes away with MODE_MERGE_MIN), the call
``qSlicerSegmentEditorAbstractEffect::modifySegmentByLabelmap`` ends in. The overwrite question goes to
``logic.confirmOverwrite`` (here: Answers, which records each question and answers yes or no).
"""

from __future__ import annotations


import numpy as np
import pytest

import slicer_scene as sc  # noqa: E402  (puts the module folder on sys.path)
import slicer  # noqa: E402
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from SegmentWithSAM2Lib.logic import EDITOR_SINGLETON, OverwriteDeclined, editor_node, segment_from_editor  # noqa: E402
from test_slicer_logic import BASELINE, labels, link, logic, red_at, session_mask  # noqa: E402,F401
from test_slicer_logic import ct  # noqa: E402,F401
from test_slicer_widget_rules import SOURCE, UI, method  # noqa: E402
from test_slicer_overwrite import Answers, K, liver_point, users_segment  # noqa: E402

EDITOR = slicer.vtkMRMLSegmentEditorNode


def paint(seg, sid, volume, k, i0, i1, j0, j1, erase=False):
    """A hand edit on volume slice k (i0..i1, j0..j1), as an editor effect applies it. The segmentation made
    by the module is on the volume's grid, so the modifier labelmap is on that grid too."""
    image = slicer.vtkOrientedImageData()
    image.SetExtent(i0, i1, j0, j1, k, k)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = 0 if erase else 1
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    image.SetImageToWorldMatrix(m)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    mode = logic.MODE_MERGE_MIN if erase else logic.MODE_MERGE_MAX
    assert logic.SetBinaryLabelmapToSegment(image, seg, sid, mode, [i0, i1, j0, j1, k, k])


def liver_rect(labels_kji, k):
    jj, ii = np.nonzero(labels_kji[k] == 5)
    return int(ii.min()), int(ii.min()) + 12, int(jj.min()), int(jj.max())


# ------------------------------------------------------------------------------------------ the .ui
def test_the_editor_is_embedded_on_the_modules_own_editor_node_before_the_scene():
    w = UI.find(".//widget[@name='segmentEditorWidget']")
    assert w is not None and w.get("class") == "qMRMLSegmentEditorWidget"
    declared = {c.find("class").text: c.find("header").text for c in UI.iter("customwidget")}
    assert declared["qMRMLSegmentEditorWidget"] == "qMRMLSegmentEditorWidget.h"
    props = {p.get("name"): p for p in w.findall("property")}
    # one place chooses the segmentation and the volume: the module's selectors
    for name in ("segmentationNodeSelectorVisible", "sourceVolumeNodeSelectorVisible", "switchToSegmentationsButtonVisible"):
        assert props[name].find("bool").text == "false", name
    assert int(props["maximumNumberOfUndoStates"].find("number").text) > 0
    setup = method("SegmentWithSAM2Widget", "_setupEditor")
    # as Slicer's Segment Editor module: the node first, then the scene
    assert setup.index("setMRMLSegmentEditorNode(") < setup.index("setMRMLScene(")
    assert "self.logic.editorNode = editor_node(slicer.mrmlScene)" in setup
    sync = method("SegmentWithSAM2Widget", "_syncEditor")
    assert "setSegmentationNode(seg)" in sync and "setSourceVolumeNode(volume)" in sync and 'setCurrentSegmentID(segmentId or "")' in sync
    # the editor's own pick of a first segment, while the module hands it the segmentation, is not followed
    assert sync.index("self._syncingEditor = True") < sync.index("setSegmentationNode(seg)") < sync.index("self._syncingEditor = False")
    assert "setMasterVolumeNode" not in SOURCE  # the 5.10+ name
    follow = method("SegmentWithSAM2Widget", "_onEditorSegment")
    assert "segment_from_editor(segmentId, self.ui.segmentSelector.currentSegmentID()" in follow and "setCurrentSegmentID(chosen)" in follow
    # leaving the module: no effect stays active (Slicer's module does the same)
    assert "setActiveEffect(None)" in method("SegmentWithSAM2Widget", "exit")
    assert "setActiveEffect(None)" in method("SegmentWithSAM2Widget", "place")


def test_the_module_follows_only_a_segment_the_user_chose_in_the_editor():
    assert segment_from_editor("S2", "S1", syncing=False) == "S2"  # chosen (or added) in the editor
    assert segment_from_editor("S1", "", syncing=True) is None  # the editor's own first-segment pick
    assert segment_from_editor("", "S1", syncing=False) is None  # never "no segment" from the editor
    assert segment_from_editor("S1", "S1", syncing=False) is None


def test_the_editors_keys_are_not_installed_so_the_modules_keys_stay_its_own():
    """The editor's installKeyboardShortcuts binds 1-0 (effects), Z/Y, Q/W, Space, Esc, I in the main window:
    1, 2 and 3 would clash with the module's point and box keys. The module never installs them."""
    assert "installKeyboardShortcuts" not in SOURCE
    from SegmentWithSAM2Lib.logic import SHORTCUTS

    assert {"1", "2", "3"} <= set(SHORTCUTS) and "for key, name in SHORTCUTS.items():" in SOURCE


def test_the_editor_node_is_a_singleton_made_from_the_default_node():
    scene = sc.fresh_scene()
    default = EDITOR()
    default.SetOverwriteMode(EDITOR.OverwriteNone)  # as Slicer sets it from the application settings
    scene.AddDefaultNode(default)
    node = editor_node(scene)
    assert node.GetSingletonTag() == EDITOR_SINGLETON and node.GetOverwriteMode() == EDITOR.OverwriteNone
    assert editor_node(scene) is node and scene.GetNumberOfNodesByClass("vtkMRMLSegmentEditorNode") == 1
    assert scene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode") is None  # not Slicer's own node


def test_write_back_follows_the_embedded_editors_overwrite_setting(ct, labels, logic):
    slicer_own = slicer.mrmlScene.AddNode(EDITOR())
    slicer_own.SetSingletonTag("SegmentEditor")
    slicer_own.SetOverwriteMode(EDITOR.OverwriteAllSegments)
    logic.editorNode = editor_node(slicer.mrmlScene)
    logic.editorNode.SetOverwriteMode(EDITOR.OverwriteNone)  # chosen in the embedded editor: allow overlap
    seg, first = logic.prepareSegmentation(ct, None, "first")
    _, second = logic.prepareSegmentation(ct, seg, "second")
    i0, i1, j0, j1 = liver_rect(labels, K)
    paint(seg, first, ct, K, 0, ct.GetImageData().GetDimensions()[0] - 1, j0, j1)  # a wide band over the liver
    band = sc.segment_array(seg, first, ct)
    logic.addPoints(ct, seg, second, [liver_point(ct, labels)], [True], red_at(ct, [0, 0, K]), BASELINE)
    mask = sc.segment_array(seg, second, ct)
    assert (mask & band).any() and np.array_equal(sc.segment_array(seg, first, ct), band)  # overlap kept
    logic.editorNode.SetOverwriteMode(EDITOR.OverwriteAllSegments)
    logic.addPoints(ct, seg, second, [liver_point(ct, labels, K + 1)], [True], red_at(ct, [0, 0, K + 1]), BASELINE)
    paint(seg, first, ct, K + 1, 0, ct.GetImageData().GetDimensions()[0] - 1, j0, j1)
    logic.undoLastPrompt(ct, seg, second)
    logic.addPoints(ct, seg, second, [liver_point(ct, labels, K + 1)], [True], red_at(ct, [0, 0, K + 1]), BASELINE)
    assert not (sc.segment_array(seg, first, ct)[K + 1] & sc.segment_array(seg, second, ct)[K + 1]).any()


# ------------------------------------------------------------------------------------- hand edits
def test_a_hand_edit_on_a_slice_sam2_wrote_is_asked_about_before_a_prompt_writes_over_it(ct, labels, logic):
    seg, sid = logic.prepareSegmentation(ct)  # a segment the module made
    answers = Answers(False)
    logic.confirmOverwrite = answers
    logic.addPoints(ct, seg, sid, [liver_point(ct, labels)], [True], red_at(ct, [0, 0, K]), BASELINE)
    assert answers.questions == []  # SAM2's own slice
    i0, i1, j0, j1 = liver_rect(labels, K)
    paint(seg, sid, ct, K, i0 - 15, i0 - 5, j0, j1)  # painted beside the liver, by hand
    edited = sc.segment_array(seg, sid, ct)
    # a second click on that slice would replace the hand edit: asked; no keeps it exactly
    with pytest.raises(OverwriteDeclined):
        logic.addPoints(ct, seg, sid, [liver_point(ct, labels)], [True], red_at(ct, [0, 0, K]), BASELINE)
    assert len(answers.questions) == 1 and f"slice {K}" in answers.questions[0]
    assert np.array_equal(sc.segment_array(seg, sid, ct), edited)
    # a propagation over it is asked about too
    with pytest.raises(OverwriteDeclined):
        logic.startPropagation(ct, seg, BASELINE)
    assert len(answers.questions) == 2 and np.array_equal(sc.segment_array(seg, sid, ct), edited)
    # yes: written, and the slices are SAM2's again (the next prompt there is not asked about)
    answers.yes = True
    logic.addPoints(ct, seg, sid, [liver_point(ct, labels)], [True], red_at(ct, [0, 0, K]), BASELINE)
    assert len(answers.questions) == 3 and np.array_equal(sc.segment_array(seg, sid, ct), session_mask(logic, ct, seg, sid))
    logic.addPoints(ct, seg, sid, [liver_point(ct, labels)], [False], red_at(ct, [0, 0, K]), BASELINE)
    assert len(answers.questions) == 3


def test_a_hand_edit_on_a_users_segment_after_sam2_wrote_there_is_asked_about(ct, labels, logic):
    seg, sid, hand = users_segment(ct, labels, [K + 4])  # the user's segment, SAM2 writes on an empty slice
    answers = Answers(False)
    logic.confirmOverwrite = answers
    logic.addPoints(ct, seg, sid, [liver_point(ct, labels)], [True], red_at(ct, [0, 0, K]), BASELINE)
    assert answers.questions == []
    jj, ii = np.nonzero(labels[K] == 5)
    i, j = int(ii[len(ii) // 2]), int(jj[len(jj) // 2])  # the clicked voxel
    written = sc.segment_array(seg, sid, ct)
    paint(seg, sid, ct, K, i - 3, i + 3, j - 3, j + 3, erase=True)  # erased part of SAM2's mask by hand
    edited = sc.segment_array(seg, sid, ct)
    assert written[K, j, i] and not edited[K, j, i] and np.array_equal(np.delete(edited, K, 0), np.delete(written, K, 0))
    with pytest.raises(OverwriteDeclined):
        logic.addPoints(ct, seg, sid, [liver_point(ct, labels)], [True], red_at(ct, [0, 0, K]), BASELINE)
    assert len(answers.questions) == 1 and f"slice {K}" in answers.questions[0]
    assert np.array_equal(sc.segment_array(seg, sid, ct), edited)


def test_sam2_taking_voxels_from_its_other_segment_is_not_a_hand_edit(ct, labels, logic):
    """Overwrite all: a mask written into one segment takes voxels from the other; that other segment's
    slice stays SAM2's (its next prompt there is not asked about)."""
    answers = Answers(False)
    logic.confirmOverwrite = answers
    seg, first = logic.prepareSegmentation(ct, None, "first")
    _, second = logic.prepareSegmentation(ct, seg, "second")
    logic.addPoints(ct, seg, first, [liver_point(ct, labels)], [True], red_at(ct, [0, 0, K]), BASELINE)
    before = sc.segment_array(seg, first, ct)
    logic.addPoints(ct, seg, second, [liver_point(ct, labels)], [True], red_at(ct, [0, 0, K]), BASELINE)
    assert not np.array_equal(sc.segment_array(seg, first, ct), before)  # the second took the first's voxels
    logic.addPoints(ct, seg, first, [liver_point(ct, labels)], [False], red_at(ct, [0, 0, K]), BASELINE)
    assert answers.questions == []


def test_start_from_the_segment_takes_the_hand_edited_slice(ct, labels, logic):
    seg, sid = logic.prepareSegmentation(ct)
    answers = Answers(False)
    logic.confirmOverwrite = answers
    logic.addPoints(ct, seg, sid, [liver_point(ct, labels, K + 3)], [True], red_at(ct, [0, 0, K + 3]), BASELINE)
    i0, i1, j0, j1 = liver_rect(labels, K)
    paint(seg, sid, ct, K, i0, i1, j0, j1)  # drawn by hand on slice K, where SAM2 wrote nothing
    hand = sc.segment_array(seg, sid, ct)[K]
    logic.addMaskFromSegment(ct, seg, sid, red_at(ct, [0, 0, K]), BASELINE)
    c = logic.controllers[(ct.GetID(), seg.GetID())]
    assert c.prompts[-1].kind == "mask" and c.prompts[-1].mask.sum() == hand.sum() == (i1 - i0 + 1) * (j1 - j0 + 1)
    assert np.array_equal(sc.segment_array(seg, sid, ct)[K], hand)
    # starting from it accepts what the segment holds: propagating is not asked about, and keeps slice K
    logic.startPropagation(ct, seg, BASELINE)
    logic.wait(60)
    assert logic.task.error is None and answers.questions == []
    got = sc.segment_array(seg, sid, ct)
    assert np.array_equal(got[K], hand) and np.array_equal(got, session_mask(logic, ct, seg, sid))
