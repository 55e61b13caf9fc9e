"""Issue 20 item 8: the rules the module's widget follows, tested where the code is not Qt.

On Slicer's real libraries (slicer-core) with a real engine server (baseline engine): prompts placed
in markups are handled after the markups event, not inside it (8c); leaving the module removes the
observers and stops placing (8d); the slice range is the volume's own slices (8f); the default input
is never a labelmap (8g). From the module's own files: Reload drops the module's packages (8e), the
install question is remembered in the application settings (8a), each shortcut key is the one its
tooltip names (8b).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import slicer_scene as sc  # noqa: E402  (puts the module folder on sys.path)
import slicer  # noqa: E402
import vtk  # noqa: E402

from SegmentWithSAM2Lib import dependencies  # noqa: E402
from SegmentWithSAM2Lib.logic import (  # noqa: E402
    OverwriteDeclined, PromptTarget, default_input_volume, reloadable_modules)
from test_slicer_logic import BASELINE, labels, link, logic, red_at, session_mask  # noqa: E402,F401
from test_slicer_logic import ct  # noqa: E402,F401
from test_slicer_overwrite import Answers, K, liver_point, users_segment  # noqa: E402

from sam2volume import InputError  # noqa: E402

UI = ET.parse(sc.MODULE / "Resources" / "UI" / "SegmentWithSAM2.ui")
SOURCE = (sc.MODULE / "SegmentWithSAM2.py").read_text()
TREE = ast.parse(SOURCE)
MARKUPS = slicer.vtkMRMLMarkupsNode


def method(cls: str, name: str) -> str:
    c = next(n for n in TREE.body if isinstance(n, ast.ClassDef) and n.name == cls)
    f = next(n for n in c.body if isinstance(n, ast.FunctionDef) and n.name == name)
    return ast.get_source_segment(SOURCE, f)


def tooltip(name: str) -> str:
    w = UI.find(f".//widget[@name='{name}']")
    assert w is not None, name
    return w.find("property[@name='toolTip']/string").text


def target(volume, seg, segmentId):
    return lambda: PromptTarget(volume, seg, segmentId, BASELINE)


# ------------------------------------------------------------------------- 8c: out of the event
def test_a_placed_point_is_handled_after_the_markups_event_and_the_question_asked_there(ct, labels, logic):
    seg, sid, hand = users_segment(ct, labels, [K])  # the user's own content on slice K: SAM2 must ask
    answers = Answers(False)
    logic.confirmOverwrite = answers
    told = []
    logic.onPromptEvent = lambda: told.append(len(logic.promptEvents))  # the widget: QTimer.singleShot(0, ...)
    logic.observePromptNodes()
    positive = logic.observedPromptNodes["positive"]
    views = [red_at(ct, [0, 0, K])]
    positive.AddControlPointWorld(*liver_point(ct, labels))  # runs every observer of the event, then returns
    # inside the event nothing was sent and nothing asked: only queued
    assert answers.questions == [] and logic.controllers == {} and told == [1]
    assert [(e.what, e.kind) for e in logic.promptEvents] == [("placed", "positive")]
    assert np.array_equal(sc.segment_array(seg, sid, ct), hand)
    # handled afterwards: asked there; declined, the point is removed and the segment unchanged
    with pytest.raises(OverwriteDeclined):
        logic.handlePromptEvents(target(ct, seg, sid), lambda: views)
    assert len(answers.questions) == 1 and positive.GetNumberOfControlPoints() == 0
    assert np.array_equal(sc.segment_array(seg, sid, ct), hand)
    logic.handlePromptEvents(target(ct, seg, sid), lambda: views)  # the removal it caused: nothing to do
    assert logic.promptEvents == []
    # accepted: the mask is written on slice K
    answers.yes = True
    positive.AddControlPointWorld(*liver_point(ct, labels))
    assert len(answers.questions) == 1  # not asked inside the event
    message = logic.handlePromptEvents(target(ct, seg, sid), lambda: views)
    assert message.startswith("positive: mask shown") and len(answers.questions) == 2
    assert np.array_equal(sc.segment_array(seg, sid, ct), session_mask(logic, ct, seg, sid))
    assert positive.GetNthControlPointDescription(0) == sid


def test_a_call_from_the_questions_event_loop_waits_for_the_one_running(ct, labels, logic):
    """While the overwrite question is open, Qt's timers still fire: a second call returns at once and
    the point placed meanwhile is handled by the running call, after the answer."""
    seg, sid, hand = users_segment(ct, labels, [K])
    views = [red_at(ct, [0, 0, K])]
    logic.observePromptNodes()
    positive = logic.observedPromptNodes["positive"]
    nested = []

    def answer(question):
        positive.AddControlPointWorld(*liver_point(ct, labels))  # placed while the dialog is open
        nested.append((logic.handlingPrompts, logic.handlePromptEvents(target(ct, seg, sid), lambda: views), len(logic.promptEvents)))
        return True

    logic.confirmOverwrite = answer
    positive.AddControlPointWorld(*liver_point(ct, labels))
    logic.handlePromptEvents(target(ct, seg, sid), lambda: views)
    assert nested == [(True, "", 1)] and logic.promptEvents == [] and not logic.handlingPrompts
    c = logic.controllers[(ct.GetID(), seg.GetID())]
    assert len(c.prompts) == 2 and positive.GetNumberOfControlPoints() == 2


def test_moving_and_deleting_a_point_are_handled_after_their_events_too(ct, labels, logic):
    seg, sid = logic.prepareSegmentation(ct)
    logic.observePromptNodes()
    positive = logic.observedPromptNodes["positive"]
    views = [red_at(ct, [0, 0, K]), red_at(ct, [0, 0, K + 2])]
    positive.AddControlPointWorld(*liver_point(ct, labels))
    logic.handlePromptEvents(target(ct, seg, sid), lambda: views)
    c = logic.controllers[(ct.GetID(), seg.GetID())]
    assert c.prompts[0].slice is not None and sc.segment_array(seg, sid, ct)[K].any()
    # dragged to slice K + 2 (the markups widget ends a drag with PointEndInteractionEvent)
    positive.SetNthControlPointPositionWorld(0, *liver_point(ct, labels, K + 2))
    positive.InvokeEvent(MARKUPS.PointEndInteractionEvent)
    assert sc.segment_array(seg, sid, ct)[K].any()  # not inside the event
    logic.handlePromptEvents(target(ct, seg, sid), lambda: views)
    got = sc.segment_array(seg, sid, ct)
    assert not got[K].any() and got[K + 2].any()
    positive.RemoveNthControlPoint(0)
    assert sc.segment_array(seg, sid, ct)[K + 2].any() and logic.promptEvents[-1].what == "removed"  # not inside the event
    logic.handlePromptEvents(target(ct, seg, sid), lambda: views)
    assert c.prompts == [] and not sc.segment_array(seg, sid, ct).any()


def test_a_box_whose_two_clicks_were_queued_is_one_prompt(ct, labels, logic):
    from test_slicer_logic import organ_box

    seg, sid = logic.prepareSegmentation(ct)
    logic.observePromptNodes()
    roi = logic.observedPromptNodes["box"]
    (i0, j0), (i1, j1) = organ_box(labels, 5, K)
    roi.AddControlPointWorld(*sc.ras_of(ct, [i0, j0, K]))
    roi.AddControlPointWorld(*sc.ras_of(ct, [i1, j1, K]))
    assert logic.controllers == {}
    logic.handlePromptEvents(target(ct, seg, sid), lambda: [red_at(ct, [0, 0, K])])
    c = logic.controllers[(ct.GetID(), seg.GetID())]
    assert [p.kind for p in c.prompts] == ["box"] and roi.GetLocked()
    assert logic.observedPromptNodes["box"] is not roi  # the next box goes into a new node
    assert sc.segment_array(seg, sid, ct)[K].any()


# --------------------------------------------------------------------- 8d: leaving the module
def test_leaving_removes_the_observers_and_stops_placing_the_modules_prompts(ct, logic):
    scene = slicer.mrmlScene
    interaction = scene.AddNode(slicer.vtkMRMLInteractionNode())  # as Slicer's application logic adds them
    selection = scene.AddNode(slicer.vtkMRMLSelectionNode())
    assert interaction.GetID() == "vtkMRMLInteractionNodeSingleton" and selection.GetID() == "vtkMRMLSelectionNodeSingleton"
    nodes = {kind: logic.prompts.get(kind) for kind in ("positive", "negative", "box")}
    events = {"positive": [MARKUPS.PointPositionDefinedEvent, MARKUPS.PointEndInteractionEvent, MARKUPS.PointRemovedEvent],
              "negative": [MARKUPS.PointPositionDefinedEvent, MARKUPS.PointEndInteractionEvent, MARKUPS.PointRemovedEvent],
              "box": [MARKUPS.PointPositionDefinedEvent]}
    assert not any(nodes[k].HasObserver(e) for k in events for e in events[k])
    logic.observePromptNodes()  # enter()
    assert all(nodes[k].HasObserver(e) for k in events for e in events[k])
    selection.SetReferenceActivePlaceNodeID(nodes["negative"].GetID())
    interaction.SetCurrentInteractionMode(interaction.Place)
    logic.unobservePromptNodes()  # exit()
    logic.stopPlacing()
    assert not any(nodes[k].HasObserver(e) for k in events for e in events[k])
    assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform
    nodes["positive"].AddControlPointWorld(0.0, 0.0, 0.0)
    assert logic.promptEvents == []  # nothing is queued once the module is left
    # another module's placing is left alone
    other = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "the user's own")
    selection.SetReferenceActivePlaceNodeID(other.GetID())
    interaction.SetCurrentInteractionMode(interaction.Place)
    logic.stopPlacing()
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    # enter() again restores the observers
    logic.observePromptNodes()
    assert all(nodes[k].HasObserver(e) for k in events for e in events[k])
    logic.unobservePromptNodes()


def test_the_widget_wires_enter_and_exit_to_the_logic():
    enter, exit_ = method("SegmentWithSAM2Widget", "enter"), method("SegmentWithSAM2Widget", "exit")
    assert "self.logic.observePromptNodes()" in enter
    assert "self.logic.unobservePromptNodes()" in exit_ and "self.logic.stopPlacing()" in exit_
    # after Reload Slicer calls setup() on the new widget of an entered module, not enter()
    setup = method("SegmentWithSAM2Widget", "setup")
    assert re.search(r"if self\.parent\.isEntered:.*\n\s+self\.logic\.observePromptNodes\(\)", setup)
    # no markups observer of the widget's own: the logic's queue is the only one
    assert "PointPositionDefinedEvent" not in SOURCE and "singleShot(0, self.onPromptEvents)" in SOURCE


# ------------------------------------------------------------------------------ 8f: slice range
def test_the_slice_range_is_the_volumes_slices_along_the_prompts_axis(ct, labels, logic):
    seg, sid = logic.prepareSegmentation(ct)
    assert logic.sliceRange(ct, seg) is None  # no prompt, no axis yet
    from test_slicer_logic import box_roi

    logic.addBox(ct, seg, sid, box_roi(ct, labels, 5, K), red_at(ct, [0, 0, K]), BASELINE)
    dims = ct.GetImageData().GetDimensions()
    assert logic.sliceRange(ct, seg) == ("axial", 0, dims[2] - 1)
    with pytest.raises(InputError, match=rf"slice range 0\.\.{dims[2]} .* 0\.\.{dims[2] - 1}"):
        logic.startPropagation(ct, seg, BASELINE, volumeSliceRange=(0, dims[2]))
    logic.startPropagation(ct, seg, BASELINE, volumeSliceRange=(K - 3, K + 3))
    logic.wait(60)
    got = sc.segment_array(seg, sid, ct)
    on = np.flatnonzero(got.any(axis=(1, 2)))
    assert logic.task.error is None and on.min() >= K - 3 and on.max() <= K + 3 and len(on) > 1
    assert np.array_equal(got, session_mask(logic, ct, seg, sid))


def test_the_slice_range_widget_has_no_fixed_maximum():
    w = UI.find(".//widget[@name='sliceRangeWidget']")
    assert w.find("property[@name='maximum']/double").text == "0"  # set from the volume at run time
    assert "volumeSliceRange=sliceRange" in method("SegmentWithSAM2Widget", "onPropagate")


# ---------------------------------------------------------------------------- 8g: default input
def test_the_default_input_is_a_scalar_volume_never_a_labelmap(totalseg):
    scene = sc.fresh_scene()
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")  # first in the scene's order
    image = vtk.vtkImageData()
    image.SetDimensions(4, 4, 4)
    image.AllocateScalars(3, 1)
    label.SetAndObserveImageData(image)
    ct = sc.load_volume(totalseg / "example_ct_sm.nii.gz", "ct")
    assert scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode") is label  # what the widget took before
    assert default_input_volume(scene) is ct
    scene.RemoveNode(ct)
    assert default_input_volume(scene) is None  # only a labelmap: no default
    init = method("SegmentWithSAM2Widget", "initializeParameterNode")
    assert "default_input_volume(" in init and "GetFirstNodeByClass" not in init


def test_the_input_selector_lists_scalar_volumes_only():
    w = UI.find(".//widget[@name='inputVolumeSelector']")
    types = [s.text for s in w.findall("property[@name='nodeTypes']/stringlist/string")]
    assert types == ["vtkMRMLScalarVolumeNode"]
    # no child classes: vtkMRMLLabelMapVolumeNode is one (qMRMLNodeComboBox showChildNodeTypes)
    assert w.find("property[@name='showChildNodeTypes']/bool").text == "false"
    assert slicer.vtkMRMLLabelMapVolumeNode().IsA("vtkMRMLScalarVolumeNode")


# ----------------------------------------------------------------------------------- 8e: reload
def test_reload_drops_the_modules_packages_and_only_them():
    loaded = ["SegmentWithSAM2", "SegmentWithSAM2Lib", "SegmentWithSAM2Lib.logic", "sam2volume",
              "sam2volume.io.readers", "sam2volume_extra", "SegmentWithSAM2LibX", "numpy", "slicer"]
    assert reloadable_modules(loaded) == ["SegmentWithSAM2Lib", "SegmentWithSAM2Lib.logic", "sam2volume",
                                          "sam2volume.io.readers"]
    reload = method("SegmentWithSAM2Widget", "onReload")
    assert "reloadable_modules(" in reload and "del sys.modules[name]" in reload and "super().onReload()" in reload


def test_after_dropping_them_an_import_reads_the_files_again(tmp_path):
    """In a fresh Python (this one's modules stay as they are): dropped modules are executed again."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import SegmentWithSAM2Lib.logic as old\n"
        "from SegmentWithSAM2Lib.logic import reloadable_modules\n"
        "import sam2volume; old_sam = sam2volume\n"
        "for n in reloadable_modules(list(sys.modules)): del sys.modules[n]\n"
        "import SegmentWithSAM2Lib.logic as new; import sam2volume\n"
        "assert new is not old and new.SegmentWithSAM2Logic is not old.SegmentWithSAM2Logic\n"
        "assert sam2volume is not old_sam and new.InputError is sam2volume.InputError\n"
        "print('reimported')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(sc.MODULE)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "reimported", out.stderr[-2000:]


# ------------------------------------------------------------------------- 8a: install question
class SettingsStore:
    """Test double for Slicer's application settings (QSettings: value, setValue, remove), in memory."""

    def __init__(self):
        self.values: dict[str, object] = {}

    def value(self, key, default=None):
        return self.values.get(key, default)

    def setValue(self, key, value):
        self.values[key] = value

    def remove(self, key):
        self.values.pop(key, None)


def test_a_declined_install_is_not_asked_again_on_entry_until_something_changes():
    fastapi = next(p for p in dependencies.SERVER if p.module == "fastapi")
    scipy = next(p for p in dependencies.SERVER if p.module == "scipy")
    found = [(fastapi, "missing")]
    qs = SettingsStore()
    assert dependencies.ask_on_entry(qs, "local", "baseline", found)
    dependencies.remember_declined(qs, "local", "baseline", found)
    assert not dependencies.ask_on_entry(qs, "local", "baseline", found)  # entering again: not asked
    assert dependencies.ask_on_entry(qs, "local", "sam2", found)  # another engine: asked
    assert dependencies.ask_on_entry(qs, "local", "baseline", found + [(scipy, "version 1.0")])  # more missing: asked
    assert not dependencies.ask_on_entry(qs, "local", "baseline", [])  # nothing missing: nothing to ask
    dependencies.forget_declined(qs)
    assert dependencies.ask_on_entry(qs, "local", "baseline", found)


def test_the_widget_keeps_the_answer_in_the_application_settings_not_per_entry():
    check = method("SegmentWithSAM2Widget", "checkDependencies")
    assert "slicer.app.settings()" in check and "ask_on_entry(" in check and "remember_declined(" in check
    assert "checkDependencies(onEntry=True)" in method("SegmentWithSAM2Widget", "enter")
    assert "_checked" not in method("SegmentWithSAM2Widget", "exit")  # leaving the module forgets nothing


def test_after_pip_the_import_caches_are_invalidated():
    """Else this Python may not find what pip just installed (issue 20 item 8)."""
    import inspect

    code = inspect.getsource(dependencies.install)
    assert code.index("slicer.util.pip_install(") < code.index("importlib.invalidate_caches()") < code.index("problems(packages)")


# ------------------------------------------------------------------------------ 8b: shortcut keys
def shortcuts() -> dict[str, str]:
    from SegmentWithSAM2Lib.logic import SHORTCUTS  # the one table; the widget binds it (below)

    assert "from SegmentWithSAM2Lib.logic import SHORTCUTS" in SOURCE and "for key, name in SHORTCUTS.items():" in SOURCE
    return SHORTCUTS


# the widget whose tooltip documents each action's key
TOOLTIP_OF = {"positive": "pointPlaceWidget", "negative": "pointPlaceWidget", "toggle": "pointSignButton",
              "box": "boxPlaceWidget", "scribble": "scribblePlaceWidget", "lasso": "lassoPlaceWidget",
              "propagate": "propagateButton", "undo": "undoPromptButton"}
WORDS = {"positive": "positive", "negative": "negative", "toggle": "toggles", "box": "box", "scribble": "scribble",
         "lasso": "lasso", "propagate": "propagate", "undo": "undo"}


def test_every_tooltip_names_the_key_that_is_bound():
    keys = shortcuts()
    assert set(keys.values()) == set(TOOLTIP_OF)
    for key, action in keys.items():
        assert re.search(rf"\bkey {re.escape(key)}\b", tooltip(TOOLTIP_OF[action])), (key, action)
    named = set()
    for w in UI.iter("widget"):
        tip = w.find("property[@name='toolTip']/string")
        text = tip.text if tip is not None else ""
        assert "Ctrl+" not in text, w.get("name")  # no key is bound with Ctrl
        for key in re.findall(r"\bkey (\w+)\b", text):
            named.add(key)
            assert key in keys, (w.get("name"), key)  # a named key is a bound key
    assert named == set(keys)
    # the module's help text names each key with its action
    module = method("SegmentWithSAM2", "__init__")
    for key, action in keys.items():
        assert re.search(rf"\b{key} [\w ']*{WORDS[action]}", module, re.I), (key, action)


def test_the_shortcuts_work_anywhere_in_the_main_window_while_the_module_is_shown():
    code = method("SegmentWithSAM2Widget", "_setShortcuts")
    assert "slicer.util.mainWindow()" in code and "qt.Qt.WindowShortcut" in code and "QShortcut(qt.QKeySequence(key), window)" in code
    assert "WidgetWithChildrenShortcut" not in code  # was: only with the keyboard focus in a slice view
    assert "self._setShortcuts(True)" in method("SegmentWithSAM2Widget", "enter")
    assert "self._setShortcuts(False)" in method("SegmentWithSAM2Widget", "exit")
