"""The page's volume upload: the files a user chose (or one ``.zip``) received into a private temporary folder
under safe names, with caps on bytes, files and, for a ``.zip``, members, uncompressed bytes and compression
ratio; then the volume found there read by sam2volume's ``read_volume`` (its header checks: a ``.nhdr`` /
``.mhd`` naming a data file outside its folder is refused there). DICOM series are read at once and kept in
memory with their headers (no pixel data), so the folder can go and a DICOM-SEG can still reference them.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

UPLOAD_PREFIX = "sam2volume-web-upload-"  # the private temporary folder of one upload (mkdtemp: mode 0700)
MAX_FILES = 4096  # files in one upload, members of one .zip
MAX_ZIP_RATIO = 200  # a .zip member (over 1 MiB) or the whole .zip expanding more than this is refused (zip bomb)
RATIO_FLOOR = 1 << 20  # members smaller than this may compress better (headers, text)
MAX_DEPTH = 16  # folders inside a .zip
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")  # one-file volumes and two-file headers
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
CHUNK = 1 << 20
ACCEPTED = ("a volume file (.nii.gz, .nii, .nrrd, .mha), a header with its data file (.nhdr or .mhd with .raw / "
            ".zraw / .raw.gz), the files of a DICOM series, or one .zip holding one of those")


class UploadError(Exception):
    """A refused upload: HTTP status, JSON error type and the one sentence the page shows."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def too_big(what: str, cap: int) -> UploadError:
    return UploadError(413, "LimitError", f"{what} is larger than the {cap / 2**20:g} MB limit; start sam2volume web with a "
                       "larger --max-upload-mb, or give the volume on the command line")


def safe_name(name: str) -> str:
    """The base name of a file name a browser sent (never a path: anything before a / or \\ is dropped); a
    name that is empty, ``.``/``..``, hidden (starts with ``.``), not printable or over 255 bytes is refused."""
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    if not base or base.startswith(".") or not base.isprintable() or len(base.encode("utf-8", "replace")) > 255:
        raise UploadError(400, "InputError", f"the file name {str(name)[:80]!r} cannot be used (empty, hidden, a folder "
                          "or not printable); rename the file and upload it again")
    return base


def _create(path: Path) -> Any:
    """A new private file (0600), never an existing one, never through a link."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb")


_ACTIVE: set[Path] = set()  # the folders of uploads in progress


@contextlib.contextmanager
def upload_folder() -> Iterator[Path]:
    """A private temporary folder for one upload, removed afterwards whatever happens (and by
    :func:`remove_active` when the app ends in the middle of the upload)."""
    folder = Path(tempfile.mkdtemp(prefix=UPLOAD_PREFIX))
    _ACTIVE.add(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _ACTIVE.discard(folder)


@atexit.register
def remove_active() -> None:
    """Remove the folders of uploads still in progress: the app is ending (SIGTERM stops the event loop before
    an upload's own clean-up runs)."""
    for folder in list(_ACTIVE):
        shutil.rmtree(folder, ignore_errors=True)
        _ACTIVE.discard(folder)


async def receive(request: Any, folder: Path, cap: int, max_files: int = MAX_FILES) -> tuple[list[str], int]:
    """The files of a ``multipart/form-data`` POST (aiohttp's streaming multipart reader: one chunk at a time,
    never the whole body) written into ``folder`` under :func:`safe_name` names; refused past ``cap`` bytes
    in all, past ``max_files`` files, for a duplicate name and for no file. Returns the names and bytes."""
    if request.content_type != "multipart/form-data":
        raise UploadError(415, "InputError", f"an upload is a multipart/form-data POST (the page's volume control "
                          f"sends one), not {request.content_type or 'a bare body'}")
    if request.content_length is not None and request.content_length > cap + 1024 * max_files + 65536:
        raise too_big(f"the upload ({request.content_length / 2**20:.1f} MB)", cap)  # beyond any form overhead
    reader = await request.multipart()
    names: list[str] = []
    total = 0
    while True:
        part = await reader.next()
        if part is None:
            break
        if part.filename is None:  # a form field that is no file
            await part.release()
            continue
        name = safe_name(part.filename)
        if name in names:
            raise UploadError(400, "InputError", f"two files are named {name!r}; upload files with distinct names "
                              "(or a .zip of their folders)")
        if len(names) >= max_files:
            raise UploadError(413, "LimitError", f"the upload holds more than {max_files} files; upload at most "
                              f"{max_files} (one series), or give the folder on the command line")
        with _create(folder / name) as out:
            while chunk := await part.read_chunk(CHUNK):
                total += len(chunk)
                if total > cap:
                    raise too_big(name if not names else f"the upload ({len(names) + 1} files so far)", cap)
                out.write(chunk)
        names.append(name)
    if not names:
        raise UploadError(400, "InputError", f"the upload holds no file; choose {ACCEPTED}")
    return names, total


def _member_path(info: zipfile.ZipInfo, archive: str) -> PurePosixPath | None:
    """Where a .zip member goes inside the extraction folder; None for folders and macOS/hidden metadata
    (``__MACOSX/``, ``.name``); a link, an absolute path, ``..`` or an odd name is refused."""
    name = info.filename

    def refuse(why: str) -> UploadError:
        return UploadError(400, "InputError", f"{archive}: the member {name[:80]!r} {why}; the .zip is refused, "
                           "zip the series' files (or header and data file) as plain files")

    if stat.S_ISLNK(info.external_attr >> 16):
        raise refuse("is a symbolic link")
    if name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise refuse("has an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise refuse("points outside the .zip (..)")
    if info.is_dir():
        return None
    if parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
        return None
    if any(p in ("", ".") or not p.isprintable() or len(p.encode()) > 255 for p in parts) or len(parts) > MAX_DEPTH:
        raise refuse("has an empty, unprintable, over-long or too deeply nested name")
    if info.flag_bits & 0x1:
        raise refuse("is encrypted")
    return PurePosixPath(*parts)


def extract_zip(path: Path, into: Path, cap: int, max_files: int = MAX_FILES, max_ratio: float = MAX_ZIP_RATIO) -> int:
    """The members of the .zip at ``path`` written into the new folder ``into`` (relative folders kept, each
    checked by :func:`_member_path`), refused before any is written when there are more than ``max_files``, their
    declared sizes exceed ``cap`` or a member (over 1 MiB) or the whole expands more than ``max_ratio`` times;
    while writing, the bytes really read are counted against ``cap`` too. Returns the bytes written."""
    archive = path.name
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UploadError(400, "InputError", f"{archive} is not a readable .zip ({exc}); upload a .zip made by a zip tool") from None
    with zf:
        members = [(info, _member_path(info, archive)) for info in zf.infolist()]
        members = [(info, where) for info, where in members if where is not None]
        if len(members) > max_files:
            raise UploadError(413, "LimitError", f"{archive} holds {len(members)} files, more than {max_files}; "
                              "zip one series, or give the folder on the command line")
        declared = sum(info.file_size for info, _ in members)
        if declared > cap:
            raise too_big(f"{archive} unpacked ({declared / 2**20:.1f} MB)", cap)
        packed = sum(info.compress_size for info, _ in members)
        for info, _ in members:
            if info.file_size > RATIO_FLOOR and info.file_size > max_ratio * max(1, info.compress_size):
                raise UploadError(413, "LimitError", f"{archive}: the member {info.filename[:80]!r} expands "
                                  f"{info.file_size / max(1, info.compress_size):.0f} times (more than {max_ratio:g}: "
                                  "a zip bomb?); the .zip is refused")
        if declared > RATIO_FLOOR and declared > max_ratio * max(1, packed):
            raise UploadError(413, "LimitError", f"{archive} expands {declared / max(1, packed):.0f} times (more than "
                              f"{max_ratio:g}: a zip bomb?); the .zip is refused")
        into.mkdir(mode=0o700)
        total = 0
        for info, where in members:
            target = into.joinpath(*where.parts)
            try:
                for depth in range(1, len(where.parts)):  # each folder private (mkdir(parents=True) ignores mode)
                    into.joinpath(*where.parts[:depth]).mkdir(mode=0o700, exist_ok=True)
                with zf.open(info) as src, _create(target) as out:
                    while chunk := src.read(CHUNK):
                        total += len(chunk)
                        if total > cap:
                            raise too_big(f"{archive} unpacked", cap)
                        out.write(chunk)
            except FileExistsError:
                raise UploadError(400, "InputError", f"{archive}: the member {info.filename[:80]!r} appears twice; "
                                  "the .zip is refused") from None
            except (OSError, zipfile.BadZipFile, EOFError, RuntimeError) as exc:  # a file where a folder is, bad CRC, ...
                raise UploadError(400, "InputError", f"{archive}: the member {info.filename[:80]!r} cannot be unpacked "
                                  f"({exc}); the .zip is refused") from None
    return total


@dataclass
class Uploaded:
    """What an upload held: one volume (``series`` empty), or the DICOM series it held, each read (a Volume and
    its files' headers without pixel data, for a DICOM-SEG) or the reason it could not be."""

    name: str  # how the page names the upload: the file's (or .zip's) name, else "N files"
    volume: Any = None  # the volume shown first
    series: list = field(default_factory=list)  # dicom_series.SeriesSummary, in the folder's order
    read: dict = field(default_factory=dict)  # series uid -> (Volume, [pydicom Dataset headers]) or an error sentence


def find_volume(root: Path) -> tuple[str, Path]:
    """("file", path) for the one volume file (or header) in ``root``, ("dicom", root) for DICOM files;
    else refused naming what was found."""
    from ..io.dicom_series import is_dicom_file

    files = sorted(p for p in root.rglob("*") if p.is_file())
    volumes = [p for p in files if p.name.lower().endswith(VOLUME_SUFFIXES)]
    if len(volumes) == 1:
        return "file", volumes[0]
    if len(volumes) > 1:
        shown = ", ".join(p.name for p in volumes[:4]) + (", ..." if len(volumes) > 4 else "")
        raise UploadError(400, "InputError", f"the upload holds {len(volumes)} volume files ({shown}); upload one volume at a time")
    if any(p.name.lower().endswith(DICOM_SUFFIXES) or is_dicom_file(p) for p in files):
        return "dicom", root
    shown = ", ".join(p.name for p in files[:4]) + (", ..." if len(files) > 4 else "")
    raise UploadError(400, "InputError", f"the upload ({shown}) holds no volume; upload {ACCEPTED}")


def read_upload(root: Path, name: str) -> Uploaded:
    """The volume of an upload folder (blocking: run it off the event loop). A DICOM folder's series are each
    read by ``read_volume(root, series_uid=...)``; one that cannot be read keeps its reason (shown when it is
    chosen) unless none can, then the upload is refused with the first series' reason. Paths of ``root`` are
    taken out of every message (the page names no server-side path)."""
    import warnings

    import pydicom

    from .. import read_volume
    from ..io.dicom_series import list_series

    def sentence(exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        return text.replace(f"{root}{os.sep}", "").replace(str(root), "the upload")

    kind, path = find_volume(root)
    with warnings.catch_warnings():  # pydicom's notes while it probes files that are not DICOM
        warnings.simplefilter("ignore", UserWarning)
        if kind == "file":
            try:
                return Uploaded(name, volume=read_volume(path))
            except Exception as exc:  # noqa: BLE001 - the reader's own sentence
                raise UploadError(400, "InputError", sentence(exc)) from None
        series = list_series(root)
        if not series:
            raise UploadError(400, "InputError", f"the upload's DICOM files hold no image series; upload {ACCEPTED}")
        out = Uploaded(name, series=series)
        for s in series:
            try:
                vol = read_volume(root, series_uid=s.uid)
                headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in vol.meta.get("dicom_files", [])]
            except Exception as exc:  # noqa: BLE001
                out.read[s.uid] = sentence(exc)  # said when the series is chosen
                continue
            vol.meta.pop("source", None)
            vol.meta.pop("dicom_files", None)  # gone with the folder; the headers stand in for them
            out.read[s.uid] = (vol, headers)
            if out.volume is None:
                out.volume = vol
        if out.volume is None:
            raise UploadError(400, "InputError", f"series {series[0].uid or '(blank UID)'}: {out.read[series[0].uid]}")
        return out


@contextlib.contextmanager
def dicom_reference(volume: Any, headers: list | None) -> Iterator[Any]:
    """The volume as a DICOM-SEG reference: itself when its files are on disk (the command line's folder), else
    its kept headers written to a private temporary folder for the writer to read, removed afterwards."""
    if headers is None:
        yield volume
        return
    with tempfile.TemporaryDirectory(prefix="sam2volume-web-") as folder:
        files = []
        for n, ds in enumerate(headers):
            files.append(str(Path(folder) / f"{n:05d}.dcm"))
            ds.save_as(files[-1], enforce_file_format=True)
        yield volume.with_array(volume.array, dicom_files=files)
