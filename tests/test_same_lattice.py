"""The same physical grid in another axis order is the same grid (issue 12): a labelmap stored with
permuted or flipped axes is laid out on the reference exactly (no resampling); another grid is refused."""

import numpy as np
import pytest
import SimpleITK as sitk

from sam2volume import read_labelmap, read_volume
from sam2volume.errors import GeometryMismatchError
from sam2volume.io.readers import volume_to_sitk


def test_shared_dicom_labels_stored_las_read_onto_the_lps_series(totalseg):
    ct = read_volume(totalseg / "example_ct_dicom")
    lab = read_labelmap(totalseg / "example_seg_dicom.nii.gz", reference=ct)  # refused before ("resample in Slicer")
    assert lab.same_grid(ct) and lab.meta["reoriented_from"] == "LAS" and ct.orientation == "LPS"
    raw = read_volume(totalseg / "example_seg_dicom.nii.gz")
    # voxel by voxel: the label at each physical point is unchanged
    for ijk in [(100, 200, 3), (256, 300, 10), (400, 120, 17)]:
        lps = ct.index_to_lps(np.array(ijk, float))
        src = np.round(raw.lps_to_index(lps)).astype(int)
        assert lab.array[ijk] == raw.array[tuple(src)]
    assert np.array_equal(np.bincount(lab.array.ravel()), np.bincount(raw.array.ravel()))


@pytest.mark.parametrize("order", [(2, 1, 0), (1, 0, 2)])
def test_transposed_and_flipped_copy_of_the_labels(tmp_path, totalseg, order):
    ct = read_volume(totalseg / "example_ct_sm.nii.gz")
    ref = read_labelmap(totalseg / "example_seg.nii.gz", reference=ct)
    img = sitk.Flip(sitk.PermuteAxes(volume_to_sitk(ref), list(order)), [True, False, False])
    path = tmp_path / "t.nrrd"
    sitk.WriteImage(img, str(path))
    back = read_labelmap(path, reference=ct)
    assert np.array_equal(back.array, ref.array)


def test_a_shifted_grid_is_still_refused_with_numbers(tmp_path, totalseg):
    ct = read_volume(totalseg / "example_ct_sm.nii.gz")
    img = sitk.ReadImage(str(totalseg / "example_seg.nii.gz"))
    img = sitk.PermuteAxes(img, [1, 0, 2])
    img.SetOrigin([o + 1.5 for o in img.GetOrigin()])  # half a voxel off
    sitk.WriteImage(img, str(tmp_path / "s.nrrd"))
    with pytest.raises(GeometryMismatchError, match=r"origin .* vs"):
        read_labelmap(tmp_path / "s.nrrd", reference=ct)


def test_mask_prompt_from_a_labelmap_in_another_axis_order(tmp_path, totalseg):
    import json

    from sam2volume.api import segment

    img = sitk.PermuteAxes(sitk.ReadImage(str(totalseg / "example_seg.nii.gz")), [2, 0, 1])
    sitk.WriteImage(img, str(tmp_path / "seg_kij.nrrd"))
    prompts = {"objects": [{"name": "liver", "label": 1, "masks": [{"file": str(tmp_path / "seg_kij.nrrd"), "value": 5, "slice": 14}]}]}
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    lab, _ = segment(totalseg / "example_ct_sm.nii.gz", tmp_path / "p.json", tmp_path / "o.nii.gz", engine="baseline")
    ref = read_labelmap(totalseg / "example_seg.nii.gz").array[:, :, 14] == 5
    got = lab.array[:, :, 14] == 1
    assert 2 * (ref & got).sum() / (ref.sum() + got.sum()) > 0.9
