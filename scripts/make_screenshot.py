"""Make the extension's screenshot from Slicer's own slice rendering of a segment the module made.

Runs on PyPI ``slicer-core`` (Slicer's MRML scene, slice logic and segmentation displayable manager;
no Qt) with VTK's off-screen render window (EGL, or X when a display is set). The CT is the shared
TotalSegmentator example (``../shared/data/totalseg/example_ct_sm.nii.gz``), loaded by Slicer's own
storage node; the liver segment is made by the module's logic (``SegmentWithSAM2Logic``) with the
baseline engine in a local engine server: one box prompt on an axial slice, then propagation through
the volume. The box is placed from the reference labels' extent of the liver on that slice, as a
user would draw it around the organ. The picture shows the axial slice view of the prompt (left) and the
sagittal and coronal views through the box's centre (right), each fitted to the volume as Slicer fits them.

Usage (from the repository root)::

    .venv/bin/python scripts/make_screenshot.py [-o Screenshots/slice_views.png] [--data ../shared/data]

The PNG is written to a temporary file beside the output, then renamed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "Screenshots" / "slice_views.png"
GAP = 4  # white pixels between the views
AXIAL_SIZE = (400, 400)  # (width, height) pixels; the sagittal and coronal views share the right column
SIDE_SIZE = (400, (AXIAL_SIZE[1] - GAP) // 2)
LIVER = 5  # TotalSegmentator ct_total id (labels.json)
PROMPT_SLICE = 14  # axial slice (k) of the box prompt


def _setup_paths() -> None:
    for p in (ROOT / "tests", ROOT / "SegmentWithSAM2"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))


def make_segment(data: Path):
    """Scene with the CT and the module's liver segment: (ct node, segmentation node, box centre RAS)."""
    _setup_paths()
    import slicer
    import slicer_scene as sc
    from SegmentWithSAM2Lib.engine_link import EngineLink, Settings
    from SegmentWithSAM2Lib.logic import SegmentWithSAM2Logic
    from sam2volume import read_labelmap, read_volume

    ct_path = data / "totalseg" / "example_ct_sm.nii.gz"
    if not ct_path.is_file():
        raise SystemExit(f"make_screenshot: {ct_path} not found; pass --data with the folder that holds totalseg/")
    sc.fresh_scene()
    ct = sc.load_volume(ct_path, "CT")
    labels = read_labelmap(data / "totalseg" / "example_seg.nii.gz", reference=read_volume(ct_path)).array  # [i, j, k]
    ii, jj = np.nonzero(labels[:, :, PROMPT_SLICE] == LIVER)
    corners = [sc.ras_of(ct, [ii.min(), jj.min(), PROMPT_SLICE]), sc.ras_of(ct, [ii.max(), jj.max(), PROMPT_SLICE])]
    centre = (corners[0] + corners[1]) / 2

    settings = Settings(mode="local", engine="baseline", device="cpu", window="abdomen")
    logic = SegmentWithSAM2Logic(link=EngineLink(python=sys.executable))
    try:
        seg, liver = logic.prepareSegmentation(ct, None, "liver")
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
        for c in corners:  # two clicks, as the markups place widget adds them
            roi.AddControlPointWorld(*c)
        prompt_view = sc.slice_node("Red", centre)
        if logic.addBox(ct, seg, liver, roi, prompt_view, settings) is None:
            raise SystemExit("make_screenshot: the module did not take the box prompt")
        logic.startPropagation(ct, seg, settings)
        task = logic.wait(300)
        if task is None or task.error is not None:
            raise SystemExit(f"make_screenshot: propagation failed: {getattr(task, 'error', 'timed out')}")
        slicer.mrmlScene.RemoveNode(prompt_view)
    finally:
        logic.close()  # ends the engine session and stops the local server
    return ct, seg, centre


def render_view(scene, app_logic, layout_name: str, orientation: str, size, volume, centre) -> np.ndarray:
    """One slice view as Slicer draws it: the slice logic's blended volume layers as the background
    image and the segmentations displayable manager's 2D fill and outline. [rows, cols, RGB] uint8."""
    import slicer
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(app_logic)
    logic.SetMRMLScene(scene)
    node = logic.AddSliceNode(layout_name)
    getattr(node, f"SetOrientationTo{orientation}")()
    logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume.GetID())

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    renderer = vtk.vtkRenderer()
    renderer.GetActiveCamera().ParallelProjectionOn()
    window.AddRenderer(renderer)
    interactor = vtk.vtkGenericRenderWindowInteractor()  # displayable managers observe the view's interactor
    interactor.SetRenderWindow(window)
    mapper = vtk.vtkImageMapper()  # the slice logic's output is RGBA 0..255 already windowed
    mapper.SetColorWindow(255)
    mapper.SetColorLevel(127.5)
    mapper.SetInputConnection(logic.GetImageDataConnection())
    actor = vtk.vtkActor2D()
    actor.SetMapper(mapper)
    actor.GetProperty().SetDisplayLocationToBackground()
    renderer.AddViewProp(actor)

    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(app_logic)
    if not factory.IsDisplayableManagerRegistered("vtkMRMLSegmentationsDisplayableManager2D"):
        factory.RegisterDisplayableManager("vtkMRMLSegmentationsDisplayableManager2D")
    group = slicer.vtkMRMLDisplayableManagerGroup()
    group.Initialize(factory, renderer)
    group.SetMRMLDisplayableNode(node)

    logic.ResizeSliceNode(*size)
    logic.FitSliceToBackground(*size)
    node.JumpSliceByOffsetting(*[float(v) for v in centre])  # to the plane through ``centre``, the view still fitted
    logic.SnapSliceOffsetToIJK()
    window.Render()

    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    w, h, _ = image.GetDimensions()
    rgb = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, 3)[::-1]  # VTK rows go bottom-up
    window.Finalize()
    return np.ascontiguousarray(rgb)


def write_png(rgb: np.ndarray, output: Path) -> None:
    """The picture as a PNG through VTK's writer, to a temporary file beside ``output``, then renamed."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    h, w, _ = rgb.shape
    image = vtk.vtkImageData()
    image.SetDimensions(w, h, 1)
    image.GetPointData().SetScalars(numpy_to_vtk(np.ascontiguousarray(rgb[::-1]).reshape(-1, 3), deep=True))
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".png", dir=output.parent)
    os.close(fd)
    try:
        writer = vtk.vtkPNGWriter()
        writer.SetFileName(tmp)
        writer.SetInputData(image)
        writer.Write()
        if writer.GetErrorCode():
            raise OSError(f"vtkPNGWriter could not write {tmp}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the picture is an ordinary file
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT, help="PNG to write (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder holding totalseg/example_ct_sm.nii.gz (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.output.suffix.lower() != ".png":
        parser.error(f"--output {args.output} must end in .png")
    if not (args.data / "totalseg" / "example_ct_sm.nii.gz").is_file():
        parser.error(f"--data {args.data} holds no totalseg/example_ct_sm.nii.gz; pass the shared data folder")

    ct, seg, centre = make_segment(args.data)
    import slicer

    display = ct.GetDisplayNode()
    display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")  # Slicer's default for scalar volumes; slicer-core's
    display.AutoWindowLevelOff()                                     # storage node leaves it unset
    display.SetWindowLevel(400, 40)  # abdomen window, as the module's "abdomen" setting
    segment = seg.GetSegmentation().GetNthSegment(0)
    segment.SetColor(0.2, 0.85, 0.35)  # one fixed, clear colour (the module leaves Slicer's pick, which varies)
    seg.GetDisplayNode().SetOpacity2DFill(0.4)
    app_logic = slicer.vtkMRMLApplicationLogic()
    app_logic.SetMRMLScene(slicer.mrmlScene)
    axial = render_view(slicer.mrmlScene, app_logic, "Red", "Axial", AXIAL_SIZE, ct, centre)
    sagittal = render_view(slicer.mrmlScene, app_logic, "Yellow", "Sagittal", SIDE_SIZE, ct, centre)
    coronal = render_view(slicer.mrmlScene, app_logic, "Green", "Coronal", SIDE_SIZE, ct, centre)
    picture = np.full((AXIAL_SIZE[1], AXIAL_SIZE[0] + GAP + SIDE_SIZE[0], 3), 255, np.uint8)
    picture[:, :AXIAL_SIZE[0]] = axial
    picture[:SIDE_SIZE[1], AXIAL_SIZE[0] + GAP:] = sagittal
    picture[-SIDE_SIZE[1]:, AXIAL_SIZE[0] + GAP:] = coronal
    write_png(picture, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
