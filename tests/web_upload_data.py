"""Test data for the web page's volume input, built in a test's tmp_path from the shared data (never copied into
the repository): a DICOM folder holding two series, a .nhdr + .raw pair, .zip files (good ones and hostile ones)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path


def two_series_folder(series: Path, dest: Path) -> tuple[Path, str, str]:
    """``dest`` holding the shared CT series' files and a second series made from every other one of them with
    pydicom (a new SeriesInstanceUID, new SOP instance UIDs, its own description; 10 slices 4 mm apart);
    returns (folder, first series' UID, second series' UID). The shared series has a blank SeriesInstanceUID."""
    import pydicom
    from pydicom.uid import generate_uid

    dest.mkdir(parents=True)
    files = sorted(p for p in series.iterdir() if p.is_file())
    for f in files:
        shutil.copy(f, dest / f.name)
    first = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    second = generate_uid()
    for n, f in enumerate(files[::2]):
        ds = pydicom.dcmread(f)  # the pixel data as stored (compressed), untouched
        ds.SeriesInstanceUID = second
        ds.SeriesDescription = "every other slice"
        ds.SeriesNumber = 99
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(dest / f"second_{n:03d}.dcm", enforce_file_format=True)
    return dest, first, second


def nhdr_pair(image: Path, dest: Path) -> Path:
    """``image`` written by SimpleITK as ``dest/ct.nhdr`` with its data file ``ct.raw.gz`` beside it; the header's path."""
    import SimpleITK as sitk

    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "ct.nhdr"
    sitk.WriteImage(sitk.ReadImage(str(image)), str(path), useCompression=True)
    return path


def zip_of(files: list[Path], path: Path, *, prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, prefix + f.name)
    return path


def zip_with_member(path: Path, member: str, data: bytes = b"x") -> Path:
    """A .zip holding one member under a (hostile) name, e.g. ``../x`` or ``/etc/x``."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(zipfile.ZipInfo(member), data)
    return path


def zip_bomb(path: Path, size: int) -> Path:
    """A .zip whose one member is ``size`` zero bytes (deflated ~1000 times smaller)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("zeros.dcm", "w", force_zip64=True) as out:
            block = bytes(1 << 20)
            for _ in range(size >> 20):
                out.write(block)
    return path


def zip_symlink(path: Path, member: str = "link.dcm", target: str = "/etc/passwd") -> Path:
    info = zipfile.ZipInfo(member)
    info.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(info, target)
    return path


def multipart(files: list[tuple[str, bytes]], boundary: str = "sam2volume-test-boundary") -> tuple[bytes, str]:
    """A multipart/form-data body holding ``files`` (name, bytes) as the page's FormData sends them, and its
    Content-Type."""
    body = b""
    for name, data in files:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
