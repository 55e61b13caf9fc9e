"""A prompted segment deleted in Slicer (Segment Editor's Remove, the Segmentations module, Data module):
every Slicer way ends in ``vtkSegmentation::RemoveSegment``. Before, the next propagation failed for every
object ("Slicer could not write slices ... of segment S_...") and kept failing; an undo could pick the
deleted segment's prompt. On slicer-core (Slicer's real segmentation and markups nodes), baseline engine.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")
import slicer_scene as sc  # noqa: E402
from test_slicer_logic import BASELINE, ct, link, logic, red_at, session_mask  # noqa: E402,F401 - fixtures used by name

LIVER, SPLEEN = (84, 56, 18), (40, 56, 18)  # voxels (i, j, k) inside the liver and the spleen of example_ct_sm


def click(logic, ct, seg, sid, ijk, positive=True):
    node = logic.prompts.get("positive" if positive else "negative")
    n = node.AddControlPointWorld(*sc.ras_of(ct, ijk))
    node.SetNthControlPointDescription(n, sid)
    key = (node.GetID(), node.GetNthControlPointID(n))
    logic.addPoints(ct, seg, sid, [sc.ras_of(ct, ijk)], [positive], red_at(ct, ijk), BASELINE, key=key)
    return node


def two_objects(logic, ct):
    seg, liver = logic.prepareSegmentation(ct, None, "liver")
    _, spleen = logic.prepareSegmentation(ct, seg, "spleen")
    node = click(logic, ct, seg, liver, LIVER)
    click(logic, ct, seg, spleen, SPLEEN)
    return seg, liver, spleen, node


def descriptions(node):
    return [node.GetNthControlPointDescription(i) for i in range(node.GetNumberOfControlPoints())]


def test_a_segment_deleted_in_slicer_leaves_the_engine_and_the_others_propagate(ct, logic):
    seg, liver, spleen, points = two_objects(logic, ct)
    seg.GetSegmentation().RemoveSegment(liver)  # what Segment Editor's Remove button does
    task = logic.startPropagation(ct, seg, BASELINE)
    logic.wait(120)
    assert task.error is None and task.written > 0
    c = logic.controllers[(ct.GetID(), seg.GetID())]
    assert list(c.labels) == [spleen] and all(p.segment_id == spleen for p in c.prompts)
    assert liver not in descriptions(points)  # its point left the views with it
    assert sc.segment_array(seg, spleen, ct).any()
    assert np.array_equal(sc.segment_array(seg, spleen, ct), session_mask(logic, ct, seg, spleen))
    assert seg.GetSegmentation().GetSegmentIDs() == (spleen,)  # nothing re-created


def test_undo_after_deleting_a_segment_undoes_a_prompt_of_a_segment_that_is_there(ct, logic):
    seg, spleen = logic.prepareSegmentation(ct, None, "spleen")
    _, liver = logic.prepareSegmentation(ct, seg, "liver")
    click(logic, ct, seg, spleen, SPLEEN)
    click(logic, ct, seg, liver, LIVER)  # the newest prompt, in the segment deleted next
    seg.GetSegmentation().RemoveSegment(liver)
    logic.undoLastPrompt(ct, seg)  # before: undid the liver's prompt, writing into the deleted segment
    c = logic.controllers[(ct.GetID(), seg.GetID())]
    assert c.prompts == [] and not sc.segment_array(seg, spleen, ct).any()


def test_a_segment_deleted_while_propagating_is_skipped_and_the_others_are_exact(ct, logic):
    seg, liver, spleen, _ = two_objects(logic, ct)
    task = logic.startPropagation(ct, seg, BASELINE)
    seg.GetSegmentation().RemoveSegment(liver)  # during the job
    logic.wait(120)
    assert task.error is None
    assert np.array_equal(sc.segment_array(seg, spleen, ct), session_mask(logic, ct, seg, spleen))
    assert seg.GetSegmentation().GetSegmentIDs() == (spleen,)
    # the next call drops the deleted one from the engine
    logic.startPropagation(ct, seg, BASELINE)
    logic.wait(120)
    assert logic.task.error is None and list(logic.controllers[(ct.GetID(), seg.GetID())].labels) == [spleen]


def test_remove_segment_deletes_it_with_its_object_and_prompts(ct, logic):
    seg, liver, spleen, points = two_objects(logic, ct)
    logic.startPropagation(ct, seg, BASELINE)
    logic.wait(120)
    logic.removeSegment(ct, seg, liver)
    c = logic.controllers[(ct.GetID(), seg.GetID())]
    assert seg.GetSegmentation().GetSegment(liver) is None and list(c.labels) == [spleen]
    assert liver not in descriptions(points)
    # a new object after it is propagated as the engine says, the spleen is untouched
    before = sc.segment_array(seg, spleen, ct)
    _, again = logic.prepareSegmentation(ct, seg, "liver again")
    click(logic, ct, seg, again, LIVER)
    logic.startPropagation(ct, seg, BASELINE, segmentIds=[again])
    logic.wait(120)
    assert logic.task.error is None
    assert np.array_equal(sc.segment_array(seg, again, ct), session_mask(logic, ct, seg, again))
    assert np.array_equal(sc.segment_array(seg, spleen, ct), before)


def test_remove_segment_is_refused_while_its_segmentation_propagates(ct, logic):
    seg, liver, _, _ = two_objects(logic, ct)
    logic.startPropagation(ct, seg, BASELINE)
    with pytest.raises(Exception, match="propagation is running"):
        logic.removeSegment(ct, seg, liver)
    logic.wait(120)
    assert seg.GetSegmentation().GetSegment(liver) is not None
