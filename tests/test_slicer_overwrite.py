"""Issue 20 item 3: the first prompt never writes over a segment nobody chose, and writing over a
segment's content that SAM2 did not write is asked first; on Slicer's real libraries (slicer-core)
with a real engine server (baseline engine).

The question goes to ``logic.confirmOverwrite`` (the widget passes a Qt question dialog; here a
function that records the question and answers yes or no). Segments are compared voxel for voxel
through Slicer's own export.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

import slicer_scene as sc  # noqa: E402  (puts the module folder on sys.path)
import slicer  # noqa: E402

from SegmentWithSAM2Lib.logic import OverwriteDeclined  # noqa: E402
from test_slicer_logic import BASELINE, box_roi, red_at, session_mask  # noqa: E402
from test_slicer_logic import ct, labels, link, logic  # noqa: E402,F401  (the same fixtures: a logic per test)

K = 14  # a slice through the liver (label 5)


class Answers:
    """The confirm callback: records each question, answers with ``yes``."""

    def __init__(self, yes: bool):
        self.yes = yes
        self.questions: list[str] = []

    def __call__(self, question: str) -> bool:
        self.questions.append(question)
        return self.yes


def users_segment(ct, labels, slices):
    """A segmentation made outside the module (as in the Segment Editor) with a hand-drawn segment
    on ``slices``: a rectangle over the liver."""
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    sid = seg.GetSegmentation().AddEmptySegment("", "hand-drawn")
    hand = np.zeros(labels.shape, bool)
    jj, ii = np.nonzero(labels[K] == 5)
    for k in slices:
        hand[k, jj.min():jj.max(), ii.min():ii.min() + 10] = True
    slicer.util.updateSegmentBinaryLabelmapFromArray(hand.astype(np.uint8), seg, sid, ct)
    return seg, sid, hand


def liver_point(ct, labels, k=K):
    jj, ii = np.nonzero(labels[k] == 5)
    n = len(jj) // 2
    return sc.ras_of(ct, [ii[n], jj[n], k])


def test_declining_leaves_the_users_segment_unchanged_and_accepting_writes(ct, labels, logic):
    seg, sid, hand = users_segment(ct, labels, [K - 1, K, K + 1])
    before = sc.segment_array(seg, sid, ct)
    assert np.array_equal(before, hand)
    no = Answers(False)
    logic.confirmOverwrite = no
    with pytest.raises(OverwriteDeclined, match="hand-drawn"):
        logic.addPoints(ct, seg, sid, [liver_point(ct, labels)], [True], red_at(ct, [0, 0, K]), BASELINE)
    assert len(no.questions) == 1 and "hand-drawn" in no.questions[0] and f"slice {K}" in no.questions[0]
    assert np.array_equal(sc.segment_array(seg, sid, ct), before)  # exactly: nothing written
    c = logic.controllers[(ct.GetID(), seg.GetID())]
    assert c.prompts == [] and sid not in c.labels  # the prompt was taken back from the engine
    # a box, declined: nothing written either
    with pytest.raises(OverwriteDeclined):
        logic.addBox(ct, seg, sid, box_roi(ct, labels, 5, K), red_at(ct, [0, 0, K]), BASELINE)
    assert len(no.questions) == 2 and np.array_equal(sc.segment_array(seg, sid, ct), before)

    yes = Answers(True)
    logic.confirmOverwrite = yes
    u = logic.addPoints(ct, seg, sid, [liver_point(ct, labels)], [True], red_at(ct, [0, 0, K]), BASELINE)
    assert len(yes.questions) == 1
    after = sc.segment_array(seg, sid, ct)
    assert np.array_equal(after[K], u.mask_kji[0]) and not np.array_equal(after[K], before[K])
    assert np.array_equal(np.delete(after, K, axis=0), np.delete(before, K, axis=0))  # only the prompt's slice
    # the user said yes: the segment is SAM2's now, later prompts and propagation are not asked again
    logic.addPoints(ct, seg, sid, [liver_point(ct, labels, K + 1)], [True], red_at(ct, [0, 0, K + 1]), BASELINE)
    logic.startPropagation(ct, seg, BASELINE)
    logic.wait(60)
    assert logic.task.error is None and len(yes.questions) == 1
    assert np.array_equal(sc.segment_array(seg, sid, ct), session_mask(logic, ct, seg, sid))


def test_a_propagation_over_the_users_slices_is_asked_first(ct, labels, logic):
    seg, sid, hand = users_segment(ct, labels, [K + 4])
    answers = Answers(False)
    logic.confirmOverwrite = answers
    # the prompt's slice is empty in the segment: nothing of the user's changes, nothing to ask
    logic.addPoints(ct, seg, sid, [liver_point(ct, labels)], [True], red_at(ct, [0, 0, K]), BASELINE)
    assert answers.questions == []
    written = sc.segment_array(seg, sid, ct)
    with pytest.raises(OverwriteDeclined):
        logic.startPropagation(ct, seg, BASELINE)
    assert len(answers.questions) == 1 and f"slice {K + 4}" in answers.questions[0]
    assert logic.task is None and np.array_equal(sc.segment_array(seg, sid, ct), written)
    answers.yes = True
    logic.startPropagation(ct, seg, BASELINE)
    logic.wait(60)
    assert logic.task.error is None and len(answers.questions) == 2
    assert np.array_equal(sc.segment_array(seg, sid, ct), session_mask(logic, ct, seg, sid))


def test_no_segment_chosen_makes_a_new_segment_that_is_never_asked_about(ct, labels, logic):
    seg, sid, hand = users_segment(ct, labels, [K - 1, K, K + 1])
    answers = Answers(False)
    logic.confirmOverwrite = answers
    # a segmentation chosen, no segment: a new segment there, never its first segment
    same, new = logic.segmentFor(ct, seg, "")
    assert same is seg and new != sid and seg.GetSegmentation().GetNumberOfSegments() == 2
    logic.addPoints(ct, seg, new, [liver_point(ct, labels)], [True], red_at(ct, [0, 0, K]), BASELINE)
    logic.startPropagation(ct, seg, BASELINE)
    logic.wait(60)
    assert logic.task.error is None and answers.questions == []
    assert np.array_equal(sc.segment_array(seg, new, ct), session_mask(logic, ct, seg, new))
    # the user's segment is never written into; under the new segment it follows the Segment Editor's
    # overwrite setting (Slicer's default "overwrite all": it loses exactly those voxels, as when painting)
    written = sc.segment_array(seg, new, ct)
    assert (written & hand).any() and np.array_equal(sc.segment_array(seg, sid, ct), hand & ~written)
    # nothing chosen at all: a new segmentation and segment
    other, first = logic.segmentFor(ct, None, None)
    assert other is not seg and other.GetSegmentation().GetNumberOfSegments() == 1
    # a chosen segment is used as chosen (and guarded)
    assert logic.segmentFor(ct, seg, sid) == (seg, sid)


def test_the_segment_selector_starts_at_none():
    ui = ET.parse(sc.MODULE / "Resources" / "UI" / "SegmentWithSAM2.ui")
    selector = ui.find(".//widget[@name='segmentSelector']")
    assert selector is not None and selector.get("class") == "qMRMLSegmentSelectorWidget"
    none = selector.find("property[@name='noneEnabled']/bool")
    assert none is not None and none.text == "true"
