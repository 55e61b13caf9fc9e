"""Geometry and voxels of real files equal what SimpleITK and nibabel read."""

import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from sam2volume import read_labelmap, read_volume
from sam2volume.errors import UnevenSpacingError


def _assert_matches_nibabel(vol, path):
    img = nib.load(str(path))
    np.testing.assert_array_equal(vol.array, np.asanyarray(img.dataobj))
    np.testing.assert_allclose(vol.ijk_to_ras, img.affine, atol=1e-4)


def _assert_matches_sitk(vol, image):
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(image).transpose(2, 1, 0))
    np.testing.assert_allclose(vol.spacing, image.GetSpacing(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(vol.origin, image.GetOrigin(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(vol.direction.reshape(-1), image.GetDirection(), rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "name, orientation",
    [("example_ct_sm.nii.gz", "RAS"), ("example_seg.nii.gz", "RAS"), ("example_mr_sm.nii.gz", "LPS"),
     ("example_seg_mr.nii.gz", "LPS"), ("example_seg_dicom.nii.gz", "LAS")],
)
def test_nifti_equals_nibabel_and_sitk(totalseg, name, orientation):
    path = totalseg / name
    vol = read_volume(path)
    _assert_matches_nibabel(vol, path)
    _assert_matches_sitk(vol, sitk.ReadImage(str(path)))
    assert vol.orientation == orientation


def test_ct_modality_and_labels_share_grid(totalseg):
    ct = read_volume(totalseg / "example_ct_sm.nii.gz")
    seg = read_labelmap(totalseg / "example_seg.nii.gz", reference=ct)
    assert ct.meta["modality"] == "CT"
    assert ct.array.dtype == np.int16
    assert seg.array.max() > 0


def test_nrrd_and_seg_nrrd_from_slicerio(slicerio_data):
    ct = read_volume(slicerio_data / "CTChest4.nrrd")
    _assert_matches_sitk(ct, sitk.ReadImage(str(slicerio_data / "CTChest4.nrrd")))
    seg = read_labelmap(slicerio_data / "Segmentation.seg.nrrd", reference=ct)
    names = [s["name"] for s in seg.meta["segments"]]
    assert names[:2] == ["ribs", "cervical vertebral column"] and len(names) == 7
    assert set(np.unique(seg.array)) <= set(range(8))
    # right lung (label 5) lies on the patient's right: negative LPS x is right... in LPS, right is -x
    lung_r = np.argwhere(seg.array == 5).mean(axis=0)
    lung_l = np.argwhere(seg.array == 6).mean(axis=0)
    assert seg.index_to_lps(lung_r)[0] < seg.index_to_lps(lung_l)[0]


def test_dicom_series_matches_gdcm_and_nibabel_labels(totalseg):
    folder = totalseg / "example_ct_dicom"
    vol = read_volume(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    ref = reader.Execute()
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(ref).transpose(2, 1, 0).astype(vol.array.dtype))
    np.testing.assert_allclose(vol.spacing, ref.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(vol.origin, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.direction.reshape(-1), ref.GetDirection(), atol=1e-6)
    assert vol.meta["modality"] == "CT" and vol.array.dtype == np.int16
    assert vol.array.min() == -1024  # HU through the modality LUT, not raw stored values
    # sorted by position along the normal
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in vol.meta["dicom_files"]]
    assert z == sorted(z)
    # the label file (LAS on disk) lines up with our LPS series after exact reorientation
    lab = read_labelmap(totalseg / "example_seg_dicom.nii.gz")
    reo = lab.reorientation_to(vol.orientation)
    lab_lps = lab.reoriented(reo)
    vol.check_same_grid(lab_lps)
    inside = vol.array[lab_lps.array > 0]
    assert np.median(inside) > -200  # organs and bone, not air
    assert np.mean(vol.array[lab_lps.array == 0] < -900) > np.mean(inside < -900) + 0.2


def test_single_slice_dicom_is_refused(pydicom_data):
    from sam2volume import InputError

    with pytest.raises(InputError, match="single 2D DICOM image.*folder"):
        read_volume(pydicom_data / "CT_small.dcm")


def test_uneven_series_errors_or_warns(pydicom_data):
    folder = pydicom_data / "dicomdirtests" / "77654033" / "CT2"
    with pytest.raises(UnevenSpacingError, match="unevenly spaced.*allow_uneven_spacing"):
        read_volume(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = read_volume(folder, allow_uneven_spacing=True)
    assert any("unevenly spaced" in str(w.message) for w in caught)
    assert vol.shape[2] == 4


def test_multiframe_dicom_file(pydicom_data):
    path = pydicom_data / "rtdose.dcm"
    vol = read_volume(path)
    ref = sitk.ReadImage(str(path), sitk.sitkFloat32)
    assert vol.shape == ref.GetSize() == (10, 10, 15)
    np.testing.assert_allclose(vol.array, sitk.GetArrayFromImage(ref).transpose(2, 1, 0))
    np.testing.assert_allclose(vol.spacing, ref.GetSpacing())
    assert vol.meta["modality"] == "RTDOSE"
