"""Issue 20, scribble/lasso and multimask in the module's widget: the .ui has the controls the widget code
uses, and a stroke drawn in a view becomes a prompt once its placement ends, after the event (the logic's
queue), on Slicer's real libraries (slicer-core) with a real engine server (baseline engine; SAM2 with
random weights for the candidate masks).

Placement ends as in Slicer: the markups widget's right-click or double-click (WidgetEventStopPlace)
switches the interaction node to ViewTransform, which invokes ``vtkMRMLInteractionNode::EndPlacementEvent``;
choosing another node to place changes the selection node's active place node.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import slicer_scene as sc  # noqa: E402  (puts the module folder on sys.path)
import slicer  # noqa: E402

from SegmentWithSAM2Lib.logic import PromptTarget, candidate_choices  # noqa: E402
from test_slicer_logic import BASELINE, SAM2, labels, link, logic, red_at, session_mask  # noqa: E402,F401
from test_slicer_logic import ct  # noqa: E402,F401
from test_slicer_widget_rules import SOURCE, TREE, UI, method  # noqa: E402
from test_slicer_overwrite import K, liver_point  # noqa: E402

from sam2volume import InputError  # noqa: E402
from sam2volume.session_base import MaskCandidates  # noqa: E402


def widget(name: str):
    w = UI.find(f".//widget[@name='{name}']")
    assert w is not None, name
    return w


# -------------------------------------------------------------------------------------------- the .ui
def test_the_stroke_tools_and_candidate_buttons_are_in_the_ui_with_the_class_and_properties_used():
    for name in ("scribblePlaceWidget", "lassoPlaceWidget"):
        assert widget(name).get("class") == "qSlicerMarkupsPlaceWidget"
        assert f"self.ui.{name}" in SOURCE
    for n in (1, 2, 3):
        w = widget(f"candidate{n}Button")
        assert w.get("class") == "QPushButton"
        props = {p.get("name"): p for p in w.findall("property")}
        assert props["checkable"].find("bool").text == "true" and props["enabled"].find("bool").text == "false"
        assert f"self.ui.candidate{n}Button" in SOURCE
    # the widget sets what it uses: text/enabled/checked of the buttons, persistent placing of curves
    update = method("SegmentWithSAM2Widget", "_updateCandidates")
    assert "button.text, button.enabled, button.checked = " in update and "candidate_choices(" in update
    setup = method("SegmentWithSAM2Widget", "setup")
    assert re.search(r"\(self\.ui\.scribblePlaceWidget, place\.ForcePlaceMultipleMarkups\)", setup)
    assert re.search(r"\(self\.ui\.lassoPlaceWidget, place\.ForcePlaceMultipleMarkups\)", setup)
    sync = method("SegmentWithSAM2Widget", "_syncPlaceWidgets")
    assert '(self.ui.scribblePlaceWidget, scribble)' in sync and '(self.ui.lassoPlaceWidget, "lasso")' in sync
    assert '"negative_scribble" if self._pointKind() == "negative" else "scribble"' in sync
    # the stroke tooltips say how a stroke ends; keys 4 and 5 start the stroke tools (test_slicer_widget_rules
    # checks every tooltip's key is the one bound)
    assert "key " not in widget("candidatesWidget").find("property[@name='toolTip']/string").text
    place = method("SegmentWithSAM2Widget", "place")
    assert '"scribble": self.ui.scribblePlaceWidget' in place and '"lasso": self.ui.lassoPlaceWidget' in place
    assert "right-click or double-click" in widget("lassoPlaceWidget").find("property[@name='toolTip']/string").text


def test_candidate_choices_label_enable_and_check_the_buttons():
    c = MaskCandidates(masks=np.zeros((3, 4, 4), bool), scores=np.array([0.91, 0.42, 0.775]), chosen=2)
    assert candidate_choices(c) == [("Mask 1 (91%)", True, False), ("Mask 2 (42%)", True, False), ("Mask 3 (78%)", True, True)]
    assert candidate_choices(None) == [("Mask 1", False, False), ("Mask 2", False, False), ("Mask 3", False, False)]


# ------------------------------------------------------------------------------------ stroke events
def placing_nodes():
    """The interaction and selection singletons, added as Slicer's application logic adds them."""
    scene = slicer.mrmlScene
    return scene.AddNode(slicer.vtkMRMLInteractionNode()), scene.AddNode(slicer.vtkMRMLSelectionNode())


def start_placing(interaction, selection, node):
    """What the place widget does: the node becomes the active place node, persistent place mode."""
    selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
    selection.SetReferenceActivePlaceNodeID(node.GetID())
    interaction.SetPlaceModePersistence(1)
    interaction.SetCurrentInteractionMode(interaction.Place)


def liver_ring(labels_kji, k, n=8, shrink=0.5):
    """Vertices (i, j, k) of a polygon inside the liver on slice k."""
    jj, ii = np.nonzero(labels_kji[k] == 5)
    ci, cj = ii.mean(), jj.mean()
    ri, rj = shrink * (ii.max() - ii.min()) / 2, shrink * (jj.max() - jj.min()) / 2
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.c_[ci + ri * np.cos(a), cj + rj * np.sin(a), np.full(n, k)]


def target(volume, seg, segmentId, settings=BASELINE):
    return lambda: PromptTarget(volume, seg, segmentId, settings)


def test_a_closed_curve_becomes_one_lasso_prompt_after_its_placement_ends(ct, labels, logic):
    interaction, selection = placing_nodes()
    seg, sid = logic.prepareSegmentation(ct)
    logic.observePromptNodes()
    lasso = logic.observedPromptNodes["lasso"]
    assert lasso.IsA("vtkMRMLMarkupsClosedCurveNode")
    start_placing(interaction, selection, lasso)
    for v in liver_ring(labels, K):
        lasso.AddControlPointWorld(*sc.ras_of(ct, v))  # each click of the persistent place mode
    assert logic.promptEvents == []  # still being placed: nothing queued yet
    told = []
    logic.onPromptEvent = lambda: told.append(1)
    interaction.SwitchToViewTransformMode()  # right-click: EndPlacementEvent
    assert [(e.what, e.kind, e.nodeID) for e in logic.promptEvents] == [("finished", "lasso", lasso.GetID())] and told == [1]
    assert logic.controllers == {} and not sc.segment_array(seg, sid, ct).any()  # nothing done inside the event
    views = [red_at(ct, [0, 0, K])]
    message = logic.handlePromptEvents(target(ct, seg, sid), lambda: views)
    assert message.startswith("lasso: mask shown")
    c = logic.controllers[(ct.GetID(), seg.GetID())]
    assert [p.kind for p in c.prompts] == ["lasso"] and lasso.GetLocked()
    np.testing.assert_allclose(c.prompts[0].ijk, liver_ring(labels, K), atol=1e-6)
    got = sc.segment_array(seg, sid, ct)
    assert got[K].any() and np.array_equal(got, session_mask(logic, ct, seg, sid))
    # the next lasso goes into a new node; ending place mode again queues nothing (the used one is locked)
    assert logic.observedPromptNodes["lasso"] is not lasso
    start_placing(interaction, selection, logic.observedPromptNodes["lasso"])
    interaction.SwitchToViewTransformMode()
    assert logic.promptEvents == []
    # the event queued twice (end of placement, then another node chosen) is still one prompt
    second = logic.observedPromptNodes["lasso"]
    start_placing(interaction, selection, second)
    for v in liver_ring(labels, K + 1):
        second.AddControlPointWorld(*sc.ras_of(ct, v))
    interaction.SwitchToViewTransformMode()
    selection.SetReferenceActivePlaceNodeID(logic.observedPromptNodes["positive"].GetID())
    assert len(logic.promptEvents) == 1
    logic.handlePromptEvents(target(ct, seg, sid), lambda: [red_at(ct, [0, 0, K + 1])])
    assert [p.kind for p in c.prompts] == ["lasso", "lasso"]


def test_a_scribble_ends_when_another_node_is_placed_and_takes_the_point_tools_sign(ct, labels, logic):
    interaction, selection = placing_nodes()
    seg, sid = logic.prepareSegmentation(ct)
    logic.observePromptNodes()
    views = [red_at(ct, [0, 0, K])]
    positive = logic.observedPromptNodes["positive"]
    positive.AddControlPointWorld(*liver_point(ct, labels))
    logic.handlePromptEvents(target(ct, seg, sid), lambda: views)
    negative = logic.observedPromptNodes["negative_scribble"]
    start_placing(interaction, selection, negative)
    jj, ii = np.nonzero(labels[K] == 5)
    for i in (ii.min() + 2, ii.min() + 6, ii.min() + 10):  # along the liver's edge
        negative.AddControlPointWorld(*sc.ras_of(ct, [i, jj.max() - 2, K]))
    assert logic.promptEvents == []
    selection.SetReferenceActivePlaceNodeID(positive.GetID())  # the point tool chosen: the scribble is done
    assert [(e.what, e.kind) for e in logic.promptEvents] == [("finished", "negative_scribble")]
    logic.handlePromptEvents(target(ct, seg, sid), lambda: views)
    c = logic.controllers[(ct.GetID(), seg.GetID())]
    assert [p.kind for p in c.prompts] == ["points", "scribble"] and c.prompts[1].labels == [0]
    assert np.array_equal(sc.segment_array(seg, sid, ct), session_mask(logic, ct, seg, sid))


def test_a_refused_stroke_is_cleared_and_the_next_one_goes_into_the_same_node(ct, labels, logic):
    interaction, selection = placing_nodes()
    seg, sid = logic.prepareSegmentation(ct)
    logic.observePromptNodes()
    scribble = logic.observedPromptNodes["scribble"]
    start_placing(interaction, selection, scribble)
    scribble.AddControlPointWorld(*sc.ras_of(ct, [60, 50, K]))
    scribble.AddControlPointWorld(*sc.ras_of(ct, [70, 50, K + 1]))  # across two slices
    interaction.SwitchToViewTransformMode()
    with pytest.raises(InputError, match="slice spacings"):
        logic.handlePromptEvents(target(ct, seg, sid), lambda: [red_at(ct, [0, 0, K])])
    assert scribble.GetNumberOfControlPoints() == 0 and not scribble.GetLocked()
    assert logic.observedPromptNodes["scribble"] is scribble and logic.promptEvents == []
    assert not sc.segment_array(seg, sid, ct).any()


def test_leaving_the_module_stops_placing_a_stroke_and_queues_nothing_after(ct, labels, logic):
    interaction, selection = placing_nodes()
    logic.observePromptNodes()
    lasso = logic.observedPromptNodes["lasso"]
    start_placing(interaction, selection, lasso)
    lasso.AddControlPointWorld(*sc.ras_of(ct, [60, 50, K]))
    logic.unobservePromptNodes()  # exit()
    logic.stopPlacing()
    assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform
    assert logic.promptEvents == [] and not interaction.HasObserver(slicer.vtkMRMLInteractionNode.EndPlacementEvent)
    # the unfinished stroke is dropped: back in the module, ending another placement sends nothing
    assert lasso.GetNumberOfControlPoints() == 0
    logic.observePromptNodes()  # enter()
    start_placing(interaction, selection, logic.observedPromptNodes["positive"])
    interaction.SwitchToViewTransformMode()
    assert logic.promptEvents == []


# ------------------------------------------------------------------------------- candidate masks
@pytest.mark.sam2
def test_a_single_clicks_candidates_are_offered_and_one_chosen_is_written(ct, labels, logic):
    seg, sid = logic.prepareSegmentation(ct)
    assert logic.maskCandidates(ct, seg, sid) is None
    logic.addPoints(ct, seg, sid, [liver_point(ct, labels)], [True], red_at(ct, [0, 0, K]), SAM2)
    c = logic.maskCandidates(ct, seg, sid)
    choices = candidate_choices(c)
    assert [enabled for _, enabled, _ in choices] == [True] * 3 and [checked for *_, checked in choices].index(True) == c.chosen
    k = next(i for i in range(3) if i != c.chosen)
    logic.chooseMask(ct, seg, sid, k)
    assert logic.maskCandidates(ct, seg, sid).chosen == k
    got = sc.segment_array(seg, sid, ct)
    assert np.array_equal(got, session_mask(logic, ct, seg, sid)) and got[K].sum() == c.masks[k].sum()
