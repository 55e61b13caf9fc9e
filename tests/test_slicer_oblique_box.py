"""Issue 20 item 5: a box drawn in a slice view on a volume rotated in-plane (oblique MR) reaches the
engine as drawn, on Slicer's real libraries (slicer-core) and a real engine server.

The volume is the shared MR loaded by Slicer's storage node, its IJK-to-RAS then rotated 10 or 20
degrees about its slice normal (an oblique acquisition). The box is placed with two clicks in the
red view, as the markups place widget does: the ROI keeps Slicer's default orientation (RAS axes),
or is first rotated to the volume's axes. The box the session sends is read back through the
session's own frame-to-voxel mapping and compared with the drawn rectangle's corners, projected
into the volume's voxels by this test (not by the module's code).
"""

from __future__ import annotations

import numpy as np
import pytest

import slicer_scene as sc  # noqa: E402  (puts the module folder on sys.path)
import slicer  # noqa: E402

from SegmentWithSAM2Lib.engine_link import Settings  # noqa: E402
from SegmentWithSAM2Lib.logic import SegmentWithSAM2Logic  # noqa: E402

BASELINE = Settings(mode="local", engine="baseline", device="cpu", window="auto", stopAfter=3)
SIDES_VOXELS = (40.0, 20.0)  # the drawn box: 40 x 20 voxels (800 voxel^2), 3 mm voxels


@pytest.fixture(scope="module")
def link():
    lk = sc.engine_link()
    yield lk
    lk.stop()


def rotation_about_s(degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    r = np.eye(4)
    r[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return r


def rotated_mr(totalseg, degrees: float):
    """The shared MR (axial slices, k along S) with its voxels rotated in-plane about the volume's centre."""
    sc.fresh_scene()
    node = sc.load_volume(totalseg / "example_mr_sm.nii.gz", "mr")
    m = sc.ijk_to_ras(node)
    centre = sc.ras_of(node, (np.array(node.GetImageData().GetDimensions()) - 1) / 2.0)
    about = np.eye(4)
    about[:3, 3] = centre
    back = np.eye(4)
    back[:3, 3] = -centre
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(about @ rotation_about_s(degrees) @ back @ m))
    return node


def place_box(roi_axes: np.ndarray, centre_ras: np.ndarray, sides_mm: tuple[float, float]):
    """Two clicks on opposite corners in the slice plane, as the place widget adds them; ``roi_axes``
    (4x4) is the ROI's orientation when placing starts (identity: Slicer's default)."""
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.GetObjectToNodeMatrix().DeepCopy(slicer.util.vtkMatrixFromArray(roi_axes))
    a, b = roi_axes[:3, 0], roi_axes[:3, 1]
    half = np.array(sides_mm) / 2
    drawn = np.array([centre_ras + sa * half[0] * a + sb * half[1] * b for sa in (-1, 1) for sb in (-1, 1)])
    roi.AddControlPointWorld(*drawn[0])
    roi.AddControlPointWorld(*drawn[3])
    return roi, drawn


@pytest.mark.parametrize("degrees", [10.0, 20.0, 0.0])
@pytest.mark.parametrize("orientation", ["default", "volume"])
def test_a_box_on_a_volume_rotated_in_plane_is_sent_as_drawn(totalseg, link, degrees, orientation):
    volume = rotated_mr(totalseg, degrees)
    m = sc.ijk_to_ras(volume)
    spacing = float(np.linalg.norm(m[:3, 0]))
    k = 10
    centre = sc.ras_of(volume, [58, 45, k])
    red = sc.slice_node("Red", centre)
    axes = rotation_about_s(degrees) if orientation == "volume" else np.eye(4)
    roi, drawn = place_box(axes, centre, (SIDES_VOXELS[0] * spacing, SIDES_VOXELS[1] * spacing))

    logic = SegmentWithSAM2Logic(link=link)
    try:
        seg, sid = logic.prepareSegmentation(volume)
        assert logic.addBox(volume, seg, sid, roi, red, BASELINE) is not None
        c = logic.controllers[(volume.GetID(), seg.GetID())]
        # what the session sends: (slice, x0, y0, x1, y1) in frame pixels, back in the volume's voxels
        s, x0, y0, x1, y1 = c.session.box_on_slice(c.prompts[-1].ijk)
        sent = c.session.frame_to_voxel(s, [(x0, y0), (x1, y1)])
    finally:
        logic.reset()
    sent_lo, sent_hi = sent.min(axis=0), sent.max(axis=0)
    assert np.allclose(sent[:, 2], k)

    drawn_ijk = (np.c_[drawn, np.ones(4)] @ np.linalg.inv(m).T)[:, :3]
    want = drawn_ijk.max(axis=0)[:2] - drawn_ijk.min(axis=0)[:2]  # the drawn rectangle's extent along i and j
    got = (sent_hi - sent_lo)[:2]
    assert np.all(np.abs(got - want) <= 1.0), f"sent {got} voxels, drawn spans {want} ({degrees} degrees, {orientation} ROI)"
    # nothing drawn is cut off
    assert np.all(drawn_ijk[:, :2] >= sent_lo[:2] - 0.5) and np.all(drawn_ijk[:, :2] <= sent_hi[:2] + 0.5)
    if orientation == "volume" or degrees == 0.0:
        # the box drawn along the volume's own axes: the area sent is the area drawn, within a voxel
        area = float(np.prod(got))
        drawn_area = SIDES_VOXELS[0] * SIDES_VOXELS[1]
        assert abs(area - drawn_area) <= SIDES_VOXELS[0] + SIDES_VOXELS[1] + 1, (area, drawn_area)
