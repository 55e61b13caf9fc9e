"""SegmentWithSAM2: prompt on slices, propagate through the volume with SAM2, correct, write back.

Thin Slicer layer over the ``sam2volume`` package: the widget only wires the GUI; the logic turns
nodes into arrays and matrices, runs all model work on one persistent worker thread through
``SegmentWithSAM2Lib.controller.SegmentationController``, and writes back only the slices that
changed. Slicer APIs used here were checked against Slicer's source (see README, Slicer section).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from sam2volume.models.registry import DEFAULT_MODEL, MODELS
from sam2volume.windowing import CT_PRESETS

ENGINES = ["sam2", "baseline"]
DEVICES = ["auto", "cuda", "mps", "cpu"]
WINDOWS = ["auto", *CT_PRESETS, "percentile"]
DIRECTIONS = ["both", "forward", "backward"]
VIEWS = ["Red", "Yellow", "Green"]


class SegmentWithSAM2(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Segment With SAM2"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "Markups"]
        self.parent.contributors = ["SegmentWithSAM2 team"]
        self.parent.helpText = (
            "Click positive/negative points or draw a box on a slice; the 2D mask appears at once. "
            "Propagate through the volume with SAM2, correct on any slice and propagate again. "
            "See the project README, section 3D Slicer."
        )
        self.parent.acknowledgementText = "Uses Meta's SAM 2 (Apache-2.0) and MedSAM2 checkpoints."


@parameterNodeWrapper
class SegmentWithSAM2ParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    engine: Annotated[str, Choice(ENGINES)] = "sam2"
    model: Annotated[str, Choice(list(MODELS))] = DEFAULT_MODEL
    device: Annotated[str, Choice(DEVICES)] = "auto"
    window: Annotated[str, Choice(WINDOWS)] = "auto"
    direction: Annotated[str, Choice(DIRECTIONS)] = "both"
    stopAfter: Annotated[int, WithinRange(0, 20)] = 3
    checkpoint: str = ""


# ---------------------------------------------------------------------------------------------- logic
class SegmentWithSAM2Logic(ScriptedLoadableModuleLogic):
    """GUI-free: usable from the Python console and the self-test. Callbacks run on the GUI thread
    (from :meth:`poll`), so they may change MRML nodes."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from SegmentWithSAM2Lib.worker import Worker

        self.worker = Worker()
        self.controller = None
        self._key = None
        self._predictors: dict[tuple, Any] = {}

    def getParameterNode(self):
        return SegmentWithSAM2ParameterNode(super().getParameterNode())

    # ----------------------------------------------------------- dependencies
    def ensureDependencies(self, engine: str, confirm: bool = True) -> bool:
        from SegmentWithSAM2Lib import dependencies

        needed = dependencies.missing(include_torch=True)
        if engine == "baseline":
            needed = [n for n in needed if n == "scipy"]
        return dependencies.install(needed, confirm=confirm)

    # --------------------------------------------------------------- geometry
    @staticmethod
    def _matrix(getter) -> np.ndarray:
        m = vtk.vtkMatrix4x4()
        getter(m)
        return slicer.util.arrayFromVTKMatrix(m)

    @staticmethod
    def worldToLocal(node) -> np.ndarray | None:
        """World RAS -> the node's local RAS (through its parent transforms), or None without one."""
        parent = node.GetParentTransformNode()
        if parent is None:
            return None
        m = vtk.vtkMatrix4x4()
        if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(None, parent, m):
            raise ValueError(f"{node.GetName()} is under a non-linear transform; harden or remove it before segmenting")
        return slicer.util.arrayFromVTKMatrix(m)

    def getController(self, volumeNode, params):
        """The controller for this volume and settings (a new one when either changed)."""
        from SegmentWithSAM2Lib.controller import SegmentationController

        key = (volumeNode.GetID(), volumeNode.GetImageData().GetMTime(), params.engine, params.model, params.device,
               params.window, params.checkpoint)
        if self.controller is None or key != self._key:
            config = None
            predictor = None
            if params.engine == "sam2":
                from sam2volume.engine.config import EngineConfig

                config = EngineConfig(model=params.model, checkpoint=params.checkpoint or None, device=params.device)
                predictor = self._predictors.get((params.model, params.checkpoint, params.device))
            from sam2volume.io.readers import guess_modality

            array = slicer.util.arrayFromVolume(volumeNode)
            self.controller = SegmentationController(
                array, self._matrix(volumeNode.GetIJKToRASMatrix), engine=params.engine,
                config=config, window=None if params.window == "auto" else params.window, modality=guess_modality(array),
                predictor=predictor, name=volumeNode.GetName(),
            )
            self._key = key
        return self.controller

    # ----------------------------------------------------------------- jobs
    def submitPoints(self, volumeNode, segmentationNode, segmentId, pointsRas, positive, sliceNode, params, onDone=None, onError=None):
        """Points clicked in ``sliceNode``'s view (world RAS); the slice's mask is written when ready."""
        return self._submitPrompt("points", lambda c, s2r, w2l: c.add_points(segmentId, pointsRas, positive, s2r, w2l),
                                  volumeNode, segmentationNode, sliceNode, params, onDone, onError)

    def submitBox(self, volumeNode, segmentationNode, segmentId, cornerA, cornerB, sliceNode, params, onDone=None, onError=None):
        """A box (two opposite corners, world RAS) drawn in ``sliceNode``'s view."""
        return self._submitPrompt("box", lambda c, s2r, w2l: c.add_box(segmentId, cornerA, cornerB, s2r, w2l),
                                  volumeNode, segmentationNode, sliceNode, params, onDone, onError)

    def _submitPrompt(self, name, call, volumeNode, segmentationNode, sliceNode, params, onDone, onError):
        controller = self.getController(volumeNode, params)
        sliceToRas = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())
        w2l = self.worldToLocal(volumeNode)
        return self._submit(name, lambda: [call(controller, sliceToRas, w2l)], volumeNode, segmentationNode, onDone, onError, undo=False)

    def submitPropagate(self, volumeNode, segmentationNode, params, segmentIds=None, sliceRange=None, onProgress=None, onDone=None, onError=None):
        controller = self.getController(volumeNode, params)
        stop = params.stopAfter or None

        def work(progress=None, cancel=None):
            return controller.propagate(params.direction, segment_ids=segmentIds, slice_range=sliceRange, stop_after=stop,
                                        progress=progress, cancel=cancel)

        return self._submit("propagate", work, volumeNode, segmentationNode, onDone, onError, onProgress=onProgress, undo=True)

    def _submit(self, name, work, volumeNode, segmentationNode, onDone, onError, onProgress=None, undo=False):
        from SegmentWithSAM2Lib.worker import Job

        def done(updates):
            if undo:
                self.saveStateForUndo(segmentationNode, volumeNode)
            self.applyUpdates(updates, segmentationNode, volumeNode)
            self._rememberPredictor()
            if onDone:
                onDone(updates)

        def failed(message, exc):
            logging.error(message)
            if onError:
                onError(message)

        return self.worker.submit(Job(work, on_done=done, on_error=failed, on_progress=onProgress, name=name))

    def _rememberPredictor(self):
        c = self.controller
        if c is not None and c.engine == "sam2" and c.session is not None and getattr(c.session, "_predictor", None) is not None:
            cfg = c.config
            self._predictors[(cfg.model, cfg.checkpoint or "", cfg.device)] = c.session._predictor

    def cancel(self):
        self.worker.cancel_all()

    def poll(self):
        return self.worker.poll()

    # ------------------------------------------------------------- write back
    @staticmethod
    def saveStateForUndo(segmentationNode, volumeNode):
        """Let Edit > Undo in the Segment Editor take the propagation back."""
        try:
            editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        except AttributeError:
            return
        editor.setSegmentationNode(segmentationNode)
        editor.setSourceVolumeNode(volumeNode)
        editor.saveStateForUndo()

    def applyUpdates(self, updates, segmentationNode, volumeNode):
        """Write each update's slab into its segment; voxels outside the slabs are untouched."""
        import vtk.util.numpy_support

        ijkToRas = self._matrix(volumeNode.GetIJKToRASMatrix)
        toSeg = np.eye(4)
        m = vtk.vtkMatrix4x4()
        if slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(volumeNode.GetParentTransformNode(), segmentationNode.GetParentTransformNode(), m):
            toSeg = slicer.util.arrayFromVTKMatrix(m)
        imageToSeg = slicer.util.vtkMatrixFromArray(toSeg @ ijkToRas)
        dims = volumeNode.GetImageData().GetDimensions()
        from SegmentWithSAM2Lib.geometry import slab_extent

        for u in updates:
            extent = slab_extent(u.voxel_axis, u.first, u.last, dims)
            image = slicer.vtkOrientedImageData()
            image.SetExtent(*extent)
            image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
            values = vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(u.mask_kji.shape)
            values[...] = u.mask_kji.astype(np.uint8)
            image.GetPointData().GetScalars().Modified()
            image.SetImageToWorldMatrix(imageToSeg)
            slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                image, segmentationNode, u.segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, image.GetExtent())

    # ----------------------------------------------------------- conveniences
    @staticmethod
    def prepareSegmentation(volumeNode, segmentationNode=None, segmentName="SAM2 segment"):
        """A segmentation on the volume's geometry (same parent transform) and a segment in it."""
        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volumeNode.GetName()} SAM2")
            segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        if segmentationNode.GetTransformNodeID() != volumeNode.GetTransformNodeID():
            segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        segmentation = segmentationNode.GetSegmentation()
        segmentId = segmentation.GetSegmentIdBySegmentName(segmentName) or segmentation.AddEmptySegment("", segmentName)
        return segmentationNode, segmentId


# --------------------------------------------------------------------------------------------- widget
class SegmentWithSAM2Widget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._markups: dict[str, Any] = {}
        self._lastView = "Red"

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SegmentWithSAM2.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SegmentWithSAM2Logic()
        for name in ("positive", "negative", "box"):
            widget = getattr(self.ui, f"{name}PlaceWidget")
            widget.setMRMLScene(slicer.mrmlScene)
            placeWidget = slicer.qSlicerMarkupsPlaceWidget
            widget.placeMultipleMarkups = placeWidget.ForcePlaceSingleMarkup if name == "box" else placeWidget.ForcePlaceMultipleMarkups
        self.ui.segmentSelector.setMRMLScene(slicer.mrmlScene)
        self.ui.propagateButton.connect("clicked(bool)", self.onPropagate)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.resetButton.connect("clicked(bool)", self.onReset)
        self.ui.createSegmentButton.connect("clicked(bool)", self.onCreateSegment)
        self.ui.useRangeCheckBox.connect("toggled(bool)", lambda on: self.ui.sliceRangeWidget.setEnabled(on))
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self._timer = qt.QTimer()
        self._timer.setInterval(50)
        self._timer.connect("timeout()", self.logic.poll)
        self._timer.start()
        self._ensureAllMarkups()
        self.initializeParameterNode()

    def _ensureAllMarkups(self) -> None:
        for name, label in (("positive", "SAM2 +"), ("negative", "SAM2 -"), ("box", "SAM2 box")):
            self._ensureMarkups(name, label)

    def cleanup(self) -> None:
        self.removeObservers()
        self._timer.stop()
        self.logic.worker.stop()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.cancel()
        self.logic.controller = None
        self._markups = {}
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self._ensureAllMarkups()
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, node) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = node
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    # ------------------------------------------------------------- prompts
    def _ensureMarkups(self, kind: str, label: str) -> None:
        node = self._markups.get(kind)
        if node is None or slicer.mrmlScene.GetNodeByID(node.GetID()) is None:
            cls = "vtkMRMLMarkupsROINode" if kind == "box" else "vtkMRMLMarkupsFiducialNode"
            node = slicer.mrmlScene.AddNewNodeByClass(cls, label)
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor((0.2, 0.9, 0.2) if kind == "positive" else (0.9, 0.2, 0.2) if kind == "negative" else (0.9, 0.9, 0.2))
            self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, lambda caller, event, k=kind: self.onPromptPlaced(k))
            self._markups[kind] = node
        getattr(self.ui, f"{kind}PlaceWidget").setCurrentNode(node)

    def _segment(self):
        seg = self.ui.segmentSelector.currentNode()
        segmentId = self.ui.segmentSelector.currentSegmentID()
        volume = self._parameterNode.inputVolume
        if volume is None:
            raise ValueError("choose the input volume first")
        if seg is None or not segmentId:
            seg, segmentId = self.logic.prepareSegmentation(volume, seg)
            self.ui.segmentSelector.setCurrentNode(seg)
            self.ui.segmentSelector.setCurrentSegmentID(segmentId)
        return volume, seg, segmentId

    def _sliceNodeFor(self, pointRas) -> Any:
        """The slice view whose plane holds the point (the view the user clicked in)."""
        best, bestDistance = None, None
        lm = slicer.app.layoutManager()
        for name in [self._lastView] + [v for v in VIEWS if v != self._lastView]:
            widget = lm.sliceWidget(name) if lm else None
            if widget is None or not widget.isVisible():
                continue
            sliceNode = widget.mrmlSliceNode()
            m = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())
            normal = m[:3, 2] / np.linalg.norm(m[:3, 2])
            distance = abs(float(np.dot(np.asarray(pointRas) - m[:3, 3], normal)))
            if bestDistance is None or distance < bestDistance - 1e-3:
                best, bestDistance, self._lastView = sliceNode, distance, name
        if best is None:
            raise ValueError("no slice view is shown; place prompts in the red, yellow or green view")
        return best

    def onPromptPlaced(self, kind: str) -> None:
        with slicer.util.tryWithErrorDisplay("Could not use this prompt.", waitCursor=False):
            if not self.logic.ensureDependencies(self._parameterNode.engine):
                return
            volume, seg, segmentId = self._segment()
            node = self._markups[kind]
            self._status(f"{kind} prompt: computing the slice mask ...")
            if kind == "box":
                center, size = [0.0] * 3, [0.0] * 3
                node.GetCenterWorld(center)
                node.GetSizeWorld(size)
                a = np.asarray(center) - np.asarray(size) / 2
                b = np.asarray(center) + np.asarray(size) / 2
                sliceNode = self._sliceNodeFor(center)
                node.RemoveAllControlPoints()
                self.logic.submitBox(volume, seg, segmentId, a, b, sliceNode, self._parameterNode,
                                     onDone=lambda u: self._status("box: mask shown"), onError=self._error)
            else:
                n = node.GetNumberOfControlPoints()
                point = [0.0] * 3
                node.GetNthControlPointPositionWorld(n - 1, point)
                sliceNode = self._sliceNodeFor(point)
                self.logic.submitPoints(volume, seg, segmentId, [point], [kind == "positive"], sliceNode, self._parameterNode,
                                        onDone=lambda u: self._status(f"{kind} point: mask shown"), onError=self._error)

    # ----------------------------------------------------------- propagate
    def onPropagate(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not propagate.", waitCursor=False):
            volume, seg, segmentId = self._segment()
            sliceRange = None
            if self.ui.useRangeCheckBox.checked:
                sliceRange = (int(self.ui.sliceRangeWidget.minimumValue), int(self.ui.sliceRangeWidget.maximumValue))
            ids = None if self.ui.allSegmentsCheckBox.checked else [segmentId]
            self.ui.progressBar.setValue(0)
            self.ui.cancelButton.setEnabled(True)
            self._status("propagating ...")
            self.logic.submitPropagate(volume, seg, self._parameterNode, segmentIds=ids, sliceRange=sliceRange,
                                       onProgress=self._progress, onDone=self._propagated, onError=self._error)

    def _progress(self, done: int, total: int) -> None:
        self.ui.progressBar.setMaximum(max(1, total))
        self.ui.progressBar.setValue(done)

    def _propagated(self, updates) -> None:
        self.ui.cancelButton.setEnabled(False)
        slices = sum(u.last - u.first + 1 for u in updates)
        self._status(f"propagated: {slices} slices changed")

    def onCancel(self) -> None:
        self.logic.cancel()
        self._status("cancelling after the current slice ...")

    def onReset(self) -> None:
        self.logic.cancel()
        if self.logic.controller is not None:
            self.logic.controller.reset()
        for node in self._markups.values():
            node.RemoveAllControlPoints()
        self._status("prompts cleared; segments keep what was written (use Undo in the Segment Editor to remove it)")

    def onCreateSegment(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not create a segment.", waitCursor=False):
            volume = self._parameterNode.inputVolume
            if volume is None:
                raise ValueError("choose the input volume first")
            seg = self.ui.segmentSelector.currentNode()
            n = 1 if seg is None else seg.GetSegmentation().GetNumberOfSegments() + 1
            seg, segmentId = self.logic.prepareSegmentation(volume, seg, f"SAM2 segment {n}")
            self.ui.segmentSelector.setCurrentNode(seg)
            self.ui.segmentSelector.setCurrentSegmentID(segmentId)

    def _status(self, text: str) -> None:
        self.ui.statusLabel.setText(text)

    def _error(self, message: str) -> None:
        self.ui.cancelButton.setEnabled(False)
        self._status("error: " + message)
        slicer.util.errorDisplay(message, windowTitle="SegmentWithSAM2")


# ----------------------------------------------------------------------------------------------- test
class SegmentWithSAM2Test(ScriptedLoadableModuleTest):
    """Loads a sample CT, prompts by code, propagates, and checks the segment against a reference (Dice).

    The reference is the lung air region of the sample chest CT (below -400 HU, the largest
    component not touching the border), a structure a threshold defines well. SAM2 is used when
    its dependencies and checkpoint are available; otherwise the classical baseline engine.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_prompt_propagate_dice()

    def _wait(self, logic, job, timeout=600.0):
        import time

        end = time.time() + timeout
        while time.time() < end and (logic.worker.busy or logic.worker._events.qsize()):
            logic.poll()
            slicer.app.processEvents()
            time.sleep(0.02)
        logic.poll()

    def test_prompt_propagate_dice(self):
        import SampleData
        from scipy import ndimage as ndi

        volume = SampleData.downloadSample("CTChest")
        self.delayDisplay("Loaded CTChest")
        arr = slicer.util.arrayFromVolume(volume)  # [k, j, i]
        lab, _ = ndi.label(arr < -400)
        border = np.unique(np.concatenate([lab[0].ravel(), lab[-1].ravel(), lab[:, 0].ravel(), lab[:, -1].ravel(), lab[:, :, 0].ravel(), lab[:, :, -1].ravel()]))
        sizes = np.bincount(lab.ravel())
        sizes[border] = 0
        reference = lab == int(np.argmax(sizes))
        ks = np.flatnonzero(reference.any(axis=(1, 2)))
        k = int(ks[len(ks) // 2])
        jj, ii = np.nonzero(reference[k])
        ijkToRas = SegmentWithSAM2Logic._matrix(volume.GetIJKToRASMatrix)
        cornerA = (ijkToRas @ [ii.min(), jj.min(), k, 1])[:3]
        cornerB = (ijkToRas @ [ii.max(), jj.max(), k, 1])[:3]

        logic = SegmentWithSAM2Logic()
        params = logic.getParameterNode()
        params.inputVolume = volume
        from SegmentWithSAM2Lib import dependencies

        if dependencies.missing():
            params.engine = "baseline"
        else:
            from sam2volume.models.weights import WeightsManager

            if WeightsManager().status(MODELS[params.model]) != "downloaded":
                params.engine = "baseline"
        seg, segmentId = logic.prepareSegmentation(volume)
        red = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        red.JumpSliceByCentering(*((cornerA + cornerB) / 2))
        errors = []
        job = logic.submitBox(volume, seg, segmentId, cornerA, cornerB, red, params, onError=errors.append)
        self._wait(logic, job)
        self.assertEqual(errors, [])
        job = logic.submitPropagate(volume, seg, params, onError=errors.append)
        self._wait(logic, job)
        self.assertEqual(errors, [])
        result = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segmentId, volume) > 0
        dice = 2 * np.logical_and(result, reference).sum() / (result.sum() + reference.sum())
        self.delayDisplay(f"{params.engine}: Dice {dice:.3f} against the lung air reference")
        self.assertGreater(dice, 0.8)
        logic.worker.stop()
