import json
import subprocess
import sys

import numpy as np

from sam2volume import __version__, read_labelmap
from sam2volume.cli import main


def test_version():
    out = subprocess.run([sys.executable, "-m", "sam2volume", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"sam2volume {__version__}"


def test_info_json(totalseg, capsys):
    assert main(["info", str(totalseg / "example_ct_dicom"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [512, 512, 20]
    assert info["spacing_mm"] == [0.976562, 0.976562, 2.0]
    assert info["orientation"] == "LPS" and info["modality"] == "CT"
    assert info["intensity_min"] == -1024.0


def test_convert_labelmap_to_seg_nrrd_and_back(tmp_path, totalseg):
    out = tmp_path / "seg.seg.nrrd"
    assert main(["convert", str(totalseg / "example_seg.nii.gz"), str(out), "-q",
                 "--reference", str(totalseg / "example_ct_sm.nii.gz")]) == 0
    back = tmp_path / "back.nii.gz"
    assert main(["convert", str(out), str(back), "--labelmap", "-q"]) == 0
    a, b = read_labelmap(totalseg / "example_seg.nii.gz"), read_labelmap(back)
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.ijk_to_ras, b.ijk_to_ras, atol=1e-4)


def test_convert_dicom_series_to_nifti(tmp_path, totalseg):
    import nibabel as nib

    out = tmp_path / "ct.nii.gz"
    assert main(["convert", str(totalseg / "example_ct_dicom"), str(out), "-q"]) == 0
    img = nib.load(str(out))
    lab = nib.load(str(totalseg / "example_seg_dicom.nii.gz"))
    # same physical grid as the reference label file (nibabel affine, up to the LAS/LPS flip)
    centre = np.array([255.5, 255.5, 9.5, 1.0])
    np.testing.assert_allclose(img.affine @ centre, lab.affine @ centre, atol=1e-3)
