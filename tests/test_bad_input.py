"""Every bad input gets one clear error naming the file, the problem and the fix; no output is left."""

import shutil

import nibabel as nib
import numpy as np
import pytest

from sam2volume import InputError, read_labelmap, read_volume, write_labelmap
from sam2volume.cli import main
from sam2volume.errors import GeometryMismatchError


def _convert_fails(tmp_path, capsys, src, pattern, extra=()):
    out = tmp_path / "out" / "result.nii.gz"
    rc = main(["convert", str(src), str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert pattern.lower() in err.lower(), err
    assert not out.exists()
    assert not any(out.parent.glob("*")) if out.parent.exists() else True
    return err


def test_missing_file(tmp_path, capsys):
    err = _convert_fails(tmp_path, capsys, tmp_path / "nope.nii.gz", "no such file")
    assert "nope.nii.gz" in err


def test_garbage_file(tmp_path, capsys):
    bad = tmp_path / "garbage.nii"
    bad.write_bytes(b"this is not an image" * 20)
    _convert_fails(tmp_path, capsys, bad, "cannot read the file")


def test_truncated_nii_gz(tmp_path, capsys, totalseg):
    data = (totalseg / "example_ct_sm.nii.gz").read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    err = _convert_fails(tmp_path, capsys, bad, "truncated or corrupt")
    assert "truncated.nii.gz" in err


def _save(tmp_path, name, array, affine=np.eye(4)):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def test_2d_image(tmp_path, capsys):
    _convert_fails(tmp_path, capsys, _save(tmp_path, "flat.nii.gz", np.zeros((8, 8), np.int16)), "2D image")


def test_single_slice_3d_is_2d(tmp_path):
    with pytest.raises(InputError, match="2D image"):
        read_volume(_save(tmp_path, "one.nii.gz", np.zeros((8, 8, 1), np.int16)))


def test_4d_image(tmp_path, capsys):
    _convert_fails(tmp_path, capsys, _save(tmp_path, "t.nii.gz", np.zeros((4, 4, 4, 3), np.int16)), "4D image")


def test_multichannel_image(tmp_path):
    import SimpleITK as sitk

    img = sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3)
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(img, str(path))
    with pytest.raises(InputError, match="multi-channel image"):
        read_volume(path)


def test_nan_voxels(tmp_path, capsys):
    arr = np.zeros((4, 4, 4), np.float32)
    arr[1, 1, 1] = np.nan
    arr[2, 2, 2] = np.inf
    err = _convert_fails(tmp_path, capsys, _save(tmp_path, "nan.nii.gz", arr), "2 voxels are NaN or infinite")
    assert "nan_to_num" in err


def test_zero_size_axis(tmp_path):
    import SimpleITK as sitk

    from sam2volume.io.readers import volume_from_sitk

    with pytest.raises(InputError, match="2D image|zero-size"):
        volume_from_sitk(sitk.Image([4, 4, 0], sitk.sitkInt16), source="empty.nrrd")


def test_empty_dicom_folder(tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("no images here")
    _convert_fails(tmp_path, capsys, folder, "holds no DICOM images")


def test_mixed_series_lists_uids(tmp_path, capsys, totalseg, pydicom_data):
    folder = tmp_path / "mixed"
    shutil.copytree(totalseg / "example_ct_dicom", folder)
    shutil.copy(pydicom_data / "MR_small.dcm", folder / "mr.dcm")
    err = _convert_fails(tmp_path, capsys, folder, "holds 2 DICOM series")
    assert "--series-uid" in err
    import pydicom

    uid = pydicom.dcmread(pydicom_data / "MR_small.dcm").SeriesInstanceUID
    assert uid in err
    vol = read_volume(folder, series_uid=str(read_volume(totalseg / "example_ct_dicom").meta["series_uid"]))
    assert vol.shape == (512, 512, 20)
    with pytest.raises(InputError, match="no series with SeriesInstanceUID 1.2.3"):
        read_volume(folder, series_uid="1.2.3")


def test_labelmap_geometry_mismatch(tmp_path, capsys, totalseg):
    ct = read_volume(totalseg / "example_ct_sm.nii.gz")
    with pytest.raises(GeometryMismatchError, match="does not share the voxel grid.*resample"):
        read_labelmap(totalseg / "example_seg_mr.nii.gz", reference=ct)
    out = tmp_path / "x.seg.nrrd"
    rc = main(["convert", str(totalseg / "example_seg_mr.nii.gz"), str(out), "--reference", str(totalseg / "example_ct_sm.nii.gz")])
    assert rc == 2 and "does not share the voxel grid" in capsys.readouterr().err
    assert not out.exists()


def test_labelmap_writers_refuse_bad_values(tmp_path, totalseg):
    ct = read_volume(totalseg / "example_ct_sm.nii.gz")
    with pytest.raises(InputError, match="non-integer"):
        write_labelmap(ct.with_array(ct.array * 0.5), tmp_path / "a.nii.gz")
    with pytest.raises(InputError, match="negative label"):
        write_labelmap(ct, tmp_path / "b.nii.gz")
    with pytest.raises(InputError, match="cannot write this file type"):
        write_labelmap(ct.with_array(ct.array > 0), tmp_path / "c.png")
    with pytest.raises(InputError, match="reference a DICOM series"):
        write_labelmap(ct.with_array(ct.array > 0), tmp_path / "d.dcm")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_partial_file(tmp_path, totalseg, monkeypatch):
    import SimpleITK as sitk

    ct = read_volume(totalseg / "example_ct_sm.nii.gz")
    real = sitk.WriteImage

    def write_then_fail(image, name, **kw):  # test double: a writer that dies half-way
        real(image, name, **kw)
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", write_then_fail)
    from sam2volume import write_volume

    from sam2volume.errors import OutputError

    with pytest.raises(OutputError, match=r"cannot write .*ct\.nii\.gz: disk full"):  # ITK's words, as one sentence
        write_volume(ct, tmp_path / "ct.nii.gz")
    assert list(tmp_path.iterdir()) == []


def _nifti_with_pixdim(tmp_path, name, pixdim, sform=False):
    import struct

    import nibabel as nib

    path = tmp_path / name
    nib.save(nib.Nifti1Image(np.arange(120, dtype=np.int16).reshape(4, 5, 6), np.diag([2.0, 1, 1, 1]) if sform else None), path)
    raw = bytearray(path.read_bytes())
    for n, v in enumerate(pixdim):  # pixdim[1..3] at byte 80 (nibabel would repair them on save)
        struct.pack_into("<f", raw, 80 + 4 * n, v)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("pixdim, sform, shown", [((0.0, 1.0, 1.0), False, "pixdim[1] = 0"),
                                                   ((-2.0, 1.0, 1.0), False, "pixdim[1] = -2"),
                                                   ((2.0, -1.0, 1.0), True, "pixdim[2] = -1")])
def test_nifti_zero_or_negative_pixdim_is_refused(tmp_path, capsys, pixdim, sform, shown):
    """Before: pixdim 0 was read as 1 mm, and a negative pixdim gave an output mirrored against its input."""
    path = _nifti_with_pixdim(tmp_path, "q.nii", pixdim, sform)
    _convert_fails(tmp_path, capsys, path, shown)


def test_4d_with_one_time_point_reads_as_3d(tmp_path):
    """Decided: a 4D file holding one time point is its 3D volume (with a note), in every format."""
    import SimpleITK as sitk

    arr = np.arange(64, dtype=np.int16).reshape(4, 4, 4)
    vol = read_volume(_save(tmp_path, "t1.nii.gz", arr.reshape(4, 4, 4, 1)))
    assert vol.shape == (4, 4, 4) and np.array_equal(vol.array, arr)
    img3 = sitk.GetImageFromArray(arr.transpose(2, 1, 0))
    img3.SetSpacing([2.0, 3.0, 4.0])
    img = sitk.JoinSeries([img3])  # size [4, 4, 4, 1]
    assert img.GetDimension() == 4
    sitk.WriteImage(img, str(tmp_path / "t1.nrrd"))
    vol = read_volume(tmp_path / "t1.nrrd")
    assert vol.shape == (4, 4, 4) and np.array_equal(vol.array, arr) and vol.spacing.tolist() == [2.0, 3.0, 4.0]
    assert "single time point" in vol.meta["notes"][0]


def _multiframe(tmp_path, pydicom_data, **changes):
    import pydicom

    ds = pydicom.dcmread(pydicom_data / "rtdose.dcm")
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    path = tmp_path / "mf.dcm"
    ds.save_as(path)
    return path


def test_colour_multiframe_dicom_is_refused(tmp_path, capsys, pydicom_data):
    """Before: a colour multi-frame DICOM became grey with a made-up geometry."""
    import pydicom

    src = pydicom.dcmread(pydicom_data / "color3d_jpeg_baseline.dcm") if (pydicom_data / "color3d_jpeg_baseline.dcm").exists() else None
    if src is not None:
        _convert_fails(tmp_path, capsys, pydicom_data / "color3d_jpeg_baseline.dcm", "colour DICOM")
    path = _multiframe(tmp_path, pydicom_data, PhotometricInterpretation="RGB")
    _convert_fails(tmp_path, capsys, path, "colour DICOM image (RGB")


def test_multiframe_without_geometry_is_refused(tmp_path, capsys, pydicom_data):
    path = _multiframe(tmp_path, pydicom_data, ImagePositionPatient=None)
    _convert_fails(tmp_path, capsys, path, "without patient geometry")


def test_blank_series_uid_is_listed_and_choosable(tmp_path, capsys, totalseg, pydicom_data):
    import pydicom

    folder = tmp_path / "two"
    folder.mkdir()
    files = sorted((totalseg / "example_ct_dicom").iterdir())[:3]
    for f in files:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"  # the shared series' own UID is blank (anonymised)
        ds.save_as(folder / f.name)
    for f in sorted((totalseg / "example_ct_dicom").iterdir())[3:6]:
        (folder / f.name).write_bytes(f.read_bytes())
    rc = main(["info", str(folder)])
    err = capsys.readouterr().err
    assert rc == 2 and 'blank SeriesInstanceUID: choose it with --series-uid ""' in err
    assert main(["info", str(folder), "--series-uid", ""]) == 0
    assert "3" in capsys.readouterr().out
