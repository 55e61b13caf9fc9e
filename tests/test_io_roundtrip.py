"""A labelmap written in each format and read back is identical, at the same physical place."""

import numpy as np
import pytest

from sam2volume import read_labelmap, read_volume, write_labelmap, write_volume


def _same_placement(a, b):
    np.testing.assert_allclose(a.ijk_to_lps, b.ijk_to_lps, atol=1e-4)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha", ".seg.nrrd"])
@pytest.mark.parametrize("name", ["example_seg.nii.gz", "example_seg_mr.nii.gz"])
def test_labelmap_roundtrip(tmp_path, totalseg, suffix, name):
    lab = read_labelmap(totalseg / name)
    segments = [{"label": 5, "name": "liver", "color": [0.8, 0.4, 0.2]}]
    out = write_labelmap(lab, tmp_path / f"out{suffix}", segments=segments)
    back = read_labelmap(out)
    np.testing.assert_array_equal(back.array, lab.array)
    _same_placement(back, lab)
    if suffix == ".seg.nrrd":
        by_label = {s["label"]: s for s in back.meta["segments"]}
        assert by_label[5]["name"] == "liver"
        np.testing.assert_allclose(by_label[5]["color"], [0.8, 0.4, 0.2], atol=1e-5)
        assert set(by_label) == set(np.unique(lab.array)) - {0}
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_slicer_segmentation_roundtrip_keeps_names(tmp_path, slicerio_data):
    seg = read_labelmap(slicerio_data / "Segmentation.seg.nrrd")
    out = write_labelmap(seg, tmp_path / "copy.seg.nrrd")
    back = read_labelmap(out)
    np.testing.assert_array_equal(back.array, seg.array)
    assert [s["name"] for s in back.meta["segments"]] == [s["name"] for s in seg.meta["segments"]]
    _same_placement(back, seg)


def test_image_roundtrip_keeps_voxels_and_geometry(tmp_path, totalseg):
    for name in ["example_ct_sm.nii.gz", "example_mr_sm.nii.gz"]:
        vol = read_volume(totalseg / name)
        for suffix in [".nrrd", ".mha", ".nii.gz"]:
            back = read_volume(write_volume(vol, tmp_path / f"img{suffix}"))
            np.testing.assert_array_equal(back.array, vol.array)
            _same_placement(back, vol)


def test_dicom_seg_references_series_and_roundtrips(tmp_path, totalseg):
    import pydicom

    ct = read_volume(totalseg / "example_ct_dicom")
    lab = read_labelmap(totalseg / "example_seg_dicom.nii.gz")
    lab = lab.reoriented(lab.reorientation_to(ct.orientation))
    keep = np.isin(lab.array, [5, 1, 2])  # three organs keep the file small
    lab = lab.with_array(np.where(keep, lab.array, 0).astype(np.uint8))
    segments = [{"label": 5, "name": "liver"}, {"label": 1, "name": "spleen"}]
    out = write_labelmap(lab, tmp_path / "seg.dcm", reference=ct, segments=segments)
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG"
    referenced = {r.ReferencedSOPInstanceUID for s in ds.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    expected = set()
    for f in ct.meta["dicom_files"]:
        src = pydicom.dcmread(f, stop_before_pixels=True)
        expected.add(src.SOPInstanceUID or src.file_meta.MediaStorageSOPInstanceUID)
    assert referenced == expected
    back = read_labelmap(out)
    back = back.reoriented(back.reorientation_to(lab.orientation))  # highdicom may stack slices the other way
    np.testing.assert_array_equal(back.array, lab.array)
    _same_placement(back, lab)
    names = {s["label"]: s["name"] for s in back.meta["segments"]}
    assert names[5] == "liver" and names[1] == "spleen"


def test_dicom_seg_carries_codes_colours_and_valid_uids(tmp_path, totalseg):
    """Issue 12: a SNOMED CT code per organ (laterality as a modifier), the colours, a SeriesDescription;
    the shared series' blank Study/Series UIDs give a warning and generated UIDs, never an invalid SEG.
    Checked with pydicom and highdicom and, where dicom3tools is installed, with dciodvfy."""
    import shutil
    import subprocess

    import highdicom as hd
    import pydicom

    ct = read_volume(totalseg / "example_ct_dicom")
    lab = read_labelmap(totalseg / "example_seg_dicom.nii.gz", reference=ct)
    lab = lab.with_array(np.where(np.isin(lab.array, [5, 2]), lab.array, 0).astype(np.uint8))
    segments = [{"label": 5, "name": "liver", "color": [0.8, 0.3, 0.2]}, {"label": 2, "name": "kidney_right", "color": [0.2, 0.6, 0.9]}]
    with pytest.warns(UserWarning, match="blank StudyInstanceUID"):
        out = write_labelmap(lab, tmp_path / "seg.dcm", reference=ct, segments=segments)
    ds = pydicom.dcmread(out)
    assert ds.StudyInstanceUID and ds.SeriesInstanceUID and ds.SeriesDescription.startswith("SAM2 segmentation")
    by_name = {s.SegmentLabel: s for s in ds.SegmentSequence}
    liver, kidney = by_name["liver"], by_name["kidney_right"]
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91772007"  # Organ
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # Liver
    assert kidney.SegmentedPropertyTypeCodeSequence[0].CodeValue == "64033007"  # Kidney
    assert kidney.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "24028007"  # Right
    assert liver.RecommendedDisplayCIELabValue != kidney.RecommendedDisplayCIELabValue
    seg = hd.seg.segread(str(out))  # an independent reader parses it, segments and all
    assert seg.number_of_segments == 2
    if shutil.which("dciodvfy"):
        res = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, timeout=120)
        errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], errors


def test_dicom_seg_label_values_above_16_bits_read_back(tmp_path, totalseg):
    """Before: a label above 65535 came back wrapped around (uint16)."""
    ct = read_volume(totalseg / "example_ct_dicom")
    arr = np.zeros(ct.shape, np.uint32)
    arr[100:200, 100:200, 5:9] = 70000
    with pytest.warns(UserWarning):
        out = write_labelmap(ct.with_array(arr), tmp_path / "big.dcm", reference=ct, segments=[{"label": 70000, "name": "liver"}])
    back = read_labelmap(out, reference=ct)
    assert set(np.unique(back.array).tolist()) == {0, 70000}
