"""Issue 20 item 8h: a mask SAM2 writes follows the Segment Editor's overwrite setting
(vtkMRMLSegmentEditorNode's OverwriteMode), as Segment Editor effects do: "overwrite all" takes the
mask's voxels from every other segment, "overwrite visible" from the visible ones, "allow overlap"
(OverwriteNone) from none. On Slicer's real libraries (slicer-core), through the module logic's own
write path (``applyUpdates``); segments are read back with Slicer's own export.
"""

from __future__ import annotations

import numpy as np
import pytest

import slicer_scene as sc  # noqa: E402  (puts the module folder on sys.path)
import slicer  # noqa: E402

from SegmentWithSAM2Lib.controller import SliceUpdate  # noqa: E402
from SegmentWithSAM2Lib.logic import SegmentWithSAM2Logic  # noqa: E402
from SegmentWithSAM2Lib.writeback import overwrite_mode  # noqa: E402
from test_slicer_logic import ct  # noqa: E402,F401  (the CT loaded by Slicer's storage node)

K = 14
EDITOR = slicer.vtkMRMLSegmentEditorNode


def segment_editor_node(mode: int):
    """The Segment Editor module's node, made as its module makes it (singleton tag "SegmentEditor")."""
    node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
    node.UnRegister(None)
    node.SetSingletonTag("SegmentEditor")
    node = slicer.mrmlScene.AddNode(node)
    node.SetOverwriteMode(mode)
    return node


def scene_with_segments(ct):
    """A segmentation with a target segment and two hand-drawn ones under where the mask goes:
    ``near`` (shares the target's layer) and ``apart`` (overlaps ``near``, so Slicer keeps it in a
    layer of its own)."""
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    segmentation = seg.GetSegmentation()
    target = segmentation.AddEmptySegment("", "target")
    near = segmentation.AddEmptySegment("", "near")
    apart = segmentation.AddEmptySegment("", "apart")
    shape = slicer.util.arrayFromVolume(ct).shape
    hand_near = np.zeros(shape, bool)
    hand_near[K - 2:K + 3, 40:60, 40:60] = True
    hand_apart = np.zeros(shape, bool)
    hand_apart[K - 2:K + 3, 50:70, 50:70] = True
    slicer.util.updateSegmentBinaryLabelmapFromArray(hand_near.astype(np.uint8), seg, near, ct)
    slicer.util.updateSegmentBinaryLabelmapFromArray(hand_apart.astype(np.uint8), seg, apart, ct)
    mask = np.zeros((1,) + shape[1:], bool)
    mask[0, 45:65, 45:65] = True  # on slice K, over parts of both
    return seg, target, near, apart, hand_near, hand_apart, mask


def write(logic, ct, seg, target, mask):
    logic.applyUpdates([SliceUpdate(target, 2, K, K, mask)], seg, ct)


def layers(seg, *ids):
    segmentation = seg.GetSegmentation()
    return {i: segmentation.GetLayerIndex(i) for i in ids}


def test_overwrite_all_takes_the_masks_voxels_from_every_other_segment(ct):
    seg, target, near, apart, hand_near, hand_apart, mask = scene_with_segments(ct)
    assert layers(seg, near, apart)[near] != layers(seg, near, apart)[apart]  # two layers to begin with
    segment_editor_node(EDITOR.OverwriteAllSegments)
    assert overwrite_mode(slicer.mrmlScene) == EDITOR.OverwriteAllSegments
    write(SegmentWithSAM2Logic(scene=slicer.mrmlScene), ct, seg, target, mask)
    got = sc.segment_array(seg, target, ct)
    assert np.array_equal(got[K], mask[0]) and not np.delete(got, K, axis=0).any()
    on = np.zeros(got.shape, bool)
    on[K] = mask[0]
    # both others lose exactly the mask's voxels, whichever layer they are in
    assert np.array_equal(sc.segment_array(seg, near, ct), hand_near & ~on)
    assert np.array_equal(sc.segment_array(seg, apart, ct), hand_apart & ~on)


def test_allow_overlap_keeps_every_other_segment(ct):
    seg, target, near, apart, hand_near, hand_apart, mask = scene_with_segments(ct)
    # no Segment Editor node in the scene: the default node's mode (Slicer sets it from its settings)
    slicer.modules.segmentations.logic().SetDefaultOverwriteMode(EDITOR.OverwriteNone)
    assert overwrite_mode(slicer.mrmlScene) == EDITOR.OverwriteNone
    write(SegmentWithSAM2Logic(scene=slicer.mrmlScene), ct, seg, target, mask)
    assert np.array_equal(sc.segment_array(seg, target, ct)[K], mask[0])
    assert np.array_equal(sc.segment_array(seg, near, ct), hand_near)
    assert np.array_equal(sc.segment_array(seg, apart, ct), hand_apart)
    ids = layers(seg, target, near, apart)
    assert ids[target] not in (ids[near], ids[apart])  # overlapping: the target is in a layer of its own


def test_overwrite_visible_spares_a_hidden_segment(ct):
    seg, target, near, apart, hand_near, hand_apart, mask = scene_with_segments(ct)
    seg.GetDisplayNode().SetSegmentVisibility(apart, False)
    segment_editor_node(EDITOR.OverwriteVisibleSegments)
    write(SegmentWithSAM2Logic(scene=slicer.mrmlScene), ct, seg, target, mask)
    on = np.zeros(hand_near.shape, bool)
    on[K] = mask[0]
    assert np.array_equal(sc.segment_array(seg, near, ct), hand_near & ~on)
    assert np.array_equal(sc.segment_array(seg, apart, ct), hand_apart)


@pytest.mark.parametrize("mode", [EDITOR.OverwriteAllSegments, EDITOR.OverwriteNone])
def test_the_segment_editor_node_wins_over_the_default(ct, mode):
    slicer.modules.segmentations.logic().SetDefaultOverwriteMode(EDITOR.OverwriteVisibleSegments)
    segment_editor_node(mode)
    assert overwrite_mode(slicer.mrmlScene) == mode
