"""The module's GUI-free logic on Slicer's MRML libraries (imports slicer and vtk, never qt).

Everything runs on the caller's (GUI) thread and every call is short: a prompt is one request to the
engine server; a propagation is a job on the server that :meth:`SegmentWithSAM2Logic.poll` (a 50 ms
timer in the widget) asks for finished slices, writing each batch as it arrives and the exact final
result at the end. There is no Python worker thread (Slicer's GUI thread holds the GIL while idle).
Tested on PyPI's ``slicer-core`` (Slicer's real scene, nodes and segmentation logic).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np
import slicer
import vtk

from sam2volume import InputError
from sam2volume.errors import CancelledError

from .controller import SegmentationController, SliceUpdate, merge_runs
from .engine_link import EngineLink, Settings
from .geometry import runs_of
from .initializer import Initializer
from .writeback import overwritable_segments, overwrite_mode, read_slab, write_slab

log = logging.getLogger("SegmentWithSAM2")

PROMPT_ATTRIBUTE = "SegmentWithSAM2.prompt"
SEGMENT_ATTRIBUTE = "SegmentWithSAM2.segment"
PROMPT_KINDS = {"positive": ("vtkMRMLMarkupsFiducialNode", "SAM2 +", (0.2, 0.9, 0.2)),
                "negative": ("vtkMRMLMarkupsFiducialNode", "SAM2 -", (0.9, 0.2, 0.2)),
                "box": ("vtkMRMLMarkupsROINode", "SAM2 box", (0.9, 0.9, 0.2))}
# scribbles and lassos: one curve node per stroke, sent once it is finished (addScribble, addLasso)
STROKE_KINDS = {"scribble": ("vtkMRMLMarkupsCurveNode", "SAM2 scribble +", (0.2, 0.9, 0.2)),
                "negative_scribble": ("vtkMRMLMarkupsCurveNode", "SAM2 scribble -", (0.9, 0.2, 0.2)),
                "lasso": ("vtkMRMLMarkupsClosedCurveNode", "SAM2 lasso", (0.9, 0.9, 0.2))}
NODE_KINDS = {**PROMPT_KINDS, **STROKE_KINDS}
SINGLE_USE = ("box", *STROKE_KINDS)  # one node per prompt, locked once used
# The keys of the module's actions, one table for both GUIs (the Slicer widget's QShortcuts, the web page's keydown)
SHORTCUTS = {"1": "positive", "2": "negative", "3": "box", "4": "scribble", "5": "lasso", "T": "toggle", "P": "propagate",
             "U": "undo"}
GUI_POLL_TIMEOUT_S = 1.0  # the longest one poll or cancel of a propagation blocks the GUI thread
OUT_OF_MEMORY_ADVICE = ("Choose a smaller model (Model), limit the slices (Only within slices), "
                        "or use a remote GPU server (Mode: remote)")


def matrix(getter) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    getter(m)
    return slicer.util.arrayFromVTKMatrix(m)


def _digest(array: np.ndarray) -> str:
    import hashlib

    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).hexdigest() + str(array.shape)


class OverwriteDeclined(InputError):
    """The user declined writing over a segment's existing content: nothing was written."""


class EngineStarting(InputError):
    """A prompt refused while Initialize starts the engine in the background: nothing was sent."""


def describe_error(exc: BaseException) -> str:
    """The message a user sees: the error's own, with advice naming options the module shows."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return f"out of memory ({text}). {OUT_OF_MEMORY_ADVICE}."
    return text


def world_to_local(node) -> np.ndarray | None:
    """World RAS -> the node's local RAS (through its parent transforms), or None without one."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return None
    m = vtk.vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(None, parent, m):
        raise InputError(f"{node.GetName()} is under a non-linear transform; harden or remove it before segmenting")
    return slicer.util.arrayFromVTKMatrix(m)


def slice_node_for_point(point_ras, slice_nodes) -> Any:
    """The slice node whose plane is nearest the point (the controller then refuses points off that plane)."""
    best, best_distance = None, None
    for node in slice_nodes:
        m = slicer.util.arrayFromVTKMatrix(node.GetSliceToRAS())
        normal = m[:3, 2] / np.linalg.norm(m[:3, 2])
        distance = abs(float(np.dot(np.asarray(point_ras, float) - m[:3, 3], normal)))
        if best_distance is None or distance < best_distance - 1e-6:
            best, best_distance = node, distance
    if best is None:
        raise InputError("no slice view is shown; place prompts in the red, yellow or green view")
    return best


def box_corners(roi) -> np.ndarray | None:
    """The eight corners (world RAS, shape (8, 3)) of a box ROI once it is complete, else None.

    Placing a box takes two clicks: after the first, the ROI has one defined point, needs two and
    has no size; after the second, Slicer replaces the points by the centre and needs one
    (``vtkMRMLMarkupsROINode::UpdateBoxROIFromControlPoints``). The corners follow the ROI's own
    axes (its ObjectToWorld matrix: a rotated ROI, a parent transform), so that the box sent is the
    box drawn, in whichever frame the volume's slices lie."""
    if roi.GetNumberOfDefinedControlPoints() < 1 or roi.GetRequiredNumberOfControlPoints() != 1:
        return None
    size = np.asarray(roi.GetSize(), dtype=np.float64)  # along the ROI's own axes
    if sorted(size)[1] <= 0:  # fewer than two in-plane sides
        return None
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    corners_object = np.c_[signs * size / 2, np.ones(8)]
    return (corners_object @ slicer.util.arrayFromVTKMatrix(roi.GetObjectToWorldMatrix()).T)[:, :3]


def curve_points(curve) -> np.ndarray:
    """The defined control points (world RAS, (N, 3)) of a curve or closed curve: the vertices of the
    scribble or lasso sent (the module's curves are linear, so the line drawn joins exactly these)."""
    out = []
    for i in range(curve.GetNumberOfControlPoints()):
        if curve.GetNthControlPointPositionStatus(i) == curve.PositionDefined:
            p = [0.0] * 3
            curve.GetNthControlPointPositionWorld(i, p)
            out.append(p)
    return np.array(out, dtype=np.float64).reshape(-1, 3)


EDITOR_SINGLETON = "SegmentWithSAM2"  # the singleton tag of the module's embedded Segment Editor's node


def editor_node(scene):
    """The module's own Segment Editor node (its embedded ``qMRMLSegmentEditorWidget``'s), made as Slicer's
    Segment Editor module makes its one: a singleton created from the scene's default node (so it starts with
    the application's overwrite setting). Not Slicer's own node: two editor widgets on one node would both
    act on its active effect."""
    node = scene.GetSingletonNode(EDITOR_SINGLETON, "vtkMRMLSegmentEditorNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
        node.UnRegister(None)
        node.SetSingletonTag(EDITOR_SINGLETON)
        node = scene.AddNode(node)
    return node


def segment_from_editor(editorSegmentId: str, moduleSegmentId: str, syncing: bool) -> str | None:
    """The segment the module takes when its embedded editor's current segment changes, or None to keep its
    own. Only a choice the user made in the editor counts: not while the module itself hands the editor a
    segmentation (the editor then selects that segmentation's first segment by itself, and the module's
    "no segment" must stay a new segment, never a segment nobody chose), and never "no segment"."""
    if syncing or not editorSegmentId or editorSegmentId == moduleSegmentId:
        return None
    return editorSegmentId


CANDIDATE_BUTTONS = 3  # the widget's buttons for SAM2's candidate masks of a single click


def candidate_choices(candidates, n: int = CANDIDATE_BUTTONS) -> list[tuple[str, bool, bool]]:
    """(text, enabled, checked) of each of the widget's ``n`` candidate buttons for ``candidates`` (the
    ``MaskCandidates`` of :meth:`SegmentWithSAM2Logic.maskCandidates`, or None: all disabled)."""
    out = []
    for i in range(n):
        if candidates is None or i >= len(candidates.scores):
            out.append((f"Mask {i + 1}", False, False))
        else:
            out.append((f"Mask {i + 1} ({100 * float(candidates.scores[i]):.0f}%)", True, i == int(candidates.chosen)))
    return out


RELOADED_PACKAGES = ("SegmentWithSAM2Lib", "sam2volume")


def reloadable_modules(loaded: Iterable[str]) -> list[str]:
    """The imported modules that Reload must drop from ``sys.modules`` so that the module's next import
    reads them from disk again: this package and sam2volume with all their submodules (Slicer's
    ``reloadScriptedModule`` re-executes only the module's own file)."""
    return sorted(n for n in loaded if any(n == p or n.startswith(p + ".") for p in RELOADED_PACKAGES))


def default_input_volume(scene):
    """The volume the module starts with: the first one its input selector lists (class
    vtkMRMLScalarVolumeNode itself, so never a labelmap or another child class), with image data."""
    nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetClassName() == "vtkMRMLScalarVolumeNode" and not node.GetHideFromEditors() and node.GetImageData() is not None:
            return node
    return None


class PromptEvent(NamedTuple):
    """A markups event on a prompt node, queued by its observer and handled later, outside the event."""

    what: str  # "placed", "moved", "removed", or "finished" (a stroke no longer being placed)
    kind: str  # "positive", "negative", "box", or a stroke: "scribble", "negative_scribble", "lasso"
    nodeID: str
    pointID: str = ""  # the placed point's control point ID (points only)


class PromptTarget(NamedTuple):
    """Where a placed prompt goes, as the widget shows it when the prompt is handled."""

    volumeNode: Any
    segmentationNode: Any
    segmentId: str
    settings: Settings


class PromptNodes:
    """The module's markups: one fiducial list for positive and one for negative points, box ROIs.

    They are found again (by attribute) rather than re-created on every reload or scene, hidden from
    node selectors and editors, and never saved with the scene."""

    def __init__(self, scene=None):
        self.scene = scene or slicer.mrmlScene

    def find(self, kind: str) -> list:
        col = self.scene.GetNodesByClass(NODE_KINDS[kind][0])
        nodes = [col.GetItemAsObject(i) for i in range(col.GetNumberOfItems())]
        return [n for n in nodes if n.GetAttribute(PROMPT_ATTRIBUTE) == kind]

    def get(self, kind: str):
        """The current node of this kind (a box, scribble or lasso: the one not used yet), created when missing."""
        nodes = self.find(kind)
        if kind in SINGLE_USE:
            nodes = [n for n in nodes if not n.GetLocked()]
        if nodes:
            return nodes[-1]
        cls, name, color = NODE_KINDS[kind]
        node = self.scene.AddNewNodeByClass(cls, self.scene.GenerateUniqueName(name))
        node.SetAttribute(PROMPT_ATTRIBUTE, kind)
        node.SetHideFromEditors(True)
        node.SetSaveWithScene(False)
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetSaveWithScene(False)
        display.SetSelectedColor(color)
        display.SetColor(color)
        if hasattr(node, "SetCurveTypeToLinear"):  # a scribble or lasso: straight lines between its points, as sent
            node.SetCurveTypeToLinear()
        return node

    def retire_box(self, roi, segmentId: str) -> None:
        """A used box (scribble, lasso) stays visible (locked) until Reset; the next one is a new node."""
        roi.SetLocked(True)
        roi.SetAttribute(SEGMENT_ATTRIBUTE, segmentId)

    def show_segment(self, segmentId: str | None) -> None:
        """Show only the prompts of one segment (all with None): points carry their segment in their
        description, used boxes in an attribute."""
        for kind in ("positive", "negative"):
            for node in self.find(kind):
                for i in range(node.GetNumberOfControlPoints()):
                    node.SetNthControlPointVisibility(i, segmentId is None or node.GetNthControlPointDescription(i) == segmentId)
        for roi in [n for kind in SINGLE_USE for n in self.find(kind)]:
            owner = roi.GetAttribute(SEGMENT_ATTRIBUTE)
            if owner and roi.GetDisplayNode() is not None:
                roi.GetDisplayNode().SetVisibility(segmentId is None or owner == segmentId)

    def clear(self) -> None:
        for kind in NODE_KINDS:
            for node in self.find(kind):
                if kind in SINGLE_USE:
                    self.scene.RemoveNode(node)
                else:
                    node.RemoveAllControlPoints()


class PropagationTask:
    """A propagation job on the engine server, advanced by short polls on the GUI thread."""

    def __init__(self, logic: "SegmentWithSAM2Logic", controller: SegmentationController, job: Any, volumeNode,
                 segmentationNode, segmentIds: list[str], before: dict[str, np.ndarray],
                 onProgress: Callable | None, onDone: Callable | None, onError: Callable | None):
        self.logic, self.controller, self.job = logic, controller, job
        self.volumeNode, self.segmentationNode, self.segmentIds = volumeNode, segmentationNode, segmentIds
        self.before = before
        self.visited: dict[str, set[int]] = {s: set() for s in segmentIds}
        self.onProgress, self.onDone, self.onError = onProgress, onDone, onError
        self.finished = False
        self.error: str | None = None
        self.written = 0
        self.cancelled = False
        self._gone = False  # the server's job cannot be reached any more

    def poll(self) -> None:
        if self.finished:
            return
        try:
            # a segment deleted in Slicer while the job runs is skipped; the others are written
            present = self.segmentationNode.GetSegmentation().GetSegment
            updates = [u for u in self.controller.updates_from(self.job.poll(timeout=GUI_POLL_TIMEOUT_S))
                       if u.segment_id in self.visited and present(u.segment_id) is not None]
            for u in updates:
                self.visited[u.segment_id].add(u.first)
            self.written += self.logic.applyUpdates(updates, self.segmentationNode, self.volumeNode)
            if self.onProgress is not None:
                self.onProgress(*self.job.progress)
            if self.job.finished:
                self._finish()
        except Exception as exc:  # noqa: BLE001 - any failure ends the task and reaches the user
            self._fail(exc)

    def _finish(self) -> None:
        error = self.job.error
        if error is not None and not isinstance(error, CancelledError):
            raise error
        self.cancelled = isinstance(error, CancelledError) or bool(getattr(self.job.report, "cancelled", False))
        self.written += self.logic.writeFinalResult(self.controller, self.segmentationNode, self.volumeNode,
                                                    self.segmentIds, self.before, self.visited)
        self.finished = True
        if self.onDone is not None:
            self.onDone(self)

    def _fail(self, exc: BaseException) -> None:
        self.finished = True
        self.error = describe_error(exc)
        server = self.logic.link.server
        if server is not None and not server.alive():
            self._gone = True
            self.error += f"\nThe local engine server stopped; the next prompt restarts it. Its log ends:\n{server.log_tail(1500)}"
        log.error("propagation failed: %s", self.error, exc_info=exc)
        try:
            if not self.job.finished:
                self.job.cancel(timeout=GUI_POLL_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - the server may be gone; the error above is what matters
            pass
        if self.onError is not None:
            try:
                self.onError(self.error)
            except Exception:  # noqa: BLE001
                log.exception("the error callback failed")

    def cancel(self) -> None:
        """Ask the server to stop; one that does not answer within a second is left behind: the task
        ends here at once with a message (slices so far are kept), and the GUI is free again."""
        if self.finished or self.job.finished:
            return
        try:
            self.job.cancel(timeout=GUI_POLL_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a stalled or vanished server must not keep Cancel from working
            self._gone = True
            self._fail(RuntimeError(f"cancelled here; {describe_error(exc)} (the server may still run the propagation)"))

    @property
    def server_busy(self) -> bool:
        """The server's job still runs (after a failure here, or a cancel, until it stops)."""
        return not self.job.finished and not self._gone

    def drain(self) -> bool:
        """Poll the server's job without writing anything; True once it has ended."""
        if not self.job.finished:
            try:
                self.job.poll(timeout=GUI_POLL_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - a vanished server has ended the job too
                log.warning("while waiting for a cancelled job: %s", exc)
                self._gone = True
                return True
        return self.job.finished


class SegmentWithSAM2Logic:
    """Prompts, propagation and write-back for (volume, segmentation, segment) triples."""

    def __init__(self, link: EngineLink | None = None, scene=None):
        self.link = link or EngineLink()
        self.scene = scene or slicer.mrmlScene
        self.controllers: dict[tuple[str, str], SegmentationController] = {}
        self._keys: dict[tuple[str, str], tuple] = {}
        self.task: PropagationTask | None = None
        self._closing: list[tuple[PropagationTask, SegmentationController | None]] = []  # jobs ending on the server
        self.prompts = PromptNodes(self.scene)
        self.lastMessage = ""
        # Asked before SAM2 writes over content of a segment that it did not write (the user's own
        # segment): ``confirmOverwrite(question) -> bool``; the widget passes a Qt question dialog.
        # None: nobody to ask (the Python console), writes go ahead.
        self.confirmOverwrite: Callable[[str], bool] | None = None
        # (segmentation, segment) -> (voxel axis, slice) -> digests of the slice contents SAM2 wrote there or the
        # user accepted (said yes, or started from the segment): a hand edit since makes the slice the user's again
        self._written: dict[tuple[str, str], dict[tuple[int, int], set[str]]] = {}
        # the Segment Editor node whose overwrite setting write-back follows (the module's embedded editor);
        # None: Slicer's Segment Editor node, else the default (writeback.overwrite_mode)
        self.editorNode = None
        self.promptEvents: list[PromptEvent] = []  # queued by the prompt nodes' observers, see observePromptNodes
        self.onPromptEvent: Callable[[], None] | None = None  # told (inside the event) that one was queued
        self.observedPromptNodes: dict[str, Any] = {}
        self._promptObservers: list[tuple[Any, int]] = []
        self._handlingPrompts = False
        self.initializer: Initializer | None = None  # Initialize under way or done (stepped by poll)
        # The widget: a prompt that would start the engine or build the model here (no Initialize ready for
        # its settings) starts Initialize in the background instead and is refused with a message.
        self.initializeOnFirstPrompt = False
        self._serverOf: dict[tuple[str, str], Any] = {}  # the local server each controller's session is on

    # ------------------------------------------------------------ sessions
    @property
    def busy(self) -> bool:
        """A propagation is running (or, after an error, still stopping on the server)."""
        return self.task is not None and (not self.task.finished or self.task.server_busy)

    def sessionFactory(self, settings: Settings):
        return self.link.factory(settings)

    def startInitialize(self, settings: Settings) -> Initializer:
        """Initialize: start the engine server and load the model in the background; :meth:`poll`
        steps it (each step blocks the GUI thread for half a second at most) until it is ready or failed.
        Pressed again with the same settings it goes on; with other settings it starts over for those."""
        if self.initializing and self.initializer.settings.session_key() == settings.session_key():
            return self.initializer
        self.initializer = Initializer(self.link, settings)
        return self.initializer

    def cancelInitialize(self) -> Initializer | None:
        """Cancel Initialize while it runs (one short request at most: see :meth:`Initializer.cancel`);
        the initializer's message says what happened. Nothing when none runs."""
        if self.initializing:
            self.initializer.cancel()
        return self.initializer

    @property
    def initializing(self) -> bool:
        return self.initializer is not None and not self.initializer.done

    def _engineStarted(self, settings: Settings) -> None:
        """With :attr:`initializeOnFirstPrompt`: unless Initialize is ready for these settings (and the local
        server still runs), start it and refuse the prompt, so that no prompt starts the engine on the GUI thread."""
        if not self.initializeOnFirstPrompt:
            return
        init, server = self.initializer, self.link.server
        if init is not None and init.ready and init.settings.session_key() == settings.session_key() and (
                settings.mode != "local" or (server is not None and server.alive())):
            return
        init = self.startInitialize(settings)
        raise EngineStarting(f"the engine is starting in the background ({init.message}); prompt again once it says ready")

    def controllerFor(self, volumeNode, segmentationNode, settings: Settings) -> SegmentationController:
        """The controller of this (volume, segmentation). New engine settings replay its prompts; only
        a change of the volume's voxels or geometry starts over, and says so in :attr:`lastMessage`."""
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise InputError("choose an input volume with image data first")
        if segmentationNode is None:
            raise InputError("choose a segmentation and segment first (or press New segment)")
        if self.initializing and self.initializer.settings.session_key() == settings.session_key():
            raise EngineStarting(f"the engine is still starting ({self.initializer.message}); prompt again once it is ready")
        key = (volumeNode.GetID(), segmentationNode.GetID())
        controller = self.controllers.get(key)
        server = self.link.server
        if controller is not None and settings.mode == "local" and server is not None and (
                not server.alive() or self._serverOf.get(key, server) is not server):
            # the local engine server died (a crash or out-of-memory in torch): start a new one and
            # give it the prompts again (Initialize may have started it already); Slicer itself was never at risk
            self._keys[key] = (None,) + self._keys[key][1:]
            self.lastMessage = "the engine server had stopped and was restarted"
            if self.task is not None and self.task.controller is controller:
                self.task._gone = True
        if controller is not None and self._volumeChanged(key, volumeNode):
            if self.busy:
                raise InputError("a propagation is running; wait for it or press Cancel")
            self._close(controller)
            controller = None
            self.lastMessage = "the volume's voxels or geometry changed: its prompts were cleared; prompt again"
        if controller is not None and self._keys[key][0] != settings.session_key():
            if self.busy:
                raise InputError("a propagation is running; wait for it or press Cancel before changing settings")
            self._engineStarted(settings)
            updates = controller.rebuild(self.sessionFactory(settings))
            self.applyUpdates(updates, segmentationNode, volumeNode)
            why = "the engine server had stopped and was restarted" if self._keys[key][0] is None and self.lastMessage else "settings changed"
            self._keys[key] = (settings.session_key(),) + self._keys[key][1:]
            self._serverOf[key] = self.link.server
            self.lastMessage = f"{why}: {len(controller.prompts)} prompt(s) sent to the new engine; propagate again"
        if controller is not None and not (self.busy and self.task.controller is controller):
            self._forgetDeletedSegments(controller, segmentationNode)
        if controller is None:
            self._engineStarted(settings)
            from sam2volume.io.readers import guess_modality

            array = slicer.util.arrayFromVolume(volumeNode)
            controller = SegmentationController(array, matrix(volumeNode.GetIJKToRASMatrix), self.sessionFactory(settings),
                                                name=volumeNode.GetName(), modality=guess_modality(array))
            self.controllers[key] = controller
            self._keys[key] = (settings.session_key(), volumeNode.GetImageData().GetMTime(), _digest(array))
            self._serverOf[key] = self.link.server
        return controller

    def _volumeChanged(self, key, volumeNode) -> bool:
        """True when the voxels or the IJK-to-RAS geometry differ from the controller's (an MTime
        change alone, e.g. from a display pipeline, is checked against a digest of the voxels)."""
        controller = self.controllers[key]
        if not np.allclose(matrix(volumeNode.GetIJKToRASMatrix), controller.ijk_to_ras):
            return True
        mtime = volumeNode.GetImageData().GetMTime()
        settings_key, seen, digest = self._keys[key]
        if mtime == seen:
            return False
        if _digest(slicer.util.arrayFromVolume(volumeNode)) != digest:
            return True
        self._keys[key] = (settings_key, mtime, digest)
        return False

    # ------------------------------------------------------------- prompts
    def addPoints(self, volumeNode, segmentationNode, segmentId, pointsRas, positive, sliceNode, settings: Settings, key=None):
        """Points clicked in ``sliceNode``'s view (world RAS); the slice's mask is written at once."""
        c = self.controllerFor(volumeNode, segmentationNode, settings)
        u = c.add_points(segmentId, pointsRas, positive, slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS()),
                         world_to_local(volumeNode), key=key)
        self._confirmPromptWrite(c, u, segmentationNode, volumeNode)
        self.applyUpdates([u], segmentationNode, volumeNode)
        return u

    def addBox(self, volumeNode, segmentationNode, segmentId, roi, sliceNode, settings: Settings):
        """A completed box ROI drawn in ``sliceNode``'s view; returns None while the box is still being drawn."""
        corners = box_corners(roi)
        if corners is None:
            return None
        c = self.controllerFor(volumeNode, segmentationNode, settings)
        u = c.add_box(segmentId, corners, slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS()),
                      world_to_local(volumeNode), key=(roi.GetID(), "box"))
        self._confirmPromptWrite(c, u, segmentationNode, volumeNode)
        self.prompts.retire_box(roi, segmentId)
        self.applyUpdates([u], segmentationNode, volumeNode)
        return u

    def addScribble(self, volumeNode, segmentationNode, segmentId, curve, sliceNode, settings: Settings, positive: bool | None = None):
        """A finished scribble (a markups curve drawn in ``sliceNode``'s view): positive or negative points
        sampled along it (``positive`` None: from the module's node kind); the slice's mask is written at once."""
        if positive is None:
            positive = curve.GetAttribute(PROMPT_ATTRIBUTE) != "negative_scribble"
        return self._addStroke(volumeNode, segmentationNode, segmentId, curve, sliceNode, settings, "scribble", positive)

    def addLasso(self, volumeNode, segmentationNode, segmentId, closedCurve, sliceNode, settings: Settings):
        """A finished lasso (a markups closed curve drawn in ``sliceNode``'s view): its filled polygon is the
        segment's mask prompt on that slice."""
        return self._addStroke(volumeNode, segmentationNode, segmentId, closedCurve, sliceNode, settings, "lasso", True)

    def _addStroke(self, volumeNode, segmentationNode, segmentId, curve, sliceNode, settings: Settings, kind: str, positive: bool):
        points = curve_points(curve)
        c = self.controllerFor(volumeNode, segmentationNode, settings)
        s2r, w2l, key = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS()), world_to_local(volumeNode), (curve.GetID(), "stroke")
        if kind == "lasso":
            u = c.add_lasso(segmentId, points, s2r, w2l, key=key)
        else:
            u = c.add_scribble(segmentId, points, positive, s2r, w2l, key=key)
        self._confirmPromptWrite(c, u, segmentationNode, volumeNode)
        self.prompts.retire_box(curve, segmentId)
        self.applyUpdates([u], segmentationNode, volumeNode)
        return u

    def maskCandidates(self, volumeNode, segmentationNode, segmentId):
        """SAM2's masks for the segment's newest prompt when it is a single click (``MaskCandidates``:
        masks, predicted IoU scores, the one shown), else None (the baseline engine: always None)."""
        c = self._existing(volumeNode, segmentationNode)
        return None if c is None or segmentId not in c.labels else c.candidates(segmentId)

    def chooseMask(self, volumeNode, segmentationNode, segmentId, index: int) -> SliceUpdate:
        """Candidate ``index`` becomes the segment's mask on that slice (a mask prompt: propagation follows it)."""
        c = self._existing(volumeNode, segmentationNode)
        if c is None or segmentId not in c.labels:
            raise InputError("click once on a slice first; SAM2's candidate masks are those of a single click")
        u = c.choose_mask(segmentId, index)
        self._confirmPromptWrite(c, u, segmentationNode, volumeNode)
        self.applyUpdates([u], segmentationNode, volumeNode)
        return u

    def addMaskFromSegment(self, volumeNode, segmentationNode, segmentId, sliceNode, settings: Settings):
        """Start from what the segment already holds on the slice ``sliceNode`` shows (a mask prompt)."""
        c = self.controllerFor(volumeNode, segmentationNode, settings)
        s2r = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())
        w2l = world_to_local(volumeNode)
        from .geometry import view_slice

        view = view_slice(s2r, c.volume, c.ijk_to_ras, w2l)
        current = read_slab(segmentationNode, segmentId, volumeNode, view.voxel_axis, view.index, view.index)
        u = c.add_mask(segmentId, current, s2r, w2l)
        self._accept(segmentationNode, segmentId, volumeNode, view.voxel_axis)  # the user chose to work from this segment
        self.applyUpdates([u], segmentationNode, volumeNode)
        return u

    def currentSlice(self, volumeNode, segmentationNode, sliceNode) -> int:
        """The session slice ``sliceNode`` shows, to propagate from it (up or down)."""
        c = self._existing(volumeNode, segmentationNode)
        if c is None:
            raise InputError("place a point or a box on a slice first")
        return c.slice_of_view(slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS()), world_to_local(volumeNode))

    def movePoint(self, volumeNode, segmentationNode, key, pointRas, sliceNode) -> list[SliceUpdate]:
        """A prompt's markup point moved: re-send the segment's prompts and rewrite the touched slices."""
        c = self._existing(volumeNode, segmentationNode)
        if c is None or not c.has_prompt(key):
            return []
        updates = c.move_prompt(key, [pointRas], slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS()), world_to_local(volumeNode))
        self.applyUpdates(updates, segmentationNode, volumeNode)
        return updates

    def removePoint(self, volumeNode, segmentationNode, key) -> list[SliceUpdate]:
        c = self._existing(volumeNode, segmentationNode)
        if c is None or not c.has_prompt(key):
            return []
        updates = c.remove_prompt(key)
        self.applyUpdates(updates, segmentationNode, volumeNode)
        return updates

    def syncMovedPoints(self, volumeNode, segmentationNode, markupsNode, sliceNodes) -> list[SliceUpdate]:
        """After a drag in a view (PointEndInteractionEvent, which names no point): the prompts of
        the points that moved follow them."""
        c = self._existing(volumeNode, segmentationNode)
        if c is None:
            return []
        from .geometry import world_to_ijk

        w2l = world_to_local(volumeNode)
        updates: list[SliceUpdate] = []
        for i in range(markupsNode.GetNumberOfControlPoints()):
            key = (markupsNode.GetID(), markupsNode.GetNthControlPointID(i))
            if not c.has_prompt(key):
                continue
            point = [0.0] * 3
            markupsNode.GetNthControlPointPositionWorld(i, point)
            now = world_to_ijk([point], c.ijk_to_ras, w2l)[0]
            before = c.prompt_points(key)[0]
            moved = np.abs(now - before)
            moved[c.voxel_axis] = max(0.0, moved[c.voxel_axis] - 0.5)  # within its slice is not a move off it
            if moved.max() > 1e-3:
                updates += self.movePoint(volumeNode, segmentationNode, key, point, slice_node_for_point(point, sliceNodes))
        return updates

    def removeMissingPoints(self, volumeNode, segmentationNode, markupsNode) -> list[SliceUpdate]:
        """Points were deleted from ``markupsNode``: drop the prompts they made."""
        c = self._existing(volumeNode, segmentationNode)
        if c is None:
            return []
        ids = {markupsNode.GetNthControlPointID(i) for i in range(markupsNode.GetNumberOfControlPoints())}
        gone = [p.key for p in c.prompts if p.key and p.key[0] == markupsNode.GetID() and p.key[1] not in ids]
        updates: list[SliceUpdate] = []
        for key in gone:
            updates += self.removePoint(volumeNode, segmentationNode, key)
        return updates

    def undoLastPrompt(self, volumeNode, segmentationNode, segmentId=None) -> list[SliceUpdate]:
        c = self._existing(volumeNode, segmentationNode)
        if c is None:
            raise InputError("there is no prompt to undo")
        if not (self.busy and self.task.controller is c):
            self._forgetDeletedSegments(c, segmentationNode)  # never undo into a segment deleted in Slicer
        keys = [p.key for p in c.prompts if segmentId is None or p.segment_id == segmentId]
        updates = c.undo_last_prompt(segmentId)
        self.applyUpdates(updates, segmentationNode, volumeNode)
        if keys and keys[-1]:
            self._removeMarkup(keys[-1])
        return updates

    def forgetSegment(self, volumeNode, segmentationNode, segmentId) -> None:
        """The segment's prompts leave the engine (its object is removed from the session) and the views
        (their points and strokes); what the segment holds is not touched (:meth:`removeSegment` also
        deletes it)."""
        c = self._existing(volumeNode, segmentationNode)
        if c is not None:
            if self.busy and self.task.controller is c:
                raise InputError("a propagation is running; wait for it or press Cancel")
            self._forget(c, segmentationNode, segmentId)
        else:
            self._written.pop((segmentationNode.GetID(), segmentId), None)  # _forget drops it with the prompts

    def removeSegment(self, volumeNode, segmentationNode, segmentId) -> None:
        """Delete the segment from the segmentation and its object and prompts from the engine."""
        self.forgetSegment(volumeNode, segmentationNode, segmentId)
        segmentationNode.GetSegmentation().RemoveSegment(segmentId)

    def _forget(self, c: SegmentationController, segmentationNode, segmentId) -> None:
        keys = [p.key for p in c.prompts if p.segment_id == segmentId and p.key]
        c.remove_segment(segmentId)
        for key in keys:
            self._removeMarkup(key)
        self._written.pop((segmentationNode.GetID(), segmentId), None)

    def _forgetDeletedSegments(self, c: SegmentationController, segmentationNode) -> None:
        """Segments deleted in Slicer (Segment Editor, Segmentations or Data module) since they were prompted:
        their objects leave the engine, so that no later propagation or undo writes into a missing segment
        (Slicer refuses that write, which failed the whole propagation, every object's)."""
        segmentation = segmentationNode.GetSegmentation()
        for sid in dict.fromkeys([*c.labels, *(p.segment_id for p in c.prompts)]):
            if segmentation.GetSegment(sid) is None:
                self._forget(c, segmentationNode, sid)

    def _removeMarkup(self, key) -> None:
        """Remove the markup that made a prompt (a point of a list, or a box node)."""
        node = self.scene.GetNodeByID(key[0])
        if node is None:
            return
        if key[1] in ("box", "stroke"):
            self.scene.RemoveNode(node)
            return
        index = node.GetNthControlPointIndexByID(key[1])
        if index >= 0:
            node.RemoveNthControlPoint(index)

    def _existing(self, volumeNode, segmentationNode) -> SegmentationController | None:
        if volumeNode is None or segmentationNode is None:
            return None
        return self.controllers.get((volumeNode.GetID(), segmentationNode.GetID()))

    # ------------------------------------------------------ prompt events
    def observePromptNodes(self) -> None:
        """Observe the prompt markups (the module is entered). An event only queues what happened
        (:attr:`promptEvents`); :meth:`handlePromptEvents` does the work later, from a timer, so that
        no server request and no dialog runs inside Slicer's markups (PlacePoint) event processing."""
        self.unobservePromptNodes()
        for kind in PROMPT_KINDS:
            self._observePromptNode(kind, self.prompts.get(kind))
        for kind in STROKE_KINDS:  # a stroke is sent once finished: see _queueFinishedStrokes
            self.observedPromptNodes[kind] = self.prompts.get(kind)
        # a stroke is finished when Slicer ends place mode (right-click or double-click in a view, another
        # mouse mode, a Segment Editor effect activated: vtkMRMLInteractionNode::EndPlacementEvent) or
        # another node becomes the one being placed
        interaction, selection = self._placingNodes()
        for node, event in ((interaction, slicer.vtkMRMLInteractionNode.EndPlacementEvent),
                            (selection, slicer.vtkMRMLSelectionNode.ActivePlaceNodeIDChangedEvent)):
            if node is not None:
                self._promptObservers.append((node, node.AddObserver(event, lambda caller, _event: self._queueFinishedStrokes())))

    def _placingNodes(self):
        return (self.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton"), self.scene.GetNodeByID("vtkMRMLSelectionNodeSingleton"))

    def finishedStrokes(self) -> list[tuple[str, Any]]:
        """(kind, node) of the module's current stroke nodes that have points and are no longer being placed
        (not the active place node while in place mode)."""
        interaction, selection = self._placingNodes()
        placing = None
        if interaction is not None and selection is not None and interaction.GetCurrentInteractionMode() == interaction.Place:
            placing = selection.GetActivePlaceNodeID()
        out = []
        for kind in STROKE_KINDS:
            node = self.observedPromptNodes.get(kind)
            if node is not None and node.GetScene() is self.scene and not node.GetLocked() and node.GetID() != placing \
                    and len(curve_points(node)):
                out.append((kind, node))
        return out

    def _queueFinishedStrokes(self) -> None:
        queued = False
        for kind, node in self.finishedStrokes():
            event = PromptEvent("finished", kind, node.GetID())
            if event not in self.promptEvents:
                self.promptEvents.append(event)
                queued = True
        if queued and self.onPromptEvent is not None:
            self.onPromptEvent()

    def _observePromptNode(self, kind: str, node) -> None:
        markups = slicer.vtkMRMLMarkupsNode
        events = [("placed", markups.PointPositionDefinedEvent)]
        if kind != "box":
            events += [("moved", markups.PointEndInteractionEvent), ("removed", markups.PointRemovedEvent)]
        for what, event in events:
            tag = node.AddObserver(event, lambda caller, _event, w=what, k=kind: self._queuePromptEvent(w, k, caller))
            self._promptObservers.append((node, tag))
        self.observedPromptNodes[kind] = node

    def _unobservePromptNode(self, node) -> None:
        for n, tag in [o for o in self._promptObservers if o[0] is node]:
            n.RemoveObserver(tag)
            self._promptObservers.remove((n, tag))

    def unobservePromptNodes(self) -> None:
        """Remove every observer this logic put on prompt nodes (module left, scene closing)."""
        for node, tag in self._promptObservers:
            node.RemoveObserver(tag)
        self._promptObservers = []
        self.observedPromptNodes = {}

    def _queuePromptEvent(self, what: str, kind: str, node) -> None:
        point = ""
        if what == "placed" and kind != "box":
            n = node.GetNumberOfControlPoints() - 1  # placing adds the point last
            if n < 0:
                return
            point = node.GetNthControlPointID(n)
        event = PromptEvent(what, kind, node.GetID(), point)
        if event not in self.promptEvents:
            self.promptEvents.append(event)
        if self.onPromptEvent is not None:
            self.onPromptEvent()

    @property
    def handlingPrompts(self) -> bool:
        """:meth:`handlePromptEvents` is running (e.g. waiting for the overwrite question's answer)."""
        return self._handlingPrompts

    def handlePromptEvents(self, target: Callable[[], PromptTarget], sliceNodes: Callable[[], list]) -> str:
        """Do the work of the queued prompt events in order (the widget's timer calls this, outside any
        markups event); returns the status of the last one. ``target()`` (asked only for a placed
        prompt) says where it goes, ``sliceNodes()`` the shown slice views. An error is raised with
        its event dropped (a refused point or box is removed from the views); later events stay
        queued. A call while another runs (a dialog's event loop) returns at once."""
        if self._handlingPrompts:
            return ""
        self._handlingPrompts = True
        message = ""
        try:
            while self.promptEvents:
                message = self._handlePromptEvent(self.promptEvents.pop(0), target, sliceNodes) or message
        finally:
            self._handlingPrompts = False
        return message

    def _handlePromptEvent(self, event: PromptEvent, target, sliceNodes) -> str:
        node = self.scene.GetNodeByID(event.nodeID)
        if node is None:
            return ""
        if event.what == "removed":
            for volume, seg in self._prompted():
                self.removeMissingPoints(volume, seg, node)
            return ""
        if event.what == "moved":
            for volume, seg in self._prompted(node.GetID()):
                self.syncMovedPoints(volume, seg, node, sliceNodes())
            return ""
        if event.what == "finished":
            if node.GetLocked() or not len(curve_points(node)):
                return ""  # used already, or its points were removed since
            try:
                t = target()
                view = slice_node_for_point(curve_points(node).mean(axis=0), sliceNodes())
                if event.kind == "lasso":
                    self.addLasso(t.volumeNode, t.segmentationNode, t.segmentId, node, view, t.settings)
                else:
                    self.addScribble(t.volumeNode, t.segmentationNode, t.segmentId, node, view, t.settings)
            except Exception:
                if not node.GetLocked():
                    node.RemoveAllControlPoints()  # a refused stroke is not left on screen as if it counted
                raise
            self.observedPromptNodes[event.kind] = self.prompts.get(event.kind)  # the next stroke: a new node
        elif event.kind == "box":
            if node.GetLocked():  # used already (both of a box's clicks were queued)
                return ""
            try:
                t = target()
                centre = [0.0] * 3
                node.GetCenterWorld(centre)
                u = self.addBox(t.volumeNode, t.segmentationNode, t.segmentId, node,
                                slice_node_for_point(centre, sliceNodes()), t.settings)
            except Exception:
                node.RemoveAllControlPoints()  # a refused box is not left on screen as if it counted
                raise
            if u is None:
                return ""  # the first of the box's two clicks
            self._unobservePromptNode(node)
            self._observePromptNode("box", self.prompts.get("box"))
        else:
            key = (node.GetID(), event.pointID)
            if node.GetNthControlPointIndexByID(event.pointID) < 0 or any(c.has_prompt(key) for c in self.controllers.values()):
                return ""  # removed since, or handled already
            try:
                t = target()
                n = node.GetNthControlPointIndexByID(event.pointID)
                point = [0.0] * 3
                node.GetNthControlPointPositionWorld(n, point)
                node.SetNthControlPointDescription(n, t.segmentId)
                self.addPoints(t.volumeNode, t.segmentationNode, t.segmentId, [point], [event.kind == "positive"],
                               slice_node_for_point(point, sliceNodes()), t.settings, key=key)
            except Exception:
                n = node.GetNthControlPointIndexByID(event.pointID)
                if n >= 0:
                    node.RemoveNthControlPoint(n)  # a refused point is not left on screen as if it counted
                raise
        message = f"{event.kind}: mask shown" + (f" ({self.lastMessage})" if self.lastMessage else "")
        self.lastMessage = ""
        return message

    def _prompted(self, nodeID: str | None = None) -> list[tuple[Any, Any]]:
        """(volume, segmentation) of each controller (with a prompt made by node ``nodeID``)."""
        out = []
        for (volumeID, segID), c in list(self.controllers.items()):
            if nodeID is not None and not any(p.key and p.key[0] == nodeID for p in c.prompts):
                continue
            volume, seg = self.scene.GetNodeByID(volumeID), self.scene.GetNodeByID(segID)
            if volume is not None and seg is not None:
                out.append((volume, seg))
        return out

    def stopPlacing(self) -> None:
        """Leave place mode if it places one of the module's prompts (the module is left): the
        interaction node goes back to ViewTransform. Another module's placing is left alone. A stroke
        not finished yet is dropped (its points removed), so that it is not sent on a later visit."""
        for kind in STROKE_KINDS:
            for node in self.prompts.find(kind):
                if not node.GetLocked() and node.GetNumberOfControlPoints():
                    node.RemoveAllControlPoints()
        interaction = self.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        selection = self.scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
        if interaction is None or selection is None or interaction.GetCurrentInteractionMode() != interaction.Place:
            return
        ours = {n.GetID() for kind in NODE_KINDS for n in self.prompts.find(kind)}
        if selection.GetActivePlaceNodeID() in ours:
            interaction.SwitchToViewTransformMode()

    # ------------------------------------------------------------ slice range
    def sliceRange(self, volumeNode, segmentationNode) -> tuple[str, int, int] | None:
        """The prompts' axis and the first and last volume slice along it (voxel indices, as Slicer's
        Data Probe shows them), or None before the first prompt (no axis yet)."""
        c = self._existing(volumeNode, segmentationNode)
        if c is None or c.session is None or c.axis is None:
            return None
        return c.axis, 0, volumeNode.GetImageData().GetDimensions()[c.voxel_axis] - 1

    def sessionSliceRange(self, volumeNode, segmentationNode, first: int, last: int) -> tuple[int, int]:
        """Volume slices first..last (as :meth:`sliceRange` gives them) in the session's numbering."""
        span = self.sliceRange(volumeNode, segmentationNode)
        if span is None:
            raise InputError("place a point or a box on a slice first")
        axis, lo, hi = span
        if not (lo <= first <= last <= hi):
            raise InputError(f"slice range {first}..{last} is not within the volume's {axis} slices {lo}..{hi}; "
                             "choose a first slice no greater than the last, within that range")
        c = self._existing(volumeNode, segmentationNode)
        ends = []
        for s in (first, last):
            v = [0, 0, 0]
            v[c.voxel_axis] = s
            ends.append(c.session.slice_of(v))
        return min(ends), max(ends)

    # ----------------------------------------------------------- propagate
    def startPropagation(self, volumeNode, segmentationNode, settings: Settings, segmentIds=None, sliceRange=None,
                         onProgress=None, onDone=None, onError=None, start: int | None = None,
                         volumeSliceRange: tuple[int, int] | None = None) -> PropagationTask:
        """Start a propagation on the server and return at once; :meth:`poll` advances it.
        ``sliceRange`` is in the session's numbering, ``volumeSliceRange`` in volume slices (what the
        widget shows, :meth:`sliceRange`)."""
        if self.busy:
            raise InputError("a propagation is already running; wait for it or press Cancel")
        c = self.controllerFor(volumeNode, segmentationNode, settings)
        if c.session is None or not c.labels:
            raise InputError("place a point or a box on a slice first")
        if volumeSliceRange is not None:
            sliceRange = self.sessionSliceRange(volumeNode, segmentationNode, *volumeSliceRange)
        ids = list(c.labels) if segmentIds is None else list(segmentIds)
        self._confirmPropagationWrites(c, [s for s in ids if s in c.labels], segmentationNode, volumeNode)
        before = c.result_masks([s for s in ids if s in c.labels])
        job = c.start_propagation(settings.direction, segment_ids=ids, slice_range=sliceRange,
                                  stop_after=settings.stopAfter or None, start=start)
        self.task = PropagationTask(self, c, job, volumeNode, segmentationNode, ids, before, onProgress, onDone, onError)
        return self.task

    def poll(self) -> None:
        """Advance Initialize and the running propagation (the widget's 50 ms timer calls this)."""
        if self.initializing:
            self.initializer.step()
        if self.task is not None:
            if not self.task.finished:
                self.task.poll()
            elif self.task.server_busy:
                self.task.drain()
        for item in list(self._closing):
            task, controller = item
            if task.drain():
                self._closing.remove(item)
                if controller is not None:
                    self._close(controller)

    def wait(self, timeout: float = 600.0, interval: float = 0.05) -> PropagationTask | None:
        """Poll until the running propagation ends (self-test and console; the GUI uses its timer)."""
        end = time.monotonic() + timeout
        while self.busy and time.monotonic() < end:
            self.poll()
            if self.busy:
                time.sleep(interval)
        if self.busy:
            self.cancel()
            raise TimeoutError(f"the propagation did not finish within {timeout:.0f} s; it was cancelled")
        return self.task

    def cancel(self) -> None:
        """Ask the server to stop after the current slice (returns at once; slices so far are kept)."""
        if self.task is not None:
            self.task.cancel()

    def reset(self, volumeNode=None, segmentationNode=None) -> None:
        """Forget prompts (of one segmentation, or all); never waits for a running job: its session
        is closed by :meth:`poll` once the server has stopped the job."""
        running = None
        if self.busy and (volumeNode is None or self.task.controller is self._existing(volumeNode, segmentationNode)):
            running, self.task = self.task, None
            running.finished = True
            try:
                running.cancel()
            except Exception as exc:  # noqa: BLE001 - a server already gone must not block Reset
                log.warning("could not cancel the propagation: %s", exc)
        keys = list(self.controllers) if volumeNode is None else [(volumeNode.GetID(), segmentationNode.GetID())]
        for key in keys:
            c = self.controllers.pop(key, None)
            self._keys.pop(key, None)
            self._serverOf.pop(key, None)
            if c is None:
                continue
            if running is not None and running.controller is c:
                self._closing.append((running, c))
            else:
                self._close(c)
        if running is not None and not any(t is running for t, _ in self._closing):
            self._closing.append((running, None))
        if volumeNode is None:  # the scene is closing (node ids are used again): forget which slices were ours
            self._written.clear()
        self.prompts.clear()
        self.promptEvents.clear()

    @staticmethod
    def _close(controller: SegmentationController) -> None:
        try:
            controller.reset()
        except Exception as exc:  # noqa: BLE001 - a server already gone must not block Reset
            log.warning("could not close the engine session: %s", exc)

    def close(self) -> None:
        """Module unloaded or Slicer closing: stop everything, stop the local server."""
        self.unobservePromptNodes()
        self.reset()
        self._closing = []
        self.initializer = None
        self.link.stop()

    # ------------------------------------------------------------ write back
    def applyUpdates(self, updates: list[SliceUpdate], segmentationNode, volumeNode) -> int:
        """Write the slices whose content differs from the segment's; returns how many were written."""
        return sum(self._writeDiffering(segmentationNode, u.segment_id, volumeNode, u.voxel_axis, u.first, u.mask_kji)
                   for u in merge_runs(updates))

    def _writeDiffering(self, segmentationNode, segmentId, volumeNode, axis: int, first: int, slab_kji: np.ndarray) -> int:
        """Write the runs of slices of ``slab_kji`` (slices first.. along ``axis``) that differ from the segment."""
        slab_kji = np.asarray(slab_kji, bool)
        k_axis = 2 - axis  # the slices' axis in [k, j, i] order
        last = first + slab_kji.shape[k_axis] - 1
        current = read_slab(segmentationNode, segmentId, volumeNode, axis, first, last)
        differs = np.any(current != slab_kji, axis=tuple(x for x in range(3) if x != k_axis))
        written = 0
        # other segments under the mask: as the Segment Editor's overwrite setting says (all, visible, none)
        mode = self.editorNode.GetOverwriteMode() if self.editorNode is not None else overwrite_mode(self.scene)
        overwrite = overwritable_segments(segmentationNode, segmentId, mode) if differs.any() else []
        for f, l in runs_of(differs):
            sub: list[Any] = [slice(None)] * 3
            sub[k_axis] = slice(f, l + 1)
            # other segments' slices that were SAM2's (or empty) stay SAM2's once the mask takes their voxels
            theirs = {o: self._oursOnSlices(segmentationNode, o, volumeNode, axis, first + f, first + l) for o in overwrite}
            write_slab(segmentationNode, segmentId, volumeNode, axis, first + f, first + l, slab_kji[tuple(sub)], overwrite)
            self._record(segmentationNode, segmentId, volumeNode, axis, range(first + f, first + l + 1))
            for o, ours in theirs.items():
                self._record(segmentationNode, o, volumeNode, axis, ours)
            written += l - f + 1
        return written

    def _sliceDigests(self, segmentationNode, segmentId, volumeNode, axis: int, first: int, last: int) -> list[tuple[bool, str]]:
        """(non-empty, digest) of the segment's content on each volume slice first..last along ``axis``."""
        slab = read_slab(segmentationNode, segmentId, volumeNode, axis, first, last)
        return [(bool(s.any()), _digest(s)) for s in np.moveaxis(slab, 2 - axis, 0)]

    def _oursOnSlices(self, segmentationNode, segmentId, volumeNode, axis: int, first: int, last: int) -> list[int]:
        """The slices first..last where the segment is empty or holds what SAM2 wrote (or the user accepted)."""
        known = self._written.get((segmentationNode.GetID(), segmentId), {})
        return [first + d for d, (on, h) in enumerate(self._sliceDigests(segmentationNode, segmentId, volumeNode, axis, first, last))
                if not on or h in known.get((axis, first + d), ())]

    def _record(self, segmentationNode, segmentId, volumeNode, axis: int, slices: Iterable[int]) -> None:
        """The segment's present content on these slices is SAM2's (written, or accepted by the user)."""
        slices = sorted(slices)
        if not slices:
            return
        known = self._written.setdefault((segmentationNode.GetID(), segmentId), {})
        for f, l in runs_of(np.isin(np.arange(slices[0], slices[-1] + 1), slices)):
            for d, (_, h) in enumerate(self._sliceDigests(segmentationNode, segmentId, volumeNode, axis, slices[0] + f, slices[0] + l)):
                known.setdefault((axis, slices[0] + f + d), set()).add(h)

    def _accept(self, segmentationNode, segmentId, volumeNode, axis: int) -> None:
        """All the segment holds now (along ``axis``) is accepted: SAM2 may write over it without asking."""
        n = volumeNode.GetImageData().GetDimensions()[axis]
        self._record(segmentationNode, segmentId, volumeNode, axis, range(n))

    def writeFinalResult(self, controller: SegmentationController, segmentationNode, volumeNode, segmentIds,
                         before: dict[str, np.ndarray], visited: dict[str, set[int]]) -> int:
        """Make the segments equal the session's exact result on every slice this propagation may have
        changed: visited slices and slices where the result had or has the object. The segment's
        current content is the reference (not a record of earlier writes), so an undo or a manual edit
        in between is repaired, not skipped."""
        a = controller.voxel_axis
        other = tuple(x for x in range(3) if x != a)
        written = 0
        segmentation = segmentationNode.GetSegmentation()
        present = [sid for sid in segmentIds if segmentation.GetSegment(sid) is not None]  # not deleted meanwhile
        for sid, new in controller.result_masks(present).items():
            candidate = new.any(axis=other)
            if sid in before:
                candidate |= before[sid].any(axis=other)
            for s in visited.get(sid, ()):
                candidate[s] = True
            for first, last in runs_of(candidate):
                index: list[Any] = [slice(None)] * 3
                index[a] = slice(first, last + 1)
                slab = np.ascontiguousarray(new[tuple(index)].transpose(2, 1, 0))
                written += self._writeDiffering(segmentationNode, sid, volumeNode, a, first, slab)
        return written

    # ---------------------------------------------------------- conveniences
    def prepareSegmentation(self, volumeNode, segmentationNode=None, segmentName="SAM2 segment"):
        """A segment to write into. A new segmentation gets the volume's geometry and parent transform;
        an existing one is never re-parented or re-gridded (its segments stay where they are)."""
        if segmentationNode is None:
            segmentationNode = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                           self.scene.GenerateUniqueName(f"{volumeNode.GetName()} SAM2"))
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        segmentation = segmentationNode.GetSegmentation()
        segmentId = segmentation.GetSegmentIdBySegmentName(segmentName)
        if not segmentId:  # a segment made here is empty: all it holds later is SAM2's writes or hand edits
            segmentId = segmentation.AddEmptySegment("", segmentName)
        return segmentationNode, segmentId

    def segmentFor(self, volumeNode, segmentationNode=None, segmentId: str | None = None):
        """The segment prompts go into: the one chosen, or, when none is chosen, a new segment (in the
        chosen segmentation, else in a new one). An existing segment is never picked for the user."""
        if volumeNode is None:
            raise InputError("choose the input volume first")
        if segmentationNode is not None and segmentId:
            if segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
                raise InputError(f"segment {segmentId!r} is not in {segmentationNode.GetName()}; choose a segment, or none for a new one")
            return segmentationNode, segmentId
        segmentation = segmentationNode.GetSegmentation() if segmentationNode is not None else None
        n = 1 if segmentation is None else segmentation.GetNumberOfSegments() + 1
        while segmentation is not None and segmentation.GetSegmentIdBySegmentName(f"SAM2 segment {n}"):
            n += 1
        return self.prepareSegmentation(volumeNode, segmentationNode, f"SAM2 segment {n}")

    # ------------------------------------------------------- overwrite guard
    def _foreignSlices(self, segmentationNode, segmentId, volumeNode, axis: int, first: int, new_kji: np.ndarray | None) -> list[int]:
        """Slices first.. along ``axis`` where the segment has content this logic did not write and
        (with ``new_kji``) the write would change it."""
        k_axis = 2 - axis
        n = new_kji.shape[k_axis] if new_kji is not None else volumeNode.GetImageData().GetDimensions()[axis]
        current = read_slab(segmentationNode, segmentId, volumeNode, axis, first, first + n - 1)
        other = tuple(x for x in range(3) if x != k_axis)
        touched = current.any(axis=other)
        if new_kji is not None:
            touched &= np.any(current != np.asarray(new_kji, bool), axis=other)
        known = self._written.get((segmentationNode.GetID(), segmentId), {})
        return [first + d for d in np.flatnonzero(touched)
                if _digest(np.take(current, d, axis=k_axis)) not in known.get((axis, first + d), ())]

    def _ask(self, segmentationNode, segmentId, volumeNode, axis: int, slices: list[int], what: str) -> None:
        """Ask before writing over the user's content; a no raises OverwriteDeclined, a yes accepts all
        the segment holds now (SAM2 writes over it without asking again; a later hand edit is asked about)."""
        if not slices or self.confirmOverwrite is None:
            return
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        name = segment.GetName() if segment is not None else segmentId
        shown = ", ".join(str(s) for s in slices[:5]) + (" ..." if len(slices) > 5 else "")
        question = (f"Segment '{name}' of {segmentationNode.GetName()} already has content on {len(slices)} slice(s) "
                    f"(volume slice {shown}) that SAM2 did not write. {what} Write over it?\n"
                    "No keeps the segment unchanged; choose no segment (None) to start a new one.")
        if not self.confirmOverwrite(question):
            raise OverwriteDeclined(f"segment '{name}' was kept unchanged (writing over its content was declined)")
        self._accept(segmentationNode, segmentId, volumeNode, axis)

    def _confirmPromptWrite(self, controller: SegmentationController, update: SliceUpdate, segmentationNode, volumeNode) -> None:
        """Before a prompt's mask is written into a segment with content SAM2 did not write: ask. A no
        takes the prompt back from the engine, and nothing is written."""
        if self.confirmOverwrite is None:
            return
        slices = self._foreignSlices(segmentationNode, update.segment_id, volumeNode, update.voxel_axis, update.first, update.mask_kji)
        try:
            self._ask(segmentationNode, update.segment_id, volumeNode, update.voxel_axis, slices,
                      "The prompt's mask replaces it on that slice.")
        except OverwriteDeclined:
            controller.take_back_last_prompt(update.segment_id)
            raise

    def _confirmPropagationWrites(self, controller: SegmentationController, segmentIds, segmentationNode, volumeNode) -> None:
        """Before a propagation starts: ask about each segment with content SAM2 did not write."""
        for sid in segmentIds:
            if self.confirmOverwrite is not None:
                slices = self._foreignSlices(segmentationNode, sid, volumeNode, controller.voxel_axis, 0, None)
                self._ask(segmentationNode, sid, volumeNode, controller.voxel_axis, slices,
                          "Propagating replaces it on the slices SAM2 reaches.")
