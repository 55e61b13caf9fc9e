"""The Slicer module's parts that run without Slicer: geometry, view -> axis, changed-slice write-back,
the worker thread, and the consistency of the .ui file and the CMake lists with the code.

Slicer's own conventions are reproduced from its source: ``arrayFromVolume`` is indexed [k, j, i];
a volume's IJK-to-RAS matrix is nibabel's affine; the default slice views' SliceToRAS rotations are
Red (axial) [[-1,0,0],[0,1,0],[0,0,1]], Yellow (sagittal) [[0,0,1],[-1,0,0],[0,1,0]] and Green
(coronal) [[-1,0,0],[0,0,1],[0,1,0]] (vtkMRMLSliceNode::SetOrientationToAxial/Sagittal/Coronal).
"""

import ast
import re
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "SegmentWithSAM2"
sys.path.insert(0, str(MODULE))

from SegmentWithSAM2Lib import dependencies  # noqa: E402
from SegmentWithSAM2Lib.controller import SegmentationController  # noqa: E402
from SegmentWithSAM2Lib.geometry import changed_runs, view_slice, volume_from_slicer, world_to_ijk  # noqa: E402
from SegmentWithSAM2Lib.worker import Job, Worker  # noqa: E402

from sam2volume import InputError, read_labelmap, read_volume  # noqa: E402

ROTATIONS = {
    "Red": np.array([[-1, 0, 0], [0, 1, 0], [0, 0, 1]], float),
    "Yellow": np.array([[0, 0, 1], [-1, 0, 0], [0, 1, 0]], float),
    "Green": np.array([[-1, 0, 0], [0, 0, 1], [0, 1, 0]], float),
}


def slice_to_ras(view, centre_ras):
    m = np.eye(4)
    m[:3, :3] = ROTATIONS[view]
    m[:3, 3] = centre_ras
    return m


def rotation(axis, degrees, shift=(0, 0, 0)):
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    r = {"S": [[c, -s, 0], [s, c, 0], [0, 0, 1]], "R": [[1, 0, 0], [0, c, -s], [0, s, c]]}[axis]
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = shift
    return m


def as_slicer(vol):
    """What Slicer hands the module for a volume loaded from this file: arrayFromVolume and IJKToRAS."""
    return np.ascontiguousarray(vol.array.transpose(2, 1, 0)), vol.ijk_to_ras


@pytest.fixture(scope="module", params=[("example_ct_sm.nii.gz", "example_seg.nii.gz"), ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz")])
def real(request, totalseg):
    vol = read_volume(totalseg / request.param[0])
    return vol, read_labelmap(totalseg / request.param[1], reference=vol)


def test_volume_from_slicer_arrays_keeps_voxels_and_geometry(real):
    vol, _ = real
    back = volume_from_slicer(*as_slicer(vol))
    assert back.same_grid(vol) and np.array_equal(back.array, vol.array)
    assert np.allclose(back.ijk_to_ras, vol.ijk_to_ras)


def test_world_points_reach_the_right_voxel_through_a_parent_transform(real):
    vol, _ = real
    ijk = np.array([[10.0, 20.0, 5.0], [30.0, 7.0, 12.0]])
    local = (np.c_[ijk, np.ones(2)] @ vol.ijk_to_ras.T)[:, :3]
    parent = rotation("S", 30, (12, -7, 40))  # local -> world
    world = (np.c_[local, np.ones(2)] @ parent.T)[:, :3]
    assert np.allclose(world_to_ijk(world, vol.ijk_to_ras, np.linalg.inv(parent)), ijk)
    assert np.allclose(world_to_ijk(local, vol.ijk_to_ras), ijk)


def test_view_gives_the_session_axis_and_the_slice(real):
    from sam2volume.baseline import BaselineSession

    vol, _ = real
    ijk = np.array([40.0, 35.0, 9.0])
    centre = (vol.ijk_to_ras @ np.r_[ijk, 1])[:3]
    for view, axis in (("Red", "axial"), ("Yellow", "sagittal"), ("Green", "coronal")):
        vs = view_slice(slice_to_ras(view, centre), vol, vol.ijk_to_ras)
        session = BaselineSession(vol, axis)
        assert vs.axis == axis and vs.index == int(ijk[vs.voxel_axis])
        # the voxel axis the view cuts is the session's slice axis in the input's own array
        assert session.voxel_axis == vs.voxel_axis
    # volume rotated 90 degrees about R by its parent transform: the red (axial) view shows its coronal plane
    parent = rotation("R", 90)
    centre_world = (parent @ np.r_[centre, 1])[:3]
    assert view_slice(slice_to_ras("Red", centre_world), vol, vol.ijk_to_ras, np.linalg.inv(parent)).axis == "coronal"
    parent = rotation("S", 90)  # about S: axial stays axial
    centre_world = (parent @ np.r_[centre, 1])[:3]
    assert view_slice(slice_to_ras("Red", centre_world), vol, vol.ijk_to_ras, np.linalg.inv(parent)).axis == "axial"
    oblique = slice_to_ras("Red", centre)
    oblique[:3, :3] = rotation("R", 30)[:3, :3] @ oblique[:3, :3]
    with pytest.raises(InputError, match="oblique"):
        view_slice(oblique, vol, vol.ijk_to_ras)


def test_changed_runs():
    old = np.zeros((4, 5, 6), bool)
    new = old.copy()
    new[:, :, 1] = True
    new[:, :, 3:5] = True
    assert changed_runs(old, new, 2) == [(1, 1), (3, 4)]
    assert changed_runs(None, new, 0) == [(0, 3)]
    assert changed_runs(new, new, 1) == []


def apply(target_kji, updates):
    """Test double for Slicer's write-back (SetBinaryLabelmapToSegment with MODE_REPLACE over the slab extent)."""
    for u in updates:
        index = [slice(None)] * 3
        index[2 - u.voxel_axis] = slice(u.first, u.last + 1)  # [k, j, i] order
        target_kji[u.segment_id][tuple(index)] = u.mask_kji


def test_controller_prompts_propagates_corrects_and_writes_only_changed_slices(totalseg):
    ct = read_volume(totalseg / "example_ct_sm.nii.gz")
    lab = read_labelmap(totalseg / "example_seg.nii.gz", reference=ct)
    array_kji, ijk_to_ras = as_slicer(ct)
    before = array_kji.copy()
    liver = lab.array == 5
    k = 14
    ii, jj = np.nonzero(liver[:, :, k])
    corners = [(ijk_to_ras @ [i, j, k, 1])[:3] for i, j in ((ii.min(), jj.min()), (ii.max(), jj.max()))]
    ctrl = SegmentationController(array_kji, ijk_to_ras, engine="baseline", window="abdomen", modality="CT")
    u = ctrl.add_box("Segment_1", corners[0], corners[1], slice_to_ras("Red", corners[0]))
    assert (u.voxel_axis, u.first, u.last) == (2, k, k) and u.mask_kji.shape == (1, ct.shape[1], ct.shape[0])
    overlap = np.logical_and(u.mask_kji[0].T, liver[:, :, k]).sum() / liver[:, :, k].sum()
    assert overlap > 0.8  # the 2D mask is on the liver, in Slicer's array layout
    written = {"Segment_1": np.zeros(array_kji.shape, bool)}
    apply(written, [u])
    updates = ctrl.propagate("both", stop_after=3)
    assert updates and all(x.voxel_axis == 2 for x in updates)
    assert not any(x.first <= k <= x.last for x in updates)  # the prompted slice did not change again
    apply(written, updates)
    assert np.array_equal(written["Segment_1"], (ctrl.session.result().array == 1).transpose(2, 1, 0))
    # a correction far from the prompt: only slices near it may change
    far = 20
    bad = np.argwhere(written["Segment_1"][far].T & ~liver[:, :, far])
    if len(bad):
        i, j = bad[len(bad) // 2]
        p = (ijk_to_ras @ [i, j, far, 1])[:3]
        apply(written, [ctrl.add_points("Segment_1", [p], [False], slice_to_ras("Red", p))])
        fixes = ctrl.propagate("forward")
        assert all(x.first >= far for x in fixes)
        apply(written, fixes)
        assert np.array_equal(written["Segment_1"], (ctrl.session.result().array == 1).transpose(2, 1, 0))
    # the same clicks under a parent transform give the same result
    parent = rotation("S", 25, (5, 9, -3))
    ctrl2 = SegmentationController(array_kji, ijk_to_ras, engine="baseline", window="abdomen", modality="CT")
    w = [(parent @ np.r_[c, 1])[:3] for c in corners]
    u2 = ctrl2.add_box("Segment_1", w[0], w[1], slice_to_ras("Red", w[0]) @ np.eye(4), np.linalg.inv(parent))
    assert np.array_equal(u2.mask_kji, u.mask_kji)
    # a second segment is a second object; prompts in another orientation are refused with the fix
    with pytest.raises(InputError, match="axial views.*Reset"):
        ctrl.add_points("Segment_2", [corners[0]], [True], slice_to_ras("Green", corners[0]))
    with pytest.raises(InputError, match="no prompts yet"):
        ctrl.propagate(segment_ids=["Segment_9"])
    assert np.array_equal(array_kji, before)  # the input volume is never modified


def test_worker_runs_jobs_on_one_thread_and_survives_failures(totalseg):
    worker = Worker()
    seen, errors, progress = [], [], []
    try:
        for n in range(3):
            worker.submit(Job(lambda n=n: (n, threading.get_ident()), on_done=seen.append))

        def boom():
            raise MemoryError("CUDA out of memory")

        worker.submit(Job(boom, on_error=lambda msg, exc: errors.append(msg), name="propagate"))
        worker.submit(Job(lambda: "after", on_done=seen.append))

        def slow(progress=None, cancel=None):
            for i in range(200):
                if cancel.is_set():
                    return "cancelled"
                progress(i + 1, 200)
                time.sleep(0.01)
            return "finished"

        worker.submit(Job(slow, on_done=seen.append, on_progress=lambda d, t: progress.append(d)))
        deadline = time.time() + 20
        while time.time() < deadline and not progress:
            worker.poll()
            time.sleep(0.01)
        worker.cancel_all()
        while time.time() < deadline and (worker.busy or len(seen) < 5):
            worker.poll()
            time.sleep(0.01)
        worker.poll()
        assert [s[0] for s in seen[:3]] == [0, 1, 2] and len({s[1] for s in seen[:3]}) == 1
        assert seen[0][1] == worker.thread_id != threading.get_ident()  # model work off the GUI thread
        assert seen[3] == "after" and seen[4] == "cancelled" and progress
        assert "out of memory" in errors[0] and errors[0].startswith("propagate")
    finally:
        worker.stop()


def _module_source():
    return (MODULE / "SegmentWithSAM2.py").read_text()


def test_every_widget_the_code_uses_is_in_the_ui_file_and_parameters_match():
    ui = ET.parse(MODULE / "Resources/UI/SegmentWithSAM2.ui")
    names = {w.get("name") for w in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", _module_source()))
    used |= {f"{k}PlaceWidget" for k in ("positive", "negative", "box")}  # reached through getattr
    assert used - names == set()
    bound = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    tree = ast.parse(_module_source())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SegmentWithSAM2ParameterNode")
    fields = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    assert bound == fields  # every parameter has a widget and every bound widget a parameter
    classes = {w.get("class") for w in ui.iter("widget")}
    declared = {c.find("class").text for c in ui.iter("customwidget")}
    assert {c for c in classes if c.startswith(("ctk", "qMRML", "qSlicer"))} <= declared


def _cmake_list(path, var):
    text = path.read_text()
    block = re.search(rf"set\({var}\n(.*?)\n\s*\)", text, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_cmake_lists_every_module_file_and_resource():
    scripts = [s.replace("${MODULE_NAME}", "SegmentWithSAM2") for s in _cmake_list(MODULE / "CMakeLists.txt", "MODULE_PYTHON_SCRIPTS")]
    resources = [s.replace("${MODULE_NAME}", "SegmentWithSAM2") for s in _cmake_list(MODULE / "CMakeLists.txt", "MODULE_PYTHON_RESOURCES")]
    py = sorted(str(p.relative_to(MODULE)) for p in MODULE.rglob("*.py") if "Testing" not in p.parts and "__pycache__" not in p.parts)
    assert sorted(scripts) == py
    assert sorted(resources) == sorted(str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file())
    core = _cmake_list(ROOT / "core/CMakeLists.txt", "SAM2VOLUME_PYTHON_SCRIPTS")
    pkg = sorted(str(p.relative_to(ROOT / "core")) for p in (ROOT / "core/sam2volume").rglob("*.py") if "__pycache__" not in p.parts)
    assert sorted(core) == pkg
    top = (ROOT / "CMakeLists.txt").read_text()
    assert "add_subdirectory(SegmentWithSAM2)" in top and "add_subdirectory(core)" in top and 'EXTENSION_DEPENDS "PyTorch"' in top
    for sub in ("Testing/CMakeLists.txt", "Testing/Python/CMakeLists.txt"):
        assert (MODULE / sub).is_file()


def test_dependencies_are_the_ones_the_project_installs():
    assert dependencies.missing() == []  # everything the module needs is importable here
    setup = (ROOT / "scripts/setup_env.sh").read_text()
    sam2_req = next(req for name, req, _ in dependencies.PACKAGES if name == "sam2")
    assert f'"{sam2_req}"' in setup
    assert "torchvision" not in " ".join(req for _, req, _ in dependencies.PACKAGES)
