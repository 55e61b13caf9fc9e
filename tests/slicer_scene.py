"""Slicer's real libraries for the module tests (PyPI ``slicer-core``: MRML scene, nodes, module logics).

``slicer-core`` has no Qt and no ``slicer.app``; :func:`fresh_scene` sets ``slicer.mrmlScene`` and
registers the module logics ``slicer.util`` reaches through ``slicer.modules`` (segmentations,
volumes, colors), as Slicer's application does at start-up. Nothing here imitates Slicer.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "SegmentWithSAM2"
if str(MODULE) not in sys.path:
    sys.path.insert(0, str(MODULE))

import slicer  # noqa: E402
import vtk  # noqa: E402

# default slice orientations (vtkMRMLSliceNode::SetOrientationToAxial/Sagittal/Coronal)
VIEWS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}


def fresh_scene():
    """A new scene as ``slicer.mrmlScene`` with the segmentations, volumes and colors logics."""
    vtk.vtkObject.GlobalWarningDisplayOff()  # slicer-core logs missing GUI logics (application logic) loudly
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)  # as the application does
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLScene(scene)
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLScene(scene)
    ns = types.SimpleNamespace
    slicer.modules = ns(segmentations=ns(logic=lambda: segmentations), volumes=ns(logic=lambda: volumes),
                        colors=ns(logic=lambda: colors))
    return scene


def load_volume(path: Path, name: str = "volume"):
    """A volume loaded by Slicer's own storage node (vtkMRMLVolumeArchetypeStorageNode)."""
    node = slicer.modules.volumes.logic().AddArchetypeVolume(str(path), name)
    assert node is not None, f"Slicer could not read {path}"
    return node


def slice_node(view: str = "Red", centre_ras=(0.0, 0.0, 0.0), rotate_degrees: float = 0.0, rotate_axis: int = 0):
    """A real slice node of one of the default views, through ``centre_ras``, optionally tilted."""
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode", view)
    node.SetLayoutName(view)
    getattr(node, f"SetOrientationTo{VIEWS[view]}")()
    if rotate_degrees:
        m = slicer.util.arrayFromVTKMatrix(node.GetSliceToRAS())
        t = vtk.vtkTransform()
        t.RotateWXYZ(rotate_degrees, *np.eye(3)[rotate_axis])
        r = slicer.util.arrayFromVTKMatrix(t.GetMatrix())
        m[:3, :3] = r[:3, :3] @ m[:3, :3]
        node.GetSliceToRAS().DeepCopy(slicer.util.vtkMatrixFromArray(m))
        node.UpdateMatrices()
    node.JumpSliceByCentering(*[float(v) for v in centre_ras])
    return node


def ijk_to_ras(volumeNode) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def ras_of(volumeNode, ijk) -> np.ndarray:
    return (ijk_to_ras(volumeNode) @ np.r_[np.asarray(ijk, float), 1.0])[:3]


def segment_array(segmentationNode, segmentId, volumeNode) -> np.ndarray:
    """The segment on the volume's grid, [k, j, i] bool, through Slicer's own export."""
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0


def result_kji(mask_ijk: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(mask_ijk).transpose(2, 1, 0))


def engine_link():
    """The module's engine link for tests: a local server started with this Python, CPU, SAM2 models
    with random weights at 128 px allowed (no checkpoint can be downloaded here)."""
    from SegmentWithSAM2Lib.engine_link import EngineLink

    return EngineLink(python=sys.executable, allow_random_weights=True,
                      config_overrides={"image_size": 128, "random_weights": True, "seed": 0})
