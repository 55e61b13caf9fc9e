"""The module's self-test, without Qt and without network: a phantom it builds, a box, a propagation.

Slicer's ``SegmentWithSAM2Test`` runs it (Reload and Test, ctest); the repository's tests run it on
slicer-core. The phantom is a CT-like volume (soft tissue at 40 HU with noise, an ellipsoid organ at
140 HU on a 2.5 mm slice grid, an oblique direction matrix); the reference is the ellipsoid. The
classical baseline engine needs no weights, so nothing is downloaded.

It needs the local engine server's packages (FastAPI, uvicorn, SciPy) in Slicer's Python, which a fresh
Slicer or an extension build machine lacks: :func:`run_self_test` then offers to install them (with the
user's consent, in the GUI only) or skips with a message saying what is missing, never failing for that
and never installing anything in ctest (``--testing``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import slicer

from . import dependencies
from .engine_link import Settings
from .logic import SegmentWithSAM2Logic, matrix

SHAPE_KJI = (36, 90, 100)
SETTINGS = Settings(mode="local", engine="baseline", window="abdomen")  # what the self-test runs with


def phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(voxels [k, j, i] int16, reference organ mask, IJK-to-RAS) of the test phantom."""
    rng = np.random.default_rng(7)
    k, j, i = np.meshgrid(*[np.arange(n) for n in SHAPE_KJI], indexing="ij")
    organ = ((i - 52) / 30.0) ** 2 + ((j - 44) / 22.0) ** 2 + ((k - 17) / 11.0) ** 2 <= 1.0
    body = ((i - 50) / 47.0) ** 2 + ((j - 45) / 42.0) ** 2 <= 1.0
    arr = np.where(body, 40, -1000) + rng.normal(0, 12, SHAPE_KJI)
    arr[organ] = 140 + rng.normal(0, 12, int(organ.sum()))
    m = np.eye(4)
    m[:3, :3] = np.diag([0.8, 0.8, 2.5])
    m[:3, :3] = np.array([[-1, 0, 0], [0, -1, 0], [0, 0, 1]]) @ m[:3, :3]  # LPS-stored, as DICOM often is
    m[:3, 3] = [40.0, 35.0, -60.0]
    return arr.astype(np.int16), organ, m


def axial_slice_node(scene):
    """The red view's slice node (Slicer's own), or one made like it where there is no layout."""
    node = scene.GetNodeByID("vtkMRMLSliceNodeRed")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSliceNode", "Red")
        node.SetLayoutName("Red")
        node.SetOrientationToAxial()
    return node


def run(logic: SegmentWithSAM2Logic | None = None, settings: Settings | None = None,
        show: Callable[[str], None] | None = None, timeout: float = 300.0) -> float:
    """Prompt a box on the phantom's middle slice, propagate, return the Dice against the organ."""
    show = show or (lambda text: None)
    logic = logic or SegmentWithSAM2Logic()
    settings = settings or SETTINGS
    arr, organ, ijk_to_ras = phantom()
    volume = slicer.util.addVolumeFromArray(arr, slicer.util.vtkMatrixFromArray(ijk_to_ras), "SAM2 self-test phantom")
    show("phantom volume created")
    segmentation, segmentId = logic.prepareSegmentation(volume, None, "organ")
    ks = np.flatnonzero(organ.any(axis=(1, 2)))
    k = int(ks[len(ks) // 2])
    jj, ii = np.nonzero(organ[k])
    m = matrix(volume.GetIJKToRASMatrix)
    corner_a = (m @ [ii.min(), jj.min(), k, 1])[:3]
    corner_b = (m @ [ii.max(), jj.max(), k, 1])[:3]
    red = axial_slice_node(slicer.mrmlScene)
    red.JumpSliceByCentering(*((corner_a + corner_b) / 2))
    roi = logic.prompts.get("box")
    roi.AddControlPointWorld(*corner_a)
    roi.AddControlPointWorld(*corner_b)  # the second click completes the box
    if logic.addBox(volume, segmentation, segmentId, roi, red, settings) is None:
        raise AssertionError("the box prompt was not taken")
    show(f"box on slice {k}: mask shown")
    errors: list[str] = []
    logic.startPropagation(volume, segmentation, settings, onError=errors.append)
    task = logic.wait(timeout)
    if errors or task is None or task.error:
        raise AssertionError(f"propagation failed: {errors or task.error}")
    result = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume) > 0
    dice = 2 * float(np.logical_and(result, organ).sum()) / float(result.sum() + organ.sum())
    show(f"{settings.engine}: Dice {dice:.3f} against the phantom's organ")
    return dice


def skip_reason(settings: Settings = SETTINGS) -> str | None:
    """Why the self-test cannot run in this Python (the packages local mode lacks), or None."""
    found = dependencies.problems(dependencies.needed(settings.mode, settings.engine))
    if not found:
        return None
    return (f"SegmentWithSAM2 self-test skipped: the local engine server needs {dependencies.describe(found)} in "
            "Slicer's Python; install them from the module (it offers to on entry) or use remote mode")


def run_self_test(logic: SegmentWithSAM2Logic | None = None, *, show: Callable[[str], None] | None = None,
                  skip: Callable[[str], None] | None = None, interactive: bool = False,
                  install: Callable[[list], bool] | None = None, settings: Settings = SETTINGS) -> float | None:
    """The module's self-test (``SegmentWithSAM2Test``): :func:`run`'s Dice, or None when skipped.

    Where packages are missing, ``interactive`` (the GUI, never ctest) asks the user to install them
    (``install``, default :func:`dependencies.install`, which asks first); otherwise, or when declined,
    the reason is shown and passed to ``skip`` (unittest's ``skipTest`` in ctest, which raises)."""
    show = show or (lambda text: None)
    reason = skip_reason(settings)
    if reason and interactive:
        found = dependencies.problems(dependencies.needed(settings.mode, settings.engine))
        if (install or dependencies.install)(found):
            reason = skip_reason(settings)
    if reason:
        show(reason)
        if skip is not None:
            skip(reason)
        return None
    return run(logic, settings, show)
