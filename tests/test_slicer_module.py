"""The Slicer module's geometry (plain numpy, with real slice nodes from slicer-core for the views), the
developer install, the dependency list, and the consistency of the .ui file and the CMake lists with
the code. The logic, controller and write-back are tested on Slicer's libraries in test_slicer_logic.py.
"""

import ast
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "SegmentWithSAM2"
sys.path.insert(0, str(MODULE))

import slicer_scene as sc  # noqa: E402
from SegmentWithSAM2Lib import dependencies  # noqa: E402
from SegmentWithSAM2Lib.geometry import changed_runs, view_slice, volume_from_slicer, world_to_ijk  # noqa: E402

from sam2volume import InputError, read_labelmap, read_volume  # noqa: E402

def slice_to_ras(view, centre_ras):
    """SliceToRAS of a real slice node of this view (slicer-core), centred on ``centre_ras``."""
    import slicer

    return slicer.util.arrayFromVTKMatrix(sc.slice_node(view, centre_ras).GetSliceToRAS())


@pytest.fixture(autouse=True)
def scene():
    return sc.fresh_scene()


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


def _module_source():
    return (MODULE / "SegmentWithSAM2.py").read_text()


def test_every_widget_the_code_uses_is_in_the_ui_file_and_parameters_match():
    ui = ET.parse(MODULE / "Resources/UI/SegmentWithSAM2.ui")
    names = {w.get("name") for w in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", _module_source()))
    assert used - names == set()
    bound = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    tree = ast.parse(_module_source())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SegmentWithSAM2ParameterNode")
    fields = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    assert bound == fields  # every parameter has a widget and every bound widget a parameter
    classes = {w.get("class") for w in ui.iter("widget")}
    declared = {c.find("class").text for c in ui.iter("customwidget")}
    assert {c for c in classes if c.startswith(("ctk", "qMRML", "qSlicer"))} <= declared


def test_bounded_parameters_match_their_spin_boxes_and_the_settings():
    """Each int parameter with a WithinRange (stopAfter, encodeAhead) has the range and default of the
    spin box bound to it, and the logic's Settings the same default."""
    from SegmentWithSAM2Lib.engine_link import Settings

    ui = ET.parse(MODULE / "Resources/UI/SegmentWithSAM2.ui")
    boxes = {}
    for w in ui.iter("widget"):
        props = {p.get("name"): p for p in w.findall("property")}
        if w.get("class") == "QSpinBox" and "SlicerParameterName" in props:
            number = {k: int(props[k].find("number").text) for k in ("minimum", "maximum", "value") if k in props}
            name = props["SlicerParameterName"].find("string").text
            boxes[name] = (number.get("minimum", 0), number["maximum"], number.get("value", 0))
    tree = ast.parse(_module_source())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SegmentWithSAM2ParameterNode")
    bounded = {}
    for n in cls.body:
        ann = n.annotation if isinstance(n, ast.AnnAssign) else None
        if isinstance(ann, ast.Subscript) and ast.unparse(ann).startswith("Annotated[int, WithinRange("):
            lo, hi = (ast.literal_eval(a) for a in ann.slice.elts[1].args)
            bounded[n.target.id] = (lo, hi, ast.literal_eval(n.value))
    assert {"stopAfter", "encodeAhead"} <= set(bounded)
    assert bounded == boxes
    for name, (_, _, default) in bounded.items():
        assert Settings.__dataclass_fields__[name].default == default, name


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


def test_dependencies_are_the_ones_the_project_installs_with_bounds():
    assert dependencies.problems(dependencies.PACKAGES) == []  # everything local mode needs is usable here
    assert dependencies.needed("remote", "sam2") == []  # remote mode: no torch in Slicer
    assert dependencies.TORCH not in dependencies.needed("local", "baseline")
    setup = (ROOT / "scripts/setup_env.sh").read_text()
    sam2 = next(p for p in dependencies.PACKAGES if p.module == "sam2")
    assert f'"{sam2.requirement}"' in setup and sam2.options == "--no-deps"
    assert all(any(op in p.requirement for op in (">=", "==")) for p in dependencies.PACKAGES)  # version bounds
    assert "torchvision" not in " ".join(p.requirement for p in dependencies.PACKAGES)
    fake = dependencies.Package("numpy", "numpy<1")  # installed, but outside the bounds
    assert dependencies.problems([fake])[0][1].startswith("version")
    source = (MODULE / "SegmentWithSAM2.py").read_text()
    enter = source[source.index("    def enter(self)"):source.index("    def exit(self)")]
    assert "checkDependencies" in enter  # checked on module entry ...
    for handler in ("onPromptEvents", "onPropagate"):  # ... never inside a click handler
        body = source[source.index(f"    def {handler}("):]
        body = body[:body.index("\n    def ", 10)]
        assert "checkDependencies" not in body and "install" not in body


def test_developer_install_with_only_the_module_folder_imports_sam2volume_from_core(tmp_path):
    """Bug 9: adding core/ to Slicer's module paths never put it on sys.path. Slicer puts the module's
    folder on sys.path; here a Python without site's .pth files (so without the editable install of
    sam2volume) gets only that folder and the site-packages, and imports the module's logic."""
    import sysconfig

    code = (
        "import sys; sys.path[:0] = [sys.argv[1]]; sys.path.append(sys.argv[2]);"
        "import SegmentWithSAM2Lib.logic, sam2volume; print(sam2volume.__file__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-S", "-c", code, str(MODULE), sysconfig.get_paths()["purelib"]],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()).resolve() == (ROOT / "core/sam2volume/__init__.py").resolve()
