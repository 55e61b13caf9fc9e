"""Issue 20 item 9: a NIfTI/NRRD/MHA labelmap gets a colour table 3D Slicer reads (``OUT.labels.csv``), checked
with Slicer's real readers (PyPI slicer-core): vtkMRMLColorTableStorageNode reads our names, colours and codes
back, and a labelmap loaded with that table through Slicer's storage nodes shows those names for its values.

Before: only ``OUT.labels.json`` was written, which Slicer ignores (a loaded labelmap had no names, and
Slicer's own colours, not ours).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import slicer_scene as sc  # noqa: E402  (Slicer's real libraries, no Qt)
import slicer  # noqa: E402

from sam2volume.io.color_table import ORGAN_COLORS, color_table_path  # noqa: E402
from sam2volume.io.writers import DEFAULT_COLORS, write_labelmap, write_names_sidecar  # noqa: E402
from sam2volume.volume import Volume  # noqa: E402

# label value -> name: an organ with an underscore (Slicer's .ctbl format would read it back as "kidney left"),
# an organ under a synonym, a name with a comma, quotes and a non-ASCII letter, and a name given with a colour
SEGMENTS = [
    {"label": 2, "name": "kidney_left"},
    {"label": 6, "name": "Liver"},
    {"label": 9, "name": 'lesion "A", Läsion'},
    {"label": 12, "name": "my tube", "color": [0.1, 0.2, 0.3]},
]
EXPECTED = {  # what Slicer must show: name, colour 0-255
    2: ("kidney_left", ORGAN_COLORS["kidney_left"]),
    6: ("Liver", ORGAN_COLORS["liver"]),
    9: ("lesion 'A', Läsion", tuple(round(c * 255) for c in DEFAULT_COLORS[(9 - 1) % len(DEFAULT_COLORS)])),
    12: ("my tube", (26, 51, 76)),
}


def _labelmap(path: Path) -> Path:
    array = np.zeros((24, 20, 6), np.uint8)
    for n, label in enumerate(sorted(EXPECTED)):
        array[2 + 5 * n: 5 + 5 * n, 3:9, 1:4] = label
    vol = Volume(array, spacing=np.array([0.8, 0.8, 2.5]), origin=np.array([-10.0, 4.0, 30.0]))
    write_labelmap(vol, path, segments=SEGMENTS)
    write_names_sidecar(path, SEGMENTS)
    return path


def _read_table(path: Path):
    """Slicer's own colour table reader (as File > Add Data or slicer.util.loadColorTable reads it)."""
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", "table")
    storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1, f"Slicer could not read {path}"
    return node


def _rgba255(node, value) -> tuple[int, ...]:
    rgba = [0.0] * 4
    node.GetColor(value, rgba)
    return tuple(round(c * 255) for c in rgba)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_slicer_reads_our_colour_table_with_our_names_colours_and_codes(tmp_path, suffix):
    sc.fresh_scene()
    out = _labelmap(tmp_path / f"ct{suffix}")
    assert color_table_path(out) == tmp_path / f"ct{suffix}.labels.csv"
    node = _read_table(color_table_path(out))
    for value, (name, rgb) in EXPECTED.items():
        assert node.GetColorDefined(value) and node.GetColorName(value) == name
        assert _rgba255(node, value) == (*rgb, 255)
    assert not node.GetColorDefined(0) and not node.GetColorDefined(5)  # background and unused values stay undefined
    kidney, liver = node.GetTerminologyType(2), node.GetTerminologyType(6)
    assert (kidney.GetCodingSchemeDesignator(), kidney.GetCodeValue(), kidney.GetCodeMeaning()) == ("SCT", "64033007", "Kidney")
    assert node.GetTerminologyTypeModifier(2).GetCodeMeaning() == "Left" and liver.GetCodeMeaning() == "Liver"
    assert node.GetTerminologyCategory(6).GetCodeMeaning() == "Organ"
    side = json.loads((tmp_path / f"ct{suffix}.labels.json").read_text())  # the JSON sidecar says the same
    assert side["color_table"] == f"ct{suffix}.labels.csv"
    assert {d["value"]: (d["name"], tuple(round(c * 255) for c in d["color"])) for d in side["labels"]} == {
        v: (SEGMENTS[n]["name"], rgb) for n, (v, (_, rgb)) in enumerate(EXPECTED.items())}


def test_a_labelmap_loaded_with_the_table_shows_its_names_in_slicer(tmp_path):
    """Both ways Slicer loads a NIfTI labelmap: as a segmentation with the table as its colour node (Add Data's
    Segmentation option "Color node", slicer.util.loadSegmentation(path, {"colorNodeID": ...})), and as a labelmap
    volume whose display uses the table, imported into a segmentation (Segmentations module)."""
    sc.fresh_scene()
    out = _labelmap(tmp_path / "ct.nii.gz")
    table = _read_table(color_table_path(out))
    seg = slicer.modules.segmentations.logic().LoadSegmentationFromFile(str(out), True, "ct", table)
    assert seg is not None
    segments = [seg.GetSegmentation().GetNthSegment(i) for i in range(seg.GetSegmentation().GetNumberOfSegments())]
    shown = {s.GetLabelValue(): (s.GetName(), tuple(round(c * 255) for c in s.GetColor())) for s in segments}
    assert shown == EXPECTED

    labelmap = slicer.modules.volumes.logic().AddArchetypeVolume(str(out), "ct_label", 1)  # 1: load as labelmap
    assert labelmap is not None and labelmap.IsA("vtkMRMLLabelMapVolumeNode")
    labelmap.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
    voxels = slicer.util.arrayFromVolume(labelmap)  # the value under each voxel is named by the table
    assert {table.GetColorName(int(v)) for v in np.unique(voxels) if v} == {name for name, _ in EXPECTED.values()}
    imported = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "imported")
    assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, imported)
    names = {imported.GetSegmentation().GetNthSegment(i).GetName() for i in range(imported.GetSegmentation().GetNumberOfSegments())}
    assert names == {name for name, _ in EXPECTED.values()}


def test_seg_nrrd_and_dicom_seg_get_no_sidecars(tmp_path):
    """They carry names and colours themselves: a colour table beside them would only go stale."""
    array = np.zeros((8, 8, 3), np.uint8)
    array[2:5, 2:5, 1] = 6
    out = tmp_path / "ct.seg.nrrd"
    write_labelmap(Volume(array), out, segments=[{"label": 6, "name": "liver"}])
    assert write_names_sidecar(out, [{"label": 6, "name": "liver"}]) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.seg.nrrd"]


def _terminology_file() -> Path | None:
    try:
        import trame_slicer
    except ImportError:
        return None
    path = Path(trame_slicer.__file__).parent / "resources/terminologies/SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.term.json"
    return path if path.is_file() else None


@pytest.mark.skipif(_terminology_file() is None, reason="Slicer's terminology file (shipped with trame-slicer, the web extra) is not installed")
def test_organ_colours_are_slicers_recommended_colours_for_their_codes():
    """ORGAN_COLORS holds, for each organ, the recommendedDisplayRGBValue that Slicer's "SlicerGeneralAnatomy"
    terminology gives the SNOMED CT type (and laterality) segment_codes assigns that organ."""
    from sam2volume.io.segment_codes import coded

    recommended = {}
    for category in json.loads(_terminology_file().read_text())["SegmentationCodes"]["Category"]:
        for kind in category.get("Type", []):
            recommended.setdefault((kind["CodeValue"], None), kind.get("recommendedDisplayRGBValue"))
            for modifier in kind.get("Modifier", []):
                recommended.setdefault((kind["CodeValue"], modifier["CodeValue"]), modifier.get("recommendedDisplayRGBValue"))
    for organ, rgb in ORGAN_COLORS.items():
        _, kind, side, known = coded(organ)
        assert known, organ
        assert tuple(recommended[(kind.value, side.value if side else None)]) == rgb, organ
