"""Image files cannot lie about their data, and writes cannot come out short (issue 19, items 2-4).

Before: a .nii cut in half was read with zeros for the missing half; a .nhdr/.mhd could name /etc/passwd as its
data; a 360-byte header declaring 20000 x 20000 x 8 voxels made the reader allocate gigabytes; ITK's NIfTI writer
reported success on a full disk and the truncated file was renamed into place. Now each is refused with one
sentence (CLI exit 2) and nothing is left behind. A full disk is produced for real: the write runs in a
subprocess under a file size limit (RLIMIT_FSIZE, SIGXFSZ ignored), so write() fails with EFBIG as on a full disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from sam2volume import read_volume
from sam2volume.cli import main
from sam2volume.errors import InputError


def _cli_fails(capsys, args, *needles):
    """The command exits 2 with one line naming the problem (no traceback)."""
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle.lower() in err.lower(), err
    return err


@pytest.fixture(scope="module")
def ct_image(totalseg):
    return sitk.ReadImage(str(totalseg / "example_ct_sm.nii.gz"))


def _write(image, path: Path, compress=False) -> Path:
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def _cut(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


# ------------------------------------------------------------------------------------- item 2: reading


@pytest.mark.parametrize("name,data_name", [("ct.nii", None), ("ct.nrrd", None), ("ct.mha", None),
                                            ("ct.mhd", "ct.raw"), ("ct.nhdr", "ct.raw")])
def test_truncated_raw_file_is_refused(tmp_path, capsys, ct_image, name, data_name):
    path = _write(ct_image, tmp_path / name)
    data = tmp_path / (data_name or name)
    _cut(data, data.stat().st_size // 2)
    err = _cli_fails(capsys, ["info", str(path)], "truncated", "header declares", name)
    assert "copy or export it again" in err
    out = tmp_path / "out" / "ct.nii.gz"
    _cli_fails(capsys, ["convert", str(path), str(out)], "truncated")
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_truncated_nii_is_refused_by_segment(tmp_path, capsys, ct_image):
    path = _write(ct_image, tmp_path / "ct.nii")
    _cut(path, path.stat().st_size // 2)
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"objects": [{"name": "liver", "label": 1, "boxes": [[[45, 27, 14], [104, 85, 14]]]}]}))
    out = tmp_path / "seg.nii.gz"
    _cli_fails(capsys, ["segment", str(path), "--prompts", str(prompts), "-o", str(out), "--engine", "baseline", "-q"],
               "truncated", "ct.nii")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii", "p.json"]


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nrrd", "ct.mha"])
@pytest.mark.parametrize("cut", ["half", "trailer"])
def test_truncated_compressed_file_is_refused(tmp_path, capsys, ct_image, name, cut):
    """gzip (.nii.gz, NRRD gzip) and zlib (MetaImage) streams: counted while decompressing, and must end intact
    (cut just before the 8-byte gzip trailer, every voxel is there but the stream is not whole)."""
    path = _write(ct_image, tmp_path / name, compress=True)
    size = path.stat().st_size
    _cut(path, size // 2 if cut == "half" else size - 5)
    _cli_fails(capsys, ["info", str(path)], "truncated or corrupt", name, "header declares")


def test_gzip_members_in_a_row_still_read(tmp_path):
    """A .nii.gz may hold several gzip members (as `cat a.gz b.gz` makes); the check reads them all, also when
    one ends exactly where a read chunk of the checker ends (65536 bytes: stored blocks make the size exact)."""
    import gzip

    from sam2volume.io import header_checks

    array = np.arange(40 * 40 * 30, dtype=np.int16).reshape(40, 40, 30)
    plain = tmp_path / "x.nii"
    nib.save(nib.Nifti1Image(array, np.eye(4)), plain)
    raw = plain.read_bytes()
    first = gzip.compress(raw[:65513], compresslevel=0)
    assert len(first) == header_checks._CHUNK
    path = tmp_path / "x.nii.gz"
    path.write_bytes(first + gzip.compress(raw[65513:], compresslevel=0))
    assert np.array_equal(read_volume(path).array, array)


# ------------------------------------------------------------------------------------- item 3: data files


def _detached(tmp_path: Path, kind: str, target: str) -> Path:
    """A small real .nhdr/.mhd pair written by ITK, then its data-file line pointed at ``target``."""
    image = sitk.GetImageFromArray(np.arange(4 * 4 * 4, dtype=np.uint8).reshape(4, 4, 4))
    folder = tmp_path / "case"
    folder.mkdir(exist_ok=True)
    header = folder / f"img.{kind}"
    sitk.WriteImage(image, str(header))
    field = "data file: " if kind == "nhdr" else "ElementDataFile = "
    lines = [line if not line.startswith(field) else field + target for line in header.read_text().splitlines()]
    header.write_text("\n".join(lines) + "\n")
    return header


OUTSIDE = {
    "absolute": "/etc/passwd",
    "proc": "/proc/self/environ",
    "parent": "../outside.raw",
    "inner parent": "sub/../../outside.raw",
}


@pytest.mark.parametrize("kind", ["nhdr", "mhd"])
@pytest.mark.parametrize("case", sorted(OUTSIDE))
def test_header_naming_a_file_outside_its_folder_is_refused(tmp_path, capsys, kind, case):
    (tmp_path / "outside.raw").write_bytes(bytes(range(64)))
    header = _detached(tmp_path, kind, OUTSIDE[case])
    _cli_fails(capsys, ["info", str(header)], "outside the header's folder", OUTSIDE[case])
    with pytest.raises(InputError, match="outside the header's folder"):
        read_volume(header)


@pytest.mark.parametrize("kind", ["nhdr", "mhd"])
def test_header_data_file_link_leaving_the_folder_or_not_regular_is_refused(tmp_path, capsys, kind):
    (tmp_path / "outside.raw").write_bytes(bytes(range(64)))
    header = _detached(tmp_path, kind, "link.raw")
    os.symlink(tmp_path / "outside.raw", header.parent / "link.raw")
    _cli_fails(capsys, ["info", str(header)], "is a link to", "outside the header's folder")
    header = _detached(tmp_path, kind, "fifo.raw")
    os.mkfifo(header.parent / "fifo.raw")  # a reader would block on it for ever
    _cli_fails(capsys, ["info", str(header)], "not a regular file")


@pytest.mark.parametrize("kind", ["nhdr", "mhd"])
@pytest.mark.parametrize("form", ["LIST", "LIST 2", "img%02d.raw 1 4 1 2"])
def test_multi_file_data_forms_are_refused(tmp_path, capsys, kind, form):
    header = _detached(tmp_path, kind, form)
    if form.startswith("LIST"):  # the names follow the header line
        header.write_text(header.read_text() + "img.raw\nimg.raw\n")
    _cli_fails(capsys, ["info", str(header)], "several files", "single")


@pytest.mark.parametrize("kind", ["nhdr", "mhd"])
def test_data_file_beside_its_header_still_reads(tmp_path, kind):
    header = _detached(tmp_path, kind, "img.raw")
    assert read_volume(header).array.sum() == sum(range(64))


def test_seg_nrrd_naming_another_file_is_refused(tmp_path, capsys):
    """pynrrd (which slicerio uses) follows `data file` too: the same rule holds for .seg.nrrd."""
    seg = tmp_path / "x.seg.nrrd"
    seg.write_text("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 4\nencoding: raw\ndata file: /etc/passwd\n\n")
    _cli_fails(capsys, ["info", str(seg)], "outside the header's folder", "/etc/passwd")


def test_nifti_header_pointing_to_a_separate_img_file_is_refused(tmp_path, capsys):
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.int16), np.eye(4))
    path = tmp_path / "x.nii"
    nib.save(img, path)
    raw = bytearray(path.read_bytes())
    raw[344:348] = b"ni1\0"  # "voxels are in x.img"
    path.write_bytes(bytes(raw))
    (tmp_path / "x.img").write_bytes(b"\1" * 128)
    _cli_fails(capsys, ["info", str(path)], "separate .img file")


# ----------------------------------------------------------------------------------- item 4: huge headers


def _huge_nifti(path: Path, shape=(20000, 20000, 8), gz=False) -> Path:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    blob = header.binaryblock + b"\0" * 12  # 360 bytes, as in the report
    if gz:
        import gzip

        blob = gzip.compress(blob)
    path.write_bytes(blob)
    return path


@pytest.fixture()
def no_pixel_reads(monkeypatch):
    """A spy on SimpleITK's reader: the refusal must come before any voxel is allocated."""
    def refuse(*args, **kwargs):
        raise AssertionError("SimpleITK.ReadImage was called: the header was not checked first")

    monkeypatch.setattr(sitk, "ReadImage", refuse)


def test_header_claiming_a_huge_array_is_refused_before_reading(tmp_path, capsys, no_pixel_reads):
    path = _huge_nifti(tmp_path / "huge.nii")
    _cli_fails(capsys, ["info", str(path)], "20000 x 20000 x 8", "more than the limit of 2,147,483,648", "--max-voxels")
    # raising the limit does not help a file that holds 360 bytes of a 6.4 GB array
    _cli_fails(capsys, ["info", str(path), "--max-voxels", str(2**40)], "truncated", "6,400,000,352 bytes")


def test_compressed_header_claiming_a_huge_array_is_refused(tmp_path, capsys, no_pixel_reads):
    _cli_fails(capsys, ["info", str(_huge_nifti(tmp_path / "huge.nii.gz", gz=True))], "more than the limit")
    # within the limit, the short stream is found while decompressing (the gzip size field is only mod 2**32)
    small = _huge_nifti(tmp_path / "big.nii.gz", shape=(2000, 2000, 80), gz=True)
    _cli_fails(capsys, ["info", str(small)], "truncated or corrupt", "640,000,352")


def test_voxel_limit_option_and_variable(totalseg, capsys, monkeypatch):
    ct = totalseg / "example_ct_sm.nii.gz"  # 122 x 101 x 30 = 369,660 voxels
    with pytest.raises(InputError, match=r"122 x 101 x 30 = 369,660 voxels, more than the limit of 1,000"):
        read_volume(ct, max_voxels=1000)
    _cli_fails(capsys, ["info", str(ct), "--max-voxels", "1000"], "more than the limit of 1,000")
    monkeypatch.setenv("SAM2VOLUME_MAX_VOXELS", "369659")
    _cli_fails(capsys, ["info", str(ct)], "more than the limit of 369,659", "SAM2VOLUME_MAX_VOXELS")
    assert read_volume(ct, max_voxels=369660).shape == (122, 101, 30)  # the argument wins over the variable
    monkeypatch.setenv("SAM2VOLUME_MAX_VOXELS", "lots")
    _cli_fails(capsys, ["info", str(ct)], "SAM2VOLUME_MAX_VOXELS='lots' is not an integer")
    monkeypatch.delenv("SAM2VOLUME_MAX_VOXELS")
    _cli_fails(capsys, ["info", str(ct), "--max-voxels", "0"], "max_voxels must be an integer >= 1")


# -------------------------------------------------------------------------- item 2 / 12: short writes

SHORT_WRITES = r'''
import json, os, resource, signal, sys
from pathlib import Path
import numpy as np

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG, as on a full disk
from sam2volume import read_labelmap, read_volume, write_labelmap, write_volume
from sam2volume.io.atomic import write_json_atomic, write_text_atomic
from sam2volume.overlay import save_overlay_png
from sam2volume.windowing import percentile_window

data, work = Path(sys.argv[1]), Path(sys.argv[2])
ct = read_volume(data / "example_ct_sm.nii.gz")
lab = read_labelmap(data / "example_seg.nii.gz")
dicom = read_volume(data / "example_ct_dicom")
dlab = read_labelmap(data / "example_seg_dicom.nii.gz")
dlab = dlab.reoriented(dlab.reorientation_to(dicom.orientation))
dlab = dlab.with_array(np.where(dlab.array == 5, 5, 0).astype(np.uint8))
window = percentile_window(ct.array)
writers = {
    "ct.nii": lambda p: write_volume(ct, p),
    "ct.nii.gz": lambda p: write_volume(ct, p),
    "ct.nrrd": lambda p: write_volume(ct, p),
    "ct.mha": lambda p: write_volume(ct, p),
    "seg.seg.nrrd": lambda p: write_labelmap(lab, p),
    "seg.dcm": lambda p: write_labelmap(dlab, p, reference=dicom, segments=[{"label": 5, "name": "liver"}]),
    "report.json": lambda p: write_json_atomic(p, {"values": list(range(20000))}),
    "scores.csv": lambda p: write_text_atomic(p, "case,dice\n" + "ct,0.9\n" * 5000),
    "overlay.png": lambda p: save_overlay_png(ct, lab, p, window=window),
}
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
results = {}
for name, write in writers.items():
    full = work / "full" / name
    full.parent.mkdir(exist_ok=True)
    write(full)
    folder = work / name.replace(".", "_")
    folder.mkdir()
    resource.setrlimit(resource.RLIMIT_FSIZE, (full.stat().st_size // 2, hard))
    try:
        write(folder / name)
        outcome = {"raised": None}
    except BaseException as exc:
        outcome = {"raised": type(exc).__name__, "message": str(exc)}
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    outcome["left"] = sorted(p.name for p in folder.iterdir())
    results[name] = outcome
print(json.dumps(results))
'''


@pytest.fixture(scope="module")
def short_writes(totalseg, tmp_path_factory):
    work = tmp_path_factory.mktemp("short_writes")
    out = subprocess.run([sys.executable, "-c", SHORT_WRITES, str(totalseg), str(work)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["ct.nii", "ct.nii.gz", "ct.nrrd", "ct.mha", "seg.seg.nrrd", "seg.dcm",
                                  "report.json", "scores.csv", "overlay.png"])
def test_short_write_fails_with_the_os_reason_and_leaves_nothing(short_writes, name):
    result = short_writes[name]
    assert result["raised"] == "OutputError", result
    assert f"cannot write " in result["message"] and name in result["message"], result
    assert "File too large (EFBIG)" in result["message"], result
    assert result["left"] == [], result  # neither the final file nor a temporary one


def test_convert_on_a_full_disk_exits_2_with_one_sentence(totalseg, tmp_path):
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "from sam2volume.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for name in ("ct.nii", "ct.nii.gz"):
        run = subprocess.run([sys.executable, "-c", script, "convert", str(totalseg / "example_ct_sm.nii.gz"), str(out_dir / name)],
                             capture_output=True, text=True, timeout=300)
        err = [line for line in run.stderr.splitlines() if line.startswith("sam2volume")]
        assert run.returncode == 2, run.stderr
        assert "Traceback" not in run.stderr and "wrote" not in run.stdout
        assert len(err) == 1 and name in err[0] and "File too large" in err[0], run.stderr
        assert list(out_dir.iterdir()) == []


def test_fsync_failure_is_an_output_error(tmp_path, monkeypatch):
    """A full disk that shows only when the data is flushed (delayed allocation, quotas, NFS): fsync's error
    (a test double raising ENOSPC stands in for the disk) fails the write and leaves nothing."""
    import errno

    import sam2volume.io.atomic as atomic
    from sam2volume.errors import OutputError

    def fsync_fails(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", fsync_fails)
    with pytest.raises(OutputError, match=r"cannot write .*a\.json: No space left on device \(ENOSPC\)"):
        atomic.write_json_atomic(tmp_path / "a.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


@pytest.fixture()
def full_disk(tmp_path):
    """A real small disk: a 256 kB tmpfs (needs root and mount; skipped where the system refuses it)."""
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if run.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({run.stderr.strip() or run.returncode}); the RLIMIT_FSIZE tests cover short writes")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("name", ["ct.nii", "ct.nii.gz", "ct.nrrd", "ct.mha"])
def test_full_disk_fails_with_enospc_and_leaves_nothing(full_disk, totalseg, capsys, name):
    out = full_disk / name
    err = _cli_fails(capsys, ["convert", str(totalseg / "example_ct_sm.nii.gz"), str(out)],
                     f"cannot write {out}", "No space left on device (ENOSPC)")
    assert "wrote" not in err
    assert list(full_disk.iterdir()) == []
