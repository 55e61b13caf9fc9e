"""Check what an image file's header declares before any voxel is read (or after a file is written).

For NIfTI (nibabel's header classes), NRRD (pynrrd's header reader) and MetaImage (a strict ``Key = Value``
reader), before SimpleITK sees the file:

- the data file a detached header names (NRRD ``data file``, MetaImage ``ElementDataFile``) must be a regular
  file inside the header's own folder: no absolute path, no ``..``, no symbolic link leading out of it; the
  multi-file forms (``LIST``, format strings) are refused, as is a NIfTI header whose data is in a separate file;
- the declared number of voxels must be within a limit (:data:`DEFAULT_MAX_VOXELS`, raised with ``max_voxels``
  or the ``SAM2VOLUME_MAX_VOXELS`` variable), so a small file cannot make the reader allocate gigabytes;
- the file must hold at least the bytes its header declares (raw data: compared with the file size; gzip, bzip2
  or zlib data: counted while decompressing, the stream must end intact), so a truncated file is refused
  instead of being read with zeros for the missing part.
"""

from __future__ import annotations

import bz2
import io
import os
import re
import stat
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import InputError

#: voxels a header may declare by default (2**31: a 1024 x 1024 x 2048 CT, 4 GiB as int16)
DEFAULT_MAX_VOXELS = 2**31
#: environment variable that sets another limit (an integer, e.g. 4294967296)
MAX_VOXELS_ENV = "SAM2VOLUME_MAX_VOXELS"
#: a text header longer than this is refused (real ones are a few kB)
MAX_HEADER_BYTES = 1 << 20
#: decompressed bytes beyond what the header declares that are tolerated (more is refused: a decompression bomb)
MAX_TRAILING_BYTES = 1 << 20
_CHUNK = 1 << 16
_OUT = 1 << 24

_META_TYPE_SIZES = {
    "MET_ASCII_CHAR": 1, "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
    "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}


def max_voxels_limit(max_voxels: int | None = None) -> int:
    """The voxel limit: ``max_voxels`` if given, else ``$SAM2VOLUME_MAX_VOXELS``, else :data:`DEFAULT_MAX_VOXELS`."""
    if max_voxels is None:
        text = os.environ.get(MAX_VOXELS_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_VOXELS
        try:
            max_voxels = int(text.replace("_", ""))
        except ValueError:
            raise InputError(f"{MAX_VOXELS_ENV}={text!r} is not an integer; set it to a voxel count such as {DEFAULT_MAX_VOXELS}") from None
        where = MAX_VOXELS_ENV
    else:
        where = "max_voxels"
    if isinstance(max_voxels, bool) or not isinstance(max_voxels, int) or max_voxels < 1:
        raise InputError(f"{where} must be an integer >= 1 (a voxel count, default {DEFAULT_MAX_VOXELS}), got {max_voxels!r}")
    return max_voxels


def check_image_file(p: Path, max_voxels: int | None = None, *, written: bool = False) -> None:
    """Refuse ``p`` (raise :class:`InputError`) if its header reads another file, declares more voxels than
    the limit, or declares more data than the file holds. ``written``: checking a file we just wrote (no
    voxel limit; a file ITK cannot even identify is refused too)."""
    import SimpleITK as sitk

    limit = None if written else max_voxels_limit(max_voxels)
    try:
        io_name = sitk.ImageFileReader().GetImageIOFromFileName(str(p))
    except RuntimeError:
        io_name = ""
    if io_name == "NiftiImageIO":
        _check_nifti(p, limit)
    elif io_name == "NrrdImageIO":
        check_nrrd(p, limit)
    elif io_name == "MetaImageIO":
        _check_meta(p, limit)
    elif written:
        raise InputError(f"{p}: the file just written cannot be read back as an image")
    elif io_name:
        raise InputError(
            f"{p}: the contents are read as {io_name}, not the NIfTI, NRRD or MetaImage file its name says; "
            "rename it to what it holds or export it again"
        )
    # io_name "" (no reader knows the file): SimpleITK's read fails next with its own message


def _check_limit(p: Path, dims: list[int], limit: int | None) -> int:
    if any(d < 0 for d in dims):
        raise InputError(f"{p}: the header declares a negative size {tuple(dims)}; the file is corrupt, export it again")
    count = 1
    for d in dims:
        count *= d
    if limit is not None and count > limit:
        shown = " x ".join(str(d) for d in dims)
        raise InputError(
            f"{p}: the header declares {shown} = {count:,} voxels, more than the limit of {limit:,}; if the volume "
            f"is real, raise the limit (read_volume(max_voxels=...), --max-voxels or {MAX_VOXELS_ENV})"
        )
    return count


def _truncated(p: Path, data: Path, need: int, have: int | str) -> InputError:
    where = "" if data == p else f" (data file {data.name})"
    return InputError(
        f"{p}: the file is truncated or corrupt{where}: its header declares {need:,} bytes of data but it holds "
        f"{have if isinstance(have, str) else f'{have:,} bytes'}; copy or export it again"
    )


def _check_raw_length(p: Path, data: Path, start: int, need: int) -> None:
    have = max(data.stat().st_size - start, 0)
    if have < need:
        raise _truncated(p, data, need, have)


def _decompressor(kind: str) -> Any:
    if kind == "bzip2":
        return bz2.BZ2Decompressor()
    return zlib.decompressobj(47 if kind == "zlib" else 16 + zlib.MAX_WBITS)  # 47: zlib or gzip header


def _feed(dec: Any, data: bytes) -> int:
    """Decompress ``data`` in bounded pieces (a bomb never sits in memory); returns the bytes produced."""
    total = 0
    if isinstance(dec, bz2.BZ2Decompressor):
        total += len(dec.decompress(data, _OUT))
        while not dec.eof and not dec.needs_input:
            total += len(dec.decompress(b"", _OUT))
        return total
    total += len(dec.decompress(data, _OUT))
    while dec.unconsumed_tail and not dec.eof:
        total += len(dec.decompress(dec.unconsumed_tail, _OUT))
    return total


def _check_stream_length(p: Path, data: Path, start: int, need: int, kind: str, *, exact: bool = True) -> None:
    """Decompress the stream from ``start`` to its end: it must end intact (CRC included) and hold at least
    ``need`` bytes (and, with ``exact``, not vastly more). Several gzip members in a row are read as one."""
    dec = _decompressor(kind)
    total = 0
    try:
        with open(data, "rb") as fh:
            fh.seek(start)
            pending = b""
            while True:
                chunk = pending or fh.read(_CHUNK)
                pending = b""
                if not chunk:
                    break
                total += _feed(dec, chunk)
                if exact and total > need + MAX_TRAILING_BYTES:
                    raise InputError(
                        f"{p}: the compressed data holds more than the {need:,} bytes its header declares; "
                        "the file is corrupt or not what it claims, export it again"
                    )
                if dec.eof:
                    rest = dec.unused_data or (fh.read(_CHUNK) if kind == "gzip" else b"")
                    if kind == "gzip" and rest.lstrip(b"\0"):
                        dec, pending = _decompressor(kind), rest  # another gzip member follows
                        continue
                    dec = None  # the stream ended whole (zlib/bzip2: one stream; zeros after gzip: padding)
                    break
        if dec is not None and not dec.eof:
            where = "" if data == p else f" (data file {data.name})"
            raise InputError(
                f"{p}: the compressed file is truncated or corrupt{where}: its stream ends early, after {min(total, need):,} of "
                f"the {need:,} bytes its header declares; copy or export it again"
            )
    except InputError:
        raise
    except (zlib.error, OSError, EOFError, ValueError) as exc:
        raise InputError(f"{p}: the compressed file is truncated or corrupt ({exc}); copy or export it again") from None
    if total < need:
        raise _truncated(p, data, need, total)


def _safe_data_file(p: Path, name: str, field: str) -> Path:
    """The data file a detached header names: a regular file inside the header's folder, nowhere else."""
    fix = "keep the data file beside its header and name it without a folder, or convert to a single .nrrd/.mha/.nii.gz file"
    if not name:
        raise InputError(f"{p}: the header's {field} is empty; {fix}")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts:
        raise InputError(f"{p}: the header's {field} {name!r} points outside the header's folder, which is refused; {fix}")
    folder = p.parent.resolve()
    try:
        real = (p.parent / name).resolve(strict=True)
    except (OSError, RuntimeError):
        raise InputError(f"{p}: the data file {name!r} named by its {field} does not exist beside the header; {fix}") from None
    if not real.is_relative_to(folder):
        raise InputError(f"{p}: the header's {field} {name!r} is a link to {real}, outside the header's folder, which is refused; {fix}")
    if not stat.S_ISREG(real.stat().st_mode):
        raise InputError(f"{p}: the data file {name!r} named by its {field} is not a regular file; {fix}")
    return real


def _multi_file_form(value: str) -> bool:
    """``LIST ...`` or a format string ``name%03d.raw MIN MAX STEP [DIM]``: data spread over several files."""
    tokens = value.split()
    if tokens and tokens[0].upper() == "LIST":
        return True
    return len(tokens) >= 4 and all(re.fullmatch(r"[+-]?\d+", t) for t in tokens[1:4])


def _refuse_multi_file(p: Path, field: str, value: str) -> None:
    raise InputError(
        f"{p}: the header's {field} {value!r} spreads the data over several files, which is not supported; "
        "convert the volume to a single .nrrd, .mha or .nii.gz file"
    )


def _header_lines(p: Path, what: str) -> tuple[list[bytes], int]:
    """Lines of a text header up to its blank line (or the end of the file), at most MAX_HEADER_BYTES."""
    lines, size = [], 0
    with open(p, "rb") as fh:
        while True:
            line = fh.readline(MAX_HEADER_BYTES)
            if not line:
                break
            size += len(line)
            if size > MAX_HEADER_BYTES:
                raise InputError(f"{p}: the {what} header is longer than {MAX_HEADER_BYTES} bytes; the file is corrupt, export it again")
            lines.append(line)
            if what == "NRRD" and len(lines) > 1 and not line.strip():
                break
            if what == "MetaImage" and line.split(b"=", 1)[0].strip().lower() == b"elementdatafile":
                break
    return lines, size


# ----------------------------------------------------------------------------------------------- NIfTI


def _check_nifti(p: Path, limit: int | None) -> None:
    import nibabel as nib

    with open(p, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    try:
        if gz:
            import gzip

            with gzip.open(p, "rb") as fh:
                raw = fh.read(540)
        else:
            with open(p, "rb") as fh:
                raw = fh.read(540)
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{p}: the compressed file is truncated or corrupt ({exc}); copy or export it again") from None
    header = None
    for cls, size in ((nib.Nifti1Header, 348), (nib.Nifti2Header, 540)):
        if len(raw) >= size and cls.may_contain_header(raw[:size]):
            header = cls.from_fileobj(io.BytesIO(raw[:size]), check=False)
            break
    if header is None:
        if len(raw) < 348:
            raise _truncated(p, p, 348, len(raw))
        raise InputError(f"{p}: ITK takes this for NIfTI but its header is neither NIfTI-1 nor NIfTI-2; export the file again")
    magic = bytes(header["magic"]).rstrip(b"\0")
    if magic not in (b"n+1", b"n+2"):
        raise InputError(
            f"{p}: the NIfTI header has magic {magic.decode('latin-1')!r}, so its voxels would be read from a "
            "separate .img file, which is refused; save it as a single-file .nii or .nii.gz"
        )
    dim = [int(v) for v in header["dim"]]
    if not 1 <= dim[0] <= 7:
        raise InputError(f"{p}: the NIfTI header gives {dim[0]} dimensions (dim[0] must be 1 to 7); the file is corrupt, export it again")
    dims = dim[1 : 1 + dim[0]]
    count = _check_limit(p, dims, limit)
    try:
        itemsize = header.get_data_dtype().itemsize
    except Exception:
        raise InputError(f"{p}: the NIfTI header has an unknown datatype code {int(header['datatype'])}; export the file again") from None
    offset = max(int(float(header["vox_offset"])), int(header["sizeof_hdr"]))
    need = offset + count * itemsize
    if gz:
        _check_stream_length(p, p, 0, need, "gzip")
    else:
        _check_raw_length(p, p, 0, need)


# ------------------------------------------------------------------------------------------------ NRRD


def check_nrrd(p: Path, limit: int | None) -> None:
    """NRRD (.nrrd, .nhdr, .seg.nrrd): data file, voxel limit and data length."""
    import numpy as np
    import nrrd

    lines, header_size = _header_lines(p, "NRRD")
    for line in lines[1:]:
        text = line.decode("latin-1").strip()
        match = re.match(r"(data ?file)\s*:=?\s*(.*)$", text, re.IGNORECASE)
        if match and _multi_file_form(match.group(2)):
            _refuse_multi_file(p, match.group(1), match.group(2))
    try:
        header = nrrd.read_header(iter(lines))
        sizes = [int(v) for v in np.asarray(header["sizes"]).reshape(-1)]
        encoding = str(header.get("encoding", "")).lower()
        dtype = nrrd.reader._determine_datatype(header)
    except Exception as exc:  # pynrrd raises NRRDError, KeyError, ValueError
        raise InputError(f"{p}: not a valid NRRD header ({exc}); export the file again") from None
    count = _check_limit(p, sizes, limit)
    need = count * dtype.itemsize
    field = "data file" if "data file" in header else "datafile"
    name = header.get("data file", header.get("datafile"))
    if name is None:
        data, start = p, header_size
    else:
        data, start = _safe_data_file(p, str(name).strip(), field), 0
    line_skip = int(header.get("line skip", header.get("lineskip", 0)) or 0)
    byte_skip = int(header.get("byte skip", header.get("byteskip", 0)) or 0)
    if line_skip < 0 or byte_skip < -1:
        raise InputError(f"{p}: the NRRD header has line skip {line_skip} / byte skip {byte_skip} (they must be >= 0, byte skip -1 means 'at the end'); fix the header")
    if line_skip:
        with open(data, "rb") as fh:
            fh.seek(start)
            for _ in range(line_skip):
                fh.readline(MAX_HEADER_BYTES)
            start = fh.tell()
    if encoding == "raw":
        _check_raw_length(p, data, start + max(byte_skip, 0), need)
    elif encoding in ("gzip", "gz", "bzip2", "bz2"):
        kind = "gzip" if encoding.startswith("gz") else "bzip2"
        _check_stream_length(p, data, start, need + max(byte_skip, 0), kind, exact=byte_skip != -1)
    # ascii/text/hex: no fixed length; the voxel limit above holds, ITK refuses short text itself


# ------------------------------------------------------------------------------------------- MetaImage


def _check_meta(p: Path, limit: int | None) -> None:
    lines, header_size = _header_lines(p, "MetaImage")
    fields: dict[str, str] = {}
    for line in lines:
        text = line.decode("latin-1").strip()
        if not text:
            continue
        if "=" not in text:
            raise InputError(f"{p}: the MetaImage header line {text[:60]!r} is not 'Key = Value'; the file is corrupt, export it again")
        key, value = (s.strip() for s in text.split("=", 1))
        if key.lower() in fields:
            raise InputError(f"{p}: the MetaImage header gives {key} twice; keep one and export the file again")
        fields[key.lower()] = value
    missing = [k for k in ("NDims", "DimSize", "ElementType", "ElementDataFile") if k.lower() not in fields]
    if missing:
        raise InputError(f"{p}: the MetaImage header lacks {', '.join(missing)}; the file is corrupt or not a MetaImage, export it again")
    try:
        ndims = int(fields["ndims"])
        dims = [int(v) for v in fields["dimsize"].split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
        header_skip = int(fields.get("headersize", "0"))
    except ValueError as exc:
        raise InputError(f"{p}: the MetaImage header has a value that is not an integer ({exc}); fix the header") from None
    if len(dims) != ndims:
        raise InputError(f"{p}: the MetaImage header's DimSize {fields['dimsize']!r} does not have NDims = {ndims} values; fix the header")
    element = fields["elementtype"].upper().removesuffix("_ARRAY")
    if element not in _META_TYPE_SIZES:
        raise InputError(f"{p}: the MetaImage ElementType {fields['elementtype']!r} is not an image voxel type; export the file again")
    count = _check_limit(p, dims + ([channels] if channels != 1 else []), limit)
    need = count * _META_TYPE_SIZES[element]
    value = fields["elementdatafile"]
    if _multi_file_form(value):
        _refuse_multi_file(p, "ElementDataFile", value)
    if value.upper() == "LOCAL":
        data, start = p, header_size
    else:
        data, start = _safe_data_file(p, value, "ElementDataFile"), max(header_skip, 0)
    if fields.get("binarydata", "true").lower() == "false":
        return  # ASCII voxels: no fixed length
    if fields.get("compresseddata", "false").lower() == "true":
        _check_stream_length(p, data, start, need, "zlib")
    else:  # HeaderSize -1 (data at the end) needs the same length
        _check_raw_length(p, data, start, need)
